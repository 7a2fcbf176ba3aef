//! The HTTP JSON API: reads from PostgreSQL, writes by publishing to NATS.
//!
//! # Layout
//! - [`error`]: the one error type; every error is `{"error": {"code", "message", "field"?}}`.
//! - `routes/`: one module per resource: `series`, `indices`, `events`, `dlq`, `health`.
//! - `openapi.json`: the OpenAPI 3.1 document served at `/openapi.json`, with a docs page at `/docs`.
//!
//! [`router`] builds the app for a state; [`serve`] runs it on a listener until a token is cancelled.

pub mod error;
mod params;
mod routes;

use async_nats::jetstream;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sea_orm::DatabaseConnection;
use serde::Deserialize;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tributary_broker::StreamsConfig;

pub use error::ApiError;

/// API settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address to listen on.
    pub listen: String,
    /// The largest request body accepted by JSON routes, in bytes.
    pub max_body_bytes: usize,
    /// How long `PUT /v1/indices/{name}` waits for the processor to store the definition before it
    /// answers 202 instead of 200, in milliseconds.
    pub write_wait_ms: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { listen: "127.0.0.1:8080".into(), max_body_bytes: 1 << 20, write_wait_ms: 5000 }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// PostgreSQL.
    pub db: DatabaseConnection,
    /// The NATS connection (for readiness).
    pub nats: async_nats::Client,
    /// JetStream (for publishing and the dead-letter stream).
    pub js: jetstream::Context,
    /// Stream names.
    pub streams: StreamsConfig,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Limits and waits.
    pub config: ApiConfig,
}

impl AppState {
    fn write_wait(&self) -> Duration {
        Duration::from_millis(self.config.write_wait_ms)
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    routes::router().with_state(state)
}

/// Serves the API on `listener` until `shutdown` is cancelled, then finishes in-flight requests.
pub async fn serve(listener: TcpListener, state: AppState, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown.cancelled_owned()).await
}
