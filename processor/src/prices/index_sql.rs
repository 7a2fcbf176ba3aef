//! The SQL of indices over prices: definitions, and their levels recomputed in chunks.

use super::index;
use chrono::{DateTime, Utc};
use sea_orm::sqlx::{self, Postgres, Transaction};
use std::collections::{BTreeMap, HashMap};

type Tx = Transaction<'static, Postgres>;

/// A stored index definition.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexDef {
    /// The index's name.
    pub name: String,
    /// The level of the first index date.
    pub base: f64,
    /// (instrument, weight), by instrument name.
    pub weights: Vec<(String, f64)>,
}

/// Reads the definitions of `names`.
pub(crate) async fn index_defs(tx: &mut Tx, names: &[String]) -> Result<Vec<IndexDef>, sqlx::Error> {
    let mut rows: Vec<(String, f64, String, f64)> = sqlx::query_as(
        "SELECT i.name, i.base, c.instrument, c.weight FROM indices i JOIN index_constituents c USING (name)
          WHERE i.name = ANY($1)",
    )
    .bind(names)
    .fetch_all(&mut **tx)
    .await?;
    // Weights in byte order of the instrument names, the order [`index::levels`] sums in and a
    // definition's own (a `BTreeMap`): an `ORDER BY` would follow the database's collation, under which
    // (`en-US`, say) `a` sorts before `A` and `Z`, and the sum would differ in its last bits from the one of
    // the definition's own recompute.
    rows.sort_unstable_by(|a, b| (&a.0, &a.2).cmp(&(&b.0, &b.2)));
    let mut out: Vec<IndexDef> = Vec::new();
    for (name, base, instrument, weight) in rows {
        match out.last_mut() {
            Some(d) if d.name == name => d.weights.push((instrument, weight)),
            _ => out.push(IndexDef { name, base, weights: vec![(instrument, weight)] }),
        }
    }
    Ok(out)
}

/// The constituents' prices from the index's last date before `$2` on (at most `$4` per constituent), led
/// by that date and its level (the anchor: a row with a NULL instrument); nothing when the index has no
/// date before `$2`. The anchor's date is a sub-select, not a join, so that it bounds the primary-key scan
/// like a parameter (a join condition was planned as a filter over a sequential scan, from the statistics
/// of a young table).
pub const INDEX_PRICES_SINCE: &str = "
WITH anchor AS (SELECT ts, level FROM index_points WHERE name = $1 AND ts < $2 ORDER BY ts DESC LIMIT 1)
SELECT NULL::text AS instrument, ts, level AS price FROM anchor
UNION ALL
SELECT q.instrument, p.ts, p.price FROM unnest($3::text[]) AS q(instrument)
  CROSS JOIN LATERAL (SELECT ts, price FROM price_points
                       WHERE instrument = q.instrument AND ts >= (SELECT ts FROM anchor) ORDER BY ts LIMIT $4) p";
/// The constituents' prices from `$2` on (from the start when NULL), at most `$3` per constituent: the next
/// chunk of a recompute.
const INDEX_PRICES_FROM: &str = "
SELECT q.instrument, p.ts, p.price FROM unnest($1::text[]) AS q(instrument)
  CROSS JOIN LATERAL (SELECT ts, price FROM price_points
                       WHERE instrument = q.instrument AND ts >= coalesce($2, '-infinity'::timestamptz)
                       ORDER BY ts LIMIT $3) p";

/// Writes an index's levels in (`$2`, `$6`] (unbounded where NULL) and deletes the dates there that are
/// no longer index dates, in one statement. The delete sees the table as it was before the statement, so it
/// must spare the dates the insert writes (`NOT IN` a hashed set).
const STORE_INDEX_LEVELS: &str = "
WITH stored AS (
  INSERT INTO index_points (name, ts, level, ret)
  SELECT $1, * FROM unnest($3::timestamptz[], $4::float8[], $5::float8[])
  ON CONFLICT (name, ts) DO UPDATE SET level = EXCLUDED.level, ret = EXCLUDED.ret
)
DELETE FROM index_points
 WHERE name = $1 AND ts > coalesce($2::timestamptz, '-infinity') AND ts <= coalesce($6::timestamptz, 'infinity')
   AND ts NOT IN (SELECT unnest($3::timestamptz[]))";

