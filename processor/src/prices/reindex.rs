//! Indices over prices recomputed in chunks, from a changed date forward.

use super::index;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use tributary_store::indices::{self, Levels, RecomputeStart};
use tributary_store::{Tx, sqlx};

/// How many prices one chunk of an index recompute reads, over all constituents: about 64k prices a
/// chunk whatever the number of constituents, so memory does not grow with the history; at least
/// [`LEAST_PER_CONSTITUENT`] of each.
const CHUNK_PRICES: usize = 65_536;
/// The fewest prices of one constituent a chunk reads.
const LEAST_PER_CONSTITUENT: usize = 64;

/// Recomputes index `name` from the last index date before `from` forward (from scratch when `from` is
/// `None` or precedes every index date), in chunks (about [`CHUNK_PRICES`] prices): the levels after a
/// changed date all change (each is the one before times a return), so a correction early in a long
/// history rewrites the rest, but never holds more than a chunk. The caller holds the locks of the index
/// and its constituents. An append costs two round trips: the definition with the anchor and the prices
/// after it, then the levels. Nothing happens when there is no such index. Returns how many prices it
/// read.
pub async fn recompute_index(tx: &mut Tx, name: &str, from: Option<DateTime<Utc>>) -> Result<usize, sqlx::Error> {
    let Some(start) = indices::recompute_start(tx, name, from, CHUNK_PRICES, LEAST_PER_CONSTITUENT).await? else {
        return Ok(0);
    };
    let RecomputeStart { def, per, anchor, prices: mut rows } = start;
    let instruments: Vec<&str> = def.weights.iter().map(|w| w.0.as_str()).collect();
    if anchor.is_none() {
        rows = indices::prices_from(tx, &instruments, None, per).await?;
    }
    let position: HashMap<&str, usize> = instruments.iter().enumerate().map(|(k, i)| (*i, k)).collect();
    let mut chain = index::Chain::new(def.base, def.weights.iter().map(|w| w.1).collect(), anchor);
    // No anchor: from scratch, and every stored level not written is deleted.
    let mut written_after = anchor.map(|a| a.0);
    let mut read = 0;
    loop {
        read += rows.len();
        // Every constituent's prices are read up to the horizon: the earliest last price of a constituent
        // whose chunk was full (none full: the end).
        let mut counts = vec![0usize; instruments.len()];
        let mut last = vec![DateTime::<Utc>::MIN_UTC; instruments.len()];
        let mut dates: BTreeMap<DateTime<Utc>, Vec<Option<f64>>> = BTreeMap::new();
        for (i, ts, p) in rows.drain(..) {
            let Some(&k) = position.get(i.as_str()) else { continue };
            counts[k] += 1;
            last[k] = last[k].max(ts);
            dates.entry(ts).or_insert_with(|| vec![None; instruments.len()])[k] = Some(p);
        }
        let horizon = (0..instruments.len()).filter(|&k| counts[k] >= per).map(|k| last[k]).min();
        // A constituent whose chunk was not full has no price after its last one read (none: no price at
        // all), so no index date lies past that: once the horizon reaches it, this chunk is the last. (A
        // constituent that stopped, or never had a price, made every append read the others' whole history
        // from the anchor on.)
        let ended = (0..instruments.len()).filter(|&k| counts[k] < per).map(|k| last[k]).min();
        let horizon = horizon.filter(|h| ended.is_none_or(|e| e > *h));
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
        indices::store_levels(tx, name, written_after, &levels, horizon).await?;
        let Some(h) = horizon else { return Ok(read) };
        written_after = Some(h);
        rows = indices::prices_from(tx, &instruments, Some(h + chrono::Duration::microseconds(1)), per).await?;
    }
}
