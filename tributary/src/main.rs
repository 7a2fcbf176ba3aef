//! `tributary`: every role of the pipeline behind one command. `main` parses the command line, reads the
//! configuration, starts telemetry and runs the command ([`commands`], one module each); `bench` and
//! `bench-ports` hand over to the `tributary-bench` binary instead ([`commands::bench`]).

mod commands;

use clap::{Parser, Subcommand};
use commands::{bench::BenchCmd, fleet::FleetCmd, gatherer::Gatherer, import::ImportArgs, roles, up::UpArgs};
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
    #[command(flatten)]
    Run(RunCmd),
    #[command(flatten)]
    Bench(BenchCmd),
}

/// The commands this binary runs itself.
#[derive(Subcommand)]
enum RunCmd {
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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Run(command) => command,
        // Another binary, which reads the configuration and starts telemetry itself.
        Command::Bench(bench) => {
            let e = commands::bench::exec(cli.config.as_deref(), bench);
            eprintln!("tributary: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // A file import runs on one thread: the reader, the publisher and the NATS connection hand every
    // message to each other, and across threads each handoff is a wake-up through the kernel.
    let mut runtime = match command {
        RunCmd::Gatherer(Gatherer::Ports(_)) | RunCmd::Import(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match runtime.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tributary: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.config, command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tributary: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: Option<PathBuf>, command: RunCmd) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref())?;
    let service = match &command {
        RunCmd::Up(_) => "tributary",
        RunCmd::Processor(_) => "tributary-processor",
        RunCmd::Api(_) => "tributary-api",
        RunCmd::Aggregator(_) => "tributary-aggregator",
        RunCmd::Fleet(_) => "tributary-fleet",
        RunCmd::Gatherer(_) => "tributary-gatherer",
        RunCmd::Migrate => "tributary-migrate",
        RunCmd::Import(_) => "tributary-import",
    };
    let _telemetry = tributary_telemetry::init(service, &config.telemetry)?;
    match command {
        RunCmd::Up(args) => commands::up::run(config, args).await,
        RunCmd::Processor(args) => roles::processor(config, args).await,
        RunCmd::Api(args) => roles::api(config, args).await,
        RunCmd::Aggregator(args) => roles::aggregator(config, args).await,
        RunCmd::Migrate => roles::migrate(config).await,
        RunCmd::Fleet(cmd) => commands::fleet::run(cmd),
        RunCmd::Gatherer(g) => commands::gatherer::run(config, g).await,
        RunCmd::Import(args) => commands::import::run(config, args).await,
    }
}
