//! Taking a pinned partition over from an owner that stopped while holding messages: they come back at
//! once (a consumer reset), not after `ack_wait`.
//!
//! JetStream delivers a message again only once it has waited `ack_wait` (30 s) unacknowledged, and
//! delivers nothing more of a consumer that has `max_ack_pending` unacknowledged. A processor that dies
//! leaves the messages it held unacknowledged, and so does a loop handed over with messages still in its
//! pull subscription: the partition's next owner got them only after `ack_wait`, and under a backlog deep
//! enough to fill `max_ack_pending` got nothing at all until then. So before its first pull a loop that
//! holds nothing looks at the consumer: when some process holds messages and none holds the pin (it has
//! lapsed or was released: the holder stopped pulling), it resets the consumer to its ack floor (NATS 2.14,
//! `$JS.API.CONSUMER.RESET`), and everything above the floor is delivered again, now. While another
//! process holds the pin it waits: that process is alive and pulling, and the messages are its own.
//! (Messages this loop's own previous pull stream was delivered and never read are taken back the same
//! way.) "No pin" means "not pulling", not "dead": a handed-over loop that is still finishing a unit
//! longer than the pin's timeout has its messages delivered again here too, stored twice (versions and
//! locks keep that harmless), and a suspect unit it runs then counts a stop in the crash records here.
//!
//! A reset delivers every message above the floor, those acked out of order too (they change nothing
//! when stored again): it is done only while those are at most `max_ack_pending`, as many as the
//! consumer may hold at once anyway. A slow series can hold the floor far back while the others go on,
//! and delivering all of those again would cost more than waiting `ack_wait`.
//!
//! Given back by a reset, a message comes with a delivery count of 1, yet it may be the one that killed
//! the owner: every message up to the last delivered before the reset is a suspect ([`super::crashes`]),
//! as its redelivery after `ack_wait` would have been.

use super::ConsumerSpec;
use crate::metric_names as names;
use async_nats::jetstream;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The oldest nats-server with the consumer reset API.
const RESET_SERVER_VERSION: (u32, u32, u32) = (2, 14, 0);

/// Resets the pinned consumer of `spec` to its ack floor when another process left messages
/// unacknowledged and holds the pin no more, waiting (polling every eighth of `pin_timeout`) while one
/// does. Returns the stream sequence through which every message delivered again had been delivered
/// before (they are suspects), if it reset. Anything that fails leaves the messages to `ack_wait`, as
/// before, and is logged.
pub(super) async fn reclaim(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    pin_timeout: Duration,
    shutdown: &CancellationToken,
) -> Option<u64> {
    let version = js.client().server_info().version;
    if !crate::server::at_least(&version, RESET_SERVER_VERSION) {
        debug!(consumer = spec.durable, version, "no consumer reset before nats-server 2.14: left to ack_wait");
        return None;
    }
    let poll = (pin_timeout / 8).max(Duration::from_millis(100));
    // Acks this process sent are counted before the consumer is read: a late one would be a message
    // delivered again.
    let _ = js.client().flush().await;
    let stream = js
        .get_stream(&spec.stream)
        .await
        .map_err(|e| debug!(consumer = spec.durable, error = %e, "no stream to take over"))
        .ok()?;
    // No consumer yet: nothing was ever delivered.
    let mut consumer: jetstream::consumer::PullConsumer = stream
        .get_consumer(&spec.durable)
        .await
        .map_err(|e| debug!(consumer = spec.durable, error = %e, "no consumer to take over"))
        .ok()?;
    loop {
        let info = match consumer.info().await {
            Ok(info) => info,
            Err(e) => {
                warn!(consumer = spec.durable, error = %e, "cannot read the consumer before taking it over");
                return None;
            }
        };
        let held = info.num_ack_pending as u64;
        if held == 0 {
            return None;
        }
        if super::pin_of(info).is_some() {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(poll) => continue,
            }
        }
        // Deliveries above the floor (redeliveries too), less those unacknowledged: at least as many as
        // the acked messages a reset delivers again. (An overcount leaves the messages to `ack_wait`.)
        let acked = info.delivered.consumer_sequence.saturating_sub(info.ack_floor.consumer_sequence + held);
        let bound = u64::try_from(spec.max_ack_pending).ok().filter(|b| *b > 0).unwrap_or(u64::MAX);
        if acked > bound {
            info!(
                consumer = spec.durable,
                held,
                acked,
                "messages left unacknowledged by a loop before are left to ack_wait: a reset would deliver too many acked ones again"
            );
            return None;
        }
        return match stream.reset_consumer(&spec.durable, None).await {
            Ok(_) => {
                info!(
                    consumer = spec.durable,
                    held, "messages left unacknowledged by a loop before are delivered again now"
                );
                metrics::counter!(names::CONSUMER_RECLAIMED, "consumer" => spec.label).increment(held);
                Some(info.delivered.stream_sequence)
            }
            Err(e) => {
                warn!(consumer = spec.durable, error = %e, "cannot reset the consumer; what a loop before left comes after ack_wait");
                None
            }
        };
    }
}
