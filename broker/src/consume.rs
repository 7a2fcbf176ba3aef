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
//! A unit that fails is [`isolate`]d: a transient failure (the database down, a lost connection, a
//! serialization failure: [`BatchHandler::transient`]) naks everything with a delay that grows with the
//! delivery count, so an outage backs off and loses nothing. Any other failure bisects the unit until the
//! failing messages stand alone; one that fails alone `max_failures` times is dead-lettered as
//! `processing_failed` with the error, but only when something else committed since it began failing.
//! When nothing commits at all (a revoked permission, a missing table: the failure is the system's, not
//! the message's), every message is kept and nak'ed, and the consumer reports itself failing
//! (`tributary_consumer_failing`, a log line) until a commit succeeds again. A panic in a handler counts
//! as a failure like any other.
//!
//! While a unit is being stored its messages are reported in progress every third of `ack_wait`, so a
//! unit that takes longer than `ack_wait` is not delivered a second time meanwhile (for at most
//! [`MAX_WORK_ACK_WAITS`] × `ack_wait`: work stuck longer goes back to JetStream, to any replica).
//!
//! Nothing is acked before it is stored somewhere, so a crash anywhere means redelivery, never loss;
//! handlers make redelivery harmless (last writer wins by stream sequence).

use crate::dlq;
use crate::events::Rejection;
use crate::ts::Ts;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, Message, consumer::pull};
use futures::{FutureExt, StreamExt};
use opentelemetry::trace::TraceContextExt;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt;

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
}

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

    /// Whether a failure is the system's for a while (a lost connection, a database restarting, a
    /// serialization failure) rather than something the messages do: such a failure is retried with a
    /// backoff and never dead-letters anything. Anything else is isolated to the messages that cause it.
    fn transient(&self, _error: &HandleError) -> bool {
        false
    }
}

/// The consume loop stopped for a reason other than shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The stream does not exist (streams are created by `streams::ensure` at startup).
    #[error("stream {0} does not exist")]
    NoStream(String),
}

/// The processors' durable consumers of a kind, as (durable name, filter subject, partition): one per
/// partition (`processor-price-p3` on `price.p.3.>`) when the kind is partitioned and `partitions > 1`,
/// else one for the whole kind (`processor-price` on `price.>`). The API reads their progress for fresh
/// reads.
pub fn processor_consumers(prefix: &str, kind: crate::Kind, partitions: u32) -> Vec<(String, String, Option<u32>)> {
    if kind.partitioned() && partitions > 1 {
        (0..partitions)
            .map(|p| (format!("{prefix}-{}-p{p}", kind.prefix()), kind.partition_filter(p), Some(p)))
            .collect()
    } else {
        vec![(format!("{prefix}-{}", kind.prefix()), kind.filter(), None)]
    }
}

/// The header naming the upload a message came from (set by the API's upload route).
pub const UPLOAD_HEADER: &str = "Tributary-Upload";
/// Core NATS subjects `tributary.upload.<id>`: after a commit (or a stored dead letter), how many of an
/// upload's messages it covered, as JSON `{"committed": n}` or `{"dead_letters": n}`.
pub const UPLOAD_PROGRESS_PREFIX: &str = "tributary.upload";

/// Tells an upload's watchers how many of its messages were just committed or dead-lettered.
async fn report_uploads<'a>(js: &jetstream::Context, what: &str, messages: impl Iterator<Item = &'a Message>) {
    let mut counts: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for m in messages {
        if let Some(id) = m.headers.as_ref().and_then(|h| h.get(UPLOAD_HEADER)) {
            *counts.entry(id.as_str()).or_default() += 1;
        }
    }
    for (id, n) in counts {
        let body = format!("{{\"{what}\":{n}}}");
        if let Err(e) = js.client().publish(format!("{UPLOAD_PROGRESS_PREFIX}.{id}"), body.into()).await {
            debug!(error = %e, "cannot report upload progress");
        }
    }
}

/// Delay before a message delivered `delivered` times comes back: 100 ms doubling, at most 10 s.
pub fn backoff(delivered: i64) -> Duration {
    let exp = delivered.clamp(1, 8) - 1;
    Duration::from_millis(100 << exp).min(Duration::from_secs(10))
}

