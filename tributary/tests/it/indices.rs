//! Indices: the levels of the batch computation over any history, at the cost of what changed (not
//! the history of a constituent, not a volume).

use crate::common::{TestApp, spawn_app};
use chrono::{DateTime, TimeZone, Utc};
use reqwest::Method;
use sea_orm::sqlx;
use std::collections::{BTreeMap, HashMap};
use tributary_processor::prices::{index, recompute_index};

/// Defines index `name` over `weights`.
async fn define(app: &TestApp, name: &str, weights: &[(&str, f64)]) {
    let weights: BTreeMap<&str, f64> = weights.iter().copied().collect();
    let body = serde_json::json!({ "base": 100, "weights": weights }).to_string();
    let (s, b) = app.send(Method::PUT, &format!("/v1/indices/{name}"), &body).await;
    assert_eq!(s, 200, "{b}");
}

/// Index `name`'s stored levels, by date: (level, ret, the row's `xmin`: which transaction wrote it).
async fn stored(app: &TestApp, name: &str) -> Vec<(DateTime<Utc>, f64, Option<f64>, String)> {
    sqlx::query_as("SELECT ts, level, ret, xmin::text FROM index_points WHERE name = $1 ORDER BY ts")
        .bind(name)
        .fetch_all(app.c.db.get_postgres_connection_pool())
        .await
        .unwrap()
}

/// Runs `sql` (a test's stored history).
async fn exec(pool: &sqlx::PgPool, sql: &'static str) {
    sqlx::raw_sql(sql).execute(pool).await.unwrap();
}

/// Recomputes index `name` as an append at `at` does (in a transaction of its own); how many prices it read.
async fn recompute_after_append(pool: &sqlx::PgPool, name: &str, at: DateTime<Utc>) -> usize {
    let mut tx = pool.begin().await.unwrap();
    let read = recompute_index(&mut tx, name, Some(at..=at)).await.unwrap();
    tx.commit().await.unwrap();
    read
}

/// The stored price of `instrument` on `day`.
async fn price(app: &TestApp, instrument: &str, day: &str) -> f64 {
    sqlx::query_scalar("SELECT price FROM price_points WHERE instrument = $1 AND ts = $2::timestamptz")
        .bind(instrument)
        .bind(day)
        .fetch_one(app.c.db.get_postgres_connection_pool())
        .await
        .unwrap()
}

/// Asserts that index `name` (base 100, `weights`) has stored the levels the batch computation gives over
/// every stored price, bit for bit; returns how many there are.
async fn assert_batch_equal(app: &TestApp, name: &str, weights: &[(&str, f64)]) -> usize {
    let rows: Vec<(String, DateTime<Utc>, f64)> = sqlx::query_as("SELECT instrument, ts, price FROM price_points")
        .fetch_all(app.c.db.get_postgres_connection_pool())
        .await
        .unwrap();
    let mut prices: HashMap<String, BTreeMap<DateTime<Utc>, f64>> = HashMap::new();
    for (i, ts, p) in rows {
        prices.entry(i).or_default().insert(ts, p);
    }
    // In byte order of the names, as a definition sums them.
    let weights: BTreeMap<String, f64> = weights.iter().map(|(i, w)| (i.to_string(), *w)).collect();
    let weights: Vec<(String, f64)> = weights.into_iter().collect();
    let want: Vec<_> =
        index::levels(100.0, &weights, &prices, None).unwrap().into_iter().map(|w| (w.ts, w.level, w.ret)).collect();
    let got: Vec<_> = stored(app, name).await.into_iter().map(|g| (g.0, g.1, g.2)).collect();
    assert_eq!(got, want, "index {name}");
    got.len()
}

