//! Faults with real processes and real servers: processors killed with SIGKILL mid-ingest (one replica,
//! and two sharing the consumers), the nats-server restarted under a running gatherer and processor,
//! PostgreSQL restarted under a running processor, SIGTERM draining (or giving up without acking). Every check compares the database with the batch computation over what
//! the streams hold, read back at the end: that is the truth, not what the test meant to publish.
//!
//! Scale of the SIGKILL tests: `CHAOS_EVENTS` prices (default 20,000) and `CHAOS_KILLS` kills (default 3);
//! `scripts/chaos.sh` runs 1,000,000 and 20 in a release build for the figures in RELIABILITY.md.

use crate::common::{
    Proc, TestApp, exit_code, sigterm, spawn_app_with, spawn_services, tributary, tributary_captured, waiting_on_locks,
};
use crate::differential::{Raw, verify, verify_raw};
use crate::samples::{Msg as MetricMsg, verify_metrics};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::PullConsumer};
use chrono::{Duration as Span, TimeZone, Utc};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sea_orm::sqlx::{self, Connection};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tributary_broker::events::{PriceEvent, PricePoint};
use tributary_broker::samples::{SampleEvent, ServerSample};
use tributary_broker::ts::Ts;
use tributary_broker::{Kind, PublishReport, Publisher};
use tributary_testkit::{NatsServer, PgCluster, eventually};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The environment that points a process of the binary at the app's NATS and database.
pub(crate) fn env_of(app: &TestApp, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("NATS_URL".to_owned(), app.c.config.nats.url.clone()),
        ("DATABASE_URL".to_owned(), app.c.config.database.url.clone()),
        ("TRIBUTARY_PROCESSOR__ACK_WAIT_SECS".to_owned(), "2".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

pub(crate) fn refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn processor(env: &[(String, String)]) -> Proc {
    tributary(&["processor"], &refs(env))
}

/// Calls `f` with every message of `stream` in sequence order (an ordered consumer).
pub(crate) async fn for_each_message(
    js: &jetstream::Context,
    stream: &str,
    mut f: impl FnMut(u64, &str, Option<&HeaderMap>, &[u8], Ts),
) -> usize {
    let mut s = js.get_stream(stream).await.unwrap();
    let n = s.info().await.unwrap().state.messages as usize;
    let consumer = s.create_consumer(jetstream::consumer::pull::OrderedConfig::default()).await.unwrap();
    let mut messages = consumer.messages().await.unwrap();
    for _ in 0..n {
        let m = messages.next().await.expect("the stream ended early").expect("reading the stream");
        let info = m.info().unwrap();
        f(info.stream_sequence, &m.subject, m.headers.as_ref(), &m.payload, Ts::new(info.published));
    }
    n
}

/// Raw prices as the stream holds them: the last writer of each (instrument, ts).
pub(crate) async fn price_truth(app: &TestApp) -> Raw {
    let mut raw = Raw::new();
    let stream = app.c.config.streams.stream_name(Kind::Price);
    for_each_message(&app.c.js, &stream, |seq, subject, headers, payload, received| {
        let p = PricePoint::decode(subject, headers, payload, received).expect("only valid prices were published");
        raw.insert((p.instrument, p.ts.0), (seq, p.price));
    })
    .await;
    raw
}

/// Metric samples as the stream holds them, in stream order.
pub(crate) async fn metric_truth(app: &TestApp) -> Vec<MetricMsg> {
    let mut order = Vec::new();
    let stream = app.c.config.streams.stream_name(Kind::Sample);
    for_each_message(&app.c.js, &stream, |_, subject, headers, payload, received| {
        let s = ServerSample::decode(subject, headers, payload, received).expect("only valid samples were published");
        order.push(MetricMsg { host: s.host, ts: s.ts.0.timestamp_millis(), fields: s.fields });
    })
    .await;
    order
}

/// Publishes `n` prices over `instruments` instruments (minute by minute from 2026-01-01, with 1%
/// corrections, 0.5% exact repeats under new keys, shuffled in windows of 500: late data), and one metric
/// sample of ten hosts per 20 prices (2% of them corrected), each with its own idempotency key.
pub(crate) async fn publish_chaos(js: jetstream::Context, n: usize, instruments: usize, seed: u64) -> PublishReport {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut p = Publisher::new(js, 4096);
    let day0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let metrics_from = (Utc::now() - Span::hours(2)).timestamp_millis();
    let mut prices = vec![100.0f64; instruments];
    let mut window: Vec<(String, PriceEvent)> = Vec::with_capacity(600);
    let (mut sent, mut round, mut id, mut samples) = (0usize, 0i64, 0u64, 0i64);
    while sent < n {
        for (i, price) in prices.iter_mut().enumerate() {
            if sent >= n {
                break;
            }
            *price *= rng.random_range(-0.01..0.01f64).exp();
            let subject = format!("price.I{i}");
            let e = PriceEvent { ts: Some(Ts(day0 + Span::minutes(round))), price: *price, volume: None };
            window.push((subject.clone(), e.clone()));
            sent += 1;
            if round > 0 && rng.random_bool(0.01) {
                let ts = day0 + Span::minutes(rng.random_range(0..=round));
                window.push((
                    subject.clone(),
                    PriceEvent { ts: Some(Ts(ts)), price: *price * rng.random_range(0.95..1.05), volume: None },
                ));
                sent += 1;
            }
            if rng.random_bool(0.005) {
                window.push((subject, e));
                sent += 1;
            }
            if window.len() >= 500 || sent >= n {
                window.shuffle(&mut rng);
                for (subject, e) in window.drain(..) {
                    id += 1;
                    p.publish(subject, Some(&format!("chaos-{seed}-{id}")), &e).await;
                    if id % 20 == 0 {
                        let ts = if samples > 10 && rng.random_bool(0.02) {
                            metrics_from + rng.random_range(0..samples) * 37
                        } else {
                            samples += 1;
                            metrics_from + samples * 37
                        };
                        let mut fields = std::collections::BTreeMap::new();
                        fields
                            .insert("cpu_usage".to_owned(), (rng.random_range(0.0..100.0f64) * 100.0).round() / 100.0);
                        fields.insert("load1".to_owned(), rng.random_range(0.0..4.0));
                        let host = format!("metric.h-{}", ts % 10);
                        let e = SampleEvent { ts: Some(Ts(Utc.timestamp_millis_opt(ts).unwrap())), fields };
                        p.publish(host, Some(&format!("chaos-{seed}-m{id}")), &e).await;
                    }
                }
            }
        }
        round += 1;
    }
    p.finish().await
}

/// Publishes `k` corrections of existing points: more work for the processors while the kills go on.
async fn publish_corrections(js: jetstream::Context, k: usize, instruments: usize, rounds: i64, rng: &mut StdRng) {
    let mut p = Publisher::new(js, 4096);
    let day0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    for _ in 0..k {
        let ts = day0 + Span::minutes(rng.random_range(0..rounds.max(1)));
        let e = PriceEvent { ts: Some(Ts(ts)), price: rng.random_range(50.0..150.0), volume: None };
        p.publish(format!("price.I{}", rng.random_range(0..instruments)), None, &e).await;
    }
    let r = p.finish().await;
    assert!(r.failed.is_empty(), "{:?}", r.failed);
}

async fn price_consumer_info(app: &TestApp) -> Option<jetstream::consumer::Info> {
    let stream = app.c.js.get_stream(app.c.config.streams.stream_name(Kind::Price)).await.ok()?;
    let durable = format!("{}-price", app.c.config.processor.durable_prefix);
    let mut c: PullConsumer = stream.get_consumer(&durable).await.ok()?;
    c.info().await.ok().cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_killed_with_sigkill_mid_ingest_loses_and_duplicates_nothing() {
    kill9_mid_ingest(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_killed_with_sigkill_mid_ingest_lose_and_duplicate_nothing() {
    kill9_mid_ingest(2).await;
}

/// Runs `replicas` processor processes on the shared consumers while prices and metric samples are
/// published, kills one with SIGKILL `CHAOS_KILLS` times and restarts it at once; then compares everything
/// with the batch computation. The kills are spread over the ingest: the k-th comes once the price
/// consumer's ack floor has passed a random point of the k-th of `CHAOS_KILLS` equal stretches of the
/// stream, and only while the processors have work in hand and have committed since the previous kill.
async fn kill9_mid_ingest(replicas: usize) {
    let events = env_usize("CHAOS_EVENTS", 20_000);
    let kills = env_usize("CHAOS_KILLS", 3);
    let instruments = (events / 200).clamp(10, 1000);
    let seed: u64 =
        std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| rand::rng().random());
    eprintln!("chaos seed {seed} (rerun with CHAOS_SEED={seed})");
    let nats = NatsServer::start();
    let app = spawn_services(nats.url(), Some(nats), |c| c.processor.ack_wait_secs = 2).await;
    let env = env_of(&app, &[]);
    let started = Instant::now();
    let mut procs: Vec<Proc> = (0..replicas).map(|_| processor(&env)).collect();
    let publisher = tokio::spawn(publish_chaos(app.js(), events, instruments, seed));
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let stretch = events as f64 * 0.9 / kills as f64; // the last tenth is left to run undisturbed
    let targets: Vec<u64> = (0..kills).map(|k| (stretch * (k as f64 + rng.random_range(0.0..1.0))) as u64).collect();
    let (mut done, mut floor_at_last_kill, mut waves) = (0, 0u64, 0);
    while done < kills {
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..200))).await; // a random moment
        let Some(info) = price_consumer_info(&app).await else { continue };
        if info.num_pending + info.num_ack_pending as u64 == 0 {
            if publisher.is_finished() {
                let rounds = (events / instruments) as i64;
                publish_corrections(app.js(), events / 20, instruments, rounds, &mut rng).await;
                waves += 1;
            }
            continue;
        }
        let floor = info.ack_floor.stream_sequence;
        if floor < targets[done] || floor <= floor_at_last_kill {
            continue; // not there yet, or nothing committed since the last kill
        }
        let victim = rng.random_range(0..replicas);
        procs[victim].kill9();
        procs[victim] = processor(&env);
        floor_at_last_kill = floor;
        done += 1;
    }
    let report = publisher.await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", &report.failed[..report.failed.len().min(5)]);
    app.settled_within(Duration::from_secs((events as u64 / 1000).max(60))).await;
    let ingest = started.elapsed();
    let raw = price_truth(&app).await;
    let samples = metric_truth(&app).await;
    verify(&app, &raw, &HashMap::new()).await;
    let buckets = verify_metrics(&app, &samples).await;
    let prices = stream_messages(&app, Kind::Price).await.unwrap();
    eprintln!(
        "chaos: {replicas} replica(s); {prices} price messages ({waves} extra waves of corrections) and {} metric samples in \
         the streams; {kills} SIGKILLs, each with work in hand; ingest and recovery {:.1} s; {} points and {buckets} rollup \
         buckets, all equal to the batch computation",
        samples.len(),
        ingest.as_secs_f64(),
        raw.len(),
    );
}

/// The counts of a gatherer's final line: (stored, duplicates, sent again, not delivered).
fn gatherer_counts(stderr: &str) -> (u64, u64, u64, u64) {
    let line = stderr.lines().find(|l| l.starts_with("published ")).unwrap_or_else(|| panic!("no summary in {stderr}"));
    let number_before = |word: &str| -> u64 {
        let head = &line[..line.find(word).unwrap_or_else(|| panic!("no {word:?} in {line}"))];
        head.trim_end().rsplit(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    let stored = line["published ".len()..].split(' ').next().unwrap().parse().unwrap();
    (stored, number_before(" duplicates"), number_before(" sent again"), number_before(" not delivered"))
}

pub(crate) async fn stream_messages(app: &TestApp, kind: Kind) -> Option<u64> {
    let mut s = app.c.js.get_stream(app.c.config.streams.stream_name(kind)).await.ok()?;
    Some(s.info().await.ok()?.state.messages)
}

/// Waits until the price stream holds at least `n` messages.
async fn wait_for_prices_stored(app: &TestApp, n: u64) {
    eventually(Duration::from_secs(60), &format!("{n} prices stored"), || async move {
        stream_messages(app, Kind::Price).await.filter(|stored| *stored >= n).map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_ingest_loses_nothing_as_the_gatherer_sends_again() {
    let nats = NatsServer::start();
    let mut app = spawn_services(nats.url(), Some(nats), |c| c.processor.ack_wait_secs = 2).await;
    let env = env_of(&app, &[]);
    let _processor = processor(&env);
    let limit = 20_000u64;
    let args =
        ["gatherer", "prices", "--instruments", "20", "--rate", "5000", "--limit", "20000", "--seed", "5", "--quiet"];
    let mut gatherer = tributary_captured(&args, &refs(&env));
    wait_for_prices_stored(&app, limit / 4).await;
    app.nats().stop();
    tokio::time::sleep(Duration::from_millis(1500)).await; // the length of the outage, not a wait
    app.nats().restart();
    let code = exit_code(&mut gatherer, Duration::from_secs(180)).await;
    let stderr = gatherer.stderr();
    assert_eq!(code, Some(0), "the gatherer failed: {stderr}");
    let (stored, duplicates, resent, failed) = gatherer_counts(&stderr);
    assert_eq!(failed, 0, "{stderr}");
    assert!(resent > 0, "nothing was sent again, so the restart was not mid-ingest: {stderr}");
    // Every event stored exactly once: a repeat of one the server had stored is dropped by its key.
    assert_eq!(stream_messages(&app, Kind::Price).await, Some(limit));
    assert_eq!(stored + duplicates, limit, "{stderr}");
    app.settled().await;
    let raw = price_truth(&app).await;
    verify(&app, &raw, &HashMap::new()).await;
    eprintln!("nats restart: {limit} events, {resent} sent again, {duplicates} of them already stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gatherer_reports_what_it_could_not_deliver_instead_of_dropping_it() {
    let nats = NatsServer::start();
    let mut app = spawn_services(nats.url(), Some(nats), |_| {}).await;
    let env = env_of(&app, &[("TRIBUTARY_GATHERER__PRICES__RETRY_SECS", "1")]);
    let limit = 6000u64;
    let args =
        ["gatherer", "prices", "--instruments", "5", "--rate", "3000", "--limit", "6000", "--seed", "6", "--quiet"];
    let mut gatherer = tributary_captured(&args, &refs(&env));
    wait_for_prices_stored(&app, 500).await;
    app.nats().stop();
    let code = exit_code(&mut gatherer, Duration::from_secs(120)).await;
    let stderr = gatherer.stderr();
    assert_eq!(code, Some(1), "{stderr}");
    let (stored, duplicates, _, failed) = gatherer_counts(&stderr);
    assert!(failed > 0 && stderr.contains("events were not delivered"), "{stderr}");
    assert!(stderr.contains("not delivered to price.S"), "the undelivered are listed: {stderr}");
    // Every event generated is accounted for (stored, a duplicate, or reported); the simulator stopped
    // generating once the publisher gave up.
    assert!(stored + duplicates + failed <= limit, "{stderr}");
    app.nats().restart();
    let in_stream = eventually(Duration::from_secs(30), "the stream after the restart", || {
        let app = &app;
        async move { stream_messages(app, Kind::Price).await }
    })
    .await;
    assert!(in_stream >= stored && in_stream <= stored + failed, "{in_stream} stored of {stored} acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_ingest_loses_nothing_and_readyz_says_not_ready_meanwhile() {
    let mut pg = PgCluster::start();
    let url = pg.url("tributary");
    let app = spawn_app_with(|c| c.database.url = url).await;
    let publisher = tokio::spawn(publish_chaos(app.js(), 20_000, 50, 7));
    let pool = app.c.db.get_postgres_connection_pool().clone();
    eventually(Duration::from_secs(60), "the first commits", || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM price_points").fetch_one(&pool).await.ok()?;
            (n > 0).then_some(())
        }
    })
    .await;
    pg.stop();
    let (status, body) = eventually(Duration::from_secs(30), "/readyz to say not ready", || {
        let app = &app;
        async move { Some(app.get("/readyz").await).filter(|(s, _)| *s == 503) }
    })
    .await;
    assert_eq!(body["status"], "not_ready", "{status} {body}");
    tokio::time::sleep(Duration::from_secs(2)).await; // the length of the outage: batches fail and back off
    pg.start_again();
    eventually(Duration::from_secs(60), "/readyz to say ready again", || {
        let app = &app;
        async move { Some(app.get("/readyz").await.0).filter(|s| *s == 200).map(|_| ()) }
    })
    .await;
    let report = publisher.await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    app.settled().await;
    verify(&app, &price_truth(&app).await, &HashMap::new()).await;
    verify_metrics(&app, &metric_truth(&app).await).await;
    // The outage was transient: nothing was dead-lettered for it.
    let (_, body) = app.get("/v1/dlq?limit=100").await;
    let failed: Vec<_> =
        body["dead_letters"].as_array().unwrap().iter().filter(|l| l["class"] == "processing_failed").collect();
    assert!(failed.is_empty(), "dead-lettered for an outage: {failed:?}");
}

async fn publish_days(app: &TestApp, days: std::ops::Range<i64>) {
    let day0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    for d in days {
        let e = PriceEvent { ts: Some(Ts(day0 + Span::days(d))), price: 100.0 + d as f64, volume: None };
        app.publish_msgpack("price.GRACE", &e).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_or_gives_up_without_acking_and_a_second_signal_exits_at_once() {
    let nats = NatsServer::start();
    let app = spawn_services(nats.url(), Some(nats), |c| c.processor.ack_wait_secs = 2).await;
    let quick = env_of(&app, &[("TRIBUTARY_PROCESSOR__SHUTDOWN_GRACE_SECS", "2"), ("RUST_LOG", "info")]);
    let patient = env_of(&app, &[("TRIBUTARY_PROCESSOR__SHUTDOWN_GRACE_SECS", "60"), ("RUST_LOG", "info")]);
    let draining = |p: &Proc| {
        let log = p.stderr_so_far();
        std::future::ready(log.contains("shutting down (signal again to exit at once)").then_some(()))
    };

    // Nothing in hand: SIGTERM exits 0.
    let mut p = tributary_captured(&["processor"], &refs(&quick));
    publish_days(&app, 0..20).await;
    app.settled().await;
    sigterm(&p);
    assert_eq!(exit_code(&mut p, Duration::from_secs(20)).await, Some(0), "a clean stop exits 0");

    // A batch stuck in its transaction (the test holds a lock on the table) past the grace period: the
    // process gives up, exits 1 and acks nothing.
    let mut lock = sqlx::PgConnection::connect(&app.c.config.database.url).await.unwrap();
    let watch = app.c.db.get_postgres_connection_pool().clone();
    sqlx::raw_sql("BEGIN; LOCK TABLE price_points IN ACCESS EXCLUSIVE MODE").execute(&mut lock).await.unwrap();
    let since = Utc::now();
    let mut p = tributary_captured(&["processor"], &refs(&quick));
    publish_days(&app, 20..40).await;
    eventually(Duration::from_secs(30), "a batch waiting on the lock", || {
        let w = watch.clone();
        async move { (waiting_on_locks(&w, since).await > 0).then_some(()) }
    })
    .await;
    let floor = price_consumer_info(&app).await.unwrap().ack_floor.stream_sequence;
    sigterm(&p);
    eventually(Duration::from_secs(10), "the signal to be handled", || draining(&p)).await;
    assert!(p.running(), "it waits for the batch in hand within the grace period");
    assert_eq!(exit_code(&mut p, Duration::from_secs(30)).await, Some(1), "past the grace period it exits 1");
    assert_eq!(price_consumer_info(&app).await.unwrap().ack_floor.stream_sequence, floor, "nothing was acked");

    // The batch comes back to the next processor, which waits on the lock too: a second signal exits at once.
    let since = Utc::now();
    let mut p = tributary_captured(&["processor"], &refs(&patient));
    eventually(Duration::from_secs(30), "the redelivered batch waiting on the lock", || {
        let w = watch.clone();
        async move { (waiting_on_locks(&w, since).await > 0).then_some(()) }
    })
    .await;
    sigterm(&p);
    eventually(Duration::from_secs(10), "the first signal to be handled", || draining(&p)).await;
    assert!(p.running(), "the first signal waits for the batch in hand");
    sigterm(&p);
    assert_eq!(exit_code(&mut p, Duration::from_secs(5)).await, Some(130), "a second signal exits at once");

    // Released: every event is processed, as the batch computation says.
    sqlx::raw_sql("ROLLBACK").execute(&mut lock).await.unwrap();
    let _p = processor(&quick);
    app.settled().await;
    let raw = price_truth(&app).await;
    assert_eq!(raw.len(), 40);
    verify_raw(&app, &raw).await;
}

/// The pool does not ping a connection used moments ago before handing it out (a round trip on every
/// transaction of the hot path): a connection that broke since fails the statement it was given, is
/// closed on release, and the next statement gets a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recently_used_pool_connection_is_not_pinged_and_a_broken_one_is_replaced() {
    let db = tributary_testkit::TestDb::create().await;
    let store = tributary_store::connect(&tributary_store::DbConfig {
        url: db.url().into(),
        max_connections: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let pool = store.get_postgres_connection_pool();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(pool).await.unwrap();
    // Back in the pool before it breaks: a release still on its way when the backend ends would find the
    // connection broken itself and replace it, and the statement below would never see it.
    eventually(Duration::from_secs(10), "the connection back in the pool", || async {
        (pool.num_idle() == 1).then_some(())
    })
    .await;
    let mut admin = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let ended: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)").bind(pid).fetch_one(&mut admin).await.unwrap();
    assert!(ended, "the pool's one connection is gone");
    let broken = sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()").fetch_one(pool).await;
    assert!(broken.is_err(), "handed out without a ping, the broken connection fails the statement: {broken:?}");
    let next: i32 = eventually(Duration::from_secs(10), "a new connection", || async {
        sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(pool).await.ok()
    })
    .await;
    assert_ne!(next, pid);
}
