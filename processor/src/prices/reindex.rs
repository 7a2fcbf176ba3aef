//! Indices over prices recomputed in chunks, from a changed date forward.

use super::index;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::ops::RangeInclusive;
use tributary_store::indices::{self, Levels, PriceRow, RecomputeStart};
use tributary_store::{Tx, sqlx};

/// How many prices one chunk of an index recompute reads, over all constituents: about 64k prices a
/// chunk whatever the number of constituents, so memory does not grow with the history; at least
/// [`LEAST_PER_CONSTITUENT`] of each.
const CHUNK_PRICES: usize = 65_536;
/// The fewest prices of one constituent a chunk reads.
const LEAST_PER_CONSTITUENT: usize = 64;

/// Recomputes index `name` after its constituents' prices changed in `changed` (first to last changed
/// date; `None`: from scratch, for a new definition), in chunks (about [`CHUNK_PRICES`] prices).
///
/// It starts at the anchor, the last index date before the change (from scratch when there is none), and
/// the levels after a changed date all change (each is the one before times a return), so a correction
/// early in a long history rewrites the rest, but never holds more than a chunk. It stops at the first
/// index date after the change whose level comes out as stored, bit for bit: no price after the change
/// changed, so neither does any level after that one (a correction on a date that is no index date, a
/// holiday of another constituent, changed no level and rewrote the whole tail).
///
/// The caller holds the locks of the index and its constituents. An append costs two round trips: the
/// definition with the anchor, the prices at it and from the change on, then the levels. Nothing happens
/// when there is no such index. Returns how many prices it read.
pub async fn recompute_index(
    tx: &mut Tx,
    name: &str,
    changed: Option<RangeInclusive<DateTime<Utc>>>,
) -> Result<usize, sqlx::Error> {
    let (from, through) = changed.map(RangeInclusive::into_inner).unzip();
    let start = indices::recompute_start(tx, name, from, through, CHUNK_PRICES, LEAST_PER_CONSTITUENT).await?;
    let Some(RecomputeStart { def, per, anchor, first_after, prices: mut rows }) = start else {
        return Ok(0);
    };
    let instruments: Vec<&str> = def.weights.iter().map(|w| w.0.as_str()).collect();
    if anchor.is_none() {
        // No index date before `from`, and no price before it changed: none lies there still, and the
        // first one (the base) is at `from` or after. (Reading from the start made every append to an
        // index whose constituents never share a date read their whole history.)
        rows = indices::prices_from(tx, &instruments, from, per).await?;
    }
    let position: HashMap<&str, usize> = instruments.iter().enumerate().map(|(k, i)| (*i, k)).collect();
    let mut chain = index::Chain::new(def.base, def.weights.iter().map(|w| w.1).collect(), anchor);
    // No anchor: from scratch, and every stored level not written is deleted.
    let mut written_after = anchor.map(|a| a.0);
    let mut read = 0;
    loop {
        read += rows.len();
        let chunk = Chunk::of(rows, &position, anchor.map(|a| a.0));
        // Every constituent's prices are read up to the horizon: the earliest last price of a constituent
        // whose chunk was full (none full: the end).
        let horizon = chunk.full(per).map(|k| chunk.last[k]).min();
        // A constituent whose chunk was not full has no price after its last one read (none: no price at
        // all), so no index date lies past that: once the horizon reaches it, this chunk is the last. (A
        // constituent that stopped, or never had a price, made every append read the others' whole history
        // from the anchor on.)
        let ended = (0..instruments.len()).filter(|&k| chunk.counts[k] < per).map(|k| chunk.last[k]).min();
        let horizon = horizon.filter(|h| ended.is_none_or(|e| e > *h));
        let mut levels = Vec::new();
        // The date the levels settle on, if this chunk reaches it.
        let mut settles = None;
        for (ts, now) in chunk.dates(instruments.len()) {
            if horizon.is_some_and(|h| ts > h) {
                break;
            }
            let Some(level) = chain.step(ts, now).map_err(sqlx::Error::Protocol)? else { continue };
            if let Some(stored) = first_after.filter(|s| s.ts == ts && s.level.to_bits() == level.level.to_bits()) {
                // Every level after this date follows from this one and prices no batch changed: kept.
                if stored.ret.map(f64::to_bits) != level.ret.map(f64::to_bits) {
                    levels.push(level);
                }
                settles = Some(ts);
                break;
            }
            levels.push(level);
        }
        let levels = Levels {
            ts: levels.iter().map(|l| l.ts).collect(),
            level: levels.iter().map(|l| l.level).collect(),
            ret: levels.iter().map(|l| l.ret).collect(),
        };
        // Dates written up to the settled one are kept (that one too); past the horizon, none is touched.
        let upto = settles.map(|s| s - chrono::Duration::microseconds(1)).or(horizon);
        indices::store_levels(tx, name, written_after, &levels, upto).await?;
        let Some(h) = horizon.filter(|_| settles.is_none()) else { return Ok(read) };
        written_after = Some(h);
        rows = indices::prices_from(tx, &instruments, Some(h + chrono::Duration::microseconds(1)), per).await?;
    }
}

