//! Server metrics: raw samples, their rollups, each host's latest sample; one transaction per batch.
//!
//! Per batch ([`SampleHandler::commit`]):
//! 1. keep, per (host, field, ts), the value with the highest stream sequence, and per host the newest
//!    message (greatest ts, then sequence);
//! 2. lock the batch's hosts (see [`crate::lock`]);
//! 3. upsert the samples (last writer wins by sequence); the rows that changed name the buckets to redo;
//! 4. update those buckets of the smallest width, then the wider buckets that hold them ([`rollup`]): a
//!    sample after every other of its bucket extends the stored bucket in place; a late or corrected one
//!    recomputes only its buckets, the smallest from raw samples, wider ones from the smallest;
//! 5. update the series list and each host's latest sample; commit;
//! 6. announce each host's newest sample of the batch on `live.metric.<host>` (core NATS) for live readers.
//!
//! Retention: samples older than `metrics.raw_retention` are refused (dead-lettered as `expired`) so that
//! a bucket is never recomputed from a partly deleted set; [`sweep`] deletes expired rows. So are samples
//! where a sweep once deleted raw samples under a shorter retention (raised since, or another replica's):
//! the sweep leaves its watermark in `settings`, read at start and after each sweep.
//!
//! The SQL is the store's ([`tributary_store::samples`], which owns the tables); this module keeps the
//! derivations ([`rollup`]: statistics, sketches, bucket math) and orchestrates, and `storage` converts
//! between the two (a [`Rollup`] to and from its stored row, store rows grouped into buckets).

pub mod rollup;
mod storage;

use crate::lock;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use rollup::Rollup;
use sea_orm::sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use tracing::Instrument;
use tributary_broker::samples::{LIVE_PREFIX, LiveSample, ServerSample};
use tributary_broker::{BatchHandler, Delivery, HandleError, Rejection, ts::Ts};
use tributary_store::Tx;
use tributary_store::rollups::{Rollup as Width, RollupConfig};
use tributary_store::samples::{self as store, BucketKey as Key, ChangedSample, NewLatest, NewSample, RollupRow};

/// The retention sweep: it lives with the tables, in the store; re-exported for the processor that runs it.
pub use tributary_store::samples::sweep;

/// A smallest-width bucket updated by a batch, and the values it gained if it was extended in place.
struct Part {
    key: Key,
    rollup: Rollup,
    added: Option<Vec<f64>>,
}

/// The configured smallest rollup width differs from the one the stored rollups were built with.
#[derive(Debug, thiserror::Error)]
pub enum WidthError {
    /// Every wider bucket is merged from buckets of the smallest width, so it cannot change under stored
    /// rollups (the merges failed on the stored rows, and wider buckets were rewritten from the new
    /// width's buckets only).
    #[error(
        "metrics.rollups: the smallest width is {configured} s here but {stored} s in the stored rollups; \
         keep {stored} s, or start the rollups and raw samples over (DELETE FROM metric_rollups; DELETE FROM \
         metric_samples; DELETE FROM settings WHERE key = 'metric_base_width'): a bucket missing from the \
         rollups is built from the samples that arrive, not from raw samples kept"
    )]
    Changed {
        /// Of the stored rollups, in seconds.
        stored: i64,
        /// Configured, in seconds.
        configured: i64,
    },
    /// PostgreSQL failed.
    #[error(transparent)]
    Db(#[from] sea_orm::sqlx::Error),
}

/// Consumes `metric.<host>`.
#[derive(Clone)]
pub struct SampleHandler {
    pool: PgPool,
    /// Rollup widths, ascending (validated).
    widths: Arc<[Width]>,
    raw_retention: i64,
    /// The sweep's watermark, seconds since the epoch (`i64::MIN` before the first sweep): raw samples
    /// before it may be gone.
    swept_before: Arc<AtomicI64>,
    live: Option<async_nats::Client>,
    parallelism: usize,
}

