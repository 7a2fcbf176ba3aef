//! Connecting to PostgreSQL.

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, Statement};
use sea_orm_migration::MigratorTrait;
use serde::Deserialize;
use std::time::Duration;

/// Where the database is and how many connections to keep.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DbConfig {
    /// `postgres://user[:password]@host:port/database`; `DATABASE_URL` overrides it.
    pub url: String,
    /// The size of each pool: the API role has one of its own, the other roles of a process share one.
    pub max_connections: u32,
    /// How long one of our sessions may sit idle inside a transaction before PostgreSQL ends it, in
    /// seconds (at least 1; `idle_in_transaction_session_timeout`). Tributary's transactions are never
    /// idle for long (between statements is computing, not waiting); one that is, is a process that died
    /// or hangs mid-transaction, and ending it releases the series locks everyone else waits for.
    pub idle_in_transaction_secs: u64,
}

impl Default for DbConfig {
    fn default() -> Self {
        DbConfig {
            url: "postgres://postgres@127.0.0.1:5432/tributary".into(),
            max_connections: 8,
            idle_in_transaction_secs: 60,
        }
    }
}

/// A database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL has no database name.
    #[error("database URL {0:?} names no database")]
    BadUrl(String),
    /// PostgreSQL refused or failed.
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// Whether a database error says PostgreSQL cannot be reached or takes no work now (no connection within
/// the pool's wait, a broken connection, a server shutting down or out of connections, a session the
/// server ended as idle in its transaction: `25P03`, see [`DbConfig::idle_in_transaction_secs`]), rather
/// than that a statement failed. The API answers these 503; the processor retries them as transient.
pub fn unreachable(e: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::Error;
    match e {
        Error::PoolTimedOut | Error::PoolClosed | Error::Io(_) | Error::Tls(_) | Error::WorkerCrashed => true,
        Error::Database(d) => {
            d.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "53300" || c == "25P03")
        }
        _ => false,
    }
}

/// How long a pooled connection may sit idle before it is pinged when handed out again.
pub const IDLE_BEFORE_PING: Duration = Duration::from_secs(5);

/// Opens a pool.
pub async fn connect(cfg: &DbConfig) -> Result<DatabaseConnection, StoreError> {
    open(cfg, None).await
}

/// Opens a pool whose statements PostgreSQL cancels once they have run `statement_timeout`
/// (`57014`): the API's, whose requests give up at a deadline. A statement stuck behind a lock then ends
/// with its own error, and its connection goes back to the pool whole.
pub async fn connect_bounded(cfg: &DbConfig, statement_timeout: Duration) -> Result<DatabaseConnection, StoreError> {
    open(cfg, Some(statement_timeout)).await
}

async fn open(cfg: &DbConfig, statement_timeout: Option<Duration>) -> Result<DatabaseConnection, StoreError> {
    let mut opt = ConnectOptions::new(cfg.url.clone());
    opt.max_connections(cfg.max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        // Not a ping (a round trip) on every acquire: only for a connection idle this long. One that
        // broke while in use fails its statement, is closed on release, and the work is retried.
        .test_before_acquire_if_idle_for(IDLE_BEFORE_PING)
        .sqlx_logging(false);
    // A client that died (a node lost, a network cut) holds its transaction's locks until PostgreSQL
    // ends its session: at once after the idle-in-transaction timeout, and an idle session's dead
    // client is found by TCP keepalives within about a minute (the OS's default is two hours). The other
    // way round, a server that vanished is found by the client's own keepalives, which the patched
    // sqlx-core sets on every connection (third_party/README.md).
    let idle = format!("{}s", cfg.idle_in_transaction_secs.max(1));
    let statement = statement_timeout.map(|t| format!("{}ms", t.as_millis().max(1)));
    opt.map_sqlx_postgres_opts(move |o| {
        let o = o.options([
            ("idle_in_transaction_session_timeout", idle.as_str()),
            ("tcp_keepalives_idle", "30"),
            ("tcp_keepalives_interval", "10"),
            ("tcp_keepalives_count", "3"),
        ]);
        match &statement {
            Some(t) => o.options([("statement_timeout", t.as_str())]),
            None => o,
        }
    });
    Ok(Database::connect(opt).await?)
}

/// `url` with its database replaced by `name`.
pub fn database_url(url: &str, name: &str) -> Result<String, StoreError> {
    let (admin, _) = maintenance_url(url)?;
    let (base, query) = admin.split_once('?').map_or((admin.as_str(), None), |(b, q)| (b, Some(q)));
    let server = base.strip_suffix("/postgres").unwrap_or(base);
    Ok(match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    })
}