/// An index over a history longer than one chunk of its recompute (300 constituents × 300 dates, read
/// ~218 prices per constituent at a time) has the levels of the batch computation, from scratch and
/// after a correction early in its history, with the dates where a constituent has no price skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_over_a_history_longer_than_a_chunk_equals_the_batch_computation() {
    let app = spawn_app().await;
    exec(
        app.c.db.get_postgres_connection_pool(),
        "INSERT INTO price_points (instrument, ts, price, seq)
         SELECT 'C' || i, timestamptz '2026-01-01' + d * interval '1 day', 100 + ((i * 37 + d * 11) % 23) * 0.37, 0
           FROM generate_series(0, 299) i, generate_series(0, 299) d WHERE NOT (i < 3 AND d % 10 = i + 1)",
    )
    .await;
    let names: Vec<String> = (0..300).map(|i| format!("C{i}")).collect();
    let weights: Vec<(&str, f64)> = names.iter().enumerate().map(|(i, n)| (n.as_str(), 1.0 / (i + 1) as f64)).collect();
    define(&app, "wide", &weights).await;
    assert!(assert_batch_equal(&app, "wide", &weights).await > 200);
    // A correction on the fifth day rewrites every level after it. (The rows above carry sequence 0, so
    // that the correction, the stream's first message, is newer than them: at 1 it was ignored.)
    let before = stored(&app, "wide").await;
    app.publish_plain("price.C0", r#"{"ts":"2026-01-05","price":150}"#).await;
    app.settled().await;
    assert_eq!(price(&app, "C0", "2026-01-05").await, 150.0);
    assert_batch_equal(&app, "wide", &weights).await;
    assert_ne!(stored(&app, "wide").await.last(), before.last(), "the last level changed too");
}

/// A constituent that stopped (or never had a price) bounds the index's dates: none lies past its last
/// price. The recompute read on to the other constituents' end anyway, chunk after chunk, so every
/// append to A re-read A's whole history since B stopped (100,000 prices here), holding the locks of its
/// part meanwhile. Now an append reads one chunk, and the levels are still the batch computation's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_next_to_a_stopped_constituent_reads_one_chunk_not_the_history() {
    let app = spawn_app().await;
    let pool = app.c.db.get_postgres_connection_pool();
    exec(
        pool,
        "INSERT INTO price_points (instrument, ts, price, seq)
         SELECT i, timestamptz '2026-01-01' + m * interval '1 minute', 100 + (m % 17) * 0.25, 1
           FROM (VALUES ('A', 100000), ('B', 10)) AS c(i, n), generate_series(0, n - 1) AS m",
    )
    .await;
    define(&app, "stopped", &[("A", 0.5), ("B", 0.5)]).await;
    define(&app, "never", &[("A", 0.5), ("Z", 0.5)]).await;

    // As an append to A after its last price recomputes each: from the last index date before it.
    let append = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
    for name in ["stopped", "never"] {
        let read = recompute_after_append(pool, name, append).await;
        assert!(read <= 40_000, "{name}: {read} prices read for one append (one chunk is at most 32,768 of A)");
    }

    assert_eq!(assert_batch_equal(&app, "stopped", &[("A", 0.5), ("B", 0.5)]).await, 10);
    assert!(stored(&app, "never").await.is_empty(), "no date has a price of Z");
}

/// Constituents that stop sharing dates (B's minutes moved to :30, while A stays on :00) leave the
/// index's last date behind: an append reads the prices at that date and from the change on, not every
/// price since (100,000 here). The same for constituents that never shared one: no index date lies
/// before the change, so none is read from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_after_constituents_stop_sharing_dates_reads_what_changed() {
    let app = spawn_app().await;
    let pool = app.c.db.get_postgres_connection_pool();
    exec(
        pool,
        "INSERT INTO price_points (instrument, ts, price, seq)
         SELECT i, timestamptz '2026-01-01' + m * interval '1 minute' + CASE WHEN m > 0 THEN off ELSE '0s' END,
                100 + (m % 17) * 0.25, 1
           FROM (VALUES ('A', interval '0s'), ('B', interval '30s'), ('C', interval '10s'), ('D', interval '20s'))
                AS c(i, off),
                generate_series(0, 49999) AS m
          WHERE i IN ('A', 'B') OR m > 0",
    )
    .await;
    define(&app, "apart", &[("A", 0.5), ("B", 0.5)]).await;
    define(&app, "never", &[("C", 0.5), ("D", 0.5)]).await;

    // An append to A and to C, each recomputing its index from it.
    let append = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
    sqlx::query("INSERT INTO price_points (instrument, ts, price, seq) VALUES ('A', $1, 101, 2), ('C', $1, 101, 2)")
        .bind(append)
        .execute(pool)
        .await
        .unwrap();
    for (name, most) in [("apart", 3), ("never", 1)] {
        assert_eq!(recompute_after_append(pool, name, append).await, most, "{name}: prices read for one append");
    }

    assert_eq!(assert_batch_equal(&app, "apart", &[("A", 0.5), ("B", 0.5)]).await, 1, "the first minute");
    assert!(stored(&app, "never").await.is_empty(), "C and D never share a date");
}

