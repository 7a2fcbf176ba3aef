//! Server metrics: raw samples, their rollups, each host's latest sample; one transaction per batch.
//!
//! Per batch ([`MetricHandler::commit`]):
//! 1. keep, per (host, field, ts), the value with the highest stream sequence, and per host the newest
//!    message (greatest ts, then sequence);
//! 2. lock the batch's hosts (see [`crate::lock`]);
//! 3. upsert the samples (last writer wins by sequence); the rows that changed name the buckets to redo;
//! 4. recompute those buckets of the smallest width from their raw samples, then the wider buckets that
//!    hold them from the smaller buckets ([`rollup`]): a late or corrected sample redoes only its buckets;
//! 5. update the series list and each host's latest sample; commit;
//! 6. announce each host's newest sample of the batch on `live.metric.<host>` (core NATS) for live readers.
//!
//! Retention: samples older than `metrics.raw_retention` are refused (dead-lettered as `expired`) so that
//! a bucket is never recomputed from a partly deleted set; [`sweep`] deletes expired rows.

pub mod rollup;
mod sql;

use crate::lock;
use chrono::{DateTime, Utc};
use sea_orm::sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tracing::Instrument;
use tributary_broker::metrics::{LIVE_PREFIX, LiveSample, MetricSample};
use tributary_broker::{BatchHandler, Delivery, HandleError, Rejection, ts::Ts};
use tributary_store::metrics::{MetricsConfig, Rollup as Width};

pub use sql::sweep;

/// Consumes `metric.<host>`.
#[derive(Clone)]
pub struct MetricHandler {
    pool: PgPool,
    /// Rollup widths, ascending (validated).
    widths: Arc<[Width]>,
    raw_retention: i64,
    live: Option<async_nats::Client>,
}

impl MetricHandler {
    /// A handler writing through `pool`, announcing commits on `live` when given.
    pub fn new(pool: PgPool, cfg: &MetricsConfig, live: Option<async_nats::Client>) -> Result<Self, String> {
        let widths = cfg.validate()?;
        Ok(MetricHandler { pool, widths: widths.into(), raw_retention: cfg.raw_retention.secs(), live })
    }

    /// Stores a batch in one transaction and returns each host's newest sample in it.
    pub async fn commit<D: std::borrow::Borrow<Delivery<MetricSample>>>(
        &self,
        batch: &[D],
    ) -> Result<Vec<LiveSample>, sea_orm::sqlx::Error> {
        let mut values: BTreeMap<(&str, &str, DateTime<Utc>), (f64, i64)> = BTreeMap::new();
        let mut newest: BTreeMap<&str, (&MetricSample, i64)> = BTreeMap::new();
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
        let mut tx = self.pool.begin().await?;
        lock::acquire(&mut tx, "metric", newest.keys().copied()).await?;
        let changed = sql::upsert_samples(&mut tx, &values).await?;
        let base = self.widths[0].width.secs();
        let touched: BTreeSet<(String, String, DateTime<Utc>)> =
            changed.iter().map(|(h, f, ts)| (h.clone(), f.clone(), rollup::bucket(*ts, base))).collect();
        let samples = sql::load_samples(&mut tx, &touched, base).await?;
        let rollups: Vec<_> =
            samples.into_iter().map(|((h, f, start), s)| ((h, f), rollup::Rollup::of_samples(start, &s))).collect();
        sql::upsert_rollups(&mut tx, base, &rollups).await?;
        for w in &self.widths[1..] {
            let width = w.width.secs();
            let wide: BTreeSet<_> =
                touched.iter().map(|(h, f, t)| (h.clone(), f.clone(), rollup::bucket(*t, width))).collect();
            let parts = sql::load_rollups(&mut tx, &wide, base, width).await?;
            let merged: Vec<_> =
                parts.into_iter().map(|((h, f, start), p)| ((h, f), rollup::Rollup::merge(start, &p))).collect();
            sql::upsert_rollups(&mut tx, width, &merged).await?;
        }
        sql::upsert_series(&mut tx, &changed).await?;
        let latest: Vec<(LiveSample, i64)> = newest
            .into_values()
            .map(|(s, seq)| (LiveSample { host: s.host.clone(), ts: s.ts, fields: s.fields.clone() }, seq))
            .collect();
        sql::upsert_latest(&mut tx, &latest).await?;
        tx.commit().await?;
        Ok(latest.into_iter().map(|(l, _)| l).collect())
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

impl BatchHandler for MetricHandler {
    type Event = MetricSample;

    fn decode(
        &self,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
        received: Ts,
    ) -> Result<MetricSample, Rejection> {
        let s = MetricSample::decode(subject, headers, payload, received)?;
        // Kept only if its smallest bucket starts a full bucket inside the raw retention, so the sweep
        // (which runs on the same clock) cannot have deleted part of the bucket it is about to recompute.
        let base = self.widths[0].width.secs();
        let oldest = Utc::now().timestamp() - self.raw_retention + base;
        if rollup::bucket(s.ts.0, base).timestamp() < oldest {
            return Err(Rejection::expired(format!(
                "sample at {} is older than the raw retention ({}s) allows",
                s.ts, self.raw_retention
            )));
        }
        Ok(s)
    }

    async fn handle(&self, batch: &[Delivery<MetricSample>]) -> Result<(), HandleError> {
        let span =
            tracing::info_span!("db", otel.kind = "client", db.system = "postgresql", db.operation = "metric batch");
        let latest = self
            .commit(batch)
            .instrument(span)
            .await
            .map_err(|e| HandleError(anyhow::Error::new(e).context("storing metric samples")))?;
        self.announce(latest).await;
        Ok(())
    }
}
