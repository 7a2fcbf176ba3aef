//! Ports: the real ports file streamed in twice, the read API, and bad files.

use crate::common::spawn_app;
use sea_orm::sqlx;
use serde_json::{Value, json};
use tributary_gatherer::ports::import;

const PORTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/ports.json");

type Snapshot = Vec<(String, String, Option<String>, Option<String>, Option<f64>, Option<f64>, Vec<String>)>;

async fn snapshot(pool: &sqlx::PgPool) -> Snapshot {
    sqlx::query_as("SELECT unlocode, name, country, timezone, lon, lat, unlocs FROM ports ORDER BY unlocode")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_ports_file_imported_twice_gives_1634_ports_and_the_read_api() {
    let app = spawn_app().await;
    let file = tokio::fs::File::open(PORTS).await.expect("../shared/data/ports.json beside the repository");
    let first = import(app.js(), file, None, false).await;
    assert_eq!((first.entries, first.publish.stored, first.syntax_error.as_ref()), (1634, 1634, None));
    assert!(first.invalid.is_empty() && first.skipped.is_empty(), "{:?}", first.invalid);
    app.settled().await;
    let pool = app.c.db.get_postgres_connection_pool();
    let before = snapshot(pool).await;
    assert_eq!(before.len(), 1634);

    let again = import(app.js(), tokio::fs::File::open(PORTS).await.unwrap(), None, false).await;
    assert_eq!((again.publish.stored, again.publish.duplicates), (1634, 0), "a run's own idempotency keys");
    app.settled().await;
    assert!(snapshot(pool).await == before, "a second import changes nothing");

    // Per-country counts equal a GROUP BY over the ports.
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT country, count(*) FROM ports WHERE country IS NOT NULL GROUP BY 1
         EXCEPT SELECT country, ports FROM port_countries",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(counts.is_empty(), "{counts:?}");

    let (s, p) = app.get("/v1/ports/AEDXB").await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["name"], "Dubai");
    assert_eq!(p["coordinates"], json!([55.27, 25.25]));
    assert_eq!(p["timezone"], "Asia/Dubai");
    assert_eq!(p["unlocs"], json!(["AEDXB"]));
    // A port without coordinates and timezone: null, not absent or zero.
    let (_, p) = app.get("/v1/ports/BHAHD").await;
    assert_eq!((p["name"].as_str(), &p["coordinates"], &p["timezone"]), (Some("Al Hidd"), &Value::Null, &Value::Null));
    assert_eq!(p["code"], "52500");
    let (s, b) = app.get("/v1/ports/NOPE1").await;
    assert_eq!((s.as_u16(), b["error"]["code"].as_str()), (404, Some("not_found")));

    let (_, b) = app.get("/v1/ports?country=United%20States&limit=5").await;
    assert_eq!(b["total"], 141);
    assert_eq!(b["ports"].as_array().unwrap().len(), 5);
    let (_, b) = app.get("/v1/ports?q=dub").await;
    let names: Vec<&str> = b["ports"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"Dubai") && names.iter().all(|n| n.to_lowercase().contains("dub")), "{names:?}");
    // Lowered by one rule: 'İ' is "i" to PostgreSQL (under a UTF-8 ctype, as here) and "i̇" (a combining
    // dot after it) to Rust, which lowered the query alone and found no Istanbul.
    let utf8_ctype: bool = sea_orm::sqlx::query_scalar("SELECT lower('İSTANBUL') = 'istanbul'")
        .fetch_one(app.c.db.get_postgres_connection_pool())
        .await
        .unwrap();
    let (_, b) = app.get("/v1/ports?q=%C4%B0STANBUL").await;
    if utf8_ctype {
        assert_eq!(b["ports"][0]["name"], "Istanbul", "{b}");
    }
    let (s, b) = app.get("/v1/ports?offset=-1").await;
    assert_eq!((s.as_u16(), b["error"]["code"].as_str()), (400, Some("invalid_offset")));

    let (s, b) = app.get("/v1/ports/nearest?lat=25.25&lon=55.27&limit=3").await;
    assert_eq!(s, 200, "{b}");
    let near = b["ports"].as_array().unwrap();
    assert_eq!(near[0]["unlocode"], "AEDXB");
    assert!(near[0]["distance_m"].as_f64().unwrap() < 1.0);
    let d: Vec<f64> = near.iter().map(|p| p["distance_m"].as_f64().unwrap()).collect();
    assert!(d.windows(2).all(|w| w[0] <= w[1]), "nearest first: {d:?}");
    for bad in ["?lon=1", "?lat=91&lon=1", "?lat=1&lon=abc"] {
        let (s, b) = app.get(&format!("/v1/ports/nearest{bad}")).await;
        assert_eq!(s, 400, "{bad}: {b}");
    }
    let (_, b) = app.get("/v1/ports/countries").await;
    assert_eq!(b["countries"][0], json!({"country": "United States", "ports": 141}));
    assert_eq!((b["countries"].as_array().unwrap().len(), &b["total"]), (185, &json!(185)));
    // Bounded: a country is any text an event names, so the list could grow without end.
    let (_, top) = app.get("/v1/ports/countries?limit=3").await;
    assert_eq!((top["countries"].as_array().unwrap().len(), &top["total"]), (3, &json!(185)));
    assert_eq!(top["countries"][0], b["countries"][0]);
    for bad in ["0", "10001", "x"] {
        let (s, e) = app.get(&format!("/v1/ports/countries?limit={bad}")).await;
        assert_eq!((s.as_u16(), &e["error"]["code"]), (400, &json!("invalid_limit")), "{bad}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_report_positions_keep_what_came_before_and_dead_letter_invalid_ports() {
    let app = spawn_app().await;
    let text = "{\n \"AAAAA\": {\"name\": \"A\", \"coordinates\": [1, 2]},\n \"BBBBB\": {\"name\": \"B\", \"coordinates\": [1]},\n \"CCCCC\": {\"name\": \"C\"},\n \"DDDDD\": {\"name\": \"D\",, }\n}";
    let r = import(app.js(), std::io::Cursor::new(text.as_bytes().to_vec()), None, false).await;
    assert_eq!(r.publish.stored, 3, "everything before the syntax error is published");
    let err = r.syntax_error.expect("a syntax error");
    assert_eq!(err.at.line, 5, "{err}");
    assert!(err.reason.contains("DDDDD"), "{err}");
    assert_eq!(r.invalid.len(), 1);
    assert_eq!((r.invalid[0].0.line, r.invalid[0].1.as_str()), (3, "BBBBB"));
    assert!(r.invalid[0].2.contains("two numbers"), "{:?}", r.invalid);
    app.settled().await;
    let (_, b) = app.get("/v1/ports?limit=10").await;
    assert_eq!(b["total"], 2, "A and C stored: {b}");
    let letter = app.only_dead_letter().await;
    assert_eq!(letter["subject"], "port.BBBBB");
    assert!(letter["reason"].as_str().unwrap().contains("two numbers"), "{letter}");

    let truncated = import(
        app.js(),
        std::io::Cursor::new(b"{\"EEEEE\": {\"name\": \"E\"}, \"FFFFF\": {\"na".to_vec()),
        None,
        false,
    )
    .await;
    assert_eq!(truncated.publish.stored, 1);
    assert!(truncated.syntax_error.unwrap().reason.contains("truncated"));
}

/// A batch over more ports than one transaction can lock (20,000, as an import of a full UN/LOCODE list
/// can bring) is stored in parts of about `lock::MAX_SERIES_PER_PART` ports. As one transaction it failed
/// with "out of shared memory" on every delivery, a transient failure retried for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_more_ports_than_a_transaction_can_lock_is_stored() {
    use tributary_broker::ports::{Port, PortRecord};
    use tributary_broker::{BatchHandler, Delivery, ts::Ts};
    let db = tributary_testkit::TestDb::create().await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let batch: Vec<Delivery<PortRecord>> = (0..20_000)
        .map(|i| Delivery {
            event: PortRecord {
                unlocode: format!("X{i:05}"),
                port: Port { name: format!("Port {i}"), country: Some(format!("C{}", i % 3)), ..Port::default() },
                lon_lat: None,
            },
            seq: i + 1,
            received: Ts::parse("2026-01-01").unwrap(),
        })
        .collect();
    tributary_processor::ports::PortHandler::new(pool.clone()).handle(&batch).await.unwrap();
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT country, ports FROM port_countries ORDER BY country").fetch_all(&pool).await.unwrap();
    let ports: i64 = sqlx::query_scalar("SELECT count(*) FROM ports").fetch_one(&pool).await.unwrap();
    assert_eq!(ports, 20_000);
    assert_eq!(counts, [("C0".into(), 6667), ("C1".into(), 6667), ("C2".into(), 6666)]);
}

