//! Prices: raw points, their derived values and the indices over them, one transaction per batch.
//!
//! Per batch ([`PriceHandler::commit`]):
//! 1. keep, per (instrument, ts), the message with the highest stream sequence;
//! 2. begin, locking the batch's instruments (see [`crate::lock`]);
//! 3. load per instrument the stored points from its earliest incoming ts on, and the
//!    [`series::Transforms::window`] points before it (or take them from the tail cache, below);
//! 4. merge: an incoming point replaces a stored one only if its sequence is higher (last writer wins);
//!    a point whose price and volume did not change only updates its sequence;
//! 5. recompute from the first changed point forward and write those rows, in one statement with the
//!    series rows ([`sql::write_batch`]);
//! 6. recompute every index that holds a changed instrument from its first changed date forward.
//!
//! An append at the end of a series writes one row. Its window usually comes from the tail cache: the
//! last [`series::Transforms::window`] points of each series this processor wrote, kept with the series'
//! version (`price_series.version`, bumped by every write). The cache serves only appends after its last
//! point, and optimistically: the batch's write returns each series' new version, which must be the
//! cached one plus one (no one else wrote the series since); otherwise, or if a "new" point turns out to
//! be stored, the transaction is rolled back and the batch is done again from the table. So an append
//! costs O(1) reads and writes, and a batch of appends few round trips: `BEGIN` with the locks, one
//! statement for every write ([`sql`]), the index recompute, `COMMIT`.

mod copy;
pub mod index;
pub mod series;
mod sql;

use crate::lock;
use chrono::{DateTime, Utc};
use sea_orm::sqlx::PgPool;
use series::{Point, Transforms};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tracing::Instrument;
use tributary_broker::events::PricePoint;
use tributary_broker::{BatchHandler, Delivery, HandleError, Rejection, ts::Ts};

pub use sql::{INDEX_PRICES_SINCE, IndexDef, recompute_index, reconcile_transforms};

/// Consumes `price.<instrument>`.
#[derive(Clone)]
pub struct PriceHandler {
    pool: PgPool,
    transforms: Arc<Transforms>,
    names: Arc<[String]>,
    cache: Arc<Mutex<TailCache>>,
    index_of: Arc<Mutex<IndexOf>>,
    parallelism: usize,
}

/// Per instrument last seen as an index constituent, an index over it: a batch's split puts the
/// constituents of one index in one part, so that only that part recomputes the index (parts over the
/// constituents of one index would each recompute it, one after the other under its lock). A hint only:
/// a stale entry costs time, never correctness, since every instrument still falls in exactly one part.
struct IndexOf {
    capacity: usize,
    index: HashMap<String, String>,
}

impl IndexOf {
    /// Learns from a committed write: `constituents` (instrument, index) among the `changed` instruments.
    fn learn(&mut self, changed: &[&str], constituents: &[(String, String)]) {
        for instrument in changed {
            self.index.remove(*instrument);
        }
        for (instrument, index) in constituents {
            if self.index.len() >= self.capacity && !self.index.contains_key(instrument) {
                self.index.clear();
            }
            // The first in name order, so that the choice does not depend on the rows' order.
            match self.index.get_mut(instrument) {
                Some(i) if *i <= *index => {}
                Some(i) => i.clone_from(index),
                None => {
                    self.index.insert(instrument.clone(), index.clone());
                }
            }
        }
    }

    /// The group of `instrument` in a split: its index's lock key if it is known to be in one, else its own.
    fn group(&self, instrument: &str) -> i64 {
        match self.index.get(instrument) {
            Some(index) => lock::key("index", index),
            None => lock::key("price", instrument),
        }
    }
}

/// The last points of recently written series, each valid for one version of its series.
struct TailCache {
    capacity: usize,
    tails: HashMap<String, Tail>,
}

struct Tail {
    version: i64,
    rows: Vec<Row>,
}

