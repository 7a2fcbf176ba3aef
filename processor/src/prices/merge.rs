//! Merging a batch's incoming points into a series' stored points, one chunk at a time, and recomputing
//! until the change has died out.

use super::series::{self, Point, Transforms};
use super::{Incoming, Row};
use chrono::{DateTime, Utc};

/// What a batch does to one instrument, one chunk of its stored points at a time.
pub(super) struct Merged<'a> {
    /// The rows to write, ascending: new points, points whose values or sequence changed.
    pub(super) rows: Vec<Row>,
    /// Points that did not exist before.
    pub(super) added: Vec<DateTime<Utc>>,
    /// The first point whose price changed or appeared, if any.
    pub(super) changed_from: Option<DateTime<Utc>>,
    /// The last one.
    pub(super) changed_through: Option<DateTime<Utc>>,
    /// The last `window` points of the series after the batch, for the tail cache, when the chunk reached
    /// the series' end.
    pub(super) tail: Option<Vec<Row>>,
    /// What is left when the next stored chunk must be read too.
    pub(super) carry: Option<Carry<'a>>,
}

/// The state carried from one chunk of a series' rewrite into the next.
pub(super) struct Carry<'a> {
    /// The ts of the last point read: the next chunk starts after it.
    pub(super) after: DateTime<Utc>,
    /// The last `window` points so far, as they are now.
    pub(super) window: Vec<Row>,
    /// The incoming points after the chunk.
    pub(super) incoming: &'a [Incoming],
    /// Whether the chunk ended before the recompute settled: the next chunk is recomputed from its start.
    pub(super) unsettled: bool,
}

/// Where a carried rewrite reads its next chunk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum NextRead {
    /// The stored points after this ts: the recompute has not settled, so every one is recomputed.
    After(DateTime<Utc>),
    /// The recompute has settled at `after`, and the next incoming point is at `next`: the stored points
    /// in between are as stored, so only the window before `next` ([`Carry::window_with`]) and the chunk
    /// from it are read. (Read through, a correction deep in a long series batched with an append read
    /// every point between the two.)
    Skipping { after: DateTime<Utc>, next: DateTime<Utc> },
}

impl Carry<'_> {
    /// Where the next chunk is read from.
    pub(super) fn next_read(&self) -> NextRead {
        match (self.unsettled, self.incoming.first()) {
            (false, Some(next)) => NextRead::Skipping { after: self.after, next: next.ts },
            _ => NextRead::After(self.after),
        }
    }

    /// The window before the chunk a [`NextRead::Skipping`] reads: the carried one, then `between` (the
    /// stored points read after it), the last `size` of them.
    pub(super) fn window_with(&mut self, between: Vec<Row>, size: usize) -> Vec<Row> {
        let mut window = std::mem::take(&mut self.window);
        window.extend(between);
        window.drain(..window.len().saturating_sub(size));
        window
    }
}

/// Merges incoming points into one chunk of stored points and recomputes from the first change until the
/// rest is provably unchanged ([`series::recompute_until_settled`]).
///
/// `window` is the (at most [`Transforms::window`]) points before the chunk, ascending; `chunk` the stored
/// points after them, ascending; `complete` whether `chunk` reaches the series' end. Incoming points after
/// an incomplete chunk, and a recompute that has not settled by its end, are carried to the next chunk,
/// so memory is bounded by the chunk whatever the series' length. `unsettled`: the window differs from
/// what is stored (carried from a chunk that did not settle).
pub(super) fn merge<'a>(
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
                // Only a price derives anything: a new volume is written with its sequence, and recomputes
                // no window and no index level (it rewrote every level of an index after it).
                s.volume = inc.volume;
                if s.point.price != inc.price {
                    first_change.get_or_insert(merged.len());
                    last_change = Some(merged.len());
                    s.point = Point::raw(inc.price);
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
    let changed_through = last_change.map(|i| merged[i].ts);
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
        return Merged { rows, added, changed_from, changed_through, tail: Some(last_window(merged)), carry: None };
    }
    let carry = (!later.is_empty() || !settled).then(|| Carry {
        after: merged.last().map_or(DateTime::<Utc>::MIN_UTC, |r| r.ts),
        window: last_window(merged),
        incoming: later,
        unsettled: !settled,
    });
    Merged { rows, added, changed_from, changed_through, tail: None, carry }
}
