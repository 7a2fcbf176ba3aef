//! What the processor's batch transaction runs on the metric tables, and the retention sweep.

use super::read::RollupBucket;
use crate::{RollupConfig, Tx};
use chrono::{DateTime, Duration, Utc};
use sea_orm::sqlx::postgres::PgRow;
use sea_orm::sqlx::{self, PgPool, Row};
use std::collections::BTreeSet;

/// A bucket of one series: (host, field, bucket start).
pub type BucketKey = (String, String, DateTime<Utc>);

/// A sample to store: one field of one message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewSample<'a> {
    /// The server.
    pub host: &'a str,
    /// The field of its message.
    pub field: &'a str,
    /// The message's time.
    pub ts: DateTime<Utc>,
    /// The field's value.
    pub value: f64,
    /// The message's stream sequence: of two writes at one (host, field, ts), the higher wins.
    pub seq: i64,
}

/// A sample row an upsert inserted or updated (`RETURNING`).
#[derive(Debug, Clone, PartialEq)]
pub struct ChangedSample {
    /// The server.
    pub host: String,
    /// The field.
    pub field: String,
    /// The sample's time.
    pub ts: DateTime<Utc>,
    /// The value now stored.
    pub value: f64,
    /// Inserted rather than updated (`xmax = 0`).
    pub inserted: bool,
}

/// A stored sample of one series (`metric_samples` without its sequence).
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRow {
    /// The server.
    pub host: String,
    /// The field.
    pub field: String,
    /// The sample's time.
    pub ts: DateTime<Utc>,
    /// Its value.
    pub value: f64,
}

/// One bucket of one series and width, as `metric_rollups` stores it (the width is the caller's).
#[derive(Debug, Clone, PartialEq)]
pub struct RollupRow {
    /// The server.
    pub host: String,
    /// The field.
    pub field: String,
    /// The bucket's start and statistics.
    pub bucket: RollupBucket,
    /// The distribution, encoded (the processor's `Sketch::to_bytes`).
    pub sketch: Vec<u8>,
    /// Smallest width: the latest sample's time. Wider: the start of the latest part.
    pub last_ts: DateTime<Utc>,
    /// Smallest width: the bucket's values in ascending order as little-endian f64s. Wider: `None`.
    pub sorted_values: Option<Vec<u8>>,
    /// Wider: the sum of every part but the latest. Smallest width: `None`.
    pub prefix_sum: Option<f64>,
}

/// The time span a batch wrote in one series, to widen the stored one with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeriesSpan<'a> {
    /// The server.
    pub host: &'a str,
    /// The field.
    pub field: &'a str,
    /// The earliest sample written.
    pub first_ts: DateTime<Utc>,
    /// The latest sample written.
    pub last_ts: DateTime<Utc>,
}

/// A host's newest message of a batch, to replace the stored one if newer.
#[derive(Debug, Clone, PartialEq)]
pub struct NewLatest<'a> {
    /// The server.
    pub host: &'a str,
    /// The message's time.
    pub ts: DateTime<Utc>,
    /// Its stream sequence (the tie-break between messages at one time).
    pub seq: i64,
    /// All its fields, as a JSON object (text, cast to `jsonb`).
    pub fields: String,
}

/// Upserts samples, last writer wins by sequence; returns the rows that changed.
pub async fn upsert_samples(tx: &mut Tx, samples: &[NewSample<'_>]) -> Result<Vec<ChangedSample>, sqlx::Error> {
    let (mut hosts, mut fields, mut ts, mut vals, mut seqs) = (vec![], vec![], vec![], vec![], vec![]);
    for s in samples {
        hosts.push(s.host);
        fields.push(s.field);
        ts.push(s.ts);
        vals.push(s.value);
        seqs.push(s.seq);
    }
    let rows: Vec<(String, String, DateTime<Utc>, f64, bool)> = sqlx::query_as(
        "INSERT INTO metric_samples (host, field, ts, value, seq)
         SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::float8[], $5::int8[])
         ON CONFLICT (host, field, ts) DO UPDATE SET value = EXCLUDED.value, seq = EXCLUDED.seq
           WHERE metric_samples.seq < EXCLUDED.seq
         RETURNING host, field, ts, value, xmax = 0",
    )
    .bind(&hosts)
    .bind(&fields)
    .bind(&ts)
    .bind(&vals)
    .bind(&seqs)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(host, field, ts, value, inserted)| ChangedSample { host, field, ts, value, inserted })
        .collect())
}

