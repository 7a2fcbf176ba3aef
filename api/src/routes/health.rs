//! `/healthz` (the process answers), `/readyz` (NATS and PostgreSQL reachable, migrations applied, no
//! consumer of a processor in this process failing on every message) and
//! `/metrics` (Prometheus text).

use crate::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// The process answers.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: HealthStatus,
}

/// `ok`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Alive.
    Ok,
}

/// What readiness checked.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// Each check's outcome.
    pub checks: ReadinessChecks,
    /// Durable consumers of a processor in this process whose every message fails, with why.
    pub failing_consumers: BTreeMap<String, String>,
    /// `ready` (200) or `not_ready` (503).
    pub status: ReadyStatus,
}

/// Ready or not.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadyStatus {
    /// Every check passed.
    Ready,
    /// A check failed.
    NotReady,
}

/// Each readiness check.
#[derive(Serialize, ToSchema)]
pub struct ReadinessChecks {
    /// No consumer of an in-process processor fails on every message.
    pub consumers: bool,
    /// The migrations are applied.
    pub migrations: bool,
    /// NATS is connected.
    pub nats: bool,
    /// PostgreSQL answers.
    pub postgres: bool,
}

#[utoipa::path(get, path = "/healthz", tag = "operations", operation_id = "healthz", summary = "Liveness",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: HealthStatus::Ok })
}

#[utoipa::path(get, path = "/readyz", tag = "operations", operation_id = "readyz",
    summary = "Readiness: NATS and PostgreSQL reachable, migrations applied, no consumer of an in-process processor \
        failing on every message",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready", body = Readiness),
    ))]
pub async fn readyz(State(s): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let nats = s.nats.connection_state() == async_nats::connection::State::Connected;
    let db = tributary_store::db::answers(&s.db).await;
    let migrations = db && tributary_store::db::migrations_applied(&s.db).await.unwrap_or(false);
    // Consumers of a processor in this process (`tributary up`) whose every message fails.
    let failing = tributary_broker::consume::failing(Some(&s.nats.server_info().server_id));
    let ready = nats && db && migrations && failing.is_empty();
    let body = Readiness {
        status: if ready { ReadyStatus::Ready } else { ReadyStatus::NotReady },
        checks: ReadinessChecks { nats, postgres: db, migrations, consumers: failing.is_empty() },
        failing_consumers: failing,
    };
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}

#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics", summary = "Prometheus metrics",
    responses((status = 200, description = "Prometheus text format", body = String,
        content_type = "text/plain; version=0.0.4")))]
pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}
