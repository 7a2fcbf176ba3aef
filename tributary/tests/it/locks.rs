//! The price path's database work on its own: index reads through the primary key, and the per-series
//! locks (taken with `BEGIN`, in one global order, never left behind).

use serde_json::Value;
use std::time::Duration;
use tributary_broker::ts::Ts;
use tributary_processor::prices::series::Transforms;

/// An index recompute after an append reads its definition and the constituents' prices at its anchor and
/// from the change on through the primary key, not their whole history: under a generic plan (what a
/// prepared statement gets after a few runs) no stored point is read and discarded by a filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_recompute_reads_only_the_points_after_its_anchor() {
    use sea_orm::sqlx::{self, Connection};
    let db = tributary_testkit::TestDb::create().await;
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::query(
        "INSERT INTO price_points (instrument, ts, price, seq)
         SELECT 'S' || i, timestamptz '2026-01-01' + d * interval '1 minute', 100, d
           FROM generate_series(0, 99) i, generate_series(0, 999) d",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::raw_sql(
        "INSERT INTO indices (name, base, weights, seq) VALUES ('X', 100, '{}', 1);
         INSERT INTO index_constituents (name, instrument, weight) VALUES ('X', 'S1', 0.5), ('X', 'S2', 0.25), ('X', 'S3', 0.25);
         INSERT INTO index_points (name, ts, level) VALUES ('X', timestamptz '2026-01-01' + interval '990 minutes', 100)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("ANALYZE price_points").execute(&mut conn).await.unwrap();
    sqlx::query("SET plan_cache_mode = force_generic_plan").execute(&mut conn).await.unwrap();
    let prepare = format!("PREPARE start AS {}", tributary_store::indices::INDEX_RECOMPUTE_START);
    sqlx::raw_sql(sqlx::AssertSqlSafe(prepare)).execute(&mut conn).await.unwrap();
    let plan: Value = sqlx::query_scalar(
        "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE start('X', timestamptz '2026-01-01' + interval '995 minutes', 65536, 64,
                                                timestamptz '2026-01-01' + interval '995 minutes')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let root = &plan[0]["Plan"];
    // The definition, its 3 weights, the anchor (the index date 990), each constituent's point there and
    // its 5 points from the change (995) on: not the 4 between, where no index date lies.
    assert_eq!(root["Actual Rows"], 23, "{plan:#}");
    fn discarded(node: &Value) -> u64 {
        let own = ["Rows Removed by Filter", "Rows Removed by Index Recheck"]
            .iter()
            .filter_map(|k| node[*k].as_u64())
            .sum::<u64>();
        own + node["Plans"].as_array().map_or(0, |ps| ps.iter().map(discarded).sum())
    }
    assert_eq!(discarded(root), 0, "points read and thrown away: {plan:#}");
}

/// `lock::begin` opens the transaction and takes its locks in one round trip: the locks are held (another
/// session cannot take them) until the transaction ends, and a lock given twice is taken once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_begins_holding_its_locks_until_it_ends() {
    use sea_orm::sqlx::{self, Connection};
    use tributary_processor::lock;
    let db = tributary_testkit::TestDb::create().await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let mut other = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let mut try_lock = async |name: &str| -> bool {
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(lock::key("price", name))
            .fetch_one(&mut other)
            .await
            .unwrap()
    };
    let tx = lock::begin(&pool, "price", ["A", "B", "A"]).await.unwrap();
    assert!(!try_lock("A").await && !try_lock("B").await, "the locks are held");
    assert!(try_lock("C").await, "only those");
    tx.commit().await.unwrap();
    assert!(try_lock("A").await && try_lock("B").await, "released at commit");
}

/// A `lock::begin` dropped while it waits for a lock (a consume loop stopped mid-batch) leaves no lock
/// behind: the connection does not go back to the pool inside a transaction holding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_begin_dropped_while_waiting_for_its_lock_leaves_the_lock_free() {
    use sea_orm::sqlx::{self, Connection};
    use tributary_processor::lock;
    let db = tributary_testkit::TestDb::create().await;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(db.url()).await.unwrap();
    let mut holder = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let key = lock::key("price", "A");
    sqlx::query("SELECT pg_advisory_lock($1)").bind(key).execute(&mut holder).await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(300), lock::begin(&pool, "price", ["A"])).await;
    assert!(waiting.is_err(), "the begin waits for the held lock");
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(key).execute(&mut holder).await.unwrap();
    tributary_testkit::eventually(Duration::from_secs(10), "the lock to be free again", || async {
        let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(key)
            .fetch_one(&mut sqlx::PgConnection::connect(db.url()).await.ok()?)
            .await
            .ok()?;
        free.then_some(())
    })
    .await;
    // The pool's connections are all usable, none stuck in the abandoned transaction.
    for _ in 0..4 {
        let tx = lock::begin(&pool, "price", ["A"]).await.unwrap();
        tx.commit().await.unwrap();
    }
}

