//! Tributary's own path: the processor as a separate process (as deployed), on the backlog; then
//! freshness at a fixed offered rate, read from the processor's own latency histogram; and its peak RSS.

use super::cpu::{CpuUse, Watch};
use super::floor::{self, Floor, Quantiles};
use super::harness::{Database, Processor, REPLICAS, checksum, committed, settled};
use super::scrape::{bucket_quantile, parse_buckets, parse_phase_buckets, parse_phases, parse_value};
use super::stats::Stats;
use super::{MetricsBacklog, event, until};
use async_nats::jetstream;
use sea_orm::sqlx::{self, PgPool};
use std::time::{Duration, Instant};
use tributary::config::Config;

pub struct Freshness {
    pub achieved: f64,
    /// Publish → commit.
    pub latency: Quantiles,
    /// Mean events per batch and mean time per batch (decode, commit and acks) over the measurement:
    /// what the latency is made of.
    pub mean_batch_events: f64,
    pub mean_batch_ms: f64,
    /// Where a unit's time goes: the mean of each phase of `tributary_phase_seconds`, ms (wait, lock,
    /// load, derive, write, index, commit, ack; a batch split over parallel transactions times each).
    pub phases_ms: Phases,
    /// The 99th percentile of each phase, ms: which step the tail is made of (interpolated within the
    /// histogram's buckets, the first of which ends at 0.5 ms).
    pub phases_p99_ms: Phases,
    /// Who used the CPU meanwhile, where measured ([`super::cpu`]).
    pub cpu: Option<CpuUse>,
}

/// Mean milliseconds per phase, by phase.
pub type Phases = std::collections::BTreeMap<String, f64>;

/// What the freshness measurement reads off the processor's metrics.
struct Scrape {
    latency: Vec<(f64, f64)>,
    batches: f64,
    batch_events: f64,
    batch_seconds: f64,
    /// Phase → (sum of seconds, count).
    phases: std::collections::BTreeMap<String, (f64, f64)>,
    /// Phase → its buckets.
    phase_buckets: std::collections::BTreeMap<String, Vec<(f64, f64)>>,
}

pub struct Measured {
    pub runs: Stats,
    /// Two replicas on the same backlog.
    pub scale: ScaleOut,
    /// Two processors on the same backlog, one killed for good midway.
    pub failover: super::failover::Failover,
    pub freshness: Freshness,
    /// What JetStream alone and the baseline pipeline reach at the same offered rate.
    pub floor: Floor,
    pub peak_rss_mb: f64,
    pub db: Database,
    pub db_url: String,
}

/// The scale-out phase's result.
pub struct ScaleOut {
    /// Two processors sharing the partitions: their combined rate.
    pub runs: Stats,
    /// One processor owning every partition (a consume loop per partition).
    pub one_process: Stats,
    /// Every partitioned run stored what the unpartitioned processor stored.
    pub equal: bool,
}

/// The backlog of `args.events` (and nothing else: this runs before the freshness phase publishes more)
/// over `config.processor.partitions` partitions, by [`REPLICAS`] processors sharing them and by one
/// processor owning them all:
/// their rates, repeated; and whether each run stored exactly what the unpartitioned processor did
/// (`single`, a [`checksum`]).
pub async fn scale_out(
    config: &Config,
    args: &super::BenchArgs,
    metrics: &MetricsBacklog,
    single: &str,
) -> anyhow::Result<ScaleOut> {
    let n = args.events;
    let (mut runs, mut one_process) = (Vec::new(), Vec::new());
    let mut equal = true;
    for r in 0..args.repeats.max(1) {
        for (replicas, rates) in [(REPLICAS, &mut runs), (1, &mut one_process)] {
            let name = format!("scale{r}r{replicas}");
            let db = Database::create(&config.database.url, &name).await?;
            let started = Instant::now();
            let processors: Vec<Processor> = (0..replicas)
                .map(|_| Processor::spawn(config, &db.url, &name, config.processor.partitions))
                .collect::<anyhow::Result<_>>()?;
            let done = settled(&db.pool, n, metrics, Duration::from_secs(3600)).await;
            let secs = started.elapsed().as_secs_f64();
            drop(processors);
            let sum = match done {
                Ok(()) => checksum(&db.pool).await,
                Err(e) => Err(e),
            };
            db.drop().await;
            rates.push(n as f64 / secs);
            equal &= sum? == single;
        }
    }
    Ok(ScaleOut { runs: Stats::of(runs), one_process: Stats::of(one_process), equal })
}

