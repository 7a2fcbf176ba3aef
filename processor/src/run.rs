//! The consumers of a processor role, each on its own task, all stopped by one token.

use crate::fleet::FleetHandler;
use crate::group;
use crate::indices::IndexHandler;
use crate::ports::PortHandler;
use crate::prices::{InForce, PriceHandler, reconcile_transforms, series::Transforms};
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
    /// Partitions of `price.*` and `metric.*`: the streams store `price.ACME` as `price.p.<n>.ACME`
    /// (their subject transform, made by every role at startup, so every role must see the same count).
    /// With more than one, the processor processes share the partitions evenly, each partition consumed
    /// by one process at a time (`crate::group`). 1: no partitions, every process shares one consumer
    /// per kind. The other kinds are always shared by every process.
    pub partitions: u32,
    /// How long a processor that stopped (killed, hung, cut off) keeps its partitions before the others
    /// take them over, in seconds: its record in the group and its pins last this long.
    pub takeover_secs: u64,
    /// How many times a message may fail alone (its batch bisected until it stands alone) before it is
    /// dead-lettered as `processing_failed`. Transient failures (the database down or restarting, a lost
    /// connection) never count: they back off and retry.
    pub max_failures: u32,
    /// On a shutdown signal, how long the batches in hand get to commit before the process exits without
    /// acking them (they are delivered again, to this or another replica).
    pub shutdown_grace_secs: u64,
    /// The most (driver, shipment) pairs the fleet plan may span, an empty side counting as one: its scores
    /// take 8 bytes a pair and the optimal assignment about min² × max steps (1,000 × 1,000: under a
    /// second here). A driver or shipment that would take the fleet past it is dead-lettered with the
    /// sizes (delete others, or raise this, then replay it); without a bound a large fleet took the
    /// processor's memory.
    pub fleet_max_pairs: u64,
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
            takeover_secs: 5,
            max_failures: 5,
            shutdown_grace_secs: 20,
            fleet_max_pairs: 4_000_000,
            prices: Transforms::default(),
        }
    }
}

impl ProcessorConfig {
    /// The consumers of `kind`: one per partition (pinned: one process at a time) when the kind is
    /// partitioned, else the one every process shares.
    /// `leftovers` are partitions of a larger count than now that still hold messages (see
    /// [`leftover_partitions`]): they are consumed too, until the processors restart.
    fn specs(
        &self,
        streams: &StreamsConfig,
        kind: Kind,
        label: &'static str,
        settled: &SettledHook,
        leftovers: &[u32],
    ) -> Vec<(ConsumerSpec, Option<u32>)> {
        let leftovers = leftovers.iter().map(|p| consume::partition_consumer(&self.durable_prefix, kind, *p));
        consume::processor_consumers(&self.durable_prefix, kind, self.partitions)
            .into_iter()
            .chain(leftovers)
            .map(|(durable, filter_subject, partition)| {
                let spec = ConsumerSpec {
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
                    transient: crate::failure::transient,
                    lasting: crate::failure::lasting,
                    own: crate::failure::own,
                    settled: Some(settled.clone()),
                    pinned: partition.map(|_| self.takeover()),
                };
                (spec, partition)
            })
            .collect()
    }

    /// How long a stopped processor keeps its partitions.
    pub fn takeover(&self) -> Duration {
        Duration::from_secs(self.takeover_secs.max(1))
    }

