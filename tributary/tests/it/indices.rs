//! An index's recompute costs what changed: not the history of its constituents, not a volume.

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

/// A constituent that stopped (or never had a price) bounds the index's dates: none lies past its last
/// price. The recompute read on to the other constituents' end anyway, chunk after chunk, so every
/// append to A re-read A's whole history since B stopped (100,000 prices here), holding the locks of its
/// part meanwhile. Now an append reads one chunk, and the levels are still the batch computation's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_next_to_a_stopped_constituent_reads_one_chunk_not_the_history() {
    let app = spawn_app().await;
    let pool = app.c.db.get_postgres_connection_pool();
    sqlx::query(
        "INSERT INTO price_points (instrument, ts, price, seq)
         SELECT i, timestamptz '2026-01-01' + m * interval '1 minute', 100 + (m % 17) * 0.25, 1
           FROM (VALUES ('A', 100000), ('B', 10)) AS c(i, n), generate_series(0, n - 1) AS m",
    )
    .execute(pool)
    .await
    .unwrap();
    define(&app, "stopped", &[("A", 0.5), ("B", 0.5)]).await;
    define(&app, "never", &[("A", 0.5), ("Z", 0.5)]).await;

    // As an append to A after its last price recomputes each: from the last index date before it.
    let append = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
    for name in ["stopped", "never"] {
        let mut tx = pool.begin().await.unwrap();
        let read = recompute_index(&mut tx, name, Some(append)).await.unwrap();
        tx.commit().await.unwrap();
        assert!(read <= 40_000, "{name}: {read} prices read for one append (one chunk is at most 32,768 of A)");
    }

    let rows: Vec<(String, DateTime<Utc>, f64)> =
        sqlx::query_as("SELECT instrument, ts, price FROM price_points").fetch_all(pool).await.unwrap();
    let mut prices: HashMap<String, BTreeMap<DateTime<Utc>, f64>> = HashMap::new();
    for (i, ts, p) in rows {
        prices.entry(i).or_default().insert(ts, p);
    }
    let want = index::levels(100.0, &[("A".into(), 0.5), ("B".into(), 0.5)], &prices, None).unwrap();
    let got = stored(&app, "stopped").await;
    assert_eq!(want.len(), 10);
    assert_eq!(
        got.iter().map(|g| (g.0, g.1, g.2)).collect::<Vec<_>>(),
        want.iter().map(|w| (w.ts, w.level, w.ret)).collect::<Vec<_>>()
    );
    assert!(stored(&app, "never").await.is_empty(), "no date has a price of Z");
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
