//! Fresh reads: `?fresh=true` waits until the processors have committed everything that was in the
//! streams when the request arrived.
//!
//! For each stream the read depends on, the barrier takes the stream's last sequence when the request
//! arrives, then waits until each of the processors' durable consumers on it (one per partition when
//! partitioned) has acked every message of its subjects up to there: its ack floor (the highest stream
//! sequence below which every message is acked, and so committed or dead-lettered) reaches it, or the
//! stream holds no message of the consumer's subjects between the floor and it. Past
//! `api.fresh_timeout_ms` it answers 504 with `sync_timeout`, naming the stream that was behind.
//!
//! The second test asks the stream ([`acked_up_to`]), not the consumer's count of messages waiting:
//! nats-server updates that count only after the publish is acknowledged.
//!
//! However many reads wait, each consumer is asked by one task ([`Progress`]): at once when a read starts
//! waiting, then every [`POLL`] while any does. Each read used to ask NATS itself every 5 ms, so a hundred
//! waiting reads made NATS answer 40,000 requests a second, beside the pipeline they waited for.

use crate::params::Params;
use crate::{ApiError, AppState};
use async_nats::jetstream::{self, consumer::pull};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tributary_broker::Kind;
use tributary_broker::consume::{acked_up_to, processor_consumers};

/// How often a consumer's progress is asked while a read waits on it.
pub const POLL: Duration = Duration::from_millis(5);

/// The least time between two polls of one consumer, however often reads start waiting on it.
const POLL_GAP: Duration = Duration::from_millis(1);

/// `fresh`: `true`/`1` or `false`/`0` (absent: false).
pub fn fresh(p: &Params) -> Result<bool, ApiError> {
    match p.get("fresh").map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if v == "true" || v == "1" => Ok(true),
        Some(v) if v == "false" || v == "0" => Ok(false),
        Some(v) => Err(ApiError::field("invalid_fresh", "fresh", format!("fresh must be true or false, got {v:?}"))),
    }
}

/// When `fresh` is asked for, waits for the barrier on `kinds` (see the module doc).
pub async fn if_fresh(s: &AppState, p: &Params, kinds: &[Kind]) -> Result<(), ApiError> {
    if fresh(p)? { committed(s, kinds, Instant::now() + s.fresh_timeout()).await } else { Ok(()) }
}

/// Waits until the processors have committed every message that is in the streams of `kinds` now, or
/// `deadline` passes (504), also while NATS is slow to answer.
pub async fn committed(s: &AppState, kinds: &[Kind], deadline: Instant) -> Result<(), ApiError> {
    const WHAT: &str = "the fresh timeout";
    within(deadline, WHAT, async {
        let mut targets = Vec::with_capacity(kinds.len());
        for &kind in kinds {
            // Getting a stream reads its info: its last sequence as of now.
            let stream = stream(s, kind).await?;
            let last = stream.cached_info().state.last_sequence;
            targets.push((kind, stream, last));
        }
        reached(s, targets, deadline, WHAT).await
    })
    .await
}

