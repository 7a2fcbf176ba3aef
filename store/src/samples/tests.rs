//! Against a real PostgreSQL (a fresh database per test, see tributary-testkit): the batch statements
//! round-trip their rows, and the API's reads keep their meaning and their index bounds under a generic plan.

use super::read::{RAW_SAMPLES, ROLLUP_BUCKETS};
use super::*;
use crate::Range;
use chrono::{DateTime, Utc};
use sea_orm::sqlx::{self, PgPool};
use std::collections::{BTreeMap, BTreeSet};
use tributary_testkit::TestDb;

fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap()
}

fn key(host: &str, field: &str, start: i64) -> BucketKey {
    (host.into(), field.into(), t(start))
}

fn sample<'a>(host: &'a str, field: &'a str, ts: i64, value: f64, seq: i64) -> NewSample<'a> {
    NewSample { host, field, ts: t(ts), value, seq }
}

fn rollup(host: &str, field: &str, start: i64, sum: f64, prefix_sum: Option<f64>) -> RollupRow {
    RollupRow {
        host: host.into(),
        field: field.into(),
        bucket: RollupBucket {
            start: t(start),
            count: 2,
            sum,
            min: -0.0,
            max: 2.5,
            mean: sum / 2.0,
            first: 1.0,
            last: 2.5,
            p50: 1.0,
            p95: 2.5,
            p99: 2.5,
        },
        sketch: vec![0x92, 0x01, 0xff],
        last_ts: t(start + 30),
        sorted_values: prefix_sum.is_none().then(|| 1.5f64.to_le_bytes().repeat(2)),
        prefix_sum,
    }
}

