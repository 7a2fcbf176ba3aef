//! Prices: raw points, their derived values and the indices over them, one transaction per batch.
//!
//! Per batch ([`PriceHandler::commit`]):
//! 1. keep, per (instrument, ts), the message with the highest stream sequence;
//! 2. lock the batch's instruments (see [`crate::lock`]);
//! 3. load per instrument the stored points from its earliest incoming ts on, and the
//!    [`series::Transforms::window`] points before it;
//! 4. merge: an incoming point replaces a stored one only if its sequence is higher (last writer wins);
//!    a point whose price and volume did not change only updates its sequence;
//! 5. recompute from the first changed point forward and upsert those rows;
//! 6. recompute every index that holds a changed instrument from its first changed date forward.
//!
//! An append at the end of a series reads the window and writes one row: O(window) reads, O(1) writes.

pub mod index;
pub mod series;
mod sql;

use crate::lock;
use chrono::{DateTime, Utc};
use sea_orm::sqlx::PgPool;
use series::{Point, Transforms};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tracing::Instrument;
use tributary_broker::events::PricePoint;
use tributary_broker::{BatchHandler, Delivery, HandleError, Rejection, ts::Ts};

pub use sql::{IndexDef, recompute_index, reconcile_transforms};

/// Consumes `price.<instrument>`.
#[derive(Clone)]
pub struct PriceHandler {
    pool: PgPool,
    transforms: Arc<Transforms>,
    names: Arc<[String]>,
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
    /// A handler writing through `pool` with the given windows.
    pub fn new(pool: PgPool, transforms: Transforms) -> Self {
        let names = transforms.names().into();
        PriceHandler { pool, transforms: Arc::new(transforms), names }
    }

    /// Stores one batch in one transaction.
    pub async fn commit(&self, batch: &[Delivery<PricePoint>]) -> Result<(), sea_orm::sqlx::Error> {
        // 1. last writer wins inside the batch
        let mut latest: HashMap<(&str, DateTime<Utc>), Incoming> = HashMap::with_capacity(batch.len());
        for d in batch {
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

        let mut tx = self.pool.begin().await?;
        // 2. lock
        lock::acquire(&mut tx, "price", by_instrument.keys().copied()).await?;
        // 3. load
        let starts: Vec<(&str, DateTime<Utc>)> = by_instrument.iter().map(|(k, v)| (*k, v[0].ts)).collect();
        let mut stored = sql::load_points(&mut tx, &starts, self.transforms.window(), &self.names).await?;
        // 4-5. merge and recompute
        let mut writes = sql::Writes::default();
        let mut changed_from: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
        for (instrument, incoming) in &by_instrument {
            let (window, tail) = stored.remove(*instrument).unwrap_or_default();
            if let Some(outcome) = merge(&self.transforms, window, tail, incoming) {
                if let Some(t) = outcome.changed_from {
                    changed_from.insert(instrument, t);
                }
                writes.push(instrument, &outcome.rows, outcome.added, &self.names);
            }
        }
        sql::write_points(&mut tx, &writes).await?;
        // 6. indices
        if !changed_from.is_empty() {
            let indices = sql::indices_of(&mut tx, changed_from.keys().copied()).await?;
            if !indices.is_empty() {
                lock::acquire(&mut tx, "index", indices.iter().map(String::as_str)).await?;
                for def in sql::index_defs(&mut tx, &indices).await? {
                    let from = def.weights.iter().filter_map(|(i, _)| changed_from.get(i.as_str())).min().copied();
                    recompute_index(&mut tx, &def, from).await?;
                }
            }
        }
        tx.commit().await
    }
}

/// What a batch does to one instrument.
struct Merged {
    /// The rows to upsert, ascending.
    rows: Vec<Row>,
    /// Points that did not exist before.
    added: Vec<DateTime<Utc>>,
    /// The first point whose price changed or appeared, if any.
    changed_from: Option<DateTime<Utc>>,
}

/// Merges incoming points into the stored tail and recomputes from the first change.
///
/// `window` is the stored points before the first incoming ts (ascending), `tail` the stored points from
/// it on. Returns `None` when nothing changes at all.
fn merge(t: &Transforms, window: Vec<Row>, tail: Vec<Row>, incoming: &[Incoming]) -> Option<Merged> {
    let mut merged: Vec<Row> = window;
    merged.reserve(tail.len() + incoming.len());
    let mut stored = tail.into_iter().peekable();
    let mut first_change: Option<usize> = None;
    let mut seq_only = Vec::new();
    let mut added = Vec::new();
    for inc in incoming {
        while let Some(s) = stored.next_if(|s| s.ts < inc.ts) {
            merged.push(s);
        }
        match stored.next_if(|s| s.ts == inc.ts) {
            // A redelivery, or an older message than the one stored: no change.
            Some(s) if s.seq >= inc.seq => merged.push(s),
            Some(mut s) => {
                s.seq = inc.seq;
                if s.point.price == inc.price && s.volume == inc.volume {
                    seq_only.push(merged.len());
                } else {
                    first_change.get_or_insert(merged.len());
                    s.point = Point::raw(inc.price);
                    s.volume = inc.volume;
                }
                merged.push(s);
            }
            None => {
                first_change.get_or_insert(merged.len());
                added.push(inc.ts);
                merged.push(Row { ts: inc.ts, volume: inc.volume, seq: inc.seq, point: Point::raw(inc.price) });
            }
        }
    }
    merged.extend(stored);
    let mut rows: Vec<Row> =
        seq_only.iter().filter(|&&i| first_change.is_none_or(|f| i < f)).map(|&i| merged[i].clone()).collect();
    let mut changed_from = None;
    if let Some(from) = first_change {
        let mut points: Vec<Point> =
            merged.iter_mut().map(|r| std::mem::replace(&mut r.point, Point::raw(0.0))).collect();
        series::recompute(t, &mut points, from);
        for (r, p) in merged.iter_mut().zip(points) {
            r.point = p;
        }
        changed_from = Some(merged[from].ts);
        rows.extend(merged.drain(from..));
    }
    if rows.is_empty() {
        return None;
    }
    Some(Merged { rows, added, changed_from })
}

impl BatchHandler for PriceHandler {
    type Event = PricePoint;

    fn decode(
        &self,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
        received: Ts,
    ) -> Result<PricePoint, Rejection> {
        PricePoint::decode(subject, headers, payload, received)
    }

    async fn handle(&self, batch: &[Delivery<PricePoint>]) -> Result<(), HandleError> {
        let span = tracing::info_span!(
            "db",
            otel.kind = "client",
            db.system = "postgresql",
            db.operation = "price batch",
            events = batch.len()
        );
        self.commit(batch)
            .instrument(span)
            .await
            .map_err(|e| HandleError(anyhow::Error::new(e).context("storing a price batch")))
    }
}