/// Waits until the processors have committed (or dead-lettered) every message of each stream named in
/// `last` up to its sequence there, or `deadline` passes (504): an upload's publishes
/// ([`tributary_broker::PublishReport::last`]). Streams of no kind the processors consume are skipped.
pub async fn processed(s: &AppState, last: &BTreeMap<String, u64>, deadline: Instant) -> Result<(), ApiError> {
    const WHAT: &str = "the upload's settle timeout";
    within(deadline, WHAT, async {
        let mut targets = Vec::with_capacity(last.len());
        for (name, seq) in last {
            let Some(kind) = Kind::ALL.into_iter().find(|k| s.streams.stream_name(*k) == *name) else { continue };
            // NATS not answering for a moment (a leader election, a reconnect) is no answer: asked again
            // until the deadline, as the consumers' progress is.
            let stream = loop {
                match stream(s, kind).await {
                    Ok(stream) => break stream,
                    Err(e) if Instant::now() >= deadline => return Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            targets.push((kind, stream, *seq));
        }
        reached(s, targets, deadline, WHAT).await
    })
    .await
}

/// `barrier`, also while NATS does not answer: a moment past the deadline, so that the barrier's own
/// 504, which names the stream behind, wins when NATS answers.
async fn within(
    deadline: Instant,
    what: &str,
    barrier: impl std::future::Future<Output = Result<(), ApiError>>,
) -> Result<(), ApiError> {
    let silent = deadline + Duration::from_millis(250);
    match tokio::time::timeout_at(silent.into(), barrier).await {
        Ok(answer) => answer,
        Err(_) => {
            Err(ApiError::Timeout(format!("NATS did not say within {what} how far the processors have committed")))
        }
    }
}

async fn stream(s: &AppState, kind: Kind) -> Result<jetstream::stream::Stream, ApiError> {
    s.js.get_stream(s.streams.stream_name(kind)).await.map_err(|e| {
        ApiError::Unavailable(format!("cannot read stream state from NATS: {}", async_nats::Error::from(e)))
    })
}

/// Waits until every processor consumer of each (kind, stream) has acked its subjects up to the sequence
/// given, or `deadline` passes (504, naming `what` passed).
async fn reached(
    s: &AppState,
    targets: Vec<(Kind, jetstream::stream::Stream, u64)>,
    deadline: Instant,
    what: &str,
) -> Result<(), ApiError> {
    for (kind, stream, last) in targets {
        if last == 0 {
            continue;
        }
        for (durable, filter, _) in processor_consumers(&s.durable_prefix, kind, s.partitions) {
            if let Err(at) = s.progress.wait(&stream, &durable, &filter, last, deadline).await {
                return Err(ApiError::Timeout(format!(
                    "the processor has not committed stream {} up to sequence {last} (consumer {durable} is at {at}) within {what}",
                    s.streams.stream_name(kind)
                )));
            }
        }
    }
    Ok(())
}

/// How far the processors' consumers have committed, each asked by one task while reads wait on it.
#[derive(Clone, Default)]
pub struct Progress(Arc<Mutex<HashMap<(String, String), Arc<Watch>>>>);

/// One consumer's progress, and what the reads waiting on it need.
struct Watch {
    /// The highest stream sequence a waiting read needs acked.
    wanted: AtomicU64,
    /// What the last poll found; each waiting read holds a receiver.
    seen: watch::Sender<Seen>,
    /// Wakes the poller when a read starts waiting.
    arrived: Notify,
}

/// What one poll of a consumer found.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// The consumer's ack floor.
    floor: u64,
    /// Every message of the consumer's subjects up to this stream sequence is acked.
    through: u64,
}

impl Progress {
    /// Waits until the consumer `durable` (on `filter` of `stream`) has acked every message of its subjects
    /// up to `last`, or `deadline` passes: then the consumer's ack floor as last seen.
    async fn wait(
        &self,
        stream: &jetstream::stream::Stream,
        durable: &str,
        filter: &str,
        last: u64,
        deadline: Instant,
    ) -> Result<(), u64> {
        let mut seen = {
            let mut watches = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let key = (stream.cached_info().config.name.clone(), durable.to_owned());
            let watch = watches.entry(key.clone()).or_insert_with(|| {
                let watch = Arc::new(Watch {
                    wanted: AtomicU64::new(0),
                    seen: watch::Sender::new(Seen::default()),
                    arrived: Notify::new(),
                });
                tokio::spawn(self.clone().poll(key, stream.clone(), filter.to_owned(), Arc::clone(&watch)));
                watch
            });
            watch.wanted.fetch_max(last, Ordering::AcqRel);
            // Subscribed under the lock: the poller stops only while no read holds a receiver.
            let seen = watch.seen.subscribe();
            if seen.borrow().through < last {
                watch.arrived.notify_one();
            }
            seen
        };
        // A poll made before this read arrived is still true of every message up to its `through`: a
        // sequence at or below it either existed then or never will.
        let reached = tokio::time::timeout_at(deadline.into(), seen.wait_for(|s| s.through >= last));
        let reached = matches!(reached.await, Ok(Ok(_)));
        if reached { Ok(()) } else { Err(seen.borrow().floor) }
    }

    /// Polls one consumer while reads wait on it, then forgets it.
    async fn poll(self, key: (String, String), stream: jetstream::stream::Stream, filter: String, watch: Arc<Watch>) {
        // Should this task end any other way (a panic, the runtime shutting down), the next read starts
        // another rather than wait on this one's last answer.
        let _forget = Forget { progress: self.clone(), key: key.clone(), watch: Arc::clone(&watch) };
        let mut consumer = None;
        loop {
            {
                let mut watches = self.0.lock().unwrap_or_else(|e| e.into_inner());
                if watch.seen.receiver_count() == 0 {
                    watches.remove(&key);
                    return;
                }
            }
            let started = tokio::time::Instant::now();
            let wanted = watch.wanted.load(Ordering::Acquire);
            if consumer.is_none() {
                consumer = stream.get_consumer::<pull::Config>(&key.1).await.ok();
            }
            // An error answers nothing: the reads wait for the next poll, or their deadline.
            if let Some(c) = consumer.as_mut() {
                match progress(&stream, c, &filter, wanted).await {
                    Ok(seen) => {
                        watch.seen.send_replace(seen);
                    }
                    Err(_) => consumer = None,
                }
            }
            let _ = tokio::time::timeout(POLL, watch.arrived.notified()).await;
            tokio::time::sleep_until(started + POLL_GAP).await;
        }
    }
}

/// Forgets a consumer's poller when its task ends, unless a newer one has taken its place.
struct Forget {
    progress: Progress,
    key: (String, String),
    watch: Arc<Watch>,
}

impl Drop for Forget {
    fn drop(&mut self) {
        let mut watches = self.progress.0.lock().unwrap_or_else(|e| e.into_inner());
        if watches.get(&self.key).is_some_and(|w| Arc::ptr_eq(w, &self.watch)) {
            watches.remove(&self.key);
        }
    }
}

/// How far `consumer` has acked its subjects (`filter` of `stream`), looking as far as `wanted`.
async fn progress(
    stream: &jetstream::stream::Stream,
    consumer: &mut jetstream::consumer::PullConsumer,
    filter: &str,
    wanted: u64,
) -> Result<Seen, async_nats::Error> {
    let floor = consumer.info().await?.ack_floor.stream_sequence;
    Ok(Seen { floor, through: acked_up_to(stream, filter, floor, wanted).await? })
}
