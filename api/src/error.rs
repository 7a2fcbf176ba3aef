//! The API's one error type.
//!
//! Client mistakes carry a stable `code`, a message naming the problem and, where one parameter is at
//! fault, its `field`. Internal failures are logged once, with their cause chain, and reach the client as
//! a bare 500 (or 503 when a dependency is down) with no internals.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response: `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// One error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code, e.g. `invalid_limit`, `not_found`, `unauthorized`.
    #[schema(min_length = 1)]
    pub code: String,
    /// The parameter at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong, for people.
    #[schema(min_length = 1)]
    pub message: String,
}

impl ErrorBody {
    /// An error body.
    pub fn new(code: &str, message: impl Into<String>, field: Option<&str>) -> Self {
        ErrorBody {
            error: ErrorDetail { code: code.to_owned(), field: field.map(str::to_owned), message: message.into() },
        }
    }
}

/// An error answered as JSON.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed.
    #[error("{message}")]
    BadRequest {
        /// A stable machine-readable code, e.g. `invalid_limit`.
        code: &'static str,
        /// What is wrong.
        message: String,
        /// The parameter at fault.
        field: Option<&'static str>,
    },
    /// 401: no bearer token, or one the API does not know (answered with `WWW-Authenticate: Bearer`).
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a known token that does not allow this (a read token on a write).
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such resource.
    #[error("{0}")]
    NotFound(String),
    /// 410: the resource existed and what it needs is gone (a dead letter's original, aged out).
    #[error("{0}")]
    Gone(String),
    /// 409: a dead letter whose subject is no event subject: republished, it would be refused again (or
    /// find no stream at all), however often asked.
    #[error("{0}")]
    NotReplayable(String),
    /// 413: the body is larger than the route accepts.
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// 429: as many uploads are streaming as `api.max_uploads` allows.
    #[error("{0} uploads are streaming, the most api.max_uploads allows: try again once one has been read")]
    TooManyUploads(usize),
    /// 413: what the request would publish is more than the NATS server takes (its `max_payload`).
    #[error("{0}")]
    ExceedsMaxPayload(String),
    /// 503: a dependency (NATS, PostgreSQL) is unavailable.
    #[error("{0}")]
    Unavailable(String),
    /// 504: a fresh read's wait ran out.
    #[error("{0}")]
    Timeout(String),
    /// 503: the request took longer than `api.request_timeout_ms`.
    #[error("{0}")]
    RequestTimeout(String),
    /// 500: anything else; logged, not shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A 400 naming a parameter.
    pub fn field(code: &'static str, field: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest { code, message: message.into(), field: Some(field) }
    }

    /// A 400 about the request as a whole.
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest { code, message: message.into(), field: None }
    }
}

/// A statement PostgreSQL cancelled (`57014`: an operator's `statement_timeout`, say): the request's
/// deadline, met first by the database.
fn cancelled(e: &tributary_store::sqlx::Error) -> bool {
    matches!(e, tributary_store::sqlx::Error::Database(d) if d.code().as_deref() == Some("57014"))
}

/// The answer to a read the database cancelled at the request's deadline.
fn past_deadline() -> ApiError {
    ApiError::RequestTimeout("the database cancelled the read (statement_timeout)".into())
}

impl From<tributary_store::sqlx::Error> for ApiError {
    fn from(e: tributary_store::sqlx::Error) -> Self {
        if cancelled(&e) {
            return past_deadline();
        }
        if tributary_store::db::unreachable(&e) {
            tracing::warn!(error = %e, "PostgreSQL unavailable");
            return ApiError::Unavailable(format!("PostgreSQL is unavailable: {e}"));
        }
        ApiError::Internal(anyhow::Error::new(e).context("database"))
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
        use sea_orm::{DbErr, RuntimeErr};
        if let DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) = &e
            && cancelled(e)
        {
            return past_deadline();
        }
        let down = match &e {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
            DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
                tributary_store::db::unreachable(e)
            }
            _ => false,
        };
        if down {
            tracing::warn!(error = %e, "PostgreSQL unavailable");
            return ApiError::Unavailable(format!("PostgreSQL is unavailable: {e}"));
        }
        ApiError::Internal(anyhow::Error::new(e).context("database"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, field) = match &self {
            ApiError::BadRequest { code, field, .. } => (StatusCode::BAD_REQUEST, *code, *field),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            ApiError::Gone(_) => (StatusCode::GONE, "gone", None),
            ApiError::NotReplayable(_) => (StatusCode::CONFLICT, "not_replayable", None),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None),
            ApiError::TooManyUploads(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_uploads", None),
            ApiError::ExceedsMaxPayload(_) => (StatusCode::PAYLOAD_TOO_LARGE, "exceeds_max_payload", None),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "sync_timeout", None),
            ApiError::RequestTimeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "request_timeout", None),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        };
        let message = match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = (status, Json(ErrorBody::new(code, message, field))).into_response();
        if matches!(self, ApiError::TooLarge(_)) {
            // The rest of the body was not read: the connection cannot carry another request.
            response
                .headers_mut()
                .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        }
        if matches!(self, ApiError::Unauthorized(_)) {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"tributary\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::ApiError;
    use axum::response::IntoResponse;
    use tributary_store::sqlx;

    fn status(e: ApiError) -> u16 {
        e.into_response().status().as_u16()
    }

    /// PostgreSQL down or out of connections is the documented 503, not a 500.
    #[test]
    fn an_unreachable_database_is_a_503_and_a_failed_statement_a_500() {
        assert_eq!(status(sqlx::Error::PoolTimedOut.into()), 503);
        assert_eq!(status(sqlx::Error::PoolClosed.into()), 503);
        assert_eq!(status(sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into()).into()), 503);
        let acquire = sea_orm::DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout);
        assert_eq!(status(acquire.into()), 503);
        let query = sea_orm::DbErr::Query(sea_orm::RuntimeErr::SqlxError(sqlx::Error::PoolTimedOut.into()));
        assert_eq!(status(query.into()), 503);
        assert_eq!(status(sqlx::Error::RowNotFound.into()), 500);
        assert_eq!(status(sqlx::Error::ColumnNotFound("x".into()).into()), 500);
    }
}
