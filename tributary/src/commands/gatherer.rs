//! `tributary gatherer …`: the simulators and importers that publish events, and a survey provider.

use super::{bind, report_undelivered, serve_metrics};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use tributary::config::Config;
use tributary::{app, shutdown};
use tributary_broker::PublishReport;

#[derive(Subcommand)]
pub(crate) enum Gatherer {
    /// Simulate prices, or import them from CSV with --csv.
    Prices(PricesArgs),
    /// Simulate N servers' CPU, memory and disk usage, one sample per server per interval.
    Metrics(MetricsArgs),
    /// Import a ports file (a JSON object keyed by UN/LOCODE), streamed with bounded memory.
    Ports(PortsArgs),
    /// Publish drivers and shipments from the exercise's two list files, or simulate them.
    Fleet(FleetArgs),
    /// Run a survey provider (the reporter API) for the aggregator to pull from.
    SurveyProvider(SurveyProviderArgs),
}

#[derive(Args)]
pub(crate) struct FleetArgs {
    /// Driver names, one per line (id = line number).
    #[arg(long, requires = "shipments", conflicts_with = "simulate")]
    drivers: Option<PathBuf>,
    /// Shipment destination addresses, one per line (id = line number).
    #[arg(long, requires = "drivers")]
    shipments: Option<PathBuf>,
    /// Simulate N drivers and N shipments, replacing one every interval.
    #[arg(long, value_name = "N")]
    simulate: Option<usize>,
    /// Time between simulated changes, e.g. 2s, 500ms.
    #[arg(long, value_parser = parse_interval)]
    interval: Option<Duration>,
    /// Stop the simulation after this many changes.
    #[arg(long)]
    changes: Option<u64>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Args)]
pub(crate) struct SurveyProviderArgs {
    /// The provider's name (for logs).
    #[arg(long, default_value = "blue")]
    name: String,
    /// Where it listens.
    #[arg(long, default_value = "127.0.0.1:1101")]
    listen: String,
    /// Post a random item this often (e.g. 2s); by default only clients post.
    #[arg(long, value_parser = parse_interval)]
    generate_every: Option<Duration>,
}

