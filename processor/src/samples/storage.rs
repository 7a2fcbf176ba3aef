//! Between the batch and [`tributary_store::samples`]: a [`Rollup`] to and from its stored row (the sketch
//! and the sorted values encoded here), the store's rows grouped into the buckets they fall in, and the
//! series spans a batch widens. No SQL: the statements are the store's.

use super::rollup::{Rollup, Sketch, bucket, values_from_bytes, values_to_bytes};
use chrono::{DateTime, Utc};
use sea_orm::sqlx;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tributary_store::Tx;
use tributary_store::samples::{self, BucketKey as Key, ChangedSample, RollupRow, SeriesSpan};

/// The row storing `r` as a bucket of the series (`host`, `field`).
pub(super) fn row_of(host: String, field: String, r: &Rollup) -> RollupRow {
    RollupRow {
        host,
        field,
        bucket: r.bucket,
        sketch: r.sketch.to_bytes(),
        last_ts: r.last_ts,
        sorted_values: r.prefix_sum.is_none().then(|| values_to_bytes(&r.values)),
        prefix_sum: r.prefix_sum,
    }
}

/// The rollup a row stores, with its series (host, field); a sketch that does not decode is a decode error.
fn rollup_of(row: RollupRow) -> Result<((String, String), Rollup), sqlx::Error> {
    let r = Rollup {
        bucket: row.bucket,
        sketch: Sketch::from_bytes(&row.sketch).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        last_ts: row.last_ts,
        values: row.sorted_values.map(|v| values_from_bytes(&v)).unwrap_or_default(),
        prefix_sum: row.prefix_sum,
    };
    Ok(((row.host, row.field), r))
}

/// The raw samples of each `width`-second bucket in `buckets`, in time order.
pub(super) async fn load_samples(
    tx: &mut Tx,
    buckets: &BTreeSet<Key>,
    width: i64,
) -> Result<Vec<(Key, Vec<(DateTime<Utc>, f64)>)>, sqlx::Error> {
    let mut out: Vec<(Key, Vec<(DateTime<Utc>, f64)>)> = Vec::new();
    for row in samples::load_samples(tx, buckets, width).await? {
        let (h, f, ts, v) = (row.host, row.field, row.ts, row.value);
        let start = bucket(ts, width);
        match out.last_mut() {
            Some(((lh, lf, ls), s)) if *lh == h && *lf == f && *ls == start => s.push((ts, v)),
            _ => out.push(((h, f, start), vec![(ts, v)])),
        }
    }
    Ok(out)
}

/// The stored rollups of `width` at exactly the given (host, field, start) keys.
pub(super) async fn load_buckets(
    tx: &mut Tx,
    buckets: &BTreeSet<Key>,
    width: i64,
) -> Result<HashMap<Key, Rollup>, sqlx::Error> {
    let rows = samples::load_buckets(tx, buckets, width).await?;
    rows.into_iter().map(|row| rollup_of(row).map(|((h, f), r)| ((h, f, r.bucket.start), r))).collect()
}

/// The stored rollups of `width` at exactly the given (host, field, start) keys, each with the start of
/// the latest `base` bucket stored in it before the key's `from` (see [`samples::load_wide_buckets`]).
pub(super) async fn load_wide_buckets(
    tx: &mut Tx,
    buckets: &BTreeMap<Key, DateTime<Utc>>,
    base: i64,
    width: i64,
) -> Result<HashMap<Key, (Rollup, Option<DateTime<Utc>>)>, sqlx::Error> {
    let rows = samples::load_wide_buckets(tx, buckets, base, width).await?;
    rows.into_iter()
        .map(|(row, before)| rollup_of(row).map(|((h, f), r)| ((h, f, r.bucket.start), (r, before))))
        .collect()
}

/// The `base`-width rollups inside each `width`-second bucket in `buckets`, in start order.
pub(super) async fn load_rollups(
    tx: &mut Tx,
    buckets: &BTreeSet<Key>,
    base: i64,
    width: i64,
) -> Result<Vec<(Key, Vec<Rollup>)>, sqlx::Error> {
    let mut out: Vec<(Key, Vec<Rollup>)> = Vec::new();
    for row in samples::load_rollups(tx, buckets, base, width).await? {
        let ((h, f), r) = rollup_of(row)?;
        let wide = bucket(r.bucket.start, width);
        match out.last_mut() {
            Some(((lh, lf, ls), parts)) if *lh == h && *lf == f && *ls == wide => parts.push(r),
            _ => out.push(((h, f, wide), vec![r])),
        }
    }
    Ok(out)
}

/// Each changed series' first and last changed time, by series.
pub(super) fn spans(changed: &[ChangedSample]) -> Vec<SeriesSpan<'_>> {
    let mut span: BTreeMap<(&str, &str), (DateTime<Utc>, DateTime<Utc>)> = BTreeMap::new();
    for c in changed {
        let e = span.entry((&c.host, &c.field)).or_insert((c.ts, c.ts));
        e.0 = e.0.min(c.ts);
        e.1 = e.1.max(c.ts);
    }
    span.into_iter().map(|((host, field), (first_ts, last_ts))| SeriesSpan { host, field, first_ts, last_ts }).collect()
}
