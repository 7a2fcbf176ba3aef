//! The benchmark's trace collector: an OTLP/HTTP endpoint that counts the spans a processor exports, so
//! that Tributary's path is measured exporting its traces as deployed (to Jaeger), not only creating them.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts the spans posted to `<endpoint>/v1/traces` until dropped.
pub struct TraceSink {
    /// The base URL to give as `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    spans: Arc<AtomicU64>,
    server: tokio::task::JoinHandle<()>,
}

async fn receive(State(spans): State<Arc<AtomicU64>>, body: Bytes) -> Vec<u8> {
    if let Ok(req) = ExportTraceServiceRequest::decode(body) {
        let n: usize = req.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        spans.fetch_add(n as u64, Ordering::Relaxed);
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

impl TraceSink {
    /// Listens on a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<TraceSink> {
        let spans = Arc::new(AtomicU64::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let app = Router::new().route("/v1/traces", post(receive)).with_state(spans.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(TraceSink { endpoint, spans, server })
    }

    /// The spans received so far.
    pub fn spans(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }
}

impl Drop for TraceSink {
    fn drop(&mut self) {
        self.server.abort();
    }
}
