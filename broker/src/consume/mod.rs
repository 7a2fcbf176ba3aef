//! The consume loop: the one place that knows JetStream delivery semantics.
//!
//! A durable pull consumer feeds a [`BatchHandler`]. Every message is decoded first; a refused one is
//! dead-lettered with its reason and acked only once the dead letter is stored (if that fails it is
//! nak'ed and comes back). The valid events are scheduled **per series** (a series is a subject, e.g.
//! `price.ACME`):
//!
//! - up to [`ConsumerSpec::lanes`] units of work are in flight at once, each a set of series handed to
//!   [`BatchHandler::handle`] together and committed in one go;
//! - a series in flight is busy: its later events wait for it, while every other series goes on in
//!   another lane, so one slow series (a deep correction, a held lock) never holds back the others;
//! - a unit's messages are acked after its commit, and only then, whatever the other lanes do.
//!
//! A unit that fails is isolated ([`unit`]): a transient failure (the database down, a lost connection, a
//! serialization failure: [`ConsumerSpec::transient`]) naks everything with a delay that grows with the
//! delivery count, so an outage backs off and loses nothing. Any other failure bisects the unit until the
//! failing messages stand alone; one that fails alone `max_failures` times is dead-lettered as
//! `processing_failed` with the error, but only when the failure is its own: something else committed
//! meanwhile, or the consumer had committed before and nothing else failed while it was tried alone.
//! When nothing commits at all (a revoked permission, a missing table: the failure is the system's, not
//! the message's), every message is kept and nak'ed, and the consumer reports itself failing
//! (`tributary_consumer_failing`, a log line) until a commit succeeds again. A panic in a handler counts
//! as a failure like any other. A message that kills the process itself (an abort, an OOM kill) is
//! caught by its redeliveries ([`crashes`]): stored in ever smaller units across restarts, and
//! dead-lettered once it has stopped the process `max_failures` times alone.
//!
//! # Layout
//! - this module: the spec, the handler trait, the loop (fetch, accept, launch, finish), dead letters;
//! - [`lanes`]: the per-series scheduler, what waits and what goes next, acks and naks;
//! - [`unit`]: one unit of work, its attempts and its isolation by bisection;
//! - [`crashes`]: the KV records that tell a message killing the process from an ordinary redelivery;
//! - [`reclaim`]: a pinned partition taken over gets at once what its stopped owner held unacknowledged.
//!
//! While a unit is being stored its messages are reported in progress every third of `ack_wait`, so a
//! unit that takes longer than `ack_wait` is not delivered a second time meanwhile (for at most
//! [`MAX_WORK_ACK_WAITS`] × `ack_wait`: work stuck longer goes back to JetStream, to any replica; on a
//! pinned partition that is this same process, which drops the copy while it holds the message, so a
//! unit that never ends holds its series until the process stops: no unit has a deadline yet).
//!
//! Nothing is acked before it is stored somewhere, so a crash anywhere means redelivery, never loss;
//! handlers make redelivery harmless (last writer wins by stream sequence).

mod crashes;
mod lanes;
mod reclaim;
mod unit;

use crate::dlq;
use crate::events::Rejection;
use crate::metric_names as names;
use crate::ts::Ts;
use async_nats::HeaderMap;
use async_nats::header::NATS_PIN_ID;
use async_nats::jetstream::{self, AckKind, Message, consumer::pull};
use futures::StreamExt;
use lanes::Lanes;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use unit::MAX_WORK_ACK_WAITS;

