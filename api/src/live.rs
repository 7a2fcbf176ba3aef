//! Live metric samples for browsers: one NATS subscription (`live.metric.>`, announced by processors after
//! each commit) fanned out to every open Server-Sent Events stream and WebSocket.
//!
//! Streams end cleanly when the API shuts down: [`Live::close`] is called on shutdown, and every stream
//! selects on it, so graceful shutdown is not held up by open connections.
//!
//! [`relay`] is how a hub follows a core NATS subject (this one's announcements, the uploads' progress).

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tributary_broker::samples::LIVE_PREFIX;
use utoipa::ToSchema;

/// One announced sample: its host (for filtering) and its JSON text.
#[derive(Debug)]
pub struct LiveMsg {
    /// The host, from the subject.
    pub host: String,
    /// `{"host": ..., "ts": ..., "fields": {...}}` as the processor wrote it.
    pub json: Bytes,
}

/// The fan-out hub. Cheap to clone.
#[derive(Clone)]
pub struct Live {
    tx: broadcast::Sender<Arc<LiveMsg>>,
    closed: CancellationToken,
}

impl Default for Live {
    fn default() -> Self {
        Self::new()
    }
}

/// The most samples the hub keeps for its slowest reader (a slower one skips ahead). They are kept for
/// every reader at once, until the slowest has read them: one reader that never reads keeps this many.
/// (It was 4096 of up to a megabyte each: gigabytes for one client reading a byte every few seconds.
/// Samples have at most `samples::MAX_FIELDS` fields now.)
pub const BACKLOG: usize = 1024;

impl Live {
    /// A hub holding up to [`BACKLOG`] undelivered samples.
    pub fn new() -> Self {
        Live { tx: broadcast::channel(BACKLOG).0, closed: CancellationToken::new() }
    }

    /// A receiver of every sample from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveMsg>> {
        self.tx.subscribe()
    }

    /// Fires when the hub closes (API shutdown).
    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// Ends every stream.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Hands `m` to every reader (none is not an error: nobody is watching).
    pub(crate) fn send(&self, m: LiveMsg) {
        let _ = self.tx.send(Arc::new(m));
    }

    /// Subscribes to the announcements and relays them until the hub closes. Returns once subscribed,
    /// so samples committed after it returns reach readers subscribed by then.
    pub async fn relay(&self, nats: &async_nats::Client) -> Result<(), async_nats::SubscribeError> {
        let hub = self.clone();
        relay(nats, LIVE_PREFIX, ">", self.closed(), move |host, msg| {
            // Copied: the payload is a slice of the client's read buffer, which it would keep whole for as
            // long as the slowest reader has not read it.
            hub.send(LiveMsg { host: host.to_owned(), json: Bytes::copy_from_slice(&msg.payload) });
        })
        .await
    }
}

/// Subscribes to `{prefix}.{tokens}` and hands every message to `apply`, with its subject after `prefix.`,
/// until `closed` fires or the subscription ends. Returns once subscribed, so messages published after it
/// returns are relayed.
pub(crate) async fn relay(
    nats: &async_nats::Client,
    prefix: &'static str,
    tokens: &str,
    closed: CancellationToken,
    mut apply: impl FnMut(&str, async_nats::Message) + Send + 'static,
) -> Result<(), async_nats::SubscribeError> {
    let mut sub = nats.subscribe(format!("{prefix}.{tokens}")).await?;
    let _ = nats.flush().await;
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = closed.cancelled() => break,
                m = sub.next() => match m { Some(m) => m, None => break },
            };
            let subject = msg.subject.clone();
            apply(subject.strip_prefix(prefix).and_then(|s| s.strip_prefix('.')).unwrap_or(""), msg);
        }
        let _ = sub.unsubscribe().await;
    });
    Ok(())
}

/// A server's sample: `{"host", "ts", "fields"}` (also what the live streams carry).
#[derive(Serialize, ToSchema)]
pub struct LiveSample {
    /// Numeric fields by name.
    #[schema(value_type = std::collections::BTreeMap<String, f64>)]
    pub fields: Value,
    /// The host, from `metric.<host>`.
    pub host: String,
    /// When.
    #[schema(format = DateTime)]
    pub ts: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that never reads keeps at most `BACKLOG` samples alive, however many follow.
    #[test]
    fn a_reader_that_never_reads_keeps_at_most_the_backlog() {
        let live = Live::new();
        let _never_read = live.subscribe();
        let sent: Vec<std::sync::Weak<LiveMsg>> = (0..BACKLOG + 10)
            .map(|i| {
                let m = Arc::new(LiveMsg { host: format!("h{i}"), json: Bytes::from_static(b"{}") });
                let weak = Arc::downgrade(&m);
                live.tx.send(m).unwrap();
                weak
            })
            .collect();
        let alive = sent.iter().filter(|w| w.upgrade().is_some()).count();
        assert_eq!(alive, BACKLOG);
        assert!(sent[..10].iter().all(|w| w.upgrade().is_none()), "the oldest are gone");
    }
}
