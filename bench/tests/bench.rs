//! The benchmark as it is run: `tributary-bench`, and `tributary bench` handing over to it, against the test
//! PostgreSQL (it starts its own nats-server), with the smallest settings that still exercise every phase.
//!
//! The benchmark runs the `tributary` binary beside it as the processor and the ports importer, so these
//! tests need one built from the same sources: `cargo test --workspace` builds it (the `tributary` package
//! has tests of its own); alone, `cargo build -p tributary` first.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The benchmark's binary, built for these tests.
const BENCH: &str = env!("CARGO_BIN_EXE_tributary-bench");

/// The `tributary` binary beside [`BENCH`].
fn tributary() -> PathBuf {
    let exe = Path::new(BENCH).with_file_name("tributary");
    assert!(
        exe.is_file(),
        "{} is missing: the benchmark runs it; test with --workspace, or cargo build -p tributary first",
        exe.display()
    );
    exe
}

/// Runs `program ARGS` (`tributary-bench …`, or `tributary bench …`) against the test PostgreSQL, with no
/// NATS configured.
fn run(program: &Path, args: &[&str]) -> Output {
    tributary();
    Command::new(program)
        .args(args)
        .env("RUST_LOG", "error")
        .env(
            "DATABASE_URL",
            std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
        )
        .env_remove("NATS_URL")
        .env_remove("TRIBUTARY_CONFIG")
        .output()
        .expect("running the benchmark")
}

