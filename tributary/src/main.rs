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
    /// Run the aggregator role.
    Aggregator(RoleArgs),
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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
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
            c.processor(stop).await
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
            let stop = shutdown::on_signal();
            serve_metrics(args.metrics_listen, stop.clone()).await?;
            tributary_aggregator::run(config.aggregator, stop).await
        }
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

async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))
}

/// `/metrics` and `/healthz` for roles without the API.
async fn serve_metrics(addr: Option<String>, stop: CancellationToken) -> anyhow::Result<()> {
    let Some(addr) = addr else { return Ok(()) };
    let listener = bind(&addr).await?;
    let handle = tributary_telemetry::metrics();
    let router = axum::Router::new()
        .route("/metrics", axum::routing::get(move || std::future::ready(handle.render())))
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await });
    Ok(())
}

async fn up(config: Config, demo: bool) -> anyhow::Result<()> {
    let c = app::connect(config).await?;
    let stop = shutdown::on_signal();
    let listener = bind(&c.config.api.listen).await?;
    let addr = listener.local_addr()?;
    let mut tasks = tokio::task::JoinSet::new();
    let (p, s) = (c.clone(), stop.clone());
    tasks.spawn(async move { p.processor(s).await.context("processor") });
    let (a, s) = (c.config.aggregator.clone(), stop.clone());
    tasks.spawn(async move { tributary_aggregator::run(a, s).await.context("aggregator") });
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
        let (js, sim, s) = (c.js.clone(), c.config.gatherer.metrics.clone(), stop.clone());
        tasks.spawn(async move {
            let report = tributary_gatherer::metrics::simulate(js, sim, s).await;
            tracing::info!(stored = report.stored, failed = report.failed.len(), "metrics simulator stopped");
            Ok(())
        });
    }
    eprintln!("tributary is up: http://{addr}/  (API docs: http://{addr}/docs; Ctrl-C stops)");
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
    if tokio::time::timeout(Duration::from_secs(15), async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 15 s");
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
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
    let nats = app::connect_nats(&config.nats.url).await?;
    let js = async_nats::jetstream::new(nats);
    tributary_broker::streams::ensure(&js, &config.streams).await?;
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
        for (line, reason) in &report.errors {
            eprintln!("  line {line}: {reason}");
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
        "published {} events in {secs:.1} s ({:.0}/s): {} duplicates, {} not delivered",
        report.stored,
        report.stored as f64 / secs.max(1e-9),
        report.duplicates,
        report.failed.len()
    );
    anyhow::ensure!(report.failed.is_empty(), "{} events were not delivered", report.failed.len());
    Ok(())
}

async fn gather_metrics(mut config: Config, args: MetricsArgs) -> anyhow::Result<()> {
    let nats = app::connect_nats(&config.nats.url).await?;
    let js = async_nats::jetstream::new(nats);
    tributary_broker::streams::ensure(&js, &config.streams).await?;
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
        "published {} samples (messages of all fields of one server) in {secs:.1} s ({:.0}/s): {} duplicates, {} not delivered",
        report.stored,
        report.stored as f64 / secs.max(1e-9),
        report.duplicates,
        report.failed.len()
    );
    anyhow::ensure!(report.failed.is_empty(), "{} samples were not delivered", report.failed.len());
    Ok(())
}

async fn import_ports(config: Config, args: PortsArgs) -> anyhow::Result<()> {
    let nats = app::connect_nats(&config.nats.url).await?;
    let js = async_nats::jetstream::new(nats);
    tributary_broker::streams::ensure(&js, &config.streams).await?;
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
    let input: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if args.file.as_os_str() == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(tokio::fs::File::open(&args.file).await.with_context(|| format!("opening {}", args.file.display()))?)
    };
    if args.kind == "numbers" {
        let r = tributary_gatherer::numbers::stats(input, &mut |_, _| {}).await;
        println!("{}", serde_json::to_string_pretty(&r.stats)?);
        for (line, why) in &r.errors {
            eprintln!("  line {line}: {why}");
        }
        return Ok(());
    }
    let nats = app::connect_nats(&config.nats.url).await?;
    let js = async_nats::jetstream::new(nats);
    tributary_broker::streams::ensure(&js, &config.streams).await?;
    let r = tributary_gatherer::ndjson::import_with(js, input, None, &mut |_| {}).await;
    eprintln!(
        "read {} lines ({} bytes): {} published, {} duplicates, {} refused, {} not delivered",
        r.progress.entries,
        r.progress.bytes,
        r.publish.stored,
        r.publish.duplicates,
        r.progress.invalid,
        r.publish.failed.len()
    );
    for (line, why) in &r.errors {
        eprintln!("  line {line}: {why}");
    }
    anyhow::ensure!(r.publish.failed.is_empty() && r.errors.is_empty(), "import finished with errors");
    Ok(())
}
