//! The routes, one module per resource.

/// Declares a read that waits for the processors when asked (`fresh`): its `#[utoipa::path]` (the query
/// parameters of `params`, 200 with the body, or 504 when a fresh read's wait runs out) and its handler,
/// which parses the query the `read by` function takes ([`crate::params::FromParams`]: a listing's page, or
/// nothing), waits for the processors of the kinds named when `fresh` asks it to, then answers what the
/// function reads. A query that is wrong is refused before the wait, not after it.
///
/// ```text
/// fresh_read! {
///     /// The instruments with their point counts and time spans, a page at a time.
///     list: GET "/v1/series/price", tag "series", operation_id "listPriceSeries", summary "…",
///     params crate::openapi::Page, 200 "Instruments": SeriesList, waits for [Price], read by instruments
/// }
/// ```
macro_rules! fresh_read {
    (
        $(#[doc = $doc:tt])*
        $name:ident: GET $path:tt, tag $tag:tt, operation_id $id:tt, summary $summary:tt, params $params:path,
        200 $ok:tt: $body:ident, waits for [$($kind:ident),+], read by $read:ident
    ) => {
        $(#[doc = $doc])*
        #[utoipa::path(get, path = $path, tag = $tag, operation_id = $id,
            summary = $summary,
            params($params),
            responses(
                (status = 200, description = $ok, body = $body),
                crate::openapi::Stale,
            ))]
        pub async fn $name(
            axum::extract::State(s): axum::extract::State<crate::AppState>,
            axum::extract::Query(p): axum::extract::Query<crate::params::Params>,
        ) -> Result<axum::Json<$body>, crate::ApiError> {
            let query = crate::params::FromParams::from_params(&p)?;
            crate::sync::if_fresh(&s, &p, &[$(tributary_broker::Kind::$kind),+]).await?;
            Ok(axum::Json($read(&s, query).await?))
        }
    };
}

mod dlq;
mod events;
mod fleet;
mod health;
mod indices;
mod live;
mod pages;
mod ports;
mod samples;
mod series;
mod status;
mod surveys;
mod uploads;

use crate::{ApiError, AppState};
use axum::body::Body;
use axum::http::{Method, Request};
use axum::response::IntoResponse;
use axum::{Extension, Router};
use bytes::Bytes;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Every route with its documentation, behind the bearer token check and a deadline to the response
/// headers (inside the trace layer, so refusals and timeouts are traced too). The document served at
/// `/openapi.json` is the one these routes make, finished for `state`'s settings.
pub fn router(state: &AppState) -> Router<AppState> {
    let (router, doc) = documented().split_for_parts();
    let doc = crate::openapi::finish(doc, &state.config, &state.rollups);
    let deadline = state.config.request_timeout();
    router
        .fallback(fallback)
        .method_not_allowed_fallback(|| async {
            let body = crate::error::ErrorBody::new("method_not_allowed", "method not allowed on this route", None);
            (axum::http::StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
        })
        .layer(Extension(pages::Document(doc.into())))
        .layer(axum::middleware::from_fn_with_state(crate::auth::Auth::new(&state.config), crate::auth::check))
        .layer(axum::middleware::from_fn_with_state(deadline, within_deadline))
        .layer(axum::middleware::from_fn(plain_url))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<Body>| {
            tracing::info_span!("http", otel.kind = "server", method = %req.method(), path = %req.uri().path())
        }))
}

/// Every route, each registered with its `#[utoipa::path]` (so none is served undocumented).
pub(crate) fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(series::list))
        .routes(routes!(series::get))
        .routes(routes!(samples::latest))
        .routes(routes!(samples::servers))
        .routes(routes!(samples::raw))
        .routes(routes!(samples::rollups))
        .routes(routes!(live::sse))
        .routes(routes!(live::ws))
        .routes(routes!(uploads::start))
        .routes(routes!(uploads::status))
        .routes(routes!(uploads::events))
        .routes(routes!(ports::list))
        .routes(routes!(ports::nearest))
        .routes(routes!(ports::countries))
        .routes(routes!(ports::get))
        .routes(routes!(fleet::plan))
        .routes(routes!(fleet::scores))
        .routes(routes!(surveys::list))
        .routes(routes!(indices::list))
        .routes(routes!(indices::get, indices::put))
        .routes(routes!(events::price))
        .routes(routes!(events::index))
        .routes(routes!(events::metric))
        .routes(routes!(events::port))
        .routes(routes!(events::driver))
        .routes(routes!(events::shipment))
        .routes(routes!(events::survey))
        .routes(routes!(dlq::list))
        .routes(routes!(dlq::replay))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(status::status))
        .routes(routes!(pages::dashboard))
        .routes(routes!(pages::docs))
        .routes(routes!(pages::openapi))
}

