//! `tributary`: every role of the pipeline behind one command. `main` reads the configuration, starts
//! telemetry and runs a library function.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tributary::app::{self, Connected};
use tributary::config::Config;
use tributary::{local, shutdown};
use tributary_broker::events::IndexDefinition;
use tributary_broker::{Kind, Publisher};

/// mimalloc instead of glibc's malloc: the processor allocates and frees per event and per batch, and
/// glibc spent a third of its CPU in malloc, free and consolidation (perf, `scripts/measure-ingest.sh`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tributary turns raw events into always-correct derived time series.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Configuration file (default: ./tributary.toml if present). Environment variables override it.
    #[arg(long, global = true, env = "TRIBUTARY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole system in one process (migrations, streams, processor, aggregator, API, demo).
    Up(UpArgs),
    /// Run the processor role: consume events, write derived series.
    Processor(RoleArgs),
    /// Run the API role.
    Api(ApiArgs),
    /// Run the aggregator role: pull survey providers on an interval and for fresh reads.
    Aggregator(AggregatorArgs),
    /// Fleet assignment without any server: the exercise's own usage, and its benchmark.
    #[command(subcommand)]
    Fleet(FleetCmd),
    /// Run a gatherer.
    #[command(subcommand)]
    Gatherer(Gatherer),
    /// Stream a file (or `-` for stdin) into the pipeline: ports, prices-csv, ndjson, or numbers (statistics).
    Import(ImportArgs),
    /// Create the database if missing, apply migrations and create the streams, then exit.
    Migrate,
    /// Measure throughput, freshness and API latency against the raw limits of NATS and PostgreSQL.
    Bench(tributary::bench::BenchArgs),
    /// Stream a generated ports file of a given size: MB/s, ports/s and peak RSS beside the raw publish rate.
    BenchPorts(tributary::bench::ports::PortsBenchArgs),
}

#[derive(Args)]
struct UpArgs {
    /// Where the API listens.
    #[arg(long)]
    listen: Option<String>,
    /// Do not run the simulators.
    #[arg(long)]
    no_demo: bool,
}

#[derive(Args)]
struct RoleArgs {
    /// Serve /metrics and /healthz on this address.
    #[arg(long)]
    metrics_listen: Option<String>,
}

#[derive(Args)]
struct AggregatorArgs {
    /// A provider as NAME=URL (repeatable), added to `aggregator.providers`.
    #[arg(long = "provider", value_name = "NAME=URL")]
    providers: Vec<String>,
    /// Serve /metrics and /healthz on this address.
    #[arg(long)]
    metrics_listen: Option<String>,
}

#[derive(Subcommand)]
enum FleetCmd {
    /// Print the assignment of shipments to drivers that maximises the total suitability score.
    Plan(FleetPlanArgs),
    /// Time the optimal assignment of N random shipments to N random drivers.
    Bench(FleetBenchArgs),
}

#[derive(Args)]
struct FleetPlanArgs {
    /// Driver names, one per line (`-` for stdin).
    #[arg(long)]
    drivers: PathBuf,
    /// Shipment destination addresses, one per line (`-` for stdin).
    #[arg(long)]
    shipments: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct FleetBenchArgs {
    /// Shipments and drivers.
    #[arg(long, default_value_t = 1000)]
    size: usize,
    /// Repeats (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct ApiArgs {
    /// Where the API listens.
    #[arg(long)]
    listen: Option<String>,
}

#[derive(Subcommand)]
enum Gatherer {
    /// Simulate prices, or import them from CSV with --csv.
    Prices(PricesArgs),
    /// Simulate N servers' CPU, memory and disk usage, one sample per server per interval.
    Metrics(MetricsArgs),
    /// Import a ports file (a JSON object keyed by UN/LOCODE), streamed with bounded memory.
    Ports(PortsArgs),
    /// Publish drivers and shipments from the exercise's two list files, or simulate them.
    Fleet(FleetArgs),
    /// Run a survey provider (the reporter API) for the aggregator to pull from.
    SurveyProvider(SurveyProviderArgs),
}

#[derive(Args)]
struct FleetArgs {
    /// Driver names, one per line (id = line number).
    #[arg(long, requires = "shipments", conflicts_with = "simulate")]
    drivers: Option<PathBuf>,
    /// Shipment destination addresses, one per line (id = line number).
    #[arg(long, requires = "drivers")]
    shipments: Option<PathBuf>,
    /// Simulate N drivers and N shipments, replacing one every interval.
    #[arg(long, value_name = "N")]
    simulate: Option<usize>,
    /// Time between simulated changes, e.g. 2s, 500ms.
    #[arg(long, value_parser = parse_interval)]
    interval: Option<Duration>,
    /// Stop the simulation after this many changes.
    #[arg(long)]
    changes: Option<u64>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Args)]
