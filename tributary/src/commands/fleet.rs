//! `tributary fleet plan|bench`: the fleet assignment with no server, the exercise's own usage.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub(crate) enum FleetCmd {
    /// Print the assignment of shipments to drivers that maximises the total suitability score.
    Plan(FleetPlanArgs),
    /// Time the optimal assignment of N random shipments to N random drivers.
    Bench(FleetBenchArgs),
}

#[derive(Args)]
pub(crate) struct FleetPlanArgs {
    /// Driver names, one per line (`-` for stdin).
    #[arg(long)]
    drivers: PathBuf,
    /// Shipment destination addresses, one per line (`-` for stdin).
    #[arg(long)]
    shipments: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct FleetBenchArgs {
    /// Shipments, and drivers unless `--drivers` says otherwise.
    #[arg(long, default_value_t = 1000)]
    size: usize,
    /// Drivers, for a plan that is not square.
    #[arg(long)]
    drivers: Option<usize>,
    /// Every word of the random names (two words) and streets shorter than this, in characters (by default
    /// streets under 14, names under 9 and 12).
    #[arg(long)]
    word_chars: Option<usize>,
    /// Repeats (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Runs `tributary fleet …`.
pub(crate) fn run(cmd: FleetCmd) -> anyhow::Result<()> {
    match cmd {
        FleetCmd::Plan(args) => fleet_plan(args),
        FleetCmd::Bench(args) => fleet_bench(args),
    }
}

/// `tributary fleet plan`: reads the two lists and prints the optimal total and matching: the processor's
/// own computation over the lists as it stores them ([`tributary_processor::fleet::from_lists`]), so the
/// matching is the one the API serves for the same lists, ties included; a line the processor refuses is
/// left out, saying why.
fn fleet_plan(args: FleetPlanArgs) -> anyhow::Result<()> {
    let read = |p: &std::path::Path| {
        tributary_gatherer::fleet::read_list(p).with_context(|| format!("reading {}", p.display()))
    };
    let (fleet, refused) = tributary_processor::fleet::from_lists(&read(&args.drivers)?, &read(&args.shipments)?);
    for why in &refused {
        eprintln!("left out, as the processor refuses it: {why}");
    }
    // The solve `fleet::compute` runs, over the same order.
    let names: Vec<&str> = fleet.drivers.iter().map(|d| d.1.as_str()).collect();
    let addresses: Vec<&str> = fleet.shipments.iter().map(|s| s.1.as_str()).collect();
    let plan = tributary_fleet::plan(&addresses, &names);
    if args.json {
        let pairs: Vec<_> = plan
            .pairs
            .iter()
            .map(|&(s, d, q)| serde_json::json!({"address": addresses[s], "driver": names[d], "score": q.value()}))
            .collect();
        let out = serde_json::json!({
            "total_score": plan.total.value(),
            "assignments": pairs,
            "unassigned_shipments": plan.unassigned_shipments.iter().map(|&s| addresses[s]).collect::<Vec<_>>(),
            "unassigned_drivers": plan.unassigned_drivers.iter().map(|&d| names[d]).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("total suitability score: {}", plan.total.value());
    for &(s, d, q) in &plan.pairs {
        println!("{:>8}  {}  <-  {}", q.value(), addresses[s], names[d]);
    }
    for &s in &plan.unassigned_shipments {
        println!("{:>8}  {}  (no driver)", "-", addresses[s]);
    }
    for &d in &plan.unassigned_drivers {
        println!("{:>8}  (no shipment)  <-  {}", "-", names[d]);
    }
    Ok(())
}

/// `tributary fleet bench`: the optimal assignment of N × M random names and addresses, timed.
fn fleet_bench(args: FleetBenchArgs) -> anyhow::Result<()> {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(args.seed);
    let under = |default: usize| args.word_chars.unwrap_or(default).max(3);
    let word = |r: &mut StdRng, n: usize| -> String {
        (0..r.random_range(2..n)).map(|_| (b'a' + r.random_range(0..26)) as char).collect()
    };
    let drivers = args.drivers.unwrap_or(args.size);
    let addresses: Vec<String> = (0..args.size)
        .map(|_| format!("{} {} St., Town", rng.random_range(1..9999), word(&mut rng, under(14))))
        .collect();
    let names: Vec<String> =
        (0..drivers).map(|_| format!("{} {}", word(&mut rng, under(9)), word(&mut rng, under(12)))).collect();
    let mut times = Vec::new();
    let mut total = 0.0;
    for _ in 0..args.repeats.max(1) {
        let started = std::time::Instant::now();
        total = tributary_fleet::plan(&addresses, &names).total.value();
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{} shipments × {drivers} drivers: median {:.3} s (min {:.3}, max {:.3}) over {} runs; total score {total}",
        args.size,
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        times.len(),
    );
    Ok(())
}