impl TailCache {
    fn put(&mut self, instrument: &str, tail: Tail) {
        if self.tails.len() >= self.capacity && !self.tails.contains_key(instrument) {
            // Bounded memory: start over rather than grow (a miss costs one load).
            self.tails.clear();
        }
        self.tails.insert(instrument.to_owned(), tail);
    }
}

/// One incoming point after in-batch deduplication.
#[derive(Debug, Clone, Copy)]
struct Incoming {
    ts: DateTime<Utc>,
    price: f64,
    volume: Option<f64>,
    seq: i64,
}

/// A stored or merged point.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub ts: DateTime<Utc>,
    pub volume: Option<f64>,
    pub seq: i64,
    pub point: Point,
}

impl PriceHandler {
    /// A handler writing through `pool` with the given windows, caching the tails of at most
    /// `cached_series` series, committing each batch as `parallelism` concurrent transactions.
    pub fn new(pool: PgPool, transforms: Transforms, cached_series: usize, parallelism: usize) -> Self {
        let names = transforms.names().into();
        let cache = TailCache { capacity: cached_series.max(1), tails: HashMap::new() };
        let index_of = IndexOf { capacity: cached_series.max(1), index: HashMap::new() };
        let parallelism = parallelism.max(1);
        PriceHandler {
            pool,
            transforms: Arc::new(transforms),
            names,
            cache: Arc::new(Mutex::new(cache)),
            index_of: Arc::new(Mutex::new(index_of)),
            parallelism,
        }
    }

    /// Stores one batch in one transaction.
    pub async fn commit<D: std::borrow::Borrow<Delivery<PricePoint>>>(
        &self,
        batch: &[D],
    ) -> Result<(), sea_orm::sqlx::Error> {
        // 1. last writer wins inside the batch
        let mut latest: HashMap<(&str, DateTime<Utc>), Incoming> = HashMap::with_capacity(batch.len());
        for d in batch {
            let d = d.borrow();
            let e = &d.event;
            let inc = Incoming { ts: e.ts.0, price: e.price, volume: e.volume, seq: d.seq as i64 };
            latest
                .entry((e.instrument.as_str(), e.ts.0))
                .and_modify(|cur| {
                    if inc.seq > cur.seq {
                        *cur = inc
                    }
                })
                .or_insert(inc);
        }
        let mut by_instrument: BTreeMap<&str, Vec<Incoming>> = BTreeMap::new();
        for ((instrument, _), inc) in latest {
            by_instrument.entry(instrument).or_default().push(inc);
        }
        for v in by_instrument.values_mut() {
            v.sort_unstable_by_key(|i| i.ts);
        }
        match self.attempt(&by_instrument, true).await {
            // Someone else wrote a cached series: again, reading every series from the table.
            Err(Attempt::Stale) => self.attempt(&by_instrument, false).await,
            other => other,
        }
        .map_err(Attempt::into_error)
    }

