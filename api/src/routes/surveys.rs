//! Surveys: `GET /v1/surveys?limit=&device=&location=&fresh=`.
//!
//! With `fresh=true` the read first asks the aggregator for a pull round (joining one in flight), then
//! waits until the processor has committed everything in the SURVEYS stream, so the answer holds every
//! item the providers had when the round asked them. Without it, it answers from what is stored.

use crate::params::{self, Params};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use sea_orm::sqlx;
use serde_json::{Value, json};
use std::time::Instant;
use tributary_aggregator::{RoundReport, SYNC_SUBJECT};
use tributary_broker::Kind;

fn internal(what: &'static str) -> impl FnOnce(sqlx::Error) -> ApiError {
    move |e| ApiError::Internal(anyhow::Error::new(e).context(what))
}

type ItemRow = (String, i64, String, String, String, DateTime<Utc>);
type ProviderRow = (String, Option<String>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, i64, Option<String>);

/// Items, newest first, with each provider's latest pull.
pub async fn list(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Json<Value>, ApiError> {
    let limit = params::limit(&p, 100, 10_000)?;
    let round = if crate::sync::fresh(&p)? {
        let deadline = Instant::now() + s.fresh_timeout();
        let report = round(&s).await?;
        crate::sync::committed(&s, &[Kind::Survey], deadline).await?;
        Some(report)
    } else {
        None
    };
    let pool = s.db.get_postgres_connection_pool();
    let items: Vec<ItemRow> = sqlx::query_as(
        "SELECT provider, provider_id, text, device, location, created_at FROM survey_items
          WHERE ($1::text IS NULL OR device = $1) AND ($2::text IS NULL OR location = $2)
          ORDER BY created_at DESC, provider, provider_id DESC LIMIT $3",
    )
    .bind(p.get("device"))
    .bind(p.get("location"))
    .bind(limit as i64)
    .fetch_all(pool)
    .await
    .map_err(internal("reading survey items"))?;
    let providers: Vec<ProviderRow> = sqlx::query_as(
        "SELECT provider, status, last_sync, last_pull, cursor, error FROM survey_providers ORDER BY provider",
    )
    .fetch_all(pool)
    .await
    .map_err(internal("reading survey providers"))?;
    let mut body = json!({
        "items": items.into_iter().map(|(provider, id, text, device, location, created_at)| json!({
            "provider": provider, "provider_id": id, "text": text, "device": device, "location": location,
            "created_at": created_at,
        })).collect::<Vec<_>>(),
        "providers": providers.into_iter().map(|(provider, status, last_sync, last_pull, cursor, error)| json!({
            "provider": provider, "status": status, "last_sync": last_sync, "last_pull": last_pull,
            "cursor": cursor, "error": error,
        })).collect::<Vec<_>>(),
    });
    if let Some(r) = round {
        body["round"] =
            json!({"round": r.round, "started_at": r.started_at, "took_ms": r.took_ms, "providers": r.providers});
    }
    Ok(Json(body))
}

/// Asks the aggregator for a round and waits for its report.
async fn round(s: &AppState) -> Result<RoundReport, ApiError> {
    let ask = s.nats.request(SYNC_SUBJECT, "{}".into());
    let reply = match tokio::time::timeout(s.fresh_timeout(), ask).await {
        Err(_) => {
            return Err(ApiError::Timeout("the aggregator's round did not finish within the fresh timeout".into()));
        }
        Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
            return Err(ApiError::Unavailable("no aggregator is running to pull the providers".into()));
        }
        Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::TimedOut => {
            return Err(ApiError::Timeout("the aggregator's round did not finish in time".into()));
        }
        Ok(Err(e)) => return Err(ApiError::Unavailable(format!("cannot reach the aggregator: {e}"))),
        Ok(Ok(m)) => m,
    };
    serde_json::from_slice(&reply.payload)
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("decoding the aggregator's round report")))
}
