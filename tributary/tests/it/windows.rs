//! New derived windows: the start-up recompute of every series ([`reconcile_transforms`]), against the
//! batch computation.

use crate::common::price_delivery;
use sea_orm::sqlx::{self, PgPool};
use serde_json::Value;
use tributary_processor::prices::reconcile_transforms;
use tributary_processor::prices::series::{Point, Transforms, recompute};

/// Stores `n` series `S<i>` of 3 points each, with derived values of other windows.
async fn seed_short(pool: &PgPool, n: i64) {
    sqlx::query(
        "INSERT INTO price_points (instrument, ts, price, seq, derived)
         SELECT 'S' || i, '2026-01-01'::timestamptz + d * interval '1 day', 1 + (i * 7 + d * 3) % 11, i * 3 + d + 1,
                '{\"sma_2\": 0}'
           FROM generate_series(0, $1 - 1) i, generate_series(0, 2) d",
    )
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO price_series (instrument, points, first_ts, last_ts)
         SELECT 'S' || i, 3, '2026-01-01', '2026-01-03' FROM generate_series(0, $1 - 1) i",
    )
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

/// A fresh database whose derived values are recorded as of the windows returned (`sma_2`), holding `n`
/// series of 3 points ([`seed_short`]).
async fn with_series(n: i64) -> (tributary_testkit::TestDb, PgPool, Transforms) {
    let db = tributary_testkit::TestDb::create().await;
    let pool = PgPool::connect(db.url()).await.unwrap();
    let old = Transforms { sma: vec![2], ema: vec![], vol: vec![] };
    reconcile_transforms(&pool, &old).await.unwrap();
    seed_short(&pool, n).await;
    (db, pool, old)
}

