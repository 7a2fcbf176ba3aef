//! Publishing with idempotency keys, pipelined acknowledgements and trace context.
//!
//! [`Publisher`] keeps up to `max_in_flight` publishes (and [`MAX_BYTES_IN_FLIGHT`] of payloads)
//! awaiting their JetStream ack, so a producer is never one round trip per event; only an ack proves
//! that an event is stored, so every publish is counted as stored, duplicate or failed, and failures
//! are kept with their reason, never dropped.
//!
//! A publish with an idempotency key that is not acknowledged (the server restarting, a lost
//! connection, JetStream briefly unavailable) is sent again, with a growing pause, until it is or until
//! the retry window ([`Publisher::retry_for`]) has passed; the key makes a repeat of a publish that was
//! in fact stored a duplicate JetStream drops. While retries are pending the pipeline stays full, so the
//! producer waits instead of piling up events. A publish without a key is never repeated (it could be
//! stored twice): its failure is reported at once, as is a publish larger than the server takes (it would
//! be refused again). Once one publish has used up its retry window the
//! publisher gives up ([`Publisher::gave_up`]): later publishes are reported as not delivered without
//! being sent, so a long outage ends an import quickly with everything accounted for, and a simulator
//! can stop.

use crate::codec;
use crate::trace;
use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, message::PublishMessage as Publish, publish::PublishAck};
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// The idempotency header JetStream deduplicates on.
pub const MSG_ID: &str = "Nats-Msg-Id";

/// How long a publisher keeps retrying an unacknowledged idempotent publish, unless told otherwise.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(60);

/// An acknowledged publish, or the last reason it was not; how many times it was sent again, and whether
/// it failed for good after its whole retry window.
struct Settled {
    subject: String,
    resent: u32,
    result: Result<PublishAck, String>,
    exhausted: bool,
}

/// A publish awaiting its ack, with the bytes of its payload it holds meanwhile.
type AckFuture = Pin<Box<dyn Future<Output = (Settled, usize)> + Send>>;

/// The most bytes of payloads a [`Publisher`] keeps awaiting their acks, by default: a keyed publish
/// keeps its payload to send it again, and while NATS is slow or unreachable `max_in_flight` of them (an
/// upload's 4,096 lines of up to 1 MiB each) held gigabytes.
pub const MAX_BYTES_IN_FLIGHT: usize = 64 << 20;

/// What became of the publishes so far.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PublishReport {
    /// Stored by JetStream.
    pub stored: u64,
    /// Dropped by JetStream as a repeat of an idempotency key seen within the duplicate window.
    pub duplicates: u64,
    /// Publishes sent again after a failure (each repeat counted); a repeat of a publish that was in fact
    /// stored is counted under `duplicates`.
    pub resent: u64,
    /// Not acknowledged: (subject, reason). The caller decides to retry or report them.
    pub failed: Vec<(String, String)>,
    /// Per stream, the highest sequence an acknowledged publish got (a duplicate's is the one first
    /// stored): once a stream's consumers have acked up to it, every one of these publishes in it is
    /// processed.
    pub last: std::collections::BTreeMap<String, u64>,
}

/// Builds the headers of one of our publishes: content type, idempotency key and trace context.
pub fn headers(msg_id: Option<&str>, content_type: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Content-Type", content_type);
    if let Some(id) = msg_id {
        h.insert(MSG_ID, id);
    }
    h
}

/// A pipelined JetStream publisher.
pub struct Publisher {
    /// Shared with the pending resends: one pointer each, not a copy of the context per publish.
    js: std::sync::Arc<jetstream::Context>,
    max_in_flight: usize,
    max_bytes: usize,
    /// Bytes of payloads in `in_flight`.
    bytes: usize,
    retry_for: Duration,
    in_flight: FuturesUnordered<AckFuture>,
    report: PublishReport,
    gave_up: Option<String>,
}

impl Publisher {
    /// A publisher that keeps at most `max_in_flight` acks outstanding, and at most
    /// [`MAX_BYTES_IN_FLIGHT`] of payloads, and retries idempotent publishes for [`DEFAULT_RETRY`].
    pub fn new(js: jetstream::Context, max_in_flight: usize) -> Self {
        Publisher {
            js: std::sync::Arc::new(js),
            max_in_flight: max_in_flight.max(1),
            max_bytes: MAX_BYTES_IN_FLIGHT,
            bytes: 0,
            retry_for: DEFAULT_RETRY,
            in_flight: FuturesUnordered::new(),
            report: PublishReport::default(),
            gave_up: None,
        }
    }

    /// Keeps at most `max` bytes of payloads awaiting their acks (one larger publish still goes, alone).
    pub fn max_bytes(mut self, max: usize) -> Self {
        self.max_bytes = max;
        self
    }

    /// Bytes of payloads awaiting their acks now.
    pub fn bytes_in_flight(&self) -> usize {
        self.bytes
    }

