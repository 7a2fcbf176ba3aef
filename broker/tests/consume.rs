//! The consume loop against a private nats-server.

mod common;

use common::{Act, Scripted, ack_floor, dead_letters, payloads, setup, setup_capped, spec, until};

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
        max_failures: 5,
        lanes: 3,
        transient: |_| false,
        lasting: |_| false,
        own: |_| false,
        settled: None,
        pinned: None,
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

/// A message that always fails is isolated from its batch and dead-lettered as `processing_failed` with
/// the error; every other message commits. A message that panics the handler is treated the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_with_its_error_and_the_rest_commit() {
    let mut all = payloads(60);
    all[17] = "poison".into();
    all[42] = "panic".into();
    let (_nats, js) = setup(&all).await;
    let handler = Scripted::new(|p, _| match p {
        "poison" => Act::Fail,
        "panic" => Act::Panic,
        _ => Act::Commit,
    });
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(consume::run(js.clone(), spec(), handler.clone(), shutdown.clone()));
    until("every message acked", async || ack_floor(&js).await >= 60).await;
    let mut committed = handler.committed();
    committed.sort();
    committed.dedup();
    assert_eq!(committed.len(), 58, "{committed:?}");
    let mut letters = dead_letters(&js).await;
    letters.sort();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(letters[0].0, "t.panic");
    assert_eq!(letters[0].1, consume::PROCESSING_FAILED);
    assert!(letters[0].2.contains("scripted panic"), "{letters:?}");
    assert_eq!(letters[1].0, "t.poison");
    assert!(letters[1].2.contains("scripted failure"), "{letters:?}");
    // The poison message was tried alone max_failures times, not forever.
    let tries = handler.tries.lock().unwrap()[&18];
    assert!(tries <= 3 + 16, "tried {tries} times");
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// A message that fails twice and then commits is not dead-lettered; nor is anything when every failure
/// is transient (a database restarting), however long it lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_and_transient_failures_dead_letter_nothing() {
    let (_nats, js) = setup(&payloads(30)).await;
    let started = Instant::now();
    let handler = Scripted::new(move |p, n| {
        if started.elapsed() < Duration::from_secs(2) {
            Act::Transient
        } else if p == "m7" && n <= 2 {
            Act::Fail
        } else {
            Act::Commit
        }
    });
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(consume::run(js.clone(), spec(), handler.clone(), shutdown.clone()));
    until("every message acked", async || ack_floor(&js).await >= 30).await;
    assert!(dead_letters(&js).await.is_empty());
    let mut committed = handler.committed();
    committed.sort();
    committed.dedup();
    assert_eq!(committed.len(), 30);
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// When every message fails (a revoked permission, a missing table), nothing is dead-lettered: the
/// messages are kept, and commit once the cause is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_everything_fails_nothing_is_dead_lettered_and_all_commits_once_fixed() {
    let (_nats, js) = setup(&payloads(40)).await;
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let b = broken.clone();
    let handler =
        Scripted::new(move |_, _| if b.load(std::sync::atomic::Ordering::Relaxed) { Act::Fail } else { Act::Commit });
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(consume::run(js.clone(), spec(), handler.clone(), shutdown.clone()));
    // Every message tried three times: bisected, nak'ed as systemic, and delivered again at least once.
    until("every message tried three times", async || {
        let tries = handler.tries.lock().unwrap();
        tries.len() == 40 && tries.values().all(|n| *n >= 3)
    })
    .await;
    assert!(dead_letters(&js).await.is_empty(), "{:?}", dead_letters(&js).await);
    assert_eq!(ack_floor(&js).await, 0);
    assert!(handler.committed().is_empty());
    broken.store(false, std::sync::atomic::Ordering::Relaxed);
    until("every message acked once fixed", async || ack_floor(&js).await >= 40).await;
    assert!(dead_letters(&js).await.is_empty());
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// A series whose work takes long holds back neither the other series of its batch nor those published
/// after it: they commit and are acked while it is still in flight; its own later events wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_series_does_not_hold_back_the_others() {
    let (_nats, js) = setup(&["slow".to_string()]).await;
    let handler = Scripted::new(|p, _| if p == "slow" { Act::Sleep(Duration::from_secs(8)) } else { Act::Commit });
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(consume::run(js.clone(), spec(), handler.clone(), shutdown.clone()));
    until("the slow series in flight", async || handler.tries.lock().unwrap().contains_key(&1)).await;
    for p in payloads(20) {
        js.publish(format!("t.{p}"), p.into()).await.unwrap().await.unwrap();
    }
    until("the fast series committed", async || handler.committed().len() >= 20).await;
    // Not a timing: the slow series is still in flight, so the others did not wait for it.
    assert!(!handler.committed().contains(&"slow".to_string()), "the others waited for the slow one");
    until("everything acked", async || ack_floor(&js).await >= 21).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// Messages waiting behind a series that is in flight past `ack_wait` are delivered again by JetStream
