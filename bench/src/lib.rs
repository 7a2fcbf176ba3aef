//! The benchmark, `tributary-bench` (also run as `tributary bench`): Tributary's throughput, freshness
//! and API latency measured in one run against the raw limits of NATS JetStream and PostgreSQL on the same
//! machine; and `tributary-bench ports` (`tributary bench-ports`), the ports importer against the raw
//! publish rate.
//!
//! A crate of its own so that the production binary carries none of it: `tributary bench` and
//! `tributary bench-ports` exec the `tributary-bench` binary beside the `tributary` binary, and the
//! benchmark runs the processor and the ports importer as that `tributary` binary's own processes
//! ([`tributary_exe`]), so what it measures is what is deployed. It shares the configuration and the
//! connecting code with the binary through the `tributary` library.
//!
//! Phases, each repeated `--repeats` times (median and min–max reported):
//! 1. raw limits ([`raw`]): JetStream publish with pipelined acks, pull-consume with an ack per message,
//!    and PostgreSQL `UNNEST … ON CONFLICT` upserts of rows shaped like `price_points`;
//! 2. the baseline ([`raw::baseline`]): the minimal hand-written pipeline (fetch 1000, decode, one upsert
//!    of the raw rows per batch in one transaction, ack each after commit; nothing derived);
//! 3. Tributary ([`pipeline`]): the real processor, as its own process, on the same backlog: every
//!    derived window and an index over 10 instruments (`--index-size`), and beside the prices one metric message (two
//!    fields) for every 10 price events, with their 1m and 1h rollups ([`MetricsBacklog`]; the rate
//!    counts price events only, so the metric work is on top), and traces exported over OTLP/HTTP at
//!    the configured sampling ratio to the benchmark's own collector ([`traces`]); then freshness at a
//!    fixed offered rate and the processor's peak RSS; then the floor at that rate ([`floor`]):
//!    JetStream alone, and the baseline taking whatever is ready, each as fresh as a pipeline on this
//!    machine can be;
//! 4. scale-out ([`pipeline::scale_out`]): two processors sharing the backlog's partitions (two, or
//!    `--partitions`) by themselves (the streams' subject transform, one durable consumer per partition,
//!    the elastic group dealing them), on the same backlog; their combined rate; then one processor
//!    owning every partition (a consume
//!    loop per partition, so one partition's fetch and decode overlap the other's commit); and whether
//!    every partitioned run stored exactly what the unpartitioned processor stored; then failover
//!    ([`failover`]): two processors, one killed with SIGKILL a third of the way and never restarted,
//!    the time to the next commit on its partitions;
//! 5. API reads ([`http`]): `GET /v1/series/price/{i}?limit=100` at saturation and at a fixed rate.
//!
//! `--freshness-rates` measures only freshness at several offered rates; `--corrections` only what a
//! correction deep in a long history costs ([`corrections`]).
//!
//! NATS: a private nats-server (the pinned version, on a free port, file storage in a temp dir; the
//! backlog stored over two partitions), so the benchmark's streams never meet those of a running system. PostgreSQL: fresh databases on the
//! configured server, dropped afterwards.
//!
//! # Layout
//! - this file: [`BenchArgs`], the price and metric backlogs, and [`run`], which runs the phases in order.
//! - [`raw`]: the raw limits and the baseline pipeline.
//! - [`pipeline`]: Tributary's processor as a child process: throughput, freshness, scale-out; [`scrape`]:
//!   reading its metrics.
//! - [`harness`]: what every Tributary run stands on: its own database, processors as child processes,
//!   and what they committed.
//! - [`failover`]: one of two processors killed for good: the takeover time.
//! - [`floor`]: the freshness floor: JetStream alone, and the baseline taking whatever is ready.
//! - [`corrections`]: `--corrections`, a correction deep in a long history.
//! - [`http`]: API reads under load, with `wrk` when installed.
//! - [`traces`]: the OTLP/HTTP collector that counts the processor's spans.
//! - [`cpu`]: who used the CPU during the freshness measurements, from `/proc`.
//! - [`report`]: the report, as JSON and as a table, and the machine it ran on; [`stats`]: medians.
//! - [`ports`]: `tributary-bench ports`, the ports importer against the raw publish rate.

