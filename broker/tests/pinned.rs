//! Pinned consumers (the processor group's partitions) in the consume loop, against a private
//! nats-server.

mod common;

use async_nats::jetstream;
use common::{Act, Scripted, setup, spec, until};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tributary_broker::consume::{self, ConsumeError, ConsumerSpec};
use tributary_testkit::NatsServer;

/// A consume loop on `spec` that commits everything it is given, until [`Loop::stop`].
struct Loop {
    handler: Scripted,
    stop: CancellationToken,
    run: JoinHandle<Result<(), ConsumeError>>,
}

impl Loop {
    fn start(js: &jetstream::Context, spec: ConsumerSpec) -> Loop {
        let (handler, stop) = (Scripted::new(|_, _| Act::Commit), CancellationToken::new());
        let run = tokio::spawn(consume::run(js.clone(), spec, handler.clone(), stop.clone()));
        Loop { handler, stop, run }
    }

    fn committed(&self) -> Vec<String> {
        self.handler.committed()
    }

    /// Stops it (what is in flight is finished first) and checks it ended well.
    async fn stop(self) -> Scripted {
        self.stop.cancel();
        self.run.await.unwrap().unwrap();
        self.handler
    }
}

/// A private server whose stream holds one message, `a`, and a loop on a pinned consumer of it (pins
/// lapsing after 60 s, longer than any test waits) that has committed `a`: it holds the pin.
async fn holding_a() -> (NatsServer, jetstream::Context, ConsumerSpec, Loop) {
    let (nats, js) = setup(&["a".to_owned()]).await;
    let pinned = ConsumerSpec { pinned: Some(Duration::from_secs(60)), ..spec() };
    let holder = Loop::start(&js, pinned.clone());
    until("the loop to commit a", async || holder.committed() == ["a"]).await;
    (nats, js, pinned, holder)
}

/// A pinned consumer's loop releases its pin when it stops, and the next loop on it (another process
/// taking the partition over) is delivered to at once, not after the pin's timeout (60 s here). Messages
/// the first loop had fetched and not started are given back, not left to `ack_wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_pinned_loop_hands_its_partition_over_at_once() {
    let (_nats, js, pinned, first) = holding_a().await;
    let first = first.stop().await;

    let next = Loop::start(&js, pinned);
    js.publish("t.b", "b".into()).await.unwrap().await.unwrap();
    until("the next loop to commit b", async || next.committed() == ["b"]).await;
    next.stop().await;
    assert_eq!(first.committed(), ["a"], "the first loop took nothing after it stopped");
}

/// A consumer made before the processor group existed (no priority group: an earlier release's
/// partition consumer) is updated in place when a pinned loop opens it, keeping its position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpinned_consumer_from_before_becomes_pinned_where_it_was() {
    let (_nats, js) = setup(&["a".to_owned()]).await;
    let before = Loop::start(&js, spec());
    until("the unpinned loop to commit a", async || before.committed() == ["a"]).await;
    before.stop().await;

    js.publish("t.b", "b".into()).await.unwrap().await.unwrap();
    let after = Loop::start(&js, ConsumerSpec { pinned: Some(Duration::from_secs(5)), ..spec() });
    until("the pinned loop to commit b", async || after.committed() == ["b"]).await;
    after.stop().await;
    let mut c: jetstream::consumer::PullConsumer = js.get_stream("T").await.unwrap().get_consumer("t").await.unwrap();
    let info = c.info().await.unwrap();
    assert_eq!(info.config.priority_policy, jetstream::consumer::PriorityPolicy::PinnedClient, "{info:?}");
}

/// How many pull requests wait on the consumer.
async fn waiting_pulls(js: &jetstream::Context) -> usize {
    let mut c: jetstream::consumer::PullConsumer = js.get_stream("T").await.unwrap().get_consumer("t").await.unwrap();
    c.info().await.unwrap().num_waiting
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
    let (_nats, js, pinned, holder) = holding_a().await;
    let pin = pinned_to(&js).await.expect("the holder is pinned");

    let waiter = Loop::start(&js, pinned);
    until("the waiter's pull to wait beside the holder's", async || waiting_pulls(&js).await >= 2).await;
    let waiter = waiter.stop().await;
    assert_eq!(pinned_to(&js).await, Some(pin), "the holder keeps its pin");

    js.publish("t.b", "b".into()).await.unwrap().await.unwrap();
    until("the holder to commit b", async || holder.committed() == ["a", "b"]).await;
    holder.stop().await;
    assert!(waiter.committed().is_empty(), "{:?}", waiter.committed());
    assert_eq!(pinned_to(&js).await, None, "the holder released its pin when it stopped");
}

/// How many different messages these lists of committed payloads hold between them.
fn distinct(committed: &[Vec<String>]) -> usize {
    committed.iter().flatten().collect::<std::collections::BTreeSet<_>>().len()
}

