//! Wiring: connect to NATS and PostgreSQL once, then run any set of roles on one shutdown token.

use crate::config::Config;
use anyhow::Context;
use async_nats::jetstream;
use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tributary_broker::streams;
use tributary_store::Migrator;

/// Connections every role shares.
#[derive(Clone)]
pub struct Connected {
    /// The configuration in force.
    pub config: Config,
    /// NATS.
    pub nats: async_nats::Client,
    /// JetStream on it.
    pub js: jetstream::Context,
    /// PostgreSQL.
    pub db: DatabaseConnection,
}

/// The credentials in a NATS URL: `nats://user:password@host` or `nats://token@host` (percent-decoded).
/// async-nats does not send the ones written in the URL, so they are passed as options.
pub fn nats_credentials(urls: &str) -> Option<NatsAuth> {
    urls.split(',').find_map(|u| {
        let u = reqwest::Url::parse(u.trim()).ok()?;
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        match (u.username(), u.password()) {
            ("", _) => None,
            (user, Some(pass)) => Some(NatsAuth::UserPassword(decode(user), decode(pass))),
            (token, None) => Some(NatsAuth::Token(decode(token))),
        }
    })
}

/// How a role authenticates to NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// User and password.
    UserPassword(String, String),
    /// A token.
    Token(String),
}

/// Connects to NATS (retrying while it comes up), with the credentials written in the URL.
pub async fn connect_nats(url: &str) -> anyhow::Result<async_nats::Client> {
    let mut opts = async_nats::ConnectOptions::new()
        .name("tributary")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5));
    opts = match nats_credentials(url) {
        Some(NatsAuth::UserPassword(user, pass)) => opts.user_and_password(user, pass),
        Some(NatsAuth::Token(token)) => opts.token(token),
        None => opts,
    };
    // async-nats parses one URL per address: split the comma-separated list here.
    let addrs = url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad NATS URL {}", redact(url)))?;
    let client = tokio::time::timeout(Duration::from_secs(20), opts.connect(addrs))
        .await
        .map_err(|_| anyhow::anyhow!("NATS at {} did not answer within 20 s", redact(url)))?
        .with_context(|| format!("connecting to NATS at {}", redact(url)))?;
    Ok(client)
}

/// Connects to everything, creates the database if missing, migrates, and ensures the streams.
pub async fn connect(config: Config) -> anyhow::Result<Connected> {
    let nats = connect_nats(&config.nats.url).await?;
    let js = jetstream::new(nats.clone());
    ensure_streams(&js, &config.streams).await?;
    if tributary_store::ensure_database(&config.database.url).await.context("creating the database")? {
        tracing::info!(url = %redact(&config.database.url), "created database");
    }
    let db = tributary_store::connect(&config.database)
        .await
        .with_context(|| format!("connecting to {}", redact(&config.database.url)))?;
    Migrator::up(&db, None).await.context("running migrations")?;
    Ok(Connected { config, nats, js, db })
}

/// Creates or updates the streams, retrying for up to a minute while JetStream is not ready (a cluster
/// electing its leader after a start or a lost node answers nothing until it has one).
pub async fn ensure_streams(js: &jetstream::Context, cfg: &tributary_broker::StreamsConfig) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match streams::ensure(js, cfg).await {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, source = %e.source, "JetStream not ready; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context("creating streams"),
        }
    }
}

/// A URL with its password replaced, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let cred = &url[s + 3..at];
            match cred.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Connected {
    /// The processor role.
    pub async fn processor(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let pool = self.db.get_postgres_connection_pool().clone();
        tributary_processor::run(
            self.js.clone(),
            pool,
            self.config.processor.clone(),
            self.config.metrics.clone(),
            self.config.streams.clone(),
            shutdown,
        )
        .await
    }

    /// The aggregator role.
    pub async fn aggregator(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let pool = self.db.get_postgres_connection_pool().clone();
        tributary_aggregator::run(self.config.aggregator.clone(), self.js.clone(), pool, shutdown).await
    }

    /// The API role on `listener`.
    pub async fn api(&self, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
        let state = tributary_api::AppState {
            db: self.db.clone(),
            nats: self.nats.clone(),
            js: self.js.clone(),
            streams: self.config.streams.clone(),
            metrics: tributary_telemetry::metrics(),
            config: self.config.api.clone(),
            rollups: self.config.metrics.clone(),
            live: tributary_api::Live::new(),
            uploads: tributary_api::Uploads::new(),
            durable_prefix: self.config.processor.durable_prefix.clone(),
            partitions: self.config.processor.partitions,
        };
        tributary_api::serve(listener, state, shutdown).await.context("serving the API")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_the_url() {
        assert_eq!(
            nats_credentials("nats://api:s%40cret@nats:4222"),
            Some(NatsAuth::UserPassword("api".into(), "s@cret".into()))
        );
        assert_eq!(nats_credentials("nats://a:4222,nats://tok@b:4222"), Some(NatsAuth::Token("tok".into())));
        assert_eq!(nats_credentials("nats://127.0.0.1:4222"), None);
        assert_eq!(redact("nats://api:secret@nats:4222"), "nats://api:***@nats:4222");
    }
}
