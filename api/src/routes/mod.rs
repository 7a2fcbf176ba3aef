//! The routes, one module per resource.

mod dlq;
mod events;
mod fleet;
mod health;
mod indices;
mod live;
mod metrics;
mod ports;
mod series;
mod surveys;
mod uploads;

use crate::{ApiError, AppState};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use bytes::Bytes;
use tower_http::trace::TraceLayer;

const OPENAPI: &str = include_str!("../openapi.json");
const DOCS: &str = include_str!("../docs.html");
const DASHBOARD: &str = include_str!("../dashboard.html");

/// Every route, behind the bearer token check and a deadline to the response headers (inside the trace
/// layer, so refusals and timeouts are traced too).
pub fn router(auth: crate::auth::Auth, deadline: std::time::Duration) -> Router<AppState> {
    Router::new()
        .route("/v1/series/price", get(series::list))
        .route("/v1/series/price/{instrument}", get(series::get))
        .route("/v1/metrics/latest", get(metrics::latest))
        .route("/v1/servers", get(metrics::servers))
        .route("/v1/series/metric/{host}/{field}", get(metrics::raw))
        .route("/v1/series/metric/{host}/{field}/rollups/{width}", get(metrics::rollups))
        .route("/v1/live/metrics", get(live::sse))
        .route("/v1/live/ws", get(live::ws))
        .route("/v1/uploads", post(uploads::start))
        .route("/v1/uploads/{id}", get(uploads::status))
        .route("/v1/uploads/{id}/events", get(uploads::events))
        .route("/v1/ports", get(ports::list))
        .route("/v1/ports/nearest", get(ports::nearest))
        .route("/v1/ports/countries", get(ports::countries))
        .route("/v1/ports/{unlocode}", get(ports::get))
        .route("/v1/fleet/plan", get(fleet::plan))
        .route("/v1/fleet/scores", get(fleet::scores))
        .route("/v1/surveys", get(surveys::list))
        .route("/v1/indices", get(indices::list))
        .route("/v1/indices/{name}", get(indices::get).put(indices::put))
        .route("/v1/events/{subject}", post(events::publish))
        .route("/v1/dlq", get(dlq::list))
        .route("/v1/dlq/{seq}/replay", post(dlq::replay))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .route("/docs", get(|| async { Html(DOCS) }))
        .route("/", get(|| async { Html(DASHBOARD) }))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            (axum::http::StatusCode::METHOD_NOT_ALLOWED, axum::Json(serde_json::json!({
                "error": {"code": "method_not_allowed", "message": "method not allowed on this route"}
            })))
                .into_response()
        })
        .layer(axum::middleware::from_fn_with_state(auth, crate::auth::check))
        .layer(axum::middleware::from_fn_with_state(deadline, within_deadline))
        .layer(axum::middleware::from_fn(no_nul_in_url))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<Body>| {
            tracing::info_span!("http", otel.kind = "server", method = %req.method(), path = %req.uri().path())
        }))
}

/// Refuses a URL holding an encoded NUL (`%00`) with 400 `invalid_url`: no name or parameter may
/// contain one (PostgreSQL text cannot), and refusing it here spares every route the check. Found by
/// fuzzing (`scripts/fuzz-api.sh`): `?shipment=%00` was a 500.
async fn no_nul_in_url(req: Request<Body>, next: axum::middleware::Next) -> axum::response::Response {
    let uri = req.uri();
    let has_nul = |s: &str| s.as_bytes().windows(3).any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0');
    if has_nul(uri.path()) || uri.query().is_some_and(has_nul) {
        return ApiError::bad(
            "invalid_url",
            "the URL holds a NUL character (%00), which no name or parameter may contain",
        )
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

/// Reads a whole JSON body up to the configured limit.
async fn body(state: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let max = state.config.max_body_bytes;
    axum::body::to_bytes(body, max).await.map_err(|_| ApiError::TooLarge(max))
}