impl SampleHandler {
    /// A handler writing through `pool` with up to `parallelism` concurrent transactions per batch,
    /// announcing commits on `live` when given.
    pub fn new(
        pool: PgPool,
        cfg: &RollupConfig,
        parallelism: usize,
        live: Option<async_nats::Client>,
    ) -> Result<Self, String> {
        let widths = cfg.validate()?;
        let raw_retention = cfg.raw_retention.secs();
        let swept_before = Arc::new(AtomicI64::new(i64::MIN));
        let parallelism = parallelism.max(1);
        Ok(SampleHandler { pool, widths: widths.into(), raw_retention, swept_before, live, parallelism })
    }

    /// Reads the sweep's watermark (at start: the sweep raises it later, [`SampleHandler::swept`]).
    pub async fn read_swept_before(&self) -> Result<(), sea_orm::sqlx::Error> {
        if let Some(before) = store::swept_before(&self.pool).await? {
            self.swept(before);
        }
        Ok(())
    }

    /// Notes that raw samples before `before` may be gone (a sweep's [`store::Swept::before`]).
    pub fn swept(&self, before: DateTime<Utc>) {
        self.swept_before.fetch_max(before.timestamp(), Ordering::Relaxed);
    }

    /// Checks the smallest rollup width against the stored rollups' (any width goes while none is
    /// stored), and records it.
    pub async fn check_base_width(&self) -> Result<(), WidthError> {
        let configured = self.widths[0].width.secs();
        let mut tx = lock::begin(&self.pool, "settings", ["metric_base_width"]).await?;
        if let Some(stored) = store::stored_base_width(&mut tx).await?
            && stored != configured
        {
            return Err(WidthError::Changed { stored, configured });
        }
        store::store_base_width(&mut tx, configured).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores a batch in one transaction and returns each host's newest sample in it.
    pub async fn commit<D: std::borrow::Borrow<Delivery<ServerSample>>>(
        &self,
        batch: &[D],
    ) -> Result<Vec<LiveSample>, sea_orm::sqlx::Error> {
        let mut values: BTreeMap<(&str, &str, DateTime<Utc>), (f64, i64)> = BTreeMap::new();
        let mut newest: BTreeMap<&str, (&ServerSample, i64)> = BTreeMap::new();
        for d in batch {
            let d = d.borrow();
            let (s, seq) = (&d.event, d.seq as i64);
            for (field, v) in &s.fields {
                let e = values.entry((&s.host, field, s.ts.0)).or_insert((*v, seq));
                if seq > e.1 {
                    *e = (*v, seq);
                }
            }
            let e = newest.entry(&s.host).or_insert((s, seq));
            if (s.ts, seq) > (e.0.ts, e.1) {
                *e = (s, seq);
            }
        }
        let mut tx = lock::begin(&self.pool, "metric", newest.keys().copied()).await?;
        let samples: Vec<NewSample> = values
            .iter()
            .map(|(&(host, field, ts), &(value, seq))| NewSample { host, field, ts, value, seq })
            .collect();
        let changed = store::upsert_samples(&mut tx, &samples).await?;
        let base = self.widths[0].width.secs();
        let parts = self.rollup_base(&mut tx, &changed, base).await?;
        for w in &self.widths[1..] {
            self.rollup_wide(&mut tx, &parts, base, w.width.secs()).await?;
        }
        store::upsert_series(&mut tx, &storage::spans(&changed)).await?;
        let latest: Vec<(LiveSample, i64)> = newest
            .into_values()
            .map(|(s, seq)| (LiveSample { host: s.host.clone(), ts: s.ts, fields: s.fields.clone() }, seq))
            .collect();
        let latest_rows: Vec<NewLatest> = latest
            .iter()
            .map(|(l, seq)| NewLatest {
                host: &l.host,
                ts: l.ts.0,
                seq: *seq,
                fields: serde_json::to_string(&l.fields).unwrap_or_else(|_| "{}".into()),
            })
            .collect();
        store::upsert_latest(&mut tx, &latest_rows).await?;
        tx.commit().await?;
        Ok(latest.into_iter().map(|(l, _)| l).collect())
    }

    /// Brings the smallest-width buckets holding `changed` up to date: an append after a bucket's latest
    /// sample extends the stored bucket; anything else recomputes it from its raw samples. Returns each
    /// updated bucket with the values it gained when it was extended (`None`: recomputed).
    async fn rollup_base(
        &self,
        tx: &mut Tx,
        changed: &[ChangedSample],
        base: i64,
    ) -> Result<Vec<Part>, sea_orm::sqlx::Error> {
        let mut by_bucket: BTreeMap<Key, Vec<(DateTime<Utc>, f64, bool)>> = BTreeMap::new();
        for c in changed {
            let key = (c.host.clone(), c.field.clone(), rollup::bucket(c.ts, base));
            by_bucket.entry(key).or_default().push((c.ts, c.value, c.inserted));
        }
        let stored = storage::load_buckets(tx, &by_bucket.keys().cloned().collect(), base).await?;
        let mut parts = Vec::with_capacity(by_bucket.len());
        let mut recompute = BTreeSet::new();
        for (key, mut new) in by_bucket {
            new.sort_by_key(|c| c.0);
            let appended: Vec<(DateTime<Utc>, f64)> = new.iter().map(|c| (c.0, c.1)).collect();
            let only_inserts = new.iter().all(|c| c.2);
            let rollup = match stored.get(&key) {
                None if only_inserts => Rollup::of_samples(key.2, &appended),
                Some(r) if only_inserts && new[0].0 > r.last_ts => {
                    let mut r = r.clone();
                    r.append(&appended);
                    r
                }
                _ => {
                    recompute.insert(key);
                    continue;
                }
            };
            parts.push(Part { key, rollup, added: Some(appended.iter().map(|s| s.1).collect()) });
        }
        for (key, samples) in storage::load_samples(tx, &recompute, base).await? {
            let rollup = Rollup::of_samples(key.2, &samples);
            parts.push(Part { key, rollup, added: None });
        }
        parts.sort_by(|a, b| a.key.cmp(&b.key));
        let rows: Vec<RollupRow> =
            parts.iter().map(|p| storage::row_of(p.key.0.clone(), p.key.1.clone(), &p.rollup)).collect();
        store::upsert_rollups(tx, base, &rows).await?;
        Ok(parts)
    }

    /// Brings the `width` buckets holding the updated `parts` up to date: extended parts at or after a
    /// bucket's latest part are folded in; anything else re-merges the bucket from its stored parts.
    async fn rollup_wide(
        &self,
        tx: &mut Tx,
        parts: &[Part],
        base: i64,
        width: i64,
    ) -> Result<(), sea_orm::sqlx::Error> {
        let mut by_bucket: BTreeMap<Key, Vec<&Part>> = BTreeMap::new();
        for p in parts {
            by_bucket.entry((p.key.0.clone(), p.key.1.clone(), rollup::bucket(p.key.2, width))).or_default().push(p);
        }
        // Each bucket with where this batch's parts in it start.
        let from = by_bucket.iter().map(|(k, parts)| (k.clone(), parts[0].key.2)).collect();
        let stored = storage::load_wide_buckets(tx, &from, base, width).await?;
        let mut out = Vec::with_capacity(by_bucket.len());
        let mut remerge = BTreeSet::new();
        for (key, parts) in by_bucket {
            // parts are in start order (sorted by key).
            let extended = parts.iter().all(|p| p.added.is_some());
            // A missing bucket is re-merged from what is stored (new this batch, a width added to the
            // configuration, or one swept early), never assumed to hold only this batch's parts; so is one
            // that lacks a part stored after its last (by a processor configured without this width).
            let rollup = match stored.get(&key) {
                Some((r, before))
                    if extended && parts[0].key.2 >= r.last_ts && before.is_none_or(|b| b <= r.last_ts) =>
                {
                    let mut r = r.clone();
                    for p in &parts {
                        r.merge_step(&p.rollup, p.added.as_deref().unwrap_or_default());
                    }
                    r
                }
                _ => {
                    remerge.insert(key);
                    continue;
                }
            };
            out.push(storage::row_of(key.0, key.1, &rollup));
        }
        for ((h, f, start), parts) in storage::load_rollups(tx, &remerge, base, width).await? {
            if let Some(rollup) = Rollup::merge(start, &parts) {
                out.push(storage::row_of(h, f, &rollup));
            }
        }
        store::upsert_rollups(tx, width, &out).await
    }

    async fn announce(&self, latest: Vec<LiveSample>) {
        let Some(nats) = &self.live else { return };
        for l in latest {
            let Ok(body) = serde_json::to_vec(&l) else { continue };
            if let Err(e) = nats.publish(format!("{LIVE_PREFIX}.{}", l.host), body.into()).await {
                tracing::debug!(error = %e, "cannot announce a live sample");
            }
        }
    }
}

impl BatchHandler for SampleHandler {
    type Event = ServerSample;