/// Which consumer to run and how.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// The stream to consume.
    pub stream: String,
    /// The durable consumer's name; replicas sharing it share the work.
    pub durable: String,
    /// One subject filter (NATS 2.9 has no `filter_subjects`).
    pub filter_subject: String,
    /// The most messages handled in one transaction.
    pub batch: usize,
    /// How long JetStream waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// The most messages delivered and not yet acked.
    pub max_ack_pending: i64,
    /// A name for logs and metrics labels, e.g. `prices`.
    pub label: &'static str,
    /// How many times a message may fail alone before it is dead-lettered as `processing_failed`.
    pub max_failures: u32,
    /// How many units of work may be in flight at once (at least 2, so that one slow series never holds
    /// every lane).
    pub lanes: usize,
    /// Whether a failure is the system's for a while (a lost connection, a database restarting, a
    /// serialization failure) rather than something the messages do: such a failure is retried with a
    /// backoff and never dead-letters anything. Anything else is isolated to the messages that cause it.
    pub transient: fn(&HandleError) -> bool,
    /// Whether a failure is no message's and lasts until an operator acts (a processor whose configuration
    /// no longer matches the data it writes): retried like a transient one, never dead-letters anything,
    /// and reports the consumer failing (`/readyz`, `tributary_consumer_failing`) until a commit succeeds.
    pub lasting: fn(&HandleError) -> bool,
    /// Whether a failure is known to be its messages' own (a change the handler refuses by the data it
    /// meets, such as a bound): a message failing alone with it is dead-lettered even when nothing else
    /// commits, where another failure would be kept as possibly the system's.
    pub own: fn(&HandleError) -> bool,
    /// Told what became of settled messages, if anyone wants to know.
    pub settled: Option<SettledHook>,
    /// Whether one process at a time consumes (a partition of an elastic group): the consumer pulls in
    /// the priority group [`crate::group::PRIORITY_GROUP`] with the `pinned_client` policy, and the pin
    /// passes to another process once this one has not pulled for this long, or at once when this loop
    /// stops (it releases the pin). `None`: every process pulls, the server spreads the messages.
    pub pinned: Option<Duration>,
}

/// The consumers of this process whose every message fails (a systemic fault), each with its last
/// error: what `/readyz` reports; only those on the NATS server `server` (its id) when given. Cleared per
/// consumer by its next commit, or when its loop ends.
pub fn failing(server: Option<&str>) -> std::collections::BTreeMap<String, String> {
    let failing = FAILING.lock().unwrap_or_else(|e| e.into_inner());
    failing
        .iter()
        .filter(|((s, _), _)| server.is_none_or(|id| id == s))
        .map(|((_, d), e)| (d.clone(), e.clone()))
        .collect()
}

/// (NATS server id, durable consumer) → the last error, of the consumers failing on every message.
static FAILING: std::sync::Mutex<std::collections::BTreeMap<(String, String), String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The class of dead letters whose processing kept failing.
pub const PROCESSING_FAILED: &str = "processing_failed";

/// One valid event with what the consume loop knows about its message.
#[derive(Debug, Clone)]
pub struct Delivery<E> {
    /// The decoded event.
    pub event: E,
    /// The JetStream stream sequence: the last-writer-wins order.
    pub seq: u64,
    /// When JetStream stored it.
    pub received: Ts,
}

/// A batch could not be committed. Every message in it is nak'ed and redelivered later.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct HandleError(#[from] pub anyhow::Error);

/// Turns batches of one kind of event into one commit each.
pub trait BatchHandler: Clone + Send + Sync + 'static {
    /// The decoded event.
    type Event: Clone + Send + Sync + 'static;

    /// Decodes and validates one message; a rejection sends it to the dead-letter stream.
    fn decode(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
        received: Ts,
    ) -> Result<Self::Event, Rejection>;

    /// Stores a batch in one transaction. Returning `Ok` means committed.
    fn handle(&self, batch: &[Delivery<Self::Event>]) -> impl Future<Output = Result<(), HandleError>> + Send;
}

/// The consume loop stopped for a reason other than shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The stream does not exist (streams are created by `streams::ensure` at startup).
    #[error("stream {0} does not exist")]
    NoStream(String),
}

/// How far a consumer of `filter` whose ack floor is `floor` has acked every message of its subjects,
/// looking as far as stream sequence `last`: the sequence before the stream's first message of `filter`
/// after the floor (every one up to there is acked), or `last` when there is none up to `last` (a
/// partition with no new messages has a floor that never reaches other partitions' sequences). At
/// least `floor`. Whether the consumer has acked its subjects up to `last` is whether this reaches it:
/// what fresh reads wait for, and how a processor finds the partitions of a lowered count that still
/// hold messages.
///
/// The stream is asked, through its leader as consumer info is, rather than the consumer's own count of
/// messages waiting: nats-server updates that count from another goroutine after the publish is
/// acknowledged, so a consumer can report nothing waiting and nothing unacknowledged just after a
/// message of its subjects was stored.
pub async fn acked_up_to(
    stream: &jetstream::stream::Stream,
    filter: &str,
    floor: u64,
    last: u64,
) -> Result<u64, jetstream::stream::RawMessageError> {
    if floor >= last {
        return Ok(floor);
    }
    match stream.get_first_raw_message_by_subject(filter, floor + 1).await {
        Ok(next) => Ok(next.sequence.saturating_sub(1).max(floor)),
        Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => Ok(last),
        Err(e) => Err(e),
    }
}

