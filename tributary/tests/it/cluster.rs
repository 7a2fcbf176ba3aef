//! A three-node NATS JetStream cluster on loopback (streams with 3 replicas): one node is killed
//! mid-ingest and restarted; nothing is lost and every derived value equals the batch computation.

use crate::common::spawn_app_at;
use crate::differential::{Raw, verify};
use chrono::{Duration, TimeZone, Utc};
use std::collections::HashMap;
use tributary_broker::events::PriceEvent;
use tributary_broker::ts::Ts;
use tributary_broker::{codec, publish};
use tributary_testkit::NatsCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_ingest_loses_nothing() {
    let mut cluster = NatsCluster::start(3);
    let app = spawn_app_at(cluster.url(), None, |c| {
        c.streams.replicas = 3;
    })
    .await;
    let js = app.js();
    let day0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let mut raw: Raw = HashMap::new();
    let (instruments, days) = (8, 120);
    let mut retries = 0;
    for d in 0..days {
        if d == 40 {
            cluster.node(1).stop(); // SIGKILL, mid-ingest
        }
        if d == 80 {
            cluster.node(1).restart();
        }
        for i in 0..instruments {
            let (subject, ts) = (format!("price.C{i}"), day0 + Duration::days(d));
            let price = 100.0 + (d * 7 + i * 13) as f64 % 17.0;
            let payload = codec::to_msgpack(&PriceEvent { ts: Some(Ts(ts)), price, volume: None });
            // Retried until acknowledged: the idempotency key keeps a retried publish from being stored
            // twice, and the ack's sequence is the one the processor sees.
            let key = format!("{subject}:{d}");
            let seq = loop {
                let headers = publish::headers(Some(&key), codec::MSGPACK);
                match publish::publish_one(&js, subject.clone(), headers, payload.clone()).await {
                    Ok(ack) => break ack.sequence,
                    Err(e) => {
                        retries += 1;
                        assert!(retries < 2000, "publishing never recovered: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            };
            raw.insert((format!("C{i}"), ts), (seq, price));
        }
    }
    eprintln!("published {} prices with {retries} retried publishes", raw.len());
    app.settled().await;
    verify(&app, &raw, &HashMap::new()).await;
    let info = app.c.js.get_stream("PRICES").await.unwrap().cached_info().clone();
    assert_eq!(info.config.num_replicas, 3);
    assert_eq!(info.state.messages, (instruments * days) as u64, "every acknowledged publish stored once");
    // The crash records as replicated as the streams they keep records of (a bucket of one: a node lost
    // took them).
    let mut records = app.c.js.get_stream("KV_TRIBUTARY_ATTEMPTS").await.unwrap();
    assert_eq!(records.info().await.unwrap().config.num_replicas, 3);
}
