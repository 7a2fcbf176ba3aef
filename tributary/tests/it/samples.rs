//! Server metrics end to end: rollups against a batch computation, the read API with its 400s, dead
//! letters, and live delivery over Server-Sent Events and WebSocket.

use crate::common::spawn_app;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use sea_orm::sqlx::{self, FromRow, Row};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use tributary_broker::samples::SampleEvent;
use tributary_broker::ts::Ts;
use tributary_processor::samples::rollup::{Rollup, Sketch, bucket, values_from_bytes};
use tributary_store::samples::RollupBucket;
use tributary_testkit::eventually;

pub type Fields = BTreeMap<String, f64>;

/// One message as published: host, ts (ms), fields.
#[derive(Clone)]
pub struct Msg {
    pub host: String,
    pub ts: i64,
    pub fields: Fields,
}

fn t(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_equal_a_batch_computation_whatever_the_delivery() {
    let mut app = spawn_app().await;
    app.start_processor(); // two replicas share the consumer
    let mut rng = StdRng::seed_from_u64(11);
    // Three hours of samples every ~7 s for three hosts, ending a minute ago: several 1m and 1h buckets.
    let end = (Utc::now().timestamp() - 60) * 1000;
    let start = end - 3 * 3600 * 1000;
    let mut msgs = Vec::new();
    for host in ["h-1", "h-2", "h-3"] {
        let mut ts = start + rng.random_range(0..5000);
        while ts < end {
            let mut fields = Fields::new();
            fields.insert("cpu_usage".into(), (rng.random_range(0.0..100.0f64) * 100.0).round() / 100.0);
            if rng.random_bool(0.8) {
                fields.insert("load1".into(), rng.random_range(-1.0..4.0)); // negatives and zeros too
            }
            if rng.random_bool(0.05) {
                fields.insert("load1".into(), 0.0);
            }
            msgs.push(Msg { host: host.into(), ts, fields });
            ts += rng.random_range(1000..13_000);
        }
    }
    // Corrections (same ts, new values, some fields only) and exact duplicates, all shuffled; a fifth
    // of everything held back and sent after the rest has been committed (late data).
    let mut extra = Vec::new();
    for m in &msgs {
        if rng.random_bool(0.1) {
            let mut c = m.clone();
            c.fields.insert("cpu_usage".into(), rng.random_range(0.0..100.0));
            if rng.random_bool(0.5) {
                c.fields.remove("load1");
            }
            extra.push(c);
        }
        if rng.random_bool(0.1) {
            extra.push(m.clone());
        }
    }
    msgs.extend(extra);
    msgs.shuffle(&mut rng);
    let late = msgs.split_off(msgs.len() * 4 / 5);
    // The first half in time order (the live case: buckets extended in place), the rest shuffled.
    let half = msgs.len() / 2;
    msgs[..half].sort_by_key(|m| m.ts);
    let publish = |wave: Vec<Msg>| {
        let js = app.js();
        async move {
            let mut p = tributary_broker::Publisher::new(js, 512);
            for (i, m) in wave.iter().enumerate() {
                let e = SampleEvent { ts: Some(Ts(t(m.ts))), fields: m.fields.clone() };
                if i % 3 == 0 {
                    // some as plain JSON without headers, as `nats pub` sends them
                    let body = serde_json::to_vec(&e).unwrap();
                    p.publish_raw(format!("metric.{}", m.host), async_nats::HeaderMap::new(), body.into()).await;
                } else {
                    p.publish(format!("metric.{}", m.host), None, &e).await;
                }
            }
            let r = p.finish().await;
            assert!(r.failed.is_empty(), "{:?}", r.failed);
        }
    };
    let order: Vec<Msg> = msgs.iter().chain(&late).cloned().collect();
    publish(msgs).await;
    app.settled().await;
    publish(late).await;
    app.settled().await;

    let buckets = verify_metrics(&app, &order).await;
    assert!(buckets > 3 * 2 * 180, "a few hundred buckets per series: {buckets}");
}

/// Every stored raw sample is the last one published at its (host, field, ts), every rollup equals the
/// batch computation over them, and each host's latest sample is its newest message; `order` is every
/// message in stream order. Returns how many buckets were compared.
pub async fn verify_metrics(app: &crate::common::TestApp, order: &[Msg]) -> usize {
    // The batch computation: the last published value per (host, field, ts) …
    let mut raw: BTreeMap<(String, String), BTreeMap<i64, f64>> = BTreeMap::new();
    let mut newest: BTreeMap<String, (i64, usize)> = BTreeMap::new();
    for (i, m) in order.iter().enumerate() {
        for (f, v) in &m.fields {
            raw.entry((m.host.clone(), f.clone())).or_default().insert(m.ts, *v);
        }
        let n = newest.entry(m.host.clone()).or_insert((m.ts, i));
        if (m.ts, i) > *n {
            *n = (m.ts, i);
        }
    }
    // … then buckets of 1m from raw samples, and of 1h from those.
    let mut want: BTreeMap<(String, String, i32, DateTime<Utc>), Rollup> = BTreeMap::new();
    for ((h, f), points) in &raw {
        let mut minutes: BTreeMap<DateTime<Utc>, Vec<(DateTime<Utc>, f64)>> = BTreeMap::new();
        for (ts, v) in points {
            minutes.entry(bucket(t(*ts), 60)).or_default().push((t(*ts), *v));
        }
        let mut hours: BTreeMap<DateTime<Utc>, Vec<Rollup>> = BTreeMap::new();
        for (start, samples) in minutes {
            let r = Rollup::of_samples(start, &samples);
            hours.entry(bucket(start, 3600)).or_default().push(r.clone());
            want.insert((h.clone(), f.clone(), 60, start), r);
        }
        for (start, parts) in hours {
            want.insert((h.clone(), f.clone(), 3600, start), Rollup::merge(start, &parts).unwrap());
        }
    }

    let pool = app.c.db.get_postgres_connection_pool();
    let stored: Vec<(String, String, DateTime<Utc>, f64)> =
        sqlx::query_as("SELECT host, field, ts, value FROM metric_samples ORDER BY 1, 2, 3")
            .fetch_all(pool)
            .await
            .unwrap();
    let want_raw: Vec<(String, String, DateTime<Utc>, f64)> =
        raw.iter().flat_map(|((h, f), p)| p.iter().map(move |(ts, v)| (h.clone(), f.clone(), t(*ts), *v))).collect();
    assert_eq!(stored.len(), want_raw.len());
    assert!(stored == want_raw, "raw samples differ from last-writer-wins");

    let rows = sqlx::query(
        "SELECT host, field, width, start, count, sum, min, max, mean, first, last, p50, p95, p99, sketch,
                last_ts, sorted_values, prefix_sum
           FROM metric_rollups ORDER BY host, field, width, start",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let got: BTreeMap<_, _> = rows
        .iter()
        .map(|row| {
            let values: Option<Vec<u8>> = row.get("sorted_values");
            let r = Rollup {
                bucket: RollupBucket::from_row(row).unwrap(),
                sketch: Sketch::from_bytes(row.get("sketch")).unwrap(),
                last_ts: row.get("last_ts"),
                values: values.map(|v| values_from_bytes(&v)).unwrap_or_default(),
                prefix_sum: row.get("prefix_sum"),
            };
            (
                (
                    row.get::<String, _>("host"),
                    row.get::<String, _>("field"),
                    row.get::<i32, _>("width"),
                    r.bucket.start,
                ),
                r,
            )
        })
        .collect();
    assert_eq!(got.len(), want.len(), "the same buckets");
    for (k, w) in &want {
        assert_eq!(got.get(k), Some(w), "bucket {k:?}");
    }

    // The latest sample of each host is its newest message (then the last published at that ts).
    let latest: Vec<(String, DateTime<Utc>, Value)> =
        sqlx::query_as("SELECT host, ts, fields FROM metric_latest ORDER BY host").fetch_all(pool).await.unwrap();
    assert_eq!(latest.len(), newest.len());
    for (host, ts, fields) in latest {
        let (want_ts, i) = newest[&host];
        assert_eq!(ts, t(want_ts));
        assert_eq!(fields, serde_json::to_value(&order[i].fields).unwrap(), "{host}");
    }
    want.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_servers_series_and_rollups_over_http() {
    let app = spawn_app().await;
    let now = Utc::now().timestamp_millis() / 1000 * 1000;
    let app = &app;
    let post = |subject: &str, body: Value| {
        let (path, body) = (format!("/v1/events/{subject}"), body.to_string());
        async move { app.send(Method::POST, &path, &body).await }
    };
    let (s, b) = post("metric.db-1", json!({"ts": now - 2000, "cpu_usage": 12.5, "load1": 0.7})).await;
    assert_eq!(s, 202, "{b}");
    post("metric.db-1", json!({"ts": now - 1500, "cpu_usage": 14.5})).await;
    post("metric.db-2", json!({"ts": now - 1000, "cpu_usage": 50, "disk_usage": 70})).await;
    // A plain `nats pub metric.db-3 '{...}'`: no ts, the message time is used.
    app.publish_plain("metric.db-3", r#"{"cpu_usage":1.5}"#).await;
    app.settled().await;

    let (s, b) = app.get("/v1/metrics/latest?limit=10").await;
    assert_eq!(s, 200, "{b}");
    let hosts: Vec<&str> = b["servers"].as_array().unwrap().iter().map(|x| x["host"].as_str().unwrap()).collect();
    assert_eq!(hosts, ["db-3", "db-2", "db-1"], "newest first: {b}");
    assert_eq!(b["servers"][1]["fields"], json!({"cpu_usage": 50.0, "disk_usage": 70.0}));
    assert_eq!(b["servers"][2]["fields"], json!({"cpu_usage": 14.5}), "db-1's newest sample");
    let (_, b) = app.get("/v1/metrics/latest?limit=1").await;
    assert_eq!(b["servers"].as_array().unwrap().len(), 1);
    for bad in ["", "?limit=0", "?limit=-3", "?limit=abc", "?limit=1.5", "?limit="] {
        let (s, b) = app.get(&format!("/v1/metrics/latest{bad}")).await;
        assert_eq!(s, 400, "{bad}: {b}");
        assert_eq!(b["error"]["code"], "invalid_limit", "{bad}: {b}");
        assert_eq!(b["error"]["field"], "limit");
    }

    let (s, b) = app.get("/v1/servers").await;
    assert_eq!(s, 200);
    assert_eq!(b["servers"][0]["host"], "db-1");
    assert_eq!(b["servers"][0]["fields"], json!(["cpu_usage", "load1"]));
    assert_eq!(b["servers"][0]["last_seen"], Ts(t(now - 1500)).to_string());
    assert_eq!(b["servers"].as_array().unwrap().len(), 3);

    let (s, b) = app.get("/v1/series/metric/db-1/cpu_usage").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["points"],
        json!([{"ts": Ts(t(now - 2000)).to_string(), "value": 12.5},
                                    {"ts": Ts(t(now - 1500)).to_string(), "value": 14.5}])
    );
    let (_, b) = app.get(&format!("/v1/series/metric/db-1/cpu_usage?from={}", now - 1600)).await;
    assert_eq!(b["points"].as_array().unwrap().len(), 1);

    for width in ["1m", "1h"] {
        let (s, b) = app.get(&format!("/v1/series/metric/db-2/cpu_usage/rollups/{width}")).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["width"], width);
        let bucket = &b["buckets"][0];
        for (k, v) in [
            ("count", 1.0),
            ("sum", 50.0),
            ("min", 50.0),
            ("max", 50.0),
            ("mean", 50.0),
            ("first", 50.0),
            ("last", 50.0),
        ] {
            assert_eq!(bucket[k].as_f64(), Some(v), "{width} {k}: {b}");
        }
        assert_eq!(bucket["p50"].as_f64(), Some(50.0), "{b}");
    }
    let (s, b) = app.get("/v1/series/metric/db-2/cpu_usage/rollups/5m").await;
    assert_eq!((s.as_u16(), b["error"]["code"].as_str()), (400, Some("invalid_width")), "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("1m, 1h"));
    let (s, b) = app.get("/v1/series/metric/db-9/cpu_usage").await;
    assert_eq!((s.as_u16(), b["error"]["code"].as_str()), (404, Some("not_found")), "{b}");
    let (s, _) = app.get("/v1/series/metric/db-9/cpu_usage/rollups/1m").await;
    assert_eq!(s, 404);

    // The HTTP ingest refuses what the processor would dead-letter.
    let (s, b) = post("metric.db-1", json!({"cpu_usage": "high"})).await;
    assert_eq!((s.as_u16(), b["error"]["code"].as_str()), (400, Some("invalid_event")), "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("cpu_usage"));
    let (s, _) = post("metric.db-1", json!({"memory_usage": 101})).await;
    assert_eq!(s, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_samples_are_dead_lettered_with_their_reason() {
    let app = spawn_app().await;
    let month_ago = Utc::now().timestamp_millis() - 30 * 86_400_000;
    let bad = [
        ("metric.x", r#"{"cpu_usage":"high"}"#.to_owned(), "must be a number"),
        ("metric.x", r#"{"cpu_usage":120}"#.to_owned(), "within 0–100"),
        ("metric.x", r#"{"ts":"2026-01-01T00:00:00Z"}"#.to_owned(), "at least one numeric field"),
        ("metric.x", format!(r#"{{"ts":{month_ago},"cpu_usage":1}}"#), "older than the raw retention"),
        ("metric.x.y", r#"{"cpu_usage":1}"#.to_owned(), "unknown subject shape"),
        ("metric.x", r#"{"ts":"3000-01-01T00:00:00Z","cpu_usage":1}"#.to_owned(), "more than a day ahead"),
    ];
    for (subject, payload, _) in &bad {
        app.publish_plain(subject, payload).await;
        app.publish_plain("metric.ok", r#"{"load1":1}"#).await;
    }
    app.settled().await;
    let (_, body) = app.get("/v1/dlq?limit=100").await;
    let letters = body["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), bad.len(), "{body}");
    for (subject, payload, reason) in &bad {
        let l = letters.iter().find(|l| l["payload"] == *payload && l["subject"] == *subject);
        let l = l.unwrap_or_else(|| panic!("no dead letter for {payload}: {body}"));
        assert!(l["reason"].as_str().unwrap().contains(reason), "{l} should say {reason}");
    }
    let (_, b) = app.get("/v1/series/metric/ok/load1").await;
    assert_eq!(b["points"].as_array().unwrap().len(), bad.len(), "the good samples between went through");
    let metrics = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"tributary_dead_letters_total{consumer="metrics",class="expired"} 1"#), "{metrics}");
    promtool_accepts(&metrics);
}

/// `promtool check metrics` (Debian's prometheus package; scripts/test.sh installs it) accepts `text`.
fn promtool_accepts(text: &str) {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed: /metrics format not checked (scripts/test.sh installs it)");
        return;
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check metrics failed:\n{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_samples_arrive_over_sse_and_websocket_after_commit_and_streams_end_on_shutdown() {
    let app = spawn_app().await;
    let sse = app.http.get(format!("{}/v1/live/metrics?host=live-1", app.base)).send().await.unwrap();
    assert_eq!(sse.status(), 200);
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let mut sse = sse.bytes_stream();
    let ws_url = format!("{}/v1/live/ws", app.base.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();

    app.publish_plain("metric.other", r#"{"cpu_usage":1}"#).await;
    // A recent timestamp: samples older than the raw retention (7 days) are dead-lettered as expired.
    let ts = (chrono::Utc::now() - chrono::Duration::minutes(1)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    app.publish_plain("metric.live-1", &json!({"cpu_usage": 42.5, "ts": ts}).to_string()).await;

    // SSE (filtered to live-1): the event names the committed sample.
    let mut text = String::new();
    let event = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = sse.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) {
                return serde_json::from_str::<Value>(data).unwrap();
            }
        }
        panic!("stream ended: {text}")
    })
    .await
    .expect("an SSE event within 30 s");
    assert!(text.contains("event: metric"), "{text}");
    assert_eq!(event, json!({"host": "live-1", "ts": ts, "fields": {"cpu_usage": 42.5}}));
    // Announced after the commit: it is already readable.
    let (_, b) = app.get("/v1/series/metric/live-1/cpu_usage").await;
    assert_eq!(b["points"][0]["value"], 42.5);

    // WebSocket (unfiltered): both hosts.
    let mut hosts = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while hosts.len() < 2 {
            let m = ws.next().await.expect("socket open").unwrap();
            let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
            hosts.push(v["host"].as_str().unwrap().to_owned());
        }
    })
    .await
    .expect("two WebSocket messages within 30 s");
    hosts.sort();
    assert_eq!(hosts, ["live-1", "other"]);

    // Shutdown ends both streams promptly.
    app.shutdown();
    tokio::time::timeout(Duration::from_secs(10), async { while sse.next().await.is_some() {} })
        .await
        .expect("the SSE stream ends on shutdown");
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("the WebSocket closes on shutdown");
    assert_eq!(close, Some(1001), "going away");
    eventually(Duration::from_secs(10), "the API to stop", || async { app.api_finished().then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_raw_samples_and_each_width_after_its_own_span() {
    let app = spawn_app().await;
    let now = Utc::now();
    app.publish_plain("metric.old", &json!({"ts": now.timestamp_millis() - 120_000, "cpu_usage": 5}).to_string()).await;
    app.settled().await;
    let pool = app.c.db.get_postgres_connection_pool();
    let cfg = tributary_store::RollupConfig::default(); // raw 7d, 1m 30d, 1h 365d
    let count = |sql: &'static str| async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.unwrap() };
    let days = chrono::Duration::days;
    let sweep = |after: chrono::Duration| {
        let swept = tributary_processor::samples::sweep(pool, &cfg, now + after);
        async move { swept.await.map(|s| (s.samples, s.buckets)) }
    };
    assert_eq!(sweep(days(6)).await.unwrap(), (0, 0), "nothing is due within the raw retention");
    // Raw samples are kept an hour past it: a sample taken just inside the retention and committed a
    // little later recomputes its bucket from every raw sample (`samples::SWEEP_MARGIN`).
    let margin = tributary_store::samples::SWEEP_MARGIN;
    let within = days(7) + chrono::Duration::from_std(margin).unwrap() - chrono::Duration::minutes(5);
    assert_eq!(sweep(within).await.unwrap(), (0, 0), "the raw retention and the margin");
    assert_eq!(sweep(days(8)).await.unwrap(), (1, 0), "raw samples go after 7 days and the margin");
    assert_eq!(count("SELECT count(*) FROM metric_rollups").await, 2);
    assert_eq!(sweep(days(31)).await.unwrap(), (0, 1), "1m buckets after 30 days");
    assert_eq!(count("SELECT count(*) FROM metric_rollups WHERE width = 3600").await, 1);
    assert_eq!(sweep(days(366)).await.unwrap(), (0, 1), "1h buckets after 365 days");
}

/// Raw samples a sweep deleted are gone for good, even after `metrics.raw_retention` is raised: a sample
/// where they were is refused as expired, not taken to recompute its bucket from the rest. (The processor
/// checked only today's retention: after a raise from 7 to 30 days, a late sample 11 days old rebuilt its
/// minute from itself alone, and the minute lost the samples the sweep had deleted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_raw_retention_does_not_take_samples_where_the_sweep_deleted() {
    use tributary_broker::{BatchHandler, Delivery, Rejection, samples::ServerSample};
    use tributary_processor::samples::{SampleHandler, sweep};
    use tributary_store::rollups::{Rollup as Width, RollupConfig, Span};
    let db = tributary_testkit::TestDb::create().await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let days = |n: i64| Span(n * 86_400);
    let week = RollupConfig::default(); // raw 7 days
    let month = RollupConfig {
        raw_retention: days(30),
        rollups: vec![
            Width { width: Span(60), retention: days(60) },
            Width { width: Span(3600), retention: days(365) },
        ],
        ..Default::default()
    };
    let now = Utc::now();
    let minute =
        |ago: i64| DateTime::from_timestamp((now - chrono::Duration::days(ago)).timestamp() / 60 * 60, 0).unwrap();
    let decode = |h: &SampleHandler, ts: DateTime<Utc>| -> Result<ServerSample, Rejection> {
        let body = json!({"ts": ts.timestamp_millis(), "cpu": 1.0}).to_string();
        h.decode("metric.h", None, body.as_bytes(), Ts::new(now))
    };
    let (old, kept) = (minute(11), minute(9));
    let handler = SampleHandler::new(pool.clone(), &month, 1, None).unwrap();
    let batch: Vec<_> = [old, old + chrono::Duration::seconds(10), kept]
        .into_iter()
        .enumerate()
        .map(|(i, ts)| Delivery { event: decode(&handler, ts).unwrap(), seq: i as u64 + 1, received: Ts::new(now) })
        .collect();
    handler.commit(&batch).await.unwrap();

    // Three days ago, under a week's retention, a sweep deleted the raw samples older than ten days.
    let swept = sweep(&pool, &week, now - chrono::Duration::days(3)).await.unwrap();
    assert_eq!((swept.samples, swept.buckets), (2, 0), "the two 11 days old");
    // Today's sweep, under 30 days, deletes nothing and keeps the mark where the earlier one cut.
    let today = sweep(&pool, &month, now).await.unwrap();
    assert_eq!((today.samples, today.before), (0, swept.before));

    let handler = SampleHandler::new(pool.clone(), &month, 1, None).unwrap();
    handler.read_swept_before().await.unwrap();
    let late = decode(&handler, old + chrono::Duration::seconds(20)).expect_err("its minute's raw samples are gone");
    assert_eq!(late.class, "expired");
    assert!(late.reason.contains("where the raw samples were deleted"), "{}", late.reason);
    decode(&handler, kept + chrono::Duration::seconds(20)).expect("older than a week, but its raw samples are kept");
    assert!(decode(&SampleHandler::new(pool.clone(), &week, 1, None).unwrap(), kept).is_err(), "a week's retention");
}

/// The smallest rollup width cannot change under stored rollups (every wider bucket is merged from its
/// buckets): a processor configured with another refuses to start, naming both; a wider width may be
/// added. (A changed smallest width started: merges over the stored rows panicked, their samples were
/// dead-lettered as processing failures, and wider buckets were rewritten from the new width's only.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smallest_rollup_width_cannot_change_under_stored_rollups() {
    use tributary_processor::samples::SampleHandler;
    use tributary_store::rollups::{Rollup as Width, RollupConfig, Span};
    let db = tributary_testkit::TestDb::create().await;
    let pool = sea_orm::sqlx::PgPool::connect(db.url()).await.unwrap();
    let widths = |secs: &[i64]| RollupConfig {
        rollups: secs.iter().map(|w| Width { width: Span(*w), retention: Span(400 * 86_400) }).collect(),
        ..Default::default()
    };
    let check_base_width = |pool: &sqlx::PgPool, cfg: &RollupConfig| {
        let handler = SampleHandler::new(pool.clone(), cfg, 1, None).unwrap();
        async move { handler.check_base_width().await }
    };
    check_base_width(&pool, &widths(&[60, 3600])).await.unwrap();
    check_base_width(&pool, &widths(&[10, 60])).await.expect("any width while no rollup is stored");
    // A rollup of 60 s stored before the width was recorded (an upgraded database): that is the width.
    sqlx::query(
        "INSERT INTO metric_rollups (host, field, width, start, count, sum, min, max, mean, first, last, p50, p95, p99,
                                     sketch, last_ts)
         VALUES ('h', 'cpu', 60, now(), 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, '', now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM settings").execute(&pool).await.unwrap();
    check_base_width(&pool, &widths(&[60, 3600, 86_400])).await.expect("a wider width may be added");
    let e = check_base_width(&pool, &widths(&[10, 60, 3600])).await.unwrap_err().to_string();
    assert!(e.contains("10 s here but 60 s in the stored rollups"), "{e}");
    // Starting over empties the raw samples too: a minute whose raw samples were kept would be rolled
    // up again from its new samples only (the advice left them, and such minutes lost their counts).
    assert!(e.contains("DELETE FROM metric_rollups; DELETE FROM metric_samples;"), "{e}");
}

/// Commits one sample a minute (at `:05`, the minute's number as its value) for `minutes` of `hour`.
async fn commit_minutes(
    handler: &tributary_processor::samples::SampleHandler,
    hour: DateTime<Utc>,
    minutes: std::ops::Range<i64>,
) {
    use tributary_broker::BatchHandler;
    let now = Ts::new(Utc::now());
    let batch: Vec<_> = minutes
        .map(|m| {
            let ts = hour + chrono::Duration::seconds(m * 60 + 5);
            let body = json!({"ts": ts.timestamp_millis(), "cpu": m as f64}).to_string();
            let event = handler.decode("metric.h", None, body.as_bytes(), now).unwrap();
            tributary_broker::Delivery { event, seq: m as u64 + 1, received: now }
        })
        .collect();
    handler.commit(&batch).await.unwrap();
}

/// An hour extended in place holds every minute stored before the extension, those a processor
/// configured without hours stored too (a rolling update adding the width, a width dropped and added
/// again). It was extended from its last minute on, and left out the minutes between for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_holds_the_minutes_a_processor_without_hours_stored() {
    use tributary_processor::samples::SampleHandler;
    use tributary_store::rollups::{Rollup as Width, RollupConfig, Span};
    let db = tributary_testkit::TestDb::create().await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let widths = |secs: &[i64]| RollupConfig {
        rollups: secs.iter().map(|w| Width { width: Span(*w), retention: Span(400 * 86_400) }).collect(),
        ..Default::default()
    };
    let with_hours = SampleHandler::new(pool.clone(), &widths(&[60, 3600]), 1, None).unwrap();
    let without = SampleHandler::new(pool.clone(), &widths(&[60]), 1, None).unwrap();
    let hour = DateTime::from_timestamp(Utc::now().timestamp() / 3600 * 3600 - 2 * 3600, 0).unwrap();
    commit_minutes(&with_hours, hour, 0..10).await;
    commit_minutes(&without, hour, 10..20).await;
    commit_minutes(&with_hours, hour, 20..21).await;
    let (count, sum): (i64, f64) =
        sqlx::query_as("SELECT count, sum FROM metric_rollups WHERE host = 'h' AND field = 'cpu' AND width = 3600")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((count, sum), (21, (0..=20).sum::<i64>() as f64), "the hour merges all 21 minutes");
    // Appends by the processor with hours alone are still folded in place, and agree.
    commit_minutes(&with_hours, hour, 21..23).await;
    let count: i64 =
        sqlx::query_scalar("SELECT count FROM metric_rollups WHERE width = 3600").fetch_one(&pool).await.unwrap();
    assert_eq!(count, 23);
}