/// A spec whose pins lapse after 1 s and whose unacknowledged messages would come back only after 10
/// minutes, far past any wait here: what a next owner gets, it gets from the reset.
fn pinned_no_redelivery() -> ConsumerSpec {
    ConsumerSpec { pinned: Some(Duration::from_secs(1)), ack_wait: Duration::from_secs(600), ..spec() }
}

/// Runs a loop on `spec` with `handler` until it holds `n` messages unacknowledged, then kills it: its
/// units are dropped mid-work, nothing acked, as when the process dies (its pin lapses after 1 s).
async fn die_holding(js: &jetstream::Context, spec: ConsumerSpec, handler: Scripted, n: usize) {
    let run = tokio::spawn(consume::run(js.clone(), spec, handler.clone(), CancellationToken::new()));
    until("the owner to hold its messages", async || {
        let info = js.get_stream("T").await.unwrap().consumer_info("t").await;
        !handler.tries.lock().unwrap().is_empty() && info.is_ok_and(|i| i.num_ack_pending >= n)
    })
    .await;
    run.abort();
    let _ = run.await;
}

/// A partition whose owner died holding messages, under a backlog that fills `max_ack_pending`: the
/// server delivers nothing more until those come back, which was `ack_wait` later (10 minutes here). The
/// next owner resets the consumer to its ack floor once the dead owner's pin has lapsed, and stores
/// everything at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_owner_of_a_partition_gets_what_a_dead_owner_held_at_once() {
    let all = common::payloads(30);
    let (_nats, js) = setup(&all).await;
    let spec = ConsumerSpec { max_ack_pending: 10, batch: 10, ..pinned_no_redelivery() };
    let hung = Scripted::new(|_, _| Act::Sleep(Duration::from_secs(3600)));
    die_holding(&js, spec.clone(), hung, 10).await;

    let next = Loop::start(&js, spec);
    until("the next owner to commit every message", async || distinct(&[next.committed()]) == 30).await;
    next.stop().await;
}

/// A message that kills its owner, given back by the next owner's reset, comes with a delivery count of
/// 1, like a new one; it is a suspect all the same, so it is narrowed down over the deaths and
/// dead-lettered rather than killing every owner in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_given_back_by_a_reset_that_kills_its_owner_is_still_dead_lettered() {
    let mut all = common::payloads(40);
    all[13] = "crash".into();
    let (_nats, js) = setup(&all).await;
    let spec = ConsumerSpec { batch: 8, max_failures: 2, ..pinned_no_redelivery() };
    let handler = Scripted::new(|p, _| match p {
        "crash" => Act::Sleep(Duration::from_secs(3600)),
        _ => Act::Commit,
    });
    let crashing = |h: &Scripted| h.tries.lock().unwrap().get(&14).copied().unwrap_or(0);
    let mut deaths = 0;
    while common::dead_letters(&js).await.is_empty() {
        let before = crashing(&handler);
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(consume::run(js.clone(), spec.clone(), handler.clone(), shutdown.clone()));
        // Dies on the crashing message, or dead-letters it without trying it.
        until("the owner to take the crashing message or dead-letter it", async || {
            crashing(&handler) > before || !common::dead_letters(&js).await.is_empty()
        })
        .await;
        if crashing(&handler) > before {
            run.abort();
            let _ = run.await;
            deaths += 1;
            assert!(deaths <= 8, "still dying after {deaths} deaths");
        } else {
            shutdown.cancel();
            run.await.unwrap().unwrap();
        }
    }
    let letters = common::dead_letters(&js).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!((letters[0].0.as_str(), letters[0].1.as_str()), ("t.crash", consume::PROCESSING_FAILED));
    assert!(letters[0].2.contains("stopped 2 times"), "{letters:?}");
    let last = Loop::start(&js, spec);
    until("every other message to be committed", async || distinct(&[handler.committed(), last.committed()]) == 39)
        .await;
    last.stop().await;
}

/// Messages a handed-over loop had been delivered but never read (still in its pull subscription when it
/// stopped) come to the next owner at once: it resets the consumer once the pin is released. They came
/// only after `ack_wait` (10 minutes here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_handed_over_loop_had_not_read_comes_to_the_next_owner_at_once() {
    let all = common::payloads(200);
    let (_nats, js) = setup(&all).await;
    let spec = ConsumerSpec { batch: 5, lanes: 2, ..pinned_no_redelivery() };
    // Slow, so that its pull subscription holds messages it has not read when it stops.
    let slow = Scripted::new(|_, _| Act::Sleep(Duration::from_millis(300)));
    let stop = CancellationToken::new();
    let first = tokio::spawn(consume::run(js.clone(), spec.clone(), slow.clone(), stop.clone()));
    until("the first loop to commit some", async || slow.committed().len() >= 20).await;
    stop.cancel();
    first.await.unwrap().unwrap();

    let next = Loop::start(&js, spec);
    until("every message committed by one loop or the other", async || {
        distinct(&[slow.committed(), next.committed()]) == 200
    })
    .await;
    next.stop().await;
}