/// [`run`], checked to have succeeded; its standard output.
fn bench(program: &Path, args: &[&str]) -> Vec<u8> {
    let out = run(program, args);
    assert!(out.status.success(), "bench failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn bench_json_reports_every_promised_figure() {
    let out = bench(
        Path::new(BENCH),
        &[
            "--json",
            "--events",
            "3000",
            "--instruments",
            "20",
            "--repeats",
            "1",
            "--rate",
            "500",
            "--freshness-secs",
            "1",
            "--api-secs",
            "0.5",
            "--api-rate",
            "100",
            "--partitions",
            "3",
        ],
    );
    let report: serde_json::Value = serde_json::from_slice(&out).expect("bench --json prints one JSON object");
    for key in [
        "raw.jetstream_publish_per_s",
        "raw.jetstream_consume_per_s",
        "raw.pg_upsert_rows_per_s",
        "baseline.events_per_s",
        "tributary.events_per_s",
        "tributary.freshness.p50_ms",
        "tributary.freshness.p99_ms",
        "tributary.peak_rss_mb",
        "api.max_rps",
        "api.p99_ms",
        "baseline.freshness.p50_ms",
        "baseline.freshness.p99_ms",
        "raw.jetstream_freshness.p99_ms",
        "ratios.freshness_p99_over_baseline",
    ] {
        let pointer = format!("/{}", key.replace('.', "/"));
        let v = report.pointer(&pointer).and_then(|v| v.as_f64()).unwrap_or_else(|| panic!("{key} missing: {report}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    assert_eq!(report["machine"]["cpus"].as_u64(), Some(std::thread::available_parallelism().unwrap().get() as u64));
    // Tributary's path computes metric rollups too (one message per 10 price events, 100 hosts), and the
    // partitioned runs stored what one did, rollups included.
    assert_eq!(report["parameters"]["metric_messages"].as_u64(), Some(300), "{report}");
    assert_eq!(report["parameters"]["partitions"].as_u64(), Some(3), "{report}");
    assert_eq!(report["tributary"]["two_replicas_equal_to_one"].as_bool(), Some(true), "{report}");
    // One of two processors killed for good: the survivor stored what one processor did (the backlog is
    // too small here for a takeover time, which the default run measures).
    assert_eq!(report["tributary"]["failover"]["equal"].as_bool(), Some(true), "{report}");
    // Traces are exported as deployed, to the bench's own OTLP collector.
    assert!(report["tributary"]["spans_exported"].as_u64() > Some(0), "{report}");
}

/// `--partitions` below two would leave nothing to share: refused before anything runs.
#[test]
fn bench_refuses_fewer_than_two_partitions() {
    let out = run(Path::new(BENCH), &["--partitions", "1"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("--partitions") && said.contains("2..=64"), "{said}");
}

/// `--corrections N`: a correction of the first of N points, its time, the processor's memory growth
/// meanwhile and the other instruments' freshness with and without it.
#[test]
fn bench_corrections_reports_what_a_deep_correction_costs() {
    let out = bench(
        Path::new(BENCH),
        &["--json", "--corrections", "3000", "--instruments", "20", "--rate", "200", "--freshness-secs", "1"],
    );
    let report: serde_json::Value = serde_json::from_slice(&out).expect("one JSON array");
    let c = &report[0];
    assert_eq!(c["points"].as_u64(), Some(3000), "{report}");
    for key in ["ingest_secs", "correction_ms", "others_p99_ms_without", "others_p99_ms_with"] {
        let v = c[key].as_f64().unwrap_or_else(|| panic!("{key} missing: {report}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    assert!(c["rss_growth_mb"].as_f64().is_some_and(|v| v.is_finite() && v >= 0.0), "{report}");
}

/// `tributary bench --freshness-rates`, through the `tributary` binary as the documentation runs it.
#[test]
fn bench_freshness_rates_reports_the_latency_at_each_rate() {
    let args = ["bench", "--json", "--freshness-rates", "200,400", "--instruments", "20", "--freshness-secs", "1"];
    let out = bench(&tributary(), &args);
    let points: Vec<serde_json::Value> = serde_json::from_slice(&out).expect("a JSON array");
    let offered: Vec<f64> = points.iter().filter_map(|p| p["offered_per_s"].as_f64()).collect();
    assert_eq!(offered, [200.0, 400.0], "{points:?}");
    for p in &points {
        for key in ["achieved_per_s", "p50_ms", "p99_ms", "p999_ms", "mean_batch_events", "mean_batch_ms"] {
            let v = p[key].as_f64().unwrap_or_else(|| panic!("{key} missing: {p}"));
            assert!(v.is_finite() && v > 0.0, "{key} = {v}");
        }
        assert!(p["p50_ms"].as_f64() <= p["p99_ms"].as_f64(), "{p}");
        assert!(p["mean_batch_events"].as_f64() >= Some(1.0), "a batch holds at least one event: {p}");
        // Where a unit's time goes: every step of the price transaction, the wait before and the acks after.
        for phase in ["wait", "lock", "load", "derive", "write", "commit", "ack"] {
            let v = p["phases_ms"][phase].as_f64().unwrap_or_else(|| panic!("phase {phase} missing: {p}"));
            assert!(v.is_finite() && v >= 0.0, "{phase} = {v}");
        }
        // The floor at the same rate: JetStream alone and the baseline, every event's latency.
        for floor in ["jetstream", "baseline"] {
            let q = &p["floor"][floor];
            let (p50, p99) = (q["p50_ms"].as_f64(), q["p99_ms"].as_f64());
            assert!(p50.is_some_and(|v| v > 0.0) && p50 <= p99, "{floor}: {p}");
        }
    }
}

/// `tributary bench-ports`, through the `tributary` binary as the documentation runs it.
#[test]
fn bench_ports_reports_throughput_rss_and_the_raw_rate() {
    let out = bench(&tributary(), &["bench-ports", "--mib", "1", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(r["bytes"].as_u64().unwrap() >= 1 << 20, "{r}");
    assert!(r["entries"].as_u64().unwrap() > 3000, "{r}");
    for k in [
        "import_mb_per_s",
        "import_entries_per_s",
        "raw_publish_per_s",
        "ratio",
        "raw_publish_with_ids_per_s",
        "ratio_with_ids",
    ] {
        assert!(r[k].as_f64().is_some_and(|v| v > 0.0), "{k}: {r}");
    }
    if Path::new("/usr/bin/time").exists() {
        assert!(r["import_peak_rss_mib"].as_f64().is_some_and(|v| v > 1.0), "{r}");
    }
}

/// `tributary bench` hands every argument over as given, `--help` included, and `--config` before or after
/// `bench`.
#[test]
fn tributary_bench_hands_its_arguments_to_tributary_bench() {
    let help = run(&tributary(), &["bench", "--help"]);
    let said = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success() && said.contains("--freshness-rates") && said.contains("--corrections"), "{said}");
    let config = "/nonexistent/tributary-bench-test.toml";
    for args in [["--config", config, "bench"], ["bench", "--config", config]] {
        let out = Command::new(tributary()).args(args).env_remove("TRIBUTARY_CONFIG").output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && said.contains(&format!("config file {config} does not exist")), "{said}");
    }
}

/// Without a `tributary` binary beside it, the benchmark refuses at once and says how to build one.
#[test]
fn without_tributary_beside_it_the_benchmark_says_how_to_build_it() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-alone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let alone = dir.join("tributary-bench");
    let _ = std::fs::remove_file(&alone);
    if std::fs::hard_link(BENCH, &alone).is_err() {
        std::fs::copy(BENCH, &alone).unwrap();
    }
    for args in [&["--events", "1"][..], &["ports", "--mib", "1"]] {
        let out = Command::new(&alone).args(args).env_remove("TRIBUTARY_CONFIG").output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && said.contains("cargo build -p tributary"), "{said}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
