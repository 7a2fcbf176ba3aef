//! Each role alone, as deployed: `processor`, `api`, `aggregator`, and `migrate`.

use super::{bind, drain_within, serve_metrics};
use clap::Args;
use std::time::Duration;
use tributary::app;
use tributary::config::Config;
use tributary::shutdown;

#[derive(Args)]
pub(crate) struct RoleArgs {
    /// Serve /metrics and /healthz on this address.
    #[arg(long)]
    metrics_listen: Option<String>,
}

#[derive(Args)]
pub(crate) struct AggregatorArgs {
    /// A provider as NAME=URL (repeatable), added to `aggregator.providers`.
    #[arg(long = "provider", value_name = "NAME=URL")]
    providers: Vec<String>,
    /// Serve /metrics and /healthz on this address.
    #[arg(long)]
    metrics_listen: Option<String>,
}

#[derive(Args)]
pub(crate) struct ApiArgs {
    /// Where the API listens.
    #[arg(long)]
    listen: Option<String>,
}

/// `tributary processor`: consumes until a signal, then drains within the grace.
pub(crate) async fn processor(config: Config, args: RoleArgs) -> anyhow::Result<()> {
    let c = app::connect(config).await?;
    let stop = shutdown::on_signal();
    serve_metrics(args.metrics_listen, stop.clone()).await?;
    let grace = Duration::from_secs(c.config.processor.shutdown_grace_secs);
    let abandoned = "exiting without acking the batches in hand (they will be delivered again)";
    drain_within(c.processor(stop.clone()), &stop, grace, abandoned).await
}

/// `tributary api`.
pub(crate) async fn api(mut config: Config, args: ApiArgs) -> anyhow::Result<()> {
    if let Some(l) = args.listen {
        config.api.listen = l;
    }
    let c = app::connect(config).await?;
    // The API reads through a pool of its own (`Connected::api`): the one `connect` opened has done its
    // work (the migrations) and would keep a connection for nothing.
    c.db.get_postgres_connection_pool().close().await;
    let listener = bind(&c.config.api.listen).await?;
    let stop = shutdown::on_signal();
    let grace = Duration::from_secs(c.config.api.shutdown_grace_secs);
    // axum's graceful shutdown waits for every open request: an upload whose client stopped sending
    // mid-body would hold the process for good.
    let abandoned = "closing the requests still open (an upload whose client stopped sending?)";
    drain_within(c.api(listener, stop.clone()), &stop, grace, abandoned).await
}

/// `tributary aggregator`.
pub(crate) async fn aggregator(mut config: Config, args: AggregatorArgs) -> anyhow::Result<()> {
    config.aggregator.add_flags(args.providers.iter().map(String::as_str))?;
    let c = app::connect(config).await?;
    let stop = shutdown::on_signal();
    serve_metrics(args.metrics_listen, stop.clone()).await?;
    c.aggregator(stop).await
}

/// `tributary migrate`: the database, its migrations and the streams, then exit.
pub(crate) async fn migrate(config: Config) -> anyhow::Result<()> {
    app::connect(config).await?;
    eprintln!("database migrated, streams ready");
    Ok(())
}
