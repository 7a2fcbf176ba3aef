//! API behaviour: errors are JSON with the right status, documented routes exist.

use crate::common::spawn_app;
use reqwest::Method;
use sea_orm::sqlx::{self, Connection};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_with_the_right_status() {
    let app = spawn_app().await;
    app.publish_plain("price.ACME", r#"{"ts":"2026-01-02","price":10}"#).await;
    app.settled().await;

    let cases: Vec<(Method, &str, &str, u16, &str, Option<&str>)> = vec![
        (Method::GET, "/v1/series/price/NOPE", "", 404, "not_found", None),
        (Method::GET, "/v1/series/price/ACME?limit=0", "", 400, "invalid_limit", Some("limit")),
        (Method::GET, "/v1/series/price/ACME?limit=-3", "", 400, "invalid_limit", Some("limit")),
        (Method::GET, "/v1/series/price/ACME?limit=ten", "", 400, "invalid_limit", Some("limit")),
        (Method::GET, "/v1/series/price/ACME?from=yesterday", "", 400, "invalid_from", Some("from")),
        (Method::GET, "/v1/series/price/ACME?to=2026-13-45", "", 400, "invalid_to", Some("to")),
        (Method::GET, "/v1/indices/NOPE", "", 404, "not_found", None),
        (Method::GET, "/v1/nothing/here", "", 404, "not_found", None),
        (Method::DELETE, "/v1/series/price/ACME", "", 405, "method_not_allowed", None),
        (Method::PUT, "/v1/indices/x", "{", 400, "invalid_index", None),
        (Method::PUT, "/v1/indices/x", r#"{"weights":{}}"#, 400, "invalid_index", None),
        (Method::PUT, "/v1/indices/x", r#"{"base":-1,"weights":{"A":1}}"#, 400, "invalid_index", None),
        (Method::PUT, "/v1/indices/a.b", r#"{"weights":{"A":1}}"#, 400, "invalid_name", Some("name")),
        (Method::POST, "/v1/events/nope.x", r#"{"price":1}"#, 400, "unknown_subject", Some("subject")),
        (Method::POST, "/v1/events/fleet.x", r#"{"name":"A"}"#, 400, "unknown_subject", Some("subject")),
        (Method::POST, "/v1/events/price.A.B", r#"{"price":1}"#, 400, "unknown_subject", Some("subject")),
        (Method::POST, "/v1/events/price.p.3.A", r#"{"price":1}"#, 400, "unknown_subject", Some("subject")),
        (Method::POST, "/v1/events/price.A", r#"{"ts":"2026-01-02"}"#, 400, "invalid_event", None),
        (Method::POST, "/v1/events/price.A", r#"{"price":0}"#, 400, "invalid_event", None),
        (Method::POST, "/v1/events/price.A", "garbage", 400, "invalid_event", None),
        (Method::POST, "/v1/dlq/abc/replay", "", 400, "invalid_seq", Some("seq")),
        (Method::POST, "/v1/dlq/0/replay", "", 400, "invalid_seq", Some("seq")),
        (Method::POST, "/v1/dlq/99/replay", "", 404, "not_found", None),
        // a path that is not UTF-8 once decoded is a JSON error like any other, not axum's plain text
        (Method::GET, "/v1/series/price/%FF", "", 400, "invalid_url", None),
        (Method::POST, "/v1/dlq/%FF/replay", "", 400, "invalid_url", None),
        (Method::GET, "/v1/dlq?limit=0", "", 400, "invalid_limit", Some("limit")),
        // found by scripts/fuzz-api.sh: a NUL reached PostgreSQL and was a 500
        (Method::GET, "/v1/fleet/scores?shipment=%00x&driver=y", "", 400, "invalid_url", None),
        (Method::GET, "/v1/series/price/A%00B", "", 400, "invalid_url", None),
        (Method::POST, "/v1/events/port.AEAJM", r#"{"name":"Aj\u0000man"}"#, 400, "invalid_event", None),
        // a misspelt field was dropped, and the port stored without its coordinates
        (Method::POST, "/v1/events/port.AEAJM", r#"{"name":"Ajman","coordinate":[1,2]}"#, 400, "invalid_event", None),
    ];
    for (method, path, body, status, code, field) in cases {
        let (s, b) = app.send(method.clone(), path, body).await;
        assert_eq!(s.as_u16(), status, "{method} {path}: {b}");
        assert_eq!(b["error"]["code"], code, "{method} {path}: {b}");
        assert!(b["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{method} {path}: {b}");
        assert_eq!(b["error"]["field"].as_str(), field, "{method} {path}: {b}");
    }

    // A body over the limit is refused with 413 and a JSON error.
    let big = format!(r#"{{"price":1,"pad":"{}"}}"#, "x".repeat(2 << 20));
    let (s, b) = app.send(Method::POST, "/v1/events/price.A", &big).await;
    assert_eq!(s, 413);
    assert_eq!(b["error"]["code"], "payload_too_large");
    // A body within the limit that NATS cannot take with its headers is a 413 naming both sizes, not a
    // 503 saying NATS is unavailable (a client would retry that for ever).
    let max = app.js().client().max_payload();
    let near = format!(r#"{{"price":1,"pad":"{}"}}"#, "x".repeat(max - 30));
    let (s, b) = app.send(Method::POST, "/v1/events/price.A", &near).await;
    assert_eq!((s.as_u16(), b["error"]["code"].as_str()), (413, Some("exceeds_max_payload")), "{b:.300}");
    let message = b["error"]["message"].as_str().unwrap();
    assert!(message.contains(&max.to_string()), "{message}");

    // An index over more constituents than a transaction can lock is refused by name.
    let over = tributary_broker::events::IndexDefinition::MAX_CONSTITUENTS + 1;
    let weights: serde_json::Map<String, Value> = (0..over).map(|i| (format!("I{i}"), Value::from(1.0))).collect();
    let (s, b) =
        app.send(Method::PUT, "/v1/indices/HUGE", &serde_json::json!({ "weights": weights }).to_string()).await;
    assert_eq!((s.as_u16(), b["error"]["code"].as_str()), (400, Some("invalid_index")), "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("at most 5000"), "{b}");

    // Range filters and limits work.
    let (s, b) = app.get("/v1/series/price/ACME?from=2026-01-02&to=2026-01-02&limit=1").await;
    assert_eq!(s, 200);
    assert_eq!(b["points"].as_array().unwrap().len(), 1);
    let (_, b) = app.get("/v1/series/price/ACME?from=2026-01-03").await;
    assert!(b["points"].as_array().unwrap().is_empty());
    // A start after the end is an empty range (a schema cannot say two times must be in order).
    let (s, b) = app.get("/v1/series/price/ACME?from=2026-02-01&to=2026-01-01").await;
    assert_eq!(s, 200, "{b}");
    assert!(b["points"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_publishes_with_idempotency_keys() {
    use reqwest::header::HeaderValue;
    let app = spawn_app().await;
    // A price for ACME on `day` with idempotency key `key`: (status, body).
    let post = |key: HeaderValue, day: u32, price: f64| {
        let request = app
            .http
            .post(format!("{}/v1/events/price.ACME", app.base))
            .header("Idempotency-Key", key)
            .body(format!(r#"{{"ts":"2026-01-{day:02}","price":{price}}}"#));
        async move {
            let r = request.send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, first) = post(HeaderValue::from_static("acme-1"), 2, 10.0).await;
    assert_eq!(status, 202);
    assert_eq!(first["stream"], "PRICES");
    assert_eq!(first["duplicate"], false);
    let (status, again) = post(HeaderValue::from_static("acme-1"), 2, 10.0).await;
    assert_eq!(status, 202);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["seq"], first["seq"]);
    app.settled().await;
    let (_, b) = app.get("/v1/series/price/ACME").await;
    assert_eq!(b["points"][0]["value"], 10.0);

    // A key that is not printable ASCII is refused, not dropped (its retries would be stored twice).
    let (status, b) = post(HeaderValue::from_bytes("café".as_bytes()).unwrap(), 3, 11.0).await;
    assert_eq!(status, 400);
    assert_eq!(
        (b["error"]["code"].as_str(), b["error"]["field"].as_str()),
        (Some("invalid_idempotency_key"), Some("Idempotency-Key")),
        "{b}"
    );
    // Nor is a key of Tributary's own: dead letter 1's replay would have been dropped as its repeat.
    let (status, b) = post(HeaderValue::from_static("replay:1"), 3, 11.0).await;
    assert_eq!((status.as_u16(), b["error"]["code"].as_str()), (400, Some("invalid_idempotency_key")), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_the_openapi_document() {
    let app = spawn_app().await;
    let (s, b) = app.get("/healthz").await;
    assert_eq!((s.as_u16(), b["status"].as_str()), (200, Some("ok")));
    let (s, b) = app.get("/readyz").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["checks"]["migrations"], true);
    let r = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let docs = app.http.get(format!("{}/docs", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(docs.contains("/openapi.json"));

    // Every documented path is routed (answers something other than the unknown-route 404).
    let (s, doc) = app.get("/openapi.json").await;
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    for (path, ops) in doc["paths"].as_object().unwrap() {
        if path.starts_with("/v1/live/") || path.ends_with("/events") {
            continue; // endless streams: tested in metrics.rs and uploads.rs
        }
        for method in ops.as_object().unwrap().keys() {
            let concrete = path
                .replace("{instrument}", "ACME")
                .replace("{name}", "ACME")
                .replace("{subject}", "price.ACME")
                .replace("{seq}", "1")
                .replace("{host}", "db-1")
                .replace("{field}", "cpu_usage")
                .replace("{width}", "1m")
                .replace("{unlocode}", "AEDXB")
                .replace("{id}", "u1")
                .replace("{provider}", "blue")
                .replace("{driver_id}", "d1")
                .replace("{shipment_id}", "s1");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (_, b) = app.send(m, &concrete, "{}").await;
            assert_ne!(b["error"]["message"], "no such route", "{method} {path} is documented but not routed");
        }
    }
}

/// A statement PostgreSQL cancelled (`57014`: an operator's `statement_timeout`, say) is the request's
/// deadline, met first by the database, through sqlx and through sea-orm alike: 503 `request_timeout`,
/// not a 500 `internal`.
#[tokio::test]
async fn a_statement_the_database_cancelled_is_the_requests_deadline() {
    use axum::response::IntoResponse;
    use sea_orm::{DbErr, RuntimeErr};
    use tributary_api::ApiError;
    let db = tributary_testkit::TestDb::create().await;
    let mut c = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::query("SET statement_timeout = 10").execute(&mut c).await.unwrap();
    let mut cancelled = async || sqlx::query("SELECT pg_sleep(1)").execute(&mut c).await.unwrap_err();
    for e in [
        ApiError::from(cancelled().await),
        ApiError::from(DbErr::Query(RuntimeErr::SqlxError(cancelled().await.into()))),
    ] {
        assert!(matches!(e, ApiError::RequestTimeout(_)), "{e:?}");
        assert_eq!(e.into_response().status(), 503);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_is_a_json_503_and_streams_are_not_cut() {
    // No processor: a fresh read waits for commits that never come, longer than the request deadline.
    let nats = tributary_testkit::NatsServer::start();
    let app = crate::common::spawn_services(nats.url(), Some(nats), |c| {
        c.api.request_timeout_ms = 300;
        c.api.fresh_timeout_ms = 60_000;
    })
    .await;
    app.publish_plain("price.SLOW", r#"{"ts":"2026-01-02","price":10}"#).await;
    let started = std::time::Instant::now();
    let (s, b) = app.get("/v1/series/price/SLOW?fresh=true").await;
    assert_eq!((s.as_u16(), b["error"]["code"].as_str()), (503, Some("request_timeout")), "{b}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "answered at the deadline, not the fresh wait");
    // A listing's wrong query is refused at once, not after the wait (it was parsed after it: here the
    // deadline's 503 instead of the 400).
    app.publish_plain("metric.slow", r#"{"cpu_usage":1}"#).await;
    app.publish_plain("port.SLOWP", r#"{"name":"Slow"}"#).await;
    for (query, code) in [
        ("/v1/series/price?fresh=true&limit=0", "invalid_limit"),
        ("/v1/servers?fresh=true&limit=0", "invalid_limit"),
        ("/v1/ports?fresh=true&offset=-1", "invalid_offset"),
    ] {
        let (s, b) = app.get(query).await;
        assert_eq!((s.as_u16(), b["error"]["code"].as_str()), (400, Some(code)), "{query}: {b}");
    }
    // A live stream outlives the deadline: its headers came in time, its body is not timed.
    let mut live = app.http.get(format!("{}/v1/live/metrics", app.base)).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let next = tokio::time::timeout(std::time::Duration::from_millis(900), live.chunk()).await;
    assert!(next.is_err() || next.as_ref().is_ok_and(|c| c.as_ref().is_ok_and(|c| c.is_some())), "{next:?}");
}

/// Reads stuck behind a lock are cancelled by PostgreSQL before the request's deadline, and their
/// connections go back to the pool. Dropped at the deadline, each ran on and kept its connection until
/// the lock went: three such left a pool of two no connection for any other read (and in `tributary up`
/// the processor none either: it shared the pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stuck_past_the_deadline_give_their_connections_back() {
    let since = chrono::Utc::now();
    let nats = tributary_testkit::NatsServer::start();
    let app = crate::common::spawn_services(nats.url(), Some(nats), |c| {
        c.api.request_timeout_ms = 1000;
        c.database.max_connections = 2;
    })
    .await;
    let mut holder = sqlx::PgConnection::connect(&app.c.config.database.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE ports IN ACCESS EXCLUSIVE MODE").execute(&mut holder).await.unwrap();
    let stuck = futures::future::join_all((0..3).map(|_| app.get("/v1/ports"))).await;
    for (s, b) in &stuck {
        assert_eq!((s.as_u16(), b["error"]["code"].as_str()), (503, Some("request_timeout")), "{b}");
    }
    let pool = app.c.db.get_postgres_connection_pool();
    tributary_testkit::eventually(std::time::Duration::from_secs(10), "no API read to wait on the lock", || async {
        (crate::common::waiting_on_locks(pool, since).await == 0).then_some(())
    })
    .await;
    app.get_until("/v1/series/price", std::time::Duration::from_secs(10), "a read of another table", |b| {
        b["series"].is_array()
    })
    .await;
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
}

/// However many fresh reads wait, NATS is asked how far the processors are by one poll at a time. Each
/// read used to ask it every 5 ms for itself: a hundred reads waiting made about 20,000 requests a second
/// (counted here: its consumer info requests, which every poll makes), beside the pipeline they waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_fresh_reads_share_one_poll_of_the_processors_progress() {
    use futures::StreamExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;
    // No processor: the reads wait their whole fresh timeout.
    let nats = tributary_testkit::NatsServer::start();
    let app = crate::common::spawn_services(nats.url(), Some(nats), |c| c.api.fresh_timeout_ms = 1000).await;
    app.publish_plain("price.WAITED", r#"{"ts":"2026-01-02","price":10}"#).await;
    let mut asks = app.c.nats.subscribe("$JS.API.CONSUMER.INFO.>").await.unwrap();
    app.c.nats.flush().await.unwrap();
    let counted = std::sync::Arc::new(AtomicU64::new(0));
    let counter = {
        let counted = counted.clone();
        tokio::spawn(async move {
            while asks.next().await.is_some() {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let started = Instant::now();
    let reads = (0..100).map(|_| app.get("/v1/series/price/WAITED?fresh=true"));
    for (s, b) in futures::future::join_all(reads).await {
        assert_eq!((s.as_u16(), b["error"]["code"].as_str()), (504, Some("sync_timeout")), "{b}");
    }
    let elapsed = started.elapsed();
    counter.abort();
    let asked = counted.load(Ordering::Relaxed);
    // One poller asks at most once a millisecond (at once when a read arrives, else every 5 ms).
    let most = elapsed.as_millis() as u64 + 1;
    assert!(asked <= most, "{asked} consumer info requests in {elapsed:?} for 100 waiting reads");
    assert!(asked > 0, "the reads asked nothing");

    // With a processor, reads waiting side by side on one poll each get what was published before it,
    // also while one series' batch waits on its lock (held here), which holds back the consumer's floor.
    let mut app = app;
    app.start_processor();
    app.publish_plain("price.SIDE0", r#"{"ts":"2026-01-01","price":1}"#).await;
    app.settled().await;
    use sea_orm::sqlx;
    let mut holder = app.c.db.get_postgres_connection_pool().acquire().await.unwrap();
    let key = tributary_processor::lock::key("price", "SIDE0");
    sqlx::query("SELECT pg_advisory_lock($1)").bind(key).execute(&mut *holder).await.unwrap();
    let reads = (0..40).map(|i| {
        let app = &app;
        async move {
            let (key, day) = (format!("SIDE{}", i % 8), format!("2026-02-{:02}", i % 28 + 1));
            app.publish_plain(&format!("price.{key}"), &format!(r#"{{"ts":"{day}","price":{}}}"#, i + 1)).await;
            let (s, b) = app.get(&format!("/v1/series/price/{key}?fresh=true")).await;
            assert_eq!(s, 200, "{b}");
            assert!(
                b["points"].as_array().unwrap().iter().any(|p| p["ts"].as_str().unwrap_or_default().starts_with(&day)),
                "read {i}: the price it published is not there: {b}"
            );
        }
    });
    // The lock held until a batch waits on it (the reads behind it are held back), then let go.
    let pool = app.c.db.get_postgres_connection_pool().clone();
    let release = async {
        crate::common::until_an_advisory_lock_waits(&pool).await;
        sqlx::query("SELECT pg_advisory_unlock($1)").bind(key).execute(&mut *holder).await.unwrap();
    };
    tokio::join!(futures::future::join_all(reads), release);
}

/// A connection that has not sent a request's headers within `api.header_timeout_ms` is closed: one that
/// sends nothing, one that stops half-way through its headers, and one idle after its response. (Under
/// `axum::serve` no header timer ran: each held its connection and task for as long as the client liked.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_does_not_send_its_headers_in_time_is_closed() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = crate::common::spawn_app_with(|c| c.api.header_timeout_ms = 300).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let closed = |sent: String| {
        let addr = addr.clone();
        async move {
            let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            tcp.write_all(sent.as_bytes()).await.unwrap();
            let mut got = Vec::new();
            let ended = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got)).await;
            (ended.is_ok(), String::from_utf8_lossy(&got).into_owned())
        }
    };
    let (ended, text) = closed(String::new()).await;
    assert!(ended, "a silent connection is still open after 10 s: {text}");
    let (ended, text) = closed(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n")).await;
    assert!(ended && !text.contains("200"), "half its headers: still open after 10 s, or answered: {text}");
    let (ended, text) = closed(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n")).await;
    assert!(ended && text.starts_with("HTTP/1.1 200"), "idle after its response: {text}");
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200, "the server serves on");

    // 0: no deadline (behind a proxy that bounds header reads itself).
    let app = crate::common::spawn_app_with(|c| c.api.header_timeout_ms = 0).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut got = Vec::new();
    let open = tokio::time::timeout(Duration::from_secs(1), tcp.read_to_end(&mut got)).await;
    assert!(open.is_err(), "closed with no deadline set: {got:?}");
}

/// The series read cache finds out when its commit listener's connection is lost silently (a NAT or a
/// firewall that forgot it: no error, nothing more heard), by its heartbeat, and reads then show the
/// commit it missed, again and again. (Without the heartbeat it served the body from before that commit
/// for as long as the connection stayed silent; with it, each lost listener kept one of the reads' pool
/// connections, and the fifth loss left the reads none.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_lost_cache_listener_is_found_and_reads_follow_commits() {
    use std::time::Duration;
    let mut proxy = None;
    let app = crate::common::spawn_app_with(|c| {
        c.api.series_cache_heartbeat_ms = 200;
        // Every connection to PostgreSQL goes through a proxy that can cut one off silently.
        let (user, rest) = c.database.url.split_once('@').unwrap();
        let (server, database) = rest.split_once('/').unwrap();
        let p = tributary_testkit::TcpProxy::start(server);
        c.database.url = format!("{user}@{}/{database}", p.addr());
        proxy = Some(p);
    })
    .await;
    let proxy = proxy.unwrap();
    let points = |body: &Value| body["points"].as_array().map_or(0, Vec::len);
    app.publish_plain("price.SILENT", r#"{"ts":"2026-01-01","price":10}"#).await;
    app.settled().await;
    let (_, first) = app.get("/v1/series/price/SILENT").await;
    assert_eq!(points(&first), 1, "{first}");

    // Five times, one more than the pool's connections: a listener dropped after a silent loss must not
    // keep a connection of the reads' pool (it closes its own in the background, on a socket that does
    // not answer).
    let pool = app.c.db.get_postgres_connection_pool();
    let mut silenced = std::collections::BTreeSet::new();
    for day in 2..=6 {
        let port: i32 = tributary_testkit::eventually(Duration::from_secs(10), "a listener connected", || async {
            let ports: Vec<i32> = sea_orm::sqlx::query_scalar(
                "SELECT client_port FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
            )
            .fetch_all(pool)
            .await
            .ok()?;
            ports.into_iter().find(|p| !silenced.contains(p))
        })
        .await;
        assert!(proxy.silence(port as u16), "the listener's connection goes through the proxy");
        silenced.insert(port);
        app.publish_plain("price.SILENT", &format!(r#"{{"ts":"2026-01-{day:02}","price":{}}}"#, 10 + day)).await;
        app.settled().await;
        let missed = format!("a read with the commit the listener missed ({day} points)");
        app.get_until("/v1/series/price/SILENT", Duration::from_secs(10), &missed, |b| points(b) == day).await;
    }
}

/// Listings come a page at a time (`limit`, default 100, at most 1000; `after` the `next` of the page
/// before), so an answer does not grow with the number of series, servers or indices: every key once, in
/// order, and `next` null on the last page. (They answered every row at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_come_a_page_at_a_time() {
    let app = spawn_app().await;
    for key in ["E", "A", "D", "B", "C"] {
        app.publish_plain(&format!("price.{key}"), r#"{"ts":"2026-01-01","price":1}"#).await;
    }
    for host in ["h3", "h1", "h2"] {
        app.publish_plain(&format!("metric.{host}"), r#"{"cpu_usage":1}"#).await;
    }
    for name in ["i2", "i1", "i3"] {
        app.publish_plain(&format!("index.{name}"), r#"{"weights":{"A":1}}"#).await;
    }
    app.settled().await;
    async fn all(app: &crate::common::TestApp, path: &str, list: &str, key: &str) -> (Vec<String>, usize) {
        let (mut keys, mut pages, mut after) = (Vec::new(), 0, None::<String>);
        loop {
            let url = match &after {
                Some(a) => format!("{path}?limit=2&after={a}"),
                None => format!("{path}?limit=2"),
            };
            let (status, body) = app.get(&url).await;
            assert_eq!(status, 200, "{body}");
            keys.extend(body[list].as_array().unwrap().iter().map(|i| i[key].as_str().unwrap().to_owned()));
            pages += 1;
            match body["next"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => return (keys, pages),
            }
        }
    }
    let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(all(&app, "/v1/series/price", "series", "key").await, (keys(&["A", "B", "C", "D", "E"]), 3));
    assert_eq!(all(&app, "/v1/servers", "servers", "host").await, (keys(&["h1", "h2", "h3"]), 2));
    assert_eq!(all(&app, "/v1/indices", "indices", "name").await, (keys(&["i1", "i2", "i3"]), 2));
    let (_, whole) = app.get("/v1/series/price").await;
    assert_eq!((whole["series"].as_array().unwrap().len(), &whole["next"]), (5, &Value::Null), "{whole}");
    for bad in ["/v1/indices?limit=1001", "/v1/servers?limit=0"] {
        let (status, body) = app.get(bad).await;
        assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (400, Some("invalid_limit")), "{bad}: {body}");
    }
}

/// A body that cannot be read (a malformed chunked encoding) is a 400 `unreadable_body`: it was answered
/// 413 `payload_too_large`, though nothing was too large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_body_is_a_400_not_a_413() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = crate::common::spawn_app().await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "POST /v1/events/price.X HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400") && text.contains("unreadable_body"), "{text}");
}
