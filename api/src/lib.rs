//! The HTTP JSON API: reads from PostgreSQL, writes by publishing to NATS.
//!
//! # Layout
//! - [`error`]: the one error type; every error is `{"error": {"code", "message", "field"?}}`.
//! - [`auth`]: bearer tokens for writes (and, if asked, reads), compared in constant time.
//! - [`tls`]: HTTPS with rustls, as a listener (`axum::serve::Listener`).
//! - `server`: the connection loop (HTTP/1.1, graceful shutdown, a deadline for request headers).
//! - `routes/`: one module per resource: `series`, `samples` (server samples), `live`, `indices`, `ports`, `fleet`, `surveys`,
//!   `uploads`, `events`, `dlq`, `health`.
//! - [`uploads`]: streamed uploads and their progress (importer and processors).
//! - [`live`]: the hub relaying committed metric samples to Server-Sent Events and WebSocket readers.
//! - `sync`: the barrier behind `?fresh=true` (wait until the processors committed what the streams hold).
//! - `dashboard.html`: the live page at `/` (dependency-free: plain DOM and SVG).
//! - `openapi`: the OpenAPI 3.1 document, generated from the routes' `#[utoipa::path]` attributes and the
//!   derived schemas of their request and response types (utoipa, utoipa-axum), served at `/openapi.json`
//!   and rendered at `/docs`.
//!
//! [`router`] builds the app for a state; [`serve`] runs it on a listener until a token is cancelled.

pub mod auth;
pub mod error;
pub mod live;
mod openapi;
mod params;
mod routes;
pub mod series_cache;
mod server;
mod sync;
pub mod tls;
pub mod uploads;

use async_nats::jetstream;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sea_orm::DatabaseConnection;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tributary_broker::StreamsConfig;
use tributary_store::RollupConfig;

pub use live::Live;
pub use series_cache::SeriesCache;
pub use sync::Progress;
pub use uploads::Uploads;

pub use auth::ApiToken;
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
    /// How long any request may take to its response headers, in milliseconds; then 503
    /// `request_timeout`. Streams (Server-Sent Events, WebSocket, an upload's body) run on after their
    /// headers, so only their start is bounded.
    pub request_timeout_ms: u64,
    /// On shutdown, how long requests still open (an upload whose client is still sending, or stalled)
    /// get to finish before `tributary api` closes them and exits (1), in seconds.
    pub shutdown_grace_secs: u64,
    /// Bearer tokens that may write and read. Once any token (write or read) is set, every write needs
    /// `Authorization: Bearer <write token>` (401 without a known token, 403 with a read token). From the
    /// environment: `TRIBUTARY_API__WRITE_TOKENS='["t1","t2"]'` (or one bare token; a token that looks like
    /// a number must be quoted, or it is refused).
    #[serde(deserialize_with = "auth::one_or_many")]
    pub write_tokens: Vec<ApiToken>,
    /// Bearer tokens that may only read (`TRIBUTARY_API__READ_TOKENS`, as above).
    #[serde(deserialize_with = "auth::one_or_many")]
    pub read_tokens: Vec<ApiToken>,
    /// Whether reads need a token too (a read or a write token); needs at least one token. The probes and
    /// the static pages (`/`, `/docs`, `/openapi.json`) stay open.
    pub require_read_token: bool,
    /// A PEM certificate chain: with `tls_key_file`, the API serves HTTPS (and only HTTPS).
    pub tls_cert_file: Option<PathBuf>,
    /// The PEM private key of `tls_cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub tls_key_file: Option<PathBuf>,
    /// The most bytes of response bodies the price series read cache holds ([`SeriesCache`]); 0 turns
    /// it off.
    pub series_cache_bytes: usize,
    /// How often a live WebSocket (`/v1/live/ws`) is pinged, in seconds (at least 1). A reader that has
    /// not answered one ping by the next is taken as gone, and its stream ends.
    pub live_ping_secs: u64,
    /// How often the series cache checks that its PostgreSQL listener still hears commits, in
    /// milliseconds (at least 1; see [`SeriesCache`]): a body it serves is at most about two of these
    /// older than a commit whose notification a silently lost connection missed.
    pub series_cache_heartbeat_ms: u64,
    /// How long a connection may leave what the server sent unread (its reader stopped reading, or is
    /// gone) before it is closed, in seconds (at least 1; Linux only).
    pub send_stall_secs: u64,
    /// How long an upload's client may send nothing while the upload waits for more of its body, in
    /// seconds (at least 1); then the upload stops with that reason. Also the window over which
    /// `upload_min_bytes_per_sec` is measured.
    pub upload_idle_secs: u64,
    /// The least an upload's client must send, in bytes a second on average over each `upload_idle_secs`
    /// (the last bytes of a body aside); a slower upload stops with that reason. 0 asks only that it not
    /// go quiet. Without it, a byte inside each window held one of the `max_uploads` slots for good.
    pub upload_min_bytes_per_sec: u64,
    /// How many uploads may stream at once (at least 1): each holds a connection, a task and an importer
    /// for as long as its client sends, so another is refused (429 `too_many_uploads`) until one's body
    /// has been read.
    pub max_uploads: usize,
    /// How long a connection may take to send a request's headers, from when it opens and after each
    /// response, in milliseconds; then it is closed. 0 sets no deadline (behind a proxy that bounds
    /// header reads itself: the deadline costs about a quarter of the reads' throughput, BENCHMARKS.md).
    pub header_timeout_ms: u64,
}

