//! `/healthz` (the process answers), `/readyz` (NATS and PostgreSQL reachable, migrations applied, no
//! consumer of a processor in this process failing on every message) and
//! `/metrics` (Prometheus text).

use crate::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(s): State<AppState>) -> (StatusCode, Json<Value>) {
    let nats = s.nats.connection_state() == async_nats::connection::State::Connected;
    let db = s.db.execute_unprepared("SELECT 1").await.is_ok();
    let migrations = db && tributary_store::db::migrations_applied(&s.db).await.unwrap_or(false);
    // Consumers of a processor in this process (`tributary up`) whose every message fails.
    let failing = tributary_broker::consume::failing(Some(&s.nats.server_info().server_id));
    let ready = nats && db && migrations && failing.is_empty();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {"nats": nats, "postgres": db, "migrations": migrations, "consumers": failing.is_empty()},
        "failing_consumers": failing,
    });
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}

pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}