/// A `lock::begin` whose lock fails (here a lock timeout) returns the error and leaves its connection
/// usable: not inside an aborted transaction that every later begin on it would fail in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_begin_whose_lock_fails_leaves_its_connection_usable() {
    use sea_orm::sqlx::{self, Connection};
    use tributary_processor::lock;
    let db = tributary_testkit::TestDb::create().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .after_connect(|c, _| {
            Box::pin(async move { sqlx::query("SET lock_timeout = '100ms'").execute(c).await.map(|_| ()) })
        })
        .connect(db.url())
        .await
        .unwrap();
    let mut holder = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let key = lock::key("price", "A");
    sqlx::query("SELECT pg_advisory_lock($1)").bind(key).execute(&mut holder).await.unwrap();
    let failed = lock::begin(&pool, "price", ["B", "A"]).await;
    assert!(failed.is_err(), "the lock times out");
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(key).execute(&mut holder).await.unwrap();
    // The pool's one connection: the next begin on it takes the locks and commits.
    let mut tx = lock::begin(&pool, "price", ["A"]).await.expect("the connection is usable again");
    let held: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert_eq!(held, 1, "only A's lock; B's went with the failed attempt");
    tx.commit().await.unwrap();
}

/// The start-up recompute of every series (the windows changed) takes its series locks in the global
/// order, so a batch of another replica running meanwhile, which takes its locks in that order, waits
/// for it or it for the batch, but the two never deadlock. (It took them one by one in name order: with
/// two series whose names and keys sort differently, each held the lock the other waited for.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recomputing_for_new_windows_takes_its_locks_in_the_global_order() {
    use sea_orm::sqlx;
    use tributary_processor::lock;
    use tributary_processor::prices::{PriceHandler, reconcile_transforms};
    let db = tributary_testkit::TestDb::create().await;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(db.url()).await.unwrap();
    // `first` sorts first by name, `second` by lock key.
    let names: Vec<String> = (b'A'..=b'Z').map(|c| (c as char).to_string()).collect();
    let (first, second) = names
        .iter()
        .flat_map(|a| names.iter().map(move |b| (a, b)))
        .find(|(a, b)| a < b && lock::key("price", a) > lock::key("price", b))
        .expect("some two names sort differently by key");
    let old = Transforms { sma: vec![2], ema: vec![], vol: vec![] };
    assert_eq!(reconcile_transforms(&pool, &old).await.unwrap(), 0, "no series yet");
    let handler = PriceHandler::new(pool.clone(), old, 10, 1);
    for (seq, instrument) in [first, second].into_iter().enumerate() {
        handler.commit(&[crate::common::price_delivery(instrument, "2026-01-01", 10.0, seq as u64 + 1)]).await.unwrap();
    }

    // A batch holding `second` (the lower key), then asking for `first`, as a batch of both would.
    let mut batch = lock::begin(&pool, "price", [second.as_str()]).await.unwrap();
    let new = Transforms { sma: vec![3], ema: vec![], vol: vec![] };
    let reconcile = tokio::spawn({
        let pool = pool.clone();
        async move { reconcile_transforms(&pool, &new).await }
    });
    tributary_testkit::eventually(Duration::from_secs(10), "the recompute to wait for a series lock", || async {
        let waiting: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                .fetch_one(&pool)
                .await
                .ok()?;
        (waiting > 0).then_some(())
    })
    .await;
    let more = tokio::time::timeout(Duration::from_secs(5), lock::acquire(&mut batch, "price", [first.as_str()])).await;
    assert!(matches!(more, Ok(Ok(()))), "the batch gets its second lock: {more:?}");
    batch.commit().await.unwrap();
    assert_eq!(reconcile.await.unwrap().unwrap(), 2, "then the recompute runs, over both series");
    let sma: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT derived FROM price_points ORDER BY instrument").fetch_all(&pool).await.unwrap();
    assert!(sma.iter().all(|d| d.get("sma_3").is_some()), "every series has the new window: {sma:?}");
}

