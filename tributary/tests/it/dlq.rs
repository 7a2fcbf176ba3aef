//! Bad input is dead-lettered with its reason, the pipeline keeps going, and dead letters replay.

use crate::common::{spawn_app, spawn_app_with};
use reqwest::Method;
use serde::Serialize;
use serde_json::json;
use tributary_testkit::eventually;

#[derive(Serialize)]
struct Nan {
    price: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_input_lands_in_the_dlq_with_its_reason() {
    let app = spawn_app().await;
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("price.ACME", b"not json at all".to_vec(), "invalid MessagePack payload"),
        ("price.ACME", br#"{"ts":"2026-01-02"}"#.to_vec(), "missing field `price`"),
        ("price.ACME", br#"{"ts":"2026-01-02","price":"ten"}"#.to_vec(), "invalid type"),
        ("price.ACME", br#"{"ts":"someday","price":1}"#.to_vec(), "bad ts"),
        ("price.ACME", br#"{"ts":"2026-01-02","price":-3}"#.to_vec(), "price must be positive"),
        ("price.ACME", br#"{"ts":"2026-01-02","price":1e999}"#.to_vec(), "invalid JSON payload"),
        ("price.ACME", rmp_serde::to_vec_named(&Nan { price: f64::NAN }).unwrap(), "finite"),
        ("price.ACME", rmp_serde::to_vec_named(&Nan { price: f64::INFINITY }).unwrap(), "finite"),
        ("price.ACME.extra", br#"{"price":1}"#.to_vec(), "unknown subject shape"),
        ("index.broken", br#"{"weights":{}}"#.to_vec(), "at least one instrument"),
    ];
    let mut seqs = Vec::new();
    for (k, (subject, payload, _)) in bad.iter().enumerate() {
        seqs.push(app.js().publish(subject.to_string(), payload.clone().into()).await.unwrap().await.unwrap().sequence);
        // a valid event after each bad one: the pipeline keeps going
        app.publish_plain("price.GOOD", &format!(r#"{{"ts":{},"price":5}}"#, 1_767_225_600_000u64 + k as u64 * 1000))
            .await;
    }
    app.settled().await;

    let (status, body) = app.get("/v1/dlq?limit=100").await;
    assert_eq!(status, 200, "{body}");
    let letters = body["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), bad.len(), "{body}");
    // Each bad input by its original stream sequence (the two consumers dead-letter concurrently).
    for (seq, (subject, payload, reason)) in seqs.iter().zip(&bad) {
        let stream = if subject.starts_with("index") { "INDICES" } else { "PRICES" };
        let letter = letters
            .iter()
            .find(|l| l["original_seq"] == *seq && l["headers"].is_object() && l["subject"] == *subject)
            .unwrap_or_else(|| panic!("no dead letter for {stream} seq {seq}: {body}"));
        assert!(letter["reason"].as_str().unwrap().contains(reason), "{letter} should say {reason}");
        match std::str::from_utf8(payload) {
            Ok(text) => assert_eq!(letter["payload"], text),
            Err(_) => assert_eq!(letter["payload_encoding"], "base64"),
        }
    }
    let times: Vec<&str> = letters.iter().map(|l| l["time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    let (_, good) = app.get("/v1/series/price/GOOD").await;
    assert_eq!(good["points"].as_array().unwrap().len(), bad.len(), "valid events interleaved were all processed");

    // Dead letters are counted by class.
    let metrics = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tributary_dead_letters_total"), "{metrics}");
    assert!(metrics.contains("tributary_events_total"), "{metrics}");

    // Replay republishes the original payload to the original subject, once however often it is asked.
    let seq = letters.iter().find(|l| l["subject"] == "index.broken").unwrap()["seq"].as_u64().unwrap();
    let (status, replay) = app.send(Method::POST, &format!("/v1/dlq/{seq}/replay"), "").await;
    assert_eq!(status, 202, "{replay}");
    assert_eq!(replay["subject"], "index.broken");
    assert_eq!(replay["duplicate"], false);
    let (_, again) = app.send(Method::POST, &format!("/v1/dlq/{seq}/replay"), "").await;
    assert_eq!(again["duplicate"], true, "{again}");
    app.settled().await;
    // Still invalid, so it is dead-lettered again, pointing at the replayed message.
    let replayed_seq = replay["seq"].as_u64().unwrap();
    let letters = eventually(std::time::Duration::from_secs(10), "the replay's dead letter", || async {
        let (_, body) = app.get("/v1/dlq").await;
        let l = body["dead_letters"].as_array().cloned().unwrap_or_default();
        (l.len() == bad.len() + 1).then_some(l)
    })
    .await;
    assert_eq!(letters[0]["original_seq"].as_u64(), Some(replayed_seq));
    assert!(letters[0]["reason"].as_str().unwrap().contains("at least one instrument"));

    let (status, body) = app.send(Method::POST, "/v1/dlq/99999/replay", "").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_republishes_the_exact_payload_to_the_original_subject() {
    let app = spawn_app().await;
    app.js().publish("price.X", br#"{"price":"1"}"#.to_vec().into()).await.unwrap().await.unwrap();
    app.settled().await;
    let (_, body) = app.get("/v1/dlq").await;
    let seq = body["dead_letters"][0]["seq"].as_u64().unwrap();
    let (status, replay) = app.send(Method::POST, &format!("/v1/dlq/{seq}/replay"), "").await;
    assert_eq!(status, 202);
    let stream = app.js().get_stream("PRICES").await.unwrap();
    let m = stream.get_raw_message(replay["seq"].as_u64().unwrap()).await.unwrap();
    assert_eq!(&m.payload[..], br#"{"price":"1"}"#);
    assert_eq!(m.subject.as_str(), "price.X");
}

/// With the stream split into partitions, a subject of another shape than `price.<key>` (a partition's,
/// or one of more tokens) was stored as it came, where no partition's consumer reads it: acknowledged to
/// its publisher, then neither processed nor dead-lettered. JetStream now refuses it, the API answers 400,
/// and a dead letter (recorded under its partition's subject) replays to its key's subject, which the
/// stream partitions again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_partitions_no_subject_is_stored_where_no_consumer_reads_it() {
    let app = spawn_app_with(|c| c.processor.partitions = 2).await;
    for stray in ["price.p.7.ACME", "price.ACME.x"] {
        let ack = match app.js().publish(stray, br#"{"price":1}"#.to_vec().into()).await {
            Ok(pending) => pending.await.map(|a| a.sequence),
            Err(e) => Err(e),
        };
        assert!(ack.is_err(), "{stray} was stored: {ack:?}");
    }
    let (status, body) = app.send(Method::POST, "/v1/events/price.p.7.ACME", r#"{"price":1}"#).await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (400, Some("unknown_subject")), "{body}");

    app.publish_plain("price.BAD", r#"{"ts":"2026-01-02","price":-1}"#).await;
    app.settled().await;
    let letter = app.only_dead_letter().await;
    assert!(letter["subject"].as_str().unwrap().starts_with("price.p."), "{letter}");
    let (status, replay) = app.send(Method::POST, &format!("/v1/dlq/{}/replay", letter["seq"]), "").await;
    assert_eq!((status.as_u16(), replay["subject"].as_str()), (202, Some("price.BAD")), "{replay}");
    app.settled().await;
    let (_, body) = app.get("/v1/dlq?limit=100").await;
    assert_eq!(body["dead_letters"].as_array().unwrap().len(), 2, "the replay was processed again: {body}");
}

/// An event as large as the server takes, refused with a reason quoting all of it, is still
/// dead-lettered: the reason is cut and the original, too large to go beside the letter's headers, is left
/// out (its payload's size noted); replay reads payload and headers from the original stream, and says
/// 410 once it is gone there.
/// (Such a letter used to fail to publish on every delivery: nak'ed, redelivered, the consumer paused each
/// time, for ever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_too_large_for_its_payload_keeps_its_reason_and_replays_from_the_original() {
    let app = spawn_app().await;
    let max = app.js().client().max_payload();
    let payload = price_as_long_text(max - 298);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-Origin", "the test");
    let original = app
        .js()
        .publish_with_headers("price.BIG", headers, payload.clone().into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    app.publish_plain("price.GOOD", r#"{"ts":1767225600000,"price":5}"#).await;
    app.settled().await;

    let letter = app.only_dead_letter().await;
    assert_eq!(letter["original_seq"], original, "{letter:.300}");
    assert_eq!(letter["payload"], "");
    assert_eq!(letter["payload_omitted"], payload.len());
    assert_eq!(letter["headers"], serde_json::json!({}), "the original's headers are left out too");
    let reason = letter["reason"].as_str().unwrap();
    assert!(reason.contains("invalid type: string \"xxx") && reason.ends_with("…(cut)"), "{reason:.300}");
    assert!(reason.len() <= tributary_broker::dlq::MAX_REASON + 16);
    let (_, good) = app.get("/v1/series/price/GOOD").await;
    assert_eq!(good["points"].as_array().unwrap().len(), 1, "the consumer went on: {good}");

    let seq = letter["seq"].as_u64().unwrap();
    let (status, replay) = app.send(Method::POST, &format!("/v1/dlq/{seq}/replay"), "").await;
    assert_eq!(status, 202, "{replay}");
    let prices = app.js().get_stream("PRICES").await.unwrap();
    let m = prices.get_raw_message(replay["seq"].as_u64().unwrap()).await.unwrap();
    assert_eq!((m.subject.as_str(), &m.payload[..]), ("price.BIG", &payload[..]));
    let header = |k: &str| m.headers.get(k).map(|v| v.as_str().to_owned());
    assert_eq!(header("X-Origin").as_deref(), Some("the test"), "the original's headers, from the original");
    assert_eq!(header("Nats-Msg-Id"), Some(format!("replay:{seq}")));
    assert!(m.headers.iter().all(|(k, _)| !k.to_string().starts_with("Tributary-Dlq-")), "{:?}", m.headers);

    // Asked again, the replay is the first one, the original gone meanwhile or not.
    prices.delete_message(original).await.unwrap();
    let (status, again) = app.send(Method::POST, &format!("/v1/dlq/{seq}/replay"), "").await;
    assert_eq!((status.as_u16(), &again["duplicate"], &again["seq"]), (202, &json!(true), &replay["seq"]), "{again}");

    // A letter whose original is gone before its first replay: 410.
    let original = app.js().publish("price.BIG", payload.into()).await.unwrap().await.unwrap().sequence;
    app.settled().await;
    let (_, body) = app.get("/v1/dlq?limit=100").await;
    let letter = body["dead_letters"].as_array().unwrap().iter().find(|l| l["original_seq"] == original).cloned();
    let seq = letter.unwrap_or_else(|| panic!("no letter of {original}: {body:.300}"))["seq"].as_u64().unwrap();
    prices.delete_message(original).await.unwrap();
    let (status, body) = app.send(Method::POST, &format!("/v1/dlq/{seq}/replay"), "").await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (410, Some("gone")), "{body}");
}

/// An original that fit the server only just, without headers, is dead-lettered (left out of its letter);
/// its replay, which must carry an idempotency key, no longer fits: a 413 naming the sizes, not a 503 saying
/// NATS is unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_no_longer_fits_the_server_is_a_413_naming_the_sizes() {
    let app = spawn_app().await;
    let max = app.js().client().max_payload();
    app.js().publish("price.EDGE", price_as_long_text(max - 14).into()).await.unwrap().await.unwrap();
    app.settled().await;
    let letter = app.only_dead_letter().await;
    assert_eq!(letter["payload_omitted"], max - 14, "{letter:.300}");

    let seq = letter["seq"].as_u64().unwrap();
    let (status, body) = app.send(Method::POST, &format!("/v1/dlq/{seq}/replay"), "").await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (413, Some("exceeds_max_payload")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("dead letter {seq}")) && message.contains(&max.to_string()), "{message}");
}

/// A price event of `len` bytes whose price is a string of x's: it decodes, and is refused as invalid
/// with a reason that quotes the whole string.
fn price_as_long_text(len: usize) -> Vec<u8> {
    let mut payload = br#"{"ts":"2026-01-02","price":""#.to_vec();
    payload.resize(len - 2, b'x');
    payload.extend_from_slice(br#""}"#);
    payload
}

/// A listing carries at most `dlq::LIST_PAYLOAD_BUDGET` (4 MiB) of payloads, newest first; older letters
/// past it come without theirs, their size in `payload_omitted`. A page of letters as large as the server
/// takes was built whole, up to a gigabyte for `limit=1000`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_of_large_letters_stays_within_its_payload_budget() {
    let app = spawn_app().await;
    let size = 700_000;
    for _ in 0..8 {
        app.js().publish("price.LARGE", price_as_long_text(size).into()).await.unwrap().await.unwrap();
    }
    app.settled().await;
    let (status, body) = app.get("/v1/dlq?limit=10").await;
    assert_eq!(status, 200);
    let letters = body["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 8);
    let kept = tributary_broker::dlq::LIST_PAYLOAD_BUDGET / size;
    for (i, l) in letters.iter().enumerate() {
        let payload = l["payload"].as_str().unwrap();
        if i < kept {
            assert_eq!((payload.len(), &l["payload_omitted"]), (size, &serde_json::Value::Null), "letter {i}");
        } else {
            assert_eq!((payload.len(), l["payload_omitted"].as_u64()), (0, Some(size as u64)), "letter {i}");
        }
    }
    // Replay still has the whole original.
    let seq = letters[7]["seq"].as_u64().unwrap();
    let (status, replay) = app.send(Method::POST, &format!("/v1/dlq/{seq}/replay"), "").await;
    assert_eq!(status, 202, "{replay}");
    let prices = app.js().get_stream("PRICES").await.unwrap();
    assert_eq!(prices.get_raw_message(replay["seq"].as_u64().unwrap()).await.unwrap().payload.len(), size);
}

/// A replay asked again after the duplicate window is still the first replay: its idempotency key alone
/// held for the window, after which the old event was stored again, over whatever had corrected it. Dead
/// letters are kept whatever the events' `max_age` (they went with the events, unread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_is_replayed_once_however_long_after_it_is_asked_again() {
    let app = spawn_app_with(|c| {
        c.streams.duplicate_window_secs = 1;
        c.streams.max_age_secs = 3600;
    })
    .await;
    for (name, kept) in [("PRICES", 3600), ("DLQ", 0)] {
        let mut stream = app.js().get_stream(name).await.unwrap();
        assert_eq!(stream.info().await.unwrap().config.max_age.as_secs(), kept, "{name}");
    }

    app.publish_plain("index.broken", r#"{"weights":{}}"#).await;
    app.settled().await;
    let seq = app.only_dead_letter().await["seq"].as_u64().unwrap();
    let (status, first) = app.send(Method::POST, &format!("/v1/dlq/{seq}/replay"), "").await;
    assert_eq!((status.as_u16(), &first["duplicate"]), (202, &json!(false)), "{first}");
    // Past the duplicate window: the time itself is what is tested.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (status, again) = app.send(Method::POST, &format!("/v1/dlq/{seq}/replay"), "").await;
    assert_eq!((status.as_u16(), &again["duplicate"], &again["seq"]), (202, &json!(true), &first["seq"]), "{again}");
    let mut indices = app.js().get_stream("INDICES").await.unwrap();
    assert_eq!(indices.info().await.unwrap().state.messages, 2, "the original and one replay");
}

/// A letter whose subject is no event subject (one of more tokens, stored before partitions; or a message
/// published to `dlq.` by hand) is refused with a 409 naming why: republished, it is refused again or finds
/// no stream, which was a 503 a client would retry for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_no_stream_would_take_is_not_replayable() {
    let app = spawn_app().await;
    app.js().publish("dlq.nope.x", b"{}".to_vec().into()).await.unwrap().await.unwrap();
    let letter = app.only_dead_letter().await;
    let (status, body) = app.send(Method::POST, &format!("/v1/dlq/{}/replay", letter["seq"]), "").await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (409, Some("not_replayable")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("\"nope.x\""), "{body}");
}

/// A listing counts the letters' headers against its budget too (a page of letters with large headers and
/// small payloads was built whole: 6 MB for these, 64 MB for a page of 1,000), and pages back with
/// `before`. An original's own
/// `Tributary-Dlq-*` headers are not taken for the letter's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_counts_headers_pages_back_and_ignores_an_originals_letter_headers() {
    let app = spawn_app().await;
    let mut big = async_nats::HeaderMap::new();
    big.insert("X-Pad", "x".repeat(60_000).as_str()); // JetStream takes at most 64 KiB of headers
    for _ in 0..100 {
        app.js().publish_with_headers("price.HDR", big.clone(), b"{}".to_vec().into()).await.unwrap().await.unwrap();
    }
    let mut posing = async_nats::HeaderMap::new();
    posing.insert("Tributary-Dlq-Payload-Omitted", "0");
    app.js()
        .publish_with_headers("price.POSE", posing, br#"{"price":-1}"#.to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
    app.settled().await;

    let r = app.http.get(format!("{}/v1/dlq?limit=1000", app.base)).send().await.unwrap();
    let text = r.text().await.unwrap();
    assert!(text.len() < (4 << 20) + 200_000, "a listing of {} bytes", text.len());
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    let letters = body["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 101);
    let posing = letters.iter().find(|l| l["subject"] == "price.POSE").unwrap();
    assert!(posing["payload_omitted"].is_null(), "{posing}");
    assert_eq!(
        (posing["payload"].as_str(), posing["headers"].as_object().map(|h| h.len())),
        (Some(r#"{"price":-1}"#), Some(0))
    );

    // Page by page, one letter each, back to the first.
    let (mut seen, mut before) = (Vec::new(), None::<u64>);
    loop {
        let path = match before {
            Some(b) => format!("/v1/dlq?limit=1&before={b}"),
            None => "/v1/dlq?limit=1".to_owned(),
        };
        let (_, page) = app.get(&path).await;
        let Some(l) = page["dead_letters"].as_array().unwrap().first().cloned() else { break };
        before = l["seq"].as_u64();
        seen.push(before.unwrap());
    }
    let all: Vec<u64> = letters.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seen, all);
    // As the schema says: 1 to 2^63 - 1 (found by scripts/fuzz-api.sh: 2^63 was taken).
    for bad in ["0", "9223372036854775808", "x"] {
        let (status, body) = app.get(&format!("/v1/dlq?before={bad}")).await;
        assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (400, Some("invalid_before")), "{bad}: {body}");
    }
}
