//! `GET /v1/live/metrics` (Server-Sent Events) and `GET /v1/live/ws` (WebSocket): every committed metric
//! sample as `{"host", "ts", "fields"}`, one per committed batch per host; `?host=` keeps one host.

use crate::error::ErrorBody;
use crate::live::LiveMsg;
use crate::params::Params;
use crate::{ApiError, AppState};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::broadcast::{Receiver, error::RecvError};

/// What a reader is sent next.
#[derive(Debug)]
enum Next {
    /// A sample.
    Sample(Arc<LiveMsg>),
    /// The reader fell this many samples behind the hub's backlog, and they were skipped.
    Skipped(u64),
}

impl Next {
    /// Its Server-Sent Events name.
    fn event(&self) -> &'static str {
        match self {
            Next::Sample(_) => "metric",
            Next::Skipped(_) => "skipped",
        }
    }

    /// The message's text: the sample's JSON, or `{"skipped": n}`.
    fn text(&self) -> String {
        match self {
            Next::Sample(m) => String::from_utf8_lossy(&m.json).into_owned(),
            Next::Skipped(n) => format!(r#"{{"skipped":{n}}}"#),
        }
    }
}

/// What this reader is sent next; `None` when the hub is gone. A reader that fell behind skips ahead, and
/// is told: without it, a server whose last sample was skipped showed its older one for as long as the
/// page stayed open (the page re-reads the latest samples when told).
async fn next(rx: &mut Receiver<Arc<LiveMsg>>, host: Option<&str>) -> Option<Next> {
    loop {
        match rx.recv().await {
            Ok(m) if host.is_none_or(|h| h == m.host) => return Some(Next::Sample(m)),
            Ok(_) => continue,
            Err(RecvError::Lagged(n)) => return Some(Next::Skipped(n)),
            Err(RecvError::Closed) => return None,
        }
    }
}

/// Server-Sent Events: `event: metric`, `data: {...}` (or `event: skipped`, `data: {"skipped": n}`);
/// keep-alive comments every 15 s.
#[utoipa::path(get, path = "/v1/live/metrics", tag = "live", operation_id = "liveMetrics",
    summary = "Committed metric samples as Server-Sent Events",
    description = "One `event: metric` per committed batch per server, sent after the commit; `data` is a \
        LiveSample (see components). A reader that fell further behind than the server keeps is sent `event: \
        skipped` with `{\"skipped\": n}`, the samples it missed: re-read /v1/metrics/latest. The stream ends when \
        the server shuts down; browsers' EventSource reconnects by itself.",
    params(("host" = Option<String>, Query, description = "Only this host.")),
    responses((status = 200, description = "An endless event stream of LiveSample", body = String,
        content_type = "text/event-stream")))]
pub async fn sse(
    State(s): State<AppState>,
    Query(p): Query<Params>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let host = p.get("host").cloned();
    let (rx, closed) = (s.live.subscribe(), s.live.closed());
    let events = futures::stream::unfold((rx, host, closed), |(mut rx, host, closed)| async move {
        let m = tokio::select! {
            _ = closed.cancelled() => None,
            m = next(&mut rx, host.as_deref()) => m,
        }?;
        Some((Ok(Event::default().event(m.event()).data(m.text())), (rx, host, closed)))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// WebSocket: one text message per sample; closed with 1001 (going away) on shutdown. A request that is
/// not a WebSocket upgrade is a JSON 400 `not_websocket`, as every error.
#[utoipa::path(get, path = "/v1/live/ws", tag = "live", operation_id = "liveMetricsWs",
    summary = "Committed metric samples over WebSocket",
    description = "Upgrade to a WebSocket; each text message is a LiveSample (see components), or `{\"skipped\": \
        n}` when the reader fell further behind than the server keeps (re-read /v1/metrics/latest). Closed with code \
        1001 when the server shuts down. Pinged every api.live_ping_secs (20 s); a reader that has not answered \
        by the next ping is taken as gone.",
    params(("host" = Option<String>, Query, description = "Only this host.")),
    responses(
        (status = 101, description = "Switching protocols"),
        (status = 400, description = "Not a WebSocket upgrade request (not_websocket)", body = ErrorBody),
    ))]
pub async fn ws(
    State(s): State<AppState>,
    Query(p): Query<Params>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => return ApiError::bad("not_websocket", e.body_text()).into_response(),
    };
    let host = p.get("host").cloned();
    let (rx, closed) = (s.live.subscribe(), s.live.closed());
    let ping = std::time::Duration::from_secs(s.config.live_ping_secs.max(1));
    // A reader sends only pongs and its close: without a bound, a message of up to 64 MiB (tungstenite's
    // default) was taken into memory, per connection.
    let upgrade = upgrade.max_message_size(MAX_READER_MESSAGE).max_frame_size(MAX_READER_MESSAGE);
    upgrade.on_upgrade(move |socket| relay(socket, rx, host, closed, ping))
}

