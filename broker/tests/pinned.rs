//! Pinned consumers (the processor group's partitions) in the consume loop, against a private
//! nats-server.

mod common;

use async_nats::jetstream;
use common::{Act, Scripted, setup, spec, until};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tributary_broker::consume::{self, ConsumerSpec};

/// A pinned consumer's loop releases its pin when it stops, and the next loop on it (another process
/// taking the partition over) is delivered to at once, not after the pin's timeout (60 s here). Messages
/// the first loop had fetched and not started are given back, not left to `ack_wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_pinned_loop_hands_its_partition_over_at_once() {
    let (_nats, js) = setup(&["a".to_owned()]).await;
    let pinned = ConsumerSpec { pinned: Some(Duration::from_secs(60)), ..spec() };
    let first = Scripted::new(|_, _| Act::Commit);
    let stop = CancellationToken::new();
    let run = tokio::spawn(consume::run(js.clone(), pinned.clone(), first.clone(), stop.clone()));
    until("the first loop to commit a", async || first.committed() == ["a"]).await;
    stop.cancel();
    run.await.unwrap().unwrap();

    let next = Scripted::new(|_, _| Act::Commit);
    let stop = CancellationToken::new();
    let run = tokio::spawn(consume::run(js.clone(), pinned, next.clone(), stop.clone()));
    js.publish("t.b", "b".into()).await.unwrap().await.unwrap();
    until("the next loop to commit b", async || next.committed() == ["b"]).await;
    stop.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(first.committed(), ["a"], "the first loop took nothing after it stopped");
}

/// A consumer made before the processor group existed (no priority group: an earlier release's
/// partition consumer) is updated in place when a pinned loop opens it, keeping its position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpinned_consumer_from_before_becomes_pinned_where_it_was() {
    let (_nats, js) = setup(&["a".to_owned()]).await;
    let before = Scripted::new(|_, _| Act::Commit);
    let stop = CancellationToken::new();
    let run = tokio::spawn(consume::run(js.clone(), spec(), before.clone(), stop.clone()));
    until("the unpinned loop to commit a", async || before.committed() == ["a"]).await;
    stop.cancel();
    run.await.unwrap().unwrap();

    js.publish("t.b", "b".into()).await.unwrap().await.unwrap();
    let after = Scripted::new(|_, _| Act::Commit);
    let stop = CancellationToken::new();
    let pinned = ConsumerSpec { pinned: Some(Duration::from_secs(5)), ..spec() };
    let run = tokio::spawn(consume::run(js.clone(), pinned, after.clone(), stop.clone()));
    until("the pinned loop to commit b", async || after.committed() == ["b"]).await;
    stop.cancel();
    run.await.unwrap().unwrap();
    let mut c: jetstream::consumer::PullConsumer = js.get_stream("T").await.unwrap().get_consumer("t").await.unwrap();
    let info = c.info().await.unwrap();
    assert_eq!(info.config.priority_policy, jetstream::consumer::PriorityPolicy::PinnedClient, "{info:?}");
}