mod corrections;
mod cpu;
mod failover;
mod floor;
mod harness;
mod http;
mod pipeline;
pub mod ports;
mod raw;
mod report;
mod scrape;
mod stats;
mod traces;

use anyhow::Context;
use report::*;
use stats::Stats;
use std::path::PathBuf;
use std::time::Duration;
use tributary::config::Config;
use tributary::local;
use tributary_broker::events::PriceEvent;
use tributary_broker::samples::SampleEvent;
use tributary_broker::ts::Ts;

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Events per throughput run (raw, baseline and Tributary).
    #[arg(long, default_value_t = 500_000)]
    pub events: u64,
    /// Instruments the events are spread over.
    #[arg(long, default_value_t = 1000)]
    pub instruments: usize,
    /// Repeats of each measurement.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Offered rate for the freshness measurement, events/s.
    #[arg(long, default_value_t = 25_000.0)]
    pub rate: f64,
    /// Seconds of the freshness measurement.
    #[arg(long, default_value_t = 10.0)]
    pub freshness_secs: f64,
    /// Seconds of each API load run.
    #[arg(long, default_value_t = 5.0)]
    pub api_secs: f64,
    /// Fixed request rate for the API latency run, requests/s.
    #[arg(long, default_value_t = 2000.0)]
    pub api_rate: f64,
    /// Print only the JSON report.
    #[arg(long)]
    pub json: bool,
    /// Measure only freshness, at each of these offered rates in turn (events/s, comma-separated), for
    /// `--freshness-secs` each: where the publish→commit latency floor is and where it bends.
    #[arg(long, value_delimiter = ',')]
    pub freshness_rates: Vec<f64>,
    /// Measure only corrections: for each of these series lengths (points, comma-separated), the time
    /// and memory a correction of the first point costs, and the other instruments' freshness during it.
    #[arg(long, value_delimiter = ',')]
    pub corrections: Vec<u64>,
    /// Partitions the backlog is stored over; the scale-out and failover phases run two processors
    /// sharing them, and one processor owning them all. More partitions make a backlog cheaper for
    /// nats-server to deliver (BENCHMARKS.md, "The one fix without server configuration").
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..=64))]
    pub partitions: u32,
    /// Constituents of the benchmark's index: the first N instruments (at most `--instruments`), equal
    /// weights. An event on a constituent recomputes the index in its transaction.
    #[arg(long, default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=tributary_broker::events::IndexDefinition::MAX_CONSTITUENTS as u64))]
    pub index_size: u64,
}

impl BenchArgs {
    /// The benchmark's index: the first `--index-size` instruments, equal weights.
    fn index(&self) -> tributary_broker::events::IndexDefinition {
        let n = (self.index_size as usize).min(self.instruments);
        let weights = (0..n).map(|i| (format!("S{i}"), 1.0 / n as f64)).collect();
        tributary_broker::events::IndexDefinition { base: 100.0, weights }
    }
}

/// Metric messages in the throughput backlog: one for every this many price events, so that Tributary's
/// path also computes its rollups (the baseline consumes prices only and leaves them be).
const PRICE_EVENTS_PER_METRIC: u64 = 10;
/// Hosts the metric messages are spread over, two fields each.
const METRIC_HOSTS: u64 = 100;

/// The metric messages of the throughput backlog: `messages` (a multiple of `hosts`), host `i % hosts`
/// sampled once a second from `base_ms` on, fields `cpu` and `mem`. Their times are recent (the processor
/// refuses samples older than the raw retention) and fixed at publication, so every run over the backlog
/// stores the same rollups.
#[derive(Debug, Clone, Copy)]
pub struct MetricsBacklog {
    /// Messages in all, a multiple of `hosts`.
    pub messages: u64,
    /// Hosts, sampled once a second each.
    pub hosts: u64,
    base_ms: i64,
}

impl MetricsBacklog {
    /// The metric messages published beside `price_events`, ending a minute before now.
    fn beside(price_events: u64) -> MetricsBacklog {
        let hosts = METRIC_HOSTS;
        let rounds = (price_events / PRICE_EVENTS_PER_METRIC / hosts).max(1);
        let now_ms = chrono::Utc::now().timestamp_millis();
        let base_ms = (now_ms - (rounds as i64 + 60) * 1000) / 60_000 * 60_000;
        MetricsBacklog { messages: rounds * hosts, hosts, base_ms }
    }

