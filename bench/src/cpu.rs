//! Who used the CPU during a measurement, read from `/proc` (Linux; elsewhere nothing is reported): the
//! machine's busy cores, and CPU time per event of the benchmark's nats-server, of PostgreSQL (every
//! local `postgres` process: the configured server's backends, its WAL writer and checkpointer), of the
//! processor and of the benchmark process itself (the publisher, and the baseline's consumer). On a
//! machine the pipeline shares with its server, database and publisher, latency follows how busy the
//! cores are: this is what each side adds.

use serde::Serialize;
use std::time::Instant;

/// `/proc`'s clock ticks per second (`USER_HZ`, 100 on every Linux the benchmark runs on).
const TICKS_PER_S: f64 = 100.0;

/// CPU use over one measurement.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuUse {
    /// Busy cores of the whole machine (every process), mean over the measurement.
    pub machine_cores: f64,
    /// CPU µs per event of the benchmark's nats-server.
    pub nats_us: f64,
    /// CPU µs per event of every local `postgres` process.
    pub postgres_us: f64,
    /// CPU µs per event of the processor (0 where none ran).
    pub processor_us: f64,
    /// CPU µs per event of the benchmark process.
    pub bench_us: f64,
}

impl std::fmt::Display for CpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} cores busy; CPU µs/event: nats-server {:.1}, PostgreSQL {:.1}, processor {:.1}, bench {:.1}",
            self.machine_cores, self.nats_us, self.postgres_us, self.processor_us, self.bench_us
        )
    }
}

/// The processes a measurement watches, and their CPU ticks when it began.
pub(super) struct Watch {
    nats: u32,
    processor: Option<u32>,
    start: Option<Ticks>,
    at: Instant,
}

#[derive(Clone, Copy)]
struct Ticks {
    machine: u64,
    nats: u64,
    postgres: u64,
    processor: u64,
    bench: u64,
}

impl Watch {
    /// Starts watching the nats-server `nats` and, if given, the processor `processor`.
    pub(super) fn start(nats: u32, processor: Option<u32>) -> Watch {
        Watch { nats, processor, start: ticks(nats, processor), at: Instant::now() }
    }

    /// The use since [`Watch::start`], over `events` events; `None` without `/proc`.
    pub(super) fn stop(&self, events: u64) -> Option<CpuUse> {
        let (a, b) = (self.start?, ticks(self.nats, self.processor)?);
        let secs = self.at.elapsed().as_secs_f64();
        let per_event = |a: u64, b: u64| b.saturating_sub(a) as f64 / TICKS_PER_S * 1e6 / events.max(1) as f64;
        Some(CpuUse {
            machine_cores: b.machine.saturating_sub(a.machine) as f64 / TICKS_PER_S / secs,
            nats_us: per_event(a.nats, b.nats),
            postgres_us: per_event(a.postgres, b.postgres),
            processor_us: per_event(a.processor, b.processor),
            bench_us: per_event(a.bench, b.bench),
        })
    }
}

fn ticks(nats: u32, processor: Option<u32>) -> Option<Ticks> {
    let machine = machine_busy(&std::fs::read_to_string("/proc/stat").ok()?)?;
    let mut postgres = 0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if let Some((comm, t)) = process(pid)
            && (comm.starts_with("postgres") || comm == "postmaster")
        {
            postgres += t;
        }
    }
    let of = |pid: Option<u32>| pid.and_then(process).map_or(0, |p| p.1);
    Some(Ticks {
        machine,
        nats: of(Some(nats)),
        postgres,
        processor: of(processor),
        bench: of(Some(std::process::id())),
    })
}

/// Busy ticks of every CPU: the first line of `/proc/stat` less its idle and iowait.
fn machine_busy(stat: &str) -> Option<u64> {
    let fields: Vec<u64> =
        stat.lines().next()?.strip_prefix("cpu ")?.split_whitespace().map_while(|f| f.parse().ok()).collect();
    let all: u64 = fields.iter().take(8).sum();
    Some(all - fields.get(3)? - fields.get(4)?)
}

/// A process's name and its user plus system ticks, threads included.
fn process(pid: u32) -> Option<(String, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `/proc/<pid>/stat`: the name is in parentheses (and may hold spaces); utime and stime are the 14th
/// and 15th fields.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let rest: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((stat[open + 1..close].to_owned(), utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proc_files_are_read_as_the_kernel_writes_them() {
        let stat = "42 (postgres: wal writer) S 1 42 42 0 -1 4194560 120 0 0 0 7 5 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat(stat), Some(("postgres: wal writer".into(), 12)));
        let machine = "cpu  100 5 50 1000 20 3 2 0 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        // user + nice + system + irq + softirq + steal; idle and iowait are not busy.
        assert_eq!(machine_busy(machine), Some(160));
    }

    #[test]
    fn this_process_is_watched_on_linux() {
        let me = std::process::id();
        let watch = Watch::start(me, None);
        let before = process(me).expect("/proc is there on Linux").1;
        // Spin until the kernel has charged this process two ticks (20 ms of CPU), however long a busy
        // machine takes to give it them.
        let mut x = 0u64;
        while process(me).expect("this process").1 < before + 2 {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
        }
        std::hint::black_box(x);
        let used = watch.stop(1).expect("/proc is there on Linux");
        // Two ticks over one event: at least 20,000 µs of this process (watched as the bench and, here,
        // as the nats-server too), and the machine was busy meanwhile.
        assert!(used.bench_us >= 20_000.0 && used.nats_us >= 20_000.0, "{used:?}");
        assert!(used.machine_cores > 0.0 && used.processor_us == 0.0, "{used:?}");
    }
}
