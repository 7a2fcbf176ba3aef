//! Live streams (WebSocket and Server-Sent Events) whose readers stop answering or stop reading.

use std::time::Duration;

/// The request that upgrades a raw TCP reader to a live WebSocket (`/v1/live/ws{query}`).
fn ws_upgrade(addr: &str, query: &str) -> String {
    format!(
        "GET /v1/live/ws{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A live WebSocket whose reader stops answering is ended at the next ping (`api.live_ping_secs`): a
/// reader that vanished without closing, on a filter that matches nothing, held its task and socket until
/// shutdown. The reader here is raw TCP that upgrades and then never answers the pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_websocket_whose_reader_stops_answering_is_ended() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = crate::common::spawn_app_with(|c| c.api.live_ping_secs = 1).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(ws_upgrade(&addr, "?host=nohost").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(20), tcp.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(ended.is_ok(), "the server still holds the stream after 20 s: {text}");
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(got.contains(&0x89), "a ping frame (0x89) came before the end: {got:?}");
}

/// A reader that sends `request`, reads the response's head (which must start with `status`), then reads
/// nothing while the API has far more live messages to send than the sockets' buffers hold (16 MiB; 4 KiB
/// on the reader's side, 4 MiB on the server's here). After `wait` it reads to the end, which must come
/// within 20 s, and must have been given less than half of what was published: the server stopped
/// sending to it, rather than waiting for it and sending on once it read again.
async fn a_reader_that_stops_reading(app: &crate::common::TestApp, request: &str, status: &[u8], wait: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.base.trim_start_matches("http://").to_owned();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(addr.parse().unwrap()).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    assert!(head.starts_with(status), "{}", String::from_utf8_lossy(&head));
    let (messages, size) = (64, 256 << 10);
    let body = format!(r#"{{"pad":"{}"}}"#, "x".repeat(size));
    for k in 0..messages {
        let subject = format!("{}.bulk{k}", tributary_broker::samples::LIVE_PREFIX);
        app.c.nats.publish(subject, body.clone().into()).await.unwrap();
    }
    app.c.nats.flush().await.unwrap();
    tokio::time::sleep(wait).await;
    let mut got = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut got)).await;
    assert!(ended.is_ok(), "still open after 20 s of reading");
    let published = messages * size;
    assert!(
        got.len() < published / 2,
        "the server waited for the reader and sent on: {} of {published} bytes",
        got.len()
    );
}

/// A live WebSocket whose reader stays connected but reads nothing is ended once a message has waited a
/// ping interval to be taken. (The relay waited in its send, holding the task and socket for as long as
/// the reader stayed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_websocket_whose_reader_stops_reading_is_ended() {
    let app = crate::common::spawn_app_with(|c| c.api.live_ping_secs = 1).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    a_reader_that_stops_reading(&app, &ws_upgrade(&addr, ""), b"HTTP/1.1 101", Duration::from_secs(4)).await;
}

/// A Server-Sent Events reader that stays connected but reads nothing has its connection closed once
/// what the server sent has waited `api.send_stall_secs` (TCP_USER_TIMEOUT). hyper polls the stream
/// only while the socket takes data, so the stream, its task and its socket were held for as long as the
/// reader stayed.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_sse_reader_that_stops_reading_is_cut_off() {
    let app = crate::common::spawn_app_with(|c| c.api.send_stall_secs = 2).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let request = format!("GET /v1/live/metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    a_reader_that_stops_reading(&app, &request, b"HTTP/1.1 200", Duration::from_secs(8)).await;
}

/// A live WebSocket reader that sends a message larger than a reader has any need of (64 KiB) is ended:
/// without a bound the server took in up to 64 MiB per message, per connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_websocket_reader_sending_a_large_message_is_ended() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let app = crate::common::spawn_app().await;
    let url = format!("{}/v1/live/ws", app.base.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    // The server may end the stream while the message is still being sent: the send then fails.
    if ws.send(Message::Text("x".repeat(1 << 20).into())).await.is_err() {
        return;
    }
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the server still holds the stream 20 s after a 1 MiB message");
}

/// A live WebSocket reader that answers every ping is kept while samples arrive faster than it is sent
/// them: the relay looked for the next sample before the reader's frames, so with samples always waiting
/// it never read the pong, and ended the stream at the second ping. It is told what it missed instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_websocket_reader_answering_its_pings_is_kept_under_a_flood() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let app = crate::common::spawn_app_with(|c| c.api.live_ping_secs = 1).await;
    let url = format!("{}/v1/live/ws", app.base.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    // Samples published faster than the relay sends them, from three connections, so some always wait.
    let flooding = tokio_util::sync::CancellationToken::new();
    let mut floods = Vec::new();
    for _ in 0..3 {
        let nats = async_nats::connect(app.nats_server().url()).await.unwrap();
        let stop = flooding.clone();
        let body = bytes::Bytes::from(r#"{"host":"flood","fields":{"cpu":1}}"#);
        floods.push(tokio::spawn(async move {
            let subject = format!("{}.flood", tributary_broker::samples::LIVE_PREFIX);
            while !stop.is_cancelled() {
                nats.publish(subject.clone(), body.clone()).await.unwrap();
            }
        }));
    }
    // Read (tungstenite answers each ping as it reads it) past the second ping and more.
    let (mut samples, mut skipped) = (0u64, 0u64);
    let ended = tokio::time::timeout(Duration::from_secs(4), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(Message::Text(t))) if t.starts_with(r#"{"skipped""#) => skipped += 1,
                Some(Ok(_)) => samples += 1,
            }
        }
    })
    .await;
    flooding.cancel();
    for f in floods {
        f.await.unwrap();
    }
    assert!(ended.is_err(), "the stream ended after {samples} samples and {skipped} notices of skipped ones");
    assert!(samples > 0, "nothing relayed");
}
