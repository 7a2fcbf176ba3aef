//! One series' failure or cost is never every series' problem: a price whose write always fails is
//! dead-lettered as `processing_failed` while every other series commits, and replays once the cause is
//! fixed; a correction deep in a long series rewrites only what it changes.

use crate::common::spawn_app;
use reqwest::Method;
use sea_orm::sqlx;
use std::time::Duration;
use tributary_testkit::eventually;

/// A trigger that raises for one instrument stands in for any failure that is the message's own (a
/// constraint, a value the schema refuses, a bug): the message is isolated from its batches and
/// dead-lettered with the database's error, the other instruments (published before, beside and after
/// it) commit, and a replay after the trigger is dropped stores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_whose_write_always_fails_is_dead_lettered_and_replays_once_fixed() {
    let app = spawn_app().await;
    let pool = app.c.db.get_postgres_connection_pool();
    refuse(pool, "price_points", "instrument", "POISON", "refusing").await;
    let day = |d: u64| 1_767_225_600_000u64 + d * 86_400_000;
    for d in 0..10 {
        for i in 0..5 {
            app.publish_plain(&format!("price.S{i}"), &format!(r#"{{"ts":{},"price":{}}}"#, day(d), 10 + d + i)).await;
        }
        if d == 3 {
            app.publish_plain("price.POISON", &format!(r#"{{"ts":{},"price":7}}"#, day(d))).await;
        }
    }
    app.settled().await;
    for i in 0..5 {
        let (s, body) = app.get(&format!("/v1/series/price/S{i}?limit=100")).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["points"].as_array().unwrap().len(), 10, "S{i}: {body}");
    }
    let letter = app.only_dead_letter().await;
    assert_eq!(letter["subject"], "price.POISON");
    assert_eq!(letter["class"], "processing_failed");
    assert!(letter["reason"].as_str().unwrap().contains("refusing POISON (test trigger)"), "{letter}");
    let metrics = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("tributary_dead_letters_total")
            && l.contains(r#"class="processing_failed""#)
            && !l.ends_with(" 0")),
        "{metrics}"
    );

    // Fixed: the replay stores it.
    sqlx::query("DROP TRIGGER refuse ON price_points").execute(pool).await.unwrap();
    let (s, body) = app.send(Method::POST, &format!("/v1/dlq/{}/replay", letter["seq"]), "").await;
    assert!(s.is_success(), "{body}");
    let points = |body: &serde_json::Value| body["points"].as_array().map_or(0, Vec::len);
    let replayed = "the replayed price to be stored";
    app.get_until("/v1/series/price/POISON", Duration::from_secs(30), replayed, |b| points(b) == 1).await;
}

/// A failure of every write that the schema, the grants or the server's role cause (a revoked grant, a
/// database that became a read-only standby) is no message's: on a quiet stream after earlier commits, a
/// price that fails is kept, the consumer reports failing meanwhile, and it commits once the cause is
/// gone. (Failing alone after earlier commits with nothing else failing, it was dead-lettered as a poison
/// message; read-only, it was retried with the consumer reported healthy.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_failing_for_a_revoked_grant_or_a_read_only_server_is_kept() {
    let app = spawn_app().await;
    let pool = app.c.db.get_postgres_connection_pool();
    app.publish_plain("price.BEFORE", r#"{"ts":"2026-01-01","price":1}"#).await;
    app.settled().await;
    let causes = [("insufficient_privilege", "permission denied"), ("read_only_sql_transaction", "read-only")];
    for (stored, (condition, says)) in (2..).zip(causes) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE FUNCTION refuse_all() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION '{says} (test trigger)' USING ERRCODE = '{condition}'; END $$;
             CREATE TRIGGER refuse_all BEFORE INSERT OR UPDATE ON price_points FOR EACH ROW EXECUTE FUNCTION refuse_all();"
        )))
        .execute(pool)
        .await
        .unwrap();
        app.publish_plain(&format!("price.{condition}"), r#"{"ts":"2026-01-01","price":2}"#).await;
        let (_, ready) = eventually(Duration::from_secs(30), "/readyz to name the failing consumer", || async {
            Some(app.get("/readyz").await)
                .filter(|(s, b)| *s == 503 && b["failing_consumers"].to_string().contains("price"))
        })
        .await;
        assert!(ready["failing_consumers"].to_string().contains(says), "{condition}: {ready}");
        let (_, dlq) = app.get("/v1/dlq?limit=10").await;
        assert_eq!(dlq["dead_letters"], serde_json::json!([]), "{condition}: nothing dead-lettered: {dlq}");

        sqlx::raw_sql("DROP TRIGGER refuse_all ON price_points; DROP FUNCTION refuse_all()")
            .execute(pool)
            .await
            .unwrap();
        app.settled().await;
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM price_points").fetch_one(pool).await.unwrap();
        assert_eq!(count, stored, "{condition}: kept, and stored once the cause is gone");
    }
    let (_, dlq) = app.get("/v1/dlq?limit=10").await;
    assert_eq!(dlq["dead_letters"], serde_json::json!([]), "{dlq}");
}