/// How many prices of each constituent one chunk of an index recompute reads: about 64k prices a chunk,
/// whatever the number of constituents, so memory does not grow with the history.
fn index_chunk(constituents: usize) -> usize {
    (65_536 / constituents.max(1)).max(64)
}

/// Recomputes an index from the last index date before `from` forward (from scratch when `from` is
/// `None` or precedes every index date), in chunks of [`index_chunk`] prices per constituent: the levels
/// after a changed date all change (each is the one before times a return), so a correction early in a
/// long history rewrites the rest, but never holds more than a chunk. The caller holds the locks of the
/// index and its constituents. An append costs two round trips: the anchor with the prices after it,
/// then the levels.
pub async fn recompute_index(tx: &mut Tx, def: &IndexDef, from: Option<DateTime<Utc>>) -> Result<(), sqlx::Error> {
    let instruments: Vec<&str> = def.weights.iter().map(|w| w.0.as_str()).collect();
    let per = index_chunk(instruments.len());
    // Two statements, not one with `$2 IS NULL OR ts >= $2`: under a generic plan that OR is a filter
    // applied to every stored point of the constituents, so each recompute would read the whole history.
    let mut rows: Vec<(Option<String>, DateTime<Utc>, f64)> = match from {
        Some(from) => {
            sqlx::query_as(INDEX_PRICES_SINCE)
                .bind(&def.name)
                .bind(from)
                .bind(&instruments)
                .bind(per as i64)
                .fetch_all(&mut **tx)
                .await?
        }
        None => Vec::new(),
    };
    let mut anchor = None;
    if let Some(i) = rows.iter().position(|r| r.0.is_none()) {
        let (_, ts, level) = rows.swap_remove(i);
        anchor = Some((ts, level));
    } else {
        rows = index_prices_from(tx, &instruments, None, per).await?;
    }
    let position: HashMap<&str, usize> = instruments.iter().enumerate().map(|(k, i)| (*i, k)).collect();
    let mut chain = index::Chain::new(def.base, def.weights.iter().map(|w| w.1).collect(), anchor);
    // No anchor: from scratch, and every stored level not written is deleted.
    let mut written_after = anchor.map(|a| a.0);
    loop {
        // Every constituent's prices are read up to the horizon: the earliest last price of a constituent
        // whose chunk was full (none full: the end).
        let mut counts = vec![0usize; instruments.len()];
        let mut last = vec![DateTime::<Utc>::MIN_UTC; instruments.len()];
        let mut dates: BTreeMap<DateTime<Utc>, Vec<Option<f64>>> = BTreeMap::new();
        for (i, ts, p) in rows.drain(..) {
            let Some(&k) = i.as_deref().and_then(|i| position.get(i)) else { continue };
            counts[k] += 1;
            last[k] = last[k].max(ts);
            dates.entry(ts).or_insert_with(|| vec![None; instruments.len()])[k] = Some(p);
        }
        let horizon = (0..instruments.len()).filter(|&k| counts[k] >= per).map(|k| last[k]).min();
        let mut levels = Vec::new();
        for (ts, now) in dates {
            if horizon.is_some_and(|h| ts > h) {
                break;
            }
            if let Some(now) = now.into_iter().collect::<Option<Vec<f64>>>() {
                levels.extend(chain.step(ts, now).map_err(sqlx::Error::Protocol)?);
            }
        }
        let ts: Vec<DateTime<Utc>> = levels.iter().map(|l| l.ts).collect();
        let level: Vec<f64> = levels.iter().map(|l| l.level).collect();
        let ret: Vec<Option<f64>> = levels.iter().map(|l| l.ret).collect();
        sqlx::query(STORE_INDEX_LEVELS)
            .bind(&def.name)
            .bind(written_after)
            .bind(&ts)
            .bind(&level)
            .bind(&ret)
            .bind(horizon)
            .execute(&mut **tx)
            .await?;
        let Some(h) = horizon else { return Ok(()) };
        written_after = Some(h);
        rows = index_prices_from(tx, &instruments, Some(h + chrono::Duration::microseconds(1)), per).await?;
    }
}

async fn index_prices_from(
    tx: &mut Tx,
    instruments: &[&str],
    from: Option<DateTime<Utc>>,
    per: usize,
) -> Result<Vec<(Option<String>, DateTime<Utc>, f64)>, sqlx::Error> {
    sqlx::query_as(INDEX_PRICES_FROM).bind(instruments).bind(from).bind(per as i64).fetch_all(&mut **tx).await
}
