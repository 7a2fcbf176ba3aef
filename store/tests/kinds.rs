//! The fleet, ports and surveys modules against a real database: data written through their write
//! functions reads back through their read functions, and every API read gives what the API's own query
//! (kept here verbatim as the reference) gives on the same data, for every combination of filters.

use chrono::{DateTime, TimeZone, Utc};
use std::collections::BTreeMap;
use tributary_store::sqlx::{self, PgPool};
use tributary_store::{fleet, ports, surveys};
use tributary_testkit::TestDb;

async fn pool(db: &TestDb) -> PgPool {
    PgPool::connect(db.url()).await.expect("connecting to the test database")
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_780_000_000 + secs, 0).unwrap()
}

const COLUMNS: &str = "unlocode, name, city, country, province, timezone, code, alias, regions, unlocs, lon, lat";

#[tokio::test]
async fn ports_read_as_the_api_queries_did() {
    let db = TestDb::create().await;
    let pool = pool(&db).await;
    let none: Vec<String> = Vec::new();
    let alias = vec!["Rotterdam-Europoort".to_owned()];
    let port = |unlocode, name, country, lon_lat: Option<(f64, f64)>, seq| ports::PortUpsert {
        unlocode,
        name,
        city: Some(name),
        country,
        province: None,
        timezone: Some("Europe/Amsterdam"),
        code: None,
        alias: if unlocode == "NLRTM" { &alias } else { &none },
        regions: &none,
        unlocs: &none,
        lon: lon_lat.map(|c| c.0),
        lat: lon_lat.map(|c| c.1),
        seq,
    };
    let rows = [
        port("NLRTM", "Rotterdam", Some("Netherlands"), Some((4.47, 51.92)), 1),
        port("NLAMS", "Amsterdam", Some("Netherlands"), Some((4.90, 52.37)), 2),
        port("BEANR", "Antwerp", Some("Belgium"), Some((4.40, 51.22)), 3),
        port("XXPCT", "100% Port_a", None, None, 4),
        port("XXROT", "Rotterdam", Some("Elsewhere"), None, 5),
    ];
    let mut tx = pool.begin().await.unwrap();
    ports::upsert(&mut tx, &rows).await.unwrap();
    let counts =
        BTreeMap::from([("Netherlands".to_owned(), 2), ("Belgium".to_owned(), 1), ("Elsewhere".to_owned(), 1)]);
    ports::move_country_counts(&mut tx, &counts).await.unwrap();
    tx.commit().await.unwrap();

    // A port moving away from its country: the emptied country is removed.
    let mut tx = pool.begin().await.unwrap();
    let stored = ports::stored_versions(&mut tx, &["XXROT", "NOPE"]).await.unwrap();
    assert_eq!(
        stored,
        vec![ports::StoredVersion { unlocode: "XXROT".into(), seq: 5, country: Some("Elsewhere".into()) }]
    );
    ports::upsert(&mut tx, &[port("XXROT", "Rotterdam", Some("Belgium"), None, 6)]).await.unwrap();
    let moved = BTreeMap::from([("Elsewhere".to_owned(), -1), ("Belgium".to_owned(), 1)]);
    ports::move_country_counts(&mut tx, &moved).await.unwrap();
    tx.commit().await.unwrap();

    let nl = ports::get(&pool, "NLRTM").await.unwrap().unwrap();
    assert_eq!((nl.name.as_str(), nl.alias.clone(), nl.coordinates), ("Rotterdam", alias.clone(), Some([4.47, 51.92])));
    assert_eq!(ports::get(&pool, "NOPE1").await.unwrap(), None);
    let reference: Option<ports::Port> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM ports WHERE unlocode = $1")))
            .bind("NLRTM")
            .fetch_optional(&pool)
            .await
            .unwrap();
    assert_eq!(reference, Some(nl));

    // The API's list, verbatim, with its optional filters.
    let filter = "($1::text IS NULL OR country = $1) AND ($2::text IS NULL OR lower(name) LIKE $2)";
    let mut pages = 0;
    for country in [None, Some("Netherlands"), Some("Belgium"), Some("Nowhere")] {
        for q in [None, Some("rot"), Some("DAM"), Some("%"), Some("_a"), Some("0% p"), Some("\\")] {
            for (limit, offset) in [(50, 0), (1, 1), (10, 5)] {
                let like = q.map(|q| {
                    format!("%{}%", q.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"))
                });
                let total: i64 =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM ports WHERE {filter}")))
                        .bind(country)
                        .bind(&like)
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                let list: Vec<ports::Port> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM ports WHERE {filter} ORDER BY name, unlocode LIMIT $3 OFFSET $4"
                )))
                .bind(country)
                .bind(&like)
                .bind(limit)
                .bind(offset)
                .fetch_all(&pool)
                .await
                .unwrap();
                let f = ports::PortFilter { country: country.map(str::to_owned), name_contains: q.map(str::to_owned) };
                let page = ports::list(&pool, &f, limit, offset).await.unwrap();
                assert_eq!((page.total, &page.ports), (total, &list), "{f:?} limit {limit} offset {offset}");
                pages += usize::from(!list.is_empty());
            }
        }
    }
    assert!(pages > 10, "the filters matched something");
    let page = ports::list(&pool, &ports::PortFilter { country: None, name_contains: Some("%".into()) }, 50, 0).await;
    assert_eq!(page.unwrap().ports.iter().map(|p| p.unlocode.as_str()).collect::<Vec<_>>(), ["XXPCT"]);

    let near = ports::nearest(&pool, 51.9, 4.5, 2).await.unwrap();
    assert_eq!(near.iter().map(|n| n.port.unlocode.as_str()).collect::<Vec<_>>(), ["NLRTM", "NLAMS"]);
    assert!(near[0].distance_m > 0.0 && near[0].distance_m < near[1].distance_m);

    let countries = ports::countries(&pool, 1000).await.unwrap();
    let expected =
        [("Belgium", 2), ("Netherlands", 2)].map(|(c, n)| ports::CountryCount { country: c.into(), ports: n });
    assert_eq!(countries, (expected.to_vec(), 2));
    assert_eq!(ports::countries(&pool, 1).await.unwrap(), (expected[..1].to_vec(), 2), "the first, of 2");
}

