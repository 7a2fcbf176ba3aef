//! Secrets never reach the logs: every role at debug level, with passwords, tokens and keys in play.

use crate::security::{Broker, TempDir, call};
use reqwest::Method;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tributary_testkit::{TestDb, eventually, free_port, unique};

/// A child process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary with `args` and `env`, at debug level, its stdout and stderr into `<dir>/<name>.out|err`.
fn run_logged(dir: &TempDir, name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tributary"));
    c.args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join(&format!("{name}.out"))).unwrap())
        .stderr(std::fs::File::create(dir.join(&format!("{name}.err"))).unwrap())
        .env_remove("TRIBUTARY_CONFIG")
        .env_remove("NATS_URL")
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "debug");
    for (k, v) in env {
        c.env(k, v);
    }
    Proc(c.spawn().expect("starting the tributary binary"))
}

/// `url` with a password: the one it has, else `password` (PostgreSQL with trust authentication ignores it).
fn with_password(url: &str, password: &str) -> (String, String) {
    let mut u = reqwest::Url::parse(url).unwrap();
    if let Some(p) = u.password() {
        return (url.to_owned(), p.to_owned());
    }
    u.set_password(Some(password)).unwrap();
    (u.to_string(), password.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs_even_at_debug_level() {
    let broker = Broker::start();
    let db = TestDb::create().await;
    let (db_url, db_password) = with_password(db.url(), &unique("dbsecret"));
    let token = unique("apitoken");
    let dir = TempDir::new("secret_logs");
    let listen = format!("127.0.0.1:{}", free_port());
    let tokens = format!("[{token}]");
    let processor_url = broker.url("processor");
    let api_url = broker.url("api");
    let gatherer_url = broker.url("gatherer-prices");
    // Partitioned, so that the processor group (its KV bucket, pins, lag reads) runs under the
    // processor's and the api's permissions too.
    let partitions = ("TRIBUTARY_PROCESSOR__PARTITIONS", "2");
    let processor = run_logged(
        &dir,
        "processor",
        &["processor"],
        &[("NATS_URL", &processor_url), ("DATABASE_URL", &db_url), partitions],
    );
    let api = run_logged(
        &dir,
        "api",
        &["api", "--listen", &listen],
        &[("NATS_URL", &api_url), ("DATABASE_URL", &db_url), ("TRIBUTARY_API__WRITE_TOKENS", &tokens), partitions],
    );
    let base = format!("http://{listen}");
    eventually(Duration::from_secs(60), "the API to be ready", || {
        let base = base.clone();
        async move { reqwest::get(format!("{base}/readyz")).await.ok().filter(|r| r.status() == 200).map(|_| ()) }
    })
    .await;
    // Work: a write with the token and one without, a gatherer run, reads until the processor committed.
    let price = r#"{"ts":"2026-01-02","price":10}"#;
    assert_eq!(call(&base, Method::POST, "/v1/events/price.LOG", Some(token.as_str()), price).await.status(), 202);
    assert_eq!(call(&base, Method::POST, "/v1/events/price.LOG", Some("nope"), price).await.status(), 401);
    let out = tokio::task::spawn_blocking({
        let (url, db_url) = (gatherer_url.clone(), db_url.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_tributary"))
                .args(["gatherer", "prices", "--instruments", "2", "--rate", "200", "--limit", "20", "--quiet"])
                .env_remove("TRIBUTARY_CONFIG")
                .env("NATS_URL", url)
                .env("DATABASE_URL", db_url)
                .env(partitions.0, partitions.1)
                .env("RUST_LOG", "debug")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "the gatherer failed: {}", String::from_utf8_lossy(&out.stderr));
    eventually(Duration::from_secs(60), "the processor to commit the API's and the gatherer's prices", || {
        let base = base.clone();
        async move {
            let get = |p: String| async move { reqwest::get(p).await.ok()?.json::<serde_json::Value>().await.ok() };
            let posted = get(format!("{base}/v1/series/price/LOG")).await?;
            let simulated = get(format!("{base}/v1/series/price/S0")).await?;
            (posted["points"].as_array()?.len() == 1 && !simulated["points"].as_array()?.is_empty()).then_some(())
        }
    })
    .await;
    // The group works under the deployed permissions: every partition has its owner, and the api reads it.
    let status: serde_json::Value = reqwest::get(format!("{base}/v1/status")).await.unwrap().json().await.unwrap();
    let partitions = status["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 4, "{status}");
    assert!(partitions.iter().all(|p| p["owner"].is_string()), "a partition without an owner: {status}");
    for p in [&processor, &api] {
        assert!(Command::new("kill").args(["-TERM", &p.0.id().to_string()]).status().unwrap().success());
    }
    for (name, mut p) in [("processor", processor), ("api", api)] {
        let code = eventually(Duration::from_secs(30), &format!("{name} to exit"), || {
            let r = p.0.try_wait().unwrap();
            async move { r }
        })
        .await;
        assert!(code.success(), "{name} did not stop cleanly");
    }

    let mut logs = vec![(
        "gatherer".to_owned(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )];
    for name in ["processor.out", "processor.err", "api.out", "api.err"] {
        logs.push((name.to_owned(), std::fs::read_to_string(dir.join(name)).unwrap()));
    }
    let all: String = logs.iter().map(|(_, l)| l.as_str()).collect();
    // Debug logging was on, and the connections it describes happened.
    assert!(all.contains("DEBUG") && all.contains("connected successfully"), "no debug logs captured");
    // The processor's permissions cover its crash records (the KV bucket of redelivered messages).
    assert!(!all.contains("crash record"), "crash records refused: {all}");
    // ... and the processor group: joining, heartbeats, reading the members, releasing pins.
    let refusals = [
        "cannot join the processor group",
        "processor group heartbeat failed",
        "cannot read the processor group",
        "could not release the pin",
        "Permissions Violation",
    ];
    for refused in refusals {
        assert!(!all.contains(refused), "{refused:?} in the logs: {all}");
    }
    let secrets = [
        ("the processor's NATS password", broker.password("processor")),
        ("the api's NATS password", broker.password("api")),
        ("the gatherer's NATS password", broker.password("gatherer-prices")),
        ("the database password", db_password.as_str()),
        ("the API token", token.as_str()),
    ];
    for (what, secret) in secrets {
        for (name, log) in &logs {
            assert!(!log.contains(secret), "{what} is in the {name} log");
        }
    }
}