/// A port with a subnormal coordinate is stored, at 0: PostgreSQL's earth position refuses the underflow
/// such a number makes (`ll_to_earth`, indexed), so its batch failed on every delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_a_hair_from_zero_is_stored_at_zero() {
    let app = spawn_app().await;
    app.publish_plain("port.ZZTNY", r#"{"name":"Tiny","coordinates":[5e-324,10]}"#).await;
    app.settled().await;
    let (s, b) = app.get("/v1/ports/ZZTNY").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["coordinates"], json!([0.0, 10.0]), "{b}");
    let (_, dlq) = app.get("/v1/dlq?limit=10").await;
    assert_eq!(dlq["dead_letters"].as_array().map(Vec::len), Some(0), "{dlq}");
}

/// A port set back to an earlier value by a third import within JetStream's duplicate window is stored:
/// the idempotency key was the member's content, so the third import's was the first's, JetStream dropped
/// it as a repeat, and the port kept the second import's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_set_back_to_an_earlier_value_is_stored() {
    let app = spawn_app().await;
    for (name, stored) in [("First", 1), ("Second", 1), ("First", 1)] {
        let file = format!(r#"{{"ABAPT": {{"name": "{name}"}}}}"#);
        let r = import(app.js(), file.as_bytes(), None, false).await;
        assert_eq!((r.publish.stored, r.publish.duplicates), (stored, 0), "{r:?}");
        app.settled().await;
    }
    let (_, p) = app.get("/v1/ports/ABAPT").await;
    assert_eq!(p["name"], "First", "{p}");
}
