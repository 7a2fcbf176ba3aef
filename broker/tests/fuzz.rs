//! Fuzzing every decoder of the event contract: arbitrary bytes, and valid payloads mutated (bytes flipped,
//! inserted, deleted, truncated), in either format and with any content type, never panic. Each decoder
//! either returns an event or a rejection naming a class and a reason; for the mutations that keep a
//! payload valid, decoding twice gives the same answer.
//!
//! `PROPTEST_CASES` sets the cases per property (default 256 here; `scripts/fuzz.sh` runs 100,000).

use async_nats::HeaderMap;
use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use tributary_broker::events::{IndexDefinition, PricePoint, Rejection};
use tributary_broker::fleet::FleetRecord;
use tributary_broker::ports::PortRecord;
use tributary_broker::samples::ServerSample;
use tributary_broker::surveys::SurveyRecord;
use tributary_broker::ts::Ts;

/// Valid payloads of every kind, as (subject, JSON).
const SEEDS: &[(&str, &str)] = &[
    ("price.ACME", r#"{"ts":"2026-11-20","price":101.5,"volume":1200}"#),
    ("price.p.3.ACME", r#"{"ts":"2026-11-20T10:00:00Z","price":0.5}"#),
    ("metric.db-1", r#"{"ts":"2026-11-20T10:00:00Z","cpu_usage":12.5,"load1":0.7}"#),
    ("index.tech", r#"{"base":100,"weights":{"S0":0.5,"S1":0.3,"S2":0.2}}"#),
    (
        "port.AEAJM",
        r#"{"name":"Ajman","city":"Ajman","country":"United Arab Emirates","alias":[],"regions":[],
            "coordinates":[55.5136433,25.4052165],"province":"Ajman","timezone":"Asia/Dubai","unlocs":["AEAJM"],"code":"52000"}"#,
    ),
    ("fleet.driver.7", r#"{"name":"Everardo Welch"}"#),
    ("fleet.shipment.3", r#"{"address":"215 Osinski Manors"}"#),
    ("fleet.shipment.4", r#"{"deleted":true}"#),
    ("survey.blue", r#"{"id":3,"text":"Hello","device":"d-1","location":"cave","created_at":"2026-11-20T10:00:00Z"}"#),
    ("survey.red", r#"{"status":"timeout","at":"2026-11-20T10:00:00Z","error":"no answer in 2 s"}"#),
];

fn received() -> Ts {
    Ts(Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap())
}

/// Runs the decoder a subject's kind uses; `Err` carries the rejection's class and reason.
fn decode(subject: &str, headers: Option<&HeaderMap>, payload: &[u8]) -> Result<(), (String, String)> {
    let r: Result<(), Rejection> = match subject.split('.').next().unwrap_or_default() {
        "price" => PricePoint::decode(subject, headers, payload, received()).map(drop),
        "metric" => ServerSample::decode(subject, headers, payload, received()).map(drop),
        "index" => IndexDefinition::decode(subject, headers, payload).map(drop),
        "port" => PortRecord::decode(subject, headers, payload).map(drop),
        "fleet" => FleetRecord::decode(subject, headers, payload).map(drop),
        "survey" => SurveyRecord::decode(subject, headers, payload, received()).map(drop),
        other => panic!("no decoder for {other}"),
    };
    r.map_err(|e| (e.class.to_owned(), e.reason))
}

/// A seed as JSON or MessagePack bytes.
fn encoded(json: &str, msgpack: bool) -> Vec<u8> {
    if msgpack {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        rmp_serde::to_vec_named(&v).unwrap()
    } else {
        json.as_bytes().to_vec()
    }
}

fn headers(which: u8) -> Option<HeaderMap> {
    let ct = match which % 5 {
        0 => return None,
        1 => "application/json",
        2 => "application/msgpack",
        3 => "text/plain",
        _ => "application/json; charset=utf-8",
    };
    let mut h = HeaderMap::new();
    h.insert("Content-Type", ct);
    Some(h)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    Splice(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 0..16)).prop_map(|(i, v)| Mutation::Splice(i, v)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
    match m {
        Mutation::Flip(i, b) if !bytes.is_empty() => {
            let i = at(*i, bytes.len());
            bytes[i] ^= b | 1;
        }
        Mutation::Insert(i, b) => bytes.insert(at(*i, bytes.len() + 1), *b),
        Mutation::Delete(i) if !bytes.is_empty() => {
            bytes.remove(at(*i, bytes.len()));
        }
        Mutation::Truncate(i) => bytes.truncate(at(*i, bytes.len() + 1)),
        Mutation::Splice(i, v) => {
            let i = at(*i, bytes.len() + 1);
            bytes.splice(i..i, v.iter().copied());
        }
        _ => {}
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(seed in 0..SEEDS.len(), h in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        let (subject, _) = SEEDS[seed];
        let _ = decode(subject, headers(h).as_ref(), &payload);
    }

    #[test]
    fn mutated_valid_payloads_never_panic(
        seed in 0..SEEDS.len(),
        msgpack in any::<bool>(),
        h in any::<u8>(),
        mutations in proptest::collection::vec(mutation(), 1..8),
    ) {
        let (subject, json) = SEEDS[seed];
        let mut payload = encoded(json, msgpack);
        for m in &mutations {
            apply(&mut payload, m);
        }
        let first = decode(subject, headers(h).as_ref(), &payload);
        if let Err((class, reason)) = &first {
            prop_assert!(!class.is_empty() && !reason.is_empty(), "a rejection names its class and reason");
        }
        prop_assert_eq!(first, decode(subject, headers(h).as_ref(), &payload));
    }

    #[test]
    fn any_subject_never_panics(seed in 0..SEEDS.len(), subject in "[a-z.>*]{0,3}[ -~]{0,40}") {
        let (kind, json) = SEEDS[seed];
        let kind = kind.split('.').next().unwrap();
        let _ = decode(&format!("{kind}.{subject}"), None, json.as_bytes());
    }
}

#[test]
fn every_seed_is_valid() {
    for (subject, json) in SEEDS {
        for msgpack in [false, true] {
            let payload = encoded(json, msgpack);
            let ct = if msgpack { 2 } else { 1 };
            assert_eq!(decode(subject, None, &payload), Ok(()), "{subject} {json}");
            assert_eq!(decode(subject, headers(ct).as_ref(), &payload), Ok(()), "{subject} {json}");
        }
    }
}

/// Found by fuzzing the API: text with a NUL character decodes, but PostgreSQL refuses to store it, which
/// would fail its batch on every delivery. Every decoder refuses it, so it is dead-lettered instead.
#[test]
fn text_with_a_nul_character_is_refused_by_every_decoder() {
    let cases: &[(&str, &str)] = &[
        ("port.AEAJM", r#"{"name":"Aj\u0000man"}"#),
        ("port.AEAJM", r#"{"name":"Ajman","alias":["a\u0000"]}"#),
        ("fleet.driver.1", r#"{"name":"Ev\u0000"}"#),
        ("fleet.shipment.1", r#"{"address":"\u0000 Main St"}"#),
        ("survey.blue", r#"{"id":1,"text":"hi","device":"d\u0000","location":"x"}"#),
        ("survey.blue", r#"{"status":"error","error":"boom\u0000"}"#),
        ("price.A\u{0}B", r#"{"price":1}"#),
        ("metric.h\u{1}", r#"{"cpu_usage":1}"#),
    ];
    for (subject, json) in cases {
        let err = decode(subject, None, json.as_bytes()).expect_err(json);
        assert!(err.1.contains("NUL") || err.1.contains("subject"), "{subject} {json}: {err:?}");
    }
}