/// (they get no in-progress acks); each copy was queued beside the one waiting, so a unit of five seconds
/// left about five copies of every message behind it, and each was stored again. Now each is stored once,
/// or twice when a copy crosses its ack (sent before the ack arrived, taken after the unit finished).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_waiting_behind_a_long_unit_are_stored_once() {
    let (_nats, js) = setup(&["slow".to_string()]).await;
    let handler =
        Scripted::new(|p, n| if p == "slow" && n == 1 { Act::Sleep(Duration::from_secs(5)) } else { Act::Commit });
    let shutdown = CancellationToken::new();
    let spec = ConsumerSpec { ack_wait: Duration::from_secs(1), ..spec() };
    let run = tokio::spawn(consume::run(js.clone(), spec, handler.clone(), shutdown.clone()));
    until("the slow message in flight", async || handler.tries.lock().unwrap().contains_key(&1)).await;
    for k in 0..20 {
        js.publish("t.slow", format!("behind {k}").into()).await.unwrap().await.unwrap();
    }
    until("everything acked", async || ack_floor(&js).await >= 21).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    let tries = handler.tries.lock().unwrap().clone();
    let again: Vec<(u64, usize)> =
        (1..=21).map(|s| (s, tries.get(&s).copied().unwrap_or(0))).filter(|t| !(1..=2).contains(&t.1)).collect();
    assert!(again.is_empty(), "(seq, times stored) of the messages stored more than twice, or never: {again:?}");
}

/// A message that kills the process (here the consume loop is dropped mid-work, which drops its units as
/// a crash would: nothing acked, nothing recorded as finished) is narrowed down over the restarts, in
/// ever smaller units of suspects, and dead-lettered once it has stopped the processor `max_failures`
/// times alone; every other message commits, and the restarts end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_kills_the_process_is_dead_lettered_after_a_few_restarts() {
    let mut all = payloads(40);
    all[13] = "crash".into();
    let (_nats, js) = setup(&all).await;
    let crashed = Arc::new(tokio::sync::Notify::new());
    let c = crashed.clone();
    let handler = Scripted::new(move |p, _| {
        if p == "crash" {
            c.notify_one();
            Act::Sleep(Duration::from_secs(3600))
        } else {
            Act::Commit
        }
    });
    let spec = ConsumerSpec { batch: 8, ack_wait: Duration::from_secs(1), max_failures: 2, ..spec() };
    let mut restarts = 0;
    loop {
        let shutdown = CancellationToken::new();
        let mut run = tokio::spawn(consume::run(js.clone(), spec.clone(), handler.clone(), shutdown.clone()));
        let done = async {
            while dead_letters(&js).await.is_empty() || ack_floor(&js).await < 40 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            _ = crashed.notified() => {
                run.abort();
                let _ = (&mut run).await;
                restarts += 1;
                assert!(restarts <= 12, "still crashing after {restarts} restarts");
            }
            _ = done => {
                shutdown.cancel();
                run.await.unwrap().unwrap();
                break;
            }
        }
    }
    let letters = dead_letters(&js).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].0, "t.crash");
    assert_eq!(letters[0].1, consume::PROCESSING_FAILED);
    assert!(letters[0].2.contains("stopped 2 times"), "{letters:?}");
    let mut committed = handler.committed();
    committed.sort();
    committed.dedup();
    assert_eq!(committed.len(), 39, "{committed:?}");
    assert!(restarts >= 2, "{restarts} restarts");
}

