//! The aggregator: pull rounds over external survey providers, and the rounds fresh reads wait for.
//!
//! # Layout
//! - [`AggregatorConfig`]: the providers (name → base URL) and the round's interval, deadline and page size.
//! - [`provider`]: one provider's export API (`GET /api/v1/reporter?after_id=&limit=`), paged from a cursor.
//! - [`rounds`]: a round pulls every provider at once, each under its own deadline, publishes what it
//!   found to `survey.<provider>` (idempotency key provider + item id) and then each provider's outcome;
//!   a request shares the round in flight if it has not asked the providers yet, else the one after it.
//! - [`run`]: rounds on an interval and on demand: a request on core NATS [`SYNC_SUBJECT`] (queue group
//!   `aggregator`, so replicas split them) is answered with the [`RoundReport`] of a round that asked every
//!   provider after the request came.
//!
//! The aggregator stores nothing itself: items and outcomes go through NATS to the processor, which stores
//! them and advances each provider's cursor in one transaction. At startup (and before every round) the
//! aggregator reads the stored cursors, so a restart resumes where the stored data ends.

pub mod provider;
pub mod rounds;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use rounds::{ProviderReport, RoundReport, Rounds};

/// The core NATS subject on which a fresh read asks for a round; the reply is a [`RoundReport`] as JSON.
pub const SYNC_SUBJECT: &str = "tributary.aggregator.sync";

/// Aggregator settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// External providers as `name = "base URL"`; the name is the `survey.<name>` subject token.
    pub providers: BTreeMap<String, String>,
    /// Seconds between rounds that nobody asked for; 0 pulls only on demand.
    pub interval_secs: u64,
    /// Each provider's deadline within a round, in milliseconds: a provider that has not finished by then
    /// is reported as `timeout` and never holds up the others.
    pub provider_timeout_ms: u64,
    /// Items asked for per request (`limit`); a round pages until a page brings no item with an id above
    /// the last (one more request than the pages of data). A provider may cap `limit` lower; a full page
    /// with no such item is reported as an `error` (the provider cannot be read past it).
    pub page_size: u32,
    /// The most bytes one page's answer may hold; a longer one fails the provider's pull (`error`,
    /// naming the bound) instead of being read whole into memory.
    pub max_page_bytes: usize,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            providers: BTreeMap::new(),
            interval_secs: 10,
            provider_timeout_ms: 2000,
            page_size: 100,
            max_page_bytes: 64 << 20,
        }
    }
}

/// A configuration mistake.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The provider name cannot be a subject token.
    #[error("provider name {0:?} must be one subject token (no spaces, dots, * or >)")]
    BadName(String),
    /// The URL does not parse or is not http(s).
    #[error("provider {name}: {url:?} is not an http(s) URL")]
    BadUrl {
        /// The provider.
        name: String,
        /// What was given.
        url: String,
    },
    /// `--provider` needs `NAME=URL`.
    #[error("--provider takes NAME=URL, got {0:?}")]
    BadFlag(String),
}

impl AggregatorConfig {
    /// Checks every provider's name and URL.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, url) in &self.providers {
            if !tributary_broker::kind::valid_key(name) {
                return Err(ConfigError::BadName(name.clone()));
            }
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => return Err(ConfigError::BadUrl { name: name.clone(), url: url.clone() }),
            }
        }
        Ok(())
    }

    /// Adds `NAME=URL` providers (from `--provider` flags).
    pub fn add_flags<'a>(&mut self, flags: impl IntoIterator<Item = &'a str>) -> Result<(), ConfigError> {
        for f in flags {
            let (name, url) = f.split_once('=').ok_or_else(|| ConfigError::BadFlag(f.to_owned()))?;
            self.providers.insert(name.trim().to_owned(), url.trim().to_owned());
        }
        self.validate()
    }
}

/// Runs rounds on the interval and on demand until `shutdown`.
pub async fn run(
    cfg: AggregatorConfig,
    js: async_nats::jetstream::Context,
    db: tributary_store::sqlx::PgPool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if cfg.providers.is_empty() {
        tracing::info!("aggregator: no providers configured; rounds report nothing");
    } else {
        tracing::info!(providers = ?cfg.providers, "aggregator: pulling");
    }
    let client = js.client();
    let rounds = Arc::new(Rounds::new(cfg.clone(), js, db, shutdown.clone())?);
    let mut requests = client.queue_subscribe(SYNC_SUBJECT, "aggregator".into()).await?;
    let mut every = (cfg.interval_secs > 0).then(|| tokio::time::interval(Duration::from_secs(cfg.interval_secs)));
    use futures::StreamExt;
    loop {
        let tick = async {
            match every.as_mut() {
                Some(i) => i.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick => rounds.tick(),
            m = requests.next() => {
                let Some(m) = m else { anyhow::bail!("the sync subscription ended") };
                let (r, client) = (rounds.clone(), client.clone());
                tokio::spawn(async move {
                    let report = r.sync().await;
                    if let Some(reply) = m.reply {
                        let body = serde_json::to_vec(&*report).unwrap_or_default();
                        if let Err(e) = client.publish(reply, body.into()).await {
                            tracing::debug!(error = %e, "cannot answer a sync request");
                        }
                    }
                });
            }
        }
    }
    let _ = requests.unsubscribe().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_are_checked() {
        let mut c = AggregatorConfig::default();
        c.add_flags(["blue=http://127.0.0.1:1101", "red = http://x:1102/"]).unwrap();
        assert_eq!(c.providers.len(), 2);
        assert!(matches!(c.add_flags(["nope"]), Err(ConfigError::BadFlag(_))));
        assert!(matches!(c.add_flags(["a.b=http://x"]), Err(ConfigError::BadName(_))));
        let mut c = AggregatorConfig::default();
        assert!(matches!(c.add_flags(["x=ftp://x"]), Err(ConfigError::BadUrl { .. })));
    }
}
