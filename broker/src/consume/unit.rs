//! One unit of work ([`Unit`]): a set of messages stored together, and on failure narrowed down until
//! what fails stands alone.

use super::crashes::{CrashLog, Stops};
use super::{BatchHandler, ConsumerSpec, Delivery, HandleError, backoff, panic_text};
use crate::metric_names as names;
use crate::ts::Ts;
use async_nats::jetstream::{AckKind, Message};
use futures::FutureExt;
use opentelemetry::trace::TraceContextExt;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing::{Instrument, debug, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// One valid message waiting for, or in, a unit of work (its event travels beside it, in the
/// [`Delivery`] the handler is given).
pub(super) struct Item {
    /// Boxed: a JetStream message is 408 bytes, and an item moves through several queues on its way
    /// (fetched, ready or blocked, a unit, its outcome). Moved whole, copying it was a fifth of the
    /// processor's CPU samples while it caught up a backlog (BENCHMARKS.md).
    pub(super) message: Box<Message>,
    pub(super) seq: u64,
    pub(super) received: Ts,
    pub(super) series: u64,
    pub(super) delivered: i64,
    pub(super) parent: opentelemetry::Context,
    /// Redelivered without this process having nak'ed it: what the crash records say of it.
    pub(super) suspect: Option<Stops>,
}

/// What became of one message of a unit.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Outcome {
    /// Stored: ack.
    Committed,
    /// Not stored, to be tried again later: nak with a backoff.
    Retry,
    /// Failed alone `max_failures` times while other work committed: dead-letter with this error.
    Failed(String),
}

/// What a finished unit reports: its items, each with its outcome, and whether the failures it saw were
/// transient or systemic (then the loop pauses before launching more work).
pub(super) struct Done {
    pub(super) items: Vec<(Item, Outcome)>,
    pub(super) pause: Option<Duration>,
    pub(super) systemic: Option<String>,
}

/// What a consumer's units have done so far, for telling a message's own failure from the system's.
#[derive(Debug, Default)]
pub(super) struct Health {
    /// Attempts that committed.
    pub(super) commits: AtomicU64,
    /// Attempts that failed.
    pub(super) failures: AtomicU64,
}

/// One unit of work: a set of items stored together, isolated on failure.
pub(super) struct Unit<H> {
    pub(super) handler: H,
    pub(super) spec: Arc<ConsumerSpec>,
    pub(super) health: Arc<Health>,
    /// For a unit of suspects: the records that count its stops.
    pub(super) crashes: Option<CrashLog>,
}

impl<H: BatchHandler> Unit<H> {
    /// Stores the items, reporting them in progress while it works.
    pub(super) async fn run(self, items: Vec<Item>, deliveries: Vec<Delivery<H::Event>>) -> Done {
        let started = Instant::now();
        if let Some(oldest) = items.iter().map(|i| i.received.0).min() {
            let waited = (chrono::Utc::now() - oldest).to_std().unwrap_or_default();
            metrics::histogram!(names::PHASE_SECONDS, "consumer" => self.spec.label, "phase" => "wait")
                .record(waited.as_secs_f64());
        }
        let span =
            tracing::info_span!("process", otel.kind = "consumer", consumer = self.spec.durable, events = items.len());
        let mut parents = items.iter().map(|i| &i.parent).filter(|cx| cx.span().span_context().is_valid());
        if let Some(first) = parents.next() {
            let _ = span.set_parent(first.clone());
        }
        for cx in parents.take(32) {
            span.add_link(cx.span().span_context().clone());
        }
        let suspects: Vec<(u64, Stops)> = items.iter().filter_map(|i| Some((i.seq, i.suspect?))).collect();
        if let Some(log) = &self.crashes {
            log.starting(&suspects).await;
        }
        let ack_wait = self.spec.ack_wait;
        let (outcomes, pause, systemic) =
            in_progress(&items, ack_wait, self.isolate(&items, &deliveries).instrument(span)).await;
        if let Some(log) = &self.crashes {
            log.finished(&suspects.iter().map(|s| s.0).collect::<Vec<_>>()).await;
        }
        metrics::histogram!(names::BATCH_SECONDS, "consumer" => self.spec.label)
            .record(started.elapsed().as_secs_f64());
        Done { items: items.into_iter().zip(outcomes).collect(), pause, systemic }
    }

