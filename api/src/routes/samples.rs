//! Server metrics: `GET /v1/metrics/latest`, `GET /v1/servers`, `GET /v1/series/metric/{host}/{field}` and
//! `GET /v1/series/metric/{host}/{field}/rollups/{width}`.

use crate::live::LiveSample;
use crate::params::{self, Params};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tributary_broker::Kind;
use tributary_store::{Page, samples};
use utoipa::ToSchema;

/// The latest sample of every server.
#[derive(Serialize, ToSchema)]
pub struct LatestMetrics {
    /// Newest first.
    pub servers: Vec<LiveSample>,
}

/// A page of the known servers.
#[derive(Serialize, ToSchema)]
pub struct Servers {
    /// The host to pass as `after` for the next page; null on the last one.
    pub next: Option<String>,
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
    pub buckets: Vec<samples::RollupBucket>,
    /// The field.
    pub field: String,
    /// The host.
    pub host: String,
    /// The width, e.g. `1m`.
    pub width: String,
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
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
        crate::openapi::Stale,
    ))]
pub async fn latest(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Json<LatestMetrics>, ApiError> {
    if !p.contains_key("limit") {
        return Err(ApiError::field("invalid_limit", "limit", "limit is required: a whole number from 1 to 10000"));
    }
    let limit = params::limit(&p, 100, 10_000)?;
    crate::sync::if_fresh(&s, &p, &[Kind::Sample]).await?;
    let rows = samples::latest_samples(s.pool(), limit as i64).await?;
    let servers = rows.into_iter().map(|l| LiveSample { fields: l.fields, host: l.host, ts: time(l.ts) }).collect();
    Ok(Json(LatestMetrics { servers }))
}

/// A page of the known servers, by host.
async fn hosts(s: &AppState, page: Page) -> Result<Servers, ApiError> {
    let rows = samples::hosts(s.pool(), &page).await?;
    let next = params::next(&page, &rows, |h| &h.host);
    let servers =
        rows.into_iter().map(|h| Server { fields: h.fields, host: h.host, last_seen: time(h.last_seen) }).collect();
    Ok(Servers { next, servers })
}

fresh_read! {
    /// The known servers with their fields and when each was last seen, a page at a time.
    servers: GET "/v1/servers", tag "metrics", operation_id "listServers",
    summary "Known servers with their fields and last-seen time",
    params crate::openapi::Page, 200 "The servers": Servers, waits for [Sample], read by hosts
}

async fn known(s: &AppState, host: &str, field: &str) -> Result<(), ApiError> {
    match samples::series_exists(s.pool(), host, field).await? {
        true => Ok(()),
        false => Err(ApiError::NotFound(format!("no metric series {host}/{field}"))),
    }
}

/// One series' raw samples, ascending; `limit` (default 1000) keeps the newest within `from`..`to`.
#[utoipa::path(get, path = "/v1/series/metric/{host}/{field}", tag = "metrics", operation_id = "getMetricSeries",
    summary = "Raw samples of one series (host/field), ascending by ts",
    params(
        ("host" = String, Path, description = "The host, from metric.<host>"),
        ("field" = String, Path, description = "The field, e.g. cpu_usage"),
        crate::openapi::Newest,
    ),
    responses(
        (status = 200, description = "The samples", body = MetricSeries),
        crate::openapi::Lookup,
    ))]
pub async fn raw(
    State(s): State<AppState>,
    Path((host, field)): Path<(String, String)>,
    Query(p): Query<Params>,
) -> Result<Json<MetricSeries>, ApiError> {
    let range = params::newest(&p, 1000, 100_000)?;
    crate::sync::if_fresh(&s, &p, &[Kind::Sample]).await?;
    let rows = samples::raw_samples(s.pool(), &host, &field, range).await?;
    if rows.is_empty() {
        known(&s, &host, &field).await?;
    }
    let points = rows.into_iter().rev().map(|p| MetricPoint { ts: time(p.ts), value: p.value }).collect();
    Ok(Json(MetricSeries { field, host, kind: MetricKind::Metric, points }))
}

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
        crate::openapi::Lookup,
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
    let range = params::newest(&p, 1000, 100_000)?;
    crate::sync::if_fresh(&s, &p, &[Kind::Sample]).await?;
    let rows = samples::rollup_buckets(s.pool(), &host, &field, w.secs(), range).await?;
    if rows.is_empty() {
        known(&s, &host, &field).await?;
    }
    // Ascending; a statistic that is not finite is written as null, which is all JSON has.
    let buckets = rows.into_iter().rev().collect();
    Ok(Json(Rollups { buckets, field, host, width: w.to_string() }))
}