    /// One transaction for the batch, trusting cached tails if `use_cache`; [`Attempt::Stale`] if a tail
    /// it trusted was not current after all (then nothing is committed).
    async fn attempt(&self, by_instrument: &BTreeMap<&str, Vec<Incoming>>, use_cache: bool) -> Result<(), Attempt> {
        // 2. lock, in the same round trip as BEGIN
        let mut tx = lock::begin(&self.pool, "price", by_instrument.keys().copied()).await?;
        // 3. load: from the tail cache for appends after a cached tail, else from the table. A cached
        //    tail is trusted now and checked at the write: its series' version must then step from the
        //    cached one.
        let mut windows: HashMap<&str, Vec<Row>> = HashMap::new();
        let mut trusted: HashMap<&str, i64> = HashMap::new();
        let mut to_load = Vec::new();
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            for (instrument, incoming) in by_instrument {
                match cache.tails.remove(*instrument) {
                    Some(t) if use_cache && t.rows.last().is_none_or(|r| r.ts < incoming[0].ts) => {
                        trusted.insert(instrument, t.version);
                        windows.insert(instrument, t.rows);
                    }
                    _ => to_load.push((*instrument, incoming[0].ts)),
                }
            }
        }
        let mut stored =
            sql::load_points(&mut tx, &to_load, self.transforms.window(), CHUNK_POINTS, &self.names).await?;
        // 4-5. merge and recompute, chunk by chunk where a change reaches past the first chunk
        let mut writes = sql::Writes::new(&self.names);
        let mut changed_from: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
        let mut tails: Vec<(&str, Vec<Row>)> = Vec::with_capacity(by_instrument.len());
        for (instrument, incoming) in by_instrument {
            let (window, chunk) = match windows.remove(*instrument) {
                Some(w) => (w, Vec::new()),
                None => stored.remove(*instrument).unwrap_or_default(),
            };
            let complete = chunk.len() < CHUNK_POINTS;
            let mut step = merge(&self.transforms, window, chunk, incoming, complete, false);
            let mut added = std::mem::take(&mut step.added);
            let first_rows = std::mem::take(&mut step.rows);
            let mut first_change = step.changed_from;
            let mut rewrote = false;
            while let Some(carry) = step.carry.take() {
                let chunk = sql::load_after(&mut tx, instrument, carry.after, CHUNK_POINTS, &self.names).await?;
                let complete = chunk.len() < CHUNK_POINTS;
                step = merge(&self.transforms, carry.window, chunk, carry.incoming, complete, carry.unsettled);
                rewrote |= !step.rows.is_empty();
                sql::write_rows(&mut tx, instrument, &step.rows, &self.names).await?;
                added.append(&mut step.added);
                first_change = first_change.or(step.changed_from);
            }
            if let Some(t) = first_change {
                changed_from.insert(instrument, t);
            }
            if !first_rows.is_empty() || !added.is_empty() || rewrote {
                writes.push(instrument, first_rows, added);
            }
            if let Some(tail) = step.tail {
                tails.push((instrument, tail));
            }
        }
        let changed: Vec<&str> = changed_from.keys().copied().collect();
        let written = match sql::write_batch(&mut tx, writes, &changed).await {
            // A trusted tail missed points stored since: its "new" points were there.
            Err(e) if !trusted.is_empty() && is_unique_violation(&e) => return Err(Attempt::Stale),
            other => other?,
        };
        if trusted.iter().any(|(i, v)| written.versions.get(*i).is_some_and(|w| *w != v + 1)) {
            return Err(Attempt::Stale);
        }
        // 6. indices
        if !written.indices.is_empty() {
            lock::acquire(&mut tx, "index", written.indices.iter().map(String::as_str)).await?;
            for def in sql::index_defs(&mut tx, &written.indices).await? {
                let from = def.weights.iter().filter_map(|(i, _)| changed_from.get(i.as_str())).min().copied();
                recompute_index(&mut tx, &def, from).await?;
            }
        }
        tx.commit().await?;
        self.index_of.lock().unwrap_or_else(|e| e.into_inner()).learn(&changed, &written.constituents);
        // A series read from the table and not written has no version known here: not cached.
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        for (instrument, rows) in tails {
            if let Some(version) = written.versions.get(instrument).or(trusted.get(instrument)) {
                cache.put(instrument, Tail { version: *version, rows });
            }
        }
        Ok(())
    }
}

/// Why an attempt at a batch did not commit.
enum Attempt {
    /// A cached tail it trusted was not current.
    Stale,
    Db(sea_orm::sqlx::Error),
}

impl Attempt {
    /// The error of a batch that did not commit. (An attempt without the cache trusts no tail, so it is
    /// never stale; should that change, the batch fails and is redelivered rather than panic.)
    fn into_error(self) -> sea_orm::sqlx::Error {
        match self {
            Attempt::Db(e) => e,
            Attempt::Stale => sea_orm::sqlx::Error::Protocol("a cached tail was stale twice".into()),
        }
    }
}