/// Runs the consume loop until `shutdown` fires; the work in flight is finished first.
pub async fn run<H: BatchHandler>(
    js: jetstream::Context,
    spec: ConsumerSpec,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), ConsumeError> {
    let mut failures = 0i64;
    let mut lanes = Lanes::new(&js, &spec, handler);
    while !shutdown.is_cancelled() {
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
            let paused = lanes.paused_until.filter(|t| *t > tokio::time::Instant::now());
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
                    lanes.accept(batch).await;
                    if broken {
                        break;
                    }
                }
            }
        }
    }
    // Shutdown: what is in flight commits (or fails) and is acked (or nak'ed); what waits is left to
    // redelivery.
    while let Some(done) = lanes.tasks.join_next().await {
        lanes.finish(done).await;
    }
    Ok(())
}

enum OpenError {
    NoStream,
    Other(async_nats::Error),
}

async fn open(js: &jetstream::Context, spec: &ConsumerSpec) -> Result<pull::Stream, OpenError> {
    let stream = js.get_stream(&spec.stream).await.map_err(|e| match e.kind() {
        jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
        {
            OpenError::NoStream
        }
        _ => OpenError::Other(e.into()),
    })?;
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .get_or_create_consumer(
            &spec.durable,
            pull::Config {
                durable_name: Some(spec.durable.clone()),
                filter_subject: spec.filter_subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: spec.ack_wait,
                max_ack_pending: spec.max_ack_pending,
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| OpenError::Other(e.into()))?;
    consumer
        .stream()
        .max_messages_per_batch(spec.batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| OpenError::Other(e.into()))
}

/// One valid message waiting for, or in, a unit of work (its event travels beside it, in the
/// [`Delivery`] the handler is given).
struct Item {
    message: Message,
    seq: u64,
    received: Ts,
    series: u64,
    delivered: i64,
    parent: opentelemetry::Context,
}

/// What became of one message of a unit.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// Stored: ack.
    Committed,
    /// Not stored, to be tried again later: nak with a backoff.
    Retry,
    /// Failed alone `max_failures` times while other work committed: dead-letter with this error.
    Failed(String),
}

/// What a finished unit reports: its items, each with its outcome, and whether the failures it saw were
/// transient or systemic (then the loop pauses before launching more work).
struct Done {
    items: Vec<(Item, Outcome)>,
    pause: Option<Duration>,
    systemic: Option<String>,
}

/// The per-series scheduler of one consumer: the items waiting (per busy series, or ready), the units in
/// flight, and the series they hold.
struct Lanes<H: BatchHandler> {
    js: jetstream::Context,
    spec: ConsumerSpec,
    handler: H,
    /// Items whose series is free, in arrival order.
    ready: VecDeque<(Item, Delivery<H::Event>)>,
    /// Items whose series is in flight, waiting for it.
    blocked: HashMap<u64, Vec<(Item, Delivery<H::Event>)>>,
    busy: HashSet<u64>,
    tasks: JoinSet<Done>,
    /// Commits of this consumer so far: a failure alone counts against its message only if something
    /// else committed meanwhile.
    commits: Arc<AtomicU64>,
    paused_until: Option<tokio::time::Instant>,
    failing: bool,
}

impl<H: BatchHandler> Lanes<H> {
    fn new(js: &jetstream::Context, spec: &ConsumerSpec, handler: H) -> Self {
        Lanes {
            js: js.clone(),
            spec: spec.clone(),
            handler,
            ready: VecDeque::new(),
            blocked: HashMap::new(),
            busy: HashSet::new(),
            tasks: JoinSet::new(),
            commits: Arc::default(),
            paused_until: None,
            failing: false,
        }
    }

    /// How many items are ready to launch: fetching pauses at a batch of them. Items waiting on a busy
    /// series do not count, so a slow series' own backlog never stops the others being fetched; they are
    /// bounded by the consumer's `max_ack_pending` (and come again, harmlessly, if they wait past
    /// `ack_wait`).
    fn waiting(&self) -> usize {
        self.ready.len()
    }

