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

/// Connects to NATS (retrying while it comes up).
pub async fn connect_nats(url: &str) -> anyhow::Result<async_nats::Client> {
    let opts = async_nats::ConnectOptions::new()
        .name("tributary")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5));
    let client = tokio::time::timeout(Duration::from_secs(20), opts.connect(url))
        .await
        .map_err(|_| anyhow::anyhow!("NATS at {url} did not answer within 20 s"))?
        .with_context(|| format!("connecting to NATS at {url}"))?;
    Ok(client)
}

/// Connects to everything, creates the database if missing, migrates, and ensures the streams.
pub async fn connect(config: Config) -> anyhow::Result<Connected> {
    let nats = connect_nats(&config.nats.url).await?;
    let js = jetstream::new(nats.clone());
    streams::ensure(&js, &config.streams).await.context("creating streams")?;
    if tributary_store::ensure_database(&config.database.url).await.context("creating the database")? {
        tracing::info!(url = %redact(&config.database.url), "created database");
    }
    let db = tributary_store::connect(&config.database)
        .await
        .with_context(|| format!("connecting to {}", redact(&config.database.url)))?;
    Migrator::up(&db, None).await.context("running migrations")?;
    Ok(Connected { config, nats, js, db })
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
        };
        tributary_api::serve(listener, state, shutdown).await.context("serving the API")
    }
}
