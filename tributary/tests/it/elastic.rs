//! Elastic processor groups on a plain `nats-server -js` (no server configuration: the streams carry
//! their partitions): processor processes share the partitions by themselves, one killed with SIGKILL
//! and never restarted has its partitions taken over, one that joins later takes its share, and every
//! stored value equals the batch computation.

use crate::common::{Proc, TestApp, exit_code, sigterm, spawn_services, tributary, waiting_on_locks};
use crate::differential::verify;
use crate::faults::{env_of, metric_truth, price_truth, publish_chaos, refs, stream_messages};
use crate::samples::verify_metrics;
use async_nats::jetstream::consumer::PullConsumer;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tributary_broker::Kind;
use tributary_broker::group::{Group, Member};
use tributary_testkit::{NatsServer, eventually};

const PARTITIONS: u32 = 4;

/// The live members of the test's group, once the first processor has made the bucket.
pub(crate) async fn members(app: &TestApp) -> Option<Vec<Member>> {
    Group::open(&app.c.js, &app.c.config.processor.durable_prefix).await.ok()??.members().await.ok()
}

/// Whether the live members own every partition of both partitioned kinds once, `counts` of them each
/// (in some order), and none owns what another does.
fn dealt(members: &[Member], counts: &[usize]) -> bool {
    let mut owned: Vec<&String> = members.iter().flat_map(|m| &m.owns).collect();
    let n = owned.len();
    owned.sort();
    owned.dedup();
    let mut have: Vec<usize> = members.iter().map(|m| m.owns.len()).collect();
    have.sort();
    let mut want = counts.to_vec();
    want.sort();
    owned.len() == n && n == 2 * PARTITIONS as usize && have == want
}

/// Waits up to a minute until the live members own every partition, `counts` of them each.
async fn until_dealt(app: &TestApp, what: &str, counts: &[usize]) {
    until_dealt_within(app, Duration::from_secs(60), what, counts).await
}

/// [`until_dealt`], waiting up to `within`.
async fn until_dealt_within(app: &TestApp, within: Duration, what: &str, counts: &[usize]) {
    eventually(within, what, || async {
        members(app).await.filter(|m| m.len() == counts.len() && dealt(m, counts)).map(|_| ())
    })
    .await
}

