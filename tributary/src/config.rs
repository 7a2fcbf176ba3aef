//! Configuration: typed, every field documented, every default working on localhost.
//!
//! Sources, later ones winning: built-in defaults; the TOML file (`--config FILE`, else `tributary.toml`
//! in the working directory if present); `TRIBUTARY_<SECTION>__<FIELD>` environment variables (e.g.
//! `TRIBUTARY_API__LISTEN=0.0.0.0:8080`); and the conventional `NATS_URL`, `DATABASE_URL` and
//! `OTEL_EXPORTER_OTLP_ENDPOINT`. See `tributary.example.toml` for every field.

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tributary_aggregator::AggregatorConfig;
use tributary_api::ApiConfig;
use tributary_broker::StreamsConfig;
use tributary_gatherer::fleet::FleetSimConfig;
use tributary_gatherer::prices::SimConfig;
use tributary_gatherer::samples::SampleSimConfig;
use tributary_processor::ProcessorConfig;
use tributary_store::{DbConfig, RollupConfig};
use tributary_telemetry::TelemetryConfig;

/// Everything.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// NATS.
    pub nats: NatsConfig,
    /// PostgreSQL.
    pub database: DbConfig,
    /// JetStream streams.
    pub streams: StreamsConfig,
    /// The processor role.
    pub processor: ProcessorConfig,
    /// Metric rollups and retention (the processor computes them, the API serves them).
    pub metrics: RollupConfig,
    /// The API role.
    pub api: ApiConfig,
    /// Logs, traces, metrics.
    pub telemetry: TelemetryConfig,
    /// The gatherers.
    pub gatherer: GathererConfig,
    /// The aggregator role.
    pub aggregator: AggregatorConfig,
    /// `tributary up`.
    pub up: UpConfig,
}

/// NATS connection: where, and how a role proves who it is.
///
/// Authentication is one of: a user and password (or a token) written in `url`, an NKey seed file, or a
/// `.creds` file; setting two is an error. The files hold secrets and are read when connecting; neither
/// their contents nor a URL's password are ever logged (`Debug` shows the URL redacted).
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated; `NATS_URL` overrides it. `nats://user:password@host:4222` logs in
    /// with a user and password, `nats://token@host:4222` with a token; `tls://host:4222` requires TLS.
    pub url: String,
    /// A file holding the role's NKey seed (`SU...`, as `nk -gen user` writes it): authenticates with the
    /// user NKey instead of a password.
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (a user JWT and its NKey seed, as `nsc` writes them), for servers run in operator
    /// (decentralised JWT) mode.
    pub credentials_file: Option<PathBuf>,
    /// PEM file of the certificate authorities that signed the server's certificate (added to the system
    /// trust store).
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that verify clients (`verify: true`); needs `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Refuse to talk to a server that does not offer TLS (otherwise TLS is used whenever the server
    /// requires it or the URL is `tls://`).
    pub tls_required: bool,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig::with_url("nats://127.0.0.1:4222")
    }
}

impl NatsConfig {
    /// Plain settings for `url`: no TLS, no key files (the private servers `up` and `bench` start).
    pub fn with_url(url: impl Into<String>) -> NatsConfig {
        NatsConfig {
            url: url.into(),
            nkey_seed_file: None,
            credentials_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
        }
    }

    /// Refuses settings that contradict each other: two ways to authenticate, or half a client
    /// certificate.
    pub fn check(&self) -> anyhow::Result<()> {
        let in_url = crate::urls::nats_credentials(&self.url).is_some();
        let ways = [in_url, self.nkey_seed_file.is_some(), self.credentials_file.is_some()];
        anyhow::ensure!(
            ways.iter().filter(|w| **w).count() <= 1,
            "nats: authenticate one way only: credentials in nats.url, nats.nkey_seed_file or nats.credentials_file"
        );
        anyhow::ensure!(
            self.tls_cert_file.is_some() == self.tls_key_file.is_some(),
            "nats: tls_cert_file and tls_key_file go together"
        );
        Ok(())
    }
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &crate::urls::redact_nats(&self.url))
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("credentials_file", &self.credentials_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("tls_required", &self.tls_required)
            .finish()
    }
}

/// Gatherer settings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GathererConfig {
    /// The price simulator.
    pub prices: SimConfig,
    /// The server metrics simulator.
    pub metrics: SampleSimConfig,
    /// The fleet simulator.
    pub fleet: FleetSimConfig,
}

/// `tributary up` settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpConfig {
    /// Where private nats-server and PostgreSQL keep their data when `up` starts them.
    pub data_dir: String,
    /// Install PostgreSQL with apt-get when it is missing (as root only); nats-server is always the pinned
    /// download.
    pub install_missing: bool,
}