fn columns(keys: &BTreeSet<BucketKey>) -> (Vec<&str>, Vec<&str>, Vec<DateTime<Utc>>) {
    let mut out = (Vec::with_capacity(keys.len()), Vec::with_capacity(keys.len()), Vec::with_capacity(keys.len()));
    for (h, f, t) in keys {
        out.0.push(h.as_str());
        out.1.push(f.as_str());
        out.2.push(*t);
    }
    out
}

/// The raw samples of each `width`-second bucket in `buckets`, ordered by host, field and time.
pub async fn load_samples(
    tx: &mut Tx,
    buckets: &BTreeSet<BucketKey>,
    width: i64,
) -> Result<Vec<SampleRow>, sqlx::Error> {
    if buckets.is_empty() {
        return Ok(Vec::new());
    }
    let (hosts, fields, starts) = columns(buckets);
    let rows: Vec<(String, String, DateTime<Utc>, f64)> = sqlx::query_as(
        // LATERAL with OFFSET 0 (which keeps the planner from flattening it into a hash join over the whole
        // table): one primary-key range scan per bucket, whatever it guesses of unnest's size.
        "SELECT b.host, b.field, s.ts, s.value
           FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS b(host, field, start)
           CROSS JOIN LATERAL (
             SELECT ts, value FROM metric_samples
              WHERE host = b.host AND field = b.field AND ts >= b.start AND ts < b.start + make_interval(secs => $4)
             OFFSET 0
           ) s
          ORDER BY b.host, b.field, s.ts",
    )
    .bind(&hosts)
    .bind(&fields)
    .bind(&starts)
    .bind(width as f64)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|(host, field, ts, value)| SampleRow { host, field, ts, value }).collect())
}

const ROLLUP_COLUMNS: &str = "r.start, r.count, r.sum, r.min, r.max, r.mean, r.first, r.last, r.p50, r.p95, r.p99,
    r.sketch, r.last_ts, r.sorted_values, r.prefix_sum";

fn rollup_row(row: &PgRow) -> Result<RollupRow, sqlx::Error> {
    Ok(RollupRow {
        host: row.try_get("host")?,
        field: row.try_get("field")?,
        bucket: RollupBucket::from_row(row)?,
        sketch: row.try_get("sketch")?,
        last_ts: row.try_get("last_ts")?,
        sorted_values: row.try_get("sorted_values")?,
        prefix_sum: row.try_get("prefix_sum")?,
    })
}

/// The stored rollups of `width` at exactly the given (host, field, start) keys (those that exist).
pub async fn load_buckets(
    tx: &mut Tx,
    buckets: &BTreeSet<BucketKey>,
    width: i64,
) -> Result<Vec<RollupRow>, sqlx::Error> {
    if buckets.is_empty() {
        return Ok(Vec::new());
    }
    let (hosts, fields, starts) = columns(buckets);
    let rows: Vec<PgRow> = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT b.host, b.field, {ROLLUP_COLUMNS}
           FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS b(host, field, start)
           CROSS JOIN LATERAL (
             SELECT * FROM metric_rollups WHERE host = b.host AND field = b.field AND width = $4 AND start = b.start
             OFFSET 0
           ) r"
    )))
    .bind(&hosts)
    .bind(&fields)
    .bind(&starts)
    .bind(width as i32)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(rollup_row).collect()
}

