//! Server metrics: `GET /v1/metrics/latest`, `GET /v1/servers`, `GET /v1/series/metric/{host}/{field}` and
//! `GET /v1/series/metric/{host}/{field}/rollups/{width}`.

use crate::params::{self, Params};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, SecondsFormat, Utc};
use sea_orm::sqlx::{self, PgPool};
use serde_json::{Value, json};
use tributary_broker::Kind;

fn pool(s: &AppState) -> &PgPool {
    s.db.get_postgres_connection_pool()
}

fn internal(what: &'static str) -> impl FnOnce(sqlx::Error) -> ApiError {
    move |e| ApiError::Internal(anyhow::Error::new(e).context(what))
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The latest sample of every server, newest first; `limit` (1–10000) is required.
pub async fn latest(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Json<Value>, ApiError> {
    if !p.contains_key("limit") {
        return Err(ApiError::field("invalid_limit", "limit", "limit is required: a whole number from 1 to 10000"));
    }
    let limit = params::limit(&p, 100, 10_000)?;
    crate::sync::if_fresh(&s, &p, &[Kind::Metric]).await?;
    let rows: Vec<(String, DateTime<Utc>, Value)> =
        sqlx::query_as("SELECT host, ts, fields FROM metric_latest ORDER BY ts DESC, host LIMIT $1")
            .bind(limit as i64)
            .fetch_all(pool(&s))
            .await
            .map_err(internal("reading the latest samples"))?;
    let servers: Vec<Value> =
        rows.into_iter().map(|(host, ts, fields)| json!({"host": host, "ts": time(ts), "fields": fields})).collect();
    Ok(Json(json!({ "servers": servers })))
}

/// Every known server with its fields and when it was last seen.
pub async fn servers(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Json<Value>, ApiError> {
    crate::sync::if_fresh(&s, &p, &[Kind::Metric]).await?;
    let rows: Vec<(String, Vec<String>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT host, array_agg(field ORDER BY field), max(last_ts) FROM metric_series GROUP BY host ORDER BY host",
    )
    .fetch_all(pool(&s))
    .await
    .map_err(internal("listing servers"))?;
    let servers: Vec<Value> = rows
        .into_iter()
        .map(|(host, fields, seen)| json!({"host": host, "fields": fields, "last_seen": time(seen)}))
        .collect();
    Ok(Json(json!({ "servers": servers })))
}

async fn known(s: &AppState, host: &str, field: &str) -> Result<(), ApiError> {
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM metric_series WHERE host = $1 AND field = $2")
        .bind(host)
        .bind(field)
        .fetch_optional(pool(s))
        .await
        .map_err(internal("finding a metric series"))?;
    match found {
        Some(_) => Ok(()),
        None => Err(ApiError::NotFound(format!("no metric series {host}/{field}"))),
    }
}

/// One series' raw samples, ascending; `limit` (default 1000) keeps the newest within `from`..`to`.
pub async fn raw(
    State(s): State<AppState>,
    Path((host, field)): Path<(String, String)>,
    Query(p): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    let (from, to) = params::range(&p)?;
    let limit = params::limit(&p, 1000, 100_000)?;
    crate::sync::if_fresh(&s, &p, &[Kind::Metric]).await?;
    let rows: Vec<(DateTime<Utc>, f64)> = sqlx::query_as(
        "SELECT ts, value FROM metric_samples
          WHERE host = $1 AND field = $2 AND ($3::timestamptz IS NULL OR ts >= $3) AND ($4::timestamptz IS NULL OR ts <= $4)
          ORDER BY ts DESC LIMIT $5",
    )
    .bind(&host)
    .bind(&field)
    .bind(from)
    .bind(to)
    .bind(limit as i64)
    .fetch_all(pool(&s))
    .await
    .map_err(internal("reading metric samples"))?;
    if rows.is_empty() {
        known(&s, &host, &field).await?;
    }
    let points: Vec<Value> = rows.into_iter().rev().map(|(ts, v)| json!({"ts": time(ts), "value": v})).collect();
    Ok(Json(json!({"kind": "metric", "host": host, "field": field, "points": points})))
}

type BucketRow = (DateTime<Utc>, i64, f64, f64, f64, f64, f64, f64, f64, f64, f64);

/// One series' rollups of one width, ascending; `limit` (default 1000) keeps the newest within `from`..`to`
/// (bucket starts).
pub async fn rollups(
    State(s): State<AppState>,
    Path((host, field, width)): Path<(String, String, String)>,
    Query(p): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    let w = s.rollups.width(&width).ok_or_else(|| {
        ApiError::field(
            "invalid_width",
            "width",
            format!("no rollups of width {width:?}; configured: {}", s.rollups.width_names().join(", ")),
        )
    })?;
    let (from, to) = params::range(&p)?;
    let limit = params::limit(&p, 1000, 100_000)?;
    crate::sync::if_fresh(&s, &p, &[Kind::Metric]).await?;
    let rows: Vec<BucketRow> = sqlx::query_as(
        "SELECT start, count, sum, min, max, mean, first, last, p50, p95, p99 FROM metric_rollups
          WHERE host = $1 AND field = $2 AND width = $3
            AND ($4::timestamptz IS NULL OR start >= $4) AND ($5::timestamptz IS NULL OR start <= $5)
          ORDER BY start DESC LIMIT $6",
    )
    .bind(&host)
    .bind(&field)
    .bind(w.secs() as i32)
    .bind(from)
    .bind(to)
    .bind(limit as i64)
    .fetch_all(pool(&s))
    .await
    .map_err(internal("reading rollups"))?;
    if rows.is_empty() {
        known(&s, &host, &field).await?;
    }
    let buckets: Vec<Value> = rows
        .into_iter()
        .rev()
        .map(|(start, count, sum, min, max, mean, first, last, p50, p95, p99)| {
            json!({"start": time(start), "count": count, "sum": sum, "min": min, "max": max, "mean": mean,
                   "first": first, "last": last, "p50": p50, "p95": p95, "p99": p99})
        })
        .collect();
    Ok(Json(json!({"host": host, "field": field, "width": w.to_string(), "buckets": buckets})))
}
