//! The HTTP JSON API: reads from PostgreSQL, writes by publishing to NATS.
//!
//! # Layout
//! - [`error`]: the one error type; every error is `{"error": {"code", "message", "field"?}}`.
//! - `routes/`: one module per resource: `series`, `metrics`, `live`, `indices`, `ports`, `fleet`, `surveys`,
//!   `uploads`, `events`, `dlq`, `health`.
//! - [`uploads`]: streamed uploads and their progress (importer and processors).
//! - [`live`]: the hub relaying committed metric samples to Server-Sent Events and WebSocket readers.
//! - `sync`: the barrier behind `?fresh=true` (wait until the processors committed what the streams hold).
//! - `dashboard.html`: the live page at `/` (dependency-free: plain DOM and SVG).
//! - `openapi.json`: the OpenAPI 3.1 document served at `/openapi.json`, with a docs page at `/docs`.
//!
//! [`router`] builds the app for a state; [`serve`] runs it on a listener until a token is cancelled.

pub mod error;
pub mod live;
mod params;
mod routes;
mod sync;
pub mod uploads;

use async_nats::jetstream;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sea_orm::DatabaseConnection;
use serde::Deserialize;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tributary_broker::StreamsConfig;
use tributary_store::MetricsConfig;

pub use live::Live;
pub use uploads::Uploads;

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
    /// The largest upload body, in bytes (`POST /v1/uploads`; streamed, never held whole).
    pub max_upload_bytes: u64,
    /// How long a `?fresh=true` read waits (for a survey round, then for the processors' commits) before it
    /// answers 504, in milliseconds.
    pub fresh_timeout_ms: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 1 << 20,
            write_wait_ms: 5000,
            max_upload_bytes: 1 << 40,
            fresh_timeout_ms: 10_000,
        }
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
    /// Rollup widths (for `/rollups/{width}`).
    pub rollups: MetricsConfig,
    /// Live samples for streaming readers.
    pub live: Live,
    /// Uploads in progress and done.
    pub uploads: Uploads,
    /// The processors' durable consumer prefix (`processor.durable_prefix`), for fresh reads.
    pub durable_prefix: String,
    /// The processors' partitions (`processor.partitions`), for fresh reads.
    pub partitions: u32,
}

impl AppState {
    fn write_wait(&self) -> Duration {
        Duration::from_millis(self.config.write_wait_ms)
    }

    fn fresh_timeout(&self) -> Duration {
        Duration::from_millis(self.config.fresh_timeout_ms)
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    routes::router().with_state(state)
}

/// Serves the API on `listener` until `shutdown` is cancelled, then ends live streams and finishes
/// in-flight requests.
pub async fn serve(listener: TcpListener, state: AppState, shutdown: CancellationToken) -> std::io::Result<()> {
    state.live.relay(&state.nats).await.map_err(std::io::Error::other)?;
    state.uploads.relay(&state.nats).await.map_err(std::io::Error::other)?;
    let (live, uploads) = (state.live.clone(), state.uploads.clone());
    let stopping = async move {
        shutdown.cancelled().await;
        live.close();
        uploads.close();
    };
    axum::serve(listener, router(state)).with_graceful_shutdown(stopping).await
}
