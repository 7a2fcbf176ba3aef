//! Connections to PostgreSQL as the processor, aggregator and API make them.

use tributary_store::DbConfig;
use tributary_testkit::TestDb;

/// The kernel's timer field (`tr:when`) of the TCP socket from local port `local` to remote port
/// `remote`, as `/proc/net/tcp` lists it: `02:…` while a keepalive timer runs, `00:…` on an idle socket
/// without one.
fn tcp_timer(local: u16, remote: u16) -> Option<String> {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|table| {
        let text = std::fs::read_to_string(table).ok()?;
        text.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
            (port(fields.get(1)?)? == local && port(fields.get(2)?)? == remote)
                .then(|| fields.get(5).map(|t| t.to_string()))?
        })
    })
}

/// Every pooled connection runs TCP keepalives, so a server that vanishes without closing it (its
/// machine lost, a failover moving its address, a network cut) fails its statements within a minute.
/// Without them a statement waiting for the vanished server's answer waited for ever: a processor's
/// unit held its series, and its partitions stood still, until the process was restarted.
#[tokio::test]
async fn pooled_connections_notice_a_vanished_server() {
    let db = TestDb::create().await;
    let store = tributary_store::connect(&DbConfig { url: db.url().to_owned(), ..Default::default() })
        .await
        .expect("connecting to the test database");
    let pool = store.get_postgres_connection_pool();
    let mut conn = pool.acquire().await.unwrap();
    let (local, remote): (i32, i32) = tributary_store::sqlx::query_as("SELECT inet_client_port(), inet_server_port()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let timer = tcp_timer(local as u16, remote as u16).expect("the connection's socket in /proc/net/tcp");
    assert!(timer.starts_with("02:"), "no keepalive timer on the connection's socket: {timer}");
}