    /// One attempt at storing `items`; a panic is a failure like any other.
    async fn attempt(&self, deliveries: &[Delivery<H::Event>]) -> Result<(), HandleError> {
        let out = std::panic::AssertUnwindSafe(self.handler.handle(deliveries)).catch_unwind().await;
        let out = out
            .unwrap_or_else(|panic| Err(HandleError(anyhow::anyhow!("the handler panicked: {}", panic_text(&*panic)))));
        match &out {
            Ok(()) => self.health.commits.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.health.failures.fetch_add(1, Ordering::Relaxed),
        };
        out
    }

    /// Stores `items`, and on a failure that is not transient narrows it down: halves are tried depth
    /// first until each failing message stands alone; a message failing alone is then tried alone up to
    /// `max_failures` times in all, and dead-lettered if it still fails and the failure is its own: other
    /// work committed meanwhile (here or in another lane), or the consumer had committed before and
    /// nothing else failed while this message was tried alone (a poison message on a quiet stream), or
    /// the failure is one the handler names as its messages' own ([`ConsumerSpec::own`]).
    /// Returns each item's outcome, a delay to pause the loop for, and the error when the failure looks
    /// systemic: nothing commits at all, neither here within a few more attempts than it takes to reach
    /// one message, nor anywhere else meanwhile, and other messages fail too.
    async fn isolate(
        &self,
        items: &[Item],
        deliveries: &[Delivery<H::Event>],
    ) -> (Vec<Outcome>, Option<Duration>, Option<String>) {
        let mut outcomes = vec![Outcome::Retry; items.len()];
        let commits_before = self.health.commits.load(Ordering::Relaxed);
        let others_committed = || self.health.commits.load(Ordering::Relaxed) > commits_before;
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
            if (self.spec.lasting)(&error) {
                return (outcomes, Some(delay), Some(error.to_string()));
            }
            if (self.spec.transient)(&error) {
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
            let failures_before = self.health.failures.load(Ordering::Relaxed);
            let (result, tries) = self.alone(&deliveries[i], error).await;
            let others_failed = self.health.failures.load(Ordering::Relaxed) - failures_before > tries;
            match result {
                Ok(()) => outcomes[i] = Outcome::Committed,
                Err(e) if (self.spec.lasting)(&e) => return (outcomes, Some(delay), Some(e.to_string())),
                Err(e) if (self.spec.transient)(&e) => return (outcomes, Some(delay), None),
                Err(e)
                    if (self.spec.own)(&e)
                        || successes > 0
                        || others_committed()
                        || (commits_before > 0 && !others_failed) =>
                {
                    warn!(consumer = self.spec.durable, seq = items[i].seq, error = %e, "failed alone {} times: dead-lettering", self.spec.max_failures);
                    outcomes[i] = Outcome::Failed(e.to_string());
                }
                // Failing alone while nothing commits and other messages fail too: not known to be this
                // message's fault.
                Err(e) => return (outcomes, Some(delay), Some(e.to_string())),
            }
        }
        (outcomes, None, None)
    }

    /// Tries one message alone until it commits, fails transiently, or has failed `max_failures` times
    /// (counting the failure that brought it here), pausing 100 ms, doubling, between tries; also returns
    /// how many tries it made.
    async fn alone(&self, delivery: &Delivery<H::Event>, mut error: HandleError) -> (Result<(), HandleError>, u64) {
        let item = std::slice::from_ref(delivery);
        let mut tries = 0;
        for failed in 1..self.spec.max_failures.max(1) {
            if (self.spec.transient)(&error) || (self.spec.lasting)(&error) {
                return (Err(error), tries);
            }
            tokio::time::sleep(backoff(failed as i64).min(Duration::from_secs(2))).await;
            tries += 1;
            match self.attempt(item).await {
                Ok(()) => return (Ok(()), tries),
                Err(e) => error = e,
            }
        }
        (Err(error), tries)
    }
}

/// How many `ack_wait`s a unit's messages are kept from redelivery while it is being stored.
pub const MAX_WORK_ACK_WAITS: u32 = 10;

/// Runs `work`, telling JetStream every third of `ack_wait` that the messages of `items` are still being
/// worked on (for at most [`MAX_WORK_ACK_WAITS`] × `ack_wait`).
async fn in_progress<T>(items: &[Item], ack_wait: Duration, work: impl Future<Output = T>) -> T {
    let mut work = std::pin::pin!(work);
    let every = (ack_wait / 3).max(Duration::from_millis(100));
    let until = Instant::now() + ack_wait * MAX_WORK_ACK_WAITS;
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tokio::time::sleep(every), if Instant::now() < until => {
                for i in items {
                    if let Err(e) = i.message.ack_with(AckKind::Progress).await {
                        debug!(error = %e, "in-progress ack failed");
                    }
                }
            }
        }
    }
}