impl From<sea_orm::sqlx::Error> for Attempt {
    fn from(e: sea_orm::sqlx::Error) -> Self {
        Attempt::Db(e)
    }
}

fn is_unique_violation(e: &sea_orm::sqlx::Error) -> bool {
    matches!(e, sea_orm::sqlx::Error::Database(d) if d.is_unique_violation())
}

/// What a batch does to one instrument, one chunk of its stored points at a time.
struct Merged<'a> {
    /// The rows to write, ascending: new points, points whose values or sequence changed.
    rows: Vec<Row>,
    /// Points that did not exist before.
    added: Vec<DateTime<Utc>>,
    /// The first point whose price changed or appeared, if any.
    changed_from: Option<DateTime<Utc>>,
    /// The last `window` points of the series after the batch, for the tail cache, when the chunk reached
    /// the series' end.
    tail: Option<Vec<Row>>,
    /// What is left when the next stored chunk must be read too.
    carry: Option<Carry<'a>>,
}

/// The state carried from one chunk of a series' rewrite into the next.
struct Carry<'a> {
    /// The ts of the last point read: the next chunk starts after it.
    after: DateTime<Utc>,
    /// The last `window` points so far, as they are now.
    window: Vec<Row>,
    /// The incoming points after the chunk.
    incoming: &'a [Incoming],
    /// Whether the chunk ended before the recompute settled: the next chunk is recomputed from its start.
    unsettled: bool,
}

/// Merges incoming points into one chunk of stored points and recomputes from the first change until the
/// rest is provably unchanged ([`series::recompute_until_settled`]).
///
/// `window` is the (at most [`Transforms::window`]) points before the chunk, ascending; `chunk` the stored
/// points after them, ascending; `complete` whether `chunk` reaches the series' end. Incoming points after
/// an incomplete chunk, and a recompute that has not settled by its end, are carried to the next chunk,
/// so memory is bounded by the chunk whatever the series' length. `unsettled`: the window differs from
/// what is stored (carried from a chunk that did not settle).
fn merge<'a>(
    t: &Transforms,
    window: Vec<Row>,
    chunk: Vec<Row>,
    incoming: &'a [Incoming],
    complete: bool,
    unsettled: bool,
) -> Merged<'a> {
    let upto = match chunk.last() {
        Some(last) if !complete => incoming.partition_point(|i| i.ts <= last.ts),
        _ => incoming.len(),
    };
    let (now, later) = incoming.split_at(upto);
    let base = window.len();
    let mut merged: Vec<Row> = window;
    merged.reserve(chunk.len() + now.len());
    // Per merged point past the window: its stored version (`None` when new), and whether its sequence changed.
    let mut stored_points: Vec<Option<Point>> = Vec::with_capacity(chunk.len() + now.len());
    let mut seq_changed: Vec<bool> = Vec::with_capacity(chunk.len() + now.len());
    let mut stored = chunk.into_iter().peekable();
    let mut first_change: Option<usize> = unsettled.then_some(base);
    let mut last_change: Option<usize> = None;
    let mut added = Vec::new();
    let mut keep = |merged: &mut Vec<Row>, r: Row, original: Option<Point>, seq: bool| {
        stored_points.push(original);
        seq_changed.push(seq);
        merged.push(r);
    };
    for inc in now {
        while let Some(s) = stored.next_if(|s| s.ts < inc.ts) {
            let p = s.point.clone();
            keep(&mut merged, s, Some(p), false);
        }
        match stored.next_if(|s| s.ts == inc.ts) {
            // A redelivery, or an older message than the one stored: no change.
            Some(s) if s.seq >= inc.seq => {
                let p = s.point.clone();
                keep(&mut merged, s, Some(p), false);
            }
            Some(mut s) => {
                let original = s.point.clone();
                s.seq = inc.seq;
                if s.point.price != inc.price || s.volume != inc.volume {
                    first_change.get_or_insert(merged.len());
                    last_change = Some(merged.len());
                    s.point = Point::raw(inc.price);
                    s.volume = inc.volume;
                }
                keep(&mut merged, s, Some(original), true);
            }
            None => {
                first_change.get_or_insert(merged.len());
                last_change = Some(merged.len());
                added.push(inc.ts);
                let r = Row { ts: inc.ts, volume: inc.volume, seq: inc.seq, point: Point::raw(inc.price) };
                keep(&mut merged, r, None, true);
            }
        }
    }
    for s in stored {
        let p = s.point.clone();
        keep(&mut merged, s, Some(p), false);
    }
    let mut changed_from = None;
    let mut end = base;
    if let Some(from) = first_change {
        let mut points: Vec<Point> =
            merged.iter_mut().map(|r| std::mem::replace(&mut r.point, Point::raw(0.0))).collect();
        let originals: Vec<Option<&Point>> =
            std::iter::repeat_n(None, base).chain(stored_points.iter().map(Option::as_ref)).collect();
        // With nothing changed in this chunk (only carried), every point of it is compared.
        let last = last_change.unwrap_or(from.saturating_sub(1));
        end = series::recompute_until_settled(t, &mut points, &originals, from, last);
        for (r, p) in merged.iter_mut().zip(points) {
            r.point = p;
        }
        if last_change.is_some() {
            changed_from = Some(merged[from].ts);
        }
    }
    let rows: Vec<Row> = (base..merged.len())
        .filter(|&i| {
            let k = i - base;
            let differs = || stored_points[k].as_ref().is_none_or(|s| !series::same_bits(s, &merged[i].point));
            seq_changed[k] || (first_change.is_some_and(|f| f <= i) && i < end && differs())
        })
        .map(|i| merged[i].clone())
        .collect();
    let settled = first_change.is_none() || end < merged.len();
    let last_window = |merged: Vec<Row>| {
        let mut merged = merged;
        let keep = merged.len().saturating_sub(t.window());
        merged.split_off(keep)
    };
    if complete {
        return Merged { rows, added, changed_from, tail: Some(last_window(merged)), carry: None };
    }
    let carry = (!later.is_empty() || !settled).then(|| Carry {
        after: merged.last().map_or(DateTime::<Utc>::MIN_UTC, |r| r.ts),
        window: last_window(merged),
        incoming: later,
        unsettled: !settled,
    });
    Merged { rows, added, changed_from, tail: None, carry }
}