    fn decode(
        &self,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
        received: Ts,
    ) -> Result<ServerSample, Rejection> {
        let s = ServerSample::decode(subject, headers, payload, received)?;
        // Kept only if its smallest bucket starts a full bucket inside the raw retention, so the sweep
        // (which runs on the same clock) cannot have deleted part of the bucket it is about to recompute.
        let base = self.widths[0].width.secs();
        let start = rollup::bucket(s.ts.0, base).timestamp();
        if start < Utc::now().timestamp() - self.raw_retention + base {
            return Err(Rejection::expired(format!(
                "sample at {} is older than the raw retention ({}s) allows",
                s.ts, self.raw_retention
            )));
        }
        // Nor where a sweep under a shorter retention deleted raw samples: those are gone for good. A
        // margin past the watermark, as a sweep of a replica still on the shorter retention may raise it
        // before this one reads it again (under one retention, the check above is always the stricter).
        let swept = self.swept_before.load(Ordering::Relaxed);
        if start < swept.saturating_add(store::SWEEP_MARGIN.as_secs() as i64) {
            let at = DateTime::from_timestamp(swept, 0).unwrap_or_default();
            return Err(Rejection::expired(format!(
                "sample at {} is where the raw samples were deleted (before {at}, under a shorter raw \
                 retention than today's): its bucket cannot be recomputed",
                s.ts
            )));
        }
        // A sample from far in the future would stay its host's latest and never be swept.
        if s.ts.0 > Utc::now() + chrono::Duration::days(1) {
            return Err(Rejection::invalid(format!(
                "sample at {} is more than a day ahead of the processor's clock",
                s.ts
            )));
        }
        Ok(s)
    }

    async fn handle(&self, batch: &[Delivery<ServerSample>]) -> Result<(), HandleError> {
        // Split by host over transactions, `parallelism` at a time (hosts are locked, so the parts never
        // overlap; a batch over many hosts makes more parts, see `lock::split`).
        let split = lock::split(batch, self.parallelism, "metric", |d| &d.event.host);
        let commits: Vec<_> = split
            .into_iter()
            .map(|part| async move {
                let span = crate::db_span("metric batch", part.len());
                self.commit(&part).instrument(span).await
            })
            .collect();
        let latest: Vec<Vec<LiveSample>> = futures::stream::iter(commits)
            .buffer_unordered(self.parallelism)
            .try_collect()
            .await
            .map_err(|e| HandleError(anyhow::Error::new(e).context("storing metric samples")))?;
        self.announce(latest.into_iter().flatten().collect()).await;
        Ok(())
    }
}
