//! Surveys: two provider simulators, the aggregator and the API; fully synced reads; a provider down or
//! slow; concurrent fresh reads sharing rounds; and the fresh barrier on the other read endpoints.

use crate::common::{TestApp, spawn_app, spawn_app_with};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tributary_aggregator::AggregatorConfig;
use tributary_gatherer::surveys::{Provider, serve};

/// A provider simulator whose HTTP server can be stopped and started again with the same items.
struct Sim {
    provider: Provider,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Sim {
    async fn start() -> Sim {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let provider = Provider::new();
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, provider.clone(), stop.clone()));
        Sim { provider, addr, stop }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn down(&mut self) {
        self.stop.cancel();
    }

    async fn up(&mut self) {
        self.stop = CancellationToken::new();
        let listener = TcpListener::bind(self.addr).await.unwrap();
        tokio::spawn(serve(listener, self.provider.clone(), self.stop.clone()));
    }

    async fn post(&self, http: &reqwest::Client, text: &str, device: &str, location: &str) -> Value {
        let r = http
            .post(format!("{}/api/v1/reporter", self.url()))
            .json(&json!({"text": text, "device": device, "location": location}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json().await.unwrap()
    }
}

/// A provider answering `GET /api/v1/reporter?after_id=&limit=` with `page(after_id, limit)`, on a free
/// port: its URL.
async fn fake_provider(page: impl Fn(i64, usize) -> Vec<Value> + Clone + Send + Sync + 'static) -> String {
    slow_provider(Duration::ZERO, page).await
}

/// [`fake_provider`], answering `delay` after each request with what `page` gave when it came.
async fn slow_provider(
    delay: Duration,
    page: impl Fn(i64, usize) -> Vec<Value> + Clone + Send + Sync + 'static,
) -> String {
    use axum::extract::Query;
    use std::collections::HashMap;
    let router = axum::Router::new().route(
        "/api/v1/reporter",
        axum::routing::get(move |q: Query<HashMap<String, String>>| async move {
            let after: i64 = q.get("after_id").and_then(|a| a.parse().ok()).unwrap_or(0);
            let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
            let answer = page(after, limit);
            tokio::time::sleep(delay).await;
            axum::Json(answer)
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// A provider's item `id` with `text`, from an iPhone in the north.
fn item(id: i64, text: &str) -> Value {
    json!({"id": id, "text": text, "device": "ios", "location": "north"})
}

async fn with_aggregator(app: &TestApp, sims: &[(&str, &Sim)], timeout_ms: u64) -> CancellationToken {
    let providers: Vec<(&str, String)> = sims.iter().map(|(name, sim)| (*name, sim.url())).collect();
    with_aggregator_at(app, &providers, timeout_ms, app.c.db.get_postgres_connection_pool().clone()).await
}

/// An aggregator pulling from the providers at these addresses, by name, reading its cursors on `pool`.
async fn with_aggregator_at(
    app: &TestApp,
    providers: &[(&str, String)],
    timeout_ms: u64,
    pool: sea_orm::sqlx::PgPool,
) -> CancellationToken {
    let mut cfg =
        AggregatorConfig { interval_secs: 0, provider_timeout_ms: timeout_ms, page_size: 7, ..Default::default() };
    for (name, url) in providers {
        cfg.providers.insert((*name).into(), url.clone());
    }
    let stop = CancellationToken::new();
    let (js, s) = (app.js(), stop.clone());
    tokio::spawn(async move { tributary_aggregator::run(cfg, js, pool, s).await });
    // Wait until the aggregator answers (its subscription is up).
    tributary_testkit::eventually(Duration::from_secs(10), "the aggregator to answer", || async {
        app.c.nats.request(tributary_aggregator::SYNC_SUBJECT, "{}".into()).await.ok()
    })
    .await;
    stop
}

fn statuses(body: &Value) -> Vec<(String, String)> {
    body["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["provider"].as_str().unwrap().to_owned(), p["status"].as_str().unwrap_or("").to_owned()))
        .collect()
}

fn keys(body: &Value) -> Vec<(String, i64)> {
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["provider"].as_str().unwrap().into(), i["provider_id"].as_i64().unwrap()))
        .collect()
}

/// An aggregator over the one provider `name` at `url`, each of its pulls within `timeout_ms`.
async fn with_provider(app: &TestApp, name: &str, url: String, timeout_ms: u64) -> CancellationToken {
    with_aggregator_at(app, &[(name, url)], timeout_ms, app.c.db.get_postgres_connection_pool().clone()).await
}

/// A fully synced read of `path` whose round found the one provider `name` ok: its body.
async fn synced(app: &TestApp, path: &str, name: &str) -> Value {
    let (s, b) = app.get(path).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(statuses(&b), [(name.to_owned(), "ok".to_owned())], "{b}");
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_appear_on_the_next_fresh_read_with_no_duplicates() {
    let app = spawn_app().await;
    let (blue, red) = (Sim::start().await, Sim::start().await);
    let _agg = with_aggregator(&app, &[("blue", &blue), ("red", &red)], 2000).await;
    let http = reqwest::Client::new();
    let mut posted = 0;
    for round in 0..6 {
        // More than a page (7) per provider in some rounds, none in others.
        for k in 0..(round * 4) {
            blue.post(&http, &format!("blue {round}/{k}"), if k % 2 == 0 { "ios" } else { "web" }, "north").await;
            posted += 1;
        }
        for k in 0..(round % 3) {
            red.post(&http, &format!("red {round}/{k}"), "android", "south").await;
            posted += 1;
        }
        let (s, body) = app.get("/v1/surveys?fresh=true&limit=1000").await;
        assert_eq!(s, 200, "{body}");
        let items = keys(&body);
        let unique: BTreeSet<_> = items.iter().cloned().collect();
        assert_eq!((items.len(), unique.len()), (posted, posted), "every post once, round {round}: {body}");
        assert_eq!(statuses(&body), vec![("blue".into(), "ok".into()), ("red".into(), "ok".into())]);
        assert!(body["round"]["round"].as_u64().is_some(), "{body}");
    }
    // Stored rows: unique per (provider, id) and equal to what the providers hold.
    let pool = app.c.db.get_postgres_connection_pool();
    let n: i64 = sea_orm::sqlx::query_scalar("SELECT count(*) FROM survey_items").fetch_one(pool).await.unwrap();
    assert_eq!(n as usize, posted);
    let cursors: Vec<(String, i64)> =
        sea_orm::sqlx::query_as("SELECT provider, cursor FROM survey_providers ORDER BY provider")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(cursors, vec![("blue".into(), 60), ("red".into(), 6)]);

    // Filters, limit and order (newest first) on stored data, without a round.
    let (_, b) = app.get("/v1/surveys?device=web&location=north&limit=3").await;
    let items = b["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(items.iter().all(|i| i["device"] == "web" && i["provider"] == "blue"));
    assert!(b.get("round").is_none());
    let (_, b) = app.get("/v1/surveys?device=android").await;
    assert_eq!(b["items"].as_array().unwrap().len(), 6);
    let (s, b) = app.get("/v1/surveys?limit=0").await;
    assert_eq!((s.as_u16(), b["error"]["field"].as_str()), (400, Some("limit")));
    let (s, b) = app.get("/v1/surveys?fresh=maybe").await;
    assert_eq!((s.as_u16(), b["error"]["code"].as_str()), (400, Some("invalid_fresh")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_down_or_slow_is_reported_and_never_blocks_the_other() {
    let app = spawn_app().await;
    let (blue, mut red) = (Sim::start().await, Sim::start().await);
    let _agg = with_aggregator(&app, &[("blue", &blue), ("red", &red)], 700).await;
    let http = reqwest::Client::new();
    blue.post(&http, "b1", "ios", "north").await;
    red.post(&http, "r1", "ios", "north").await;
    let (_, b) = app.get("/v1/surveys?fresh=true").await;
    assert_eq!(keys(&b).len(), 2, "{b}");

    // Red is killed: reported unreachable, blue's new item still flows.
    red.down();
    red.provider.post("r2 while down", "ios", "north");
    blue.post(&http, "b2", "ios", "north").await;
    let (s, b) = app.get("/v1/surveys?fresh=true").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(statuses(&b), vec![("blue".into(), "ok".into()), ("red".into(), "unreachable".into())], "{b}");
    assert!(keys(&b).contains(&("blue".into(), 2)) && !keys(&b).contains(&("red".into(), 2)), "{b}");
    let red_round =
        b["round"]["providers"].as_array().unwrap().iter().find(|p| p["provider"] == "red").cloned().unwrap();
    assert_eq!(
        (red_round["status"].as_str(), red_round["cursor"].as_i64()),
        (Some("unreachable"), Some(1)),
        "{red_round}"
    );

    // Red comes back: it catches up from its cursor.
    red.up().await;
    let (_, b) = app.get("/v1/surveys?fresh=true").await;
    assert_eq!(statuses(&b), vec![("blue".into(), "ok".into()), ("red".into(), "ok".into())], "{b}");
    assert!(keys(&b).contains(&("red".into(), 2)), "{b}");
    assert_eq!(keys(&b).len(), 4);

    // Red is slow: past its deadline it is reported as a timeout, and the read still answers with blue.
    red.provider.set_slow(Some(Duration::from_secs(5)));
    blue.post(&http, "b3", "ios", "north").await;
    let started = std::time::Instant::now();
    let (s, b) = app.get("/v1/surveys?fresh=true").await;
    assert_eq!(s, 200, "{b}");
    assert!(started.elapsed() < Duration::from_secs(5), "the slow provider held the read up");
    assert_eq!(statuses(&b)[1], ("red".into(), "timeout".into()), "{b}");
    assert!(keys(&b).contains(&("blue".into(), 3)));
}

/// An item without a whole-number id is dead-lettered once, with its reason, and the provider's other
/// items flow as before. It failed the provider's whole page, so its pull, round after round: nothing of
/// that provider came in again. Then, since it moves no cursor and the provider answers it on every
/// page, it was stored and dead-lettered again by every pull after the stream's duplicate window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_without_an_id_is_dead_lettered_and_the_providers_others_still_flow() {
    let app = spawn_app_with(|c| c.streams.duplicate_window_secs = 1).await;
    // A provider holding the items 1 to `held`, and one whose id is text, which it answers on every page.
    let held = Arc::new(AtomicI64::new(2));
    let url = fake_provider({
        let held = held.clone();
        move |after, _| {
            let last = held.load(Relaxed);
            let mut page: Vec<Value> = (after + 1..=last).map(|id| item(id, &format!("good {id}"))).collect();
            page.push(json!({"id": "x-1", "text": "bad", "device": "ios", "location": "north"}));
            page
        }
    })
    .await;
    let _agg = with_provider(&app, "odd", url, 2000).await;

    let b = synced(&app, "/v1/surveys?fresh=true", "odd").await;
    assert_eq!(keys(&b), [("odd".to_owned(), 2), ("odd".to_owned(), 1)], "{b}");
    held.store(3, Relaxed);
    let (_, b) = app.get("/v1/surveys?fresh=true").await;
    assert_eq!(keys(&b).len(), 3, "the next item came in: {b}");
    // Past the duplicate window (the time under test), the next round pulls the item again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (s, b) = app.get("/v1/surveys?fresh=true").await;
    assert_eq!((s.as_u16(), keys(&b).len()), (200, 3), "{b}");

    app.settled().await;
    let (_, body) = app.get("/v1/dlq?limit=100").await;
    let letters = body["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "dead-lettered once, though pulled three times: {body}");
    assert_eq!(letters[0]["subject"], "survey.odd");
    assert!(letters[0]["payload"].as_str().unwrap().contains("x-1"), "{body}");
    assert!(letters[0]["reason"].as_str().unwrap().contains("id"), "{body}");
}

/// An item larger than NATS takes (its `max_payload`, 1 MB here) is dead-lettered by id and size, and the
/// provider's later items flow. The round failed on it, with the cursor below it, on every pull for ever:
/// the provider was reported failing and nothing after the item was ever stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_larger_than_nats_takes_is_dead_lettered_and_the_next_flow() {
    let app = spawn_app().await;
    let url = fake_provider(|after, limit| {
        let mut page: Vec<Value> = (after + 1..=3).map(|id| item(id, &format!("item {id}"))).collect();
        if let Some(big) = page.iter_mut().find(|i| i["id"] == 2) {
            big["text"] = "x".repeat(2 << 20).into();
        }
        page.truncate(limit);
        page
    })
    .await;
    let _agg = with_provider(&app, "huge", url, 5000).await;

    let b = synced(&app, "/v1/surveys?fresh=true", "huge").await;
    assert_eq!(keys(&b), [("huge".to_owned(), 3), ("huge".to_owned(), 1)], "{b}");

    app.settled().await;
    let (_, body) = app.get("/v1/dlq?limit=100").await;
    let letters = body["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{body}");
    assert_eq!(letters[0]["subject"], "survey.huge");
    let reason = letters[0]["reason"].as_str().unwrap();
    assert!(reason.contains("item 2 is 2097") && reason.contains("max_payload"), "{reason}");
    // The stand-in's own key: the item, should it fit later, is not a duplicate of it.
    let stream = app.js().get_stream("SURVEYS").await.unwrap();
    let stand_in = stream.get_raw_message(letters[0]["original_seq"].as_u64().unwrap()).await.unwrap();
    let key = stand_in.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned());
    assert_eq!(key.as_deref(), Some("survey:huge:2:oversized"), "{body}");
}

/// A provider holding the items 1 to `held`, answering `delay` after each request: its URL, and how many
/// requests it has had.
async fn counting_provider(delay: Duration, held: Arc<AtomicI64>) -> (String, Arc<AtomicUsize>) {
    let asked = Arc::new(AtomicUsize::new(0));
    let url = slow_provider(delay, {
        let asked = asked.clone();
        move |after, limit| {
            asked.fetch_add(1, Relaxed);
            (after + 1..=held.load(Relaxed)).map(|id| item(id, &format!("item {id}"))).take(limit).collect()
        }
    })
    .await;
    (url, asked)
}

/// Once the aggregator stops, no round starts after the one in flight: a request waiting for the next
/// one is told the round was stopped. And an interval's tick during a round starts none after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_round_starts_after_shutdown_nor_for_a_tick_during_one() {
    use tributary_aggregator::Rounds;
    let app = spawn_app().await;
    let (url, asked) = counting_provider(Duration::from_millis(800), Arc::new(AtomicI64::new(1))).await;
    let mut cfg = AggregatorConfig { interval_secs: 0, provider_timeout_ms: 5000, ..Default::default() };
    cfg.providers.insert("late".into(), url);
    let stop = CancellationToken::new();
    let pool = app.c.db.get_postgres_connection_pool().clone();
    let rounds = Arc::new(Rounds::new(cfg, app.js(), pool, stop.clone()).unwrap());

    let first = tokio::spawn({
        let r = rounds.clone();
        async move { r.sync().await }
    });
    tributary_testkit::eventually(Duration::from_secs(10), "the round to ask the provider", || async {
        (asked.load(Relaxed) >= 1).then_some(())
    })
    .await;
    rounds.tick();
    let second = tokio::spawn({
        let r = rounds.clone();
        async move { r.sync().await }
    });
    stop.cancel();
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!((first.round, first.providers[0].status.as_str()), (1, "ok"), "{first:?}");
    let why = second.providers[0].error.as_deref().unwrap_or_default();
    assert!(why.contains("stopped"), "{second:?}");
    // One round: the page of the provider's one item, then the page that brings nothing new and ends it.
    assert_eq!((rounds.rounds(), asked.load(Relaxed)), (1, 2), "one round, two requests to the provider");
}

/// A fully synced read holds what a provider held when the read came, though a round was in flight:
/// the read joined that round, which had already asked the provider, and missed the item in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_read_during_a_round_holds_what_came_after_that_round_asked() {
    let app = spawn_app().await;
    let held = Arc::new(AtomicI64::new(1));
    let (url, asked) = counting_provider(Duration::from_millis(800), held.clone()).await;
    let _agg = with_provider(&app, "late", url, 5000).await;

    // (Starting the aggregator ran a round: the first read starts the next one.)
    let before = asked.load(Relaxed);
    let first = app.get("/v1/surveys?fresh=true");
    let second = async {
        // Once the first read's round has asked the provider, an item comes in, then a second read.
        tributary_testkit::eventually(Duration::from_secs(10), "the round to ask the provider", || async {
            (asked.load(Relaxed) > before).then_some(())
        })
        .await;
        held.store(2, Relaxed);
        app.get("/v1/surveys?fresh=true").await
    };
    let ((s1, b1), (s2, b2)) = tokio::join!(first, second);
    assert_eq!((s1.as_u16(), s2.as_u16()), (200, 200), "{b1}\n{b2}");
    assert!(keys(&b1).contains(&("late".to_owned(), 1)), "{b1}");
    assert_eq!(keys(&b2), [("late".to_owned(), 2), ("late".to_owned(), 1)], "{b2}");
    assert!(b2["round"]["round"].as_u64() > b1["round"]["round"].as_u64(), "{b1}\n{b2}");
}

/// A round pages until a page comes back with fewer rows than asked for, counted as the provider sent
/// them: a full page with a row repeated (or one at the cursor, from a provider taking `after_id` as
/// inclusive) is not the end. It was, once the repeat was left out: the round said `ok` and a fully
/// synced read missed every later item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_page_with_a_row_repeated_is_not_the_last() {
    let app = spawn_app().await;
    // Items 1 to 20; each page's first row comes twice (the aggregator asks for 7 at a time).
    let url = fake_provider(|after, limit| {
        let mut page: Vec<Value> = (after + 1..=20).map(|id| item(id, &format!("item {id}"))).collect();
        if let Some(first) = page.first().cloned() {
            page.insert(0, first);
        }
        page.truncate(limit);
        page
    })
    .await;
    let _agg = with_provider(&app, "twice", url, 2000).await;

    let b = synced(&app, "/v1/surveys?fresh=true&limit=100", "twice").await;
    assert_eq!(keys(&b).len(), 20, "every item, in one fully synced read: {b}");
}

/// A provider that answers fewer items than asked for per page (it caps `limit` at 3; the aggregator
/// asks for 7) is read to its end in one round. A short page was taken for the last: the round said
/// `ok` after the first page, and a fully synced read had 3 of the 20 items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_capping_its_pages_below_ours_is_read_to_the_end() {
    let app = spawn_app().await;
    let url = fake_provider(|after, limit| {
        (after + 1..=20).map(|id| item(id, &format!("item {id}"))).take(limit.min(3)).collect()
    })
    .await;
    let _agg = with_provider(&app, "capped", url, 5000).await;

    let b = synced(&app, "/v1/surveys?fresh=true&limit=100", "capped").await;
    assert_eq!(keys(&b).len(), 20, "every item, in one fully synced read: {b}");
}

/// A provider whose full pages bring no usable id (here ids are text) cannot be paged past them: the
/// read says so (`error`, naming it) instead of `ok`. It said `ok`, and nothing after the first page
/// was ever pulled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_page_without_a_usable_id_is_reported_not_taken_for_the_end() {
    let app = spawn_app().await;
    let url = fake_provider(|_, limit| {
        (1..=50)
            .map(|id| json!({"id": format!("{id}"), "text": "t", "device": "ios", "location": "north"}))
            .take(limit)
            .collect()
    })
    .await;
    let _agg = with_provider(&app, "textual", url, 5000).await;

    let (s, b) = app.get("/v1/surveys?fresh=true&limit=100").await;
    assert_eq!(statuses(&b), [("textual".to_owned(), "error".to_owned())], "{s}: {b}");
    let error = b["providers"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("full page") && error.contains("whole-number id"), "{b}");
}

/// A provider whose answer is longer than `aggregator.max_page_bytes` fails its pull, naming the bound,
/// instead of being read whole: the deadline bounds time, not bytes, and a huge or endless answer took
/// as much memory as it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_longer_than_the_page_bound_fails_the_pull_not_the_memory() {
    use tributary_aggregator::Rounds;
    let app = spawn_app().await;
    let url =
        fake_provider(|after, limit| (after + 1..=50).map(|id| item(id, &"x".repeat(10_000))).take(limit).collect())
            .await;
    let mut cfg =
        AggregatorConfig { interval_secs: 0, provider_timeout_ms: 5000, max_page_bytes: 100_000, ..Default::default() };
    cfg.providers.insert("big".into(), url);
    let pool = app.c.db.get_postgres_connection_pool().clone();
    let rounds = Arc::new(Rounds::new(cfg, app.js(), pool, CancellationToken::new()).unwrap());
    let report = rounds.sync().await;
    let p = &report.providers[0];
    assert_eq!(p.status, "error", "{report:?}");
    assert!(p.error.as_deref().unwrap_or_default().contains("max_page_bytes (100000 bytes)"), "{report:?}");
}

/// A round whose read of the stored cursors gets no answer (its connection cut off silently) goes on
/// from the cursors in memory after a provider's deadline. It waited for ever, and since every request
/// joins the round in flight, no survey was synced again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_whose_database_read_stalls_goes_on_without_it() {
    let app = spawn_app().await;
    let blue = Sim::start().await;
    // The aggregator's one database connection goes through a proxy that can cut it off silently.
    let url = &app.c.config.database.url;
    let (user, rest) = url.split_once('@').unwrap();
    let (server, database) = rest.split_once('/').unwrap();
    let proxy = tributary_testkit::TcpProxy::start(server);
    let pool = sea_orm::sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{user}@{}/{database}", proxy.addr()))
        .await
        .unwrap();
    let _agg = with_aggregator_at(&app, &[("blue", blue.url())], 1000, pool.clone()).await;
    blue.provider.post("b1", "ios", "north");
    let (s, b) = app.get("/v1/surveys?fresh=true").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(keys(&b).len(), 1, "{b}");

    let port: i32 = sea_orm::sqlx::query_scalar("SELECT inet_client_port()").fetch_one(&pool).await.unwrap();
    assert!(proxy.silence(port as u16));
    blue.provider.post("b2", "ios", "north");
    let b = synced(&app, "/v1/surveys?fresh=true", "blue").await;
    assert_eq!(keys(&b).len(), 2, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_fresh_reads_share_at_most_two_rounds() {
    let app = spawn_app().await;
    let (blue, red) = (Sim::start().await, Sim::start().await);
    let _agg = with_aggregator(&app, &[("blue", &blue), ("red", &red)], 5000).await;
    red.provider.post("r1", "ios", "north");
    // A round that takes a second, so that all fifty reads arrive while it, or the one after it, is in
    // flight.
    blue.provider.set_slow(Some(Duration::from_secs(1)));
    let reads = (0..50).map(|_| app.get("/v1/surveys?fresh=true"));
    let answers = futures::future::join_all(reads).await;
    let rounds: BTreeSet<u64> = answers
        .iter()
        .map(|(s, b)| {
            assert_eq!(*s, 200, "{b}");
            assert_eq!(keys(b), vec![("red".to_owned(), 1)]);
            b["round"]["round"].as_u64().unwrap()
        })
        .collect();
    // The reads that came once the first round had asked the providers share the one after it.
    assert!(rounds.len() <= 2, "fifty reads, rounds {rounds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fresh_barrier_returns_a_just_published_price_or_504s() {
    let mut app = spawn_app_with(|c| c.api.fresh_timeout_ms = 1500).await;
    for day in 1..=20 {
        app.publish_plain("price.FRESH", &format!(r#"{{"ts":"2026-11-{day:02}","price":{}}}"#, 100 + day)).await;
        let (s, b) = app.get("/v1/series/price/FRESH?fresh=true").await;
        assert_eq!(s, 200, "{b}");
        let points = b["points"].as_array().unwrap();
        assert_eq!(points.len(), day, "the price just published is there: {b}");
        assert_eq!(points.last().unwrap()["value"].as_f64(), Some(100.0 + day as f64));
    }
    app.publish_plain("metric.fresh-1", r#"{"cpu_usage":12.5}"#).await;
    let (_, b) = app.get("/v1/metrics/latest?limit=5&fresh=true").await;
    assert_eq!(b["servers"][0]["host"], "fresh-1", "{b}");

    // No processor: the barrier cannot be met, and says so.
    app.kill_processors();
    app.publish_plain("price.FRESH", r#"{"ts":"2026-11-25","price":1}"#).await;
    let (s, b) = app.get("/v1/series/price/FRESH?fresh=true").await;
    assert_eq!((s.as_u16(), b["error"]["code"].as_str()), (504, Some("sync_timeout")), "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("PRICES"), "{b}");
    // And a fresh survey read with no aggregator running is a clear 503.
    let (s, b) = app.get("/v1/surveys?fresh=true").await;
    assert_eq!((s.as_u16(), b["error"]["code"].as_str()), (503, Some("unavailable")), "{b}");
    // NATS frozen (connected, answering nothing): still the 504 at the fresh timeout. It was a 503 after
    // the client's own request timeout, or the request deadline's 503 when that was shorter.
    app.nats_server().freeze(true);
    let (s, b) = app.get("/v1/series/price/FRESH?fresh=true").await;
    // And the group's status says it cannot tell: it answered 200 with no members and no lag.
    let (status, group) = app.get("/v1/status").await;
    app.nats_server().freeze(false);
    assert_eq!((s.as_u16(), b["error"]["code"].as_str()), (504, Some("sync_timeout")), "{b}");
    assert_eq!((status.as_u16(), group["error"]["code"].as_str()), (503, Some("unavailable")), "{group}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_simulator_speaks_the_reporter_api() {
    let sim = Sim::start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/reporter", sim.url());
    let item = sim.post(&http, "road closed", "ios", "north").await;
    assert_eq!((item["id"].as_i64(), item["text"].as_str()), (Some(1), Some("road closed")));
    assert!(item["created_at"].as_str().is_some());
    for k in 0..104 {
        sim.provider.post(&format!("t{k}"), if k % 2 == 0 { "web" } else { "ios" }, "south");
    }
    let bad = [
        (json!({"text": "a", "device": "d"}), "location"),
        (json!({"text": " ", "device": "d", "location": "l"}), "text"),
        (json!({"text": 1, "device": "d", "location": "l"}), "text"),
    ];
    for (body, field) in bad {
        let r = http.post(&url).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 400);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["field"], field, "{e}");
    }
    let r = http.post(&url).body("nope").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let get = |q: &str| {
        let (http, url) = (http.clone(), format!("{url}?{q}"));
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (_, all) = get("").await;
    assert_eq!(all.as_array().unwrap().len(), 100, "limit defaults to 100");
    let (_, page) = get("after_id=100&limit=10").await;
    let ids: Vec<i64> = page.as_array().unwrap().iter().map(|i| i["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![101, 102, 103, 104, 105]);
    let (_, web) = get("device=web&location=south&limit=1000").await;
    assert_eq!(web.as_array().unwrap().len(), 52);
    assert!(web.as_array().unwrap().iter().all(|i| i["device"] == "web"));
    let (s, e) = get("limit=0").await;
    assert_eq!((s, e["error"]["field"].as_str()), (400, Some("limit")));
    let (s, _) = get("after_id=x").await;
    assert_eq!(s, 400);
}

/// A provider's `last_sync` is its latest successful pull whatever the batching: a success followed by a
/// timeout in one batch counts as in two. (A batch kept only its newest outcome per provider, so the
/// success in it was lost.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_sync_counts_a_success_followed_by_a_failure_in_the_same_batch() {
    use tributary_broker::Delivery;
    use tributary_broker::surveys::{PullStatus, SurveyEvent, SurveyRecord};
    use tributary_broker::ts::Ts;
    let db = tributary_testkit::TestDb::create().await;
    let pool = sea_orm::sqlx::PgPool::connect(db.url()).await.unwrap();
    let outcome = |provider: &str, status: &str, at: &str, seq: u64| Delivery {
        event: SurveyRecord {
            provider: provider.into(),
            event: SurveyEvent::Status(PullStatus { status: status.into(), at: Ts::parse(at).unwrap(), error: None }),
        },
        seq,
        received: Ts::parse(at).unwrap(),
    };
    let handler = tributary_processor::surveys::SurveyHandler::new(pool.clone());
    let (ok, timeout) = ("2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z");
    handler.commit(&[outcome("one", "ok", ok, 1), outcome("one", "timeout", timeout, 2)]).await.unwrap();
    handler.commit(&[outcome("two", "ok", ok, 3)]).await.unwrap();
    handler.commit(&[outcome("two", "timeout", timeout, 4)]).await.unwrap();
    let rows: Vec<(String, Option<String>, Option<chrono::DateTime<chrono::Utc>>)> =
        sea_orm::sqlx::query_as("SELECT provider, status, last_sync FROM survey_providers ORDER BY provider")
            .fetch_all(&pool)
            .await
            .unwrap();
    let synced = Some(Ts::parse(ok).unwrap().0);
    let timed_out = Some("timeout".to_owned());
    assert_eq!(rows, [("one".to_owned(), timed_out.clone(), synced), ("two".to_owned(), timed_out, synced)]);
}
