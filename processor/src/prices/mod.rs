//! Prices: raw points, their derived values and the indices over them, one transaction per batch.
//!
//! Per batch ([`PriceHandler::commit`]):
//! 1. keep, per (instrument, ts), the message with the highest stream sequence;
//! 2. begin, locking the batch's instruments, and the windows' lock shared (see [`crate::lock`]);
//! 3. load per instrument the [`series::Transforms::window`] points before its earliest incoming ts and
//!    the first [`CHUNK_POINTS`] stored points from it on (or take the window from the tail cache, below);
//! 4. merge ([`merge`]): an incoming point replaces a stored one only if its sequence is higher (last
//!    writer wins); a point whose price and volume did not change only updates its sequence;
//! 5. recompute from the first changed point until the change has died out (a window of points computes
//!    to their stored bits: [`series::recompute_until_settled`]), reading further chunks only while it
//!    has not, and write the changed rows, the first chunk's in one statement with the series rows
//!    ([`tributary_store::prices::write_batch`]);
//! 6. recompute every index that holds a changed instrument from its first changed date forward, in
//!    chunks ([`recompute_index`]).
//!
//! An append at the end of a series writes one row. Its window usually comes from the tail cache: the
//! last [`series::Transforms::window`] points of each series this processor wrote, kept with the series'
//! version (`price_series.version`, bumped by every write). The cache serves only appends after its last
//! point, and optimistically: the batch's write returns each series' new version, which must be the
//! cached one plus one (no one else wrote the series since); otherwise, or if a "new" point turns out to
//! be stored, the transaction is rolled back and the batch is done again from the table. So an append
//! costs O(1) reads and writes, and a batch of appends few round trips: `BEGIN` with the locks, one
//! statement for every write ([`tributary_store::prices`]), the index recompute, `COMMIT`.

pub mod in_force;
pub mod index;
mod merge;
mod reconcile;
mod reindex;
pub mod series;

use crate::lock;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use sea_orm::sqlx::PgPool;
use series::Transforms;
use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tracing::Instrument;
use tributary_broker::events::PricePoint;
use tributary_broker::{BatchHandler, Delivery, HandleError};

pub use in_force::InForce;
use merge::{NextRead, merge};
pub use reconcile::reconcile_transforms;
pub use reindex::recompute_index;
pub use tributary_store::indices::IndexDef;
use tributary_store::prices::{self as store, Row};

/// Consumes `price.<instrument>`.
#[derive(Clone)]
pub struct PriceHandler {
    pool: PgPool,
    transforms: Arc<Transforms>,
    names: Arc<[String]>,
    /// `names` as `settings` records them.
    windows: serde_json::Value,
    /// Whether they are in force: no longer once a batch is refused.
    in_force: InForce,
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
pub(crate) struct Incoming {
    pub(crate) ts: DateTime<Utc>,
    pub(crate) price: f64,
    pub(crate) volume: Option<f64>,
    pub(crate) seq: i64,
}

impl PriceHandler {
    /// A handler writing through `pool` with the given windows, caching the tails of at most
    /// `cached_series` series, committing each batch as `parallelism` concurrent transactions.
    pub fn new(pool: PgPool, transforms: Transforms, cached_series: usize, parallelism: usize) -> Self {
        let names: Arc<[String]> = transforms.names().into();
        let windows = serde_json::Value::from(names.to_vec());
        let cache = TailCache { capacity: cached_series.max(1), tails: HashMap::new() };
        let index_of = IndexOf { capacity: cached_series.max(1), index: HashMap::new() };
        let parallelism = parallelism.max(1);
        PriceHandler {
            in_force: InForce::new(pool.clone(), windows.clone()),
            pool,
            transforms: Arc::new(transforms),
            names,
            windows,
            cache: Arc::new(Mutex::new(cache)),
            index_of: Arc::new(Mutex::new(index_of)),
            parallelism,
        }
    }

    /// Whether this handler's windows are in force, as its batches find (shared by its clones).
    pub fn in_force(&self) -> &InForce {
        &self.in_force
    }

