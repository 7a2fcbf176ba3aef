//! The benchmark's report: what it measured, as JSON and as a table, and the machine it ran on.

use super::floor::{self, Quantiles};
use super::pipeline;
use super::stats::Stats;
use serde::Serialize;
use tributary::config::Config;
use tributary::local;

/// `--freshness-rates`: the latency at each offered rate.
#[derive(Debug, Serialize)]
pub(super) struct FreshnessPoint {
    pub(super) offered_per_s: f64,
    pub(super) achieved_per_s: f64,
    /// Publish → commit.
    #[serde(flatten)]
    pub(super) latency: Quantiles,
    pub(super) mean_batch_events: f64,
    pub(super) mean_batch_ms: f64,
    /// Mean ms of each phase of a unit (`tributary_phase_seconds`).
    pub(super) phases_ms: pipeline::Phases,
    /// The 99th percentile of each phase, ms.
    pub(super) phases_p99_ms: pipeline::Phases,
    /// Who used the CPU while Tributary ran at this rate.
    pub(super) cpu: Option<super::cpu::CpuUse>,
    /// What JetStream alone and the baseline pipeline reach at this rate, just before.
    pub(super) floor: floor::Floor,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub(super) machine: Machine,
    pub(super) parameters: serde_json::Value,
    pub(super) raw: RawReport,
    pub(super) baseline: BaselineReport,
    pub(super) tributary: TributaryReport,
    pub(super) api: ApiReport,
    pub(super) ratios: Ratios,
}

#[derive(Debug, Serialize)]
pub(super) struct Machine {
    pub(super) cpus: usize,
    pub(super) memory_gib: f64,
    pub(super) kernel: String,
    pub(super) nats_server: String,
    pub(super) postgres: String,
    pub(super) tributary: &'static str,
    pub(super) date: String,
}

#[derive(Debug, Serialize)]
pub(super) struct RawReport {
    pub(super) jetstream_publish_per_s: f64,
    pub(super) jetstream_publish: Stats,
    pub(super) jetstream_consume_per_s: f64,
    pub(super) jetstream_consume: Stats,
    pub(super) pg_upsert_rows_per_s: f64,
    pub(super) pg_upsert: Stats,
    pub(super) message_bytes: usize,
    /// JetStream arrival → delivery to a pull consumer at the freshness rate.
    pub(super) jetstream_freshness: Quantiles,
}

#[derive(Debug, Serialize)]
pub(super) struct BaselineReport {
    pub(super) events_per_s: f64,
    pub(super) runs: Stats,
    /// JetStream arrival → commit at the freshness rate, taking whatever is ready (at most 1000).
    pub(super) freshness: Quantiles,
    /// The same, read from the processor's histogram buckets as Tributary's are: the ratio compares these.
    pub(super) freshness_bucketed: Quantiles,
    /// Who used the CPU during the baseline's freshness run.
    pub(super) freshness_cpu: Option<super::cpu::CpuUse>,
}

#[derive(Debug, Serialize)]
pub(super) struct TributaryReport {
    pub(super) events_per_s: f64,
    pub(super) runs: Stats,
    pub(super) freshness_offered_per_s: f64,
    pub(super) freshness_achieved_per_s: f64,
    /// Publish → commit at the freshness rate.
    pub(super) freshness: Quantiles,
    /// Where a unit's time goes during the freshness run: mean ms of each phase.
    pub(super) freshness_phases_ms: pipeline::Phases,
    /// The 99th percentile of each phase, ms.
    pub(super) freshness_phases_p99_ms: pipeline::Phases,
    /// Who used the CPU during the freshness run.
    pub(super) freshness_cpu: Option<super::cpu::CpuUse>,
    pub(super) peak_rss_mb: f64,
    /// Two processors sharing the partitions (`parameters.partitions`): their combined rate.
    pub(super) two_replicas_events_per_s: f64,
    pub(super) two_replicas: Stats,
    /// One processor owning every partition (a consume loop each): its rate. Named for the default count.
    pub(super) two_partitions_events_per_s: f64,
    pub(super) two_partitions: Stats,
    /// Whether every partitioned run (two replicas, or one process with two partitions) stored exactly
    /// the points, index levels and rollups the unpartitioned processor did.
    pub(super) two_replicas_equal_to_one: bool,
    /// Two processors, one killed with SIGKILL midway and never restarted: the time to the next commit
    /// on its partitions, and whether the survivor stored what one processor did.
    pub(super) failover: super::failover::Failover,
    /// Spans the processors exported over OTLP during the throughput, scale-out and freshness phases.
    pub(super) spans_exported: u64,
}

