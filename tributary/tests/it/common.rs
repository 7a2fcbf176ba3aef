//! `spawn_app()`: NATS, a database, the processor and the API in this process, on free ports.

use async_nats::jetstream;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tributary::app::{self, Connected};
use tributary::config::Config;
use tributary_broker::codec;
use tributary_testkit::{NatsServer, TestDb, eventually};

pub struct TestApp {
    _nats: Option<NatsServer>,
    _db: TestDb,
    pub c: Connected,
    pub base: String,
    pub http: reqwest::Client,
    stop: CancellationToken,
    processors: Vec<JoinHandle<anyhow::Result<()>>>,
    _api: JoinHandle<anyhow::Result<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tune: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_on(NatsServer::start(), tune).await
}

/// The app on a given nats-server (e.g. one deployed from a configuration file).
pub async fn spawn_app_on(nats: NatsServer, tune: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_at(nats.url(), Some(nats), tune).await
}

/// The app on the NATS server(s) at `url` (e.g. a cluster the test holds).
pub async fn spawn_app_at(url: String, nats: Option<NatsServer>, tune: impl FnOnce(&mut Config)) -> TestApp {
    let mut app = spawn_services(url, nats, tune).await;
    app.start_processor();
    app
}

/// NATS, a migrated database with its streams, and the API, but no processor (tests that run processors as
/// processes of their own).
pub async fn spawn_services(url: String, nats: Option<NatsServer>, tune: impl FnOnce(&mut Config)) -> TestApp {
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let db = TestDb::create().await;
    let mut config = Config::default();
    config.nats.url = url;
    config.database.url = db.url().to_owned();
    config.database.max_connections = 4;
    // A crashed processor's batch comes back within 2 s. Messages fetched behind a batch wait for it
    // without being reported in progress, so batches stay small enough to commit well within that on a
    // debug build (a redelivery is harmless but counts twice in upload progress).
    config.processor.ack_wait_secs = 2;
    config.processor.batch = 1000;
    config.api.write_wait_ms = 10_000;
    tune(&mut config);
    let c = app::connect(config).await.expect("connecting the test app");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if c.config.api.tls_cert_file.is_some() { "https" } else { "http" };
    let base = format!("{scheme}://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let api = {
        let (c, s) = (c.clone(), stop.clone());
        tokio::spawn(async move { c.api(listener, s).await })
    };
    TestApp { _nats: nats, _db: db, c, base, http: reqwest::Client::new(), stop, processors: Vec::new(), _api: api }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
        for p in &self.processors {
            p.abort();
        }
    }
}

impl TestApp {
    /// Stops the API and the processors as a signal would.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Whether the API task has returned.
    pub fn api_finished(&self) -> bool {
        self._api.is_finished()
    }

    /// The private nats-server, when the app has one (to stop and restart it).
    pub fn nats(&mut self) -> &mut NatsServer {
        self._nats.as_mut().expect("the app's own nats-server")
    }

    pub fn js(&self) -> jetstream::Context {
        self.c.js.clone()
    }

    /// The test's own nats-server (not for an app on a server the test holds elsewhere).
    pub fn nats_server(&self) -> &NatsServer {
        self._nats.as_ref().expect("the app runs on a nats-server of its own")
    }

    /// Starts one more processor: it shares the unpartitioned consumers and takes its share of the
    /// partitions.
    pub fn start_processor(&mut self) {
        let (c, s) = (self.c.clone(), self.stop.child_token());
        self.processors.push(tokio::spawn(async move { c.processor(s).await }));
    }

    /// Kills every processor replica abruptly (no drain, no acks for the batch in hand).
    pub fn kill_processors(&mut self) {
        for p in self.processors.drain(..) {
            p.abort();
        }
    }

    /// Publishes raw JSON bytes with no headers, as `nats pub` does; returns the stream sequence.
    pub async fn publish_plain(&self, subject: &str, payload: &str) -> u64 {
        let ack = self.c.js.publish(subject.to_owned(), payload.to_owned().into()).await.unwrap().await.unwrap();
        ack.sequence
    }

    /// Publishes MessagePack as our publishers do; returns the stream sequence.
    pub async fn publish_msgpack<T: serde::Serialize>(&self, subject: &str, value: &T) -> u64 {
        let headers = tributary_broker::publish::headers(None, codec::MSGPACK);
        let ack =
            tributary_broker::publish::publish_one(&self.c.js, subject.to_owned(), headers, codec::to_msgpack(value))
                .await
                .unwrap();
        ack.sequence
    }

    /// Waits (up to a minute per consumer) until every processor consumer has acked every message of its
    /// subjects in its stream ([`tributary_broker::consume::acked_up_to`], as fresh reads wait).
    pub async fn settled(&self) {
        self.settled_within(Duration::from_secs(60)).await
    }

