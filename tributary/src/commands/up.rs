//! `tributary up`: migrations, streams, the processor, the aggregator, the API and the demo's simulators
//! in one process, with private NATS and PostgreSQL servers where none answer.

use super::bind;
use anyhow::Context;
use clap::Args;
use std::time::Duration;
use tributary::app::{self, Connected};
use tributary::config::Config;
use tributary::{local, shutdown};
use tributary_broker::events::IndexDefinition;
use tributary_broker::{Kind, Publisher};

#[derive(Args)]
pub(crate) struct UpArgs {
    /// Where the API listens.
    #[arg(long)]
    listen: Option<String>,
    /// Do not run the simulators.
    #[arg(long)]
    no_demo: bool,
}

/// Runs `tributary up`.
pub(crate) async fn run(mut config: Config, args: UpArgs) -> anyhow::Result<()> {
    if let Some(l) = args.listen {
        config.api.listen = l;
    }
    let servers = local::ensure(&mut config).await?;
    let r = up(config, !args.no_demo).await;
    drop(servers);
    r
}

async fn up(mut config: Config, demo: bool) -> anyhow::Result<()> {
    let stop = shutdown::on_signal();
    // The demo's two survey providers, when none are configured: in this process, on free ports.
    let mut providers = Vec::new();
    if demo && config.aggregator.providers.is_empty() {
        for (i, name) in ["blue", "red"].into_iter().enumerate() {
            let listener = bind("127.0.0.1:0").await?;
            config.aggregator.providers.insert(name.into(), format!("http://{}", listener.local_addr()?));
            providers.push((listener, i as u64));
        }
    }
    let c = app::connect(config).await?;
    let listener = bind(&c.config.api.listen).await?;
    let addr = listener.local_addr()?;
    let mut tasks = tokio::task::JoinSet::new();
    let (p, s) = (c.clone(), stop.clone());
    tasks.spawn(async move { p.processor(s).await.context("processor") });
    let (a, s) = (c.clone(), stop.clone());
    tasks.spawn(async move { a.aggregator(s).await.context("aggregator") });
    for (listener, seed) in providers {
        let provider = tributary_gatherer::surveys::Provider::new();
        let every = Duration::from_millis(1500 + 1000 * seed);
        tokio::spawn(tributary_gatherer::surveys::generate(provider.clone(), every, seed, stop.clone()));
        let s = stop.clone();
        tasks.spawn(async move {
            tributary_gatherer::surveys::serve(listener, provider, s).await.context("survey provider")
        });
    }
    let (api, s) = (c.clone(), stop.clone());
    tasks.spawn(async move { api.api(listener, s).await });
    if demo {
        define_demo_index(&c).await?;
        let (js, sim, s) = (c.js.clone(), c.config.gatherer.prices.clone(), stop.clone());
        tasks.spawn(async move {
            let report = tributary_gatherer::prices::simulate(js, sim, s).await;
            tracing::info!(
                stored = report.stored,
                duplicates = report.duplicates,
                failed = report.failed.len(),
                "price simulator stopped"
            );
            Ok(())
        });
    }
    if demo {
        let (js, sim, s) = (c.js.clone(), c.config.gatherer.fleet.clone(), stop.clone());
        tasks.spawn(async move {
            let report = tributary_gatherer::fleet::simulate(js, sim, s).await;
            tracing::info!(stored = report.stored, failed = report.failed.len(), "fleet simulator stopped");
            Ok(())
        });
        let (js, sim, s) = (c.js.clone(), c.config.gatherer.metrics.clone(), stop.clone());
        tasks.spawn(async move {
            let report = tributary_gatherer::samples::simulate(js, sim, s).await;
            tracing::info!(stored = report.stored, failed = report.failed.len(), "metrics simulator stopped");
            Ok(())
        });
    }
    let scheme = if c.config.api.tls_cert_file.is_some() { "https" } else { "http" };
    eprintln!("tributary is up: {scheme}://{addr}/  (API docs: {scheme}://{addr}/docs; Ctrl-C stops)");
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
            stop.cancel();
            first_error.get_or_insert(e);
        }
        if stop.is_cancelled() {
            break;
        }
    }
    // Drain what is left within a time limit.
    let grace = Duration::from_secs(c.config.processor.shutdown_grace_secs);
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!(?grace, "some tasks did not stop in time; exiting without acking their work in hand");
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The demo's equal-weight index over the simulated instruments.
async fn define_demo_index(c: &Connected) -> anyhow::Result<()> {
    let n = c.config.gatherer.prices.instruments.max(1);
    let weights = (0..n).map(|i| (format!("S{i}"), 1.0 / n as f64)).collect();
    let mut p = Publisher::new(c.js.clone(), 1);
    p.publish(Kind::Index.subject("demo"), Some(&format!("demo-index-{n}")), &IndexDefinition { base: 100.0, weights })
        .await;
    let report = p.finish().await;
    anyhow::ensure!(report.failed.is_empty(), "publishing the demo index: {:?}", report.failed);
    Ok(())
}
