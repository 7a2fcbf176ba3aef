//! 10,000 malformed payloads through NATS: every one dead-lettered with a reason and counted, and the
//! valid events between them stored.

use crate::common::{spawn_app, spawn_services, tributary};
use crate::faults::{env_of, for_each_message, refs};
use async_nats::HeaderMap;
use chrono::{Duration as Span, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sea_orm::sqlx;
use std::collections::HashMap;
use tributary_broker::events::PriceEvent;
use tributary_broker::ts::Ts;
use tributary_broker::{Publisher, dlq};
use tributary_testkit::{NatsServer, free_port};

/// A payload that no decoder accepts, on a subject of some kind, with its headers.
fn malformed(i: usize, rng: &mut StdRng) -> (String, HeaderMap, Vec<u8>) {
    let json = |ct: &str| {
        let mut h = HeaderMap::new();
        h.insert("Content-Type", ct);
        h
    };
    let none = HeaderMap::new;
    match i % 12 {
        0 => {
            // 0xc1 is never valid MessagePack
            let mut b = vec![0xc1];
            b.extend((0..rng.random_range(0..64)).map(|_| rng.random::<u8>()));
            (format!("price.M{}", i % 7), none(), b)
        }
        1 => {
            let full = br#"{"ts":"2026-01-01","price":10.5}"#;
            (format!("price.M{}", i % 7), none(), full[..rng.random_range(1..full.len())].to_vec())
        }
        2 => ("price.M1".into(), json("application/json"), br#"{"ts":"2026-01-01","price":"ten"}"#.to_vec()),
        3 => ("price.M2".into(), none(), br#"{"ts":"2026-01-01","price":-1}"#.to_vec()),
        4 => (format!("metric.m-{}", i % 5), none(), br#"{"cpu_usage":150}"#.to_vec()),
        5 => ("port.ZZBAD".into(), none(), br#"{"name":"Nowhere","coordinates":[1]}"#.to_vec()),
        6 => ("fleet.driver.9".into(), none(), br#"{"nom":"x"}"#.to_vec()),
        7 => ("survey.blue".into(), none(), br#"{"id":0}"#.to_vec()),
        8 => ("index.bad".into(), none(), br#"{"base":100,"weights":{}}"#.to_vec()),
        9 => (format!("metric.m-{}", i % 5), none(), Vec::new()),
        10 => ("price.M3".into(), json("text/csv"), br#"{"ts":"2026-01-01","price":1}"#.to_vec()),
        _ => {
            let full = tributary_broker::codec::to_msgpack(&PriceEvent {
                ts: Some(Ts(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap())),
                price: 3.0,
                volume: Some(2.0),
            });
            ("price.M4".into(), json("application/msgpack"), full[..rng.random_range(1..full.len())].to_vec())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_malformed_payloads_are_dead_lettered_counted_and_never_stall_valid_ones() {
    let nats = NatsServer::start();
    let app = spawn_services(nats.url(), Some(nats), |c| c.processor.ack_wait_secs = 2).await;
    let metrics_port = free_port().to_string();
    let listen = format!("127.0.0.1:{metrics_port}");
    let env = env_of(&app, &[("RUST_LOG", "error")]); // 10,000 dead-letter warnings are not news here
    let _p = tributary(&["processor", "--metrics-listen", &listen], &refs(&env));
    let mut rng = StdRng::seed_from_u64(99);
    let mut p = Publisher::new(app.js(), 1024);
    let day0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let (bad, mut good) = (10_000usize, 0usize);
    for i in 0..bad {
        if i % 5 == 0 {
            let e = PriceEvent { ts: Some(Ts(day0 + Span::minutes(i as i64))), price: 1.0 + i as f64, volume: None };
            p.publish(format!("price.V{}", i % 10), None, &e).await;
            good += 1;
        }
        let (subject, headers, payload) = malformed(i, &mut rng);
        p.publish_raw(subject, headers, payload.into()).await;
    }
    let r = p.finish().await;
    assert_eq!((r.stored, r.failed.len()), ((bad + good) as u64, 0));
    app.settled().await;

    // Every malformed payload is in the dead-letter stream with its class and reason …
    let mut classes: HashMap<String, usize> = HashMap::new();
    let letters = for_each_message(&app.c.js, &app.c.config.streams.dlq_name(), |_, _, headers, _, _| {
        let h = headers.expect("dead letters carry headers");
        let reason = h.get(dlq::REASON).map(|v| v.as_str().to_owned()).unwrap_or_default();
        assert!(!reason.is_empty(), "a dead letter without a reason");
        *classes.entry(h.get(dlq::CLASS).map(|v| v.as_str().to_owned()).unwrap_or_default()).or_default() += 1;
    })
    .await;
    assert_eq!(letters, bad, "{classes:?}");
    // … counted in the processor's metrics …
    let text = reqwest::get(format!("http://{listen}/metrics")).await.unwrap().text().await.unwrap();
    let counted: f64 = text
        .lines()
        .filter(|l| l.starts_with("tributary_dead_letters_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted as usize, bad, "{text}");
    // … and every valid event interleaved with them is stored.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM price_points")
        .fetch_one(app.c.db.get_postgres_connection_pool())
        .await
        .unwrap();
    assert_eq!(stored as usize, good);
    eprintln!("malformed: {bad} dead-lettered by class {classes:?}; {good} valid interleaved, all stored");
}

/// A key with a no-break space or another Unicode space, published by any client (the NATS protocol
/// allows it in a subject; the API refuses it, the `nats` CLI does not ask): dead-lettered as
/// `bad_subject`, naming the subject, and the prices after it are stored. async-nats 0.51 split the
/// delivery's HMSG line on every Unicode space, so the processor's connection broke on each delivery of
/// such a message, and every consumer of the process stalled for ever (see third_party/README.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_a_no_break_space_is_dead_lettered_and_stalls_nothing() {
    let app = spawn_app().await;
    let spaced = ["price.\u{a0}ab", "price.\u{a0}", "price.ab\u{a0}", "price.a\u{3000}b", "metric.h\u{2003}1"];
    for (i, subject) in spaced.iter().enumerate() {
        let mut headers = HeaderMap::new(); // with headers: delivered as HMSG
        headers.insert("Nats-Msg-Id", format!("spaced-{i}").as_str());
        let payload = if subject.starts_with("price") {
            &br#"{"ts":"2026-01-01","price":1}"#[..]
        } else {
            &br#"{"cpu_usage":1}"#[..]
        };
        app.js().publish_with_headers(subject.to_string(), headers, payload.into()).await.unwrap().await.unwrap();
    }
    let after = PriceEvent { ts: Some(Ts::parse("2026-01-02").unwrap()), price: 2.0, volume: None };
    app.js().publish("price.AFTER", tributary_broker::codec::to_msgpack(&after)).await.unwrap().await.unwrap();
    app.settled().await;

    let stored: Vec<String> = sqlx::query_scalar("SELECT instrument FROM price_points")
        .fetch_all(app.c.db.get_postgres_connection_pool())
        .await
        .unwrap();
    assert_eq!(stored, ["AFTER"]);
    let mut letters = Vec::new();
    for_each_message(&app.c.js, &app.c.config.streams.dlq_name(), |_, subject, headers, _, _| {
        let h = headers.expect("dead letters carry headers");
        let get = |name: &str| h.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
        assert_eq!(subject, format!("dlq.{}", get(dlq::SUBJECT)), "the letter's own subject names the original");
        letters.push((get(dlq::SUBJECT), get(dlq::CLASS)));
    })
    .await;
    letters.sort();
    let mut want: Vec<(String, String)> = spaced.iter().map(|s| (s.to_string(), "bad_subject".to_string())).collect();
    want.sort();
    assert_eq!(letters, want);
    // The listing (what the API serves, and what a replay publishes to) names each subject exactly: a
    // trailing no-break space was trimmed off, naming the valid instrument `ab`.
    let mut listed: Vec<String> =
        dlq::list(&app.c.js, &app.c.config.streams, 100, None).await.unwrap().into_iter().map(|l| l.subject).collect();
    listed.sort();
    assert_eq!(listed, want.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>());
}
