//! `tributary-bench`: the benchmark's command line (also reached as `tributary bench` and `tributary
//! bench-ports`, which exec this binary). `main` parses it, reads the configuration, starts telemetry and
//! runs [`tributary_bench::run`] or, with `ports`, [`tributary_bench::ports::run`].

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tributary::config::Config;
use tributary_bench::BenchArgs;
use tributary_bench::ports::PortsBenchArgs;

/// The allocator of the `tributary` binary, so that the API the benchmark serves in this process
/// ([`tributary_bench`]'s `http` phase) allocates as the deployed one does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measure throughput, freshness and API latency against the raw limits of NATS and PostgreSQL.
#[derive(Parser)]
#[command(name = "tributary-bench", version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Configuration file (default: ./tributary.toml if present). Environment variables override it.
    #[arg(long, global = true, env = "TRIBUTARY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Stream a generated ports file of a given size: MB/s, ports/s and peak RSS beside the raw publish rate.
    Ports(PortsBenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tributary-bench: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tributary-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    let _telemetry = tributary_telemetry::init("tributary-bench", &config.telemetry)?;
    match cli.command {
        Some(Command::Ports(args)) => tributary_bench::ports::run(args).await,
        None => tributary_bench::run(config, cli.bench).await,
    }
}
