//! The aggregator: pull rounds over external providers and the sync barrier for fresh reads.
//!
//! Providers and pull rounds arrive with the surveys work; until then the role starts, reports that it
//! has no providers, and waits for shutdown, so `tributary up` and deployments already run it.

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// Aggregator settings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// External providers as `name = "url"`.
    pub providers: std::collections::BTreeMap<String, String>,
}

/// Runs until `shutdown`.
pub async fn run(cfg: AggregatorConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    if cfg.providers.is_empty() {
        tracing::info!("aggregator: no providers configured");
    } else {
        tracing::warn!(providers = ?cfg.providers.keys().collect::<Vec<_>>(), "aggregator: pulling from providers is not built yet; providers are ignored");
    }
    shutdown.cancelled().await;
    Ok(())
}