/// Index definitions whose constituents together overflow PostgreSQL's lock table (8 × 2,500 locks; it
/// holds `max_locks_per_transaction` × `max_connections`, 6,400 by default, with some slack) are all
/// stored, one transaction each. In one transaction they failed with "out of shared memory", a transient
/// failure retried for ever, and other transactions failed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_index_definitions_in_one_batch_are_each_stored() {
    use sea_orm::sqlx;
    use tributary_broker::events::IndexDefinition;
    use tributary_broker::{BatchHandler, Delivery};
    let db = tributary_testkit::TestDb::create().await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let batch: Vec<Delivery<(String, IndexDefinition)>> = (0..8)
        .map(|k| Delivery {
            event: (
                format!("BIG{k}"),
                IndexDefinition { base: 100.0, weights: (0..2500).map(|i| (format!("K{k}I{i}"), 1.0)).collect() },
            ),
            seq: k + 1,
            received: Ts::parse("2026-01-01").unwrap(),
        })
        .collect();
    tributary_processor::indices::IndexHandler::new(pool.clone()).handle(&batch).await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM indices").fetch_one(&pool).await.unwrap();
    assert_eq!(stored, 8);
}

/// Large index definitions stored side by side (the consumer's lanes, other processors: here three
/// handlers at once, 3 × 5,000 constituents) are stored one at a time: together they held more advisory
/// locks than PostgreSQL's lock table takes, and failed with "out of shared memory".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_index_definitions_stored_side_by_side_are_stored() {
    use tributary_broker::events::IndexDefinition;
    use tributary_broker::{BatchHandler, Delivery};
    let db = tributary_testkit::TestDb::create().await;
    let pool = sea_orm::sqlx::PgPool::connect(db.url()).await.unwrap();
    let definition = |k: u64| {
        let weights = (0..5000).map(|i| (format!("S{k}I{i}"), 1.0)).collect();
        let event = (format!("SIDE{k}"), IndexDefinition { base: 100.0, weights });
        vec![Delivery { event, seq: k + 1, received: Ts::parse("2026-01-01").unwrap() }]
    };
    let (a, b, c) = (definition(0), definition(1), definition(2));
    let handler = tributary_processor::indices::IndexHandler::new(pool.clone());
    let (ra, rb, rc) = tokio::join!(handler.handle(&a), handler.handle(&b), handler.handle(&c));
    for r in [ra, rb, rc] {
        r.unwrap();
    }
    let stored: i64 = sea_orm::sqlx::query_scalar("SELECT count(*) FROM indices").fetch_one(&pool).await.unwrap();
    assert_eq!(stored, 3);
}

/// A transaction on a pool of its own, configured as `config`.
async fn transaction_on(config: &tributary_store::DbConfig) -> tributary_store::Tx {
    let db = tributary_store::connect(config).await.unwrap();
    db.get_postgres_connection_pool().begin().await.unwrap()
}

/// A process that dies mid-transaction (here its connection is cut off silently, as when its node is
/// lost) does not hold its locks for good: PostgreSQL ends the session after
/// `database.idle_in_transaction_secs`, and the lock goes to the next one waiting. (Without a timeout
/// the session stayed until TCP gave up on the dead peer, hours by default, and every batch on its
/// series waited behind it.) A transaction that computes for long between statements (the fleet plan's)
/// says so and is not ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_process_died_releases_its_locks() {
    use sea_orm::sqlx;
    let db = tributary_testkit::TestDb::create().await;
    let (user, rest) = db.url().split_once('@').unwrap();
    let (server, database) = rest.split_once('/').unwrap();
    let proxy = tributary_testkit::TcpProxy::start(server);
    let config = tributary_store::DbConfig {
        url: format!("{user}@{}/{database}", proxy.addr()),
        max_connections: 1,
        idle_in_transaction_secs: 1,
    };
    let mut dead = transaction_on(&config).await;
    sqlx::query("SELECT pg_advisory_xact_lock(42)").execute(&mut *dead).await.unwrap();
    let port: i32 = sqlx::query_scalar("SELECT inet_client_port()").fetch_one(&mut *dead).await.unwrap();
    assert!(proxy.silence(port as u16));
    let mut computing = transaction_on(&config).await;
    tributary_store::fleet::allow_long_computation(&mut computing).await.unwrap();

    let other = sqlx::PgPool::connect(db.url()).await.unwrap();
    let started = std::time::Instant::now();
    let mut waiting = other.begin().await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '30s'").execute(&mut *waiting).await.unwrap();
    let got = sqlx::query("SELECT pg_advisory_xact_lock(42)").execute(&mut *waiting).await;
    assert!(got.is_ok(), "the lock stayed with the dead session: {got:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let alive = sqlx::query("SELECT 1").execute(&mut *computing).await;
    assert!(alive.is_ok(), "the computing transaction was ended: {alive:?}");
    // A transaction of a live process that was ended so fails as "database unreachable": the processor
    // retries its batch rather than dead-letter it (a statement's own failure).
    let mut paused = transaction_on(&tributary_store::DbConfig { url: db.url().into(), ..config }).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ended = sqlx::query("SELECT 1").execute(&mut *paused).await.unwrap_err();
    assert!(tributary_store::db::unreachable(&ended), "{ended:?}");
}