/// A correction of the first point of a long series rewrites the points up to where its effect dies
/// out (the longest window plus the EMAs' convergence), not the whole history after it, and leaves
/// every stored value equal to the batch computation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_deep_in_a_long_series_rewrites_only_what_it_changes() {
    use tributary_processor::prices::series::{Point, recompute};
    let app = spawn_app().await;
    let pool = app.c.db.get_postgres_connection_pool();
    let n = 20_000usize;
    let prices: Vec<f64> = (0..n).map(|i| 100.0 + ((i * 37) % 23) as f64 * 0.37 + (i % 1000) as f64 * 0.01).collect();
    let ts = |i: usize| 1_767_225_600_000u64 + i as u64 * 60_000;
    // The history, through the pipeline.
    let lines: String = prices.iter().enumerate().map(|(i, p)| format!("DEEP,{},{p}\n", ts(i))).collect();
    let (s, body) = app.send(Method::POST, "/v1/uploads?kind=prices-csv", &lines).await;
    assert!(s.is_success(), "{body}");
    eventually(Duration::from_secs(120), "the history to be stored", || async {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM price_points WHERE instrument = 'DEEP'")
            .fetch_one(pool)
            .await
            .unwrap();
        (stored == n as i64).then_some(())
    })
    .await;
    app.settled().await;
    // The transaction that last wrote each point.
    let writers = || async {
        let sql = "SELECT xmin::text::int8 FROM price_points WHERE instrument = 'DEEP' ORDER BY ts";
        sqlx::query_scalar::<_, i64>(sql).fetch_all(pool).await.unwrap()
    };
    let before = writers().await;
    // The correction of the first point.
    app.publish_plain("price.DEEP", &format!(r#"{{"ts":{},"price":{}}}"#, ts(0), prices[0] * 1.05)).await;
    app.settled().await;
    let after = writers().await;
    let rewritten = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    assert!((1..2_000).contains(&rewritten), "{rewritten} of {n} points rewritten");
    // Every value equals the batch computation over the corrected prices.
    let t = app.c.config.processor.prices.clone();
    let names = t.names();
    let mut want: Vec<Point> = prices.iter().map(|&p| Point::raw(p)).collect();
    want[0].price = prices[0] * 1.05;
    recompute(&t, &mut want, 0);
    let rows: Vec<(f64, Option<f64>, serde_json::Value)> =
        sqlx::query_as("SELECT price, ret, derived FROM price_points WHERE instrument = 'DEEP' ORDER BY ts")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), n);
    for (k, (r, w)) in rows.iter().zip(&want).enumerate() {
        assert_eq!((r.0, r.1), (w.price, w.ret), "point {k}");
        for (name, v) in names.iter().zip(&w.values) {
            assert_eq!(r.2[name].as_f64(), *v, "{name} at point {k}");
        }
    }
}

/// A message whose own work runs the server out of memory or lock table on every try (`53200`: an index
/// over thousands of constituents on a small server) is dead-lettered while the others commit. It was
/// retried as transient: its batch-mates sent back with it and the consumer paused, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_whose_write_always_runs_out_of_memory_is_dead_lettered() {
    let app = spawn_app().await;
    let pool = app.c.db.get_postgres_connection_pool();
    refuse_as(pool, "price_points", "instrument", "SLOWPOKE", "out of shared memory for", "out_of_memory").await;
    for d in 1..=5 {
        app.publish_plain("price.OK", &format!(r#"{{"ts":"2026-01-{d:02}","price":{d}}}"#)).await;
        if d == 2 {
            app.publish_plain("price.SLOWPOKE", r#"{"ts":"2026-01-02","price":1}"#).await;
        }
    }
    app.settled().await;
    let (_, ok) = app.get("/v1/series/price/OK").await;
    assert_eq!(ok["points"].as_array().unwrap().len(), 5, "{ok}");
    let letter = app.only_dead_letter().await;
    assert_eq!(
        (letter["subject"].as_str(), letter["class"].as_str()),
        (Some("price.SLOWPOKE"), Some("processing_failed"))
    );
    assert!(letter["reason"].as_str().unwrap().contains("out of shared memory for SLOWPOKE"), "{letter}");
}

/// The isolation is the consume loop's, so every kind has it: a port whose write always fails is
/// dead-lettered as `processing_failed` while the ports around it are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_whose_write_always_fails_is_dead_lettered_and_the_others_stored() {
    let app = spawn_app().await;
    let pool = app.c.db.get_postgres_connection_pool();
    refuse(pool, "ports", "unlocode", "XXBAD", "refusing port").await;
    for code in ["AAAAA", "BBBBB", "XXBAD", "CCCCC", "DDDDD"] {
        app.publish_plain(&format!("port.{code}"), &format!(r#"{{"name":"{code}","coordinates":[1,2]}}"#)).await;
    }
    app.settled().await;
    let (_, b) = app.get("/v1/ports?limit=10").await;
    assert_eq!(b["total"], 4, "{b}");
    let letter = app.only_dead_letter().await;
    assert_eq!(letter["subject"], "port.XXBAD");
    assert_eq!(letter["class"], "processing_failed");
    assert!(letter["reason"].as_str().unwrap().contains("refusing port XXBAD"), "{letter}");
}

/// A trigger on `table` that refuses every write of the row whose `column` is `value`, raising
/// `<message> <value> (test trigger)`: a failure that is the message's own, as a constraint or a bug is.
async fn refuse(pool: &sqlx::PgPool, table: &str, column: &str, value: &str, message: &str) {
    refuse_as(pool, table, column, value, message, "raise_exception").await
}

/// [`refuse`], raising the SQLSTATE condition `condition` (e.g. `out_of_memory`, 53200).
async fn refuse_as(pool: &sqlx::PgPool, table: &str, column: &str, value: &str, message: &str, condition: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.{column} = '{value}' THEN
             RAISE EXCEPTION '{message} % (test trigger)', NEW.{column} USING ERRCODE = '{condition}';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION refuse_{table}();"
    )))
    .execute(pool)
    .await
    .unwrap();
}
