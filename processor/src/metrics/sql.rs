//! The SQL of the metrics path: `UNNEST ... ON CONFLICT` writes and bulk bucket reads, one bind per
//! column, inside the caller's transaction; and the retention sweep.

use super::rollup::{Rollup, Sketch, bucket, values_from_bytes, values_to_bytes};
use chrono::{DateTime, Duration, Utc};
use sea_orm::sqlx::postgres::PgRow;
use sea_orm::sqlx::{self, PgPool, Postgres, Row, Transaction};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tributary_broker::metrics::LiveSample;
use tributary_store::MetricsConfig;

type Tx = Transaction<'static, Postgres>;
/// (host, field, bucket start or ts)
type Key = (String, String, DateTime<Utc>);

/// A sample row the upsert changed: (host, field, ts, value, inserted rather than updated).
pub(super) type Changed = (String, String, DateTime<Utc>, f64, bool);

/// Upserts samples, last writer wins by sequence; returns the rows that changed.
pub(super) async fn upsert_samples(
    tx: &mut Tx,
    values: &BTreeMap<(&str, &str, DateTime<Utc>), (f64, i64)>,
) -> Result<Vec<Changed>, sqlx::Error> {
    let (mut hosts, mut fields, mut ts, mut vals, mut seqs) = (vec![], vec![], vec![], vec![], vec![]);
    for ((h, f, t), (v, s)) in values {
        hosts.push(*h);
        fields.push(*f);
        ts.push(*t);
        vals.push(*v);
        seqs.push(*s);
    }
    sqlx::query_as(
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
    .await
}

fn columns(keys: &BTreeSet<Key>) -> (Vec<&str>, Vec<&str>, Vec<DateTime<Utc>>) {
    let mut out = (Vec::with_capacity(keys.len()), Vec::with_capacity(keys.len()), Vec::with_capacity(keys.len()));
    for (h, f, t) in keys {
        out.0.push(h.as_str());
        out.1.push(f.as_str());
        out.2.push(*t);
    }
    out
}

/// The raw samples of each `width`-second bucket in `buckets`, in time order.
pub(super) async fn load_samples(
    tx: &mut Tx,
    buckets: &BTreeSet<Key>,
    width: i64,
) -> Result<Vec<(Key, Vec<(DateTime<Utc>, f64)>)>, sqlx::Error> {
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
    let mut out: Vec<(Key, Vec<(DateTime<Utc>, f64)>)> = Vec::new();
    for (h, f, ts, v) in rows {
        let start = bucket(ts, width);
        match out.last_mut() {
            Some(((lh, lf, ls), s)) if *lh == h && *lf == f && *ls == start => s.push((ts, v)),
            _ => out.push(((h, f, start), vec![(ts, v)])),
        }
    }
    Ok(out)
}

const ROLLUP_COLUMNS: &str = "r.start, r.count, r.sum, r.min, r.max, r.mean, r.first, r.last, r.p50, r.p95, r.p99,
    r.sketch, r.last_ts, r.sorted_values, r.prefix_sum";

fn rollup_of(row: &PgRow) -> Result<((String, String), Rollup), sqlx::Error> {
    let sketch: Vec<u8> = row.try_get("sketch")?;
    let values: Option<Vec<u8>> = row.try_get("sorted_values")?;
    let r = Rollup {
        start: row.try_get("start")?,
        count: row.try_get("count")?,
        sum: row.try_get("sum")?,
        min: row.try_get("min")?,
        max: row.try_get("max")?,
        mean: row.try_get("mean")?,
        first: row.try_get("first")?,
        last: row.try_get("last")?,
        p50: row.try_get("p50")?,
        p95: row.try_get("p95")?,
        p99: row.try_get("p99")?,
        sketch: Sketch::from_bytes(&sketch).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        last_ts: row.try_get("last_ts")?,
        values: values.map(|v| values_from_bytes(&v)).unwrap_or_default(),
        prefix_sum: row.try_get("prefix_sum")?,
    };
    Ok(((row.try_get("host")?, row.try_get("field")?), r))
}

/// The stored rollups of `width` at exactly the given (host, field, start) keys.
pub(super) async fn load_buckets(
    tx: &mut Tx,
    buckets: &BTreeSet<Key>,
    width: i64,
) -> Result<HashMap<Key, Rollup>, sqlx::Error> {
    if buckets.is_empty() {
        return Ok(HashMap::new());
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
    rows.iter().map(|row| rollup_of(row).map(|((h, f), r)| ((h, f, r.start), r))).collect()
}

/// The `base`-width rollups inside each `width`-second bucket in `buckets`, in start order.
pub(super) async fn load_rollups(
    tx: &mut Tx,
    buckets: &BTreeSet<Key>,
    base: i64,
    width: i64,
) -> Result<Vec<(Key, Vec<Rollup>)>, sqlx::Error> {
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
    let mut out: Vec<(Key, Vec<Rollup>)> = Vec::new();
    for row in &rows {
        let ((h, f), r) = rollup_of(row)?;
        let wide = bucket(r.start, width);
        match out.last_mut() {
            Some(((lh, lf, ls), parts)) if *lh == h && *lf == f && *ls == wide => parts.push(r),
            _ => out.push(((h, f, wide), vec![r])),
        }
    }
    Ok(out)
}

/// Upserts rollups of one width.
pub(super) async fn upsert_rollups(
    tx: &mut Tx,
    width: i64,
    rollups: &[((String, String), Rollup)],
) -> Result<(), sqlx::Error> {
    if rollups.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&Rollup) -> f64| rollups.iter().map(|(_, r)| f(r)).collect::<Vec<f64>>();
    let hosts: Vec<&str> = rollups.iter().map(|((h, _), _)| h.as_str()).collect();
    let fields: Vec<&str> = rollups.iter().map(|((_, f), _)| f.as_str()).collect();
    let starts: Vec<DateTime<Utc>> = rollups.iter().map(|(_, r)| r.start).collect();
    let counts: Vec<i64> = rollups.iter().map(|(_, r)| r.count).collect();
    let sketches: Vec<Vec<u8>> = rollups.iter().map(|(_, r)| r.sketch.to_bytes()).collect();
    let last_ts: Vec<DateTime<Utc>> = rollups.iter().map(|(_, r)| r.last_ts).collect();
    let values: Vec<Option<Vec<u8>>> =
        rollups.iter().map(|(_, r)| r.prefix_sum.is_none().then(|| values_to_bytes(&r.values))).collect();
    let prefix_sums: Vec<Option<f64>> = rollups.iter().map(|(_, r)| r.prefix_sum).collect();
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
    .bind(col(|r| r.sum))
    .bind(col(|r| r.min))
    .bind(col(|r| r.max))
    .bind(col(|r| r.mean))
    .bind(col(|r| r.first))
    .bind(col(|r| r.last))
    .bind(col(|r| r.p50))
    .bind(col(|r| r.p95))
    .bind(col(|r| r.p99))
    .bind(&sketches)
    .bind(&last_ts)
    .bind(&values)
    .bind(&prefix_sums)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Widens each changed series' first and last time.
pub(super) async fn upsert_series(tx: &mut Tx, changed: &[Changed]) -> Result<(), sqlx::Error> {
    let mut span: BTreeMap<(&str, &str), (DateTime<Utc>, DateTime<Utc>)> = BTreeMap::new();
    for (h, f, t, _, _) in changed {
        let e = span.entry((h, f)).or_insert((*t, *t));
        e.0 = e.0.min(*t);
        e.1 = e.1.max(*t);
    }
    if span.is_empty() {
        return Ok(());
    }
    let hosts: Vec<&str> = span.keys().map(|k| k.0).collect();
    let fields: Vec<&str> = span.keys().map(|k| k.1).collect();
    let firsts: Vec<DateTime<Utc>> = span.values().map(|v| v.0).collect();
    let lasts: Vec<DateTime<Utc>> = span.values().map(|v| v.1).collect();
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
pub(super) async fn upsert_latest(tx: &mut Tx, latest: &[(LiveSample, i64)]) -> Result<(), sqlx::Error> {
    let hosts: Vec<&str> = latest.iter().map(|(l, _)| l.host.as_str()).collect();
    let ts: Vec<DateTime<Utc>> = latest.iter().map(|(l, _)| l.ts.0).collect();
    let seqs: Vec<i64> = latest.iter().map(|(_, s)| *s).collect();
    let fields: Vec<String> =
        latest.iter().map(|(l, _)| serde_json::to_string(&l.fields).unwrap_or_else(|_| "{}".into())).collect();
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
pub async fn sweep(pool: &PgPool, cfg: &MetricsConfig, now: DateTime<Utc>) -> Result<(u64, u64), sqlx::Error> {
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
