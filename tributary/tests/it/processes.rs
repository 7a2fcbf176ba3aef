//! The binary as separate processes: one trace across gatherer and processor; `tributary up` serving,
//! starting a private nats-server when none answers, and stopping cleanly on SIGTERM.

use crate::common::{BIN, exit_code, sigterm, tributary};
use std::process::Command;
use std::time::Duration;
use tributary_testkit::{NatsServer, OtlpReceiver, TestDb, eventually, free_port, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_publish_process_and_db_across_two_processes() {
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let otlp = OtlpReceiver::start().await;
    let env = [
        ("NATS_URL", nats.url()),
        ("DATABASE_URL", db.url().to_owned()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // As deployments do (`migrate` before the roles): the streams exist before two processes start. Two
    // processes creating the same streams at once on a fresh nats-server 2.9.10, on a machine loaded by the
    // whole suite, twice left every JetStream API request of both timing out for over a minute.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    tributary_broker::streams::ensure(&js, &Default::default()).await.expect("creating the streams");
    let mut processor = tributary(&["processor"], &env);
    let mut gatherer =
        tributary(&["gatherer", "prices", "--instruments", "2", "--rate", "200", "--limit", "6", "--seed", "7"], &env);
    assert_eq!(exit_code(&mut gatherer, Duration::from_secs(60)).await, Some(0), "gatherer failed");

    let (trace, spans) = eventually(Duration::from_secs(60), "one trace holding publish, process and db spans", || {
        let spans = otlp.spans();
        async move {
            let publish = spans.iter().filter(|s| s.service == "tributary-gatherer" && s.name == "publish");
            for p in publish {
                let trace: Vec<_> = spans.iter().filter(|s| s.trace_id == p.trace_id).cloned().collect();
                let process = trace.iter().find(|s| s.service == "tributary-processor" && s.name == "process");
                let db = trace.iter().find(|s| s.service == "tributary-processor" && s.name == "db");
                if let (Some(process), Some(db)) = (process, db)
                    && process.parent_span_id == p.span_id
                    && db.parent_span_id == process.span_id
                {
                    return Some((p.trace_id.clone(), trace));
                }
            }
            None
        }
    })
    .await;
    assert!(spans.len() >= 3, "trace {trace}: {spans:?}");
    sigterm(&processor);
    assert_eq!(
        exit_code(&mut processor, Duration::from_secs(30)).await,
        Some(0),
        "processor did not stop cleanly on SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_a_private_nats_when_none_answers_serves_and_stops_on_sigterm() {
    let db = TestDb::create().await;
    let data = std::env::temp_dir().join(unique("tributary_up"));
    let port = free_port();
    let nowhere = format!("nats://127.0.0.1:{}", free_port());
    let listen = format!("127.0.0.1:{port}");
    let data_dir = data.to_string_lossy().into_owned();
    let mut up = tributary(
        &["up", "--listen", &listen],
        &[
            ("NATS_URL", &nowhere),
            ("DATABASE_URL", db.url()),
            ("TRIBUTARY_UP__DATA_DIR", &data_dir),
            ("TRIBUTARY_GATHERER__PRICES__RATE", "50"),
        ],
    );
    let http = reqwest::Client::new();
    let base = format!("http://{listen}");
    eventually(Duration::from_secs(60), "up to become ready", || {
        let (http, base) = (http.clone(), base.clone());
        async move { http.get(format!("{base}/readyz")).send().await.ok().filter(|r| r.status() == 200).map(|_| ()) }
    })
    .await;
    assert!(data.join("nats").exists(), "a private nats-server keeps its data under the data dir");
    // The demo runs: prices arrive and the demo index has levels.
    eventually(Duration::from_secs(60), "the demo index to have levels", || {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let v: serde_json::Value =
                http.get(format!("{base}/v1/indices/demo")).send().await.ok()?.json().await.ok()?;
            (v["points"].as_array()?.len() >= 2).then_some(())
        }
    })
    .await;
    sigterm(&up);
    assert_eq!(exit_code(&mut up, Duration::from_secs(30)).await, Some(0), "up did not stop cleanly on SIGTERM");
    let _ = std::fs::remove_dir_all(&data);
}

/// Runs `tributary bench` with `args` against the test PostgreSQL (it starts its own nats-server) and
/// returns its standard output, having checked that it succeeded.
async fn bench(args: &[&'static str]) -> Vec<u8> {
    let args = args.to_vec();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .arg("bench")
            .args(args)
            .env("RUST_LOG", "error")
            .env(
                "DATABASE_URL",
                std::env::var("TEST_DATABASE_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
            )
            .env_remove("NATS_URL")
            .output()
            .expect("running tributary bench")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "bench failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_json_reports_every_promised_figure() {
    let out = bench(&[
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
    ])
    .await;
    let report: serde_json::Value = serde_json::from_slice(&out).expect("bench --json prints one JSON object");
    for key in [
        "raw.jetstream_publish_per_s",
        "raw.jetstream_consume_per_s",
        "raw.pg_upsert_rows_per_s",
        "baseline.events_per_s",
        "tributary.events_per_s",
        "tributary.freshness_p50_ms",
        "tributary.freshness_p99_ms",
        "tributary.peak_rss_mb",
        "api.max_rps",
        "api.p99_ms",
        "baseline.freshness_p50_ms",
        "baseline.freshness_p99_ms",
        "raw.jetstream_freshness_p99_ms",
        "ratios.freshness_p99_over_baseline",
    ] {
        let (section, field) = key.split_once('.').unwrap();
        let v = report[section][field].as_f64().unwrap_or_else(|| panic!("{key} missing: {report}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    assert_eq!(report["machine"]["cpus"].as_u64(), Some(std::thread::available_parallelism().unwrap().get() as u64));
    // Tributary's path computes metric rollups too (one message per 10 price events, 100 hosts), and the
    // partitioned runs stored what one did, rollups included.
    assert_eq!(report["parameters"]["metric_messages"].as_u64(), Some(300), "{report}");
    assert_eq!(report["tributary"]["two_replicas_equal_to_one"].as_bool(), Some(true), "{report}");
    // Traces are exported as deployed, to the bench's own OTLP collector.
    assert!(report["tributary"]["spans_exported"].as_u64() > Some(0), "{report}");
}

/// `tributary bench --corrections N`: a correction of the first of N points, its time, the processor's
/// memory growth meanwhile and the other instruments' freshness with and without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_corrections_reports_what_a_deep_correction_costs() {
    let out =
        bench(&["--json", "--corrections", "3000", "--instruments", "20", "--rate", "200", "--freshness-secs", "1"])
            .await;
    let report: serde_json::Value = serde_json::from_slice(&out).expect("one JSON array");
    let c = &report[0];
    assert_eq!(c["points"].as_u64(), Some(3000), "{report}");
    for key in ["ingest_secs", "correction_ms", "others_p99_ms_without", "others_p99_ms_with"] {
        let v = c[key].as_f64().unwrap_or_else(|| panic!("{key} missing: {report}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    assert!(c["rss_growth_mb"].as_f64().is_some_and(|v| v.is_finite() && v >= 0.0), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_freshness_rates_reports_the_latency_at_each_rate() {
    let out = bench(&["--json", "--freshness-rates", "200,400", "--instruments", "20", "--freshness-secs", "1"]).await;
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
        // The floor at the same rate: JetStream alone and the baseline, every event's latency.
        for floor in ["jetstream", "baseline"] {
            let q = &p["floor"][floor];
            let (p50, p99) = (q["p50_ms"].as_f64(), q["p99_ms"].as_f64());
            assert!(p50.is_some_and(|v| v > 0.0) && p50 <= p99, "{floor}: {p}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_streams_a_file_by_kind() {
    let nats = NatsServer::start();
    let dir = std::env::temp_dir().join(unique("import"));
    std::fs::create_dir_all(&dir).unwrap();
    let numbers = dir.join("numbers.txt");
    std::fs::write(&numbers, "1\n2\n3\n4\nx\n").unwrap();
    let nd = dir.join("events.ndjson");
    std::fs::write(&nd, "{\"subject\":\"price.IMP\",\"event\":{\"price\":1}}\n{\"subject\":\"nope.x\",\"event\":{}}\n")
        .unwrap();
    let (numbers, nd, url) = (numbers.display().to_string(), nd.display().to_string(), nats.url());
    let (stats, ndjson) = tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| {
            Command::new(BIN).args(args).env("NATS_URL", &url).env("RUST_LOG", "warn").output().expect("running import")
        };
        (run(&["import", &numbers, "--kind", "numbers"]), run(&["import", &nd, "--kind", "ndjson", "--quiet"]))
    })
    .await
    .unwrap();
    assert!(stats.status.success(), "{}", String::from_utf8_lossy(&stats.stderr));
    let v: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!((v["count"].as_u64(), v["mean"].as_f64(), v["max"].as_f64()), (Some(4), Some(2.5), Some(4.0)), "{v}");
    assert!(String::from_utf8_lossy(&stats.stderr).contains("line 5 (byte 8): not a finite number"));
    // One event published, one line refused by name: the command says so and fails.
    let said = String::from_utf8_lossy(&ndjson.stderr);
    assert!(
        !ndjson.status.success() && said.contains("1 published") && said.contains("line 2 (byte 44): unknown subject"),
        "{said}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_ports_reports_throughput_rss_and_the_raw_rate() {
    let out = tokio::task::spawn_blocking(|| {
        Command::new(BIN).args(["bench-ports", "--mib", "1", "--json"]).env("RUST_LOG", "error").output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
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
    if std::path::Path::new("/usr/bin/time").exists() {
        assert!(r["import_peak_rss_mib"].as_f64().is_some_and(|v| v > 1.0), "{r}");
    }
}

#[test]
fn fleet_plan_prints_the_optimal_total_and_matching_without_any_server() {
    let dir = std::env::temp_dir().join(unique("fleet_cli"));
    std::fs::create_dir_all(&dir).unwrap();
    let (drivers, shipments) = (dir.join("drivers.txt"), dir.join("shipments.txt"));
    std::fs::write(&drivers, "Alice Smith\nBo\n").unwrap();
    std::fs::write(&shipments, "44 Fake Dr., San Diego, CA\n1 Elm Street\n9 Oak Ave, Town\n").unwrap();
    let run = |json: bool| {
        let mut c = Command::new(BIN);
        c.args(["fleet", "plan", "--drivers"]).arg(&drivers).arg("--shipments").arg(&shipments);
        if json {
            c.arg("--json");
        }
        let out = c.env_remove("TRIBUTARY_CONFIG").output().expect("running tributary fleet plan");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    // Alice Smith scores 6 on every street; Bo 2.25 on the even ones: 8.25 in all.
    let text = run(false);
    assert!(text.starts_with("total suitability score: 8.25\n"), "{text}");
    assert!(text.contains("(no driver)"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&run(true)).unwrap();
    assert_eq!(v["total_score"], 8.25);
    assert_eq!(v["assignments"].as_array().unwrap().len(), 2);
    assert_eq!(v["unassigned_shipments"].as_array().unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The binary's relative relocations are packed (`tributary/build.rs`): unpacked, they are ~1 MiB read at
/// every start and resident in every process, which took a ports import over its 16 MiB budget.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_binary_packs_its_relative_relocations() {
    let image = std::fs::read(BIN).unwrap();
    let has = |name: &[u8]| image.windows(name.len()).any(|w| w == name);
    assert!(has(b"\0.relr.dyn\0"), "no .relr.dyn section in {BIN}");
}