/// The ack floor (stream sequence) of each processor consumer named.
async fn ack_floors(app: &TestApp, durables: &[String]) -> HashMap<String, u64> {
    let mut floors = HashMap::new();
    for durable in durables {
        let kind = if durable.contains("-price-") { Kind::Price } else { Kind::Sample };
        let Ok(stream) = app.c.js.get_stream(kind.stream()).await else { continue };
        let Ok(mut c): Result<PullConsumer, _> = stream.get_consumer(durable).await else { continue };
        if let Ok(info) = c.info().await {
            floors.insert(durable.clone(), info.ack_floor.stream_sequence);
        }
    }
    floors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processors_share_partitions_take_over_from_a_killed_one_and_make_room_for_a_newcomer() {
    let events: usize = std::env::var("ELASTIC_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(12_000);
    let nats = NatsServer::start();
    let app = spawn_services(nats.url(), Some(nats), |c| c.processor.partitions = PARTITIONS).await;
    let env = env_of(&app, &[("TRIBUTARY_PROCESSOR__PARTITIONS", &PARTITIONS.to_string())]);
    let processor = || tributary(&["processor"], &refs(&env));

    // Three processes, no per-process settings: eight partitions (prices and metrics, four each) dealt
    // 3, 3 and 2.
    let mut procs: Vec<Proc> = (0..3).map(|_| processor()).collect();
    eventually(Duration::from_secs(60), "three processors sharing eight partitions 3/3/2", || async {
        members(&app).await.filter(|m| m.len() == 3 && dealt(m, &[3, 3, 2])).map(|_| ())
    })
    .await;

    // Mid-ingest, the processor owning the most partitions is killed and never restarted.
    let publisher = tokio::spawn(publish_chaos(app.js(), events, 60, 7));
    eventually(Duration::from_secs(120), "a third of the prices stored", || async {
        stream_messages(&app, Kind::Price).await.filter(|n| *n as usize >= events / 3).map(|_| ())
    })
    .await;
    let before = members(&app).await.expect("the group");
    let victim = before
        .iter()
        .filter(|m| procs.iter().any(|p| p.id() == m.pid))
        .max_by_key(|m| m.owns.len())
        .expect("a member that is one of ours")
        .clone();
    let floors = ack_floors(&app, &victim.owns).await;
    let at = procs.iter().position(|p| p.id() == victim.pid).unwrap();
    procs[at].kill9();
    let killed = Instant::now();
    procs.remove(at);

    // Its partitions go to the two left, which commit on them: the takeover time.
    let takeover = eventually(Duration::from_secs(60), "the killed processor's partitions taken over", || async {
        let now = members(&app).await?;
        let owned_elsewhere = victim.owns.iter().all(|d| now.iter().any(|m| m.id != victim.id && m.owns.contains(d)));
        let moved = ack_floors(&app, &victim.owns).await;
        let committed = victim.owns.iter().all(|d| moved.get(d).zip(floors.get(d)).is_some_and(|(m, f)| m > f));
        (owned_elsewhere && committed).then(|| killed.elapsed())
    })
    .await;
    eprintln!(
        "elastic: SIGKILL of a processor owning {:?} → every one of them owned by another and committed on within {:.1} s",
        victim.owns,
        takeover.as_secs_f64()
    );

    // A fourth joins (the third alive) and takes its share.
    procs.push(processor());
    let newcomer = procs.last().unwrap().id();
    eventually(Duration::from_secs(60), "the newcomer taking its share, 3/3/2 again", || async {
        let m = members(&app).await?;
        let mine = m.iter().find(|m| m.pid == newcomer)?;
        (m.len() == 3 && !mine.owns.is_empty() && dealt(&m, &[3, 3, 2])).then_some(())
    })
    .await;

    let report = publisher.await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", &report.failed[..report.failed.len().min(5)]);
    app.settled_within(Duration::from_secs(120)).await;
    let raw = price_truth(&app).await;
    verify(&app, &raw, &HashMap::new()).await;
    let samples = metric_truth(&app).await;
    verify_metrics(&app, &samples).await;

    // /v1/status lists the partitions, their owners and their lag.
    let (status, body) = app.get("/v1/status").await;
    assert_eq!(status, 200, "{body}");
    let partitions = body["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 2 * PARTITIONS as usize, "{body}");
    let owners: BTreeMap<&str, &str> =
        partitions.iter().map(|p| (p["consumer"].as_str().unwrap(), p["owner"].as_str().unwrap_or(""))).collect();
    assert!(owners.values().all(|o| !o.is_empty()), "every partition has an owner: {body}");
    assert!(partitions.iter().all(|p| p["pending"] == 0), "nothing pending once settled: {body}");
}

/// Lowering `processor.partitions` leaves nothing behind: messages stored under the larger count, in
/// partitions that no longer exist, are consumed by the processors of the smaller one. A processor
/// started once they are drained (it finds no leftover) deals the current partitions as the first does:
/// with the leftovers among the units the group dealt, the two dealt different lists, and a metric
/// partition fell to neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_the_partition_count_leaves_no_message_behind() {
    let nats = NatsServer::start();
    let mut app = spawn_services(nats.url(), Some(nats), |c| c.processor.partitions = PARTITIONS).await;
    // A processor ran with four partitions: their consumers exist. Then no processor runs while prices
    // arrive, over all four.
    app.start_processor();
    let prefix = app.c.config.processor.durable_prefix.clone();
    eventually(Duration::from_secs(60), "the four price partitions' consumers", || async {
        let stream = app.c.js.get_stream("PRICES").await.ok()?;
        for p in 0..PARTITIONS {
            let _: PullConsumer = stream.get_consumer(&format!("{prefix}-price-p{p}")).await.ok()?;
        }
        Some(())
    })
    .await;
    app.kill_processors();
    let publish = |from: i64| {
        let js = app.js();
        async move {
            let mut p = tributary_broker::Publisher::new(js, 256);
            for i in 0..200i64 {
                let ts =
                    chrono::TimeZone::timestamp_opt(&chrono::Utc, 1_767_225_600 + (from + i / 20) * 86_400, 0).unwrap();
                let e = tributary_broker::events::PriceEvent {
                    ts: Some(tributary_broker::ts::Ts(ts)),
                    price: 10.0 + i as f64,
                    volume: None,
                };
                p.publish(format!("price.L{}", i % 20), None, &e).await;
            }
            assert!(p.finish().await.failed.is_empty());
        }
    };
    publish(0).await;
    // The count is lowered to three: the streams change, and more prices go to the three partitions left.
    tributary_broker::streams::ensure(&app.c.js, &app.c.config.streams, 3).await.unwrap();
    publish(10).await;
    let env = env_of(&app, &[("TRIBUTARY_PROCESSOR__PARTITIONS", "3")]);
    let _first = tributary(&["processor"], &refs(&env));
    // Every partition of the larger count is drained, and everything stored is what the batch computes.
    app.settled_within(Duration::from_secs(120)).await;
    verify(&app, &price_truth(&app).await, &HashMap::new()).await;

    // A second processor, which finds no leftover: the two share every current partition.
    let second = tributary(&["processor"], &refs(&env));
    let prefix = &prefix;
    let current: Vec<String> = [Kind::Price, Kind::Sample]
        .into_iter()
        .flat_map(|k| (0..3).map(move |p| tributary_broker::consume::partition_consumer(prefix, k, p).0))
        .collect();
    eventually(Duration::from_secs(60), "two processors owning every current partition", || async {
        let m = members(&app).await?;
        let both = m.len() == 2 && m.iter().any(|m| m.pid == second.id()) && m.iter().all(|m| !m.owns.is_empty());
        (both && current.iter().all(|c| m.iter().any(|m| m.owns.contains(c)))).then_some(())
    })
    .await;
    for host in 0..24 {
        app.publish_plain(&format!("metric.lower-{host}"), r#"{"cpu_usage":1}"#).await;
    }
    publish(20).await;
    app.settled_within(Duration::from_secs(60)).await;
    verify(&app, &price_truth(&app).await, &HashMap::new()).await;
}

/// Opening the group (what `/v1/status` reads) says "no group" only when no processor ever made its
/// bucket; NATS not answering is an error, so the route answers 503 rather than an empty group. (It said
/// "no group" for any error.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_the_group_tells_no_group_from_no_answer() {
    let nats = NatsServer::start();
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_millis(500)))
        .connect(nats.url())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    assert!(Group::open(&js, "g").await.unwrap().is_none(), "no processor joined yet");
    Group::join(&js, "g", Duration::from_secs(10), 1).await.unwrap();
    assert!(Group::open(&js, "g").await.unwrap().is_some());
    nats.freeze(true);
    let e = Group::open(&js, "g").await.err().expect("an error, not a group or none");
    nats.freeze(false);
    assert!(e.to_string().contains("processor group"), "{e}");
}

