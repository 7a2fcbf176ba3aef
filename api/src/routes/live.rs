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

/// The next sample for this reader; `None` when the hub is gone. A reader that fell behind skips ahead.
async fn next(rx: &mut Receiver<Arc<LiveMsg>>, host: Option<&str>) -> Option<Arc<LiveMsg>> {
    loop {
        match rx.recv().await {
            Ok(m) if host.is_none_or(|h| h == m.host) => return Some(m),
            Ok(_) | Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return None,
        }
    }
}

/// Server-Sent Events: `event: metric`, `data: {...}`; keep-alive comments every 15 s.
#[utoipa::path(get, path = "/v1/live/metrics", tag = "live", operation_id = "liveMetrics",
    summary = "Committed metric samples as Server-Sent Events",
    description = "One `event: metric` per committed batch per server, sent after the commit; `data` is a \
        LiveSample (see components). The stream ends when the server shuts down; browsers' EventSource reconnects \
        by itself.",
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
        let data = String::from_utf8_lossy(&m.json).into_owned();
        Some((Ok(Event::default().event("metric").data(data)), (rx, host, closed)))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// WebSocket: one text message per sample; closed with 1001 (going away) on shutdown. A request that is
/// not a WebSocket upgrade is a JSON 400 `not_websocket`, as every error.
#[utoipa::path(get, path = "/v1/live/ws", tag = "live", operation_id = "liveMetricsWs",
    summary = "Committed metric samples over WebSocket",
    description = "Upgrade to a WebSocket; each text message is a LiveSample (see components). Closed with code \
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
            m = next(&mut rx, host.as_deref()) => {
                let Some(m) = m else { return };
                let text = String::from_utf8_lossy(&m.json).into_owned();
                match send_unless_closed(&mut socket, Message::Text(text.into()), &closed, ping).await {
                    None => break,
                    Some(false) => return,
                    Some(true) => {}
                }
            }
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                // Anything from the reader (its pong, or any message) says it is there.
                Some(Ok(_)) => unanswered = false,
            },
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