    /// [`TestApp::settled`], waiting up to `within` per consumer.
    pub async fn settled_within(&self, within: Duration) {
        let prefix = &self.c.config.processor.durable_prefix;
        let consumers = tributary_broker::Kind::ALL.into_iter().flat_map(|k| {
            tributary_broker::consume::processor_consumers(prefix, k, self.c.config.processor.partitions)
                .into_iter()
                .map(move |(durable, filter, _)| (k.stream(), durable, filter))
        });
        for (stream, durable, filter) in consumers {
            let js = self.c.js.clone();
            eventually(within, &format!("{durable} to settle"), || {
                let (js, durable, filter) = (js.clone(), durable.clone(), filter.clone());
                async move {
                    let mut s = js.get_stream(stream).await.ok()?;
                    let last = s.info().await.ok()?.state.last_sequence;
                    let mut consumer: jetstream::consumer::PullConsumer = s.get_consumer(&durable).await.ok()?;
                    let floor = consumer.info().await.ok()?.ack_floor.stream_sequence;
                    // What fresh reads wait for: the consumer's own counts trail the stream just after a
                    // publish (and, seen on nats-server 2.15, after a cluster node rejoined).
                    let through = tributary_broker::consume::acked_up_to(&s, &filter, floor, last).await.ok()?;
                    (through >= last).then_some(())
                }
            })
            .await;
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self.http.get(format!("{}{path}", self.base)).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// GETs `path` until its body passes `done`, for at most `within` (else fails the test, naming
    /// `what`); that body.
    pub async fn get_until(&self, path: &str, within: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        tributary_testkit::eventually(within, what, || {
            let done = &done;
            async move {
                let (_, body) = self.get(path).await;
                done(&body).then_some(body)
            }
        })
        .await
    }

    /// The one dead letter the API lists; fails the test if there is none or more than one.
    pub async fn only_dead_letter(&self) -> Value {
        let (status, body) = self.get("/v1/dlq?limit=100").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        match body["dead_letters"].as_array().map(Vec::as_slice) {
            Some([letter]) => letter.clone(),
            _ => panic!("expected exactly one dead letter: {body}"),
        }
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, body: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tributary");

/// A child process of the binary, killed (SIGKILL) and reaped on drop.
pub struct Proc {
    child: std::process::Child,
    /// What it has written to stderr so far (when started with [`tributary_captured`]), and the thread
    /// reading it.
    stderr: Option<(std::sync::Arc<std::sync::Mutex<String>>, std::thread::JoinHandle<()>)>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("waiting on the child").is_none()
    }

    /// Kills it with SIGKILL, as a crash would, and reaps it.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaping the killed process");
    }

    /// Everything it wrote to stderr (when started with [`tributary_captured`]); waits for it to exit.
    pub fn stderr(&mut self) -> String {
        match self.stderr.take() {
            Some((text, reader)) => {
                let _ = reader.join();
                std::mem::take(&mut *text.lock().unwrap())
            }
            None => String::new(),
        }
    }

    /// What it has written to stderr so far (when started with [`tributary_captured`]).
    pub fn stderr_so_far(&self) -> String {
        self.stderr.as_ref().map(|(text, _)| text.lock().unwrap().clone()).unwrap_or_default()
    }
}

/// The binary the process tests run: `TRIBUTARY_BIN` when set (`scripts/chaos.sh` points it at a release
/// build for the runs at scale), else the one built for the tests.
fn binary() -> String {
    std::env::var("TRIBUTARY_BIN").unwrap_or_else(|_| BIN.to_owned())
}

fn command(args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
    let mut c = std::process::Command::new(binary());
    c.args(args).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    c.env_remove("TRIBUTARY_CONFIG").env("RUST_LOG", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Starts the binary with `args`, its stderr shown with the test's output.
pub fn tributary(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut c = command(args, env);
    c.stderr(std::process::Stdio::inherit());
    Proc { child: c.spawn().expect("starting the tributary binary"), stderr: None }
}

/// Starts the binary with `args`, its stderr kept for [`Proc::stderr`].
pub fn tributary_captured(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut c = command(args, env);
    c.stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("starting the tributary binary");
    let pipe = child.stderr.take().expect("a stderr pipe");
    // Read as it comes, so a chatty process never blocks on a full pipe and a test can wait for a line.
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = text.clone();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    Proc { child, stderr: Some((text, reader)) }
}

/// Sends SIGTERM.
pub fn sigterm(p: &Proc) {
    let ok = std::process::Command::new("kill").args(["-TERM", &p.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill -TERM failed");
}

/// Waits up to `within` for the process to exit; its exit code (`None` if killed by a signal).
pub async fn exit_code(p: &mut Proc, within: Duration) -> Option<i32> {
    eventually(within, "the process to exit", || {
        let r = p.child.try_wait().unwrap();
        async move { r }
    })
    .await
    .code()
}

/// A price as the consume loop hands it to a handler: `instrument` at `ts` (any form `Ts` parses), with
/// stream sequence `seq`.
pub fn price_delivery(
    instrument: &str,
    ts: &str,
    price: f64,
    seq: u64,
) -> tributary_broker::Delivery<tributary_broker::events::PricePoint> {
    use tributary_broker::ts::Ts;
    let event = tributary_broker::events::PricePoint {
        instrument: instrument.into(),
        ts: Ts::parse(ts).unwrap(),
        price,
        volume: None,
    };
    tributary_broker::Delivery { event, seq, received: Ts::parse("2026-01-01").unwrap() }
}

/// Waits (at most 30 s) until a session of `pool`'s database waits for an advisory lock: a batch has
/// reached the lock a test holds.
pub async fn until_an_advisory_lock_waits(pool: &sea_orm::sqlx::PgPool) {
    eventually(Duration::from_secs(30), "a session waiting on an advisory lock", || async {
        let waiting: i64 = sea_orm::sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
              WHERE l.locktype = 'advisory' AND NOT l.granted AND a.datname = current_database()",
        )
        .fetch_one(pool)
        .await
        .ok()?;
        (waiting > 0).then_some(())
    })
    .await;
}

/// Backends of the test database connected since `since` and waiting for a lock (a processor's
/// transaction behind the test's).
pub async fn waiting_on_locks(pool: &sea_orm::sqlx::PgPool, since: chrono::DateTime<chrono::Utc>) -> i64 {
    sea_orm::sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND wait_event_type = 'Lock' AND backend_start > $1",
    )
    .bind(since)
    .fetch_one(pool)
    .await
    .unwrap()
}
