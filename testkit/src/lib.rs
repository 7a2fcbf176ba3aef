//! Test helpers: real servers, never mocks.
//!
//! - [`NatsServer`]: a private `nats-server` with JetStream on a free port, its store deleted on drop;
//!   it can be restarted in place, or started from a deployment's config file (users, permissions, TLS);
//!   [`NatsCluster`]: three of them forming a JetStream cluster.
//! - [`TestDb`]: a fresh database per test, copied from a template migrated once per schema version
//!   (`CREATE DATABASE … TEMPLATE`), dropped `WITH (FORCE)` on drop. The server comes from
//!   `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! - [`PgCluster`]: a private PostgreSQL cluster (`initdb`, `pg_ctl`) on a free port, to stop and start
//!   under a running pipeline.
//! - [`OtlpReceiver`]: an OTLP/HTTP trace receiver collecting spans in memory.
//! - [`TcpProxy`]: a TCP proxy whose connections can be cut silently (no FIN, no RST).
//! - [`Browser`]: headless Chromium over the DevTools Protocol (evaluate JavaScript, screenshots).
//! - [`eventually`]: waits for a condition with a deadline, instead of sleeping.

mod browser;
mod db;
mod nats;
mod otlp;
mod postgres;
mod proxy;

pub use browser::{Browser, chromium_bin};
pub use db::TestDb;
pub use nats::{NatsCluster, NatsServer};
pub use otlp::{OtlpReceiver, SpanRecord};
pub use postgres::PgCluster;
pub use proxy::TcpProxy;

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A random lowercase suffix for unique names.
pub fn unique(prefix: &str) -> String {
    use rand::Rng;
    let mut r = rand::rng();
    let s: String = (0..10).map(|_| (b'a' + r.random_range(0..26)) as char).collect();
    format!("{prefix}_{}_{s}", std::process::id())
}

pub use tributary_local::free_port;
