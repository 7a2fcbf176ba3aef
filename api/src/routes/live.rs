//! `GET /v1/live/metrics` (Server-Sent Events) and `GET /v1/live/ws` (WebSocket): every committed metric
//! sample as `{"host", "ts", "fields"}`, one per committed batch per host; `?host=` keeps one host.

use crate::AppState;
use crate::live::LiveMsg;
use crate::params::Params;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use axum::response::sse::{Event, KeepAlive, Sse};
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

/// WebSocket: one text message per sample; closed with 1001 (going away) on shutdown.
pub async fn ws(State(s): State<AppState>, Query(p): Query<Params>, upgrade: WebSocketUpgrade) -> Response {
    let host = p.get("host").cloned();
    let (rx, closed) = (s.live.subscribe(), s.live.closed());
    upgrade.on_upgrade(move |socket| relay(socket, rx, host, closed))
}

async fn relay(
    mut socket: WebSocket,
    mut rx: Receiver<Arc<LiveMsg>>,
    host: Option<String>,
    closed: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = closed.cancelled() => {
                let frame = CloseFrame { code: 1001, reason: "server shutting down".into() };
                let _ = socket.send(Message::Close(Some(frame))).await;
                break;
            }
            m = next(&mut rx, host.as_deref()) => {
                let Some(m) = m else { break };
                let text = String::from_utf8_lossy(&m.json).into_owned();
                // A reader that stops reading must not hold up shutdown.
                let sent = tokio::select! {
                    _ = closed.cancelled() => break,
                    r = socket.send(Message::Text(text.into())) => r,
                };
                if sent.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            },
        }
    }
}
