//! What the processor's batch transaction runs on the metric tables.

use super::read::RollupBucket;
use crate::Tx;
use crate::arrays::Arrays;
use chrono::{DateTime, Utc};
use sea_orm::sqlx::postgres::PgRow;
use sea_orm::sqlx::{self, FromRow, Row};
use std::collections::{BTreeMap, BTreeSet};

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
    let args = Arrays::of(samples).column(|s| s.host).column(|s| s.field).column(|s| s.ts);
    let args = args.column(|s| s.value).column(|s| s.seq).done()?;
    let rows: Vec<(String, String, DateTime<Utc>, f64, bool)> = sqlx::query_as_with(
        "INSERT INTO metric_samples (host, field, ts, value, seq)
         SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::float8[], $5::int8[])
         ON CONFLICT (host, field, ts) DO UPDATE SET value = EXCLUDED.value, seq = EXCLUDED.seq
           WHERE metric_samples.seq < EXCLUDED.seq
         RETURNING host, field, ts, value, xmax = 0",
        args,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(host, field, ts, value, inserted)| ChangedSample { host, field, ts, value, inserted })
        .collect())
}

/// The keys as `$1` (hosts), `$2` (fields) and `$3` (bucket starts), for `unnest`.
fn key_arrays(keys: &BTreeSet<BucketKey>) -> Arrays<'_, BucketKey> {
    Arrays::of(keys).column(|k| k.0.as_str()).column(|k| k.1.as_str()).column(|k| k.2)
}

/// `b.host, b.field, {select}` for each key of `keys` (as `b`, see [`key_arrays`]; its further arguments
/// are `$4` on) joined with the rows `lateral` finds for it (as `x`), then `order_by`.
///
/// LATERAL with OFFSET 0 (which keeps the planner from flattening it into a hash join over the whole
/// table): one primary-key range scan per key, whatever it guesses of unnest's size.
async fn per_key(
    tx: &mut Tx,
    keys: Arrays<'_, BucketKey>,
    select: &str,
    lateral: &str,
    order_by: &str,
) -> Result<Vec<PgRow>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT b.host, b.field, {select}
           FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS b(host, field, start)
           CROSS JOIN LATERAL ({lateral} OFFSET 0) x
          {order_by}"
    );
    sqlx::query_with(sqlx::AssertSqlSafe(sql), keys.done()?).fetch_all(&mut **tx).await
}

/// The raw samples of each `width`-second bucket in `buckets`, ordered by host, field and time.
pub async fn load_samples(
    tx: &mut Tx,
    buckets: &BTreeSet<BucketKey>,
    width: i64,
) -> Result<Vec<SampleRow>, sqlx::Error> {
    let lateral = "SELECT ts, value FROM metric_samples
        WHERE host = b.host AND field = b.field AND ts >= b.start AND ts < b.start + make_interval(secs => $4)";
    let keys = key_arrays(buckets).value(width as f64);
    let rows = per_key(tx, keys, "x.ts, x.value", lateral, "ORDER BY b.host, b.field, x.ts").await?;
    let sample = |r: &PgRow| {
        Ok(SampleRow { host: r.try_get(0)?, field: r.try_get(1)?, ts: r.try_get(2)?, value: r.try_get(3)? })
    };
    rows.iter().map(sample).collect()
}

const ROLLUP_COLUMNS: &str = "x.start, x.count, x.sum, x.min, x.max, x.mean, x.first, x.last, x.p50, x.p95, x.p99,
    x.sketch, x.last_ts, x.sorted_values, x.prefix_sum";

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
    let lateral =
        "SELECT * FROM metric_rollups WHERE host = b.host AND field = b.field AND width = $4 AND start = b.start";
    let rows = per_key(tx, key_arrays(buckets).value(width as i32), ROLLUP_COLUMNS, lateral, "").await?;
    rows.iter().map(rollup_row).collect()
}

