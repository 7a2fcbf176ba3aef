//! `tributary bench` and `tributary bench-ports`: the benchmark is the `tributary-bench` binary (crate
//! `bench/`), so this binary carries none of its code or dependencies; these commands exec the one beside
//! this executable, from the same build, with the arguments as given.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The commands that run the benchmark.
#[derive(clap::Subcommand)]
pub(crate) enum BenchCmd {
    /// Measure throughput, freshness and API latency against the raw limits of NATS and PostgreSQL (runs
    /// the tributary-bench binary; `tributary bench --help` lists its options).
    Bench(BenchArgs),
    /// Stream a generated ports file of a given size: MB/s, ports/s and peak RSS beside the raw publish rate
    /// (runs `tributary-bench ports`).
    BenchPorts(BenchArgs),
}

/// Everything after `bench` (or `bench-ports`), handed to `tributary-bench` untouched, `--help` included.
#[derive(clap::Args)]
#[command(disable_help_flag = true)]
pub(crate) struct BenchArgs {
    /// tributary-bench's options, as given (`tributary bench --help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0.., value_name = "ARGS")]
    args: Vec<OsString>,
}

/// Replaces this process with `tributary-bench ARGS` (`tributary-bench ports ARGS` for `bench-ports`),
/// passing on `--config` as `TRIBUTARY_CONFIG`, which `tributary-bench` reads too. Returns only the error
/// that kept it from doing so.
pub(crate) fn exec(config: Option<&Path>, cmd: BenchCmd) -> anyhow::Error {
    let exe = match bench_exe() {
        Ok(exe) => exe,
        Err(e) => return e,
    };
    let mut command = Command::new(&exe);
    match cmd {
        BenchCmd::Bench(args) => command.args(args.args),
        BenchCmd::BenchPorts(args) => command.arg("ports").args(args.args),
    };
    if let Some(config) = config {
        command.env("TRIBUTARY_CONFIG", config);
    }
    anyhow::Error::new(replace_with(command)).context(format!("running {}", exe.display()))
}

/// `tributary-bench` beside this executable, or an error saying how to build it.
fn bench_exe() -> anyhow::Result<PathBuf> {
    tributary_local::sibling_binary("tributary-bench", "tributary-bench").map_err(anyhow::Error::msg)
}

#[cfg(unix)]
fn replace_with(mut cmd: Command) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    cmd.exec()
}

/// No exec here: run it, and exit as it did.
#[cfg(not(unix))]
fn replace_with(mut cmd: Command) -> std::io::Error {
    match cmd.status() {
        Ok(status) => std::process::exit(status.code().unwrap_or(1)),
        Err(e) => e,
    }
}