/// One chunk of the constituents' prices, sorted by date and then constituent: memory in the prices read,
/// whatever the number of constituents or how their dates interleave. (A constituent-wide row for every
/// date read took 16 bytes × constituents per price: a gigabyte for a chunk of 1,000 constituents whose
/// dates never meet.)
struct Chunk {
    /// (date, constituent, price), ascending.
    prices: Vec<(DateTime<Utc>, usize, f64)>,
    /// Per constituent, the prices read after the anchor (the chunk's fill).
    counts: Vec<usize>,
    /// Per constituent, its last date read (`MIN_UTC`: none).
    last: Vec<DateTime<Utc>>,
}

impl Chunk {
    /// `rows` of the constituents at `position` (others, from a definition changed since, are skipped).
    fn of(rows: Vec<PriceRow>, position: &HashMap<&str, usize>, anchor: Option<DateTime<Utc>>) -> Chunk {
        let mut counts = vec![0usize; position.len()];
        let mut last = vec![DateTime::<Utc>::MIN_UTC; position.len()];
        let mut prices = Vec::with_capacity(rows.len());
        for (i, ts, p) in rows {
            let Some(&k) = position.get(i.as_str()) else { continue };
            counts[k] += usize::from(Some(ts) != anchor);
            last[k] = last[k].max(ts);
            prices.push((ts, k, p));
        }
        prices.sort_unstable_by_key(|&(ts, k, _)| (ts, k));
        Chunk { prices, counts, last }
    }

    /// The constituents whose chunk was full: they may have prices past it.
    fn full(&self, per: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.counts.len()).filter(move |&k| self.counts[k] >= per)
    }

    /// The index dates, ascending: the dates where each of the `constituents` has a price (one at most, by
    /// the primary key), with the prices in constituent order.
    fn dates(&self, constituents: usize) -> impl Iterator<Item = (DateTime<Utc>, Vec<f64>)> + '_ {
        self.prices
            .chunk_by(|a, b| a.0 == b.0)
            .filter(move |at| at.len() == constituents)
            .map(|at| (at[0].0, at.iter().map(|p| p.2).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn at(secs: i64, micros: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600 + secs, 0).unwrap() + Duration::microseconds(micros)
    }

    #[test]
    fn a_chunks_index_dates_are_where_every_constituent_has_a_price_in_constituent_order() {
        let position: HashMap<&str, usize> = [("A", 0), ("B", 1)].into();
        let rows = vec![
            ("B".to_owned(), at(0, 0), 2.0),
            ("A".to_owned(), at(1, 0), 3.0),
            ("A".to_owned(), at(0, 0), 1.0),
            ("gone".to_owned(), at(1, 0), 9.0),
            ("B".to_owned(), at(2, 0), 4.0),
        ];
        let chunk = Chunk::of(rows, &position, Some(at(0, 0)));
        assert_eq!(chunk.dates(2).collect::<Vec<_>>(), [(at(0, 0), vec![1.0, 2.0])]);
        assert_eq!(chunk.counts, [1, 1], "not the anchor's");
        assert_eq!(chunk.last, [at(1, 0), at(2, 0)]);
        assert_eq!(chunk.full(1).collect::<Vec<_>>(), [0, 1]);
    }

    /// A chunk of 1,000 constituents whose dates never meet but once (65 prices each) holds about its
    /// prices, not a constituent-wide row per date read (a gigabyte: 65,000 dates × 1,000 × 16 bytes).
    #[test]
    fn a_chunk_over_many_constituents_whose_dates_never_meet_holds_its_prices_only() {
        let (constituents, per) = (1000, 65);
        let names: Vec<String> = (0..constituents).map(|k| format!("C{k:04}")).collect();
        let position: HashMap<&str, usize> = names.iter().enumerate().map(|(k, n)| (n.as_str(), k)).collect();
        let mut rows = Vec::new();
        for (k, name) in names.iter().enumerate() {
            rows.push((name.clone(), at(0, 0), 100.0));
            rows.extend((1..per).map(|d| (name.clone(), at(d, k as i64), 100.0 + d as f64)));
        }
        let prices = rows.len();
        let mut dates = Vec::new();
        // Allocations of this thread only: the tests beside it do not count.
        let held = allocation_counter::measure(|| {
            dates = Chunk::of(rows, &position, None).dates(constituents).collect::<Vec<_>>();
        })
        .bytes_max as usize;
        assert_eq!(dates.len(), 1, "one date shared by all");
        assert_eq!((dates[0].0, dates[0].1.len()), (at(0, 0), constituents));
        let own = prices * std::mem::size_of::<(DateTime<Utc>, usize, f64)>();
        assert!(held < 2 * own, "{held} bytes held for {prices} prices ({own} bytes of them)");
    }
}