/// How many stored points of a series are read at a time, from its first incoming point on: a correction
/// deep in a long history reads chunks until its recompute settles, never the whole history at once.
pub const CHUNK_POINTS: usize = 4096;

/// The smallest batch split into concurrent transactions. A small batch's time is round trips and its
/// commit, which a split doubles rather than shares, and both parts usually touch an index, whose
/// recompute they then do one after the other. From a few hundred events on, the writes dominate and
/// sharing them over two backends keeps a batch short, so the events arriving meanwhile make a small next
/// batch rather than a larger one (at 25k events/s offered: 1000 gave p99 131–264 ms, 300 gave 95–97 ms).
pub const SPLIT_MIN_EVENTS: usize = 300;

impl BatchHandler for PriceHandler {
    type Event = PricePoint;

    fn transient(&self, error: &HandleError) -> bool {
        crate::transient(error)
    }

    fn decode(
        &self,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
        received: Ts,
    ) -> Result<PricePoint, Rejection> {
        PricePoint::decode(subject, headers, payload, received)
    }

    /// Splits a batch of at least [`SPLIT_MIN_EVENTS`] by instrument into `parallelism` parts committed
    /// concurrently, each in its own transaction on its own connection: parts share no instrument, so
    /// their locks never meet. The constituents of an index go to one part as far as [`IndexOf`] knows
    /// them (an index over instruments of two parts is recomputed by each in turn, under its lock). The
    /// batch counts as committed only when every part is; a failed part means redelivery of all, which is
    /// harmless. A smaller batch is one transaction.
    ///
    /// Each part runs as a task of its own, so it is never cancelled half-way, neither when a sibling
    /// part fails nor when the consume loop is dropped: a `COPY` cut off mid-stream would leave its
    /// pooled connection out of step with the server (see `copy.rs`). A part that outlives its consume
    /// loop commits or fails like any other; its messages were not acked, so they come again and change
    /// nothing.
    async fn handle(&self, batch: &[Delivery<PricePoint>]) -> Result<(), HandleError> {
        let parts = if batch.len() >= SPLIT_MIN_EVENTS { self.parallelism } else { 1 };
        let split = {
            let index_of = self.index_of.lock().unwrap_or_else(|e| e.into_inner());
            lock::split_by(batch, parts, |d| index_of.group(&d.event.instrument))
        };
        let commits = split.into_iter().map(|part| {
            let part: Vec<Delivery<PricePoint>> = part.into_iter().cloned().collect();
            let span = crate::db_span("price batch", part.len());
            let this = self.clone();
            tokio::spawn(async move { this.commit(&part).await }.instrument(span))
        });
        let mut failure = None;
        for outcome in futures::future::join_all(commits).await {
            let e = match outcome {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => anyhow::Error::new(e),
                Err(e) => anyhow::Error::new(e),
            };
            failure.get_or_insert(e);
        }
        failure.map_or(Ok(()), |e| Err(HandleError(e.context("storing a price batch"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_puts_the_known_constituents_of_an_index_in_one_part() {
        let mut index_of = IndexOf { capacity: 100, index: HashMap::new() };
        let constituents: Vec<(String, String)> =
            (0..10).map(|i| (format!("S{i}"), "idx".to_owned())).chain([("S3".into(), "a-first".into())]).collect();
        let changed: Vec<String> = (0..10).map(|i| format!("S{i}")).collect();
        let changed: Vec<&str> = changed.iter().map(String::as_str).collect();
        index_of.learn(&changed, &constituents);
        // S3 is in two indices: it goes with the first by name, the rest with "idx".
        assert_eq!(index_of.index["S3"], "a-first");
        let batch: Vec<String> = (0..200).map(|i| format!("S{}", i % 100)).collect();
        let parts = lock::split_by(&batch, 2, |s| index_of.group(s));
        assert_eq!(parts.len(), 2, "the other instruments still spread over both parts");
        let with_idx: Vec<usize> = (0..parts.len())
            .filter(|&p| {
                parts[p].iter().any(|s| ["S0", "S1", "S2", "S4", "S5", "S6", "S7", "S8", "S9"].contains(&s.as_str()))
            })
            .collect();
        assert_eq!(with_idx.len(), 1, "every constituent of idx in one part");
        for name in ["S3", "S42"] {
            assert_eq!(parts.iter().filter(|p| p.iter().any(|s| *s == name)).count(), 1, "{name} in one part");
        }
        // A changed instrument no longer returned as a constituent is forgotten.
        index_of.learn(&["S0"], &[]);
        assert!(!index_of.index.contains_key("S0"));
        assert_eq!(index_of.group("S0"), lock::key("price", "S0"));
    }

    /// The chunked rewrite equals the batch computation whatever the chunk size: a series kept in memory
    /// as the table, incoming corrections, new and redelivered points anywhere in it, read `chunk` points
    /// at a time with the window and incoming points carried between chunks as `attempt` does.
    #[test]
    fn a_rewrite_read_in_chunks_equals_the_batch_computation() {
        use chrono::TimeZone;
        use proptest::prelude::*;
        let config = proptest::test_runner::Config { cases: 200, ..Default::default() };
        proptest::proptest!(config, |(
            seed in any::<u64>(),
            len in 0usize..400,
            chunk in 1usize..40,
            incoming in proptest::collection::vec((0usize..500, 0u8..4, -0.1f64..0.1), 1..12),
            small in any::<bool>(),
        )| {
            let t = if small { Transforms { sma: vec![3], ema: vec![4], vol: vec![2] } } else { Transforms::default() };
            let day0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
            let ts = |i: usize| day0 + chrono::Duration::hours(i as i64);
            // The table: every other hour of `2 * len`, so that new points can fall between stored ones.
            let mut x = seed | 1;
            let mut raw: BTreeMap<DateTime<Utc>, (f64, i64)> = BTreeMap::new();
            for i in 0..len {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                raw.insert(ts(2 * i), (100.0 + (x % 1000) as f64 / 100.0, 1));
            }
            let computed = |raw: &BTreeMap<DateTime<Utc>, (f64, i64)>| -> Vec<Row> {
                let mut points: Vec<Point> = raw.values().map(|(p, _)| Point::raw(*p)).collect();
                series::recompute(&t, &mut points, 0);
                raw.iter().zip(points).map(|((ts, (_, seq)), point)| Row { ts: *ts, volume: None, seq: *seq, point }).collect()
            };
            let mut table: BTreeMap<DateTime<Utc>, Row> = computed(&raw).into_iter().map(|r| (r.ts, r)).collect();
            // Incoming: a correction, a redelivery or a new point, each with a higher sequence.
            let mut by_ts: BTreeMap<DateTime<Utc>, Incoming> = BTreeMap::new();
            for (k, (at, what, d)) in incoming.iter().enumerate() {
                let at = ts(*at % (2 * len + 2));
                let seq = 2 + k as i64;
                let price = match (what, raw.get(&at)) {
                    (0, Some((p, _))) => *p,
                    (_, Some((p, _))) => p * (1.0 + d),
                    (_, None) => 100.0 * (1.0 + d),
                };
                by_ts.insert(at, Incoming { ts: at, price, volume: None, seq });
            }
            let incoming: Vec<Incoming> = by_ts.values().copied().collect();
            for inc in &incoming {
                raw.insert(inc.ts, (inc.price, inc.seq));
            }
            // The rewrite, chunk by chunk, writing to the table as it goes.
            let t0 = incoming[0].ts;
            let mut window: Vec<Row> = table.range(..t0).rev().take(t.window()).map(|(_, r)| r.clone()).collect();
            window.reverse();
            let read = |table: &BTreeMap<DateTime<Utc>, Row>, from: std::ops::Bound<DateTime<Utc>>| -> Vec<Row> {
                table.range((from, std::ops::Bound::Unbounded)).take(chunk).map(|(_, r)| r.clone()).collect()
            };
            let first = read(&table, std::ops::Bound::Included(t0));
            let complete = first.len() < chunk;
            let mut step = merge(&t, window, first, &incoming, complete, false);
            loop {
                for r in std::mem::take(&mut step.rows) {
                    table.insert(r.ts, r);
                }
                let Some(carry) = step.carry.take() else { break };
                let next = read(&table, std::ops::Bound::Excluded(carry.after));
                let complete = next.len() < chunk;
                step = merge(&t, carry.window, next, carry.incoming, complete, carry.unsettled);
            }
            let want = computed(&raw);
            let got: Vec<&Row> = table.values().collect();
            prop_assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                prop_assert!(g.ts == w.ts && g.seq == w.seq && series::same_bits(&g.point, &w.point), "at {}: {:?} vs {:?}", w.ts, g, w);
            }
            if let Some(tail) = step.tail {
                let n = want.len().saturating_sub(t.window());
                prop_assert!(tail.iter().zip(&want[n..]).all(|(a, b)| a.ts == b.ts && series::same_bits(&a.point, &b.point)));
            }
        });
    }

    #[test]
    fn the_constituent_hint_is_bounded() {
        let mut index_of = IndexOf { capacity: 3, index: HashMap::new() };
        let constituents: Vec<(String, String)> = (0..10).map(|i| (format!("S{i}"), "idx".to_owned())).collect();
        index_of.learn(&[], &constituents);
        assert!(index_of.index.len() <= 3);
    }
}
