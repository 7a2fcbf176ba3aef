//! Stored derived values against the configured windows.
//!
//! When the windows differ from the ones the stored values were computed with, every series is
//! recomputed from scratch, in transactions of at most [`lock::MAX_SERIES_PER_PART`] series (one holding
//! them all would not fit PostgreSQL's lock table past some thousands of series), each reading about
//! [`CHUNK_PRICES`] points at a time (memory does not grow with the history). Each transaction records
//! how far it got, under the `settings` lock that every step takes, so a processor stopped half-way
//! resumes where it was, and processors starting together share the work instead of repeating it. A
//! processor configured with other windows while a recompute is under way (its last part less than
//! [`TAKEOVER_AFTER`] ago) refuses to start: two recomputes for different windows would undo each other's
//! parts for ever.

use super::series::{Transforms, recompute};
use super::store::{self, Row, Writes};
use crate::lock;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::time::{Duration, Instant};
use tributary_store::sqlx::{self, PgPool};

/// About how many points one step of the recompute reads, over all its series.
const CHUNK_PRICES: usize = 65_536;

/// How long after its last part a recompute for other windows counts as abandoned (its processor
/// stopped), and a processor with these windows starts over instead of refusing.
pub const TAKEOVER_AFTER: chrono::TimeDelta = chrono::TimeDelta::minutes(2);

/// Why the stored derived values could not be made to match the windows.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Another processor is recomputing every series for other windows.
    #[error(
        "processor.prices: another processor is recomputing every series for the windows {theirs} (its last \
         part {secs} s ago), these are {ours}: give every processor the same windows"
    )]
    Contested {
        /// The other recompute's windows.
        theirs: Value,
        /// These windows.
        ours: Value,
        /// Seconds since its last part.
        secs: i64,
    },
    /// PostgreSQL failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Makes stored derived values match the windows `t`. Returns how many series this call recomputed.
pub async fn reconcile_transforms(pool: &PgPool, t: &Transforms) -> Result<usize, ReconcileError> {
    let names = t.names();
    let wanted = Value::from(names.clone());
    let (mut done, mut total, mut logged) = (0, None, Instant::now());
    loop {
        let mut tx = lock::begin(pool, lock::WINDOWS.0, [lock::WINDOWS.1]).await?;
        if store::stored_windows(&mut tx).await?.as_ref() == Some(&wanted) {
            tx.commit().await?;
            return Ok(done);
        }
        if total.is_none() {
            total = Some(store::series_count(&mut tx).await?);
        }
        let after = match store::progress(&mut tx).await? {
            Some(p) if p.windows == wanted => Some(p.through),
            Some(p) if Utc::now() - p.at < TAKEOVER_AFTER => {
                let secs = (Utc::now() - p.at).num_seconds();
                return Err(ReconcileError::Contested { theirs: p.windows, ours: wanted, secs });
            }
            // None under way, or an abandoned one for other windows: from the first series.
            _ => None,
        };
        let part = store::instruments_after(&mut tx, after.as_deref(), lock::MAX_SERIES_PER_PART).await?;
        let Some(last) = part.last() else {
            store::store_windows(&mut tx, &wanted).await?;
            tx.commit().await?;
            return Ok(done);
        };
        lock::acquire(&mut tx, "price", part.iter().map(String::as_str)).await?;
        recompute_series(&mut tx, t, &names, &part).await?;
        store::store_progress(&mut tx, &wanted, last).await?;
        tx.commit().await?;
        done += part.len();
        if logged.elapsed() >= Duration::from_secs(5) {
            logged = Instant::now();
            tracing::info!(done, total, windows = ?names, "recomputing every series for new derived windows");
        }
    }
}

/// Recomputes `instruments` from their first points, writing as it goes; the caller holds their locks.
async fn recompute_series(
    tx: &mut tributary_store::Tx,
    t: &Transforms,
    names: &[String],
    instruments: &[String],
) -> Result<(), sqlx::Error> {
    // Per series still being read: where its next chunk starts and the computed points before it.
    let mut todo: Vec<(&str, Option<DateTime<Utc>>, Vec<Row>)> =
        instruments.iter().map(|i| (i.as_str(), None, Vec::new())).collect();
    while !todo.is_empty() {
        let per = (CHUNK_PRICES / todo.len()).max(1);
        let starts: Vec<_> = todo.iter().map(|(i, after, _)| (*i, *after)).collect();
        let mut chunks = store::raw_points(tx, &starts, per).await?;
        let mut writes = Writes::new(names);
        let mut next = Vec::new();
        for (instrument, _, window) in todo {
            let mut chunk = chunks.remove(instrument).unwrap_or_default();
            let full = chunk.len() >= per;
            let mut points: Vec<_> = window.iter().chain(&chunk).map(|r| r.point.clone()).collect();
            recompute(t, &mut points, window.len());
            for (r, p) in chunk.iter_mut().zip(points.drain(window.len()..)) {
                r.point = p;
            }
            if full {
                // The next chunk's recompute reads the last `window` points before it.
                let mut carried = window;
                carried.extend_from_slice(&chunk[chunk.len().saturating_sub(t.window())..]);
                carried.drain(..carried.len().saturating_sub(t.window()));
                next.push((instrument, chunk.last().map(|r| r.ts), carried));
            }
            // Every series is written at least once, which bumps its version (fencing cached tails).
            writes.push(instrument, chunk, Vec::new());
        }
        store::write_batch(tx, writes, &[]).await?;
        todo = next;
    }
    Ok(())
}