struct SurveyProviderArgs {
    /// The provider's name (for logs).
    #[arg(long, default_value = "blue")]
    name: String,
    /// Where it listens.
    #[arg(long, default_value = "127.0.0.1:1101")]
    listen: String,
    /// Post a random item this often (e.g. 2s); by default only clients post.
    #[arg(long, value_parser = parse_interval)]
    generate_every: Option<Duration>,
}

#[derive(Args)]
struct ImportArgs {
    /// The file (`-` for stdin).
    file: PathBuf,
    /// What the file holds.
    #[arg(long, value_parser = ["ports", "prices-csv", "ndjson", "numbers"])]
    kind: String,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct PortsArgs {
    /// The file (`-` for stdin).
    file: PathBuf,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct MetricsArgs {
    /// Number of servers (ids <prefix>1 … <prefix>N).
    #[arg(long)]
    servers: Option<usize>,
    /// Time between rounds, e.g. 1s, 250ms.
    #[arg(long, value_parser = parse_interval)]
    interval: Option<Duration>,
    /// Server id prefix.
    #[arg(long)]
    prefix: Option<String>,
    /// Stop after this many rounds.
    #[arg(long)]
    rounds: Option<u64>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Serve /metrics and /healthz on this address.
    #[arg(long)]
    metrics_listen: Option<String>,
}

/// `250ms`, `1s`, `2m`.
fn parse_interval(s: &str) -> Result<Duration, String> {
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse::<u64>().map(Duration::from_millis).map_err(|_| format!("bad interval {s:?}"));
    }
    tributary_store::metrics::Span::parse(s).map(|d| Duration::from_secs(d.secs() as u64))
}

#[derive(Args)]
struct PricesArgs {
    /// Import `instrument,ts,price[,volume]` lines from this file (`-` for stdin) instead of simulating.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Number of simulated instruments.
    #[arg(long)]
    instruments: Option<usize>,
    /// Simulated events per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Share of late events (0 to 1).
    #[arg(long)]
    late_share: Option<f64>,
    /// Share of corrections (0 to 1).
    #[arg(long)]
    correction_share: Option<f64>,
    /// Stop after this many events.
    #[arg(long)]
    limit: Option<u64>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // A file import runs on one thread: the reader, the publisher and the NATS connection hand every
    // message to each other, and across threads each handoff is a wake-up through the kernel.
    let mut runtime = match cli.command {
        Command::Gatherer(Gatherer::Ports(_)) | Command::Import(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match runtime.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tributary: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tributary: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    let service = match &cli.command {
        Command::Up(_) => "tributary",
        Command::Processor(_) => "tributary-processor",
        Command::Api(_) => "tributary-api",
        Command::Aggregator(_) => "tributary-aggregator",
        Command::Fleet(_) => "tributary-fleet",
        Command::Gatherer(_) => "tributary-gatherer",
        Command::Migrate => "tributary-migrate",
        Command::Import(_) => "tributary-import",
        Command::Bench(_) | Command::BenchPorts(_) => "tributary-bench",
    };
    let _telemetry = tributary_telemetry::init(service, &config.telemetry)?;
    match cli.command {
        Command::Up(args) => {
            if let Some(l) = args.listen {
                config.api.listen = l;
            }
            let servers = local::ensure(&mut config).await?;
            let r = up(config, !args.no_demo).await;
            drop(servers);
            r
        }
        Command::Processor(args) => {
            let c = app::connect(config).await?;
            let stop = shutdown::on_signal();
            serve_metrics(args.metrics_listen, stop.clone()).await?;
            let grace = Duration::from_secs(c.config.processor.shutdown_grace_secs);
            drain_within(c.processor(stop.clone()), &stop, grace).await
        }
        Command::Api(args) => {
            if let Some(l) = args.listen {
                config.api.listen = l;
            }
            let c = app::connect(config).await?;
            let listener = bind(&c.config.api.listen).await?;
            c.api(listener, shutdown::on_signal()).await
        }
        Command::Aggregator(args) => {
            config.aggregator.add_flags(args.providers.iter().map(String::as_str))?;
            let c = app::connect(config).await?;
            let stop = shutdown::on_signal();
            serve_metrics(args.metrics_listen, stop.clone()).await?;
            c.aggregator(stop).await
        }
        Command::Fleet(FleetCmd::Plan(args)) => fleet_plan(args),
        Command::Fleet(FleetCmd::Bench(args)) => fleet_bench(args),
        Command::Gatherer(Gatherer::Fleet(args)) => gather_fleet(config, args).await,
        Command::Gatherer(Gatherer::SurveyProvider(args)) => survey_provider(args).await,
        Command::Gatherer(Gatherer::Prices(args)) => gather_prices(config, args).await,
        Command::Gatherer(Gatherer::Metrics(args)) => gather_metrics(config, args).await,
        Command::Gatherer(Gatherer::Ports(args)) => import_ports(config, args).await,
        Command::Import(args) => import(config, args).await,
        Command::Bench(args) => tributary::bench::run(config, args).await,
        Command::BenchPorts(args) => tributary::bench::ports::run(args).await,
        Command::Migrate => {
            app::connect(config).await?;
            eprintln!("database migrated, streams ready");
            Ok(())
        }
    }
}

/// Runs a role to its end; once `stop` fires, gives the work in hand `grace` to finish, then gives up on it
/// (an error: nothing uncommitted was acked, so it is delivered again).
async fn drain_within(
    role: impl std::future::Future<Output = anyhow::Result<()>>,
    stop: &CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    tokio::pin!(role);
    tokio::select! {
        r = &mut role => return r,
        _ = stop.cancelled() => {}
    }
    match tokio::time::timeout(grace, role).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!(
            "the batches in hand did not commit within {} s of the signal; exiting without acking them (they will be delivered again)",
            grace.as_secs()
        ),
    }
}

async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))
}

