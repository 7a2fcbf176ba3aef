//! The publisher against a private nats-server.

mod common;

use async_nats::HeaderMap;
use std::time::Duration;
use tributary_broker::Publisher;

/// Publishers sharing a client never wait on each other's acks: two of them at once, each allowed more
/// acks in flight than the client's cap, both store everything. (A publisher waiting for the client to
/// let it send used to stop collecting its own acks, which is what frees the client's slots: two uploads
/// at once in the API, or one simulator with `max_in_flight` over 5,000, hung for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_sharing_a_client_past_its_ack_cap_all_finish() {
    let (_nats, js) = common::setup_capped(&[], Some(16)).await;
    let n = 3000u64;
    let publishers = ["a", "b"].map(|name| {
        let js = js.clone();
        tokio::spawn(async move {
            let mut p = Publisher::new(js, 64);
            for i in 0..n {
                p.publish_raw(format!("t.{name}"), HeaderMap::new(), i.to_string().into()).await;
            }
            p.finish().await
        })
    });
    let reports = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(publishers))
        .await
        .expect("the publishers waited on each other for a minute");
    let state = js.get_stream("T").await.unwrap().get_info().await.unwrap().state;
    assert_eq!(state.messages, 2 * n);
    let mut lasts = Vec::new();
    for r in reports {
        let r = r.unwrap();
        assert_eq!((r.stored, r.duplicates, r.failed.len()), (n, 0, 0), "{r:?}");
        assert_eq!(r.last.keys().collect::<Vec<_>>(), ["T"], "{:?}", r.last);
        lasts.push(r.last["T"]);
    }
    // Each names the highest sequence its own publishes got: the stream's last is one of them.
    assert!(lasts.iter().all(|l| *l >= n) && lasts.contains(&state.last_sequence), "{lasts:?} {state:?}");
}

/// A publisher whose owner waits on something else (its input: an upload's client pausing) collects its
/// acks meanwhile, through [`Publisher::settling`], so what it has in flight does not keep the client's
/// slots taken for as long as the wait lasts: every slot of the client is free while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_waiting_on_its_input_holds_none_of_the_clients_slots() {
    let (_nats, js) = common::setup_capped(&[], Some(16)).await;
    let (resume, paused) = tokio::sync::oneshot::channel::<()>();
    let (sent, all_sent) = tokio::sync::oneshot::channel::<()>();
    let publisher = tokio::spawn({
        let js = js.clone();
        async move {
            let mut p = Publisher::new(js, 64);
            for i in 0..10u64 {
                p.publish_raw("t.a".into(), HeaderMap::new(), i.to_string().into()).await;
            }
            sent.send(()).unwrap();
            // The last publish at least is still in flight here: its ack is collected only while waiting.
            p.settling(paused).await.unwrap();
            p.finish().await
        }
    });
    all_sent.await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), js.wait_for_acks())
        .await
        .expect("a publisher waiting on its input kept the client's slots");
    resume.send(()).unwrap();
    let r = publisher.await.unwrap();
    assert_eq!((r.stored, r.failed.len()), (10, 0), "{r:?}");
}

/// A publisher keeps at most `max_bytes` of payloads awaiting their acks. While NATS is away its keyed
/// publishes wait in the pipeline with their payloads (to be sent again), and `max_in_flight` of them
/// (an upload's 4,096 lines of up to 1 MiB each) held gigabytes; past the bound a publish now waits for
/// an earlier one to settle. Every publish is still accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_holds_at_most_its_bytes_while_nats_is_away() {
    let (mut nats, js) = common::setup(&[]).await;
    nats.stop();
    let mut p = Publisher::new(js, 4096).max_bytes(1 << 20).retry_for(Duration::from_millis(500));
    let payload = bytes::Bytes::from(vec![b'x'; 100 << 10]);
    let mut peak = 0;
    for i in 0..30 {
        let headers = tributary_broker::publish::headers(Some(&format!("m{i}")), "application/octet-stream");
        p.publish_raw("t.a".into(), headers, payload.clone()).await;
        peak = peak.max(p.bytes_in_flight());
    }
    let report = p.finish().await;
    assert!(peak <= 1 << 20, "{peak} bytes of payloads held at once");
    assert_eq!((report.stored, report.failed.len()), (0, 30), "every publish accounted for: {report:?}");
}