/// Tributary on the backlog of `args.events` price events and `metrics`, repeated; then scale-out, freshness
/// and the floor (see the module doc).
pub async fn measure(
    config: &Config,
    args: &super::BenchArgs,
    js: &jetstream::Context,
    metrics: &MetricsBacklog,
    nats: u32,
) -> anyhow::Result<Measured> {
    let n = args.events;
    js.publish("index.bench", tributary_broker::codec::to_msgpack(&args.index())).await?.await?;
    let limit = Duration::from_secs(3600);
    let mut runs = Vec::new();
    let mut last = None;
    for r in 0..args.repeats.max(1) {
        let db = Database::create(&config.database.url, &format!("trib{r}")).await?;
        let started = Instant::now();
        let p = Processor::spawn(config, &db.url, &format!("bench{r}"), 1)?;
        settled(&db.pool, n, metrics, limit).await?;
        runs.push(n as f64 / started.elapsed().as_secs_f64());
        if let Some((old, old_db)) = last.replace((p, db)) {
            drop(old);
            old_db.drop().await;
        }
    }
    let (p, db) = last.expect("at least one run");
    // Two replicas on the same backlog, before the freshness phase adds to it.
    let single = checksum(&db.pool).await?;
    let scale = scale_out(config, args, metrics, &single).await?;
    let failover = super::failover::measure(config, js, n, metrics, &single).await?;
    // Freshness: a fixed offered rate on top of the caught-up processor.
    let watch = Watch::start(nats, Some(p.pid()));
    let mut freshness = freshness(&p, &db.pool, js, args.instruments, n, args.rate, args.freshness_secs).await?;
    freshness.cpu = watch.stop((args.rate * args.freshness_secs).round() as u64);
    let peak_rss_mb = p.peak_rss_mb();
    drop(p);
    let floor_db = Database::create(&config.database.url, "floor").await?;
    let floor =
        floor::measure(js, &floor_db.pool, "FLOOR", args.instruments, args.rate, args.freshness_secs, nats).await;
    floor_db.drop().await;
    let floor = floor?;
    let db_url = db.url.clone();
    Ok(Measured { runs: Stats::of(runs), scale, failover, freshness, floor, peak_rss_mb, db, db_url })
}

/// Publishes `rate` events/s for `secs` (event numbers from `from` on, so none is a duplicate of a stored
/// one) to a caught-up processor `p`; waits until all are committed; returns the publish→commit latency
/// quantiles of those events, from the processor's own histogram.
pub(super) async fn freshness(
    p: &Processor,
    pool: &PgPool,
    js: &jetstream::Context,
    instruments: usize,
    from: u64,
    rate: f64,
    secs: f64,
) -> anyhow::Result<Freshness> {
    // No buckets yet (nothing committed) counts as all zero.
    let before = until(Duration::from_secs(10), || async { scrape(p).await.ok() }).await?;
    let m = (rate * secs).round() as u64;
    let achieved = super::raw::publish(js, m, rate, |i| event(from + i, instruments)).await?;
    until(Duration::from_secs(3600), || async { (committed(pool).await >= from + m).then_some(()) }).await?;
    let after = scrape(p).await?;
    let batches = after.batches - before.batches;
    Ok(Freshness {
        achieved,
        latency: Quantiles::at(|q| bucket_quantile(&before.latency, &after.latency, q) * 1e3),
        mean_batch_events: (after.batch_events - before.batch_events) / batches,
        mean_batch_ms: (after.batch_seconds - before.batch_seconds) / batches * 1e3,
        phases_ms: after
            .phases
            .iter()
            .map(|(phase, (sum, count))| {
                let (s0, c0) = before.phases.get(phase).copied().unwrap_or_default();
                (phase.clone(), (sum - s0) / (count - c0).max(1.0) * 1e3)
            })
            .collect(),
        phases_p99_ms: after
            .phase_buckets
            .iter()
            .map(|(phase, buckets)| {
                let before = before.phase_buckets.get(phase).map_or(&[][..], Vec::as_slice);
                (phase.clone(), bucket_quantile(before, buckets, 0.99) * 1e3)
            })
            .collect(),
        cpu: None,
    })
}