    /// Stores one batch in one transaction.
    pub async fn commit<D: std::borrow::Borrow<Delivery<PricePoint>>>(&self, batch: &[D]) -> Result<(), CommitError> {
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
        let mut laps = Laps::new("prices");
        // 2. lock, in the same round trip as BEGIN (the windows' lock shared: no recompute part runs beside)
        let mut tx = lock::begin_sharing(&self.pool, lock::WINDOWS, "price", by_instrument.keys().copied()).await?;
        laps.lap("lock");
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
            store::load_points(&mut tx, &to_load, self.transforms.window(), CHUNK_POINTS, &self.names).await?;
        laps.lap("load");
        // 4-5. merge and recompute, chunk by chunk where a change reaches past the first chunk
        let mut writes = store::Writes::new(&self.names);
        // Per instrument, the first and last point whose price changed or appeared.
        let mut changed_at: BTreeMap<&str, RangeInclusive<DateTime<Utc>>> = BTreeMap::new();
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
            let mut last_change = step.changed_through;
            let mut rewrote = false;
            while let Some(mut carry) = step.carry.take() {
                let size = self.transforms.window();
                let (window, chunk) = match carry.next_read() {
                    NextRead::Skipping { after, next } => {
                        let (between, chunk) =
                            store::load_skipping(&mut tx, instrument, after, next, size, CHUNK_POINTS, &self.names)
                                .await?;
                        (carry.window_with(between, size), chunk)
                    }
                    NextRead::After(after) => {
                        let chunk = store::load_after(&mut tx, instrument, after, CHUNK_POINTS, &self.names).await?;
                        (std::mem::take(&mut carry.window), chunk)
                    }
                };
                let complete = chunk.len() < CHUNK_POINTS;
                step = merge(&self.transforms, window, chunk, carry.incoming, complete, carry.unsettled);
                rewrote |= !step.rows.is_empty();
                store::write_rows(&mut tx, instrument, &step.rows, &self.names).await?;
                added.append(&mut step.added);
                first_change = first_change.or(step.changed_from);
                last_change = step.changed_through.or(last_change);
            }
            if let (Some(first), Some(last)) = (first_change, last_change) {
                changed_at.insert(instrument, first..=last);
            }
            if !first_rows.is_empty() || !added.is_empty() || rewrote {
                writes.push(instrument, first_rows, added);
            }
            if let Some(tail) = step.tail {
                tails.push((instrument, tail));
            }
        }
        laps.lap("derive");
        let changed: Vec<&str> = changed_at.keys().copied().collect();
        let written = match store::write_batch(&mut tx, writes, &changed).await {
            // A trusted tail missed points stored since: its "new" points were there.
            Err(e) if !trusted.is_empty() && is_unique_violation(&e) => return Err(Attempt::Stale),
            other => other?,
        };
        if let Some(stored) = written.windows
            && stored != self.windows
        {
            self.in_force.refused(&stored);
            return Err(Attempt::WindowsChanged(WindowsChanged { stored, ours: self.windows.clone() }));
        }
        if trusted.iter().any(|(i, v)| written.versions.get(*i).is_some_and(|w| *w != v + 1)) {
            return Err(Attempt::Stale);
        }
        laps.lap("write");
        // 6. indices
        if !written.indices.is_empty() {
            lock::acquire(&mut tx, "index", written.indices.iter().map(String::as_str)).await?;
            for index in &written.indices {
                // From the earliest change among its constituents through the latest (as the write found
                // them; one removed since by a new definition only makes the range wider than it need).
                let changes = written
                    .constituents
                    .iter()
                    .filter(|(_, i)| i == index)
                    .filter_map(|(instrument, _)| changed_at.get(instrument.as_str()));
                let span = changes.fold(None, |span: Option<RangeInclusive<DateTime<Utc>>>, c| match span {
                    None => Some(c.clone()),
                    Some(s) => Some(*s.start().min(c.start())..=*s.end().max(c.end())),
                });
                recompute_index(&mut tx, index, span).await?;
            }
            laps.lap("index");
        }
        tx.commit().await?;
        laps.lap("commit");
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

/// The steps of one transaction timed one after the other, each into `tributary_phase_seconds`.
struct Laps {
    consumer: &'static str,
    at: std::time::Instant,
}

impl Laps {
    fn new(consumer: &'static str) -> Laps {
        Laps { consumer, at: std::time::Instant::now() }
    }

