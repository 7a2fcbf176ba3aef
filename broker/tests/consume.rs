//! The consume loop against a private nats-server.

use async_nats::jetstream::{self, stream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tributary_broker::consume::{self, BatchHandler, ConsumerSpec, Delivery, HandleError};
use tributary_broker::{Rejection, ts::Ts};
use tributary_testkit::NatsServer;

/// Records the stream sequences of every batch it is handed and takes `slow` over its first batch.
#[derive(Clone)]
struct Slow {
    batches: Arc<Mutex<Vec<Vec<u64>>>>,
    slow: Duration,
}

impl BatchHandler for Slow {
    type Event = ();

    fn decode(&self, _: &str, _: Option<&async_nats::HeaderMap>, _: &[u8], _: Ts) -> Result<(), Rejection> {
        Ok(())
    }

    async fn handle(&self, batch: &[Delivery<()>]) -> Result<(), HandleError> {
        let first = {
            let mut batches = self.batches.lock().unwrap();
            batches.push(batch.iter().map(|d| d.seq).collect());
            batches.len() == 1
        };
        if first {
            tokio::time::sleep(self.slow).await;
        }
        Ok(())
    }
}

/// A batch that takes three times `ack_wait` to store is reported in progress, so JetStream does not
/// deliver its messages again meanwhile. (Messages fetched behind it, not yet in a batch, may time out
/// and come again: they are not asserted on.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_slower_than_ack_wait_is_not_delivered_twice() {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.create_stream(stream::Config { name: "SLOW".into(), subjects: vec!["slow.>".into()], ..Default::default() })
        .await
        .unwrap();
    let n = 20;
    for i in 0..n {
        js.publish(format!("slow.{i}"), "x".into()).await.unwrap().await.unwrap();
    }
    let ack_wait = Duration::from_secs(1);
    let spec = ConsumerSpec {
        stream: "SLOW".into(),
        durable: "slow".into(),
        filter_subject: "slow.>".into(),
        batch: 100,
        ack_wait,
        max_ack_pending: 1000,
        label: "slow",
    };
    let handler = Slow { batches: Arc::default(), slow: ack_wait * 3 };
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(consume::run(js.clone(), spec, handler.clone(), shutdown.clone()));

    // Every message acked (the consumer exists once the loop has created it).
    let deadline = Instant::now() + Duration::from_secs(30);
    let stream = js.get_stream("SLOW").await.unwrap();
    while stream.consumer_info("slow").await.map_or(0, |i| i.ack_floor.stream_sequence) < n {
        assert!(Instant::now() < deadline, "not every message was acked within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    run.await.unwrap().unwrap();
    let batches = handler.batches.lock().unwrap().clone();
    let (first, later) = batches.split_first().expect("a batch");
    assert!(!first.is_empty());
    for seq in first {
        assert!(!later.iter().flatten().any(|s| s == seq), "message {seq} of the slow batch came again: {batches:?}");
    }
}
