//! The differential test: whatever the order, duplication or lateness of delivery, and with processors
//! killed mid-stream and two replicas sharing the consumers, every stored value equals the batch
//! computation over the final raw data.
//!
//! Equality is exact (bit for bit): the incremental path runs the same arithmetic on the same inputs in
//! the same order as the batch path, and float8 round-trips f64 exactly (see `prices::series`).

use crate::common::{TestApp, spawn_app, spawn_app_with};
use chrono::{DateTime, Duration, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sea_orm::sqlx;
use std::collections::{BTreeMap, HashMap};
use tributary_broker::events::{IndexDefinition, PriceEvent};
use tributary_broker::ts::Ts;
use tributary_processor::prices::index;
use tributary_processor::prices::series::{Point, Transforms, recompute};

enum Msg {
    Price { instrument: String, ts: DateTime<Utc>, price: f64 },
    Index { name: &'static str, def: IndexDefinition },
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_equals_batch_under_shuffles_duplicates_corrections_and_crashes() {
    differential(spawn_app().await, 1, 80).await;
}

/// Short windows over long series: a correction's effect dies out long before the series ends, so most
/// corrections stop early (the recompute settles), shuffled, duplicated and with processors killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_cutoff_keeps_incremental_equal_to_batch_deep_in_long_series() {
    let app = spawn_app_with(|c| {
        c.processor.prices = Transforms { sma: vec![3, 5], ema: vec![4], vol: vec![3] };
    })
    .await;
    differential(app, 1, 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_replicas_keep_incremental_equal_to_batch() {
    let app = spawn_app_with(|c| c.processor.partitions = 4).await;
    let app = differential(app, 2, 80).await;
    // Every partition had work, and each was consumed by its own durable consumer.
    let stream = app.c.js.get_stream("PRICES").await.unwrap();
    for p in 0..4 {
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(&format!("processor-price-p{p}")).await.unwrap();
        let info = c.info().await.unwrap();
        assert!(info.delivered.stream_sequence > 0 && info.num_pending == 0, "partition {p}: {info:?}");
    }
    let (s, b) = app.get("/v1/series/price/S0?fresh=true&limit=1").await;
    assert_eq!(s, 200, "{b}");
}

/// Publishes shuffled prices over `days` days with corrections and duplicates and index definitions,
/// killing and restarting processors (`replicas` of them sharing the partitions) mid-stream, then
/// compares every stored value with the batch computation.
async fn differential(mut app: TestApp, replicas: u32, days: i64) -> TestApp {
    let seed: u64 =
        std::env::var("DIFF_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| rand::rng().random());
    eprintln!("differential seed {seed} (rerun with DIFF_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let start_all = |app: &mut TestApp| {
        for _ in 0..replicas {
            app.start_processor();
        }
    };
    if replicas > 1 {
        start_all(&mut app); // spawn_app started replica 0 only
    }
    let instruments: Vec<String> = (0..6).map(|i| format!("S{i}")).collect();
    let day0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();

    let mut msgs = Vec::new();
    for inst in &instruments {
        let mut p = 100.0;
        for d in 0..days {
            if rng.random_bool(0.1) {
                continue; // a gap: not every instrument has every date
            }
            p *= (rng.random_range(-0.03..0.03f64)).exp();
            let ts = day0 + Duration::days(d);
            msgs.push(Msg::Price { instrument: inst.clone(), ts, price: p });
            for _ in 0..rng.random_range(0..3usize).saturating_sub(1) {
                // corrections
                msgs.push(Msg::Price { instrument: inst.clone(), ts, price: p * rng.random_range(0.9..1.1) });
            }
            if rng.random_bool(0.15) {
                // an exact duplicate (a different message with the same content)
                msgs.push(Msg::Price { instrument: inst.clone(), ts, price: p });
            }
        }
    }
    let weights = |ws: &[(&str, f64)]| IndexDefinition {
        base: 100.0,
        weights: ws.iter().map(|(k, w)| (k.to_string(), *w)).collect(),
    };
    msgs.push(Msg::Index { name: "four", def: weights(&[("S0", 0.4), ("S1", 0.3), ("S2", 0.2), ("S3", 0.1)]) });
    msgs.push(Msg::Index { name: "four", def: weights(&[("S0", 0.25), ("S1", 0.25), ("S2", 0.25), ("S4", 0.25)]) });
    msgs.push(Msg::Index { name: "pair", def: weights(&[("S4", 1.0), ("S5", -0.5)]) });
    msgs.shuffle(&mut rng);

    // Publish in chunks; kill processors mid-stream, restart, and run two replicas for a while.
    let mut raw: Raw = HashMap::new();
    let mut defs: HashMap<&str, (u64, IndexDefinition)> = HashMap::new();
    let chunks: Vec<Vec<Msg>> = {
        let mut v = Vec::new();
        let mut it = msgs.into_iter().peekable();
        while it.peek().is_some() {
            v.push(it.by_ref().take(150).collect());
        }
        v
    };
    for (i, chunk) in chunks.into_iter().enumerate() {
        for m in chunk {
            match m {
                Msg::Price { instrument, ts, price } => {
                    let seq = app
                        .publish_msgpack(
                            &format!("price.{instrument}"),
                            &PriceEvent { ts: Some(Ts(ts)), price, volume: None },
                        )
                        .await;
                    let e = raw.entry((instrument, ts)).or_insert((seq, price));
                    if seq > e.0 {
                        *e = (seq, price);
                    }
                }
                Msg::Index { name, def } => {
                    let seq = app.publish_msgpack(&format!("index.{name}"), &def).await;
                    if defs.get(name).is_none_or(|d| seq > d.0) {
                        defs.insert(name, (seq, def));
                    }
                }
            }
        }
        match i % 4 {
            1 | 3 => {
                app.kill_processors();
                start_all(&mut app);
            }
            2 => app.start_processor(), // one more, taking its share
            _ => {}
        }
    }
    app.settled().await;
    verify(&app, &raw, &defs).await;
    app
}

/// Every stored raw point is the last writer's by stream sequence, and there is one per (instrument, ts).
pub async fn verify_raw(app: &TestApp, raw: &Raw) {
    let pool = app.c.db.get_postgres_connection_pool();
    let stored: Vec<(String, DateTime<Utc>, f64, i64)> =
        sqlx::query_as("SELECT instrument, ts, price, seq FROM price_points").fetch_all(pool).await.unwrap();
    assert_eq!(stored.len(), raw.len());
    for (i, ts, price, seq) in &stored {
        let (want_seq, want_price) = raw[&(i.clone(), *ts)];
        assert_eq!((*seq as u64, *price), (want_seq, want_price), "raw {i} {ts}");
    }
}

/// Raw prices (instrument, ts) → (stream sequence, price) of the last writer.
pub type Raw = HashMap<(String, DateTime<Utc>), (u64, f64)>;

/// Every stored raw point is the last writer's, and every derived value and index level equals the batch
/// computation over the raw data, exactly.
pub async fn verify(app: &TestApp, raw: &Raw, defs: &HashMap<&str, (u64, IndexDefinition)>) {
    verify_raw(app, raw).await;
    let pool = app.c.db.get_postgres_connection_pool();

    // Derived: the batch computation over the final raw data, compared exactly.
    let t = app.c.config.processor.prices.clone();
    let names = t.names();
    let mut by_inst: BTreeMap<String, BTreeMap<DateTime<Utc>, f64>> = BTreeMap::new();
    for ((i, ts), (_, p)) in raw {
        by_inst.entry(i.clone()).or_default().insert(*ts, *p);
    }
    let rows: Vec<(String, DateTime<Utc>, Option<f64>, serde_json::Value)> =
        sqlx::query_as("SELECT instrument, ts, ret, derived FROM price_points ORDER BY instrument, ts")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut stored_by_inst: HashMap<&str, Vec<_>> = HashMap::new();
    for r in &rows {
        stored_by_inst.entry(r.0.as_str()).or_default().push(r);
    }
    let counts: HashMap<String, i64> = sqlx::query_as("SELECT instrument, points FROM price_series")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let mut checked = 0;
    for (inst, series) in &by_inst {
        let mut points: Vec<Point> = series.values().map(|p| Point::raw(*p)).collect();
        recompute(&t, &mut points, 0);
        let stored = stored_by_inst.remove(inst.as_str()).unwrap_or_default();
        assert_eq!(stored.len(), points.len(), "points of {inst}");
        for (s, want) in stored.iter().zip(&points) {
            assert_eq!(s.2, want.ret, "ret of {inst} at {}", s.1);
            for (n, w) in names.iter().zip(&want.values) {
                assert_eq!(s.3[n].as_f64(), *w, "{n} of {inst} at {}", s.1);
                checked += 1;
            }
        }
        assert_eq!(counts.get(inst).copied(), Some(series.len() as i64), "point count of {inst}");
    }
    assert!(checked > 1000, "checked only {checked} values");

    for (name, (_, def)) in defs {
        let weights: Vec<(String, f64)> = def.weights.iter().map(|(k, w)| (k.clone(), *w)).collect();
        let prices: HashMap<String, BTreeMap<DateTime<Utc>, f64>> =
            weights.iter().map(|(k, _)| (k.clone(), by_inst.get(k).cloned().unwrap_or_default())).collect();
        let want = index::levels(def.base, &weights, &prices, None).unwrap();
        let got: Vec<(DateTime<Utc>, f64, Option<f64>)> =
            sqlx::query_as("SELECT ts, level, ret FROM index_points WHERE name = $1 ORDER BY ts")
                .bind(name)
                .fetch_all(pool)
                .await
                .unwrap();
        assert!(!want.is_empty(), "index {name} has dates");
        assert_eq!(got.len(), want.len(), "index {name} dates");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((g.0, g.1, g.2), (w.ts, w.level, w.ret), "index {name}");
        }
    }
}