    /// Checks the partitioning.
    pub fn validate(&self) -> Result<(), String> {
        if self.partitions == 0 {
            return Err("processor.partitions must be at least 1".into());
        }
        if self.takeover_secs == 0 {
            return Err("processor.takeover_secs must be at least 1".into());
        }
        if self.fleet_max_pairs == 0 {
            return Err("processor.fleet_max_pairs must be at least 1".into());
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
    samples.check_base_width().await.context("checking the rollup widths")?;
    samples.read_swept_before().await.context("reading how far the metric retention swept")?;
    let recomputed = reconcile_transforms(&pool, &cfg.prices).await.context("reconciling derived windows")?;
    if recomputed > 0 {
        tracing::info!(series = recomputed, windows = ?cfg.prices.names(), "derived windows changed: recomputed every series");
    }
    let progress = upload_progress(js.client());
    let mut tasks = tokio::task::JoinSet::new();
    let mut partitions = Vec::new();
    // Partitions of a larger, earlier count (with one partition, the whole-stream consumer reads them).
    let mut leftovers = std::collections::HashMap::new();
    for kind in Kind::ALL.into_iter().filter(|k| k.partitioned() && cfg.partitions > 1) {
        let found =
            leftover_partitions(&js, &streams.stream_name(kind), &cfg.durable_prefix, kind, cfg.partitions).await;
        if !found.is_empty() {
            tracing::warn!(%kind, partitions = ?found, now = cfg.partitions, "partitions of a larger count still hold messages: consuming them too");
        }
        leftovers.insert(kind, found);
    }
    // A kind's shared consumer runs here, and so do the leftover partitions this process found; the
    // partitions of the current count go to the group. (Leftovers in the group made the processes that
    // found some and those started after they drained deal different lists: a current partition could
    // fall to no one. Pinned, a leftover is consumed by one of the processes that found it at a time.)
    let mut spawn = |kind: Kind, label: &'static str, start: group::Start| {
        let leftovers = leftovers.get(&kind).map(Vec::as_slice).unwrap_or_default();
        for (spec, partition) in cfg.specs(&streams, kind, label, &progress, leftovers) {
            match partition {
                Some(number) if number < cfg.partitions => {
                    partitions.push(group::Partition { spec, kind: kind.prefix(), number, start: start.clone() })
                }
                _ => {
                    tasks.spawn(start(spec, shutdown.clone()));
                }
            }
        }
    };
    let prices = PriceHandler::new(pool.clone(), cfg.prices.clone(), cfg.tail_cache_series, cfg.db_parallelism);
    let in_force = prices.in_force().clone();
    spawn(Kind::Price, "prices", while_in_force(starter(&js, prices), in_force.clone()));
    spawn(Kind::Index, "indices", starter(&js, IndexHandler::new(pool.clone())));
    spawn(Kind::Port, "ports", starter(&js, PortHandler::new(pool.clone())));
    spawn(Kind::Fleet, "fleet", starter(&js, FleetHandler::new(pool.clone(), cfg.fleet_max_pairs)));
    spawn(Kind::Survey, "surveys", starter(&js, SurveyHandler::new(pool.clone())));
    spawn(Kind::Sample, "metrics", starter(&js, samples.clone()));
    let recheck = in_force.clone().recheck(shutdown.clone());
    tasks.spawn(async move {
        recheck.await;
        Ok(())
    });
    if !partitions.is_empty() {
        tasks.spawn(group::run(
            js.clone(),
            cfg.durable_prefix.clone(),
            partitions,
            aside_from_prices(in_force),
            cfg.takeover(),
            streams.replicas,
            shutdown.clone(),
        ));
    }
    tasks.spawn(sweep_until(pool, metrics, samples, shutdown.clone()));
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

/// The partitions `p >= partitions` of `kind` whose durable consumers exist and still hold messages
/// (have not acked their subjects up to the stream's last message: [`consume::acked_up_to`]):
/// `processor.partitions` was lowered, and what was stored under the larger count must still be
/// processed. Listed once, at startup; none when the stream or its consumers cannot be read.
async fn leftover_partitions(
    js: &jetstream::Context,
    stream: &str,
    prefix: &str,
    kind: Kind,
    partitions: u32,
) -> Vec<u32> {
    use futures::StreamExt;
    let Ok(stream) = js.get_stream(stream).await else { return Vec::new() };
    let last = stream.cached_info().state.last_sequence;
    let name_prefix = format!("{prefix}-{}-p", kind.prefix());
    let names: Vec<String> = stream.consumer_names().filter_map(|n| async move { n.ok() }).collect().await;
    let mut found = Vec::new();
    for name in names {
        let Some(p) = name.strip_prefix(&name_prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if p < partitions {
            continue;
        }
        let Ok(mut consumer) = stream.get_consumer::<jetstream::consumer::pull::Config>(&name).await else { continue };
        let Ok(info) = consumer.info().await else { continue };
        let (_, filter, _) = consume::partition_consumer(prefix, kind, p);
        // Unsure (the stream could not say): consumed, which costs an idle loop at worst.
        let floor = info.ack_floor.stream_sequence;
        if !consume::acked_up_to(&stream, &filter, floor, last).await.is_ok_and(|through| through >= last) {
            found.push(p);
        }
    }
    found.sort_unstable();
    found
}

/// How to run a consume loop of `handler`'s kind, for a spec and a stop token.
fn starter<H: BatchHandler + Clone>(js: &jetstream::Context, handler: H) -> group::Start {
    let js = js.clone();
    std::sync::Arc::new(move |spec, stop| Box::pin(consume::run(js.clone(), spec, handler.clone(), stop)))
}

/// A price consume loop that runs only while this processor's windows are in force: it stops (finishing
/// its unit in hand, giving back what waits and releasing its pin) once a batch is refused, and starts
/// again once they are in force again ([`InForce`]).
fn while_in_force(start: group::Start, in_force: InForce) -> group::Start {
    std::sync::Arc::new(move |spec, stop| {
        let (start, in_force) = (start.clone(), in_force.clone());
        Box::pin(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = in_force.found() => {}
                }
                let stop_loop = stop.child_token();
                let mut run = start(spec.clone(), stop_loop.clone());
                tokio::select! {
                    ended = &mut run => return ended,
                    _ = in_force.lost() => {
                        tracing::info!(consumer = spec.durable, "stopping: standing aside from prices");
                        stop_loop.cancel();
                        run.await?;
                    }
                }
            }
        })
    })
}

/// What the group asks every heartbeat: prices, while this processor's windows are not in force (as
/// [`InForce::recheck`] last found: the heartbeat never waits on PostgreSQL).
fn aside_from_prices(in_force: InForce) -> group::Aside {
    std::sync::Arc::new(move || if in_force.is() { Vec::new() } else { vec![Kind::Price.prefix().to_owned()] })
}

/// Applies metric retention every `sweep_interval_secs` until `shutdown`, and tells `samples` how far raw
/// samples are gone. A failed sweep is logged and tried again next time (every replica sweeps; deleting
/// twice is harmless).
async fn sweep_until(
    pool: PgPool,
    cfg: RollupConfig,
    samples: SampleHandler,
    shutdown: CancellationToken,
) -> Result<(), tributary_broker::consume::ConsumeError> {
    let mut every = tokio::time::interval(Duration::from_secs(cfg.sweep_interval_secs.max(1)));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = every.tick() => {}
        }
        match sweep(&pool, &cfg, chrono::Utc::now()).await {
            Ok(swept) => {
                samples.swept(swept.before);
                if (swept.samples, swept.buckets) != (0, 0) {
                    tracing::info!(samples = swept.samples, buckets = swept.buckets, "metric retention applied");
                }
            }
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