    /// Retries an unacknowledged idempotent publish for up to `window` after its first send (zero: never).
    pub fn retry_for(mut self, window: Duration) -> Self {
        self.retry_for = window;
        self
    }

    /// Publishes `value` as MessagePack to `subject`, with an idempotency key when given.
    pub async fn publish<T: serde::Serialize>(&mut self, subject: String, msg_id: Option<&str>, value: &T) {
        let payload = codec::to_msgpack(value);
        self.publish_raw(subject, headers(msg_id, codec::MSGPACK), payload).await;
    }

    /// Publishes a payload with the given headers (trace context is added). Waits only when the
    /// pipeline is full. The first send happens here, in call order, so one publisher's events are
    /// stored in the order it was given them (unless one has to be sent again).
    pub async fn publish_raw(&mut self, subject: String, headers: HeaderMap, payload: Bytes) {
        if let Err(big) = self.try_publish_raw(subject, headers, payload).await {
            let why = big.to_string();
            self.report.failed.push((big.subject, why));
        }
    }

    /// As [`publish_raw`](Self::publish_raw), except that a message more than the server takes is handed
    /// back instead of counted as failed, for the caller to publish something in its place.
    pub async fn try_publish_raw(
        &mut self,
        subject: String,
        mut headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), TooLarge> {
        while let Some(Some(settled)) = self.in_flight.next().now_or_never() {
            self.record(settled);
        }
        let size = payload.len();
        while self.in_flight.len() >= self.max_in_flight
            || (!self.in_flight.is_empty() && self.bytes + size > self.max_bytes)
        {
            self.settle_one().await;
        }
        if let Some(why) = &self.gave_up {
            self.report.failed.push((subject, format!("not sent: {why}")));
            return Ok(());
        }
        let span = tracing::info_span!("publish", otel.kind = "producer", subject = %subject);
        trace::inject(&span, &mut headers);
        // Only a keyed publish may be repeated; it keeps what a repeat needs.
        let again = (headers.get(MSG_ID).is_some() && !self.retry_for.is_zero()).then(|| Resend {
            js: self.js.clone(),
            headers: headers.clone(),
            payload: payload.clone(),
            until: Instant::now() + self.retry_for,
        });
        // While disconnected a keyed publish waits in the pipeline for the reconnect instead of blocking
        // the producer on the client's full queue; it is sent when NATS is back (order is then not kept).
        let connected = self.js.client().connection_state() == async_nats::connection::State::Connected;
        let sent = if connected || again.is_none() {
            let js = self.js.clone();
            let send = js.send_publish(subject.clone(), Publish::build().payload(payload).headers(headers));
            match self.settling(send.instrument(span)).await {
                // Refused before sending: sending it again would be refused again. This one fails; the
                // publisher goes on.
                Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    return Err(TooLarge { subject, size, why: e.to_string() });
                }
                sent => sent.map_err(|e| e.to_string()),
            }
        } else {
            Err(NOT_CONNECTED.to_owned())
        };
        self.bytes += size;
        self.in_flight.push(Box::pin(settle(subject, sent, again).map(move |s| (s, size))));
        Ok(())
    }

    /// Runs `work` while collecting this publisher's acks as they come. A publish waits while the client
    /// has as many publishes awaiting their ack as it allows (async-nats's cap, 5,000 by default, shared
    /// by every publisher on the client), and only a collected ack frees a slot. So whoever holds
    /// publishes in flight collects their acks while it waits on anything else: while its next send waits
    /// for a slot (else it could wait for good, on its own acks or on another publisher doing the same),
    /// and while it waits for its next input (an upload's client pausing would otherwise hold up to
    /// `max_in_flight` of the process's slots for as long as it likes). Returns what `work` returns.
    pub async fn settling<T>(&mut self, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(done) = work.as_mut().poll(cx) {
                return Poll::Ready(done);
            }
            while let Poll::Ready(Some(settled)) = self.in_flight.poll_next_unpin(cx) {
                self.record(settled);
            }
            Poll::Pending
        })
        .await
    }

    async fn settle_one(&mut self) {
        if let Some(settled) = self.in_flight.next().await {
            self.record(settled);
        }
    }

    fn record(&mut self, (Settled { subject, resent, result, exhausted }, size): (Settled, usize)) {
        self.bytes -= size;
        self.report.resent += resent as u64;
        if let Ok(ack) = &result {
            // No allocation per ack: the stream's name is copied once.
            match self.report.last.get_mut(&ack.stream) {
                Some(last) => *last = (*last).max(ack.sequence),
                None => {
                    self.report.last.insert(ack.stream.clone(), ack.sequence);
                }
            }
        }
        match result {
            Ok(ack) if ack.duplicate => self.report.duplicates += 1,
            Ok(_) => self.report.stored += 1,
            Err(e) => {
                if exhausted && self.gave_up.is_none() {
                    tracing::warn!(subject, error = %e, window = ?self.retry_for, "publish not acknowledged within the retry window; giving up");
                    self.gave_up =
                        Some(format!("an earlier publish was not acknowledged within {:?} ({e})", self.retry_for));
                }
                self.report.failed.push((subject, e));
            }
        }
    }

    /// Whether a publish used up its retry window: NATS has been unreachable for that long, and later
    /// publishes are reported as not delivered without being sent.
    pub fn gave_up(&self) -> bool {
        self.gave_up.is_some()
    }

    /// The counts so far (publishes still in flight are not in it).
    pub fn report(&self) -> &PublishReport {
        &self.report
    }

    /// Takes the failures recorded so far, for retrying.
    pub fn take_failed(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.report.failed)
    }

    /// Waits for every outstanding ack.
    pub async fn flush(&mut self) -> &PublishReport {
        while !self.in_flight.is_empty() {
            self.settle_one().await;
        }
        &self.report
    }

    /// Waits for every outstanding ack and returns the final report.
    pub async fn finish(mut self) -> PublishReport {
        self.flush().await;
        self.report
    }
}

