//! Wiring: connect to NATS and PostgreSQL once, then run any set of roles on one shutdown token.

use crate::config::{Config, NatsConfig};
use crate::urls::{NatsAuth, nats_credentials, redact, redact_nats, without_credentials};
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

/// Connects to NATS as `cfg` says: credentials from the URL, an NKey seed file or a `.creds` file; TLS
/// with extra trusted CAs, a client certificate, or required outright. While the server does not answer
/// it retries for 20 s; a refused login or a failed TLS handshake is an error at once, naming the cause.
///
/// Secrets stay out of logs: the URL handed to async-nats (which logs its servers at debug level) has
/// its credentials removed, they travel as options instead, and errors name files, never their contents.
pub async fn connect_nats(cfg: &NatsConfig) -> anyhow::Result<async_nats::Client> {
    use async_nats::ConnectErrorKind as Kind;
    cfg.check()?;
    // async-nats builds its TLS configuration with rustls' process-wide provider, which rustls cannot
    // choose alone when, as here, more than one is compiled in (ring, and aws-lc-rs through reqwest):
    // without this, a TLS connection panics. Installing twice is harmless (the first stays).
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let mut opts = async_nats::ConnectOptions::new().name("tributary").connection_timeout(Duration::from_secs(5));
    opts = match nats_credentials(&cfg.url) {
        Some(NatsAuth::UserPassword(user, pass)) => opts.user_and_password(user, pass),
        Some(NatsAuth::Token(token)) => opts.token(token),
        None => opts,
    };
    if let Some(path) = &cfg.nkey_seed_file {
        let seed = tokio::fs::read_to_string(path)
            .await
            .with_context(|| format!("reading nats.nkey_seed_file {}", path.display()))?;
        let seed = seed.trim();
        // Checked here so that a bad seed is a clear error at startup, not a refused handshake.
        anyhow::ensure!(
            seed.starts_with("SU") && nkeys::KeyPair::from_seed(seed).is_ok(),
            "nats.nkey_seed_file {} does not hold a user NKey seed (SU...)",
            path.display()
        );
        opts = opts.nkey(seed.to_owned());
    }
    if let Some(path) = &cfg.credentials_file {
        opts = opts
            .credentials_file(path)
            .await
            .with_context(|| format!("reading nats.credentials_file {}", path.display()))?;
    }
    if let Some(ca) = &cfg.tls_ca_file {
        anyhow::ensure!(ca.is_file(), "nats.tls_ca_file {} is not a file", ca.display());
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) {
        for f in [cert, key] {
            anyhow::ensure!(f.is_file(), "nats TLS client file {} is not a file", f.display());
        }
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    opts = opts.require_tls(cfg.tls_required);
    let (url, shown) = (without_credentials(&cfg.url), redact_nats(&cfg.url));
    // async-nats parses one URL per address: split the comma-separated list here.
    let addrs = url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad NATS URL {shown}"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match opts.clone().connect(addrs.clone()).await {
            Ok(client) => {
                let version = client.server_info().version;
                tributary_broker::server::check_version(&version)
                    .map_err(|e| anyhow::anyhow!("{e} (NATS at {shown})"))?;
                return Ok(client);
            }
            // Not up yet: try again (async-nats' own retry would hide a refused login until first use).
            Err(e) if matches!(e.kind(), Kind::Io | Kind::TimedOut | Kind::Dns) && !tls_refusal(&e) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(e).with_context(|| format!("NATS at {shown} did not answer within 20 s"));
                }
                tracing::debug!(error = %e, "NATS does not answer yet; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to NATS at {shown}")),
        }
    }
}

/// Whether a connection failed on TLS after the handshake (e.g. the server wanted a client certificate):
/// rustls reports alerts as `InvalidData`, which no retry will fix.
fn tls_refusal(e: &async_nats::ConnectError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
}

/// Connects to everything, creates the database if missing, migrates, and ensures the streams.
pub async fn connect(config: Config) -> anyhow::Result<Connected> {
    let nats = connect_nats(&config.nats).await?;
    let js = jetstream::new(nats.clone());
    ensure_streams(&js, &config).await?;
    if tributary_store::ensure_database(&config.database.url).await.context("creating the database")? {
        tracing::info!(url = %redact(&config.database.url), "created database");
    }
    let db = tributary_store::connect(&config.database)
        .await
        .with_context(|| format!("connecting to {}", redact(&config.database.url)))?;
    Migrator::up(&db, None).await.context("running migrations")?;
    Ok(Connected { config, nats, js, db })
}

/// Connects to NATS and ensures the streams: what every publisher and the benchmark start with.
pub async fn jetstream(config: &Config) -> anyhow::Result<jetstream::Context> {
    let js = jetstream::new(connect_nats(&config.nats).await?);
    ensure_streams(&js, config).await?;
    Ok(js)
}

