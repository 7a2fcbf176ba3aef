//! `/healthz` (the process answers), `/readyz` (NATS and PostgreSQL reachable, migrations applied) and
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
    let ready = nats && db && migrations;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {"nats": nats, "postgres": db, "migrations": migrations},
    });
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}

pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}