/// Splits `postgres://…/name?x` into (`postgres://…/postgres?x`, `name`).
pub fn maintenance_url(url: &str) -> Result<(String, String), StoreError> {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let (server, name) = base
        .rsplit_once('/')
        .filter(|(s, n)| s.contains("://") && !s.ends_with('/') && !n.is_empty())
        .ok_or_else(|| StoreError::BadUrl(without_password(url)))?;
    let admin = match query {
        Some(q) => format!("{server}/postgres?{q}"),
        None => format!("{server}/postgres"),
    };
    Ok((admin, name.to_owned()))
}

/// `url` with its password replaced by `***`, for messages.
fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

/// Creates the database named by `url` if it does not exist. Returns whether it was created.
pub async fn ensure_database(url: &str) -> Result<bool, StoreError> {
    let (admin, name) = maintenance_url(url)?;
    let db = Database::connect(ConnectOptions::new(admin).sqlx_logging(false).to_owned()).await?;
    let exists = db
        .query_one_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            "SELECT 1 FROM pg_database WHERE datname = $1",
            [name.clone().into()],
        ))
        .await?
        .is_some();
    if !exists {
        // CREATE DATABASE takes no bind parameters: quote the identifier.
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        if let Err(e) = db.execute_unprepared(&sql).await {
            // Another role may have created it meanwhile.
            if !e.to_string().contains("already exists") {
                return Err(e.into());
            }
        }
    }
    db.close().await?;
    Ok(!exists)
}

/// Whether every migration has been applied.
pub async fn migrations_applied(db: &DatabaseConnection) -> Result<bool, StoreError> {
    let sql = "SELECT count(*) FROM seaql_migrations WHERE to_regclass('seaql_migrations') IS NOT NULL";
    let applied: i64 = match db.query_one_raw(Statement::from_string(db.get_database_backend(), sql)).await {
        Ok(Some(row)) => row.try_get_by_index(0)?,
        Ok(None) => 0,
        // No migrations table yet.
        Err(_) => 0,
    };
    Ok(applied as usize >= crate::Migrator::migrations().len())
}

/// Whether the database answers a query now.
pub async fn answers(db: &DatabaseConnection) -> bool {
    db.execute_unprepared("SELECT 1").await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::{database_url, maintenance_url};

    #[test]
    fn maintenance_url_swaps_the_database() {
        assert_eq!(
            maintenance_url("postgres://postgres@127.0.0.1:5432/tributary").unwrap(),
            ("postgres://postgres@127.0.0.1:5432/postgres".into(), "tributary".into())
        );
        assert_eq!(
            maintenance_url("postgres://u:p@h/db?sslmode=disable").unwrap(),
            ("postgres://u:p@h/postgres?sslmode=disable".into(), "db".into())
        );
        assert!(maintenance_url("postgres://h:5432").is_err());
        let refused = maintenance_url("postgres://u:s3cret@h:5432").unwrap_err().to_string();
        assert!(refused.contains("u:***@h") && !refused.contains("s3cret"), "{refused}");
        assert_eq!(database_url("postgres://postgres@h/postgres?x=1", "b").unwrap(), "postgres://postgres@h/b?x=1");
    }
}
