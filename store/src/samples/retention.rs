//! Metric retention: the sweep that deletes expired rows, and the watermark it leaves (a `settings` row):
//! the time before which raw samples may be gone.
//!
//! The processor takes a sample only if the raw samples of its smallest bucket are all still kept, so that
//! recomputing the bucket never starts from a partly deleted set. Its own retention tells it where the
//! sweep cuts today; the watermark tells it where a sweep once cut, under a shorter `metrics.raw_retention`
//! (raised since) or on a replica configured with a shorter one.

use crate::{RollupConfig, settings};
use chrono::{DateTime, Duration, Utc};
use sea_orm::sqlx::{self, PgPool};

/// The `settings` key of the watermark, in seconds since the epoch.
const SWEPT_BEFORE_KEY: &str = "metric_swept_before";

/// How long past their retention raw samples are kept. The processor takes a sample only if its smallest
/// bucket starts a full bucket inside the retention, as of its decoding; the sample's transaction may
/// commit later (waiting behind its host, or on a lock a dead peer held until PostgreSQL ended its
/// session), and another replica's clock may run ahead. Deleted at the retention itself, a bucket's raw
/// samples could go between the decoding and the commit, and the bucket be recomputed from the rest.
pub const SWEEP_MARGIN: std::time::Duration = std::time::Duration::from_secs(3600);

/// What one [`sweep`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Raw samples deleted.
    pub samples: u64,
    /// Rollup buckets deleted, every width.
    pub buckets: u64,
    /// The watermark after it: raw samples before this time may be gone (this sweep's cutoff, or an
    /// earlier sweep's if that cut later).
    pub before: DateTime<Utc>,
}

/// Deletes raw samples past their retention and [`SWEEP_MARGIN`], and rollups past their retention, as of
/// `now`, and raises the watermark to the raw samples' cutoff in the same transaction.
///
/// Series by series (through `metric_series`), so each delete is a primary-key range scan.
pub async fn sweep(pool: &PgPool, cfg: &RollupConfig, now: DateTime<Utc>) -> Result<Swept, sqlx::Error> {
    let raw_cutoff = now - Duration::seconds(cfg.raw_retention.secs() + SWEEP_MARGIN.as_secs() as i64);
    let mut tx = pool.begin().await?;
    let before = settings::raise(&mut tx, SWEPT_BEFORE_KEY, raw_cutoff.timestamp()).await?;
    let samples = sqlx::query(
        "DELETE FROM metric_samples m USING metric_series s
          WHERE m.host = s.host AND m.field = s.field AND s.first_ts < $1 AND m.ts < $1",
    )
    .bind(raw_cutoff)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let mut buckets = 0;
    for r in &cfg.rollups {
        let cutoff = now - Duration::seconds(r.retention.secs());
        buckets += sqlx::query(
            "DELETE FROM metric_rollups m USING metric_series s
              WHERE m.host = s.host AND m.field = s.field AND s.first_ts < $2 AND m.width = $1 AND m.start < $2",
        )
        .bind(r.width.secs() as i32)
        .bind(cutoff)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    tx.commit().await?;
    let before = DateTime::from_timestamp(before, 0).unwrap_or(raw_cutoff);
    Ok(Swept { samples, buckets, before })
}

/// The watermark: raw samples before this time may have been deleted. `None` before the first sweep.
pub async fn swept_before(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let secs = settings::get(pool, SWEPT_BEFORE_KEY).await?.and_then(|v| v.as_i64());
    Ok(secs.and_then(|s| DateTime::from_timestamp(s, 0)))
}
