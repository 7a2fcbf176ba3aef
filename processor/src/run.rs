//! The consumers of a processor role, each on its own task, all stopped by one token.

use crate::fleet::FleetHandler;
use crate::indices::IndexHandler;
use crate::ports::PortHandler;
use crate::prices::{PriceHandler, reconcile_transforms, series::Transforms};
use crate::samples::{SampleHandler, sweep};
use crate::surveys::SurveyHandler;
use anyhow::Context;
use async_nats::jetstream;
use sea_orm::sqlx::PgPool;
use serde::Deserialize;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tributary_broker::BatchHandler;
use tributary_broker::consume::{self, ConsumerSpec, Settled, SettledHook};
use tributary_broker::{Kind, StreamsConfig};
use tributary_store::RollupConfig;

/// How a processor consumes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// The most events per transaction.
    pub batch: usize,
    /// Seconds JetStream waits for an ack before redelivering (a crashed processor's batch comes back
    /// after this).
    pub ack_wait_secs: u64,
    /// The most events delivered and not yet acked, per consumer.
    pub max_ack_pending: i64,
    /// The prefix of durable consumer names; replicas with the same name share the work.
    pub durable_prefix: String,
    /// How many price series' tails (their last window of points) to keep in memory. A cached tail
    /// saves reading the window on every append; memory is bounded by this times the window.
    pub tail_cache_series: usize,
    /// How many transactions (and connections) one price or metric batch is split over, by series.
    pub db_parallelism: usize,
    /// Partitions of `price.*` and `metric.*`, made by the NATS server's `partition()` subject mapping
    /// (`broker/nats/`); it must equal the mapping's count. 1: no partitions, every replica shares one
    /// consumer per kind.
    pub partitions: u32,
    /// How many processor replicas split the partitions.
    pub replicas: u32,
    /// This replica's index (0 … replicas − 1; a StatefulSet ordinal): it consumes the partitions `p` with
    /// `p % replicas == replica`. Unpartitioned kinds are shared by every replica.
    pub replica: u32,
    /// How many times a message may fail alone (its batch bisected until it stands alone) before it is
    /// dead-lettered as `processing_failed`. Transient failures (the database down or restarting, a lost
    /// connection) never count: they back off and retry.
    pub max_failures: u32,
    /// On a shutdown signal, how long the batches in hand get to commit before the process exits without
    /// acking them (they are delivered again, to this or another replica).
    pub shutdown_grace_secs: u64,
    /// The derived windows of price series. Every replica must use the same ones.
    pub prices: Transforms,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            batch: 8000,
            ack_wait_secs: 30,
            max_ack_pending: 20_000,
            durable_prefix: "processor".into(),
            tail_cache_series: 100_000,
            db_parallelism: 2,
            partitions: 1,
            replicas: 1,
            replica: 0,
            max_failures: 5,
            shutdown_grace_secs: 20,
            prices: Transforms::default(),
        }
    }
}

impl ProcessorConfig {
    /// The consumers this replica runs for `kind`: its own partitions, or the kind's shared consumer.
    fn specs(
        &self,
        streams: &StreamsConfig,
        kind: Kind,
        label: &'static str,
        settled: &SettledHook,
    ) -> Vec<ConsumerSpec> {
        consume::processor_consumers(&self.durable_prefix, kind, self.partitions)
            .into_iter()
            .filter(|(_, _, p)| p.is_none_or(|p| p % self.replicas.max(1) == self.replica))
            .map(|(durable, filter_subject, _)| ConsumerSpec {
                stream: streams.stream_name(kind),
                durable,
                filter_subject,
                batch: self.batch.max(1),
                ack_wait: Duration::from_secs(self.ack_wait_secs.max(1)),
                max_ack_pending: self.max_ack_pending,
                label,
                max_failures: self.max_failures.max(1),
                // One lane more than a batch's transactions: a slow series never holds every lane.
                lanes: self.db_parallelism.max(1) + 1,
                transient: crate::transient,
                settled: Some(settled.clone()),
            })
            .collect()
    }