/// `/metrics` and `/healthz` for roles without the API.
/// A role's `/readyz` on its metrics listener: 503 while a consumer of it fails on every message.
async fn processor_readyz() -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    let failing = tributary_broker::consume::failing();
    let status =
        if failing.is_empty() { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "status": if failing.is_empty() { "ready" } else { "not_ready" },
        "failing_consumers": failing,
    });
    (status, axum::Json(body))
}

async fn serve_metrics(addr: Option<String>, stop: CancellationToken) -> anyhow::Result<()> {
    let Some(addr) = addr else { return Ok(()) };
    let listener = bind(&addr).await?;
    let handle = tributary_telemetry::metrics();
    let router = axum::Router::new()
        .route("/metrics", axum::routing::get(move || std::future::ready(handle.render())))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(processor_readyz));
    tokio::spawn(async move { axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await });
    Ok(())
}

async fn up(mut config: Config, demo: bool) -> anyhow::Result<()> {
    let stop = shutdown::on_signal();
    // The demo's two survey providers, when none are configured: in this process, on free ports.
    let mut providers = Vec::new();
    if demo && config.aggregator.providers.is_empty() {
        for (i, name) in ["blue", "red"].into_iter().enumerate() {
            let listener = bind("127.0.0.1:0").await?;
            config.aggregator.providers.insert(name.into(), format!("http://{}", listener.local_addr()?));
            providers.push((listener, i as u64));
        }
    }
    let c = app::connect(config).await?;
    let listener = bind(&c.config.api.listen).await?;
    let addr = listener.local_addr()?;
    let mut tasks = tokio::task::JoinSet::new();
    let (p, s) = (c.clone(), stop.clone());
    tasks.spawn(async move { p.processor(s).await.context("processor") });
    let (a, s) = (c.clone(), stop.clone());
    tasks.spawn(async move { a.aggregator(s).await.context("aggregator") });
    for (listener, seed) in providers {
        let provider = tributary_gatherer::surveys::Provider::new();
        let every = Duration::from_millis(1500 + 1000 * seed);
        tokio::spawn(tributary_gatherer::surveys::generate(provider.clone(), every, seed, stop.clone()));
        let s = stop.clone();
        tasks.spawn(async move {
            tributary_gatherer::surveys::serve(listener, provider, s).await.context("survey provider")
        });
    }
    let (api, s) = (c.clone(), stop.clone());
    tasks.spawn(async move { api.api(listener, s).await });
    if demo {
        define_demo_index(&c).await?;
        let (js, sim, s) = (c.js.clone(), c.config.gatherer.prices.clone(), stop.clone());
        tasks.spawn(async move {
            let report = tributary_gatherer::prices::simulate(js, sim, s).await;
            tracing::info!(
                stored = report.stored,
                duplicates = report.duplicates,
                failed = report.failed.len(),
                "price simulator stopped"
            );
            Ok(())
        });
    }
    if demo {
        let (js, sim, s) = (c.js.clone(), c.config.gatherer.fleet.clone(), stop.clone());
        tasks.spawn(async move {
            let report = tributary_gatherer::fleet::simulate(js, sim, s).await;
            tracing::info!(stored = report.stored, failed = report.failed.len(), "fleet simulator stopped");
            Ok(())
        });
        let (js, sim, s) = (c.js.clone(), c.config.gatherer.metrics.clone(), stop.clone());
        tasks.spawn(async move {
            let report = tributary_gatherer::metrics::simulate(js, sim, s).await;
            tracing::info!(stored = report.stored, failed = report.failed.len(), "metrics simulator stopped");
            Ok(())
        });
    }
    let scheme = if c.config.api.tls_cert_file.is_some() { "https" } else { "http" };
    eprintln!("tributary is up: {scheme}://{addr}/  (API docs: {scheme}://{addr}/docs; Ctrl-C stops)");
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
            stop.cancel();
            first_error.get_or_insert(e);
        }
        if stop.is_cancelled() {
            break;
        }
    }
    // Drain what is left within a time limit.
    let grace = Duration::from_secs(c.config.processor.shutdown_grace_secs);
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!(?grace, "some tasks did not stop in time; exiting without acking their work in hand");
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `tributary fleet plan`: reads the two lists and prints the optimal total and matching.
fn fleet_plan(args: FleetPlanArgs) -> anyhow::Result<()> {
    let read = |p: &std::path::Path| {
        tributary_gatherer::fleet::read_list(p).with_context(|| format!("reading {}", p.display()))
    };
    let (drivers, shipments) = (read(&args.drivers)?, read(&args.shipments)?);
    let names: Vec<&str> = drivers.iter().map(|d| d.1.as_str()).collect();
    let addresses: Vec<&str> = shipments.iter().map(|s| s.1.as_str()).collect();
    let plan = tributary_fleet::plan(&addresses, &names);
    if args.json {
        let pairs: Vec<_> = plan
            .pairs
            .iter()
            .map(|&(s, d, q)| serde_json::json!({"address": addresses[s], "driver": names[d], "score": q.value()}))
            .collect();
        let out = serde_json::json!({
            "total_score": plan.total.value(),
            "assignments": pairs,
            "unassigned_shipments": plan.unassigned_shipments.iter().map(|&s| addresses[s]).collect::<Vec<_>>(),
            "unassigned_drivers": plan.unassigned_drivers.iter().map(|&d| names[d]).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("total suitability score: {}", plan.total.value());
    for &(s, d, q) in &plan.pairs {
        println!("{:>8}  {}  <-  {}", q.value(), addresses[s], names[d]);
    }
    for &s in &plan.unassigned_shipments {
        println!("{:>8}  {}  (no driver)", "-", addresses[s]);
    }
    for &d in &plan.unassigned_drivers {
        println!("{:>8}  (no shipment)  <-  {}", "-", names[d]);
    }
    Ok(())
}

/// `tributary fleet bench`: the optimal assignment of N × N random names and addresses, timed.
fn fleet_bench(args: FleetBenchArgs) -> anyhow::Result<()> {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(args.seed);
    let word = |r: &mut StdRng, n: usize| -> String {
        (0..r.random_range(2..n)).map(|_| (b'a' + r.random_range(0..26)) as char).collect()
    };
    let addresses: Vec<String> =
        (0..args.size).map(|_| format!("{} {} St., Town", rng.random_range(1..9999), word(&mut rng, 14))).collect();
    let names: Vec<String> = (0..args.size).map(|_| format!("{} {}", word(&mut rng, 9), word(&mut rng, 12))).collect();
    let mut times = Vec::new();
    let mut total = 0.0;
    for _ in 0..args.repeats.max(1) {
        let started = std::time::Instant::now();
        total = tributary_fleet::plan(&addresses, &names).total.value();
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{n} shipments × {n} drivers: median {:.3} s (min {:.3}, max {:.3}) over {} runs; total score {total}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        times.len(),
        n = args.size
    );
    Ok(())
}

async fn gather_fleet(config: Config, args: FleetArgs) -> anyhow::Result<()> {
    let nats = app::connect_nats(&config.nats).await?;
    let js = async_nats::jetstream::new(nats);
    app::ensure_streams(&js, &config.streams).await?;
    let report = if let (Some(d), Some(s)) = (&args.drivers, &args.shipments) {
        let drivers = tributary_gatherer::fleet::read_list(d).with_context(|| format!("reading {}", d.display()))?;
        let shipments = tributary_gatherer::fleet::read_list(s).with_context(|| format!("reading {}", s.display()))?;
        let r = tributary_gatherer::fleet::publish_lists(js, &drivers, &shipments).await;
        eprintln!(
            "published {} drivers and {} shipments: {} stored, {} duplicates, {} not delivered",
            drivers.len(),
            shipments.len(),
            r.stored,
            r.duplicates,
            r.failed.len()
        );
        r
    } else {
        let mut sim = config.gatherer.fleet.clone();
        sim.size = args.simulate.unwrap_or(sim.size);
        sim.interval_ms = args.interval.map_or(sim.interval_ms, |d| d.as_millis() as u64);
        sim.changes = args.changes;
        sim.seed = args.seed;
        eprintln!(
            "simulating {} drivers and {} shipments, one change every {} ms (Ctrl-C stops)",
            sim.size, sim.size, sim.interval_ms
        );
        let r = tributary_gatherer::fleet::simulate(js, sim, shutdown::on_signal()).await;
        eprintln!("published {} events: {} duplicates, {} not delivered", r.stored, r.duplicates, r.failed.len());
        r
    };
    report_undelivered(&report.failed);
    anyhow::ensure!(report.failed.is_empty(), "{} events were not delivered", report.failed.len());
    Ok(())
}

/// Lists the first publishes that were not delivered, with why.
fn report_undelivered(failed: &[(String, String)]) {
    for (subject, why) in failed.iter().take(20) {
        eprintln!("  not delivered to {subject}: {why}");
    }
    if failed.len() > 20 {
        eprintln!("  … and {} more", failed.len() - 20);
    }
}

async fn survey_provider(args: SurveyProviderArgs) -> anyhow::Result<()> {
    let listener = bind(&args.listen).await?;
    let provider = tributary_gatherer::surveys::Provider::new();
    let stop = shutdown::on_signal();
    if let Some(every) = args.generate_every {
        tokio::spawn(tributary_gatherer::surveys::generate(provider.clone(), every, rand::random(), stop.clone()));
    }
    eprintln!("survey provider {} on http://{}/api/v1/reporter (Ctrl-C stops)", args.name, listener.local_addr()?);
    tributary_gatherer::surveys::serve(listener, provider, stop).await.context("serving the provider")
}

/// The demo's equal-weight index over the simulated instruments.
async fn define_demo_index(c: &Connected) -> anyhow::Result<()> {
    let n = c.config.gatherer.prices.instruments.max(1);
    let weights = (0..n).map(|i| (format!("S{i}"), 1.0 / n as f64)).collect();
    let mut p = Publisher::new(c.js.clone(), 1);
    p.publish(Kind::Index.subject("demo"), Some(&format!("demo-index-{n}")), &IndexDefinition { base: 100.0, weights })
        .await;
    let report = p.finish().await;
    anyhow::ensure!(report.failed.is_empty(), "publishing the demo index: {:?}", report.failed);
    Ok(())
}

async fn gather_prices(mut config: Config, args: PricesArgs) -> anyhow::Result<()> {
    let nats = app::connect_nats(&config.nats).await?;
    let js = async_nats::jetstream::new(nats);
    app::ensure_streams(&js, &config.streams).await?;
    if let Some(path) = args.csv {
        let report = if path.as_os_str() == "-" {
            tributary_gatherer::prices::import_csv(js, tokio::io::stdin(), None, !args.quiet).await
        } else {
            let file = tokio::fs::File::open(&path).await.with_context(|| format!("opening {}", path.display()))?;
            let size = file.metadata().await.ok().map(|m| m.len());
            tributary_gatherer::prices::import_csv(js, file, size, !args.quiet).await
        };
        eprintln!(
            "imported {} lines ({} bytes): {} stored, {} duplicates, {} not delivered, {} bad lines",
            report.lines,
            report.bytes,
            report.publish.stored,
            report.publish.duplicates,
            report.publish.failed.len(),
            report.bad_lines
        );
        for e in &report.errors {
            eprintln!("  {e}");
        }
        for (subject, reason) in report.publish.failed.iter().take(20) {
            eprintln!("  not delivered to {subject}: {reason}");
        }
        anyhow::ensure!(report.publish.failed.is_empty() && report.bad_lines == 0, "import finished with errors");
        return Ok(());
    }
    let sim = &mut config.gatherer.prices;
    sim.instruments = args.instruments.unwrap_or(sim.instruments);
    sim.rate = args.rate.unwrap_or(sim.rate);
    sim.late_share = args.late_share.unwrap_or(sim.late_share);
    sim.correction_share = args.correction_share.unwrap_or(sim.correction_share);
    sim.limit = args.limit.or(sim.limit);
    sim.seed = args.seed.or(sim.seed);
    let started = std::time::Instant::now();
    let report = tributary_gatherer::prices::simulate(js, config.gatherer.prices, shutdown::on_signal()).await;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "published {} events in {secs:.1} s ({:.0}/s): {} duplicates, {} sent again, {} not delivered",
        report.stored,
        report.stored as f64 / secs.max(1e-9),
        report.duplicates,
        report.resent,
        report.failed.len()
    );
    report_undelivered(&report.failed);
    anyhow::ensure!(report.failed.is_empty(), "{} events were not delivered", report.failed.len());
    Ok(())
}

async fn gather_metrics(mut config: Config, args: MetricsArgs) -> anyhow::Result<()> {
    let nats = app::connect_nats(&config.nats).await?;
    let js = async_nats::jetstream::new(nats);
    app::ensure_streams(&js, &config.streams).await?;
    let stop = shutdown::on_signal();
    serve_metrics(args.metrics_listen, stop.clone()).await?;
    let sim = &mut config.gatherer.metrics;
    sim.servers = args.servers.unwrap_or(sim.servers);
    sim.interval_ms = args.interval.map_or(sim.interval_ms, |d| d.as_millis() as u64);
    sim.prefix = args.prefix.unwrap_or(sim.prefix.clone());
    sim.rounds = args.rounds.or(sim.rounds);
    sim.seed = args.seed.or(sim.seed);
    eprintln!("publishing {} servers every {} ms (Ctrl-C stops)", sim.servers, sim.interval_ms);
    let started = std::time::Instant::now();
    let report = tributary_gatherer::metrics::simulate(js, config.gatherer.metrics, stop).await;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "published {} samples (messages of all fields of one server) in {secs:.1} s ({:.0}/s): {} duplicates, {} sent again, {} not delivered",
        report.stored,
        report.stored as f64 / secs.max(1e-9),
        report.duplicates,
        report.resent,
        report.failed.len()
    );
    report_undelivered(&report.failed);
    anyhow::ensure!(report.failed.is_empty(), "{} samples were not delivered", report.failed.len());
    Ok(())
}

async fn import_ports(config: Config, args: PortsArgs) -> anyhow::Result<()> {
    let nats = app::connect_nats(&config.nats).await?;
    let js = async_nats::jetstream::new(nats);
    app::ensure_streams(&js, &config.streams).await?;
    let started = std::time::Instant::now();
    let report = if args.file.as_os_str() == "-" {
        tributary_gatherer::ports::import(js, tokio::io::stdin(), None, !args.quiet).await
    } else {
        let file =
            tokio::fs::File::open(&args.file).await.with_context(|| format!("opening {}", args.file.display()))?;
        let size = file.metadata().await.ok().map(|m| m.len());
        tributary_gatherer::ports::import(js, file, size, !args.quiet).await
    };
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    eprintln!(
        "read {} ports ({} bytes, {:.1} MB/s, {:.0} ports/s): {} published, {} duplicates, {} invalid (dead-lettered by the processor), {} skipped, {} not delivered; decoder buffer peak {} bytes",
        report.entries,
        report.bytes,
        report.bytes as f64 / secs / 1e6,
        report.entries as f64 / secs,
        report.publish.stored,
        report.publish.duplicates,
        report.invalid.len(),
        report.skipped.len(),
        report.publish.failed.len(),
        report.max_buffer
    );
    for (at, key, reason) in report.invalid.iter().chain(&report.skipped).take(20) {
        eprintln!("  {at}: {key}: {reason}");
    }
    if let Some(e) = &report.syntax_error {
        eprintln!("stopped: {e} (everything before it was published)");
    }
    anyhow::ensure!(
        report.syntax_error.is_none() && report.publish.failed.is_empty() && report.skipped.is_empty(),
        "import finished with errors"
    );
    Ok(())
}

/// `tributary import FILE --kind K`.
async fn import(config: Config, args: ImportArgs) -> anyhow::Result<()> {
    match args.kind.as_str() {
        "ports" => return import_ports(config, PortsArgs { file: args.file, quiet: args.quiet }).await,
        "prices-csv" => {
            let a = PricesArgs {
                csv: Some(args.file),
                instruments: None,
                rate: None,
                late_share: None,
                correction_share: None,
                limit: None,
                seed: None,
                quiet: args.quiet,
            };
            return gather_prices(config, a).await;
        }
        _ => {}
    }
    let (input, size): (Box<dyn tokio::io::AsyncRead + Unpin + Send>, Option<u64>) = if args.file.as_os_str() == "-" {
        (Box::new(tokio::io::stdin()), None)
    } else {
        let f = tokio::fs::File::open(&args.file).await.with_context(|| format!("opening {}", args.file.display()))?;
        let size = f.metadata().await.ok().map(|m| m.len());
        (Box::new(f), size)
    };
    // Bytes read and entries/s, as the other importers show.
    let bar = tributary_gatherer::byte_progress_bar(size, !args.quiet);
    let started = std::time::Instant::now();
    let show = |p: &tributary_gatherer::Progress| {
        bar.set_position(p.bytes);
        let rate = p.entries as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{} lines, {rate:.0}/s, {} refused", p.entries, p.invalid));
    };
    if args.kind == "numbers" {
        let r = tributary_gatherer::numbers::stats(input, &mut |p, _| show(p)).await;
        bar.finish_and_clear();
        println!("{}", serde_json::to_string_pretty(&r.stats)?);
        for e in &r.errors {
            eprintln!("  {e}");
        }
        return Ok(());
    }
    let nats = app::connect_nats(&config.nats).await?;
    let js = async_nats::jetstream::new(nats);
    app::ensure_streams(&js, &config.streams).await?;
    let r = tributary_gatherer::ndjson::import_with(js, input, None, &mut |p| show(p)).await;
    bar.finish_and_clear();
    eprintln!(
        "read {} lines ({} bytes): {} published, {} duplicates, {} refused, {} not delivered",
        r.progress.entries,
        r.progress.bytes,
        r.publish.stored,
        r.publish.duplicates,
        r.progress.invalid,
        r.publish.failed.len()
    );
    for e in &r.errors {
        eprintln!("  {e}");
    }
    anyhow::ensure!(r.publish.failed.is_empty() && r.errors.is_empty(), "import finished with errors");
    Ok(())
}