#[derive(Args)]
pub(crate) struct PortsArgs {
    /// The file (`-` for stdin).
    file: PathBuf,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
pub(crate) struct MetricsArgs {
    /// Number of servers (ids <prefix>1 … <prefix>N).
    #[arg(long)]
    servers: Option<usize>,
    /// Time between rounds, e.g. 1s, 250ms.
    #[arg(long, value_parser = parse_interval)]
    interval: Option<Duration>,
    /// Server id prefix.
    #[arg(long)]
    prefix: Option<String>,
    /// Stop after this many rounds.
    #[arg(long)]
    rounds: Option<u64>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Serve /metrics and /healthz on this address.
    #[arg(long)]
    metrics_listen: Option<String>,
}

/// `250ms`, `1s`, `2m`; not zero.
pub(crate) fn parse_interval(s: &str) -> Result<Duration, String> {
    let every = match s.strip_suffix("ms") {
        Some(ms) => ms.parse::<u64>().map(Duration::from_millis).map_err(|_| format!("bad interval {s:?}"))?,
        None => tributary_store::rollups::Span::parse(s).map(|d| Duration::from_secs(d.secs() as u64))?,
    };
    if every.is_zero() {
        return Err(format!("an interval must be longer than 0, got {s:?}"));
    }
    Ok(every)
}

#[derive(Args)]
pub(crate) struct PricesArgs {
    /// Import `instrument,ts,price[,volume]` lines from this file (`-` for stdin) instead of simulating.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Number of simulated instruments.
    #[arg(long)]
    instruments: Option<usize>,
    /// Simulated events per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Share of late events (0 to 1).
    #[arg(long)]
    late_share: Option<f64>,
    /// Share of corrections (0 to 1).
    #[arg(long)]
    correction_share: Option<f64>,
    /// Stop after this many events.
    #[arg(long)]
    limit: Option<u64>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Runs `tributary gatherer …`.
pub(crate) async fn run(config: Config, gatherer: Gatherer) -> anyhow::Result<()> {
    match gatherer {
        Gatherer::Fleet(args) => gather_fleet(config, args).await,
        Gatherer::SurveyProvider(args) => survey_provider(args).await,
        Gatherer::Prices(args) => gather_prices(config, args).await,
        Gatherer::Metrics(args) => gather_metrics(config, args).await,
        Gatherer::Ports(args) => super::import::ports(&config, &args.file, args.quiet).await,
    }
}

async fn gather_fleet(config: Config, args: FleetArgs) -> anyhow::Result<()> {
    let js = app::jetstream(&config).await?;
    let report = if let (Some(d), Some(s)) = (&args.drivers, &args.shipments) {
        let drivers = tributary_gatherer::fleet::read_list(d).with_context(|| format!("reading {}", d.display()))?;
        let shipments = tributary_gatherer::fleet::read_list(s).with_context(|| format!("reading {}", s.display()))?;
        let r = tributary_gatherer::fleet::publish_lists(js, &drivers, &shipments).await;
        eprintln!(
            "published {} drivers and {} shipments: {} stored, {} duplicates, {} not delivered",
            drivers.len(),
            shipments.len(),
            r.stored,
            r.duplicates,
            r.failed.len()
        );
        r
    } else {
        let mut sim = config.gatherer.fleet.clone();
        sim.size = args.simulate.unwrap_or(sim.size);
        sim.interval_ms = args.interval.map_or(sim.interval_ms, |d| d.as_millis() as u64);
        sim.changes = args.changes;
        sim.seed = args.seed;
        sim.validate().map_err(|e| anyhow::anyhow!("gatherer fleet: {e}"))?;
        eprintln!(
            "simulating {} drivers and {} shipments, one change every {} ms (Ctrl-C stops)",
            sim.size, sim.size, sim.interval_ms
        );
        let r = tributary_gatherer::fleet::simulate(js, sim, shutdown::on_signal()).await;
        eprintln!("published {} events: {} duplicates, {} not delivered", r.stored, r.duplicates, r.failed.len());
        r
    };
    report_undelivered(&report.failed);
    anyhow::ensure!(report.failed.is_empty(), "{} events were not delivered", report.failed.len());
    Ok(())
}

async fn survey_provider(args: SurveyProviderArgs) -> anyhow::Result<()> {
    let listener = bind(&args.listen).await?;
    let provider = tributary_gatherer::surveys::Provider::new();
    let stop = shutdown::on_signal();
    if let Some(every) = args.generate_every {
        tokio::spawn(tributary_gatherer::surveys::generate(provider.clone(), every, rand::random(), stop.clone()));
    }
    eprintln!("survey provider {} on http://{}/api/v1/reporter (Ctrl-C stops)", args.name, listener.local_addr()?);
    tributary_gatherer::surveys::serve(listener, provider, stop).await.context("serving the provider")
}

async fn gather_prices(mut config: Config, args: PricesArgs) -> anyhow::Result<()> {
    let js = app::jetstream(&config).await?;
    if let Some(path) = args.csv {
        return super::import::prices_csv(&config, &path, args.quiet).await;
    }
    let sim = &mut config.gatherer.prices;
    sim.instruments = args.instruments.unwrap_or(sim.instruments);
    sim.rate = args.rate.unwrap_or(sim.rate);
    sim.late_share = args.late_share.unwrap_or(sim.late_share);
    sim.correction_share = args.correction_share.unwrap_or(sim.correction_share);
    sim.limit = args.limit.or(sim.limit);
    sim.seed = args.seed.or(sim.seed);
    sim.validate().map_err(|e| anyhow::anyhow!("gatherer prices: {e}"))?;
    let started = std::time::Instant::now();
    let report = tributary_gatherer::prices::simulate(js, config.gatherer.prices, shutdown::on_signal()).await;
    simulated("events", started, &report)
}

/// Prints what a simulator published (`what`: events, samples …) and fails if any was not delivered.
fn simulated(what: &str, started: std::time::Instant, report: &PublishReport) -> anyhow::Result<()> {
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "published {} {what} in {secs:.1} s ({:.0}/s): {} duplicates, {} sent again, {} not delivered",
        report.stored,
        report.stored as f64 / secs.max(1e-9),
        report.duplicates,
        report.resent,
        report.failed.len()
    );
    report_undelivered(&report.failed);
    anyhow::ensure!(report.failed.is_empty(), "{} {what} were not delivered", report.failed.len());
    Ok(())
}

async fn gather_metrics(mut config: Config, args: MetricsArgs) -> anyhow::Result<()> {
    let js = app::jetstream(&config).await?;
    let stop = shutdown::on_signal();
    serve_metrics(args.metrics_listen, stop.clone()).await?;
    let sim = &mut config.gatherer.metrics;
    sim.servers = args.servers.unwrap_or(sim.servers);
    sim.interval_ms = args.interval.map_or(sim.interval_ms, |d| d.as_millis() as u64);
    sim.prefix = args.prefix.unwrap_or(sim.prefix.clone());
    sim.rounds = args.rounds.or(sim.rounds);
    sim.seed = args.seed.or(sim.seed);
    sim.validate().map_err(|e| anyhow::anyhow!("gatherer metrics: {e}"))?;
    eprintln!("publishing {} servers every {} ms (Ctrl-C stops)", sim.servers, sim.interval_ms);
    let started = std::time::Instant::now();
    let report = tributary_gatherer::samples::simulate(js, config.gatherer.metrics, stop).await;
    simulated("samples (messages of all fields of one server)", started, &report)
}

#[cfg(test)]
mod tests {
    /// A zero interval is refused where it is given: `tokio::time::interval` panics on it (the survey
    /// provider's generator died, and the provider served on with nothing generated).
    #[test]
    fn intervals_are_longer_than_zero() {
        assert!(super::parse_interval("0ms").unwrap_err().contains("longer than 0"));
        assert!(super::parse_interval("0s").is_err());
        assert_eq!(super::parse_interval("250ms"), Ok(std::time::Duration::from_millis(250)));
        assert_eq!(super::parse_interval("2m"), Ok(std::time::Duration::from_secs(120)));
    }
}
