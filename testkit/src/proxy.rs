//! A TCP proxy whose connections can be cut silently: what a NAT or a firewall that forgot an idle
//! connection does (no FIN, no RST; each side's socket stays open and hears nothing more).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards every connection to `upstream` until it is [`TcpProxy::silence`]d.
pub struct TcpProxy {
    addr: SocketAddr,
    /// Per connection: the local port of its upstream side (what the server sees as the client's port)
    /// and whether it is silenced.
    connections: Arc<Mutex<Vec<(u16, Arc<AtomicBool>)>>>,
}

impl TcpProxy {
    /// A proxy on a free local port forwarding to `upstream` (`host:port`); it runs on the current tokio
    /// runtime until the runtime ends.
    pub fn start(upstream: &str) -> TcpProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let addr = listener.local_addr().expect("the proxy's address");
        let connections: Arc<Mutex<Vec<(u16, Arc<AtomicBool>)>>> = Arc::default();
        let (upstream, list) = (upstream.to_owned(), connections.clone());
        tokio::spawn(async move {
            let listener = TcpListener::from_std(listener).expect("a tokio listener");
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else { continue };
                let silenced = Arc::new(AtomicBool::new(false));
                if let Ok(local) = server.local_addr() {
                    list.lock().unwrap().push((local.port(), silenced.clone()));
                }
                let (c_read, c_write) = client.into_split();
                let (s_read, s_write) = server.into_split();
                tokio::spawn(forward(c_read, s_write, silenced.clone()));
                tokio::spawn(forward(s_read, c_write, silenced));
            }
        });
        TcpProxy { addr, connections }
    }

    /// The proxy's `host:port`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Stops forwarding, both ways, on the connection whose upstream side has local port `port`, keeping
    /// both sockets open. False if there is no such connection.
    pub fn silence(&self, port: u16) -> bool {
        let list = self.connections.lock().unwrap();
        let found = list.iter().filter(|(p, _)| *p == port).map(|(_, s)| s.store(true, Ordering::SeqCst)).count();
        found > 0
    }
}

/// Copies `from` to `to` until either ends; once `silenced`, drops what it reads and holds both open.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silenced: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if silenced.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
