//! Indices over prices recomputed in chunks, from a changed date forward.

use super::index;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use tributary_store::indices::{self, IndexDef, Levels};
use tributary_store::{Tx, sqlx};

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
    let mut rows = match from {
        Some(from) => indices::prices_since(tx, &def.name, from, &instruments, per).await?,
        None => Vec::new(),
    };
    let mut anchor = None;
    if let Some(i) = rows.iter().position(|r| r.0.is_none()) {
        let (_, ts, level) = rows.swap_remove(i);
        anchor = Some((ts, level));
    } else {
        rows = indices::prices_from(tx, &instruments, None, per).await?;
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
        let levels = Levels {
            ts: levels.iter().map(|l| l.ts).collect(),
            level: levels.iter().map(|l| l.level).collect(),
            ret: levels.iter().map(|l| l.ret).collect(),
        };
        indices::store_levels(tx, &def.name, written_after, &levels, horizon).await?;
        let Some(h) = horizon else { return Ok(()) };
        written_after = Some(h);
        rows = indices::prices_from(tx, &instruments, Some(h + chrono::Duration::microseconds(1)), per).await?;
    }
}