/// Crash records the loop could not open when it started (here a stream holds their subjects; NATS
/// restarting as the loop starts does the same) are opened when a suspect comes, once they can be: opened
/// only at the start, they were missing for the loop's whole life, and a message that kills the process
/// would never be dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_records_missing_at_the_start_are_opened_when_a_suspect_comes() {
    use async_nats::jetstream::consumer::pull;
    use futures::StreamExt;
    let (_nats, js) = setup(&["m".to_owned()]).await;
    let block = stream::Config {
        name: "BLOCK".into(),
        subjects: vec!["$KV.TRIBUTARY_ATTEMPTS.>".into()],
        ..Default::default()
    };
    js.create_stream(block).await.unwrap();
    // A delivery never acked, as a process that died holding it leaves: its redelivery is a suspect.
    let spec = ConsumerSpec { ack_wait: Duration::from_secs(3), ..spec() };
    let t = js.get_stream("T").await.unwrap();
    let config = pull::Config {
        durable_name: Some("t".into()),
        filter_subject: "t.>".into(),
        ack_wait: spec.ack_wait,
        ..Default::default()
    };
    let consumer = t.create_consumer(config).await.unwrap();
    let taken = consumer.fetch().max_messages(1).messages().await.unwrap().next().await;
    assert!(taken.is_some_and(|m| m.is_ok()), "the message delivered once");

    let handler = Scripted::new(|_, _| Act::Commit);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(consume::run(js.clone(), spec, handler.clone(), shutdown.clone()));
    // The loop pulls, so it has tried its crash records (and failed): then they can be had.
    until("the loop pulling", async || {
        let mut c: jetstream::consumer::PullConsumer = t.get_consumer("t").await.unwrap();
        c.info().await.is_ok_and(|i| i.num_waiting > 0)
    })
    .await;
    js.delete_stream("BLOCK").await.unwrap();
    until("the redelivered message stored", async || handler.committed() == ["m"]).await;
    assert!(js.get_stream("KV_TRIBUTARY_ATTEMPTS").await.is_ok(), "the crash records opened for the suspect");
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// Records the subjects of every unit in flight and whether two units ever held one subject at once.
#[derive(Clone, Default)]
struct Overlap {
    in_flight: Arc<Mutex<Vec<std::collections::HashSet<String>>>>,
    shared: Arc<Mutex<Vec<String>>>,
    units: Arc<Mutex<usize>>,
    handled: Arc<Mutex<usize>>,
}

impl BatchHandler for Overlap {
    type Event = String;

    fn decode(&self, subject: &str, _: Option<&async_nats::HeaderMap>, _: &[u8], _: Ts) -> Result<String, Rejection> {
        Ok(subject.to_owned())
    }

