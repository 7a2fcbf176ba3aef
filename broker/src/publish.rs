//! Publishing with idempotency keys, pipelined acknowledgements and trace context.
//!
//! [`Publisher`] keeps up to `max_in_flight` publishes awaiting their JetStream ack, so a producer is
//! never one round trip per event; only an ack proves that an event is stored, so every publish is
//! counted as stored, duplicate or failed, and failures are kept with their reason, never dropped.

use crate::codec;
use crate::trace;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage as Publish, publish::PublishAck};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::future::Future;
use std::pin::Pin;
use tracing::Instrument;

/// The idempotency header JetStream deduplicates on.
pub const MSG_ID: &str = "Nats-Msg-Id";

type AckFuture = Pin<Box<dyn Future<Output = (String, Result<PublishAck, String>)> + Send>>;

/// What became of the publishes so far.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PublishReport {
    /// Stored by JetStream.
    pub stored: u64,
    /// Dropped by JetStream as a repeat of an idempotency key seen within the duplicate window.
    pub duplicates: u64,
    /// Not acknowledged: (subject, reason). The caller decides to retry or report them.
    pub failed: Vec<(String, String)>,
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
    js: jetstream::Context,
    max_in_flight: usize,
    in_flight: FuturesUnordered<AckFuture>,
    report: PublishReport,
}

impl Publisher {
    /// A publisher that keeps at most `max_in_flight` acks outstanding.
    pub fn new(js: jetstream::Context, max_in_flight: usize) -> Self {
        Publisher {
            js,
            max_in_flight: max_in_flight.max(1),
            in_flight: FuturesUnordered::new(),
            report: PublishReport::default(),
        }
    }

    /// Publishes `value` as MessagePack to `subject`, with an idempotency key when given.
    pub async fn publish<T: serde::Serialize>(&mut self, subject: String, msg_id: Option<&str>, value: &T) {
        let payload = codec::to_msgpack(value);
        self.publish_raw(subject, headers(msg_id, codec::MSGPACK), payload).await;
    }

    /// Publishes a payload with the given headers (trace context is added). Waits only when the
    /// pipeline is full.
    pub async fn publish_raw(&mut self, subject: String, mut headers: HeaderMap, payload: Bytes) {
        while self.in_flight.len() >= self.max_in_flight {
            self.settle_one().await;
        }
        let span = tracing::info_span!("publish", otel.kind = "producer", subject = %subject);
        trace::inject(&span, &mut headers);
        let sent = self
            .js
            .send_publish(subject.clone(), Publish::build().payload(payload).headers(headers))
            .instrument(span)
            .await;
        match sent {
            Ok(ack) => self.in_flight.push(Box::pin(async move {
                let r = ack.await.map_err(|e| e.to_string());
                (subject, r)
            })),
            Err(e) => self.report.failed.push((subject, e.to_string())),
        }
    }

    async fn settle_one(&mut self) {
        if let Some((subject, r)) = self.in_flight.next().await {
            match r {
                Ok(ack) if ack.duplicate => self.report.duplicates += 1,
                Ok(_) => self.report.stored += 1,
                Err(e) => self.report.failed.push((subject, e)),
            }
        }
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

/// Publishes one payload and waits for its ack: for the API's ingest and replay routes.
pub async fn publish_one(
    js: &jetstream::Context,
    subject: String,
    mut headers: HeaderMap,
    payload: Bytes,
) -> Result<PublishAck, async_nats::Error> {
    let span = tracing::info_span!("publish", otel.kind = "producer", subject = %subject);
    trace::inject(&span, &mut headers);
    async {
        let ack = js.send_publish(subject, Publish::build().payload(payload).headers(headers)).await?;
        Ok(ack.await?)
    }
    .instrument(span)
    .await
}