    /// Records the time since the last lap as `phase`.
    fn lap(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        metrics::histogram!(tributary_broker::metric_names::PHASE_SECONDS, "consumer" => self.consumer, "phase" => phase)
            .record((now - self.at).as_secs_f64());
        self.at = now;
    }
}

/// Why an attempt at a batch did not commit.
enum Attempt {
    /// A cached tail it trusted was not current.
    Stale,
    WindowsChanged(WindowsChanged),
    Db(sea_orm::sqlx::Error),
}

impl Attempt {
    /// The error of a batch that did not commit. (An attempt without the cache trusts no tail, so it is
    /// never stale; should that change, the batch fails and is redelivered rather than panic.)
    fn into_error(self) -> CommitError {
        match self {
            Attempt::Db(e) => CommitError::Db(e),
            Attempt::WindowsChanged(e) => CommitError::WindowsChanged(e),
            Attempt::Stale => CommitError::Db(sea_orm::sqlx::Error::Protocol("a cached tail was stale twice".into())),
        }
    }
}

/// Why a price batch did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// PostgreSQL failed.
    #[error(transparent)]
    Db(#[from] sea_orm::sqlx::Error),
    /// The stored derived values are no longer of this processor's windows.
    #[error(transparent)]
    WindowsChanged(#[from] WindowsChanged),
}

impl CommitError {
    /// As the consume loop takes it: the cause itself, so that [`crate::failure`] finds it in the chain.
    fn into_anyhow(self) -> anyhow::Error {
        match self {
            CommitError::Db(e) => anyhow::Error::new(e),
            CommitError::WindowsChanged(e) => anyhow::Error::new(e),
        }
    }
}

/// The stored derived values are recorded as computed with other windows than this processor's: another
/// processor, started with other windows, recomputed every series for them or is doing so (a rolling
/// update that changed `processor.prices`' windows, say). A batch written now would mix the two, so it is
/// rolled back. The failure lasts until an operator acts ([`crate::failure::lasting`]): the batch is
/// redelivered, never dead-lettered, and the processor stands aside from prices ([`InForce`]) until it is
/// stopped, or the windows in force are its own again.
#[derive(Debug, thiserror::Error)]
#[error(
    "the stored derived values are recorded as computed with the windows {stored}, this processor's are \
     {ours}: another processor changed them; stop this one, or start it with the same windows"
)]
pub struct WindowsChanged {
    /// What `settings` records.
    pub stored: serde_json::Value,
    /// This processor's windows.
    pub ours: serde_json::Value,
}

impl From<sea_orm::sqlx::Error> for Attempt {
    fn from(e: sea_orm::sqlx::Error) -> Self {
        Attempt::Db(e)
    }
}

fn is_unique_violation(e: &sea_orm::sqlx::Error) -> bool {
    matches!(e, sea_orm::sqlx::Error::Database(d) if d.is_unique_violation())
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

    decode_with!(PricePoint, PricePoint::decode);

    /// Splits a batch of at least [`SPLIT_MIN_EVENTS`] by instrument into `parallelism` parts (more when
    /// it spans more instruments than that many parts should lock: [`lock::split_by`]) committed
    /// `parallelism` at a time, each in its own transaction on its own connection: parts share no instrument, so
    /// their locks never meet. The constituents of an index go to one part as far as [`IndexOf`] knows
    /// them (an index over instruments of two parts is recomputed by each in turn, under its lock). The
    /// batch counts as committed only when every part is; a failed part means redelivery of all, which is
    /// harmless. A smaller batch is one transaction.
    ///
    /// Each part runs as a task of its own, so it is never cancelled half-way, neither when a sibling
    /// part fails nor when the consume loop is dropped: a `COPY` cut off mid-stream would leave its
    /// pooled connection out of step with the server (see `tributary_store::prices`' `copy.rs`). A part that outlives its consume
    /// loop commits or fails like any other; its messages were not acked, so they come again and change
    /// nothing.
    async fn handle(&self, batch: &[Delivery<PricePoint>]) -> Result<(), HandleError> {
        let parts = if batch.len() >= SPLIT_MIN_EVENTS { self.parallelism } else { 1 };
        let split = {
            let index_of = self.index_of.lock().unwrap_or_else(|e| e.into_inner());
            let series = |d: &Delivery<PricePoint>| lock::key("price", &d.event.instrument);
            lock::split_by(batch, parts, series, |d| index_of.group(&d.event.instrument))
        };
        // At most `parallelism` parts at a time; more only when the batch spans more series than that
        // many parts should lock (`lock::MAX_SERIES_PER_PART`). A part is spawned when its turn comes,
        // and not at all once another has failed (the whole batch comes again).
        let failed = Arc::new(AtomicBool::new(false));
        let commits: Vec<_> = split
            .into_iter()
            .map(|part| {
                let part: Vec<Delivery<PricePoint>> = part.into_iter().cloned().collect();
                let (this, failed) = (self.clone(), failed.clone());
                async move {
                    if failed.load(Ordering::Relaxed) {
                        return None;
                    }
                    let span = crate::db_span("price batch", part.len());
                    Some(tokio::spawn(async move { this.commit(&part).await }.instrument(span)).await)
                }
            })
            .collect();
        let mut outcomes = futures::stream::iter(commits).buffer_unordered(self.parallelism);
        let mut failure = None;
        while let Some(outcome) = outcomes.next().await {
            let e = match outcome {
                None | Some(Ok(Ok(()))) => continue,
                Some(Ok(Err(e))) => e.into_anyhow(),
                Some(Err(e)) => anyhow::Error::new(e),
            };
            failed.store(true, Ordering::Relaxed);
            failure.get_or_insert(e);
        }
        failure.map_or(Ok(()), |e| Err(HandleError(e.context("storing a price batch"))))
    }
}

#[cfg(test)]
mod tests;