/// A correction on a date that is no index date (a holiday of the other constituent) changes no level:
/// the recompute stops at the first index date after it, which comes out as stored, and writes nothing.
/// One on an index date rewrites the levels from it on, and only those. (Every correction rewrote every
/// level after it, 294 here, whether it changed one or not.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_rewrites_only_the_levels_it_changes() {
    let app = spawn_app().await;
    exec(
        app.c.db.get_postgres_connection_pool(),
        "INSERT INTO price_points (instrument, ts, price, seq)
         SELECT i, timestamptz '2026-01-01' + d * interval '1 day', 100 + ((d * 7 + length(i)) % 13) * 0.5, 0
           FROM (VALUES ('A'), ('BB')) AS c(i), generate_series(0, 299) AS d WHERE NOT (i = 'BB' AND d = 5)",
    )
    .await;
    let weights = [("A", 0.5), ("BB", 0.5)];
    define(&app, "h", &weights).await;
    let before = stored(&app, "h").await;
    assert_eq!(before.len(), 299, "every day but the fifth");

    app.publish_plain("price.A", r#"{"ts":"2026-01-06","price":150}"#).await; // day 5: BB's holiday
    app.settled().await;
    assert_eq!(price(&app, "A", "2026-01-06").await, 150.0, "the correction is stored");
    let now = stored(&app, "h").await;
    let rewritten = before.iter().zip(&now).filter(|(b, n)| b != n).count();
    assert_eq!((now.len(), rewritten), (299, 0), "every level as it was, written by the same transactions");

    app.publish_plain("price.A", r#"{"ts":"2026-07-20","price":150}"#).await; // day 200
    app.settled().await;
    assert_eq!(price(&app, "A", "2026-07-20").await, 150.0);
    let after = stored(&app, "h").await;
    let day200 = Utc.with_ymd_and_hms(2026, 7, 20, 0, 0, 0).unwrap();
    for (b, a) in before.iter().zip(&after) {
        match b.0 < day200 {
            true => assert_eq!(a, b, "before the correction: kept"),
            false => assert_ne!(a.3, b.3, "from the correction on: rewritten ({})", b.0),
        }
    }
    assert_eq!(assert_batch_equal(&app, "h", &weights).await, 299);
}

/// A constituent's point re-sent with the same price and a new volume changes no level. It counted as a
/// change from its date on, so every index level after it was written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_volume_rewrites_no_index_level() {
    let app = spawn_app().await;
    define(&app, "v", &[("A", 0.5), ("B", 0.5)]).await;
    for day in 1..=20 {
        for (i, p) in [("A", 10.0 + day as f64), ("B", 20.0 - day as f64 * 0.5)] {
            app.publish_plain(&format!("price.{i}"), &format!(r#"{{"ts":"2026-01-{day:02}","price":{p},"volume":1}}"#))
                .await;
        }
    }
    app.settled().await;
    let before = stored(&app, "v").await;
    assert_eq!(before.len(), 20);

    app.publish_plain("price.A", r#"{"ts":"2026-01-05","price":15,"volume":7}"#).await;
    app.settled().await;
    let (_, a) = app.get("/v1/series/price/A?from=2026-01-05&to=2026-01-05").await;
    assert_eq!(a["points"][0]["volume"], 7.0, "the volume is stored: {a}");
    assert_eq!(stored(&app, "v").await, before, "every level as it was, written by the same transactions");
}
