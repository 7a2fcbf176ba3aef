//! Prices and indices through the whole pipeline, against hand-computed values.

use crate::common::{price_delivery, spawn_app, spawn_app_with};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;
use tributary_broker::events::PriceEvent;
use tributary_broker::ts::Ts;
use tributary_processor::prices::series::Transforms;

fn close(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() <= 1e-12 * b.abs().max(1.0))
}

/// A price at a leap second (`10:15:60`) is the one at 10:16:00, as PostgreSQL stores it: it corrects
/// that point. It was a point of its own to the processor and a duplicate key to PostgreSQL, so its
/// batch failed on every delivery until it was dead-lettered (or, on a quiet stream, for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_at_a_leap_second_corrects_the_next_seconds_point() {
    let app = spawn_app().await;
    app.publish_plain("price.LEAP", r#"{"ts":"2026-01-02T10:16:00Z","price":10}"#).await;
    app.settled().await;
    app.publish_plain("price.LEAP", r#"{"ts":"2026-01-02T10:15:60Z","price":11}"#).await;
    app.settled().await;
    let (_, body) = app.get("/v1/series/price/LEAP").await;
    let p = body["points"].as_array().unwrap();
    assert_eq!(p.len(), 1, "{body}");
    assert_eq!((p[0]["ts"].as_str(), p[0]["value"].as_f64()), (Some("2026-01-02T10:16:00Z"), Some(11.0)), "{body}");
    let (_, dlq) = app.get("/v1/dlq?limit=10").await;
    assert_eq!(dlq["dead_letters"].as_array().map(Vec::len), Some(0), "{dlq}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_json_and_msgpack_give_hand_computed_derived_values() {
    let app = spawn_app_with(|c| c.processor.prices = Transforms { sma: vec![2], ema: vec![3], vol: vec![2] }).await;
    // The nats CLI sends bare JSON; our publishers send MessagePack. Out of order on purpose.
    app.publish_plain("price.ACME", r#"{"ts":"2026-01-03","price":12.1}"#).await;
    app.publish_plain("price.ACME", r#"{"ts":"2026-01-01","price":10}"#).await;
    app.publish_msgpack(
        "price.ACME",
        &PriceEvent { ts: Some(Ts::parse("2026-01-02").unwrap()), price: 11.0, volume: Some(5.0) },
    )
    .await;
    app.publish_plain("price.ACME", r#"{"ts":1767571200000,"price":9.68}"#).await; // 2026-01-05
    app.settled().await;

    let (status, body) = app.get("/v1/series/price/ACME").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kind"], "price");
    assert_eq!(body["key"], "ACME");
    let p = body["points"].as_array().unwrap();
    let ts: Vec<&str> = p.iter().map(|p| p["ts"].as_str().unwrap()).collect();
    assert_eq!(ts, ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z", "2026-01-05T00:00:00Z"]);
    assert_eq!(p[1]["volume"], 5.0);
    // returns: null, 0.1, 0.1, -0.2
    assert!(p[0]["ret"].is_null());
    assert!(close(&p[1]["ret"], 0.1) && close(&p[2]["ret"], 0.1) && close(&p[3]["ret"], -0.2), "{body}");
    // sma_2: null, 10.5, 11.55, 10.89
    assert!(p[0]["sma_2"].is_null());
    assert!(close(&p[1]["sma_2"], 10.5) && close(&p[2]["sma_2"], 11.55) && close(&p[3]["sma_2"], 10.89), "{body}");
    // ema_3 (α = 0.5): 10, 10.5, 11.3, 10.49
    assert!(close(&p[0]["ema_3"], 10.0) && close(&p[1]["ema_3"], 10.5));
    assert!(close(&p[2]["ema_3"], 11.3) && close(&p[3]["ema_3"], 10.49), "{body}");
    // vol_2: null, null, 0, 0.3/√2
    assert!(p[0]["vol_2"].is_null() && p[1]["vol_2"].is_null());
    assert!(close(&p[2]["vol_2"], 0.0) && close(&p[3]["vol_2"], 0.3 / 2f64.sqrt()), "{body}");

    // A correction in the past recomputes everything after it: day 2 becomes 12.
    app.publish_plain("price.ACME", r#"{"ts":"2026-01-02","price":12}"#).await;
    app.settled().await;
    let (_, body) = app.get("/v1/series/price/ACME").await;
    let p = body["points"].as_array().unwrap();
    assert!(close(&p[1]["ret"], 0.2) && close(&p[2]["ret"], 12.1 / 12.0 - 1.0), "{body}");
    assert!(close(&p[1]["ema_3"], 11.0) && close(&p[2]["ema_3"], 11.55) && close(&p[3]["ema_3"], 10.615), "{body}");

    let (_, list) = app.get("/v1/series/price").await;
    assert_eq!(list["series"][0]["key"], "ACME");
    assert_eq!(list["series"][0]["points"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_hand_computed_with_a_correction_in_the_past() {
    let app = spawn_app().await;
    // Prices first: defining an index computes it over existing history.
    for (i, d, p) in [("A", 1, 10.0), ("B", 1, 20.0), ("A", 2, 11.0), ("B", 2, 20.0), ("A", 3, 50.0)] {
        let (s, b) = app
            .send(
                Method::POST,
                &format!("/v1/events/price.{i}"),
                &json!({"ts": format!("2026-01-0{d}"), "price": p}).to_string(),
            )
            .await;
        assert_eq!(s, 202, "{b}");
    }
    app.settled().await;
    let (s, b) = app.send(Method::PUT, "/v1/indices/duo", r#"{"base":100,"weights":{"A":0.5,"B":0.5}}"#).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["name"], "duo");
    let levels = |b: &Value| {
        b["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["ts"].as_str().unwrap()[..10].to_owned(), p["level"].as_f64().unwrap()))
            .collect::<Vec<_>>()
    };
    // Day 3 lacks B: not an index date. R_2 = 0.5 * 0.1 + 0.5 * 0 = 0.05.
    let l = levels(&b);
    assert_eq!(l.len(), 2, "{b}");
    assert_eq!(l[0], ("2026-01-01".into(), 100.0));
    assert!((l[1].1 - 105.0).abs() < 1e-9);

    // Day 4 arrives for both: R_4 = 0.5 * (11/11 - 1) + 0.5 * (22/20 - 1) = 0.05 → 110.25.
    app.publish_plain("price.A", r#"{"ts":"2026-01-04","price":11}"#).await;
    app.publish_plain("price.B", r#"{"ts":"2026-01-04","price":22}"#).await;
    app.settled().await;
    let (_, b) = app.get("/v1/indices/duo").await;
    let l = levels(&b);
    assert_eq!(l.len(), 3, "{b}");
    assert!((l[2].1 - 110.25).abs() < 1e-9, "{b}");

    // Correct A on day 2 to 12: R_2 = 0.1 → 110; R_4 = 0.5 * (11/12 - 1) + 0.05 → 110 * 1.0083333….
    app.publish_plain("price.A", r#"{"ts":"2026-01-02","price":12}"#).await;
    app.settled().await;
    let (_, b) = app.get("/v1/indices/duo").await;
    let l = levels(&b);
    assert_eq!(l[0].1, 100.0);
    assert!((l[1].1 - 110.0).abs() < 1e-9, "{b}");
    assert!((l[2].1 - 110.0 * (1.0 + 0.5 * (11.0 / 12.0 - 1.0) + 0.05)).abs() < 1e-9, "{b}");
    assert!(b["points"][0]["ret"].is_null());

    // Redefining the index recomputes it from scratch with the new weights.
    let (s, b) = app.send(Method::PUT, "/v1/indices/duo", r#"{"base":1000,"weights":{"B":1}}"#).await;
    assert_eq!(s, 200, "{b}");
    let l = levels(&b);
    assert_eq!(l.len(), 3);
    assert_eq!(l[0].1, 1000.0);
    assert!((l[2].1 - 1100.0).abs() < 1e-9, "{b}");
    let (_, list) = app.get("/v1/indices").await;
    assert_eq!(list["indices"][0]["name"], "duo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_import_streams_reports_bad_lines_and_is_idempotent() {
    let app = spawn_app().await;
    let csv = "instrument,ts,price,volume\nACME,2026-01-01,10,100\nACME,2026-01-02,11,\nBETA,1767312000000,5.5,1\nACME,2026-01-03,-1\n\n";
    let report = tributary_gatherer::prices::import_csv(app.js(), csv.as_bytes(), Some(csv.len() as u64), false).await;
    let read = &report.read;
    assert_eq!((read.progress.entries, read.progress.bytes), (6, csv.len() as u64));
    assert_eq!(report.publish.stored, 3);
    assert_eq!(read.progress.invalid, 1);
    assert_eq!(read.errors[0].line, 5, "{:?}", read.errors);
    assert!(read.errors[0].reason.contains("positive"));
    app.settled().await;
    let (_, acme) = app.get("/v1/series/price/ACME").await;
    assert_eq!(acme["points"].as_array().unwrap().len(), 2);
    assert_eq!(acme["points"][0]["volume"], 100.0);
    assert!(acme["points"][1]["volume"].is_null());
    let (_, beta) = app.get("/v1/series/price/BETA").await;
    assert_eq!(beta["points"][0]["ts"], "2026-01-02T00:00:00Z");

    // The same file again: stored again (each run has its own idempotency keys), changing no value.
    let again = tributary_gatherer::prices::import_csv(app.js(), csv.as_bytes(), None, false).await;
    assert_eq!((again.publish.stored, again.publish.duplicates), (3, 0));
    app.settled().await;
    assert_eq!(app.get("/v1/series/price/ACME").await.1["points"], acme["points"]);

    // A price set back in the same file (A, B, A at one date) ends at A: the idempotency key was the
    // line's content, so the third line repeated the first's key and was dropped, leaving B.
    let csv = "SETBACK,2026-01-02,10\nSETBACK,2026-01-02,20\nSETBACK,2026-01-02,10\n";
    let r = tributary_gatherer::prices::import_csv(app.js(), csv.as_bytes(), None, false).await;
    assert_eq!((r.publish.stored, r.publish.duplicates), (3, 0), "{r:?}");
    app.settled().await;
    let (_, s) = app.get("/v1/series/price/SETBACK").await;
    assert_eq!(s["points"][0]["value"], 10.0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_delivers_every_event_and_the_processor_commits_them() {
    let app = spawn_app().await;
    let sim = tributary_gatherer::prices::SimConfig {
        instruments: 3,
        rate: 2000.0,
        late_share: 0.1,
        correction_share: 0.1,
        limit: Some(300),
        seed: Some(1),
        ..Default::default()
    };
    let report = tributary_gatherer::prices::simulate(app.js(), sim, tokio_util::sync::CancellationToken::new()).await;
    assert_eq!(report.stored + report.duplicates, 300);
    assert!(report.failed.is_empty());
    app.settled().await;
    let (_, list) = app.get("/v1/series/price").await;
    let series = list["series"].as_array().unwrap();
    assert_eq!(series.len(), 3);
    // Corrections rewrite existing points; every other event is a new point.
    let points: i64 = series.iter().map(|s| s["points"].as_i64().unwrap()).sum();
    assert!(points > 200 && points <= 300, "{points}");
}

/// A late price is held for 2 to 49 rounds of the simulator whatever its rate: at a high rate it was held
/// for ticks, each thousands of rounds, which made every late price rewrite thousands of points.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_late_prices_are_late_by_rounds_not_by_rate() {
    let app = spawn_app().await;
    let sim = tributary_gatherer::prices::SimConfig {
        instruments: 10,
        rate: 1_000_000.0,
        late_share: 0.05,
        correction_share: 0.0,
        limit: Some(20_000),
        seed: Some(7),
        ..Default::default()
    };
    let report = tributary_gatherer::prices::simulate(app.js(), sim, tokio_util::sync::CancellationToken::new()).await;
    assert_eq!(report.stored, 20_000);
    app.settled().await;
    let pool = app.c.db.get_postgres_connection_pool().clone();
    let rows: Vec<(String, i64)> =
        sea_orm::sqlx::query_as("SELECT instrument, seq FROM price_points ORDER BY instrument, ts")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 20_000);
    // How late each point was: the points of its series with a later timestamp published before it.
    let mut late = 0;
    let mut latest = 0;
    for series in rows.chunk_by(|a, b| a.0 == b.0) {
        for (i, (_, seq)) in series.iter().enumerate() {
            let before = series[i + 1..].iter().filter(|(_, s)| s < seq).count();
            late += (before > 0) as usize;
            latest = latest.max(before);
        }
    }
    assert!(late > 500, "about 5% of the points are late, got {late}");
    assert!(latest <= 49, "a point was published {latest} rounds late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_tail_is_not_trusted_after_another_replica_wrote_the_series() {
    use tributary_processor::prices::PriceHandler;
    // Two handlers on a database of their own: no running processor (whose start-up recompute of every
    // series for its own windows would be one more writer, at a time of its choosing).
    let db = tributary_testkit::TestDb::create().await;
    let pool = sea_orm::sqlx::PgPool::connect(db.url()).await.unwrap();
    let t = Transforms { sma: vec![2], ema: vec![], vol: vec![] };
    let (a, b) = (PriceHandler::new(pool.clone(), t.clone(), 10, 1), PriceHandler::new(pool.clone(), t, 10, 1));
    let point = |day: u32, price: f64, seq: u64| price_delivery("X", &format!("2026-01-0{day}"), price, seq);
    a.commit(&[point(1, 10.0, 1)]).await.unwrap(); // a caches X's tail
    b.commit(&[point(2, 20.0, 2)]).await.unwrap(); // another replica appends
    a.commit(&[point(3, 40.0, 3)]).await.unwrap(); // a must see day 2, not its stale tail
    let rows: Vec<(Option<f64>, serde_json::Value)> =
        sea_orm::sqlx::query_as("SELECT ret, derived FROM price_points WHERE instrument = 'X' ORDER BY ts")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows[2].0, Some(1.0), "ret of day 3 is against day 2");
    assert_eq!(rows[2].1["sma_2"], 30.0);
    // A correction before the cached tail's end bypasses the cache too.
    a.commit(&[point(2, 30.0, 4)]).await.unwrap();
    let rows: Vec<(Option<f64>,)> =
        sea_orm::sqlx::query_as("SELECT ret FROM price_points WHERE instrument = 'X' ORDER BY ts")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows[2].0, Some(40.0 / 30.0 - 1.0));
    // Another replica stores the very point `a` is about to append after its cached tail: `a`'s "new"
    // point is there already; the batch is done again from the table, and the later message wins.
    b.commit(&[point(4, 50.0, 5)]).await.unwrap();
    a.commit(&[point(4, 60.0, 6)]).await.unwrap();
    let rows: Vec<(f64, Option<f64>)> =
        sea_orm::sqlx::query_as("SELECT price, ret FROM price_points WHERE instrument = 'X' ORDER BY ts")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[3], (60.0, Some(60.0 / 40.0 - 1.0)));
    let (points, version): (i64, i64) =
        sea_orm::sqlx::query_as("SELECT points, version FROM price_series WHERE instrument = 'X'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (points, version),
        (4, 5),
        "each of the six commits bumped the version once (from 0); rolled-back attempts left nothing"
    );
}

/// The series read cache: a body is served until the processor's commit notification drops it, a fresh
/// read never waits for that, and a lost listener connection (notifications missed) empties the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_series_reads_follow_every_commit() {
    let app = spawn_app().await;
    let points = |body: &Value| body["points"].as_array().map_or(0, Vec::len);
    app.publish_plain("price.CACHE", r#"{"ts":"2026-01-01","price":10}"#).await;
    app.settled().await;
    let (_, first) = app.get("/v1/series/price/CACHE").await;
    assert_eq!(points(&first), 1, "{first}");
    // Served again (from the cache now): the same body.
    assert_eq!(app.get("/v1/series/price/CACHE").await.1, first);

    app.publish_plain("price.CACHE", r#"{"ts":"2026-01-02","price":11}"#).await;
    let (_, fresh) = app.get("/v1/series/price/CACHE?fresh=true").await;
    assert_eq!(points(&fresh), 2, "a fresh read sees the commit at once: {fresh}");
    let seen = app
        .get_until("/v1/series/price/CACHE", Duration::from_secs(30), "the cached body to be dropped", |b| {
            points(b) == 2
        })
        .await;
    assert!(close(&seen["points"][1]["ret"], 0.1), "{seen}");

    // Cut the cache's listener off: it connects again (emptying the cache, as it may have missed
    // notifications) and follows commits as before.
    let pool = app.c.db.get_postgres_connection_pool();
    let cut: Vec<i32> = sea_orm::sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid)::int FROM pg_stat_activity
          WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(!cut.is_empty(), "the API listens for commits");
    app.publish_plain("price.CACHE", r#"{"ts":"2026-01-03","price":12.1}"#).await;
    app.settled().await;
    let third = "the third point after the reconnect";
    app.get_until("/v1/series/price/CACHE", Duration::from_secs(30), third, |b| points(b) == 3).await;
}

/// A small batch is one transaction (a split would double its round trips and commits); from
/// `SPLIT_MIN_EVENTS` on, its instruments are split over `parallelism` concurrent transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_large_batch_is_split_over_concurrent_transactions() {
    use sea_orm::sqlx;
    use tributary_broker::events::PricePoint;
    use tributary_broker::{BatchHandler, Delivery};
    use tributary_processor::prices::{PriceHandler, SPLIT_MIN_EVENTS};
    let db = tributary_testkit::TestDb::create().await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let handler = PriceHandler::new(pool.clone(), Transforms { sma: vec![2], ema: vec![], vol: vec![] }, 100, 2);
    let batch = |prefix: &str, n: usize| -> Vec<Delivery<PricePoint>> {
        (0..n)
            .map(|i| Delivery {
                event: PricePoint {
                    instrument: format!("{prefix}{}", i % 50),
                    ts: Ts(Ts::parse("2026-01-01").unwrap().0 + chrono::Duration::minutes(i as i64)),
                    price: 1.0 + i as f64,
                    volume: None,
                },
                seq: i as u64 + 1,
                received: Ts::parse("2026-01-01").unwrap(),
            })
            .collect()
    };
    let transactions = |prefix: &'static str| {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(DISTINCT xmin::text) FROM price_points WHERE starts_with(instrument, $1)",
            )
            .bind(prefix)
            .fetch_one(&pool)
            .await
            .unwrap();
            n
        }
    };
    handler.handle(&batch("SMALL", SPLIT_MIN_EVENTS - 1)).await.unwrap();
    assert_eq!(transactions("SMALL").await, 1, "50 instruments, one transaction");
    handler.handle(&batch("LARGE", SPLIT_MIN_EVENTS)).await.unwrap();
    assert_eq!(transactions("LARGE").await, 2, "50 instruments over two transactions");
}

/// A batch over more instruments than one transaction can lock is split into parts of about
/// `lock::MAX_SERIES_PER_PART` instruments, committed `parallelism` at a time. As one transaction (20,000
/// advisory locks, past PostgreSQL's lock table of `max_locks_per_transaction` × `max_connections`) it
/// failed with "out of shared memory" on every delivery: a transient failure, retried for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_more_instruments_than_a_transaction_can_lock_is_split_to_fit() {
    use sea_orm::sqlx;
    use tributary_broker::events::PricePoint;
    use tributary_broker::{BatchHandler, Delivery};
    use tributary_processor::{lock::MAX_SERIES_PER_PART, prices::PriceHandler};
    let db = tributary_testkit::TestDb::create().await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let handler = PriceHandler::new(pool.clone(), Transforms { sma: vec![2], ema: vec![], vol: vec![] }, 100, 1);
    let n: usize = 20_000;
    let batch: Vec<Delivery<PricePoint>> = (0..n)
        .map(|i| Delivery {
            event: PricePoint {
                instrument: format!("W{i}"),
                ts: Ts::parse("2026-01-01").unwrap(),
                price: 1.0 + (i % 7) as f64,
                volume: None,
            },
            seq: i as u64 + 1,
            received: Ts::parse("2026-01-01").unwrap(),
        })
        .collect();
    handler.handle(&batch).await.unwrap();
    let (points, transactions): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT xmin::text) FROM price_points").fetch_one(&pool).await.unwrap();
    assert_eq!(points, n as i64);
    assert_eq!(transactions, n.div_ceil(MAX_SERIES_PER_PART) as i64);
}

/// An index level is summed over the constituents in byte order of their names, whichever path
/// recomputes it and whatever the database's collation. (The price path read the weights `ORDER BY`
/// instrument: under an `en-US` collation `a` sorts before `A` and `Z`, and the sum, taken in another
/// order than the definition's own recompute takes it, came out lower in its last bits.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_sums_in_the_same_order_under_any_collation() {
    use sea_orm::sqlx;
    use std::collections::{BTreeMap, HashMap};
    use tributary_broker::Delivery;
    use tributary_broker::events::{IndexDefinition, PricePoint};
    use tributary_processor::indices::IndexHandler;
    use tributary_processor::prices::{PriceHandler, index};
    let db = tributary_testkit::TestDb::create().await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    sqlx::query(r#"ALTER TABLE index_constituents ALTER COLUMN instrument TYPE text COLLATE "en-US-x-icu""#)
        .execute(&pool)
        .await
        .unwrap();
    let order: Vec<String> = sqlx::query_scalar(
        "SELECT i FROM unnest(ARRAY['A', 'Z', 'a']::text[] COLLATE \"en-US-x-icu\") AS i ORDER BY i",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(order, ["a", "A", "Z"], "the collation sorts otherwise than bytes");

    let weights: BTreeMap<String, f64> = [("A", 0.1), ("Z", 0.1), ("a", 0.2)].map(|(i, w)| (i.to_owned(), w)).into();
    let day = |d: &str| Ts::parse(d).unwrap();
    IndexHandler::new(pool.clone())
        .commit(&[Delivery {
            event: ("ix".to_owned(), IndexDefinition { base: 100.0, weights: weights.clone() }),
            seq: 1,
            received: day("2026-01-01"),
        }])
        .await
        .unwrap();
    let prices = PriceHandler::new(pool.clone(), Transforms { sma: vec![2], ema: vec![], vol: vec![] }, 10, 1);
    let points = |date: &str, ps: [f64; 3], seq: u64| -> Vec<Delivery<PricePoint>> {
        ["A", "Z", "a"]
            .into_iter()
            .zip(ps)
            .enumerate()
            .map(|(k, (i, price))| Delivery {
                event: PricePoint { instrument: i.to_owned(), ts: day(date), price, volume: None },
                seq: seq + k as u64,
                received: day(date),
            })
            .collect()
    };
    prices.commit(&points("2026-01-01", [1.0, 1.0, 1.0], 10)).await.unwrap();
    // The second date is recomputed by the price path, from the first as its anchor.
    prices.commit(&points("2026-01-02", [1.7, 1.3, 1.3], 20)).await.unwrap();

    let by_definition = index::levels(
        100.0,
        &weights.into_iter().collect::<Vec<_>>(),
        &HashMap::from([
            ("A".to_owned(), BTreeMap::from([(day("2026-01-01").0, 1.0), (day("2026-01-02").0, 1.7)])),
            ("Z".to_owned(), BTreeMap::from([(day("2026-01-01").0, 1.0), (day("2026-01-02").0, 1.3)])),
            ("a".to_owned(), BTreeMap::from([(day("2026-01-01").0, 1.0), (day("2026-01-02").0, 1.3)])),
        ]),
        None,
    )
    .unwrap();
    let stored: Vec<f64> = sqlx::query_scalar("SELECT level FROM index_points WHERE name = 'ix' ORDER BY ts")
        .fetch_all(&pool)
        .await
        .unwrap();
    let expected: Vec<f64> = by_definition.iter().map(|l| l.level).collect();
    assert_eq!(expected.len(), 2);
    assert_eq!(stored, expected, "bit for bit the levels of the definition's own order");
}