const NOT_CONNECTED: &str = "not connected to NATS";

/// What sending a keyed publish again needs.
struct Resend {
    js: std::sync::Arc<jetstream::Context>,
    headers: HeaderMap,
    payload: Bytes,
    until: Instant,
}

/// Waits for the ack of a first send; on failure sends again (when allowed) with a pause of 100 ms
/// doubling to 2 s, until acknowledged or the retry window has passed.
async fn settle(
    subject: String,
    first: Result<jetstream::context::PublishAckFuture, String>,
    again: Option<Resend>,
) -> Settled {
    let mut result = match first {
        Ok(ack) => ack.await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let (mut resent, mut attempts) = (0u32, 0u32);
    let Some(r) = again else { return Settled { subject, resent, result, exhausted: false } };
    while let Err(e) = &result {
        let pause = Duration::from_millis(100 << attempts.min(4)).min(Duration::from_secs(2));
        if Instant::now() + pause > r.until {
            return Settled { subject, resent, result, exhausted: true };
        }
        tracing::debug!(subject, error = %e, ?pause, "publish not acknowledged; sending it again");
        tokio::time::sleep(pause).await;
        attempts += 1;
        if r.js.client().connection_state() != async_nats::connection::State::Connected {
            result = Err(NOT_CONNECTED.into()); // queueing it would only wait for the reconnect
            continue;
        }
        resent += 1;
        let msg = Publish::build().payload(r.payload.clone()).headers(r.headers.clone());
        result = match r.js.send_publish(subject.clone(), msg).await {
            Ok(ack) => ack.await.map_err(|e| e.to_string()),
            // Larger than the server takes (first sent while disconnected): it would be refused again.
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                let big = TooLarge { subject: subject.clone(), size: r.payload.len(), why: e.to_string() };
                return Settled { subject, resent, result: Err(big.to_string()), exhausted: false };
            }
            Err(e) => Err(e.to_string()),
        };
    }
    Settled { subject, resent, result, exhausted: false }
}

/// A message refused before sending as larger than the server takes (its `max_payload`, headers
/// included): sending it again would be refused again.
#[derive(Debug, thiserror::Error)]
#[error("{size} bytes of payload, with its headers, exceed the server's max_payload ({why})")]
pub struct TooLarge {
    /// Where it was to go.
    pub subject: String,
    /// Its payload's size in bytes.
    pub size: usize,
    why: String,
}

/// Why [`publish_one`] did not store its message.
#[derive(Debug, thiserror::Error)]
pub enum PublishOneError {
    /// The payload with its headers is more than the server takes (its `max_payload`): refused before
    /// sending, and sending it again would not help.
    #[error("{0}")]
    TooLarge(String),
    /// NATS refused it or did not answer.
    #[error(transparent)]
    Nats(async_nats::Error),
}

/// Publishes one payload and waits for its ack: for the API's ingest and replay routes.
pub async fn publish_one(
    js: &jetstream::Context,
    subject: String,
    mut headers: HeaderMap,
    payload: Bytes,
) -> Result<PublishAck, PublishOneError> {
    use jetstream::context::PublishErrorKind;
    let span = tracing::info_span!("publish", otel.kind = "producer", subject = %subject);
    trace::inject(&span, &mut headers);
    async {
        let ack = match js.send_publish(subject, Publish::build().payload(payload).headers(headers)).await {
            Ok(ack) => ack,
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                return Err(PublishOneError::TooLarge(e.to_string()));
            }
            Err(e) => return Err(PublishOneError::Nats(e.into())),
        };
        ack.await.map_err(|e| PublishOneError::Nats(e.into()))
    }
    .instrument(span)
    .await
}