/// No route: 404, except a POST to `/v1/events/<subject>` of no known kind, which is a 400
/// `unknown_subject` naming the kinds there are.
async fn fallback(
    axum::extract::State(s): axum::extract::State<AppState>,
    method: Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: Body,
) -> axum::response::Response {
    let subject = uri.path().strip_prefix("/v1/events/").filter(|s| !s.is_empty() && !s.contains('/'));
    match subject {
        Some(subject) if method == Method::POST => {
            let subject = percent_encoding::percent_decode_str(subject).decode_utf8_lossy().into_owned();
            events::unknown(s, subject, headers, body).await.into_response()
        }
        _ => ApiError::NotFound("no such route".into()).into_response(),
    }
}

/// Refuses with 400 `invalid_url` a URL holding an encoded NUL (`%00`): no name or parameter may contain
/// one (PostgreSQL text cannot), and refusing it here spares every route the check. Found by fuzzing
/// (`scripts/fuzz-api.sh`): `?shipment=%00` was a 500. Likewise a path that is not UTF-8 once decoded
/// (`%FF`), which axum's path extractor would answer in plain text instead of the API's JSON error.
async fn plain_url(req: Request<Body>, next: axum::middleware::Next) -> axum::response::Response {
    let uri = req.uri();
    let has_nul = |s: &str| s.as_bytes().windows(3).any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0');
    if has_nul(uri.path()) || uri.query().is_some_and(has_nul) {
        return ApiError::bad(
            "invalid_url",
            "the URL holds a NUL character (%00), which no name or parameter may contain",
        )
        .into_response();
    }
    if percent_encoding::percent_decode_str(uri.path()).decode_utf8().is_err() {
        return ApiError::bad("invalid_url", "the URL's path is not UTF-8 once its %-escapes are decoded")
            .into_response();
    }
    next.run(req).await
}

/// Answers 503 `request_timeout` when a request has no response by the deadline. A streamed response's
/// body (SSE, WebSocket, an upload's progress) is not timed: only the handler that starts it.
async fn within_deadline(
    axum::extract::State(deadline): axum::extract::State<std::time::Duration>,
    req: Request<Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(deadline, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout(format!("no response within {} ms", deadline.as_millis())).into_response(),
    }
}

/// A publish's failure as the API answers it: 413 `exceeds_max_payload` when NATS cannot take `what` at
/// all, else 503.
fn not_published(what: &str, e: tributary_broker::publish::PublishOneError) -> ApiError {
    use tributary_broker::publish::PublishOneError;
    match e {
        PublishOneError::TooLarge(m) => ApiError::ExceedsMaxPayload(format!("{what} is more than NATS takes: {m}")),
        PublishOneError::Nats(e) => ApiError::Unavailable(format!("cannot publish to NATS: {e}")),
    }
}

/// Reads a whole JSON body up to the configured limit: 413 past it, 400 `unreadable_body` when the body
/// itself cannot be read (a malformed chunked encoding, say), which is not a matter of size.
async fn body(state: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let max = state.config.max_body_bytes;
    axum::body::to_bytes(body, max).await.map_err(|e| match e.into_inner() {
        e if e.is::<http_body_util::LengthLimitError>() => ApiError::TooLarge(max),
        e => ApiError::bad("unreadable_body", format!("cannot read the request body: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use crate::ApiConfig;
    use crate::openapi::finish;
    use tributary_store::RollupConfig;

    /// The document with the default settings (`TRIBUTARY_OPENAPI_DUMP=path` writes it there).
    #[test]
    fn the_document_is_made_and_names_every_route() {
        let (_, doc) = super::documented().split_for_parts();
        let text = finish(doc, &ApiConfig::default(), &RollupConfig::default());
        if let Ok(path) = std::env::var("TRIBUTARY_OPENAPI_DUMP") {
            std::fs::write(path, &text).unwrap();
        }
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["paths"]["/v1/events/price.{instrument}"]["post"]["requestBody"].is_object());
        assert!(!text.contains("\"security\""), "no tokens configured: nothing asks for one");
        assert!(!text.contains(":null"), "no member of the document is null");
    }
}