#[tokio::test]
async fn surveys_read_as_the_api_and_the_aggregator_queried() {
    let db = TestDb::create().await;
    let pool = pool(&db).await;
    let item = |provider, provider_id, device, location, secs, seq| surveys::ItemUpsert {
        provider,
        provider_id,
        text: "fine",
        device,
        location,
        created_at: at(secs),
        seq,
    };
    let mut tx = pool.begin().await.unwrap();
    surveys::upsert_items(
        &mut tx,
        &[
            item("blue", 1, "phone", "Oslo", 10, 1),
            item("blue", 2, "tablet", "Oslo", 20, 2),
            item("blue", 3, "phone", "Rome", 20, 3),
            item("red", 7, "phone", "Rome", 30, 4),
            item("red", 8, "laptop", "Lima", 5, 5),
        ],
    )
    .await
    .unwrap();
    surveys::advance_cursors(&mut tx, &[("blue", 3), ("red", 8)]).await.unwrap();
    let ok = surveys::StatusUpsert {
        provider: "blue",
        status: "ok",
        error: None,
        at: at(40),
        seq: 6,
        last_ok: Some(at(40)),
    };
    let failed = surveys::StatusUpsert {
        provider: "red",
        status: "timeout",
        error: Some("slow"),
        at: at(41),
        seq: 7,
        last_ok: None,
    };
    surveys::store_statuses(&mut tx, &[ok, failed]).await.unwrap();
    tx.commit().await.unwrap();
    // Older versions and cursors change nothing.
    let mut tx = pool.begin().await.unwrap();
    surveys::upsert_items(&mut tx, &[item("red", 7, "watch", "Rome", 30, 2)]).await.unwrap();
    surveys::advance_cursors(&mut tx, &[("red", 2)]).await.unwrap();
    tx.commit().await.unwrap();

    let mut cursors = surveys::cursors(&pool).await.unwrap();
    cursors.sort_by(|a, b| a.provider.cmp(&b.provider));
    let expected = [("blue", 3), ("red", 8)].map(|(p, c)| surveys::ProviderCursor { provider: p.into(), cursor: c });
    assert_eq!(cursors, expected);

    type ItemRow = (String, i64, String, String, String, DateTime<Utc>);
    for device in [None, Some("phone"), Some("laptop"), Some("watch")] {
        for location in [None, Some("Rome"), Some("Oslo")] {
            for limit in [100, 2] {
                let reference: Vec<ItemRow> = sqlx::query_as(
                    "SELECT provider, provider_id, text, device, location, created_at FROM survey_items
          WHERE ($1::text IS NULL OR device = $1) AND ($2::text IS NULL OR location = $2)
          ORDER BY created_at DESC, provider, provider_id DESC LIMIT $3",
                )
                .bind(device)
                .bind(location)
                .bind(limit)
                .fetch_all(&pool)
                .await
                .unwrap();
                let f =
                    surveys::ItemFilter { device: device.map(str::to_owned), location: location.map(str::to_owned) };
                let items: Vec<ItemRow> = surveys::items(&pool, &f, limit)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|i| (i.provider, i.provider_id, i.text, i.device, i.location, i.created_at))
                    .collect();
                assert_eq!(items, reference, "{f:?} limit {limit}");
            }
        }
    }
    let all = surveys::items(&pool, &surveys::ItemFilter::default(), 100).await.unwrap();
    assert_eq!(
        all.iter().map(|i| (i.provider.as_str(), i.provider_id)).collect::<Vec<_>>()[..2],
        [("red", 7), ("blue", 3)]
    );

    let providers = surveys::providers(&pool).await.unwrap();
    assert_eq!(
        providers,
        vec![
            surveys::Provider {
                provider: "blue".into(),
                status: Some("ok".into()),
                last_sync: Some(at(40)),
                last_pull: Some(at(40)),
                cursor: 3,
                error: None,
            },
            surveys::Provider {
                provider: "red".into(),
                status: Some("timeout".into()),
                last_sync: None,
                last_pull: Some(at(41)),
                cursor: 8,
                error: Some("slow".into()),
            },
        ]
    );
}

