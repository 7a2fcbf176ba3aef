//! Server metrics: `GET /v1/metrics/latest`, `GET /v1/servers`, `GET /v1/series/metric/{host}/{field}` and
//! `GET /v1/series/metric/{host}/{field}/rollups/{width}`.

use crate::error::ErrorBody;
use crate::params::{self, Params};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, SecondsFormat, Utc};
use sea_orm::sqlx::{self, PgPool};
use serde::Serialize;
use serde_json::Value;
use tributary_broker::Kind;
use utoipa::ToSchema;

/// A server's sample: `{"host", "ts", "fields"}` (also what the live streams carry).
#[derive(Serialize, ToSchema)]
pub struct LiveSample {
    /// Numeric fields by name.
    #[schema(value_type = std::collections::BTreeMap<String, f64>)]
    pub fields: Value,
    /// The host, from `metric.<host>`.
    pub host: String,
    /// When.
    #[schema(format = DateTime)]
    pub ts: String,
}

/// The latest sample of every server.
#[derive(Serialize, ToSchema)]
pub struct LatestMetrics {
    /// Newest first.
    pub servers: Vec<LiveSample>,
}

/// Known servers.
#[derive(Serialize, ToSchema)]
pub struct Servers {
    /// By host.
    pub servers: Vec<Server>,
}

/// One server.
#[derive(Serialize, ToSchema)]
pub struct Server {
    /// Its fields, by name.
    pub fields: Vec<String>,
    /// The host.
    pub host: String,
    /// Its newest sample's time.
    #[schema(format = DateTime)]
    pub last_seen: String,
}

/// The kind of a metric series.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// Server metrics.
    Metric,
}

/// One series' raw samples.
#[derive(Serialize, ToSchema)]
pub struct MetricSeries {
    /// The field.
    pub field: String,
    /// The host.
    pub host: String,
    /// Always `metric`.
    pub kind: MetricKind,
    /// Ascending by ts.
    pub points: Vec<MetricPoint>,
}

/// One sample.
#[derive(Serialize, ToSchema)]
pub struct MetricPoint {
    /// When.
    #[schema(format = DateTime)]
    pub ts: String,
    /// The value.
    pub value: f64,
}

/// One series' rollups of one width.
#[derive(Serialize, ToSchema)]
pub struct Rollups {
    /// Ascending by start.
    pub buckets: Vec<Bucket>,
    /// The field.
    pub field: String,
    /// The host.
    pub host: String,
    /// The width, e.g. `1m`.
    pub width: String,
}

/// One time bucket; a statistic that is not a finite number (a sum past f64's range) is null.
#[derive(Serialize, ToSchema)]
pub struct Bucket {
    /// Samples in it.
    #[schema(minimum = 1)]
    pub count: i64,
    /// The earliest sample's value.
    pub first: Option<f64>,
    /// The latest sample's value.
    pub last: Option<f64>,
    /// The largest.
    pub max: Option<f64>,
    /// The mean.
    pub mean: Option<f64>,
    /// The smallest.
    pub min: Option<f64>,
    /// The median (nearest rank).
    pub p50: Option<f64>,
    /// The 95th percentile.
    pub p95: Option<f64>,
    /// The 99th percentile.
    pub p99: Option<f64>,
    /// Its start.
    #[schema(format = DateTime)]
    pub start: String,
    /// The sum.
    pub sum: Option<f64>,
}

fn pool(s: &AppState) -> &PgPool {
    s.db.get_postgres_connection_pool()
}

fn internal(what: &'static str) -> impl FnOnce(sqlx::Error) -> ApiError {
    move |e| ApiError::Internal(anyhow::Error::new(e).context(what))
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `x` when it is a finite number (JSON has no other).
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// The latest sample of every server, newest first; `limit` (1–10000) is required.
#[utoipa::path(get, path = "/v1/metrics/latest", tag = "metrics", operation_id = "getLatestMetrics",
    summary = "The latest sample of every server, newest first",
    params(
        ("limit" = u32, Query, minimum = 1, maximum = 10000, description = "Required: at most this many servers \
            (1 to 10000). Missing, zero, negative or not a whole number: 400 invalid_limit."),
        crate::openapi::Fresh,
    ),
    responses(
        (status = 200, description = "The servers' latest samples", body = LatestMetrics),
        (status = 504, description = "A fresh read's wait ran out", body = ErrorBody),
    ))]