    /// The `i`th message, encoded as our publishers do.
    fn event(&self, i: u64) -> (String, bytes::Bytes) {
        let (host, round) = (i % self.hosts, i / self.hosts);
        let fields = std::collections::BTreeMap::from([
            ("cpu".to_owned(), ((i * 7919) % 1000) as f64 / 10.0),
            ("mem".to_owned(), ((i * 104_729) % 1000) as f64 / 10.0),
        ]);
        let e = SampleEvent { ts: Some(self.ts(round)), fields };
        (format!("metric.H{host}"), tributary_broker::codec::to_msgpack(&e))
    }

    fn ts(&self, round: u64) -> Ts {
        Ts::from_millis(self.base_ms + round as i64 * 1000).expect("in range")
    }

    /// The time of every host's last sample.
    pub fn last_ts(&self) -> Ts {
        self.ts(self.messages / self.hosts - 1)
    }
}

/// The price event every throughput phase publishes, encoded as our publishers do.
fn event(i: u64, instruments: usize) -> (String, bytes::Bytes) {
    let inst = i % instruments as u64;
    let round = i / instruments as u64;
    let ts = Ts::from_millis(1_767_225_600_000 + round as i64 * 1000).expect("in range");
    let price = 100.0 + ((i * 7919) % 1000) as f64 / 100.0;
    let e = PriceEvent { ts: Some(ts), price, volume: Some(10.0) };
    (format!("price.S{inst}"), tributary_broker::codec::to_msgpack(&e))
}

fn progress(json: bool, what: &str) {
    if !json {
        eprintln!("bench: {what}");
    }
}

/// The `tributary` binary the benchmark runs as the processor and the ports importer: the one beside
/// this executable, so that both come from the same build.
///
/// # Errors
/// When there is none, naming the path and the command that builds it.
pub fn tributary_exe() -> anyhow::Result<PathBuf> {
    tributary_local::sibling_binary("tributary", "tributary")
        .map_err(|e| anyhow::anyhow!("the benchmark runs its processor as the tributary binary: {e}"))
}

/// Runs every phase and prints the report.
pub async fn run(config: Config, args: BenchArgs) -> anyhow::Result<()> {
    tributary_exe()?;
    let bin =
        local::nats_server_bin().map_err(anyhow::Error::msg).context("the benchmark starts a private nats-server")?;
    let dir = std::env::temp_dir().join(format!("tributary-bench-{}", std::process::id()));
    let port = local::free_port();
    std::fs::create_dir_all(&dir)?;
    let mut nats_child = local::spawn_nats(&bin, port, &dir.join("nats"), &dir.join("nats.log"))?;
    let nats = nats_child.id();
    let db_url = config.database.url.clone();
    let mut config = config;
    let sink = traces::TraceSink::start().await?;
    config.telemetry.otlp_endpoint = Some(sink.endpoint.clone());
    let result = if !args.corrections.is_empty() {
        run_corrections(config, &args, port).await.map(|_| None)
    } else if args.freshness_rates.is_empty() {
        run_phases(config, &args, port, nats, &sink).await.map(Some)
    } else {
        run_freshness_curve(config, &args, port, nats).await.map(|_| None)
    };
    drop(sink);
    harness::drop_run_databases(&db_url).await;
    let _ = nats_child.kill();
    let _ = nats_child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let Some(report) = result? else { return Ok(()) };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// `--corrections`: the corrections scenario alone ([`corrections`]).
async fn run_corrections(mut config: Config, args: &BenchArgs, nats_port: u16) -> anyhow::Result<()> {
    config.nats = tributary::config::NatsConfig::with_url(format!("nats://127.0.0.1:{nats_port}"));
    let js = tributary::app::jetstream(&config).await?;
    let figures = corrections::measure(&config, args, &js, &args.corrections).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
        Ok(())
    } else {
        corrections::print(&figures)
    }
}

