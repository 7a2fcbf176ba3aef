//! The consume loop against a private nats-server.

use async_nats::jetstream::{self, stream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tributary_broker::consume::{self, BatchHandler, ConsumerSpec, Delivery, HandleError};
use tributary_broker::{Rejection, ts::Ts};
use tributary_testkit::NatsServer;

/// Counts what it is handed and takes `slow` over its first batch.
#[derive(Clone)]
struct Slow {
    handled: Arc<AtomicUsize>,
    slow: Duration,
}

impl BatchHandler for Slow {
    type Event = ();

    fn decode(&self, _: &str, _: Option<&async_nats::HeaderMap>, _: &[u8], _: Ts) -> Result<(), Rejection> {
        Ok(())
    }

    async fn handle(&self, batch: &[Delivery<()>]) -> Result<(), HandleError> {
        if self.handled.fetch_add(batch.len(), Ordering::SeqCst) == 0 {
            tokio::time::sleep(self.slow).await;
        }
        Ok(())
    }
}

/// A batch that takes three times `ack_wait` to store is reported in progress, so JetStream does not
/// deliver it again meanwhile: every message is handled once and acked.
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
    let handler = Slow { handled: Arc::default(), slow: ack_wait * 3 };
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(consume::run(js.clone(), spec, handler.clone(), shutdown.clone()));

    let deadline = Instant::now() + Duration::from_secs(30);
    let info = loop {
        // Not found until the loop has created the consumer.
        if let Ok(info) = js.get_stream("SLOW").await.unwrap().consumer_info("slow").await {
            let info = info.clone();
            if info.ack_floor.stream_sequence == n || Instant::now() > deadline {
                break info;
            }
        }
        assert!(Instant::now() < deadline, "no consumer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    shutdown.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(info.ack_floor.stream_sequence, n, "every message acked: {info:?}");
    assert_eq!(info.num_redelivered, 0, "{info:?}");
    assert_eq!(handler.handled.load(Ordering::SeqCst), n as usize);
}