/// The group's bucket is held in memory, and a single server forgets it when it restarts. Every later
/// heartbeat failed, each processor kept the members it had last read, and the partitions of one that
/// stopped after the restart stayed dealt to it, consumed by no one, for good. A failed heartbeat now
/// joins again, which makes the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_nats_restart_the_group_forms_again_and_a_killed_processors_partitions_move() {
    let nats = NatsServer::start();
    let mut app = spawn_services(nats.url(), Some(nats), |c| c.processor.partitions = PARTITIONS).await;
    let env = env_of(&app, &[("TRIBUTARY_PROCESSOR__PARTITIONS", &PARTITIONS.to_string())]);
    let mut procs: Vec<Proc> = (0..2).map(|_| tributary(&["processor"], &refs(&env))).collect();
    until_dealt(&app, "two processors sharing eight partitions 4/4", &[4, 4]).await;

    app.nats().restart();
    until_dealt(&app, "the group formed again after the restart", &[4, 4]).await;
    procs[0].kill9();
    until_dealt(&app, "the one left owning all eight", &[8]).await;
    let now = chrono::Utc::now().timestamp_millis();
    for i in 0..16 {
        app.publish_plain(&format!("price.R{i}"), r#"{"ts":"2026-01-01","price":1}"#).await;
        app.publish_plain(&format!("metric.r{i}"), &format!(r#"{{"ts":{now},"cpu":1}}"#)).await;
    }
    app.settled().await;
    let pool = app.c.db.get_postgres_connection_pool();
    let count = async |sql: &'static str| sea_orm::sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.unwrap();
    assert_eq!(count("SELECT count(*) FROM price_points").await, 16, "every price partition's");
    assert_eq!(count("SELECT count(*) FROM metric_latest").await, 16, "every metric partition's");
}

/// A processor told to stop leaves the group before it drains: the others deal its partitions among
/// themselves at their next heartbeat while its last batches are still in their transactions. (It left
/// after them, so its partitions stayed dealt to it, and read by no one, until the slowest had finished
/// or its record lapsed: `takeover_secs`, 30 here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_processor_leaves_the_group_before_it_drains() {
    use sea_orm::sqlx::{self, Connection};
    let nats = NatsServer::start();
    let app = spawn_services(nats.url(), Some(nats), |c| c.processor.partitions = PARTITIONS).await;
    let env = env_of(
        &app,
        &[
            ("TRIBUTARY_PROCESSOR__PARTITIONS", &PARTITIONS.to_string()),
            ("TRIBUTARY_PROCESSOR__TAKEOVER_SECS", "30"),
            ("TRIBUTARY_PROCESSOR__SHUTDOWN_GRACE_SECS", "120"),
        ],
    );
    let since = chrono::Utc::now();
    let mut procs: Vec<Proc> = (0..2).map(|_| tributary(&["processor"], &refs(&env))).collect();
    until_dealt(&app, "two processors sharing eight partitions 4/4", &[4, 4]).await;

    // Every price write waits on the test's lock, so the stopping processor's price partitions cannot
    // drain until it is released.
    let mut lock = sqlx::PgConnection::connect(&app.c.config.database.url).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE price_points IN ACCESS EXCLUSIVE MODE").execute(&mut lock).await.unwrap();
    for i in 0..16 {
        app.publish_plain(&format!("price.R{i}"), r#"{"ts":"2026-01-01","price":1}"#).await;
    }
    let pool = app.c.db.get_postgres_connection_pool();
    eventually(Duration::from_secs(30), "both processors' price writes waiting on the lock", || async {
        (waiting_on_locks(pool, since).await >= 2).then_some(())
    })
    .await;
    sigterm(&procs[0]);
    // Well inside `takeover_secs`: by the other's next heartbeat.
    until_dealt_within(&app, Duration::from_secs(20), "the other owning all eight", &[8]).await;
    assert!(procs[0].running(), "the stopping processor still waits on its batch");

    sqlx::raw_sql("ROLLBACK").execute(&mut lock).await.unwrap();
    assert_eq!(exit_code(&mut procs[0], Duration::from_secs(60)).await, Some(0), "it drains and exits 0");
    app.settled().await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM price_points").fetch_one(pool).await.unwrap();
    assert_eq!(stored, 16);
}
