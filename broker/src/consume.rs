//! The consume loop: the one place that knows JetStream delivery semantics.
//!
//! A durable pull consumer feeds batches to a [`BatchHandler`]. Per batch:
//! 1. every message is decoded by the handler; a refused one is dead-lettered with its reason and acked
//!    only once the dead letter is stored (if that fails it is nak'ed and comes back);
//! 2. the valid events go to [`BatchHandler::handle`] together, which commits them in one transaction;
//! 3. after the commit every message is acked; on a failure every message is nak'ed with a delay that
//!    grows with its delivery count, so a database outage backs off instead of spinning.
//!
//! While a batch is being stored its messages are reported in progress every third of `ack_wait`, so a
//! large batch that takes longer than `ack_wait` is not delivered a second time meanwhile (for at most
//! [`MAX_WORK_ACK_WAITS`] × `ack_wait`: a batch stuck longer goes back to JetStream, to any replica).
//! Messages already fetched behind it are not reported: keep a batch's commit well within `ack_wait`, or
//! they come again (harmlessly).
//!
//! Nothing is acked before it is stored somewhere, so a crash anywhere means redelivery, never loss;
//! handlers make redelivery harmless (last writer wins by stream sequence).

use crate::dlq;
use crate::events::Rejection;
use crate::ts::Ts;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, Message, consumer::pull};
use futures::StreamExt;
use opentelemetry::trace::TraceContextExt;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};
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
}

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
pub trait BatchHandler: Send + Sync + 'static {
    /// The decoded event.
    type Event: Send + Sync + 'static;

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

/// Runs the consume loop until `shutdown` fires; the batch in hand is finished first.
pub async fn run<H: BatchHandler>(
    js: jetstream::Context,
    spec: ConsumerSpec,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), ConsumeError> {
    let mut failures = 0i64;
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
            let chunk = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                // Unconstrained: tokio's cooperative budget would otherwise end a chunk after ~128
                // ready messages, however many are buffered, and cap every batch there.
                c = tokio::task::unconstrained(chunks.next()) => c,
            };
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
            if !batch.is_empty()
                && let Some(delay) = process(&js, &spec, &handler, batch).await
            {
                tokio::select! { _ = shutdown.cancelled() => return Ok(()), _ = tokio::time::sleep(delay) => {} }
            }
            if broken {
                break;
            }
        }
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

/// Handles one batch; returns a delay to wait before the next when it failed.
async fn process<H: BatchHandler>(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    handler: &H,
    batch: Vec<Message>,
) -> Option<Duration> {
    let started = Instant::now();
    let label = spec.label;
    let mut good = Vec::with_capacity(batch.len());
    let mut deliveries = Vec::with_capacity(batch.len());
    let mut dead = Vec::new();
    let mut parents = Vec::new();
    let mut max_delivered = 1;
    let mut pending = 0;
    for m in batch {
        let Ok(info) = m.info() else {
            warn!(consumer = spec.durable, subject = %m.subject, "message without JetStream metadata; leaving it to redelivery");
            continue;
        };
        let (seq, received, delivered) = (info.stream_sequence, Ts::new(info.published), info.delivered);
        pending = info.pending;
        max_delivered = max_delivered.max(delivered);
        match handler.decode(&m.subject, m.headers.as_ref(), &m.payload, received) {
            Ok(event) => {
                parents.push(crate::trace::extract(m.headers.as_ref()));
                deliveries.push(Delivery { event, seq, received });
                good.push(m);
            }
            Err(rejection) => dead.push((m, seq, rejection)),
        }
    }
    metrics::gauge!("tributary_consumer_pending", "consumer" => label).set(pending as f64);
    metrics::histogram!("tributary_batch_size", "consumer" => label).record((good.len() + dead.len()) as f64);

    let mut retry = None;
    if !dead.is_empty() {
        retry = dead_letter(js, spec, dead).await;
    }
    if !good.is_empty() {
        let span = tracing::info_span!("process", otel.kind = "consumer", consumer = spec.durable, events = good.len());
        let mut parents = parents.into_iter().filter(|cx| cx.span().span_context().is_valid());
        if let Some(first) = parents.next() {
            let _ = span.set_parent(first);
        }
        for cx in parents.take(32) {
            span.add_link(cx.span().span_context().clone());
        }
        match in_progress(&good, spec.ack_wait, handler.handle(&deliveries).instrument(span)).await {
            Ok(()) => {
                let now = chrono::Utc::now();
                let latency = metrics::histogram!("tributary_commit_latency_seconds", "consumer" => label);
                for d in &deliveries {
                    latency.record((now - d.received.0).num_microseconds().unwrap_or(0) as f64 / 1e6);
                }
                for m in &good {
                    if let Err(e) = m.ack().await {
                        // The commit stands; the message will be redelivered and change nothing.
                        debug!(error = %e, "ack failed");
                    }
                }
                metrics::counter!("tributary_events_total", "consumer" => label, "outcome" => "processed")
                    .increment(good.len() as u64);
                report_uploads(js, "committed", good.iter()).await;
            }
            Err(e) => {
                let delay = backoff(max_delivered);
                warn!(consumer = spec.durable, error = %e, events = good.len(), ?delay, "batch failed; nak'ed for redelivery");
                metrics::counter!("tributary_batch_failures_total", "consumer" => label).increment(1);
                for m in &good {
                    let _ = m.ack_with(AckKind::Nak(Some(delay))).await;
                }
                retry = Some(retry.map_or(delay, |r: Duration| r.max(delay)));
            }
        }
    }
    metrics::histogram!("tributary_batch_seconds", "consumer" => label).record(started.elapsed().as_secs_f64());
    retry
}

/// How many `ack_wait`s a batch's messages are kept from redelivery while it is being stored.
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

/// Publishes dead letters, then acks the originals whose dead letter is stored.
async fn dead_letter(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    dead: Vec<(Message, u64, Rejection)>,
) -> Option<Duration> {
    let mut acks = Vec::with_capacity(dead.len());
    for (m, seq, r) in &dead {
        warn!(consumer = spec.durable, subject = %m.subject, seq, class = r.class, reason = %r.reason, "dead-lettering");
        acks.push(
            dlq::send(js, &m.subject, m.headers.as_ref(), m.payload.clone(), &spec.stream, *seq, r.class, &r.reason)
                .await,
        );
    }
    let mut retry = None;
    let mut stored_letters = Vec::with_capacity(dead.len());
    for ((m, _, r), ack) in dead.iter().zip(acks) {
        let stored = match ack {
            Ok(fut) => fut.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match stored {
            Ok(()) => {
                metrics::counter!("tributary_dead_letters_total", "consumer" => spec.label, "class" => r.class)
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