/// The `base`-width rollups inside each `width`-second bucket in `buckets`, ordered by host, field and start.
pub async fn load_rollups(
    tx: &mut Tx,
    buckets: &BTreeSet<BucketKey>,
    base: i64,
    width: i64,
) -> Result<Vec<RollupRow>, sqlx::Error> {
    if buckets.is_empty() {
        return Ok(Vec::new());
    }
    let (hosts, fields, starts) = columns(buckets);
    let rows: Vec<PgRow> = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT b.host, b.field, {ROLLUP_COLUMNS}
           FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS b(host, field, start)
           CROSS JOIN LATERAL (
             SELECT * FROM metric_rollups
              WHERE host = b.host AND field = b.field AND width = $4
                AND start >= b.start AND start < b.start + make_interval(secs => $5)
             OFFSET 0
           ) r
          ORDER BY b.host, b.field, r.start"
    )))
    .bind(&hosts)
    .bind(&fields)
    .bind(&starts)
    .bind(base as i32)
    .bind(width as f64)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(rollup_row).collect()
}

/// Upserts rollups of one width.
pub async fn upsert_rollups(tx: &mut Tx, width: i64, rollups: &[RollupRow]) -> Result<(), sqlx::Error> {
    if rollups.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&RollupRow) -> f64| rollups.iter().map(f).collect::<Vec<f64>>();
    let hosts: Vec<&str> = rollups.iter().map(|r| r.host.as_str()).collect();
    let fields: Vec<&str> = rollups.iter().map(|r| r.field.as_str()).collect();
    let starts: Vec<DateTime<Utc>> = rollups.iter().map(|r| r.bucket.start).collect();
    let counts: Vec<i64> = rollups.iter().map(|r| r.bucket.count).collect();
    let sketches: Vec<&[u8]> = rollups.iter().map(|r| r.sketch.as_slice()).collect();
    let last_ts: Vec<DateTime<Utc>> = rollups.iter().map(|r| r.last_ts).collect();
    let values: Vec<Option<&[u8]>> = rollups.iter().map(|r| r.sorted_values.as_deref()).collect();
    let prefix_sums: Vec<Option<f64>> = rollups.iter().map(|r| r.prefix_sum).collect();
    sqlx::query(
        "INSERT INTO metric_rollups
           (host, field, width, start, count, sum, min, max, mean, first, last, p50, p95, p99, sketch,
            last_ts, sorted_values, prefix_sum)
         SELECT h, f, $3, s, c, sm, mn, mx, me, fi, la, a, b, d, sk, lt, sv, ps
           FROM unnest($1::text[], $2::text[], $4::timestamptz[], $5::int8[], $6::float8[], $7::float8[],
                       $8::float8[], $9::float8[], $10::float8[], $11::float8[], $12::float8[], $13::float8[],
                       $14::float8[], $15::bytea[], $16::timestamptz[], $17::bytea[], $18::float8[])
             AS x(h, f, s, c, sm, mn, mx, me, fi, la, a, b, d, sk, lt, sv, ps)
         ON CONFLICT (host, field, width, start) DO UPDATE SET
           count = EXCLUDED.count, sum = EXCLUDED.sum, min = EXCLUDED.min, max = EXCLUDED.max,
           mean = EXCLUDED.mean, first = EXCLUDED.first, last = EXCLUDED.last, p50 = EXCLUDED.p50,
           p95 = EXCLUDED.p95, p99 = EXCLUDED.p99, sketch = EXCLUDED.sketch, last_ts = EXCLUDED.last_ts,
           sorted_values = EXCLUDED.sorted_values, prefix_sum = EXCLUDED.prefix_sum",
    )
    .bind(&hosts)
    .bind(&fields)
    .bind(width as i32)
    .bind(&starts)
    .bind(&counts)
    .bind(col(|r| r.bucket.sum))
    .bind(col(|r| r.bucket.min))
    .bind(col(|r| r.bucket.max))
    .bind(col(|r| r.bucket.mean))
    .bind(col(|r| r.bucket.first))
    .bind(col(|r| r.bucket.last))
    .bind(col(|r| r.bucket.p50))
    .bind(col(|r| r.bucket.p95))
    .bind(col(|r| r.bucket.p99))
    .bind(&sketches)
    .bind(&last_ts)
    .bind(&values)
    .bind(&prefix_sums)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Widens each series' stored first and last time to include `spans` (one per series).