/// Settings that contradict each other.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An empty string among the tokens.
    #[error("write_tokens and read_tokens must not hold an empty token")]
    EmptyToken,
    /// `require_read_token` with no token to read with.
    #[error("require_read_token needs at least one token in read_tokens or write_tokens")]
    NoReadToken,
    /// One of the two TLS files without the other.
    #[error("tls_cert_file and tls_key_file go together")]
    HalfTls,
}

impl ApiConfig {
    /// The request deadline (`request_timeout_ms`, at least 1 ms).
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(1))
    }

    /// How long one of the API's statements may run before PostgreSQL cancels it: nine tenths of the
    /// request deadline, so that a read stuck behind a lock ends with PostgreSQL's error (503
    /// `request_timeout`) before the deadline drops it mid-statement. A dropped statement ran on in
    /// PostgreSQL, and its connection came back to the pool only once it had ended; now that is at most
    /// this long after it started (a request of several statements, or one that waited for a
    /// connection, can still meet its deadline mid-statement).
    pub fn statement_timeout(&self) -> Duration {
        // PostgreSQL takes at most i32::MAX ms (24.8 days), and refuses the connection past it.
        (self.request_timeout() * 9 / 10).min(Duration::from_millis(i32::MAX as u64))
    }

    /// Refuses contradictory settings.
    pub fn check(&self) -> Result<(), ConfigError> {
        let tokens = || self.write_tokens.iter().chain(&self.read_tokens);
        if tokens().any(|t| t.expose().is_empty()) {
            return Err(ConfigError::EmptyToken);
        }
        if self.require_read_token && tokens().next().is_none() {
            return Err(ConfigError::NoReadToken);
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(ConfigError::HalfTls);
        }
        Ok(())
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 1 << 20,
            write_wait_ms: 5000,
            max_upload_bytes: 1 << 40,
            fresh_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            shutdown_grace_secs: 10,
            write_tokens: Vec::new(),
            read_tokens: Vec::new(),
            require_read_token: false,
            tls_cert_file: None,
            tls_key_file: None,
            series_cache_bytes: 32 << 20,
            live_ping_secs: 20,
            header_timeout_ms: 30_000,
            upload_idle_secs: 60,
            upload_min_bytes_per_sec: 1024,
            max_uploads: 16,
            send_stall_secs: 60,
            series_cache_heartbeat_ms: 5_000,
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
    pub rollups: RollupConfig,
    /// Live samples for streaming readers.
    pub live: Live,
    /// Uploads in progress and done.
    pub uploads: Uploads,
    /// The processors' durable consumer prefix (`processor.durable_prefix`), for fresh reads.
    pub durable_prefix: String,
    /// The processors' partitions (`processor.partitions`), for fresh reads.
    pub partitions: u32,
    /// How far the processors have committed, asked once for every fresh read waiting.
    pub progress: sync::Progress,
    /// Bodies of `GET /v1/series/price/{instrument}`, dropped by the processor's commit notifications.
    pub series_cache: SeriesCache,
}