    /// Decodes a fetched chunk: refused messages are dead-lettered, valid ones wait for their series.
    async fn accept(&mut self, batch: Vec<Message>) {
        let spec = &self.spec;
        let mut dead = Vec::new();
        let mut pending = 0;
        let size = batch.len();
        for m in batch {
            let Ok(info) = m.info() else {
                warn!(consumer = spec.durable, subject = %m.subject, "message without JetStream metadata; leaving it to redelivery");
                continue;
            };
            let (seq, received, delivered) = (info.stream_sequence, Ts::new(info.published), info.delivered);
            pending = info.pending;
            match self.handler.decode(&m.subject, m.headers.as_ref(), &m.payload, received) {
                Ok(event) => {
                    let item = Item {
                        parent: crate::trace::extract(m.headers.as_ref()),
                        series: series_of(&m.subject),
                        seq,
                        received,
                        delivered,
                        message: m,
                    };
                    let delivery = Delivery { event, seq, received };
                    if self.busy.contains(&item.series) {
                        self.blocked.entry(item.series).or_default().push((item, delivery));
                    } else {
                        self.ready.push_back((item, delivery));
                    }
                }
                Err(rejection) => dead.push((m, seq, rejection.class, rejection.reason)),
            }
        }
        metrics::gauge!("tributary_consumer_pending", "consumer" => spec.label).set(pending as f64);
        metrics::histogram!("tributary_batch_size", "consumer" => spec.label).record(size as f64);
        if !dead.is_empty()
            && let Some(delay) = dead_letter(&self.js, spec, dead).await
        {
            self.pause(delay);
        }
    }

    fn pause(&mut self, delay: Duration) {
        let until = tokio::time::Instant::now() + delay;
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
    }

    /// Starts units of work while a lane is free and items are ready (and no backoff is in force): each
    /// takes up to `batch` ready items, whose series become busy.
    fn launch(&mut self) {
        if self.paused_until.is_some_and(|t| t > tokio::time::Instant::now()) {
            return;
        }
        while self.tasks.len() < self.spec.lanes.max(2) && !self.ready.is_empty() {
            let take = self.ready.len().min(self.spec.batch.max(1));
            let (items, deliveries): (Vec<Item>, Vec<Delivery<H::Event>>) = self.ready.drain(..take).unzip();
            self.busy.extend(items.iter().map(|i| i.series));
            let unit = Unit { handler: self.handler.clone(), spec: self.spec.clone(), commits: self.commits.clone() };
            self.tasks.spawn(unit.run(items, deliveries));
        }
    }

    /// Acks, naks or dead-letters a finished unit's messages and frees its series.
    async fn finish(&mut self, done: Result<Done, tokio::task::JoinError>) {
        let spec = self.spec.clone();
        let spec = &spec;
        let done = match done {
            Ok(d) => d,
            // A unit catches its handler's panics; this is a bug in the loop itself. Its messages were
            // not acked, so they come again; their series stay busy no longer than this process.
            Err(e) => {
                error!(consumer = spec.durable, error = %e, "a unit of work was lost; its messages will be redelivered");
                return;
            }
        };
        let label = spec.label;
        let now = chrono::Utc::now();
        let latency = metrics::histogram!("tributary_commit_latency_seconds", "consumer" => label);
        let (mut committed, mut failed) = (Vec::new(), Vec::new());
        let mut retried = 0u64;
        for (item, outcome) in done.items {
            self.busy.remove(&item.series);
            match outcome {
                Outcome::Committed => {
                    latency.record((now - item.received.0).num_microseconds().unwrap_or(0) as f64 / 1e6);
                    if let Err(e) = item.message.ack().await {
                        // The commit stands; the message will be redelivered and change nothing.
                        debug!(error = %e, "ack failed");
                    }
                    committed.push(item.message);
                }
                Outcome::Retry => {
                    retried += 1;
                    let _ = item.message.ack_with(AckKind::Nak(Some(backoff(item.delivered)))).await;
                }
                Outcome::Failed(reason) => failed.push((item.message, item.seq, PROCESSING_FAILED, reason)),
            }
        }
        if !committed.is_empty() {
            metrics::counter!("tributary_events_total", "consumer" => label, "outcome" => "processed")
                .increment(committed.len() as u64);
            report_uploads(&self.js, "committed", committed.iter()).await;
        }
        if retried > 0 {
            metrics::counter!("tributary_batch_failures_total", "consumer" => label).increment(1);
        }
        if !failed.is_empty()
            && let Some(delay) = dead_letter(&self.js, spec, failed).await
        {
            self.pause(delay);
        }
        match (&done.systemic, self.failing, committed.is_empty()) {
            (Some(e), false, _) => {
                error!(consumer = spec.durable, error = %e, "every message fails: keeping them and backing off");
                self.failing = true;
            }
            (None, true, false) => {
                info!(consumer = spec.durable, "commits succeed again");
                self.failing = false;
            }
            _ => {}
        }
        metrics::gauge!("tributary_consumer_failing", "consumer" => label).set(if self.failing { 1.0 } else { 0.0 });
        if let Some(delay) = done.pause {
            self.pause(delay);
        }
        // The freed series' waiting items are ready again, ahead of items that arrived after them.
        let freed: Vec<u64> = self.blocked.keys().copied().filter(|s| !self.busy.contains(s)).collect();
        for s in freed {
            let items = self.blocked.remove(&s).unwrap_or_default();
            for item in items.into_iter().rev() {
                self.ready.push_front(item);
            }
        }
    }
}

