//! The binary as separate processes: one trace across gatherer and processor; `tributary up` serving,
//! starting a private nats-server when none answers, and stopping cleanly on SIGTERM; `tributary api`
//! stopping within its grace.

use crate::common::{BIN, exit_code, sigterm, spawn_services, tributary, tributary_captured};
use crate::faults::{env_of, refs};
use std::process::Command;
use std::time::{Duration, Instant};
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
    tributary_broker::streams::ensure(&js, &Default::default(), 1).await.expect("creating the streams");
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

/// The benchmark is the tributary-bench binary beside this one (`bench/`, tested there); without it,
/// `tributary bench` and `bench-ports` say how to build it.
#[test]
fn bench_without_tributary_bench_beside_it_says_how_to_build_it() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("tributary_alone"));
    std::fs::create_dir_all(&dir).unwrap();
    let alone = dir.join("tributary");
    if std::fs::hard_link(BIN, &alone).is_err() {
        std::fs::copy(BIN, &alone).unwrap();
    }
    // Options tributary-bench would refuse: even a binary that ran a benchmark itself would end at once.
    for command in ["bench", "bench-ports"] {
        let out = Command::new(&alone).args([command, "--no-such-option"]).output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && said.contains("cargo build -p tributary-bench"), "{command}: {said}");
    }
    let _ = std::fs::remove_dir_all(&dir);
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

/// `tributary api` on SIGTERM gives open requests `api.shutdown_grace_secs` to finish, then closes them
/// and exits 1 (something was cut off): an upload whose client stopped sending mid-body does not hold the
/// process up for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_api_within_its_grace_whatever_an_upload_client_does() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let nats = NatsServer::start();
    let app = spawn_services(nats.url(), Some(nats), |_| {}).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let env = env_of(&app, &[("TRIBUTARY_API__SHUTDOWN_GRACE_SECS", "1")]);
    let mut api = tributary_captured(&["api", "--listen", &listen], &refs(&env));
    let ready = format!("http://{listen}/readyz");
    eventually(Duration::from_secs(30), "the API to be ready", || {
        let ready = ready.clone();
        async move { reqwest::get(ready).await.ok().filter(|r| r.status() == 200).map(|_| ()) }
    })
    .await;
    // An upload that announces a megabyte, sends one line and then nothing more.
    let mut client = tokio::net::TcpStream::connect(&listen).await.unwrap();
    let line = "{\"subject\":\"price.STALL\",\"event\":{\"ts\":1767225600000,\"price\":1}}\n";
    let head = format!(
        "POST /v1/uploads?kind=ndjson HTTP/1.1\r\nHost: {listen}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: 1000000\r\n\r\n{line}"
    );
    client.write_all(head.as_bytes()).await.unwrap();
    // Answered 202 as soon as streaming starts; the body is still being read.
    let mut answer = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(30), client.read_exact(&mut answer)).await.unwrap().unwrap();
    assert_eq!(&answer, b"HTTP/1.1 202");
    let signalled = Instant::now();
    sigterm(&api);
    assert_eq!(exit_code(&mut api, Duration::from_secs(20)).await, Some(1), "the API waited on its upload client");
    assert!(signalled.elapsed() >= Duration::from_millis(900), "the open request had its grace");
    assert!(api.stderr_so_far().contains("closing the requests still open"), "{}", api.stderr_so_far());
    drop(client);
}
