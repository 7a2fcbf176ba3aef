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

/// The pin the server holds for a pinned consumer's group, if any.
async fn pinned_to(js: &jetstream::Context) -> Option<String> {
    let mut c: jetstream::consumer::PullConsumer = js.get_stream("T").await.unwrap().get_consumer("t").await.unwrap();
    let info = c.info().await.unwrap();
    info.priority_groups.iter().find(|g| g.group == tributary_broker::group::PRIORITY_GROUP)?.pinned_client_id.clone()
}

/// A loop that stops without ever holding the pin (its pulls waited behind another process's) leaves
/// the holder's pin alone. It released whatever pin there was, taking the partition from the process
/// that had it to whichever pull came next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_that_never_held_the_pin_leaves_the_holders_alone() {
    let (_nats, js) = setup(&["a".to_owned()]).await;
    let pinned = ConsumerSpec { pinned: Some(Duration::from_secs(60)), ..spec() };
    let holder = Scripted::new(|_, _| Act::Commit);
    let stop_holder = CancellationToken::new();
    let holding = tokio::spawn(consume::run(js.clone(), pinned.clone(), holder.clone(), stop_holder.clone()));
    until("the holder to commit a", async || holder.committed() == ["a"]).await;
    let pin = pinned_to(&js).await.expect("the holder is pinned");

    let waiter = Scripted::new(|_, _| Act::Commit);
    let stop_waiter = CancellationToken::new();
    let waiting = tokio::spawn(consume::run(js.clone(), pinned, waiter.clone(), stop_waiter.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await; // its pulls wait for the pin
    stop_waiter.cancel();
    waiting.await.unwrap().unwrap();
    assert_eq!(pinned_to(&js).await, Some(pin), "the holder keeps its pin");

    js.publish("t.b", "b".into()).await.unwrap().await.unwrap();
    until("the holder to commit b", async || holder.committed() == ["a", "b"]).await;
    stop_holder.cancel();
    holding.await.unwrap().unwrap();
    assert!(waiter.committed().is_empty(), "{:?}", waiter.committed());
    assert_eq!(pinned_to(&js).await, None, "the holder released its pin when it stopped");
}