impl AppState {
    fn write_wait(&self) -> Duration {
        Duration::from_millis(self.config.write_wait_ms)
    }

    fn fresh_timeout(&self) -> Duration {
        Duration::from_millis(self.config.fresh_timeout_ms)
    }

    /// The pool under the connection, for `tributary_store`'s reads.
    fn pool(&self) -> &tributary_store::sqlx::PgPool {
        self.db.get_postgres_connection_pool()
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    routes::router(&state).with_state(state)
}

/// Serves the API on `listener` (over TLS when `api.tls_cert_file` and `api.tls_key_file` are set) until
/// `shutdown` is cancelled, then ends live streams and finishes in-flight requests (all of them: the
/// caller bounds the wait, with `api.shutdown_grace_secs`).
///
/// Errors: contradictory settings or unusable TLS files (`InvalidInput`), NATS subscriptions failing,
/// and the server's own I/O errors.
pub async fn serve(listener: TcpListener, state: AppState, shutdown: CancellationToken) -> std::io::Result<()> {
    let invalid = |e: &dyn std::fmt::Display| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string());
    state.config.check().map_err(|e| invalid(&e))?;
    let tls = match (&state.config.tls_cert_file, &state.config.tls_key_file) {
        (Some(cert), Some(key)) => Some(tls::server_config(cert, key).map_err(|e| invalid(&e))?),
        _ => None,
    };
    state.live.relay(&state.nats).await.map_err(std::io::Error::other)?;
    state.uploads.relay(&state.nats).await.map_err(std::io::Error::other)?;
    if state.config.series_cache_bytes > 0 {
        let pool = state.db.get_postgres_connection_pool().clone();
        let heartbeat = Duration::from_millis(state.config.series_cache_heartbeat_ms.max(1));
        tokio::spawn(state.series_cache.clone().listen(pool, heartbeat, shutdown.clone()));
    }
    let (live, uploads) = (state.live.clone(), state.uploads.clone());
    let stopping = async move {
        shutdown.cancelled().await;
        live.close();
        uploads.close();
    };
    let header_timeout =
        (state.config.header_timeout_ms > 0).then(|| Duration::from_millis(state.config.header_timeout_ms));
    let stall = Duration::from_secs(state.config.send_stall_secs.max(1));
    match tls {
        Some(config) => {
            let listener = tls::TlsListener::new(listener, config, stall)?;
            server::serve(listener, router(state), header_timeout, stopping).await
        }
        None => {
            use axum::serve::ListenerExt;
            let listener = listener.tap_io(move |tcp| server::stall_timeout(tcp, stall));
            server::serve(listener, router(state), header_timeout, stopping).await
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ApiConfig;
    use std::time::Duration;

    /// Nine tenths of the deadline, within what PostgreSQL takes: past `i32::MAX` ms it refused every
    /// connection of the API's pool.
    #[test]
    fn statements_end_before_the_request_deadline_and_within_postgres_range() {
        let with = |ms| ApiConfig { request_timeout_ms: ms, ..ApiConfig::default() }.statement_timeout();
        assert_eq!(with(30_000), Duration::from_millis(27_000));
        assert_eq!(with(0), Duration::from_micros(900));
        assert_eq!(with(u64::MAX / 2), Duration::from_millis(i32::MAX as u64));
    }
}