pub async fn latest(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Json<LatestMetrics>, ApiError> {
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
    let servers = rows.into_iter().map(|(host, ts, fields)| LiveSample { fields, host, ts: time(ts) }).collect();
    Ok(Json(LatestMetrics { servers }))
}

/// Every known server with its fields and when it was last seen.
#[utoipa::path(get, path = "/v1/servers", tag = "metrics", operation_id = "listServers",
    summary = "Known servers with their fields and last-seen time",
    params(crate::openapi::Fresh),
    responses(
        (status = 200, description = "The servers", body = Servers),
        (status = 504, description = "A fresh read's wait ran out", body = ErrorBody),
    ))]
pub async fn servers(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Json<Servers>, ApiError> {
    crate::sync::if_fresh(&s, &p, &[Kind::Metric]).await?;
    let rows: Vec<(String, Vec<String>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT host, array_agg(field ORDER BY field), max(last_ts) FROM metric_series GROUP BY host ORDER BY host",
    )
    .fetch_all(pool(&s))
    .await
    .map_err(internal("listing servers"))?;
    let servers = rows.into_iter().map(|(host, fields, seen)| Server { fields, host, last_seen: time(seen) }).collect();
    Ok(Json(Servers { servers }))
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
#[utoipa::path(get, path = "/v1/series/metric/{host}/{field}", tag = "metrics", operation_id = "getMetricSeries",
    summary = "Raw samples of one series (host/field), ascending by ts",
    params(
        ("host" = String, Path, description = "The host, from metric.<host>"),
        ("field" = String, Path, description = "The field, e.g. cpu_usage"),
        crate::openapi::Range,
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100000,
            description = "Keep the newest N in range (1 to 100000, default 1000)."),
        crate::openapi::Fresh,
    ),
    responses(
        (status = 200, description = "The samples", body = MetricSeries),
        (status = 404, description = "No such series", body = ErrorBody),
        (status = 504, description = "A fresh read's wait ran out", body = ErrorBody),
    ))]
pub async fn raw(
    State(s): State<AppState>,
    Path((host, field)): Path<(String, String)>,
    Query(p): Query<Params>,
) -> Result<Json<MetricSeries>, ApiError> {
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
    let points = rows.into_iter().rev().map(|(ts, value)| MetricPoint { ts: time(ts), value }).collect();
    Ok(Json(MetricSeries { field, host, kind: MetricKind::Metric, points }))
}

type BucketRow = (DateTime<Utc>, i64, f64, f64, f64, f64, f64, f64, f64, f64, f64);

/// One series' rollups of one width, ascending; `limit` (default 1000) keeps the newest within `from`..`to`
/// (bucket starts).
#[utoipa::path(get, path = "/v1/series/metric/{host}/{field}/rollups/{width}", tag = "metrics",
    operation_id = "getMetricRollups",
    summary = "Time-bucket rollups of one series, ascending by start",
    description = "count, sum, min, max, mean, first, last and nearest-rank p50/p95/p99 per bucket. Buckets of the \
        smallest configured width are exact; wider ones are merged from them, with percentiles within 1% relative \
        error. A late or corrected sample recomputes only its buckets.",
    params(
        ("host" = String, Path, description = "The host"),
        ("field" = String, Path, description = "The field"),
        ("width" = String, Path, description = "A configured width, e.g. 1m or 1h (else 400 invalid_width)"),
        crate::openapi::BucketRange,
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100000,
            description = "Keep the newest N in range (1 to 100000, default 1000)."),
        crate::openapi::Fresh,
    ),
    responses(
        (status = 200, description = "The buckets", body = Rollups),
        (status = 404, description = "No such series", body = ErrorBody),
        (status = 504, description = "A fresh read's wait ran out", body = ErrorBody),
    ))]
pub async fn rollups(
    State(s): State<AppState>,
    Path((host, field, width)): Path<(String, String, String)>,
    Query(p): Query<Params>,
) -> Result<Json<Rollups>, ApiError> {
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
    let buckets = rows
        .into_iter()
        .rev()
        .map(|(start, count, sum, min, max, mean, first, last, p50, p95, p99)| Bucket {
            count,
            first: finite(first),
            last: finite(last),
            max: finite(max),
            mean: finite(mean),
            min: finite(min),
            p50: finite(p50),
            p95: finite(p95),
            p99: finite(p99),
            start: time(start),
            sum: finite(sum),
        })
        .collect();
    Ok(Json(Rollups { buckets, field, host, width: w.to_string() }))
}
