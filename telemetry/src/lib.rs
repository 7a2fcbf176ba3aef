//! Telemetry for every role: logs, traces exported over OTLP, and Prometheus metrics.
//!
//! [`init`] installs, once per process, a `tracing` subscriber (logs to stderr, filtered by
//! `RUST_LOG` or the configured filter), an OpenTelemetry layer exporting spans over OTLP/HTTP when an
//! endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`, which Jaeger accepts on port 4318; the old
//! Jaeger exporter crate is deprecated), the W3C trace-context propagator, and the Prometheus recorder
//! whose handle renders `/metrics`. The returned [`Telemetry`] flushes spans when dropped.

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::Deserialize;
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Telemetry settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318`; `OTEL_EXPORTER_OTLP_ENDPOINT` overrides it.
    /// No endpoint: spans are not exported.
    pub otlp_endpoint: Option<String>,
    /// The share of new traces sampled, 0 to 1 (a sampled parent is always followed).
    pub sampling_ratio: f64,
    /// The log filter when `RUST_LOG` is unset, e.g. `info` or `info,tributary_broker=debug`.
    pub log: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { otlp_endpoint: None, sampling_ratio: 1.0, log: "info,sqlx=warn".into() }
    }
}

/// Keeps the exporter alive; flushes and shuts it down when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
    }
}

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The buckets (seconds) of the commit latency and of the phases it is made of: finer steps where the
/// freshness targets are (milliseconds), and enough above 100 ms that a saturated machine's quantiles are
/// not all interpolated inside one wide bucket. The benchmark reads its quantiles from these.
pub const FRESHNESS_BUCKETS: [f64; 30] = [
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.01, 0.0125, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The process's Prometheus handle (installed on first use).
pub fn metrics() -> PrometheusHandle {
    METRICS
        .get_or_init(|| {
            let latency = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(tributary_broker::metric_names::COMMIT_LATENCY.into()),
                    &FRESHNESS_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(tributary_broker::metric_names::PHASE_SECONDS.into()),
                        &FRESHNESS_BUCKETS,
                    )
                })
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency))
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_size".into()),
                        &[1.0, 10.0, 100.0, 500.0, 1000.0, 5000.0],
                    )
                })
                .expect("bucket lists are not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests embedding several roles): keep ours for
            // rendering either way.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

/// The help text of every metric the pipeline records (Prometheus' `# HELP` lines), from the one list
/// of them ([`tributary_broker::metric_names::ALL`]).
fn describe() {
    use tributary_broker::metric_names::{ALL, MetricKind};
    for (name, kind, help) in ALL {
        match kind {
            MetricKind::Counter => metrics::describe_counter!(*name, *help),
            MetricKind::Gauge => metrics::describe_gauge!(*name, *help),
            MetricKind::Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
}

/// Installs logging, tracing and metrics for `service`. Call once, early in `main`.
pub fn init(service: &str, cfg: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    metrics();
    let endpoint =
        std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|s| !s.is_empty()).or(cfg.otlp_endpoint.clone());
    let filter =
        EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&cfg.log)).context("telemetry.log")?;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter);
    let provider = match endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                .build()
                .context("building the OTLP exporter")?;
            let ratio = cfg.sampling_ratio.clamp(0.0, 1.0);
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
                    .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service.to_owned()).build())
                    .build(),
            )
        }
        None => None,
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service.to_owned()))
            .with_filter(tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO))
    });
    // A second init in one process (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(fmt).with(otel).try_init();
    Ok(Telemetry { provider })
}