/// The processors' durable consumers of a kind, as (durable name, filter subject, partition): one per
/// partition (`processor-price-p3` on `price.p.3.>`) when the kind is partitioned and `partitions > 1`,
/// else one for the whole kind (`processor-price` on `price.>`). The API reads their progress for fresh
/// reads.
pub fn processor_consumers(prefix: &str, kind: crate::Kind, partitions: u32) -> Vec<(String, String, Option<u32>)> {
    if kind.partitioned() && partitions > 1 {
        (0..partitions).map(|p| partition_consumer(prefix, kind, p)).collect()
    } else {
        vec![(format!("{prefix}-{}", kind.prefix()), kind.filter(), None)]
    }
}

/// The processors' durable consumer of partition `p` of `kind`, as (durable name, filter subject,
/// partition): `processor-price-p3` on `price.p.3.>`.
pub fn partition_consumer(prefix: &str, kind: crate::Kind, p: u32) -> (String, String, Option<u32>) {
    (format!("{prefix}-{}-p{p}", kind.prefix()), kind.partition_filter(p), Some(p))
}

/// How a unit's messages ended, for a [`SettledHook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Committed and acked.
    Committed,
    /// Dead-lettered (the letter stored) and acked.
    DeadLettered,
}

/// Called with the messages of each commit and of each set of stored dead letters, after their acks: how
/// a role learns what became of its messages (the processor reports upload progress with it) without the
/// loop knowing why.
#[derive(Clone)]
pub struct SettledHook(pub std::sync::Arc<dyn Fn(Settled, &[&Message]) + Send + Sync>);

impl std::fmt::Debug for SettledHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SettledHook")
    }
}

/// Delay before a message delivered `delivered` times comes back: 100 ms doubling, at most 10 s.
pub fn backoff(delivered: i64) -> Duration {
    let exp = delivered.clamp(1, 8) - 1;
    Duration::from_millis(100 << exp).min(Duration::from_secs(10))
}