#[tokio::test]
async fn batch_statements_round_trip_their_rows() {
    let db = TestDb::create().await;
    let pool = PgPool::connect(db.url()).await.unwrap();
    let mut tx = pool.begin().await.unwrap();

    let first = [
        sample("h-1", "cpu", 0, 1.0, 1),
        sample("h-1", "cpu", 30, 2.0, 2),
        sample("h-1", "cpu", 70, 3.0, 3),
        sample("h-1", "mem", 10, 4.0, 4),
        sample("h-2", "cpu", 20, 5.0, 5),
    ];
    let changed = upsert_samples(&mut tx, &first).await.unwrap();
    assert_eq!(changed.len(), 5);
    assert!(changed.iter().all(|c| c.inserted));
    assert!(upsert_samples(&mut tx, &[sample("h-1", "cpu", 30, 9.0, 2)]).await.unwrap().is_empty(), "not newer");
    let corrected = upsert_samples(&mut tx, &[sample("h-1", "cpu", 30, 9.0, 6)]).await.unwrap();
    let expected = ChangedSample { host: "h-1".into(), field: "cpu".into(), ts: t(30), value: 9.0, inserted: false };
    assert_eq!(corrected, [expected]);

    let buckets: BTreeSet<BucketKey> = [key("h-2", "cpu", 0), key("h-1", "cpu", 60), key("h-1", "cpu", 0)].into();
    let got = load_samples(&mut tx, &buckets, 60).await.unwrap();
    let row =
        |host: &str, field: &str, ts, value| SampleRow { host: host.into(), field: field.into(), ts: t(ts), value };
    assert_eq!(
        got,
        [row("h-1", "cpu", 0, 1.0), row("h-1", "cpu", 30, 9.0), row("h-1", "cpu", 70, 3.0), row("h-2", "cpu", 20, 5.0)]
    );

    let (r0, r1) = (rollup("h-1", "cpu", 0, 3.0, None), rollup("h-1", "cpu", 60, 4.0, None));
    let wide = rollup("h-1", "cpu", 0, 7.0, Some(3.0));
    upsert_rollups(&mut tx, 60, &[r0.clone(), r1.clone()]).await.unwrap();
    upsert_rollups(&mut tx, 3600, std::slice::from_ref(&wide)).await.unwrap();
    let updated = RollupRow { bucket: RollupBucket { sum: 3.5, ..r0.bucket }, ..r0.clone() };
    upsert_rollups(&mut tx, 60, std::slice::from_ref(&updated)).await.unwrap();
    let at: BTreeSet<BucketKey> = [key("h-1", "cpu", 0), key("h-1", "cpu", 120)].into();
    assert_eq!(
        load_buckets(&mut tx, &at, 60).await.unwrap(),
        std::slice::from_ref(&updated),
        "only stored keys, this width"
    );
    assert_eq!(load_buckets(&mut tx, &at, 3600).await.unwrap(), std::slice::from_ref(&wide));
    // The wide bucket at 0 for parts from 120 on: the latest 60 s bucket stored before them starts at 60.
    let wide_at = |from: i64| -> BTreeMap<BucketKey, _> {
        [(key("h-1", "cpu", 0), t(from)), (key("h-1", "cpu", 7200), t(7200))].into()
    };
    let with_before = |before: Option<i64>| vec![(wide.clone(), before.map(t))];
    assert_eq!(
        load_wide_buckets(&mut tx, &wide_at(120), 60, 3600).await.unwrap(),
        with_before(Some(60)),
        "stored only"
    );
    assert_eq!(load_wide_buckets(&mut tx, &wide_at(60), 60, 3600).await.unwrap(), with_before(Some(0)));
    assert_eq!(load_wide_buckets(&mut tx, &wide_at(0), 60, 3600).await.unwrap(), with_before(None), "none before");
    assert!(load_wide_buckets(&mut tx, &BTreeMap::new(), 60, 3600).await.unwrap().is_empty());
    let inside: BTreeSet<BucketKey> = [key("h-1", "cpu", 0)].into();
    assert_eq!(load_rollups(&mut tx, &inside, 60, 3600).await.unwrap(), [updated, r1]);
    assert!(load_rollups(&mut tx, &BTreeSet::new(), 60, 3600).await.unwrap().is_empty());

    let span = |host, field, first, last| SeriesSpan { host, field, first_ts: t(first), last_ts: t(last) };
    upsert_series(&mut tx, &[span("h-1", "cpu", 0, 70), span("h-1", "mem", 10, 10)]).await.unwrap();
    upsert_series(&mut tx, &[span("h-1", "cpu", 30, 90), span("h-2", "cpu", 20, 20)]).await.unwrap();
    let latest = |host, ts, seq, fields: &str| NewLatest { host, ts: t(ts), seq, fields: fields.into() };
    upsert_latest(&mut tx, &[latest("h-1", 70, 3, r#"{"cpu":3.0}"#), latest("h-2", 20, 5, r#"{"cpu":5.0}"#)])
        .await
        .unwrap();
    upsert_latest(&mut tx, &[latest("h-1", 70, 2, r#"{"cpu":0.0}"#)]).await.unwrap(); // older: kept out
    tx.commit().await.unwrap();

    let page = |after: Option<&str>, limit| crate::Page { after: after.map(str::to_owned), limit };
    let host = |host: &str, fields: &[&str], seen| HostFields {
        host: host.into(),
        fields: fields.iter().map(|f| f.to_string()).collect(),
        last_seen: t(seen),
    };
    let all = [host("h-1", &["cpu", "mem"], 90), host("h-2", &["cpu"], 20)];
    assert_eq!(hosts(&pool, &page(None, 10)).await.unwrap(), all);
    assert_eq!(hosts(&pool, &page(None, 1)).await.unwrap(), all[..1], "a page of one");
    assert_eq!(hosts(&pool, &page(Some("h-1"), 10)).await.unwrap(), all[1..], "after the first");
    assert!(series_exists(&pool, "h-1", "mem").await.unwrap());
    assert!(!series_exists(&pool, "h-2", "mem").await.unwrap());
    let latest = latest_samples(&pool, 10).await.unwrap();
    let expected = |host: &str, ts, cpu: f64| LatestSample {
        host: host.into(),
        ts: t(ts),
        fields: serde_json::json!({"cpu": cpu}),
    };
    assert_eq!(latest, [expected("h-1", 70, 3.0), expected("h-2", 20, 5.0)]);
    assert_eq!(latest_samples(&pool, 1).await.unwrap().len(), 1);
}

/// The plan of `query` as a prepared statement under a generic plan (the one a reused statement gets), with
/// sequential scans off so that a tiny table still shows its index scan.
async fn generic_plan(pool: &PgPool, query: &str, types: &str, args: &str) -> String {
    let mut conn = pool.acquire().await.unwrap();
    let setup =
        format!("SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; PREPARE q({types}) AS {query}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(setup)).execute(&mut *conn).await.unwrap();
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN EXECUTE q({args})")))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    sqlx::raw_sql("DEALLOCATE q; RESET ALL").execute(&mut *conn).await.unwrap();
    plan.join("\n")
}

#[tokio::test]
async fn range_reads_bound_the_index_scan_and_treat_a_missing_bound_as_open() {
    let db = TestDb::create().await;
    let pool = PgPool::connect(db.url()).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let mut rows: Vec<NewSample> = (0..10).map(|i| sample("h", "cpu", i * 60, i as f64, 1)).collect();
    rows.push(sample("h", "mem", 120, -1.0, 1));
    upsert_samples(&mut tx, &rows).await.unwrap();
    let buckets: Vec<RollupRow> = (0..10).map(|i| rollup("h", "cpu", i * 60, i as f64, None)).collect();
    upsert_rollups(&mut tx, 60, &buckets).await.unwrap();
    upsert_rollups(&mut tx, 3600, &[rollup("h", "cpu", 0, 45.0, Some(36.0))]).await.unwrap();
    tx.commit().await.unwrap();

    // Each case more than five times, so that the statements also run under their generic plans.
    for _ in 0..7 {
        for (from, to, limit, want) in [
            (None, None, 100, (0..10).rev().collect::<Vec<i64>>()),
            (Some(180), None, 100, (3..10).rev().collect()),
            (None, Some(360), 100, (0..7).rev().collect()),
            (Some(180), Some(360), 100, vec![6, 5, 4, 3]),
            (Some(180), Some(360), 2, vec![6, 5]),
            (Some(400), Some(410), 100, vec![]),
        ] {
            let (from, to) = (from.map(t), to.map(t));
            let raw = raw_samples(&pool, "h", "cpu", Range { from, to, limit }).await.unwrap();
            let want_raw: Vec<SamplePoint> =
                want.iter().map(|&i| SamplePoint { ts: t(i * 60), value: i as f64 }).collect();
            assert_eq!(raw, want_raw, "raw samples {from:?}..{to:?} limit {limit}");
            let got = rollup_buckets(&pool, "h", "cpu", 60, Range { from, to, limit }).await.unwrap();
            let starts: Vec<i64> = got.iter().map(|b| b.start.timestamp() / 60).collect();
            assert_eq!(starts, want, "1m rollups {from:?}..{to:?} limit {limit}");
            assert!(got.iter().all(|b| b.sum == b.start.timestamp() as f64 / 60.0 && b.count == 2));
        }
    }
    let wide = rollup_buckets(&pool, "h", "cpu", 3600, Range { from: None, to: None, limit: 10 }).await.unwrap();
    assert_eq!(wide.iter().map(|b| (b.start, b.sum)).collect::<Vec<_>>(), [(t(0), 45.0)]);
    assert!(raw_samples(&pool, "h", "disk", Range { from: None, to: None, limit: 10 }).await.unwrap().is_empty());

    // Under a generic plan both bounds stay conditions of the primary-key scan, not a filter after it.
    for (query, types, args, column) in [
        (RAW_SAMPLES, "text, text, timestamptz, timestamptz, int8", "'h', 'cpu', NULL, NULL, 10", "ts"),
        (ROLLUP_BUCKETS, "text, text, int4, timestamptz, timestamptz, int8", "'h', 'cpu', 60, NULL, NULL, 10", "start"),
    ] {
        let plan = generic_plan(&pool, query, types, args).await;
        let cond = plan.lines().find(|l| l.contains("Index Cond")).unwrap_or_else(|| panic!("no index scan:\n{plan}"));
        assert!(cond.contains(&format!("{column} >= COALESCE($")), "lower bound in the index scan:\n{plan}");
        assert!(cond.contains(&format!("{column} <= COALESCE($")), "upper bound in the index scan:\n{plan}");
        assert!(!plan.contains("Filter"), "no filter:\n{plan}");
    }
}