#[derive(Debug, Serialize)]
pub(super) struct ApiReport {
    pub(super) generator: &'static str,
    pub(super) max_rps: f64,
    pub(super) saturation: Stats,
    pub(super) p99_ms: f64,
    pub(super) p50_ms: f64,
    pub(super) fixed_rate_per_s: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct Ratios {
    pub(super) tributary_over_baseline: f64,
    pub(super) tributary_over_jetstream_publish: f64,
    pub(super) tributary_over_pg_upsert: f64,
    pub(super) two_replicas_over_one: f64,
    pub(super) two_partitions_over_one: f64,
    pub(super) two_partitions_over_baseline: f64,
    /// Tributary's freshness p99 over the baseline's at the same offered rate, both read from the buckets.
    pub(super) freshness_p99_over_baseline: f64,
}

pub(super) async fn machine(config: &Config) -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let memory_kb: f64 = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    let nats_server = local::nats_server_bin()
        .ok()
        .and_then(|b| std::process::Command::new(b).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let postgres = super::harness::server_version(&config.database.url).await.unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        memory_gib: (memory_kb / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        nats_server,
        postgres,
        tributary: env!("CARGO_PKG_VERSION"),
        date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
}

pub(super) fn print_table(r: &Report) {
    let line = |name: &str, text: &str| println!("{name:<44} {text}");
    let row = |name: &str, s: &Stats, unit: &str| {
        line(
            name,
            &format!("{:>12.0} {unit:<10} (min {:.0}, max {:.0}, n={})", s.median, s.min, s.max, s.samples.len()),
        )
    };
    let latency = |name: &str, q: &Quantiles, at: &str| {
        line(name, &format!("p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms at {at}", q.p50_ms, q.p99_ms, q.p999_ms))
    };
    let (raw, baseline, tributary) = (&r.raw, &r.baseline, &r.tributary);
    println!();
    println!(
        "machine: {} cpus, {} GiB, kernel {}, {}, PostgreSQL {}",
        r.machine.cpus, r.machine.memory_gib, r.machine.kernel, r.machine.nats_server, r.machine.postgres
    );
    line("measure", &format!("{:>12} {:<10}", "median", "unit"));
    row("raw JetStream publish (async acks)", &raw.jetstream_publish, "msgs/s");
    row("raw JetStream pull-consume (ack each)", &raw.jetstream_consume, "msgs/s");
    row("raw PostgreSQL UNNEST upsert", &raw.pg_upsert, "rows/s");
    row("baseline pipeline (raw rows only)", &baseline.runs, "events/s");
    row("Tributary (all derived + index + rollups)", &tributary.runs, "events/s");
    latency(
        "Tributary freshness (publish → commit)",
        &tributary.freshness,
        &format!(
            "{:.0}/s offered ({:.0}/s achieved)",
            tributary.freshness_offered_per_s, tributary.freshness_achieved_per_s
        ),
    );
    latency("baseline freshness (publish → commit)", &baseline.freshness, "the same rate");
    latency("  read from the buckets, as Tributary's", &baseline.freshness_bucketed, "what the ratio compares");
    latency("JetStream alone (publish → delivery)", &raw.jetstream_freshness, "the same rate");
    line("  where a unit's time goes (mean ms)", &phases(&tributary.freshness_phases_ms));
    line("  and its slowest (p99 ms)", &phases(&tributary.freshness_phases_p99_ms));
    if let Some(cpu) = tributary.freshness_cpu {
        line("  the machine meanwhile", &cpu.to_string());
    }
    if let Some(cpu) = r.baseline.freshness_cpu {
        line("  the machine during the baseline's", &cpu.to_string());
    }
    line("Tributary processor peak RSS", &format!("{:>12.0} MB", tributary.peak_rss_mb));
    line(
        "Tributary spans exported",
        &format!("{:>12} (OTLP/HTTP, to the bench's collector)", tributary.spans_exported),
    );
    let partitions = &r.parameters["partitions"];
    row(&format!("Tributary, two processors sharing {partitions} partitions"), &tributary.two_replicas, "events/s");
    row(&format!("Tributary, one process, {partitions} partitions"), &tributary.two_partitions, "events/s");
    line("partitioned runs stored what one did", if tributary.two_replicas_equal_to_one { "yes" } else { "NO" });
    let f = &tributary.failover;
    line(
        "failover: one of two processors SIGKILLed",
        &format!(
            "{:>12} s to the next commit on {}, {:.1} s to the backlog stored (takeover_secs {}; the survivor \
             stored what one did: {})",
            f.takeover_s.map_or("-".to_owned(), |s| format!("{s:.1}")),
            f.partitions.join(", "),
            f.settled_s,
            f.takeover_setting_s,
            if f.equal { "yes" } else { "NO" }
        ),
    );
    row(&format!("API GET series ?limit=100, saturation ({})", r.api.generator), &r.api.saturation, "req/s");
    line(
        "API latency at a fixed rate",
        &format!("p50 {:.2} ms, p99 {:.2} ms at {:.0} req/s", r.api.p50_ms, r.api.p99_ms, r.api.fixed_rate_per_s),
    );
    println!(
        "ratios: Tributary/baseline {:.2}, Tributary/raw publish {:.2}, Tributary/raw upsert {:.2}, two replicas/one {:.2}, two partitions/one {:.2}, two partitions/baseline {:.2}, freshness p99 Tributary/baseline {:.2}",
        r.ratios.tributary_over_baseline,
        r.ratios.tributary_over_jetstream_publish,
        r.ratios.tributary_over_pg_upsert,
        r.ratios.two_replicas_over_one,
        r.ratios.two_partitions_over_one,
        r.ratios.two_partitions_over_baseline,
        r.ratios.freshness_p99_over_baseline
    );
    println!();
}

/// `phase ms, …` in phase order.
pub(super) fn phases(ms: &pipeline::Phases) -> String {
    ms.iter().map(|(k, v)| format!("{k} {v:.2}")).collect::<Vec<_>>().join(", ")
}