pub async fn upsert_series(tx: &mut Tx, spans: &[SeriesSpan<'_>]) -> Result<(), sqlx::Error> {
    if spans.is_empty() {
        return Ok(());
    }
    let hosts: Vec<&str> = spans.iter().map(|s| s.host).collect();
    let fields: Vec<&str> = spans.iter().map(|s| s.field).collect();
    let firsts: Vec<DateTime<Utc>> = spans.iter().map(|s| s.first_ts).collect();
    let lasts: Vec<DateTime<Utc>> = spans.iter().map(|s| s.last_ts).collect();
    sqlx::query(
        "INSERT INTO metric_series (host, field, first_ts, last_ts)
         SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[])
         ON CONFLICT (host, field) DO UPDATE SET first_ts = LEAST(metric_series.first_ts, EXCLUDED.first_ts),
           last_ts = GREATEST(metric_series.last_ts, EXCLUDED.last_ts), updated_at = now()",
    )
    .bind(&hosts)
    .bind(&fields)
    .bind(&firsts)
    .bind(&lasts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Replaces each host's latest sample by the batch's newest one where that is newer (ts, then sequence).
pub async fn upsert_latest(tx: &mut Tx, latest: &[NewLatest<'_>]) -> Result<(), sqlx::Error> {
    let hosts: Vec<&str> = latest.iter().map(|l| l.host).collect();
    let ts: Vec<DateTime<Utc>> = latest.iter().map(|l| l.ts).collect();
    let seqs: Vec<i64> = latest.iter().map(|l| l.seq).collect();
    let fields: Vec<&str> = latest.iter().map(|l| l.fields.as_str()).collect();
    sqlx::query(
        "INSERT INTO metric_latest (host, ts, seq, fields)
         SELECT h, t, s, f::jsonb FROM unnest($1::text[], $2::timestamptz[], $3::int8[], $4::text[]) AS x(h, t, s, f)
         ON CONFLICT (host) DO UPDATE SET ts = EXCLUDED.ts, seq = EXCLUDED.seq, fields = EXCLUDED.fields,
           updated_at = now()
         WHERE (metric_latest.ts, metric_latest.seq) < (EXCLUDED.ts, EXCLUDED.seq)",
    )
    .bind(&hosts)
    .bind(&ts)
    .bind(&seqs)
    .bind(&fields)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Deletes raw samples and rollups past their retention, as of `now`. Returns (samples, buckets) deleted.
///
/// Series by series (through `metric_series`), so each delete is a primary-key range scan.
pub async fn sweep(pool: &PgPool, cfg: &RollupConfig, now: DateTime<Utc>) -> Result<(u64, u64), sqlx::Error> {
    let raw_cutoff = now - Duration::seconds(cfg.raw_retention.secs());
    let samples = sqlx::query(
        "DELETE FROM metric_samples m USING metric_series s
          WHERE m.host = s.host AND m.field = s.field AND s.first_ts < $1 AND m.ts < $1",
    )
    .bind(raw_cutoff)
    .execute(pool)
    .await?;
    let mut buckets = 0;
    for r in &cfg.rollups {
        let cutoff = now - Duration::seconds(r.retention.secs());
        buckets += sqlx::query(
            "DELETE FROM metric_rollups m USING metric_series s
              WHERE m.host = s.host AND m.field = s.field AND s.first_ts < $2 AND m.width = $1 AND m.start < $2",
        )
        .bind(r.width.secs() as i32)
        .bind(cutoff)
        .execute(pool)
        .await?
        .rows_affected();
    }
    Ok((samples.rows_affected(), buckets))
}