/// A series is a subject: the unit of ordering and of isolation.
fn series_of(subject: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in subject.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// One unit of work: a set of items stored together, isolated on failure.
struct Unit<H> {
    handler: H,
    spec: ConsumerSpec,
    commits: Arc<AtomicU64>,
}

impl<H: BatchHandler> Unit<H> {
    /// Stores the items, reporting them in progress while it works.
    async fn run(self, items: Vec<Item>, deliveries: Vec<Delivery<H::Event>>) -> Done {
        let started = Instant::now();
        let span =
            tracing::info_span!("process", otel.kind = "consumer", consumer = self.spec.durable, events = items.len());
        let mut parents = items.iter().map(|i| &i.parent).filter(|cx| cx.span().span_context().is_valid());
        if let Some(first) = parents.next() {
            let _ = span.set_parent(first.clone());
        }
        for cx in parents.take(32) {
            span.add_link(cx.span().span_context().clone());
        }
        let messages: Vec<Message> = items.iter().map(|i| i.message.clone()).collect();
        let ack_wait = self.spec.ack_wait;
        let (outcomes, pause, systemic) =
            in_progress(&messages, ack_wait, self.isolate(&items, &deliveries).instrument(span)).await;
        metrics::histogram!("tributary_batch_seconds", "consumer" => self.spec.label)
            .record(started.elapsed().as_secs_f64());
        Done { items: items.into_iter().zip(outcomes).collect(), pause, systemic }
    }

    /// One attempt at storing `items`; a panic is a failure like any other.
    async fn attempt(&self, deliveries: &[Delivery<H::Event>]) -> Result<(), HandleError> {
        let out = std::panic::AssertUnwindSafe(self.handler.handle(deliveries)).catch_unwind().await;
        let out = out.unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(HandleError(anyhow::anyhow!("the handler panicked: {what}")))
        });
        if out.is_ok() {
            self.commits.fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    /// Stores `items`, and on a failure that is not transient narrows it down: halves are tried depth
    /// first until each failing message stands alone; a message failing alone is then tried alone up to
    /// `max_failures` times in all, and dead-lettered if it still fails while other work commits (here or
    /// in another lane). Returns each item's outcome, a delay to pause the loop for, and the error when
    /// the failure looks systemic: nothing commits at all, neither here within a few more attempts than
    /// it takes to reach one message, nor anywhere else meanwhile.
    async fn isolate(
        &self,
        items: &[Item],
        deliveries: &[Delivery<H::Event>],
    ) -> (Vec<Outcome>, Option<Duration>, Option<String>) {
        let mut outcomes = vec![Outcome::Retry; items.len()];
        let commits_before = self.commits.load(Ordering::Relaxed);
        let others_committed = || self.commits.load(Ordering::Relaxed) > commits_before;
        let delay = backoff(items.iter().map(|i| i.delivered).max().unwrap_or(1));
        // Reaching one message takes log2(n) failed halves; as many again find a half that commits,
        // unless nothing does.
        let budget = 2 * (usize::BITS - items.len().leading_zeros()) as usize + 2;
        let (mut successes, mut failures) = (0usize, 0usize);
        let mut suspects: Vec<(usize, HandleError)> = Vec::new();
        let mut stack: Vec<Range<usize>> = Vec::new();
        stack.push(0..items.len());
        while let Some(range) = stack.pop() {
            let error = match self.attempt(&deliveries[range.clone()]).await {
                Ok(()) => {
                    successes += 1;
                    outcomes[range].fill(Outcome::Committed);
                    continue;
                }
                Err(e) => e,
            };
            if self.handler.transient(&error) {
                warn!(consumer = self.spec.durable, error = %error, events = range.len(), ?delay, "transient failure; nak'ed for redelivery");
                return (outcomes, Some(delay), None);
            }
            failures += 1;
            if successes == 0 && failures > budget && !others_committed() {
                return (outcomes, Some(delay), Some(error.to_string()));
            }
            if range.len() > 1 {
                debug!(consumer = self.spec.durable, error = %error, events = range.len(), "a set failed; trying its halves");
                let mid = range.start + range.len() / 2;
                stack.push(mid..range.end);
                stack.push(range.start..mid);
            } else {
                suspects.push((range.start, error));
            }
        }
        for (i, error) in suspects {
            if successes == 0 && !others_committed() {
                // Failing alone with nothing else committing: not known to be this message's fault.
                return (outcomes, Some(delay), Some(error.to_string()));
            }
            match self.alone(&deliveries[i], error).await {
                Ok(()) => outcomes[i] = Outcome::Committed,
                Err(e) if self.handler.transient(&e) => return (outcomes, Some(delay), None),
                Err(e) => {
                    warn!(consumer = self.spec.durable, seq = items[i].seq, error = %e, "failed alone {} times: dead-lettering", self.spec.max_failures);
                    outcomes[i] = Outcome::Failed(e.to_string());
                }
            }
        }
        (outcomes, None, None)
    }

    /// Tries one message alone until it commits, fails transiently, or has failed `max_failures` times
    /// (counting the failure that brought it here), pausing 100 ms, doubling, between tries.
    async fn alone(&self, delivery: &Delivery<H::Event>, mut error: HandleError) -> Result<(), HandleError> {
        let item = std::slice::from_ref(delivery);
        for failed in 1..self.spec.max_failures.max(1) {
            if self.handler.transient(&error) {
                return Err(error);
            }
            tokio::time::sleep(backoff(failed as i64).min(Duration::from_secs(2))).await;
            match self.attempt(item).await {
                Ok(()) => return Ok(()),
                Err(e) => error = e,
            }
        }
        Err(error)
    }
}

/// How many `ack_wait`s a unit's messages are kept from redelivery while it is being stored.
pub const MAX_WORK_ACK_WAITS: u32 = 10;

/// Runs `work`, telling JetStream every third of `ack_wait` that `messages` are still being worked on
/// (for at most [`MAX_WORK_ACK_WAITS`] × `ack_wait`).
async fn in_progress<T>(messages: &[Message], ack_wait: Duration, work: impl Future<Output = T>) -> T {
    let mut work = std::pin::pin!(work);
    let every = (ack_wait / 3).max(Duration::from_millis(100));
    let until = Instant::now() + ack_wait * MAX_WORK_ACK_WAITS;
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tokio::time::sleep(every), if Instant::now() < until => {
                for m in messages {
                    if let Err(e) = m.ack_with(AckKind::Progress).await {
                        debug!(error = %e, "in-progress ack failed");
                    }
                }
            }
        }
    }
}

/// Publishes dead letters, then acks the originals whose dead letter is stored; returns a delay when one
/// could not be stored (its original is nak'ed and comes back).
async fn dead_letter(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    dead: Vec<(Message, u64, &'static str, String)>,
) -> Option<Duration> {
    let mut acks = Vec::with_capacity(dead.len());
    for (m, seq, class, reason) in &dead {
        warn!(consumer = spec.durable, subject = %m.subject, seq, class, reason, "dead-lettering");
        acks.push(
            dlq::send(js, &m.subject, m.headers.as_ref(), m.payload.clone(), &spec.stream, *seq, class, reason).await,
        );
    }
    let mut retry = None;
    let mut stored_letters = Vec::with_capacity(dead.len());
    for ((m, _, class, _), ack) in dead.iter().zip(acks) {
        let stored = match ack {
            Ok(fut) => fut.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match stored {
            Ok(()) => {
                metrics::counter!("tributary_dead_letters_total", "consumer" => spec.label, "class" => *class)
                    .increment(1);
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
    report_uploads(js, "dead_letters", stored_letters.into_iter()).await;
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
