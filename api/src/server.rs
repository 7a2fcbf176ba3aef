//! The connection loop: what `axum::serve` does (HTTP/1.1 with upgrades, graceful shutdown), plus a
//! deadline for each request's headers. `axum::serve` gives hyper no timer, so hyper's header timeout
//! never ran: a client that connected and sent nothing, or half a request line, held its connection and
//! task for as long as it liked, and enough of them exhaust the file descriptors. And a deadline for what
//! the server sends ([`stall_timeout`]): a reader that stops reading must not hold a stream for good.

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Makes the kernel close `tcp` once data sent on it has waited `after` to be acknowledged, or to be sent
/// at all because the reader's window stays closed (`TCP_USER_TIMEOUT`; Linux only). hyper polls a
/// streamed body (Server-Sent Events, an upload's progress) only while the socket takes data, so a reader
/// that stays connected and stops reading otherwise holds its stream and task until it goes.
pub fn stall_timeout(tcp: &tokio::net::TcpStream, after: Duration) {
    #[cfg(target_os = "linux")]
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(after)) {
        tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (tcp, after);
}

/// Serves `router` on `listener` until `stopping` completes; then stops accepting, lets every connection
/// finish the request it is in (closing idle ones) and returns once all are closed. A connection that has
/// not sent a whole request head within `header_timeout` of being ready for one (when it opens, and after
/// each response) is closed; `None` sets no such deadline (hyper's timer per request costs about a
/// quarter of the reads' in-process throughput here: BENCHMARKS.md).
pub async fn serve<L: axum::serve::Listener>(
    mut listener: L,
    router: Router,
    header_timeout: Option<Duration>,
    stopping: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let (connections, closing) = (TaskTracker::new(), CancellationToken::new());
    let mut stopping = std::pin::pin!(stopping);
    loop {
        let io = tokio::select! {
            (io, _) = listener.accept() => io,
            () = &mut stopping => break,
        };
        let service = router.clone().map_request(|r: Request<Incoming>| r.map(Body::new));
        let connection = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(service)).with_upgrades();
        let closing = closing.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                () = closing.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
}