/// `--freshness-rates`: runs the freshness measurement alone at each rate and prints one line each (or
/// a JSON array with `--json`).
async fn run_freshness_curve(mut config: Config, args: &BenchArgs, nats_port: u16, nats: u32) -> anyhow::Result<()> {
    config.nats = tributary::config::NatsConfig::with_url(format!("nats://127.0.0.1:{nats_port}"));
    let js = tributary::app::jetstream(&config).await?;
    progress(args.json, "freshness at each offered rate");
    let points: Vec<FreshnessPoint> = pipeline::freshness_curve(&config, args, &js, &args.freshness_rates, nats)
        .await?
        .into_iter()
        .zip(&args.freshness_rates)
        .map(|((f, floor), &offered)| FreshnessPoint {
            offered_per_s: offered,
            achieved_per_s: f.achieved,
            latency: f.latency,
            mean_batch_events: f.mean_batch_events,
            mean_batch_ms: f.mean_batch_ms,
            phases_ms: f.phases_ms,
            phases_p99_ms: f.phases_p99_ms,
            cpu: f.cpu,
            floor,
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&points)?);
        return Ok(());
    }
    println!(
        "{:>10} {:>10} {:>22} {:>8} {:>8} {:>22} {:>22}",
        "offered/s",
        "achieved/s",
        "p50 / p99 / p99.9 ms",
        "batch",
        "batch ms",
        "baseline p50/p99/p99.9",
        "JetStream p50/p99/p99.9"
    );
    for p in &points {
        let (b, j) = (p.floor.baseline, p.floor.jetstream);
        println!(
            "{:>10.0} {:>10.0} {:>22} {:>8.1} {:>8.2} {:>22} {:>22}",
            p.offered_per_s,
            p.achieved_per_s,
            p.latency.brief(),
            p.mean_batch_events,
            p.mean_batch_ms,
            b.brief(),
            j.brief()
        );
        let bucketed = p.floor.baseline_bucketed;
        println!(
            "{:>10} baseline read from the buckets, as Tributary's: {}; ratios p50 {:.2}, p99 {:.2} (to the exact: {:.2}, {:.2})",
            "",
            bucketed.brief(),
            p.latency.p50_ms / bucketed.p50_ms,
            p.latency.p99_ms / bucketed.p99_ms,
            p.latency.p50_ms / b.p50_ms,
            p.latency.p99_ms / b.p99_ms,
        );
        println!("{:>10} where a unit's time goes, mean ms: {}", "", report::phases(&p.phases_ms));
        println!("{:>10} and its slowest, p99 ms: {}", "", report::phases(&p.phases_p99_ms));
        if let Some(cpu) = p.cpu {
            println!("{:>10} Tributary: {cpu}", "");
        }
        if let Some(cpu) = p.floor.baseline_cpu {
            println!("{:>10} baseline:  {cpu}", "");
        }
    }
    println!("{}", serde_json::to_string(&points)?);
    Ok(())
}