impl Default for UpConfig {
    fn default() -> Self {
        UpConfig { data_dir: ".tributary".into(), install_missing: true }
    }
}

impl GathererConfig {
    /// Checks every simulator's settings, naming the simulator and the field.
    pub fn validate(&self) -> Result<(), String> {
        self.prices.validate().map_err(|e| format!("prices: {e}"))?;
        self.metrics.validate().map_err(|e| format!("metrics: {e}"))?;
        self.fleet.validate().map_err(|e| format!("fleet: {e}"))
    }
}

impl Config {
    /// Loads the configuration from `file` (or `tributary.toml` if present) and the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut fig = Figment::new();
        match file {
            Some(f) => {
                anyhow::ensure!(f.exists(), "config file {} does not exist", f.display());
                fig = fig.merge(Toml::file(f));
            }
            None if Path::new("tributary.toml").exists() => fig = fig.merge(Toml::file("tributary.toml")),
            None => {}
        }
        // Only `TRIBUTARY_<SECTION>__<FIELD>` are settings: `TRIBUTARY_CONFIG` (the file), and variables that
        // merely share the prefix (Kubernetes' `<SERVICE>_PORT`, other tools'), are left alone.
        let env = Env::prefixed("TRIBUTARY_").filter(|k| k.as_str().contains("__")).split("__");
        let mut cfg: Config = fig.merge(env).extract().context("reading configuration")?;
        if let Ok(url) = std::env::var("NATS_URL")
            && !url.is_empty()
        {
            cfg.nats.url = url;
        }
        if let Ok(url) = std::env::var("DATABASE_URL")
            && !url.is_empty()
        {
            cfg.database.url = url;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every section at once, so that a bad setting stops any role at load, naming its section,
    /// rather than one role when it starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |section: &'static str| move |e: String| ConfigError { section, message: e };
        self.nats.check().map_err(|e| e.to_string()).map_err(err("nats"))?;
        self.api.check().map_err(|e| e.to_string()).map_err(err("api"))?;
        self.processor.validate().map_err(err("processor"))?;
        self.processor.prices.validate().map_err(err("processor.prices"))?;
        self.metrics.validate().map(|_| ()).map_err(err("metrics"))?;
        self.aggregator.validate().map_err(|e| e.to_string()).map_err(err("aggregator"))?;
        self.gatherer.validate().map_err(err("gatherer"))?;
        Ok(())
    }
}

/// A setting that cannot work, with the section that holds it.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {section}: {message}")]
pub struct ConfigError {
    /// The section (`processor.prices`, `api`, ...).
    pub section: &'static str,
    /// What is wrong, naming the field.
    pub message: String,
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error, which is large
mod tests {
    use super::*;

    /// Sets each `(variable, value)` in the jail's environment.
    fn set_env(jail: &mut figment::Jail, vars: &[(&str, &str)]) {
        for (name, value) in vars {
            jail.set_env(name, value);
        }
    }

    /// The configuration as loaded, or why it does not load (with its causes).
    fn loaded() -> Result<Config, String> {
        Config::load(None).map_err(|e| format!("{e:#}"))
    }