/// Freshness alone at each of `rates`, in turn, on one processor with the benchmark's index (`--index-size`), after
/// a warm-up of three events per instrument (each series' first load, not reported) and an `ANALYZE`;
/// before each, the floor at that rate (the processor idle meanwhile). `nats` is the nats-server's
/// process, whose CPU is measured with the processor's and PostgreSQL's.
pub async fn freshness_curve(
    config: &Config,
    args: &super::BenchArgs,
    js: &jetstream::Context,
    rates: &[f64],
    nats: u32,
) -> anyhow::Result<Vec<(Freshness, Floor)>> {
    js.publish("index.bench", tributary_broker::codec::to_msgpack(&args.index())).await?.await?;
    let db = Database::create(&config.database.url, "freshness").await?;
    let floor_db = Database::create(&config.database.url, "floor").await?;
    let result = async {
        let p = Processor::spawn(config, &db.url, "freshness", 1)?;
        until(Duration::from_secs(60), || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM indices").fetch_one(&db.pool).await.unwrap_or(0);
            (n > 0).then_some(())
        })
        .await?;
        // Warm-up, not reported: every series' first load, and the tail cache filled.
        let warm_up = args.instruments as f64 * 3.0 / args.freshness_secs;
        freshness(&p, &db.pool, js, args.instruments, 0, warm_up, args.freshness_secs).await?;
        // What autovacuum does within a minute: plans made from the statistics of near-empty tables
        // (a sequential scan is cheapest there) would otherwise be measured.
        sqlx::query("ANALYZE").execute(&db.pool).await?;
        let mut out = Vec::new();
        let mut from = (warm_up * args.freshness_secs).round() as u64;
        for (k, &rate) in rates.iter().enumerate() {
            let secs = args.freshness_secs;
            let floor =
                floor::measure(js, &floor_db.pool, &format!("FLOOR{k}"), args.instruments, rate, secs, nats).await?;
            let watch = Watch::start(nats, Some(p.pid()));
            let mut tributary = freshness(&p, &db.pool, js, args.instruments, from, rate, secs).await?;
            tributary.cpu = watch.stop((rate * secs).round() as u64);
            out.push((tributary, floor));
            from += (rate * secs).round() as u64;
        }
        Ok(out)
    }
    .await;
    db.drop().await;
    floor_db.drop().await;
    result
}

/// The processor's metrics that freshness reads.
async fn scrape(p: &Processor) -> anyhow::Result<Scrape> {
    let text = reqwest::get(p.metrics_url()).await?.text().await?;
    Ok(Scrape {
        latency: parse_buckets(&text, "tributary_commit_latency_seconds_bucket", "prices"),
        batches: parse_value(&text, "tributary_batch_size_count", "prices"),
        batch_events: parse_value(&text, "tributary_batch_size_sum", "prices"),
        batch_seconds: parse_value(&text, "tributary_batch_seconds_sum", "prices"),
        phases: parse_phases(&text, "prices"),
        phase_buckets: parse_phase_buckets(&text, "prices"),
    })
}
