//! One module per command; this one holds what several share (listening, a role's metrics listener,
//! draining on a signal, reporting undelivered publishes).
//!
//! # Layout
//! - [`up`]: `tributary up`, the whole system in one process with a demo.
//! - [`roles`]: `processor`, `api`, `aggregator` and `migrate`, each role alone.
//! - [`gatherer`]: `gatherer prices|metrics|ports|fleet|survey-provider`.
//! - [`import`]: `import FILE --kind K`.
//! - [`fleet`]: `fleet plan|bench`, with no server.
//! - [`bench`]: `bench` and `bench-ports`, which exec the `tributary-bench` binary.

pub(crate) mod bench;
pub(crate) mod fleet;
pub(crate) mod gatherer;
pub(crate) mod import;
pub(crate) mod roles;
pub(crate) mod up;

use anyhow::Context;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Runs a role to its end; once `stop` fires, gives the work in hand `grace` to finish, then gives up on it
/// with an error saying what was `abandoned`.
pub(crate) async fn drain_within(
    role: impl std::future::Future<Output = anyhow::Result<()>>,
    stop: &CancellationToken,
    grace: Duration,
    abandoned: &str,
) -> anyhow::Result<()> {
    tokio::pin!(role);
    tokio::select! {
        r = &mut role => return r,
        _ = stop.cancelled() => {}
    }
    match tokio::time::timeout(grace, role).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!("still at work {} s after the signal: {abandoned}", grace.as_secs()),
    }
}

pub(crate) async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))
}

/// A role's `/readyz` on its metrics listener: 503 while a consumer of it fails on every message.
pub(crate) async fn processor_readyz() -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    let failing = tributary_broker::consume::failing(None);
    let status =
        if failing.is_empty() { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "status": if failing.is_empty() { "ready" } else { "not_ready" },
        "failing_consumers": failing,
    });
    (status, axum::Json(body))
}

/// `/metrics`, `/healthz` and `/readyz` for roles without the API.
pub(crate) async fn serve_metrics(addr: Option<String>, stop: CancellationToken) -> anyhow::Result<()> {
    let Some(addr) = addr else { return Ok(()) };
    let listener = bind(&addr).await?;
    let handle = tributary_telemetry::metrics();
    let router = axum::Router::new()
        .route("/metrics", axum::routing::get(move || std::future::ready(handle.render())))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(processor_readyz));
    tokio::spawn(async move { axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await });
    Ok(())
}

/// Lists the first publishes that were not delivered, with why.
pub(crate) fn report_undelivered(failed: &[(String, String)]) {
    for (subject, why) in failed.iter().take(20) {
        eprintln!("  not delivered to {subject}: {why}");
    }
    if failed.len() > 20 {
        eprintln!("  … and {} more", failed.len() - 20);
    }
}