/// Creates or updates the streams as `config` says (`streams`, and `processor.partitions` for the
/// partitioned kinds), retrying for up to a minute while JetStream is not ready (a cluster electing its
/// leader after a start or a lost node answers nothing until it has one).
pub async fn ensure_streams(js: &jetstream::Context, config: &Config) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match streams::ensure(js, &config.streams, config.processor.partitions).await {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, source = %e.source, "JetStream not ready; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context("creating streams"),
        }
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

    /// The API role on `listener`, with a pool of its own: the other roles of the process (`tributary
    /// up`) never wait for a connection behind its reads, and PostgreSQL cancels its statements before
    /// the request deadline ([`tributary_api::ApiConfig::statement_timeout`]).
    pub async fn api(&self, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
        let db = tributary_store::connect_bounded(&self.config.database, self.config.api.statement_timeout())
            .await
            .with_context(|| format!("connecting the API to {}", redact(&self.config.database.url)))?;
        let state = tributary_api::AppState {
            db,
            nats: self.nats.clone(),
            js: self.js.clone(),
            streams: self.config.streams.clone(),
            metrics: tributary_telemetry::metrics(),
            config: self.config.api.clone(),
            rollups: self.config.metrics.clone(),
            live: tributary_api::Live::new(),
            uploads: tributary_api::Uploads::with_limit(self.config.api.max_uploads),
            durable_prefix: self.config.processor.durable_prefix.clone(),
            partitions: self.config.processor.partitions,
            progress: tributary_api::Progress::default(),
            series_cache: tributary_api::SeriesCache::new(self.config.api.series_cache_bytes),
        };
        tributary_api::serve(listener, state, shutdown).await.context("serving the API")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server older than the oldest supported is refused at connect, with a message naming both
    /// versions. The "server" is a socket that speaks just enough of the NATS protocol (INFO, then PONG
    /// to the client's PING) to announce version 2.8.4.
    #[tokio::test]
    async fn an_old_nats_server_is_refused_naming_both_versions() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let (read, mut write) = socket.into_split();
            let info = format!(
                "INFO {{\"server_id\":\"OLD\",\"version\":\"2.8.4\",\"go\":\"go1.17\",\"host\":\"127.0.0.1\",\
                 \"port\":{port},\"headers\":true,\"max_payload\":1048576,\"proto\":1}}\r\n"
            );
            write.write_all(info.as_bytes()).await.unwrap();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("PING") {
                    let _ = write.write_all(b"PONG\r\n").await;
                }
            }
        });
        let e = connect_nats(&NatsConfig::with_url(format!("nats://127.0.0.1:{port}"))).await.unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("2.8.4") && e.contains(tributary_broker::server::MIN_SERVER_VERSION), "{e}");
    }

    #[test]
    fn one_way_to_authenticate_and_whole_client_certificates() {
        let mut c = NatsConfig::with_url("nats://api:pw@nats:4222");
        c.nkey_seed_file = Some("seed.nk".into());
        assert!(c.check().unwrap_err().to_string().contains("one way only"));
        c.url = "nats://nats:4222".into();
        c.check().unwrap();
        c.credentials_file = Some("user.creds".into());
        assert!(c.check().is_err());
        let mut c = NatsConfig::with_url("nats://nats:4222");
        c.tls_cert_file = Some("client.pem".into());
        assert!(c.check().unwrap_err().to_string().contains("go together"));
        c.tls_key_file = Some("client.key".into());
        c.check().unwrap();
    }

    /// The error of connecting with a secret file (named `name`, holding `text`) that `set` puts in the
    /// configuration.
    async fn refusal(name: &str, text: &str, set: impl FnOnce(&mut NatsConfig, std::path::PathBuf)) -> String {
        let path = std::env::temp_dir().join(format!("tributary-{name}-{}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let mut c = NatsConfig::with_url("nats://127.0.0.1:1");
        set(&mut c, path.clone());
        let e = format!("{:#}", connect_nats(&c).await.unwrap_err());
        std::fs::remove_file(&path).unwrap();
        e
    }

    #[tokio::test]
    async fn a_bad_seed_file_is_refused_without_showing_it() {
        let e = refusal("bad-seed", "SUnotaseedatall-secret\n", |c, path| c.nkey_seed_file = Some(path)).await;
        assert!(e.contains("does not hold a user NKey seed") && !e.contains("secret"), "{e}");
    }

    #[tokio::test]
    async fn a_bad_credentials_file_is_refused_without_showing_it() {
        let text = "-----BEGIN NATS USER JWT-----\nnot-a-jwt-secret\n";
        let e = refusal("bad-creds", text, |c, path| c.credentials_file = Some(path)).await;
        assert!(e.contains("reading nats.credentials_file") && !e.contains("secret"), "{e}");
    }
}
