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
use std::path::Path;
use tributary_aggregator::AggregatorConfig;
use tributary_api::ApiConfig;
use tributary_broker::StreamsConfig;
use tributary_gatherer::fleet::FleetSimConfig;
use tributary_gatherer::metrics::MetricsSimConfig;
use tributary_gatherer::prices::SimConfig;
use tributary_processor::ProcessorConfig;
use tributary_store::{DbConfig, MetricsConfig};
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
    pub metrics: MetricsConfig,
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

/// NATS connection.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated; `NATS_URL` overrides it.
    pub url: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig { url: "nats://127.0.0.1:4222".into() }
    }
}

/// Gatherer settings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GathererConfig {
    /// The price simulator.
    pub prices: SimConfig,
    /// The server metrics simulator.
    pub metrics: MetricsSimConfig,
    /// The fleet simulator.
    pub fleet: FleetSimConfig,
}

/// `tributary up` settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpConfig {
    /// Where private nats-server and PostgreSQL keep their data when `up` starts them.
    pub data_dir: String,
    /// Install nats-server and PostgreSQL with apt-get when they are missing (as root only).
    pub install_missing: bool,
}

impl Default for UpConfig {
    fn default() -> Self {
        UpConfig { data_dir: ".tributary".into(), install_missing: true }
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
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_the_defaults() {
        let text = include_str!("../../tributary.example.toml");
        let cfg: Config = Figment::new().merge(Toml::string(text)).extract().unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn only_section_variables_are_settings() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TRIBUTARY_CONFIG", "/nowhere.toml");
            jail.set_env("TRIBUTARY_API_SERVICE_HOST", "10.0.0.1");
            jail.set_env("TRIBUTARY_API__LISTEN", "0.0.0.0:9999");
            let cfg = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(cfg.api.listen, "0.0.0.0:9999");
            Ok(())
        });
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<Config, _> = Figment::new().merge(Toml::string("[api]\nlisten_on = 'x'")).extract();
        assert!(r.unwrap_err().to_string().contains("listen_on"));
    }
}