    async fn handle(&self, batch: &[Delivery<String>]) -> Result<(), HandleError> {
        let mine: std::collections::HashSet<String> = batch.iter().map(|d| d.event.clone()).collect();
        {
            let mut in_flight = self.in_flight.lock().unwrap();
            for other in in_flight.iter() {
                self.shared.lock().unwrap().extend(other.intersection(&mine).cloned());
            }
            in_flight.push(mine.clone());
            *self.units.lock().unwrap() += 1;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.in_flight.lock().unwrap().retain(|s| *s != mine);
        *self.handled.lock().unwrap() += batch.len();
        Ok(())
    }
}

/// Units in flight at once never share a series, however the events of a series arrive (here ten
/// series, each in bursts while units of it are in flight), so lanes never wait on each other's locks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_in_flight_never_share_a_series() {
    let (_nats, js) = setup(&[]).await;
    let handler = Overlap::default();
    let shutdown = CancellationToken::new();
    let spec = ConsumerSpec { batch: 16, ..spec() };
    let run = tokio::spawn(consume::run(js.clone(), spec, handler.clone(), shutdown.clone()));
    for round in 0..30 {
        for s in 0..10 {
            js.publish(format!("t.s{s}"), format!("{round}").into()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    until("every message handled", async || *handler.handled.lock().unwrap() >= 300).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    assert!(handler.shared.lock().unwrap().is_empty(), "shared: {:?}", handler.shared.lock().unwrap());
    assert!(*handler.units.lock().unwrap() > 3, "the work went in several units");
}

/// Refuses every payload that starts with `bad`; stores the rest.
#[derive(Clone)]
struct RefusesBad;

impl BatchHandler for RefusesBad {
    type Event = ();

    fn decode(&self, _: &str, _: Option<&async_nats::HeaderMap>, payload: &[u8], _: Ts) -> Result<(), Rejection> {
        assert!(!payload.starts_with(b"boom"), "the decoder panics on boom");
        match payload.starts_with(b"bad") {
            true => Err(Rejection::invalid("bad by name".into())),
            false => Ok(()),
        }
    }

    async fn handle(&self, _: &[Delivery<()>]) -> Result<(), HandleError> {
        Ok(())
    }
}

/// Dead letters never wait on the client's cap on publishes awaiting their ack: fetches holding many
/// more refused messages than the cap are dead-lettered whole, and the loop goes on. (The loop used to
/// send a fetch's dead letters before collecting any ack, so past the cap it waited for itself: 5,000
/// refused messages in one fetch, with async-nats's default cap, stopped the consumer for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_refused_messages_in_a_fetch_than_the_clients_ack_cap_are_all_dead_lettered() {
    let n = 600;
    let payloads: Vec<String> =
        (0..n).map(|i| if i % 6 == 5 { format!("good{i}") } else { format!("bad{i}") }).collect();
    let (_nats, js) = setup_capped(&payloads, Some(16)).await;
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(consume::run(js.clone(), spec(), RefusesBad, shutdown.clone()));
    until("everything acked", async || ack_floor(&js).await >= n as u64).await;
    let letters = dead_letters(&js).await;
    assert_eq!(letters.len(), n - n / 6);
    assert!(letters.iter().all(|(s, class, _)| s.starts_with("t.bad") && class == "invalid"), "{letters:?}");
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// A refused message published with a JetStream directive among its headers (`Nats-Expected-Stream`, as
/// careful publishers send) is dead-lettered all the same, and the messages after it commit. The letter
/// carried the directive along, the DLQ stream refused it ("expected stream does not match"), and the
/// original was nak'ed and came back for ever, pausing the consumer each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_message_with_a_publish_directive_is_dead_lettered() {
    let (_nats, js) = setup(&payloads(1)).await;
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(consume::run(js.clone(), spec(), RefusesBad, shutdown.clone()));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Expected-Stream", "T");
    js.publish_with_headers("t.bad", headers, "bad".into()).await.unwrap().await.unwrap();
    js.publish("t.good", "good".into()).await.unwrap().await.unwrap();
    until("everything acked", async || ack_floor(&js).await >= 3).await;
    let letters = dead_letters(&js).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!((letters[0].0.as_str(), letters[0].1.as_str()), ("t.bad", "invalid"));
    let letter = js.get_stream("DLQ").await.unwrap().get_raw_message(1).await.unwrap();
    assert!(letter.headers.get("Nats-Expected-Stream").is_none(), "the directive is not the letter's");
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// A decoder that panics refuses the message as undecodable, naming the panic, and the loop goes on.
/// (The panic unwound out of the consume loop and stopped the processor; the message came back to stop
/// the next one, for ever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoder_that_panics_dead_letters_the_message_and_the_loop_goes_on() {
    let (_nats, js) = setup(&["boom".to_owned(), "good".to_owned()]).await;
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(consume::run(js.clone(), spec(), RefusesBad, shutdown.clone()));
    until("everything acked", async || ack_floor(&js).await >= 2).await;
    let letters = dead_letters(&js).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!((letters[0].0.as_str(), letters[0].1.as_str()), ("t.boom", "undecodable"));
    assert!(letters[0].2.contains("the decoder panicked: the decoder panics on boom"), "{letters:?}");
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// A poison message on a quiet stream (nothing else arrives while it fails) is dead-lettered too: the
/// consumer committed before, and nothing else failed while it was tried alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_poison_message_on_a_quiet_stream_is_dead_lettered() {
    let (_nats, js) = setup(&payloads(5)).await;
    let handler = Scripted::new(|p, _| if p == "poison" { Act::Fail } else { Act::Commit });
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(consume::run(js.clone(), spec(), handler.clone(), shutdown.clone()));
    until("the first messages acked", async || ack_floor(&js).await >= 5).await;
    js.publish("t.poison", "poison".into()).await.unwrap().await.unwrap();
    until("the poison message dead-lettered", async || !dead_letters(&js).await.is_empty()).await;
    until("everything acked", async || ack_floor(&js).await >= 6).await;
    assert_eq!(dead_letters(&js).await[0].0, "t.poison");
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// A failure that lasts until an operator acts (a processor configured otherwise than the data it writes)
/// dead-letters nothing, not even a lone message on a quiet stream after earlier commits (which a failure
/// of its own would be), and reports the consumer failing until a commit succeeds again. (As a transient
/// failure it was kept too, but the consumer never counted as failing: nothing showed it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lasting_failure_dead_letters_nothing_and_reports_the_consumer_failing() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let (_nats, js) = setup(&payloads(5)).await;
    let fixed = Arc::new(AtomicBool::new(false));
    let f = fixed.clone();
    let handler = Scripted::new(move |p, _| if p == "late" && !f.load(Relaxed) { Act::Lasting } else { Act::Commit });
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(consume::run(js.clone(), spec(), handler.clone(), shutdown.clone()));
    until("the first messages acked", async || ack_floor(&js).await >= 5).await;
    let server = js.client().server_info().server_id;
    js.publish("t.late", "late".into()).await.unwrap().await.unwrap();
    until("the consumer reported failing", async || consume::failing(Some(&server)).contains_key("t")).await;
    assert!(dead_letters(&js).await.is_empty(), "{:?}", dead_letters(&js).await);
    fixed.store(true, Relaxed);
    until("the message committed", async || ack_floor(&js).await >= 6).await;
    until("the consumer no longer failing", async || !consume::failing(Some(&server)).contains_key("t")).await;
    assert!(dead_letters(&js).await.is_empty());
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// What fresh reads wait for: a consumer has acked its subjects up to a sequence when its ack floor is
/// there, or when the stream holds none of its messages between the two. A consumer's own "nothing
/// pending" is not asked: nats-server counts a message pending only after acknowledging its publish,
/// which let a fresh read miss the price just published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_up_to_asks_the_stream_for_the_consumers_next_message_after_its_floor() {
    // t.a at 1, t.b at 2, t.a at 3.
    let (_nats, js) = setup(&["a".into(), "b".into(), "a".into()]).await;
    let stream = js.get_stream("T").await.unwrap();
    let up_to =
        async |filter: &str, floor: u64, last: u64| consume::acked_up_to(&stream, filter, floor, last).await.unwrap();
    assert_eq!(up_to("t.b", 0, 3).await, 1, "t.b at 2 is after the floor");
    assert_eq!(up_to("t.b", 2, 3).await, 3, "the floor is at t.b's only message");
    assert_eq!(up_to("t.a", 1, 3).await, 2, "t.a at 3 is after the floor");
    assert_eq!(up_to("t.a", 1, 2).await, 2, "t.a's next message, 3, is after the sequence asked for");
    assert_eq!(up_to("t.>", 2, 3).await, 2);
    assert_eq!(up_to("t.>", 3, 3).await, 3);
    assert_eq!(up_to("t.c", 0, 3).await, 3, "nothing of t.c was ever stored");
    assert_eq!(up_to("t.a", 5, 3).await, 5, "the floor is past the sequence asked for");
}
