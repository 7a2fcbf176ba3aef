//! `tributary`: every role of the pipeline behind one command. `main` parses the command line, reads the
//! configuration, starts telemetry and runs the command ([`commands`], one module each).

mod commands;

use clap::{Parser, Subcommand};
use commands::{fleet::FleetCmd, gatherer::Gatherer, import::ImportArgs, roles, up::UpArgs};
use std::path::PathBuf;
use tributary::config::Config;

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
    Processor(roles::RoleArgs),
    /// Run the API role.
    Api(roles::ApiArgs),
    /// Run the aggregator role: pull survey providers on an interval and for fresh reads.
    Aggregator(roles::AggregatorArgs),
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
    let config = Config::load(cli.config.as_deref())?;
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
        Command::Up(args) => commands::up::run(config, args).await,
        Command::Processor(args) => roles::processor(config, args).await,
        Command::Api(args) => roles::api(config, args).await,
        Command::Aggregator(args) => roles::aggregator(config, args).await,
        Command::Migrate => roles::migrate(config).await,
        Command::Fleet(cmd) => commands::fleet::run(cmd),
        Command::Gatherer(g) => commands::gatherer::run(config, g).await,
        Command::Import(args) => commands::import::run(config, args).await,
        Command::Bench(args) => tributary::bench::run(config, args).await,
        Command::BenchPorts(args) => tributary::bench::ports::run(args).await,
    }
}