/// Makes the recompute under way look abandoned: its last part an hour ago, longer than a processor with
/// other windows waits before it starts over (`TAKEOVER_AFTER`).
async fn abandon(pool: &PgPool) {
    sqlx::query(
        "UPDATE settings SET value = jsonb_set(value, '{at}', to_jsonb((now() - interval '1 hour')::text))
          WHERE key = 'price_transforms_progress'",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// Every stored series, recomputed from its prices as a batch would, equals what is stored, bit for bit.
async fn assert_batch_equal(pool: &PgPool, t: &Transforms) {
    let rows: Vec<(String, f64, Option<f64>, Value)> =
        sqlx::query_as("SELECT instrument, price, ret, derived FROM price_points ORDER BY instrument, ts")
            .fetch_all(pool)
            .await
            .unwrap();
    let names = t.names();
    let bits = |v: Option<f64>| v.map(f64::to_bits);
    for series in rows.chunk_by(|a, b| a.0 == b.0) {
        let mut points: Vec<Point> = series.iter().map(|r| Point::raw(r.1)).collect();
        recompute(t, &mut points, 0);
        for (k, ((instrument, _, ret, derived), want)) in series.iter().zip(&points).enumerate() {
            let values: Vec<Option<f64>> = names.iter().map(|n| derived.get(n).and_then(Value::as_f64)).collect();
            assert_eq!(bits(*ret), bits(want.ret), "{instrument} point {k}: ret");
            assert_eq!(
                values.iter().map(|v| bits(*v)).collect::<Vec<_>>(),
                want.values.iter().map(|v| bits(*v)).collect::<Vec<_>>(),
                "{instrument} point {k}: {derived}"
            );
            assert_eq!(derived.as_object().map(|o| o.len()), Some(names.len()), "{instrument}: only the new windows");
        }
    }
}

/// New windows recompute every series exactly as the batch computation would: 20,000 series (more than
/// one transaction can lock: PostgreSQL's lock table holds `max_locks_per_transaction` ×
/// `max_connections` locks for all sessions together) and one of 70,000 points (longer than one chunk
/// reads). As one transaction locking every series it failed with "out of shared memory", and so did
/// the processor's every start; it also read each series whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_windows_recompute_every_series_in_parts_as_the_batch_computation_would() {
    let db = tributary_testkit::TestDb::create().await;
    let pool = PgPool::connect(db.url()).await.unwrap();
    let old = Transforms { sma: vec![2], ema: vec![], vol: vec![] };
    assert_eq!(reconcile_transforms(&pool, &old).await.unwrap(), 0, "no series yet");
    seed_short(&pool, 20_000).await;
    sqlx::raw_sql(
        "INSERT INTO price_points (instrument, ts, price, seq, derived)
         SELECT 'LONG', '2000-01-01'::timestamptz + d * interval '1 hour', 100 + (d % 97) * 0.37 - (d % 13), d + 1, '{}'
           FROM generate_series(0, 69999) d;
         INSERT INTO price_series (instrument, points, first_ts, last_ts)
         SELECT 'LONG', count(*), min(ts), max(ts) FROM price_points WHERE instrument = 'LONG'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM price_series ORDER BY instrument").fetch_all(&pool).await.unwrap();

    let new = Transforms { sma: vec![3, 200], ema: vec![5], vol: vec![4] };
    assert_eq!(reconcile_transforms(&pool, &new).await.unwrap(), 20_001);
    assert_batch_equal(&pool, &new).await;
    let bumped: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM price_series ORDER BY instrument").fetch_all(&pool).await.unwrap();
    assert!(
        versions.iter().zip(&bumped).all(|(before, after)| after > before),
        "every series' version moved, so no cached tail of the old values is trusted"
    );
    assert_eq!(reconcile_transforms(&pool, &new).await.unwrap(), 0, "done once");
}

/// A recompute stopped half-way resumes after the last series it finished (in the table's order), and
/// only for the same windows: one for other windows under way is refused, and one abandoned is started
/// over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recompute_for_new_windows_resumes_where_it_stopped() {
    let (_db, pool, _) = with_series(5).await; // S0 … S4
    let new = Transforms { sma: vec![3], ema: vec![], vol: vec![] };
    let progress = |windows: &Transforms, through: &str| {
        let (pool, names, through) = (pool.clone(), Value::from(windows.names()), through.to_owned());
        async move {
            let mut tx = pool.begin().await.unwrap();
            tributary_store::prices::store_progress(&mut tx, &names, &through).await.unwrap();
            tx.commit().await.unwrap();
        }
    };

    progress(&new, "S2").await;
    assert_eq!(reconcile_transforms(&pool, &new).await.unwrap(), 2, "S3 and S4");
    let recomputed: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT instrument FROM price_points WHERE derived ? 'sma_3' ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(recomputed, ["S3", "S4"]);

    // A recompute for other windows under way: refused, naming both, rather than undo each other's parts
    // for ever (two processors configured differently).
    let newer = Transforms { sma: vec![4], ema: vec![], vol: vec![] };
    progress(&new, "S3").await;
    let e = reconcile_transforms(&pool, &newer).await.unwrap_err().to_string();
    assert!(e.contains(r#"["sma_3"]"#) && e.contains(r#"["sma_4"]"#), "{e}");
    // Abandoned (its last part longer ago than a takeover waits): started over, every series.
    abandon(&pool).await;
    assert_eq!(
        reconcile_transforms(&pool, &newer).await.unwrap(),
        5,
        "the abandoned one's progress counts for nothing"
    );
    assert_batch_equal(&pool, &newer).await;
}

/// A recompute for new windows that stopped half-way, followed by a start with the old windows again (a
/// rollback), recomputes every series for the old ones: half of them held values of the new windows. (The
/// old windows were still recorded until the last part committed, so the rollback found them and
/// recomputed nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_after_a_recompute_stopped_half_way_recomputes_every_series() {
    let (_db, pool, old) = with_series(600).await; // two parts: S99 sorts last, in the second
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN IF NEW.instrument = 'S99' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER refuse BEFORE UPDATE ON price_points FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let new = Transforms { sma: vec![3], ema: vec![4], vol: vec![] };
    assert!(reconcile_transforms(&pool, &new).await.is_err(), "the second part fails");
    sqlx::raw_sql("DROP TRIGGER refuse ON price_points").execute(&pool).await.unwrap();

    // At once, the old windows are refused (a recompute for others is under way); once it is abandoned:
    assert!(reconcile_transforms(&pool, &old).await.is_err());
    abandon(&pool).await;
    assert_eq!(reconcile_transforms(&pool, &old).await.unwrap(), 600, "every series, for the old windows");
    assert_batch_equal(&pool, &old).await;
}

/// A processor left on the old windows while another recomputes every series for new ones (a rolling
/// update that changed them) commits nothing once the first part of that recompute has: its batches are
/// refused as a lasting failure (redelivered, never dead-lettered), and every stored value stays the batch
/// computation with the new windows. Before, it went on writing its old windows' values beside the new
/// ones, and later windows read them as their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_left_on_the_old_windows_commits_nothing_once_they_changed() {
    use tributary_broker::BatchHandler;
    use tributary_processor::prices::{CommitError, PriceHandler};
    let (_db, pool, old) = with_series(3).await;
    let stale = PriceHandler::new(pool.clone(), old, 10, 1);
    let point = |day: u32, price: f64, seq: u64| price_delivery("S1", &format!("2026-01-0{day}"), price, seq);
    stale.commit(&[point(4, 5.0, 100)]).await.unwrap(); // the windows in force: stored

    // A recompute for new windows under way (none of its series done yet): refused already.
    let new = Transforms { sma: vec![3], ema: vec![2], vol: vec![] };
    let mut tx = pool.begin().await.unwrap();
    tributary_store::prices::store_progress(&mut tx, &Value::from(new.names()), "").await.unwrap();
    tx.commit().await.unwrap();
    let refused = stale.commit(&[point(5, 6.0, 101)]).await.unwrap_err();
    assert!(matches!(&refused, CommitError::WindowsChanged(e) if e.ours == serde_json::json!(["sma_2"])), "{refused}");

    // Done: refused, as transient, naming both.
    assert_eq!(reconcile_transforms(&pool, &new).await.unwrap(), 3);
    let failed = stale.handle(&[point(5, 6.0, 101)]).await.unwrap_err();
    use tributary_processor::failure::{lasting, transient};
    assert!(lasting(&failed) && !transient(&failed), "{failed:#}");
    let said = format!("{failed:#}");
    assert!(said.contains(r#"["sma_3","ema_2"]"#) && said.contains(r#"["sma_2"]"#), "{said}");
    assert_batch_equal(&pool, &new).await;

    // A processor on the new windows takes the same batch.
    PriceHandler::new(pool.clone(), new.clone(), 10, 1).commit(&[point(5, 6.0, 101)]).await.unwrap();
    assert_batch_equal(&pool, &new).await;
    let points: i64 =
        sqlx::query_scalar("SELECT count(*) FROM price_points WHERE instrument = 'S1'").fetch_one(&pool).await.unwrap();
    assert_eq!(points, 5, "3 seeded, day 4 from the old processor, day 5 from the new one");
}

/// A batch that would create a series while a part of a recompute for new windows runs waits for that
/// part, and is then refused. Before, it committed beside the part: the part had listed its series when
/// it began, so the new series kept the old windows' values for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_beside_a_recompute_part_waits_for_it_and_is_refused() {
    use tributary_processor::lock;
    use tributary_processor::prices::{CommitError, PriceHandler};
    let (_db, pool, old) = with_series(3).await;
    let stale = PriceHandler::new(pool.clone(), old, 10, 1);
    let new = Transforms { sma: vec![3], ema: vec![], vol: vec![] };
    // A part under way: the windows' lock held, its series listed, nothing committed yet.
    let mut part = lock::begin(&pool, lock::WINDOWS.0, [lock::WINDOWS.1]).await.unwrap();
    let batch = tokio::spawn(async move { stale.commit(&[price_delivery("NEW", "2026-01-01", 1.0, 1)]).await });
    crate::common::until_an_advisory_lock_waits(&pool).await;
    assert!(!batch.is_finished(), "the batch waits for the part");
    tributary_store::prices::store_progress(&mut part, &Value::from(new.names()), "S2").await.unwrap();
    part.commit().await.unwrap();
    let refused = batch.await.unwrap().unwrap_err();
    assert!(matches!(refused, CommitError::WindowsChanged(_)), "{refused}");
    let created: i64 = sqlx::query_scalar("SELECT count(*) FROM price_series WHERE instrument = 'NEW'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(created, 0);
}

/// Publishes a price of each of twelve instruments `<prefix>0` … `<prefix>11` on day `day` of month `month`
/// of 2026.
async fn twelve_prices(app: &crate::common::TestApp, prefix: &str, month: u32, day: u32) {
    for i in 0..12 {
        let price = 10.0 + f64::from((i * 7 + day * 3) % 11);
        let (subject, ts) = (format!("price.{prefix}{i}"), format!("2026-{month:02}-{day:02}"));
        app.publish_plain(&subject, &format!(r#"{{"ts":"{ts}","price":{price}}}"#)).await;
    }
}

/// A rolling update that changes the windows, in an elastic group: the processor left on the old windows
/// stands aside from prices once a batch of it is refused (its group record says `aside`), the one with
/// the new windows takes every price partition, and every value is the batch computation with the new
/// windows. Rolled back (the new one stopped, one with the old windows started, which recomputes every
/// series back), the first takes prices again. Before, it kept its price partitions and retried their
/// batches for ever, and no other processor consumed them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_left_on_the_old_windows_stands_aside_from_prices_until_they_are_back() {
    use crate::common::{exit_code, sigterm, spawn_services, tributary};
    use crate::elastic::members;
    use crate::faults::{env_of, refs};
    use std::time::Duration;
    use tributary_broker::group::Member;
    use tributary_testkit::{NatsServer, eventually};
    let nats = NatsServer::start();
    let app = spawn_services(nats.url(), Some(nats), |c| c.processor.partitions = 2).await;
    let pool = app.c.db.get_postgres_connection_pool().clone();
    let old = app.c.config.processor.prices.clone();
    let new = Transforms { sma: vec![3], ..old.clone() };
    let processor = |sma: Option<&str>| {
        let mut env =
            env_of(&app, &[("TRIBUTARY_PROCESSOR__PARTITIONS", "2"), ("TRIBUTARY_PROCESSOR__TAKEOVER_SECS", "1")]);
        env.extend(sma.map(|s| ("TRIBUTARY_PROCESSOR__PRICES__SMA".to_owned(), s.to_owned())));
        tributary(&["processor"], &refs(&env))
    };
    let prices = |day: u32| twelve_prices(&app, "W", 3, day);
    let price_partitions = |m: &Member| m.owns.iter().filter(|d| d.contains("-price-")).count();

    let stale = processor(None);
    let pid = stale.id();
    eventually(Duration::from_secs(60), "the first processor owning the four partitions", || async {
        members(&app).await.filter(|m| m.len() == 1 && m[0].owns.len() == 4).map(|_| ())
    })
    .await;
    prices(1).await;
    app.settled().await;

    // A second processor with new windows: it recomputes every series for them at its start.
    let mut newer = processor(Some("[3]"));
    let newer_pid = newer.id();
    // It joins the group once its recompute is done; then the first one's next price batch is refused.
    eventually(Duration::from_secs(60), "the second processor in the group", || async {
        members(&app).await.filter(|m| m.iter().any(|m| m.pid == newer_pid)).map(|_| ())
    })
    .await;
    prices(2).await;
    eventually(
        Duration::from_secs(60),
        "the first standing aside, the second owning both price partitions",
        || async {
            let m = members(&app).await?;
            let first = m.iter().find(|m| m.pid == pid)?;
            let second = m.iter().find(|m| m.pid == newer_pid)?;
            (first.aside == ["price"] && price_partitions(first) == 0 && price_partitions(second) == 2).then_some(())
        },
    )
    .await;
    for day in 3..=4 {
        prices(day).await;
    }
    app.settled().await;
    assert_batch_equal(&pool, &new).await;

    // Rolled back: the new one stops, one with the old windows starts (and recomputes every series back).
    sigterm(&newer);
    assert_eq!(exit_code(&mut newer, Duration::from_secs(30)).await, Some(0));
    let back = processor(None);
    let back_pid = back.id();
    eventually(Duration::from_secs(60), "the third processor in the group", || async {
        members(&app).await.filter(|m| m.iter().any(|m| m.pid == back_pid)).map(|_| ())
    })
    .await;
    prices(5).await;
    eventually(Duration::from_secs(60), "the first taking prices again", || async {
        let m = members(&app).await?;
        let first = m.iter().find(|m| m.pid == pid)?;
        (m.len() == 2 && first.aside.is_empty() && price_partitions(first) == 1).then_some(())
    })
    .await;
    for day in 6..=7 {
        prices(day).await;
    }
    app.settled().await;
    assert_batch_equal(&pool, &old).await;
    drop((stale, back));
}

/// The same without partitions (one price consumer every processor pulls from): the processor left on
/// the old windows stops pulling prices once a batch of it is refused, so every later price is delivered
/// once (but for this machine's own redeliveries), to the processor with the windows in force. Before, it went on pulling prices and failing them,
/// each one then redelivered after a backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_partitions_the_processor_left_on_the_old_windows_stops_pulling_prices() {
    use crate::common::{spawn_services, tributary, tributary_captured};
    use crate::faults::{env_of, refs};
    use std::time::Duration;
    use tributary_testkit::{NatsServer, eventually};
    let nats = NatsServer::start();
    let app = spawn_services(nats.url(), Some(nats), |_| {}).await;
    let pool = app.c.db.get_postgres_connection_pool().clone();
    let new = Transforms { sma: vec![3], ..app.c.config.processor.prices.clone() };
    let prices = |day: u32| twelve_prices(&app, "U", 4, day);
    let deliveries = || async {
        let stream = app.c.js.get_stream(tributary_broker::Kind::Price.stream()).await.unwrap();
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer("processor-price").await.unwrap();
        consumer.info().await.unwrap().delivered.consumer_sequence
    };
    let env = env_of(&app, &[]);
    let stale = tributary_captured(&["processor"], &refs(&env));
    prices(1).await;
    app.settled().await;
    let mut env_new = env.clone();
    env_new.push(("TRIBUTARY_PROCESSOR__PRICES__SMA".into(), "[3]".into()));
    let newer = tributary(&["processor"], &refs(&env_new));
    let windows = new.names();
    eventually(Duration::from_secs(60), "the new windows in force", || async {
        let stored: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT value FROM settings WHERE key = 'price_transforms'")
                .fetch_optional(&pool)
                .await
                .ok()?;
        (stored? == serde_json::json!(windows)).then_some(())
    })
    .await;
    // Until the first one has a batch refused, it pulls prices as before: a day of prices each try,
    // until it says it stands aside.
    let mut day = 2;
    eventually(Duration::from_secs(60), "the first processor standing aside", || {
        day = day % 27 + 2; // 3 ..= 28, again and again
        let (prices, stale) = (&prices, &stale);
        async move {
            let aside = stale.stderr_so_far().contains("standing aside from prices");
            if !aside {
                prices(day).await;
            }
            aside.then_some(())
        }
    })
    .await;
    app.settled().await;
    let before = deliveries().await;
    for day in 20..=22 {
        prices(day).await;
    }
    app.settled().await;
    // Once each, but for a redelivery of this machine's own (an ack_wait passed under load): on the old
    // code, half went to the first processor, failed and came again (72 deliveries in one run).
    let delivered = deliveries().await - before;
    assert!((36..45).contains(&delivered), "{delivered} deliveries of 36 prices");
    assert_batch_equal(&pool, &new).await;
    drop((stale, newer));
}