/// What a caught panic said: its message when it was text.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Runs the consume loop until `shutdown` fires; the work in flight is finished first.
pub async fn run<H: BatchHandler>(
    js: jetstream::Context,
    spec: ConsumerSpec,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), ConsumeError> {
    let mut failures = 0i64;
    let mut lanes = Lanes::new(&js, &spec, handler).await;
    // The `Nats-Pin-Id` of this loop's last delivery: the pin it holds, if the server has not moved it.
    let mut pin: Option<String> = None;
    while !shutdown.is_cancelled() {
        // A new pull stream of a pinned consumer waits until the pin of the one before lapses: if this
        // loop held it, it releases it first.
        if let Some(ours) = pin.take()
            && let Err(e) = unpin(&js, &spec, &ours).await
        {
            tracing::debug!(consumer = spec.durable, error = %e, "pin not released before reopening");
        }
        // A loop of a pinned consumer takes back what an owner before it left unacknowledged, before its
        // first pull; only while it holds nothing itself, since a reset would deliver its own again.
        if let Some(pin_timeout) = spec.pinned
            && lanes.holds_nothing()
            && let Some(through) = reclaim::reclaim(&js, &spec, pin_timeout, &shutdown).await
        {
            lanes.given_back_through(through);
        }
        // Stopped while waiting for another process's pin: a pull now could be delivered messages it would
        // drop unacknowledged, holding the pin it never releases.
        if shutdown.is_cancelled() {
            break;
        }
        let messages = match open(&js, &spec).await {
            Ok(m) => m,
            Err(OpenError::NoStream) => return Err(ConsumeError::NoStream(spec.stream.clone())),
            Err(OpenError::Other(e)) => {
                failures += 1;
                let delay = backoff(failures);
                warn!(consumer = spec.durable, error = %e, ?delay, "cannot open consumer; retrying");
                tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(delay) => continue }
            }
        };
        failures = 0;
        info!(consumer = spec.durable, stream = spec.stream, "consuming");
        let mut chunks = messages.ready_chunks(spec.batch);
        loop {
            lanes.launch();
            // Any pause, even one that ended since `launch` looked: it fires at once and the loop launches
            // again. (Filtered on the clock here, a pause that ended between the two left no branch but
            // shutdown when nothing was in flight and enough waited to stop fetching: stalled for good.)
            let paused = lanes.paused_until;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = lanes.tasks.join_next(), if !lanes.tasks.is_empty() => lanes.finish(done).await,
                _ = tokio::time::sleep_until(paused.unwrap_or_else(tokio::time::Instant::now)), if paused.is_some() => {
                    lanes.paused_until = None;
                }
                // Unconstrained: tokio's cooperative budget would otherwise end a chunk after ~128
                // ready messages, however many are buffered, and cap every batch there.
                chunk = tokio::task::unconstrained(chunks.next()), if lanes.waiting() < spec.batch => {
                    let Some(chunk) = chunk else {
                        warn!(consumer = spec.durable, "message stream ended; reopening");
                        break;
                    };
                    let mut batch = Vec::with_capacity(chunk.len());
                    let mut broken = false;
                    for m in chunk {
                        match m {
                            Ok(m) => batch.push(m),
                            Err(e) => {
                                warn!(consumer = spec.durable, error = %e, "consumer stream error");
                                broken |= matches!(
                                    e.kind(),
                                    pull::MessagesErrorKind::ConsumerDeleted | pull::MessagesErrorKind::MissingHeartbeat
                                );
                            }
                        }
                    }
                    // The server appends its `Nats-Pin-Id`: the last one is the delivery's.
                    if let Some(id) = batch.iter().rev().find_map(|m| m.headers.as_ref()?.get_last(NATS_PIN_ID)) {
                        pin = Some(id.to_string());
                    }
                    lanes.accept(batch).await;
                    if broken {
                        break;
                    }
                }
            }
        }
    }
    // Shutdown: what is in flight commits (or fails) and is acked (or nak'ed); what waits is nak'ed, for
    // whichever process consumes next; then the pin, if any, is released for it.
    while let Some(done) = lanes.tasks.join_next().await {
        lanes.finish(done).await;
    }
    lanes.give_back().await;
    if let Some(ours) = pin {
        match unpin(&js, &spec, &ours).await {
            Ok(true) => info!(consumer = spec.durable, "released"),
            Ok(false) => info!(consumer = spec.durable, "the pin had moved on; left to its holder"),
            Err(e) => warn!(consumer = spec.durable, error = %e, "could not release the pin; it lapses by itself"),
        }
    }
    Ok(())
}

/// Releases the pin of a pinned consumer if this loop still holds it (`ours`, its last delivery's
/// `Nats-Pin-Id`, is the server's), so that a pull stream waiting for it (another process's, or this
/// loop's next one) gets it now rather than after the pin's timeout. A pin that has moved on is left
/// alone: releasing it would take the partition from the process that has it now. (Only a loop that was
/// delivered something calls this: one that never was never held the pin.) Whether it released. (The
/// check and the release are two requests: a pin that lapsed and moved on between them is released
/// too, which costs its new holder one pull; JetStream's unpin takes no pin to compare.)
async fn unpin(js: &jetstream::Context, spec: &ConsumerSpec, ours: &str) -> Result<bool, String> {
    let stream = js.get_stream(&spec.stream).await.map_err(|e| e.to_string())?;
    let mut consumer: jetstream::consumer::PullConsumer =
        stream.get_consumer(&spec.durable).await.map_err(|e| e.to_string())?;
    let info = consumer.info().await.map_err(|e| e.to_string())?;
    let held = pin_of(info) == Some(ours);
    if held {
        stream.unpin_consumer(&spec.durable, crate::group::PRIORITY_GROUP).await.map_err(|e| e.to_string())?;
    }
    Ok(held)
}

/// The pin the server holds for the processors' priority group of a pinned consumer, if any.
fn pin_of(info: &jetstream::consumer::Info) -> Option<&str> {
    let group = info.priority_groups.iter().find(|g| g.group == crate::group::PRIORITY_GROUP)?;
    group.pinned_client_id.as_deref().filter(|id| !id.is_empty())
}