#[tokio::test]
async fn the_fleet_plan_reads_back_in_one_snapshot() {
    let db = TestDb::create().await;
    let pool = pool(&db).await;
    let row = |id, text, seq| fleet::Upsert { id, text, seq };
    let mut tx = pool.begin().await.unwrap();
    assert!(!fleet::plan_exists(&mut tx).await.unwrap());
    let drivers = [row("d1", Some("Alice Smith"), 1), row("d2", Some("Bo"), 2), row("d3", Some("Gone"), 3)];
    assert_eq!(fleet::upsert(&mut tx, fleet::Table::Drivers, &drivers).await.unwrap(), 3);
    let shipments =
        [row("s1", Some("1 Elm Street"), 4), row("s2", Some("9 Oak Ave"), 5), row("s3", Some("Main St"), 6)];
    assert_eq!(fleet::upsert(&mut tx, fleet::Table::Shipments, &shipments).await.unwrap(), 3);
    // A deletion (a tombstone) wins over the older version; an older one changes nothing.
    let changes = [row("d3", None, 7), row("d1", Some("Old Name"), 0)];
    assert_eq!(fleet::upsert(&mut tx, fleet::Table::Drivers, &changes).await.unwrap(), 1);
    let loaded = fleet::load(&mut tx).await.unwrap();
    assert_eq!(
        loaded,
        fleet::Fleet {
            shipments: vec![
                ("s1".into(), "1 Elm Street".into()),
                ("s2".into(), "9 Oak Ave".into()),
                ("s3".into(), "Main St".into())
            ],
            drivers: vec![("d1".into(), "Alice Smith".into()), ("d2".into(), "Bo".into())],
        }
    );
    let plan = fleet::StoredPlan {
        total: 9.5,
        assignments: vec![("s1".into(), "d2".into(), 3.0), ("s2".into(), "d1".into(), 6.5)],
    };
    fleet::store_plan(&mut tx, &plan, 2, 3).await.unwrap();
    fleet::store_plan(&mut tx, &plan, 2, 3).await.unwrap();
    assert!(fleet::plan_exists(&mut tx).await.unwrap());
    tx.commit().await.unwrap();

    let snap = fleet::plan_snapshot(&pool).await.unwrap();
    let head = snap.head.expect("a plan is stored");
    assert_eq!((head.version, head.total_score), (2, 9.5));
    let assignment = |shipment_id: &str, address: &str, driver_id: &str, driver: &str, score| fleet::Assignment {
        shipment_id: shipment_id.into(),
        address: address.into(),
        driver_id: driver_id.into(),
        driver: driver.into(),
        score,
    };
    assert_eq!(
        snap.assignments,
        [assignment("s2", "9 Oak Ave", "d1", "Alice Smith", 6.5), assignment("s1", "1 Elm Street", "d2", "Bo", 3.0)]
    );
    assert_eq!(
        snap.unassigned_shipments,
        [fleet::UnassignedShipment { shipment_id: "s3".into(), address: "Main St".into() }]
    );
    assert!(snap.unassigned_drivers.is_empty());

    assert_eq!(fleet::shipment_address(&pool, "s3").await.unwrap().as_deref(), Some("Main St"));
    assert_eq!(fleet::driver_name(&pool, "d1").await.unwrap().as_deref(), Some("Alice Smith"));
    assert_eq!(fleet::driver_name(&pool, "d3").await.unwrap(), None, "deleted");
    assert_eq!(fleet::shipment_address(&pool, "nope").await.unwrap(), None);

    let empty = TestDb::create().await;
    assert_eq!(fleet::plan_snapshot(&self::pool(&empty).await).await.unwrap(), fleet::PlanSnapshot::default());
}