/// The stored rollups of `width` (wider than `base`) at exactly the given (host, field, start) keys (those
/// that exist), each with the start of the latest `base` bucket stored in it before the key's `from`
/// (`None`: none).
///
/// A wider bucket may be extended in place with its `base` buckets from `from` on only if it merged every
/// one stored before them, which holds when that latest one starts no later than its `last_ts`: a
/// processor configured without this width (a rolling update that adds one, a width dropped and added
/// again) stores `base` buckets it never merges.
pub async fn load_wide_buckets(
    tx: &mut Tx,
    buckets: &BTreeMap<BucketKey, DateTime<Utc>>,
    base: i64,
    width: i64,
) -> Result<Vec<(RollupRow, Option<DateTime<Utc>>)>, sqlx::Error> {
    if buckets.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<(&BucketKey, DateTime<Utc>)> = buckets.iter().map(|(k, from)| (k, *from)).collect();
    let args = Arrays::of(&keys).column(|k| k.0.0.as_str()).column(|k| k.0.1.as_str()).column(|k| k.0.2);
    let args = args.column(|k| k.1).value(base as i32).value(width as i32).done()?;
    // LATERAL with OFFSET 0, as in `per_key`; the latest `base` bucket is one backward primary-key probe.
    let sql = format!(
        "SELECT b.host, b.field, {ROLLUP_COLUMNS}, x.base_before
           FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[]) AS b(host, field, start, since)
           CROSS JOIN LATERAL (
             SELECT r.*, (SELECT max(m.start) FROM metric_rollups m
                           WHERE m.host = b.host AND m.field = b.field AND m.width = $5
                             AND m.start >= b.start AND m.start < b.since) AS base_before
               FROM metric_rollups r
              WHERE r.host = b.host AND r.field = b.field AND r.width = $6 AND r.start = b.start
             OFFSET 0) x"
    );
    let rows = sqlx::query_with(sqlx::AssertSqlSafe(sql), args).fetch_all(&mut **tx).await?;
    rows.iter().map(|row| Ok((rollup_row(row)?, row.try_get("base_before")?))).collect()
}

/// The `base`-width rollups inside each `width`-second bucket in `buckets`, ordered by host, field and start.
pub async fn load_rollups(
    tx: &mut Tx,
    buckets: &BTreeSet<BucketKey>,
    base: i64,
    width: i64,
) -> Result<Vec<RollupRow>, sqlx::Error> {
    let lateral = "SELECT * FROM metric_rollups WHERE host = b.host AND field = b.field AND width = $4
        AND start >= b.start AND start < b.start + make_interval(secs => $5)";
    let keys = key_arrays(buckets).value(base as i32).value(width as f64);
    let rows = per_key(tx, keys, ROLLUP_COLUMNS, lateral, "ORDER BY b.host, b.field, x.start").await?;
    rows.iter().map(rollup_row).collect()
}

/// Upserts rollups of one width.
pub async fn upsert_rollups(tx: &mut Tx, width: i64, rollups: &[RollupRow]) -> Result<(), sqlx::Error> {
    if rollups.is_empty() {
        return Ok(());
    }
    let mut args = Arrays::of(rollups).column(|r| r.host.as_str()).column(|r| r.field.as_str()).value(width as i32);
    args = args.column(|r| r.bucket.start).column(|r| r.bucket.count);
    for stat in RollupBucket::STATS {
        args = args.column(|r| stat(&r.bucket));
    }
    let args = args.column(|r| r.sketch.as_slice()).column(|r| r.last_ts);
    let args = args.column(|r| r.sorted_values.as_deref()).column(|r| r.prefix_sum).done()?;
    sqlx::query_with(
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
        args,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Widens each series' stored first and last time to include `spans` (one per series).
pub async fn upsert_series(tx: &mut Tx, spans: &[SeriesSpan<'_>]) -> Result<(), sqlx::Error> {
    if spans.is_empty() {
        return Ok(());
    }
    let args = Arrays::of(spans).column(|s| s.host).column(|s| s.field);
    let args = args.column(|s| s.first_ts).column(|s| s.last_ts).done()?;
    sqlx::query_with(
        "INSERT INTO metric_series (host, field, first_ts, last_ts)
         SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[])
         ON CONFLICT (host, field) DO UPDATE SET first_ts = LEAST(metric_series.first_ts, EXCLUDED.first_ts),
           last_ts = GREATEST(metric_series.last_ts, EXCLUDED.last_ts), updated_at = now()",
        args,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Replaces each host's latest sample by the batch's newest one where that is newer (ts, then sequence).
pub async fn upsert_latest(tx: &mut Tx, latest: &[NewLatest<'_>]) -> Result<(), sqlx::Error> {
    let args = Arrays::of(latest).column(|l| l.host).column(|l| l.ts).column(|l| l.seq);
    let args = args.column(|l| l.fields.as_str()).done()?;
    sqlx::query_with(
        "INSERT INTO metric_latest (host, ts, seq, fields)
         SELECT h, t, s, f::jsonb FROM unnest($1::text[], $2::timestamptz[], $3::int8[], $4::text[]) AS x(h, t, s, f)
         ON CONFLICT (host) DO UPDATE SET ts = EXCLUDED.ts, seq = EXCLUDED.seq, fields = EXCLUDED.fields,
           updated_at = now()
         WHERE (metric_latest.ts, metric_latest.seq) < (EXCLUDED.ts, EXCLUDED.seq)",
        args,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}