    /// Why the configuration does not load (with its causes); a panic if it does.
    fn load_error() -> String {
        loaded().expect_err("the configuration loads")
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let text = include_str!("../../tributary.example.toml");
        let cfg: Config = Figment::new().merge(Toml::string(text)).extract().unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn only_section_variables_are_settings() {
        figment::Jail::expect_with(|jail| {
            // Kubernetes sets `<SERVICE>_SERVICE_HOST` for every service: not a setting.
            jail.set_env("TRIBUTARY_API_SERVICE_HOST", "10.0.0.1");
            set_env(jail, &[("TRIBUTARY_CONFIG", "/nowhere.toml"), ("TRIBUTARY_API__LISTEN", "0.0.0.0:9999")]);
            assert_eq!(loaded()?.api.listen, "0.0.0.0:9999");
            Ok(())
        });
    }

    #[test]
    fn security_settings_come_from_the_environment() {
        use tributary_api::ApiToken;
        figment::Jail::expect_with(|jail| {
            set_env(
                jail,
                &[
                    ("TRIBUTARY_API__WRITE_TOKENS", "[w1,w2]"),
                    ("TRIBUTARY_API__READ_TOKENS", "r1"),
                    ("TRIBUTARY_NATS__TLS_REQUIRED", "true"),
                    ("TRIBUTARY_NATS__TLS_CA_FILE", "/etc/tributary/ca.pem"),
                    ("TRIBUTARY_NATS__NKEY_SEED_FILE", "/etc/tributary/role.nk"),
                ],
            );
            let cfg = loaded()?;
            assert_eq!(cfg.api.write_tokens, [ApiToken::from("w1"), ApiToken::from("w2")]);
            assert_eq!(cfg.api.read_tokens, [ApiToken::from("r1")]);
            assert!(cfg.nats.tls_required);
            assert_eq!(cfg.nats.tls_ca_file.as_deref(), Some(Path::new("/etc/tributary/ca.pem")));
            assert_eq!(cfg.nats.nkey_seed_file.as_deref(), Some(Path::new("/etc/tributary/role.nk")));
            // Quoted, a token may hold anything (here a comma, and digits that would otherwise be a number).
            jail.set_env("TRIBUTARY_API__WRITE_TOKENS", r#"["a,b","0123"]"#);
            assert_eq!(loaded()?.api.write_tokens, [ApiToken::from("a,b"), ApiToken::from("0123")]);
            // Unquoted, it would be the number 123: refused rather than read as another token.
            jail.set_env("TRIBUTARY_API__WRITE_TOKENS", "[0123]");
            assert!(load_error().contains("quote"));
            Ok(())
        });
    }

    #[test]
    fn contradictory_security_settings_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TRIBUTARY_API__REQUIRE_READ_TOKEN", "true");
            assert!(load_error().contains("api"));
            jail.set_env("TRIBUTARY_API__READ_TOKENS", "r1");
            loaded()?;
            jail.set_env("TRIBUTARY_API__WRITE_TOKENS", r#"[""]"#);
            assert!(load_error().contains("empty token"));
            let two_ways = [
                ("TRIBUTARY_API__WRITE_TOKENS", "[w]"),
                ("TRIBUTARY_NATS__URL", "nats://u:p@nats:4222"),
                ("TRIBUTARY_NATS__CREDENTIALS_FILE", "/etc/tributary/role.creds"),
            ];
            set_env(jail, &two_ways);
            assert!(load_error().contains("one way only"));
            Ok(())
        });
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<Config, _> = Figment::new().merge(Toml::string("[api]\nlisten_on = 'x'")).extract();
        assert!(r.unwrap_err().to_string().contains("listen_on"));
    }

    /// A NATS URL's password never reaches a log through the configuration's `Debug`.
    #[test]
    fn the_nats_url_is_shown_redacted() {
        let shown = format!("{:?}", NatsConfig::with_url("nats://api:hunter2@nats:4222"));
        assert!(!shown.contains("hunter2") && shown.contains("api:***@nats"), "{shown}");
    }

    /// The simulators' settings are checked at load too. An infinite rate kept the price simulator from
    /// ever reaching its next tick (a first Ctrl-C did nothing); a negative one published nothing.
    #[test]
    fn simulator_settings_are_validated_at_load() {
        figment::Jail::expect_with(|jail| {
            for (toml, field) in [
                ("[gatherer.prices]\nrate = inf", "rate"),
                ("[gatherer.prices]\nrate = -5.0", "rate"),
                ("[gatherer.prices]\nlate_share = 1.5", "late_share"),
                ("[gatherer.metrics]\nservers = 0", "servers"),
                ("[gatherer.fleet]\ninterval_ms = 0", "interval_ms"),
            ] {
                jail.create_file("tributary.toml", toml)?;
                let e = load_error();
                assert!(e.contains("gatherer") && e.contains(field), "{toml}: {e}");
            }
            jail.create_file("tributary.toml", "[gatherer.prices]\nrate = 5000.0")?;
            loaded()?;
            Ok(())
        });
    }

    /// Every section is checked at load: a processor setting stops `tributary api` too, naming the field.
    #[test]
    fn every_section_is_validated_at_load() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TRIBUTARY_PROCESSOR__PARTITIONS", "0");
            let e = load_error();
            assert!(e.contains("processor") && e.contains("partitions"), "{e}");
            set_env(jail, &[("TRIBUTARY_PROCESSOR__PARTITIONS", "1"), ("TRIBUTARY_PROCESSOR__PRICES__SMA", "[0]")]);
            let e = load_error();
            assert!(e.contains("processor.prices") && e.contains("sma"), "{e}");
            jail.set_env("TRIBUTARY_PROCESSOR__PRICES__SMA", "[20]");
            jail.set_env("TRIBUTARY_AGGREGATOR__PROVIDERS", "{red=\"ftp://x\"}");
            let e = load_error();
            assert!(e.contains("aggregator") && e.contains("ftp://x"), "{e}");
            Ok(())
        });
    }
}