/// The largest message or frame a live reader may send, in bytes; a larger one ends its stream.
const MAX_READER_MESSAGE: usize = 64 << 10;

/// Sends the stream's messages to `socket` until shutdown (1001) or the reader goes. A reader that has
/// not answered a ping by the next one (every `ping`), or does not take a message within `ping` (it
/// stopped reading: the socket's buffers are full), is taken as gone: without it, a reader that vanished
/// without closing, or stayed connected without reading, held its task and socket until shutdown.
async fn relay(
    mut socket: WebSocket,
    mut rx: Receiver<Arc<LiveMsg>>,
    host: Option<String>,
    closed: tokio_util::sync::CancellationToken,
    ping: std::time::Duration,
) {
    let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + ping, ping);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unanswered = false;
    loop {
        tokio::select! {
            // Shutdown first, whatever else is ready: the reader is told why the stream ends.
            biased;
            _ = closed.cancelled() => break,
            _ = pings.tick() => {
                if unanswered {
                    return;
                }
                unanswered = true;
                match send_unless_closed(&mut socket, Message::Ping(Default::default()), &closed, ping).await {
                    None => break,
                    Some(false) => return,
                    Some(true) => {}
                }
            }
            // Before the next sample: while samples wait, that branch is always ready, and a reader's pong
            // read after it was never read, so a reader that answered every ping was taken as gone.
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                // Anything from the reader (its pong, or any message) says it is there.
                Some(Ok(_)) => unanswered = false,
            },
            m = next(&mut rx, host.as_deref()) => {
                let Some(m) = m else { return };
                match send_unless_closed(&mut socket, Message::Text(m.text().into()), &closed, ping).await {
                    None => break,
                    Some(false) => return,
                    Some(true) => {}
                }
            }
        }
    }
    // Shutting down: 1001 (going away), for as long as a reader that stopped reading allows.
    let frame = CloseFrame { code: 1001, reason: "server shutting down".into() };
    let _ = tokio::time::timeout(CLOSE_WAIT, socket.send(Message::Close(Some(frame)))).await;
}

/// Sends `m`: whether it went within `within` (a reader that takes nothing for that long has stopped
/// reading), or `None` once shutdown comes first (such a reader must not hold that up either).
async fn send_unless_closed(
    socket: &mut WebSocket,
    m: Message,
    closed: &tokio_util::sync::CancellationToken,
    within: std::time::Duration,
) -> Option<bool> {
    tokio::select! {
        _ = closed.cancelled() => None,
        r = tokio::time::timeout(within, socket.send(m)) => Some(matches!(r, Ok(Ok(())))),
    }
}

/// How long a closing WebSocket waits to hand its close frame to a reader.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::{BACKLOG, Live};

    fn sample(host: &str) -> LiveMsg {
        LiveMsg { host: host.to_owned(), json: bytes::Bytes::from(format!(r#"{{"host":"{host}"}}"#)) }
    }

    /// A reader that fell behind the backlog is told how many samples it missed, then goes on from the
    /// oldest kept. (It skipped them silently: a server whose last sample was among them showed its older
    /// one for good.)
    #[tokio::test]
    async fn a_reader_that_fell_behind_is_told_what_it_missed() {
        let live = Live::new();
        let mut rx = live.subscribe();
        for i in 0..BACKLOG + 10 {
            live.send(sample(&format!("h{i}")));
        }
        let first = next(&mut rx, None).await.unwrap();
        assert!(matches!(first, Next::Skipped(10)), "{first:?}");
        assert_eq!(first.text(), r#"{"skipped":10}"#);
        let then = next(&mut rx, None).await.unwrap();
        assert_eq!(then.text(), r#"{"host":"h10"}"#);
        // Told even when filtered to one host: the skipped samples may have been its own.
        let mut one = live.subscribe();
        for i in 0..BACKLOG + 1 {
            live.send(sample(&format!("x{i}")));
        }
        assert!(matches!(next(&mut one, Some("nohost")).await, Some(Next::Skipped(1))));
    }
}
