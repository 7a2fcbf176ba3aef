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
//! The second test asks the stream ([`acked_through`]), not the consumer's count of messages waiting:
//! nats-server updates that count only after the publish is acknowledged.

use crate::params::Params;
use crate::{ApiError, AppState};
use async_nats::jetstream::consumer::pull;
use std::time::{Duration, Instant};
use tributary_broker::Kind;
use tributary_broker::consume::{acked_through, processor_consumers};

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
    // A moment past the deadline, so that the barrier's own 504, which names the stream behind, wins
    // when NATS answers.
    let silent = deadline + Duration::from_millis(250);
    match tokio::time::timeout_at(silent.into(), barrier(s, kinds, deadline)).await {
        Ok(answer) => answer,
        Err(_) => Err(ApiError::Timeout(
            "NATS did not say within the fresh timeout how far the processors have committed".into(),
        )),
    }
}

/// [`committed`], checking `deadline` between its polls.
async fn barrier(s: &AppState, kinds: &[Kind], deadline: Instant) -> Result<(), ApiError> {
    let unavailable = |e: async_nats::Error| ApiError::Unavailable(format!("cannot read stream state from NATS: {e}"));
    let mut targets = Vec::with_capacity(kinds.len());
    for &kind in kinds {
        let mut stream = s.js.get_stream(s.streams.stream_name(kind)).await.map_err(|e| unavailable(e.into()))?;
        let last = stream.info().await.map_err(|e| unavailable(e.into()))?.state.last_sequence;
        targets.push((kind, stream, last));
    }
    for (kind, stream, last) in targets {
        if last == 0 {
            continue;
        }
        for (durable, filter, _) in processor_consumers(&s.durable_prefix, kind, s.partitions) {
            let (mut at, mut consumer) = (0, None);
            loop {
                if consumer.is_none() {
                    consumer = stream.get_consumer::<pull::Config>(&durable).await.ok();
                }
                if let Some(c) = consumer.as_mut()
                    && let Ok(info) = c.info().await
                {
                    at = info.ack_floor.stream_sequence;
                    // An error answers no: the barrier asks again until its deadline.
                    if acked_through(&stream, &filter, at, last).await.unwrap_or(false) {
                        break;
                    }
                }
                if Instant::now() >= deadline {
                    return Err(ApiError::Timeout(format!(
                        "the processor has not committed stream {} up to sequence {last} (consumer {durable} is at {at}) within the fresh timeout",
                        s.streams.stream_name(kind)
                    )));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    Ok(())
}