    /// Checks the partitioning.
    pub fn validate(&self) -> Result<(), String> {
        if self.partitions == 0 || self.replicas == 0 {
            return Err("processor.partitions and processor.replicas must be at least 1".into());
        }
        if self.replica >= self.replicas {
            return Err(format!(
                "processor.replica must be below processor.replicas ({}), got {}",
                self.replicas, self.replica
            ));
        }
        Ok(())
    }
}

/// Runs every consumer until `shutdown`; returns the first failure.
pub async fn run(
    js: jetstream::Context,
    pool: PgPool,
    cfg: ProcessorConfig,
    metrics: RollupConfig,
    streams: StreamsConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let samples = SampleHandler::new(pool.clone(), &metrics, cfg.db_parallelism, Some(js.client()))
        .map_err(anyhow::Error::msg)
        .context("metrics")?;
    let recomputed = reconcile_transforms(&pool, &cfg.prices).await.context("reconciling derived windows")?;
    if recomputed > 0 {
        tracing::info!(series = recomputed, windows = ?cfg.prices.names(), "derived windows changed: recomputed every series");
    }
    let progress = upload_progress(js.client());
    let mut tasks = tokio::task::JoinSet::new();
    fn spawn<H: BatchHandler + Clone>(
        tasks: &mut tokio::task::JoinSet<Result<(), consume::ConsumeError>>,
        js: &jetstream::Context,
        specs: Vec<ConsumerSpec>,
        handler: H,
        shutdown: &CancellationToken,
    ) {
        for spec in specs {
            tasks.spawn(consume::run(js.clone(), spec, handler.clone(), shutdown.clone()));
        }
    }
    let specs = |kind, name| cfg.specs(&streams, kind, name, &progress);
    let prices = PriceHandler::new(pool.clone(), cfg.prices.clone(), cfg.tail_cache_series, cfg.db_parallelism);
    spawn(&mut tasks, &js, specs(Kind::Price, "prices"), prices, &shutdown);
    spawn(&mut tasks, &js, specs(Kind::Index, "indices"), IndexHandler::new(pool.clone()), &shutdown);
    spawn(&mut tasks, &js, specs(Kind::Port, "ports"), PortHandler::new(pool.clone()), &shutdown);
    spawn(&mut tasks, &js, specs(Kind::Fleet, "fleet"), FleetHandler::new(pool.clone()), &shutdown);
    spawn(&mut tasks, &js, specs(Kind::Survey, "surveys"), SurveyHandler::new(pool.clone()), &shutdown);
    spawn(&mut tasks, &js, specs(Kind::Sample, "metrics"), samples, &shutdown);
    tasks.spawn(sweep_until(pool, metrics, shutdown.clone()));
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shutdown.cancel();
                return Err(e).context("consumer stopped");
            }
            Err(e) => {
                shutdown.cancel();
                return Err(e).context("consumer task panicked");
            }
        }
    }
    Ok(())
}

/// Applies metric retention every `sweep_interval_secs` until `shutdown`. A failed sweep is logged and
/// tried again next time (every replica sweeps; deleting twice is harmless).
async fn sweep_until(
    pool: PgPool,
    cfg: RollupConfig,
    shutdown: CancellationToken,
) -> Result<(), tributary_broker::consume::ConsumeError> {
    let mut every = tokio::time::interval(Duration::from_secs(cfg.sweep_interval_secs.max(1)));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = every.tick() => {}
        }
        match sweep(&pool, &cfg, chrono::Utc::now()).await {
            Ok((0, 0)) => {}
            Ok((samples, buckets)) => tracing::info!(samples, buckets, "metric retention applied"),
            Err(e) => tracing::warn!(error = %e, "metric retention sweep failed; retrying later"),
        }
    }
}

/// Reports, after each commit and each set of stored dead letters, how many of an upload's messages they
/// covered (`tributary_broker::uploads`), for the API's upload status.
fn upload_progress(client: async_nats::Client) -> SettledHook {
    SettledHook(std::sync::Arc::new(move |settled, messages| {
        let counts = tributary_broker::uploads::count(messages.iter().map(|m| m.headers.as_ref()));
        if counts.is_empty() {
            return;
        }
        let what = match settled {
            Settled::Committed => "committed",
            Settled::DeadLettered => "dead_letters",
        };
        let client = client.clone();
        tokio::spawn(async move { tributary_broker::uploads::report(&client, what, counts).await });
    }))
}