enum OpenError {
    NoStream,
    Other(async_nats::Error),
}

async fn open(js: &jetstream::Context, spec: &ConsumerSpec) -> Result<pull::Stream, OpenError> {
    let stream = js.get_stream(&spec.stream).await.map_err(|e| match crate::streams::missing(&e) {
        true => OpenError::NoStream,
        false => OpenError::Other(e.into()),
    })?;
    let config = pull::Config {
        durable_name: Some(spec.durable.clone()),
        filter_subject: spec.filter_subject.clone(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        max_ack_pending: spec.max_ack_pending,
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        ..Default::default()
    };
    let Some(pin_timeout) = spec.pinned else {
        let consumer: jetstream::consumer::PullConsumer =
            stream.get_or_create_consumer(&spec.durable, config).await.map_err(|e| OpenError::Other(e.into()))?;
        return consumer
            .stream()
            .max_messages_per_batch(spec.batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| OpenError::Other(e.into()));
    };
    // Created or updated, so that a consumer made before the group existed gets its priority group.
    let consumer = stream
        .create_consumer(pull::Config {
            priority_policy: jetstream::consumer::PriorityPolicy::PinnedClient,
            priority_groups: vec![crate::group::PRIORITY_GROUP.to_owned()],
            priority_timeout: pin_timeout,
            ..config
        })
        .await
        .map_err(|e| OpenError::Other(e.into()))?;
    // A pinned client keeps its pin by pulling: pulls expire within half the pin's timeout, and the
    // heartbeat is as long as that allows (a missed one reopens the stream).
    let expires = (pin_timeout / 2).max(Duration::from_millis(500));
    consumer
        .stream()
        .group(crate::group::PRIORITY_GROUP)
        .max_messages_per_batch(spec.batch)
        .heartbeat(expires / 2)
        .expires(expires)
        .messages()
        .await
        .map_err(|e| OpenError::Other(e.into()))
}

/// How many dead letters await their ack at once: a bound of the loop's own, far under the client's cap
/// on unacknowledged publishes (which every publisher of the process shares).
const DEAD_LETTERS_IN_FLIGHT: usize = 256;

/// Publishes dead letters, then acks the originals whose dead letter is stored; returns a delay when one
/// could not be stored (its original is nak'ed and comes back).
///
/// Each letter's ack is collected as soon as it comes, while later letters wait for a slot: sending them
/// all before collecting any ack would hold the client's slots while waiting for one, and past the
/// client's cap (5,000 by default, fewer when another publisher holds some) wait for itself for good.
async fn dead_letter(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    dead: Vec<(Message, u64, &'static str, String)>,
) -> Option<Duration> {
    let letters: Vec<_> = dead
        .iter()
        .map(|(m, seq, class, reason)| async move {
            warn!(consumer = spec.durable, subject = %m.subject, seq, class, reason, "dead-lettering");
            let payload = m.payload.clone();
            match dlq::send(js, &m.subject, m.headers.as_ref(), payload, &spec.stream, *seq, class, reason).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .collect();
    let acks: Vec<Result<(), String>> = futures::stream::iter(letters).buffered(DEAD_LETTERS_IN_FLIGHT).collect().await;
    let mut retry = None;
    let mut stored_letters = Vec::with_capacity(dead.len());
    for ((m, _, class, _), stored) in dead.iter().zip(acks) {
        match stored {
            Ok(()) => {
                metrics::counter!(names::DEAD_LETTERS, "consumer" => spec.label, "class" => *class).increment(1);
                let _ = m.ack().await;
                stored_letters.push(m);
            }
            Err(e) => {
                let delay = backoff(m.info().map(|i| i.delivered).unwrap_or(1));
                warn!(consumer = spec.durable, error = %e, "dead letter not stored; nak'ed");
                let _ = m.ack_with(AckKind::Nak(Some(delay))).await;
                retry = Some(delay);
            }
        }
    }
    if let Some(hook) = &spec.settled
        && !stored_letters.is_empty()
    {
        (hook.0)(Settled::DeadLettered, &stored_letters);
    }
    retry
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_grows_then_caps() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(8), Duration::from_millis(10_000));
        assert_eq!(backoff(100), Duration::from_millis(10_000));
    }
}
