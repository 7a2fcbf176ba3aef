//! Fleet: the stored plan is always the optimal plan of the stored drivers and shipments, whatever the
//! order and duplication of their events; the plan and score API; the exercise's CLI.

use crate::common::{spawn_app, spawn_app_with};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tributary_processor::fleet::{Fleet, compute, load};

async fn stored_fleet(app: &crate::common::TestApp) -> Fleet {
    let mut conn = app.c.db.get_postgres_connection_pool().acquire().await.unwrap();
    load(&mut conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_is_the_optimum_of_what_is_stored_whatever_the_order() {
    let mut app = spawn_app().await;
    // Random drivers and shipments, renamed, deleted, re-created and repeated, published while the
    // processor is killed and restarted; the last message per id decides.
    let mut rng = StdRng::seed_from_u64(5);
    let names = ["Alice Smith", "Bo", "Jo Ann", "Daniel Davidson", "Mark Zuckerbrg", "Everardo Welch", "Guo Ng"];
    let streets = ["44 Fake Dr., San Diego", "1 Elm Street", "9 Oak Ave, Town", "Main Street", "12B Baker St, London"];
    let mut last: BTreeMap<String, Option<String>> = BTreeMap::new();
    for k in 0..300 {
        let (role, text) = if rng.random_bool(0.5) {
            ("driver", names[rng.random_range(0..names.len())].to_owned())
        } else {
            ("shipment", format!("{} {}", rng.random_range(1..99), streets[rng.random_range(0..streets.len())]))
        };
        let subject = format!("fleet.{role}.{}", rng.random_range(0..12));
        let (payload, value) = if rng.random_bool(0.15) {
            (json!({"deleted": true}), None)
        } else if role == "driver" {
            (json!({"name": text}), Some(text))
        } else {
            (json!({"address": text}), Some(text))
        };
        app.publish_plain(&subject, &payload.to_string()).await;
        last.insert(subject, value);
        if k == 120 {
            app.kill_processors();
        }
        if k == 180 {
            app.start_processor();
            app.start_processor();
        }
    }
    app.settled().await;

    let fleet = stored_fleet(&app).await;
    let expect = |role: &str| -> Vec<(String, String)> {
        last.iter()
            .filter_map(|(s, v)| Some((s.strip_prefix(&format!("fleet.{role}."))?.to_owned(), v.clone()?)))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect()
    };
    assert_eq!(fleet.drivers, expect("driver"), "last writer wins per driver");
    assert_eq!(fleet.shipments, expect("shipment"), "last writer wins per shipment");

    let batch = compute(&fleet);
    let (s, plan) = app.get("/v1/fleet/plan").await;
    assert_eq!(s, 200, "{plan}");
    assert_eq!(plan["total_score"], json!(batch.total));
    let mut stored: Vec<(String, String, f64)> = plan["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["shipment_id"].as_str().unwrap().into(),
                a["driver_id"].as_str().unwrap().into(),
                a["score"].as_f64().unwrap(),
            )
        })
        .collect();
    stored.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = batch.assignments.clone();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(stored, want, "the stored plan is the batch computation");
    let n = fleet.drivers.len().min(fleet.shipments.len());
    assert_eq!(stored.len(), n);
    assert_eq!(plan["unassigned_shipments"].as_array().unwrap().len(), fleet.shipments.len() - n);
    assert_eq!(plan["unassigned_drivers"].as_array().unwrap().len(), fleet.drivers.len() - n);
    // Every score is the rule applied to the stored name and address.
    for a in plan["assignments"].as_array().unwrap() {
        let e = tributary_fleet::explain(a["address"].as_str().unwrap(), a["driver"].as_str().unwrap());
        assert_eq!(a["score"].as_f64(), Some(e.score), "{a}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_and_scores_api_with_deletions_and_bad_input() {
    let app = spawn_app().await;
    let (_, empty) = app.get("/v1/fleet/plan?fresh=true").await;
    assert_eq!((empty["version"].as_i64(), empty["total_score"].as_f64()), (Some(0), Some(0.0)), "{empty}");

    app.publish_plain("fleet.driver.alice", r#"{"name":"Alice Smith"}"#).await;
    app.publish_plain("fleet.driver.bo", r#"{"name":"Bo"}"#).await;
    app.publish_plain("fleet.shipment.s1", r#"{"address":"44 Fake Dr., San Diego, CA"}"#).await;
    app.publish_plain("fleet.shipment.s2", r#"{"address":"1 Elm Street"}"#).await;
    app.publish_plain("fleet.shipment.s3", r#"{"address":"9 Oak Ave, Town"}"#).await;
    let (s, plan) = app.get("/v1/fleet/plan?fresh=true").await;
    assert_eq!(s, 200, "{plan}");
    // Scores by hand: Alice Smith (11 chars, 4 vowels, 6 consonants), Bo (2, 1 vowel, 1 consonant).
    // Fake Dr. (8, even): Alice 6, Bo 1.5 × 1.5 = 2.25; Elm Street (10, even): Alice 6, Bo 2.25;
    // Oak Ave (7, odd): Alice 6, Bo 1. Best: Alice on one of the 6s with Bo on a 2.25 → 8.25.
    assert_eq!(plan["total_score"], json!(8.25), "{plan}");
    assert_eq!(plan["assignments"].as_array().unwrap().len(), 2);
    assert_eq!(plan["unassigned_shipments"].as_array().unwrap().len(), 1);
    assert_eq!(plan["unassigned_drivers"], json!([]));
    let v1 = plan["version"].as_i64().unwrap();

    let (s, e) = app.get("/v1/fleet/scores?shipment=s1&driver=bo").await;
    assert_eq!(s, 200, "{e}");
    assert_eq!(e["street"], "Fake Dr.");
    assert_eq!(
        (e["street_length"].as_u64(), e["driver_length"].as_u64(), e["gcd"].as_u64()),
        (Some(8), Some(2), Some(2))
    );
    assert_eq!((e["vowels"].as_u64(), e["consonants"].as_u64()), (Some(1), Some(1)));
    assert_eq!(
        (e["base"].as_f64(), e["common_factor"].as_bool(), e["score"].as_f64()),
        (Some(1.5), Some(true), Some(2.25))
    );
    let (s, e) = app.get("/v1/fleet/scores?shipment=s1").await;
    assert_eq!((s.as_u16(), e["error"]["field"].as_str()), (400, Some("driver")));
    let (s, e) = app.get("/v1/fleet/scores?shipment=nope&driver=bo").await;
    assert_eq!((s.as_u16(), e["error"]["code"].as_str()), (404, Some("not_found")));

    // Deleting Alice leaves Bo on his best shipment (2.25); the plan's version moves on.
    app.publish_plain("fleet.driver.alice", r#"{"deleted":true}"#).await;
    let (_, plan) = app.get("/v1/fleet/plan?fresh=true").await;
    assert_eq!(plan["total_score"], json!(2.25), "{plan}");
    assert!(plan["version"].as_i64().unwrap() > v1);
    assert_eq!(plan["assignments"][0]["driver"], "Bo");
    assert_eq!(plan["unassigned_shipments"].as_array().unwrap().len(), 2);

    // Bad fleet events are dead-lettered with their reason; the API refuses them up front.
    app.publish_plain("fleet.driver.x", r#"{"address":"1 Elm Street"}"#).await;
    app.publish_plain("fleet.truck.1", r#"{"name":"A"}"#).await;
    app.settled().await;
    let (_, dlq) = app.get("/v1/dlq?limit=10").await;
    let reasons: Vec<&str> =
        dlq["dead_letters"].as_array().unwrap().iter().filter_map(|d| d["reason"].as_str()).collect();
    assert!(reasons.iter().any(|r| r.contains("has a name, not a address")), "{dlq}");
    assert!(reasons.iter().any(|r| r.contains("unknown subject shape")), "{dlq}");
    let (s, b) = app.send(reqwest::Method::POST, "/v1/events/fleet.driver.y", r#"{"name":" "}"#).await;
    assert_eq!((s.as_u16(), b["error"]["code"].as_str()), (400, Some("invalid_event")), "{b}");
    let (s, _) = app.send(reqwest::Method::POST, "/v1/events/fleet.driver.y", r#"{"name":"Yusuf"}"#).await;
    assert_eq!(s.as_u16(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exercise_files_published_twice_change_nothing() {
    let app = spawn_app().await;
    let drivers = tributary_gatherer::fleet::parse_list("Everardo Welch\nOrval Mayert\n\nHoward Emmerich\n");
    let shipments =
        tributary_gatherer::fleet::parse_list("215 Osinski Manors\n9856 Marvin Stravenue\n7127 Kathlyn Ferry\n");
    let r = tributary_gatherer::fleet::publish_lists(app.js(), &drivers, &shipments).await;
    assert_eq!((r.stored, r.duplicates, r.failed.len()), (6, 0, 0));
    let (_, first) = app.get("/v1/fleet/plan?fresh=true").await;
    let r = tributary_gatherer::fleet::publish_lists(app.js(), &drivers, &shipments).await;
    assert_eq!((r.stored, r.duplicates), (6, 0), "a run's own idempotency keys");
    let (_, again) = app.get("/v1/fleet/plan?fresh=true").await;
    assert_eq!(first, again);
    // The same total as the CLI's computation over the same lists.
    let names: Vec<&str> = drivers.iter().map(|d| d.1.as_str()).collect();
    let addresses: Vec<&str> = shipments.iter().map(|s| s.1.as_str()).collect();
    assert_eq!(first["total_score"], json!(tributary_fleet::plan(&addresses, &names).total.value()));
    assert_eq!(first["assignments"].as_array().map(Vec::len), Some(3));
    // The driver on line 4 has id "4".
    let ids: Vec<&str> =
        first["assignments"].as_array().unwrap().iter().filter_map(|a| a["driver_id"].as_str()).collect();
    assert!(ids.contains(&"4"), "{first}");
    let _: Value = first;
}

/// A fleet past `processor.fleet_max_pairs` is not planned: the shipment that takes it past the bound is
/// dead-lettered with the sizes, the stored plan stays the optimum of what is stored, and once room is
/// made the letter replays. (Unbounded, a large fleet's scores, 8 bytes a pair, and its assignment took
/// the processor's memory and a core for as long as it lasted, on every batch.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipment_taking_the_fleet_past_its_bound_is_dead_lettered_and_replays_once_there_is_room() {
    use reqwest::Method;
    let app = spawn_app_with(|c| c.processor.fleet_max_pairs = 6).await;
    app.publish_plain("fleet.driver.alice", r#"{"name":"Alice Smith"}"#).await;
    app.publish_plain("fleet.driver.bo", r#"{"name":"Bo"}"#).await;
    for (id, address) in [("s1", "44 Fake Dr., San Diego"), ("s2", "1 Elm Street"), ("s3", "9 Oak Ave, Town")] {
        app.publish_plain(&format!("fleet.shipment.{id}"), &json!({ "address": address }).to_string()).await;
    }
    app.settled().await;
    let (_, before) = app.get("/v1/fleet/plan").await;

    app.publish_plain("fleet.shipment.s4", r#"{"address":"12B Baker St, London"}"#).await;
    app.settled().await;
    let letter = app.only_dead_letter().await;
    let reason = letter["reason"].as_str().unwrap();
    assert!(reason.contains("too large to plan: 2 drivers × 4 shipments = 8 pairs"), "{letter}");
    assert_eq!(stored_fleet(&app).await.shipments.len(), 3, "nothing of it stored");
    let (_, plan) = app.get("/v1/fleet/plan").await;
    assert_eq!(plan, before, "the plan of what is stored, as it was");

    app.publish_plain("fleet.shipment.s1", r#"{"deleted":true}"#).await;
    app.settled().await;
    let (s, b) = app.send(Method::POST, &format!("/v1/dlq/{}/replay", letter["seq"]), "").await;
    assert_eq!(s, 202, "{b}");
    app.settled().await;
    let fleet = stored_fleet(&app).await;
    let ids: Vec<&str> = fleet.shipments.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(ids, ["s2", "s3", "s4"]);
    let (_, plan) = app.get("/v1/fleet/plan").await;
    assert_eq!(plan["total_score"], json!(compute(&fleet).total), "{plan}");
}

/// `tributary fleet plan` prints the matching the API serves for the same lists, ties included. Every
/// score ties here, so the solver's order decides: the processor reads drivers by id in byte order (line
/// 10 before line 2), and the CLI, reading them in file order, paired other drivers than the stored plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_the_matching_the_api_serves_ties_included() {
    let app = spawn_app().await;
    let names = ["Ab", "Ac", "Ad", "Af", "Ag", "Ah", "Aj", "Ak", "Al", "Am", "An", "Ap"];
    let streets = ["1 Elm Street", "2 Elm Street", "3 Elm Street"];
    // And a name the processor refuses (too long): the CLI leaves it out too, saying so.
    let long = "Ab".repeat(501);
    let dir = std::env::temp_dir().join(format!("fleet-ties-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (drivers, shipments) = (dir.join("drivers.txt"), dir.join("shipments.txt"));
    std::fs::write(&drivers, [&names[..], &[long.as_str()]].concat().join("\n")).unwrap();
    std::fs::write(&shipments, streets.join("\n")).unwrap();
    let read = |p: &std::path::Path| tributary_gatherer::fleet::read_list(p).unwrap();
    let r = tributary_gatherer::fleet::publish_lists(app.js(), &read(&drivers), &read(&shipments)).await;
    assert_eq!((r.stored, r.failed.len()), (16, 0));
    let (_, plan) = app.get("/v1/fleet/plan?fresh=true").await;
    assert_eq!(app.only_dead_letter().await["subject"], "fleet.driver.13");
    let out = std::process::Command::new(crate::common::BIN)
        .args(["fleet", "plan", "--json", "--drivers"])
        .arg(&drivers)
        .arg("--shipments")
        .arg(&shipments)
        .env_remove("TRIBUTARY_CONFIG")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("drivers, line 13: name is longer than 1000 characters"), "{said}");
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pairs = |v: &Value, driver: &str| -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = v["assignments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["address"].as_str().unwrap().to_owned(), a[driver].as_str().unwrap().to_owned()))
            .collect();
        p.sort();
        p
    };
    assert_eq!(pairs(&cli, "driver"), pairs(&plan, "driver"), "CLI {cli}\nAPI {plan}");
    assert_eq!(cli["total_score"], plan["total_score"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A version that changes no name or address (the same text sent again, past the duplicate window) and
/// the deletion of an id never stored change no plan: stored for their sequence, no new plan is
/// computed. (Every newer version counted as a change, and each cost a whole new plan.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_changes_nothing_computes_no_new_plan() {
    let app = spawn_app().await;
    app.publish_plain("fleet.driver.alice", r#"{"name":"Alice Smith"}"#).await;
    app.publish_plain("fleet.shipment.s1", r#"{"address":"1 Elm Street"}"#).await;
    app.settled().await;
    let (_, before) = app.get("/v1/fleet/plan").await;
    assert_eq!(before["version"], 1, "{before}");
    app.publish_plain("fleet.driver.alice", r#"{"name":"Alice Smith"}"#).await; // no Nats-Msg-Id: stored again
    app.publish_plain("fleet.shipment.never", r#"{"deleted":true}"#).await;
    app.settled().await;
    let (_, after) = app.get("/v1/fleet/plan").await;
    assert_eq!(after, before, "the same plan, not computed again");
    app.publish_plain("fleet.driver.alice", r#"{"name":"Alice Smyth"}"#).await;
    app.settled().await;
    let (_, renamed) = app.get("/v1/fleet/plan").await;
    assert_eq!(renamed["version"], 2, "a real change plans again: {renamed}");
}

/// The refusal is the shipment's own, so it is dead-lettered even when nothing else commits. A processor
/// that had stored no fleet batch since it started (the fleet stored before, as after a restart) took the
/// failure for the system's: it kept the shipment and retried it for ever, the consumer reported failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipment_past_the_bound_is_dead_lettered_by_a_processor_that_stored_nothing_yet() {
    let app = spawn_app_with(|c| c.processor.fleet_max_pairs = 6).await;
    stored_before(&app, &[("s1", "1 Elm Street"), ("s2", "9 Oak Ave, Town"), ("s3", "Main Street")]).await;
    app.publish_plain("fleet.shipment.s4", r#"{"address":"12B Baker St, London"}"#).await;
    let fleet = refused_for_size(&app, "2 drivers × 4 shipments = 8 pairs").await;
    assert_eq!(fleet.shipments.len(), 3);
}

/// Stores drivers `alice` and `bo` and `shipments` (id, address) directly, as an earlier processor (or one
/// under another bound) would have, at sequence 0.
async fn stored_before(app: &crate::common::TestApp, shipments: &[(&str, &str)]) {
    let pool = app.c.db.get_postgres_connection_pool();
    sea_orm::sqlx::query(
        "INSERT INTO fleet_drivers (id, name, seq) VALUES ('alice', 'Alice Smith', 0), ('bo', 'Bo', 0)",
    )
    .execute(pool)
    .await
    .unwrap();
    for (id, address) in shipments {
        sea_orm::sqlx::query("INSERT INTO fleet_shipments (id, address, seq) VALUES ($1, $2, 0)")
            .bind(id)
            .bind(address)
            .execute(pool)
            .await
            .unwrap();
    }
}

/// Once what was published settled: the fleet as stored, after asserting that one message, the only dead
/// letter, was refused for a size the reason `names`.
async fn refused_for_size(app: &crate::common::TestApp, names: &str) -> Fleet {
    app.settled().await;
    let letter = app.only_dead_letter().await;
    assert!(letter["reason"].as_str().unwrap().contains(names), "{letter}");
    stored_fleet(app).await
}

/// A side with nothing counts as one: drivers without a shipment are bounded too. (Any number was taken,
/// and every batch loaded and planned them all.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_without_shipments_are_bounded_too() {
    let app = spawn_app_with(|c| c.processor.fleet_max_pairs = 6).await;
    for d in 0..7 {
        app.publish_plain(&format!("fleet.driver.d{d}"), &json!({ "name": format!("Driver {d}") }).to_string()).await;
    }
    let fleet = refused_for_size(&app, "7 drivers × 0 shipments = 7 pairs").await;
    assert_eq!(fleet.drivers.len(), 6);
}

/// The fleet's queries read the live drivers and shipments, not the tombstones every deletion leaves for
/// good (the simulator deletes one and adds one every two seconds): through the primary key, counting and
/// loading the live ones read every tombstone, on every fleet batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_queries_read_the_live_rows_not_the_tombstones() {
    use sea_orm::sqlx::{self, Connection};
    use tributary_store::fleet::{LIVE_COUNTS, LIVE_DRIVERS, LIVE_SHIPMENTS};
    let db = tributary_testkit::TestDb::create().await;
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO fleet_drivers (id, name, seq) SELECT 'gone-' || i, NULL, i FROM generate_series(1, 100000) i;
         INSERT INTO fleet_drivers (id, name, seq) VALUES ('a', 'Alice Smith', 1), ('b', 'Bo', 1);
         INSERT INTO fleet_shipments (id, address, seq) SELECT 'gone-' || i, NULL, i FROM generate_series(1, 100000) i;
         INSERT INTO fleet_shipments (id, address, seq) VALUES ('s', 'Main Street', 1);
         ANALYZE fleet_drivers; ANALYZE fleet_shipments",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    /// Rows a plan node and those under it read and threw away, and whether any reads a whole table.
    fn waste(node: &Value) -> (u64, bool) {
        let own = ["Rows Removed by Filter", "Rows Removed by Index Recheck"].iter().filter_map(|k| node[*k].as_u64());
        let mut w = (own.sum::<u64>(), node["Node Type"] == "Seq Scan");
        for child in node["Plans"].as_array().into_iter().flatten() {
            let (r, s) = waste(child);
            w = (w.0 + r, w.1 || s);
        }
        w
    }
    for sql in [LIVE_COUNTS, LIVE_DRIVERS, LIVE_SHIPMENTS] {
        let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}");
        let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(explain)).fetch_one(&mut conn).await.unwrap();
        assert_eq!(waste(&plan[0]["Plan"]), (0, false), "{sql}: {plan:#}");
    }
}

/// A fleet already past the bound (stored under a larger one) still takes its changes and deletions; no
/// plan is served while it is past, and the plan is back once the deletions bring it within. (The bound
/// refused every change of such a fleet, the deletions that would make room too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_already_past_its_bound_still_takes_deletions() {
    let app = spawn_app_with(|c| c.processor.fleet_max_pairs = 6).await;
    // As a larger bound stored it: 2 drivers × 4 shipments.
    let shipments = [("s1", "1 Elm Street"), ("s2", "9 Oak Ave, Town"), ("s3", "Main Street")];
    stored_before(&app, &[&shipments[..], &[("s4", "12B Baker St, London")]].concat()).await;
    app.publish_plain("fleet.shipment.s4", r#"{"address":"44 Fake Dr., San Diego"}"#).await;
    app.settled().await;
    assert_eq!(stored_fleet(&app).await.shipments[3].1, "44 Fake Dr., San Diego", "the change is stored");
    let (_, plan) = app.get("/v1/fleet/plan").await;
    assert_eq!(plan["version"], 0, "no plan past the bound: {plan}");

    app.publish_plain("fleet.shipment.s1", r#"{"deleted":true}"#).await;
    app.settled().await;
    let fleet = stored_fleet(&app).await;
    assert_eq!(fleet.shipments.len(), 3);
    let (_, plan) = app.get("/v1/fleet/plan").await;
    assert_eq!((plan["version"].as_i64(), &plan["total_score"]), (Some(1), &json!(compute(&fleet).total)), "{plan}");
}
