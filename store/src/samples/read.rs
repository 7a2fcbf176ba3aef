//! The API's reads of the metric tables.

use crate::{Page, Range};
use chrono::{DateTime, Utc};
use sea_orm::sqlx::{self, PgPool};
use serde::Serialize;

/// A host's latest message (`metric_latest`).
#[derive(Debug, Clone, PartialEq)]
pub struct LatestSample {
    /// The server.
    pub host: String,
    /// The message's time.
    pub ts: DateTime<Utc>,
    /// All its fields, a JSON object of numbers.
    pub fields: serde_json::Value,
}

/// A known server (from `metric_series`).
#[derive(Debug, Clone, PartialEq)]
pub struct HostFields {
    /// The server.
    pub host: String,
    /// Its fields, ascending.
    pub fields: Vec<String>,
    /// The latest sample time of any of its series.
    pub last_seen: DateTime<Utc>,
}

/// One raw sample of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplePoint {
    /// The sample's time.
    pub ts: DateTime<Utc>,
    /// Its value.
    pub value: f64,
}

/// One rollup bucket's start and statistics: what the processor's rollup arithmetic (`Rollup`) keeps
/// beside its sketch and values, and what the API serves as it is (as `Bucket`). Its fields are in the
/// order the API writes every object's, by name; a statistic that is not a finite number is written as
/// null (as serde_json writes such a number), hence the schema's `Option<f64>`. Read from a
/// `metric_rollups` row by column name (`sqlx::FromRow`; extra columns are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = Bucket,
    description = "One time bucket; a statistic that is not a finite number (a sum past f64's range) is null."))]
pub struct RollupBucket {
    /// Samples in it.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub count: i64,
    /// The earliest sample's value.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub first: f64,
    /// The latest sample's value.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub last: f64,
    /// The largest.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub max: f64,
    /// The mean.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub mean: f64,
    /// The smallest.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub min: f64,
    /// The median (nearest rank).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub p50: f64,
    /// The 95th percentile.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub p95: f64,
    /// The 99th percentile.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub p99: f64,
    /// Its start.
    pub start: DateTime<Utc>,
    /// The sum.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub sum: f64,
}

impl RollupBucket {
    /// The statistics stored as `float8`, in `metric_rollups`' column order: sum, min, max, mean, first,
    /// last, p50, p95 and p99.
    pub(super) const STATS: [fn(&RollupBucket) -> f64; 9] =
        [|b| b.sum, |b| b.min, |b| b.max, |b| b.mean, |b| b.first, |b| b.last, |b| b.p50, |b| b.p95, |b| b.p99];
}

/// The latest message of every host, newest first (then by host), at most `limit`.
pub async fn latest_samples(pool: &PgPool, limit: i64) -> Result<Vec<LatestSample>, sqlx::Error> {
    let rows: Vec<(String, DateTime<Utc>, serde_json::Value)> =
        sqlx::query_as("SELECT host, ts, fields FROM metric_latest ORDER BY ts DESC, host LIMIT $1")
            .bind(limit)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|(host, ts, fields)| LatestSample { host, ts, fields }).collect())
}

/// A page of the known hosts, each with its fields and its latest sample time, by host. (`coalesce`, not
/// `$1 IS NULL OR`, so that a generic plan still scans the key from `after`; no host is empty.)
pub async fn hosts(pool: &PgPool, page: &Page) -> Result<Vec<HostFields>, sqlx::Error> {
    let rows: Vec<(String, Vec<String>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT host, array_agg(field ORDER BY field), max(last_ts) FROM metric_series
          WHERE host > coalesce($1::text, '') GROUP BY host ORDER BY host LIMIT $2",
    )
    .bind(page.after.as_deref())
    .bind(page.limit as i64)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(host, fields, last_seen)| HostFields { host, fields, last_seen }).collect())
}

/// Whether the series (`host`, `field`) has ever had a sample.
pub async fn series_exists(pool: &PgPool, host: &str, field: &str) -> Result<bool, sqlx::Error> {
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM metric_series WHERE host = $1 AND field = $2")
        .bind(host)
        .bind(field)
        .fetch_optional(pool)
        .await?;
    Ok(found.is_some())
}

// The optional bounds below are `ts >= coalesce($n, '-infinity'::timestamptz)` (`'infinity'` for an upper
// one), not `($n::timestamptz IS NULL OR ts >= $n)`: sqlx prepares its statements, and once PostgreSQL
// picks a generic plan for one (after five executions) the OR cannot be an index condition, so it turns
// into a filter over every row of the series. The coalesce is a comparison with a value: a bound of the
// primary-key range scan under any plan, that keeps every row when the parameter is NULL.

/// [`raw_samples`]: (host, field, from, to, limit).
pub(super) const RAW_SAMPLES: &str = "
SELECT ts, value FROM metric_samples
 WHERE host = $1 AND field = $2
   AND ts >= coalesce($3, '-infinity'::timestamptz) AND ts <= coalesce($4, 'infinity'::timestamptz)
 ORDER BY ts DESC LIMIT $5";

/// [`rollup_buckets`]: (host, field, width, from, to, limit).
pub(super) const ROLLUP_BUCKETS: &str = "
SELECT start, count, sum, min, max, mean, first, last, p50, p95, p99 FROM metric_rollups
 WHERE host = $1 AND field = $2 AND width = $3
   AND start >= coalesce($4, '-infinity'::timestamptz) AND start <= coalesce($5, 'infinity'::timestamptz)
 ORDER BY start DESC LIMIT $6";

/// A series' raw samples in `range`, newest first.
pub async fn raw_samples(
    pool: &PgPool,
    host: &str,
    field: &str,
    range: Range,
) -> Result<Vec<SamplePoint>, sqlx::Error> {
    let rows: Vec<(DateTime<Utc>, f64)> = sqlx::query_as(RAW_SAMPLES)
        .bind(host)
        .bind(field)
        .bind(range.from)
        .bind(range.to)
        .bind(range.limit)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|(ts, value)| SamplePoint { ts, value }).collect())
}

/// A series' `width`-second rollups starting in `range`, newest first.
pub async fn rollup_buckets(
    pool: &PgPool,
    host: &str,
    field: &str,
    width: i64,
    range: Range,
) -> Result<Vec<RollupBucket>, sqlx::Error> {
    sqlx::query_as(ROLLUP_BUCKETS)
        .bind(host)
        .bind(field)
        .bind(width as i32)
        .bind(range.from)
        .bind(range.to)
        .bind(range.limit)
        .fetch_all(pool)
        .await
}