async fn run_phases(
    mut config: Config,
    args: &BenchArgs,
    nats_port: u16,
    nats: u32,
    sink: &traces::TraceSink,
) -> anyhow::Result<Report> {
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    // The private server has no TLS and no users: the configured ones are not for it.
    config.nats = tributary::config::NatsConfig::with_url(nats_url);
    // The backlog is stored over the partitions the scale-out phase splits.
    config.processor.partitions = args.partitions;
    let js = tributary::app::jetstream(&config).await?;
    let n = args.events;
    let message_bytes = event(0, args.instruments).1.len();

    progress(args.json, "raw JetStream publish and consume");
    let mut publish = Vec::new();
    let mut consume = Vec::new();
    for r in 0..args.repeats {
        let stream = format!("RAW{r}");
        publish.push(raw::jetstream_publish(&js, &stream, n, args.instruments).await?);
        consume.push(raw::jetstream_consume(&js, &stream, n).await?);
        js.delete_stream(&stream).await.ok();
    }
    progress(args.json, "raw PostgreSQL upsert");
    let scratch = harness::Database::create(&config.database.url, "raw").await?;
    let mut upsert = Vec::new();
    for r in 0..args.repeats {
        upsert.push(raw::pg_upsert(&scratch.pool, &format!("raw_points_{r}"), n, args.instruments).await?);
    }
    scratch.drop().await;

    progress(args.json, "publishing the price and metric backlog");
    raw::publish_backlog(&js, n, args.instruments).await?;
    let metrics = MetricsBacklog::beside(n);
    raw::publish_metrics(&js, &metrics).await?;

    progress(args.json, "baseline pipeline");
    let mut baseline = Vec::new();
    for r in 0..args.repeats {
        let db = harness::Database::create(&config.database.url, &format!("baseline{r}")).await?;
        baseline.push(raw::baseline(&js, &db.pool, &format!("baseline{r}"), n).await?);
        db.drop().await;
    }

    progress(args.json, "Tributary's processor");
    let trib = pipeline::measure(&config, args, &js, &metrics, nats).await?;

    let spans_exported = sink.spans();
    progress(args.json, "API reads");
    let api = http::measure(&config, args, &trib.db_url, &js).await;
    trib.db.drop().await;
    let api = api?;

    let (publish, consume, upsert, baseline) =
        (Stats::of(publish), Stats::of(consume), Stats::of(upsert), Stats::of(baseline));
    let ratios = Ratios {
        tributary_over_baseline: trib.runs.median / baseline.median,
        tributary_over_jetstream_publish: trib.runs.median / publish.median,
        tributary_over_pg_upsert: trib.runs.median / upsert.median,
        two_replicas_over_one: trib.scale.runs.median / trib.runs.median,
        two_partitions_over_one: trib.scale.one_process.median / trib.runs.median,
        two_partitions_over_baseline: trib.scale.one_process.median / baseline.median,
        freshness_p99_over_baseline: trib.freshness.latency.p99_ms / trib.floor.baseline_bucketed.p99_ms,
    };
    Ok(Report {
        machine: machine(&config).await,
        parameters: serde_json::json!({
            "events": args.events, "instruments": args.instruments, "repeats": args.repeats,
            "freshness_rate": args.rate, "freshness_secs": args.freshness_secs,
            "api_secs": args.api_secs, "api_rate": args.api_rate, "batch": config.processor.batch,
            "windows": config.processor.prices.names(), "index_instruments": args.index().weights.len(),
            "metric_messages": metrics.messages, "metric_hosts": metrics.hosts, "metric_fields": 2,
            "rollups": config.metrics.width_names(),
            "partitions": args.partitions, "db_parallelism": config.processor.db_parallelism,
            "tracing": "OTLP/HTTP export to the benchmark's collector",
            "sampling_ratio": config.telemetry.sampling_ratio,
        }),
        raw: RawReport {
            jetstream_publish_per_s: publish.median,
            jetstream_publish: publish,
            jetstream_consume_per_s: consume.median,
            jetstream_consume: consume,
            pg_upsert_rows_per_s: upsert.median,
            pg_upsert: upsert,
            message_bytes,
            jetstream_freshness: trib.floor.jetstream,
        },
        baseline: BaselineReport {
            events_per_s: baseline.median,
            runs: baseline,
            freshness: trib.floor.baseline,
            freshness_bucketed: trib.floor.baseline_bucketed,
            freshness_cpu: trib.floor.baseline_cpu,
        },
        tributary: TributaryReport {
            events_per_s: trib.runs.median,
            runs: trib.runs,
            freshness_offered_per_s: args.rate,
            freshness_achieved_per_s: trib.freshness.achieved,
            freshness: trib.freshness.latency,
            freshness_phases_ms: trib.freshness.phases_ms.clone(),
            freshness_phases_p99_ms: trib.freshness.phases_p99_ms.clone(),
            freshness_cpu: trib.freshness.cpu,
            peak_rss_mb: trib.peak_rss_mb,
            two_replicas_events_per_s: trib.scale.runs.median,
            two_replicas: trib.scale.runs.clone(),
            two_partitions_events_per_s: trib.scale.one_process.median,
            two_partitions: trib.scale.one_process.clone(),
            two_replicas_equal_to_one: trib.scale.equal,
            failover: trib.failover.clone(),
            spans_exported,
        },
        api: ApiReport {
            generator: api.generator,
            max_rps: api.saturation.median,
            saturation: api.saturation,
            p99_ms: api.p99_ms,
            p50_ms: api.p50_ms,
            fixed_rate_per_s: args.api_rate,
        },
        ratios,
    })
}

/// Waits until `f` returns `Some`, polling every 20 ms, at most `limit`.
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    limit: Duration,
    mut f: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "timed out after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
