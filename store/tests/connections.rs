//! Connections to PostgreSQL as the processor, aggregator and API make them.

use tributary_store::DbConfig;
use tributary_store::sqlx::postgres::PgConnectOptions;
use tributary_testkit::TestDb;

/// The kernel's timer field (`tr:when`) of each established TCP socket of this process whose remote port
/// is `remote`, as `/proc/net/tcp` lists it: `02:…` while a keepalive timer runs, `00:…` on an idle
/// socket without one. (Found by inode, so a proxy in between does not matter.)
fn timers_to(remote: u16) -> Vec<String> {
    let own: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| Some(target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned()))
        .collect();
    let mut timers = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = f.get(2).and_then(|a| u16::from_str_radix(a.rsplit(':').next()?, 16).ok());
            if f.len() > 9 && port == Some(remote) && f[3] == "01" && own.contains(f[9]) {
                timers.push(f[5].to_owned());
            }
        }
    }
    timers
}

/// Every pooled connection runs TCP keepalives, so a server that vanishes without closing it (its
/// machine lost, a failover moving its address, a network cut) fails its statements within a minute.
/// Without them a statement waiting for the vanished server's answer waited for ever: a processor's
/// unit held its series, and its partitions stood still, until the process was restarted.
#[tokio::test]
async fn pooled_connections_notice_a_vanished_server() {
    let db = TestDb::create().await;
    let port = db.url().parse::<PgConnectOptions>().expect("the test database URL").get_port();
    let store = tributary_store::connect(&DbConfig { url: db.url().to_owned(), ..Default::default() })
        .await
        .expect("connecting to the test database");
    let pool = store.get_postgres_connection_pool();
    let one: i32 = tributary_store::sqlx::query_scalar("SELECT 1").fetch_one(pool).await.unwrap();
    assert_eq!(one, 1);
    let timers = timers_to(port);
    assert!(!timers.is_empty(), "no TCP connection to port {port} (a Unix socket URL?): {}", db.url());
    assert!(timers.iter().all(|t| t.starts_with("02:")), "a connection without a keepalive timer: {timers:?}");
}
