//! Fleet sources: the exercise's two newline-separated files (shipment addresses, driver names), and a
//! simulator that keeps N drivers and N shipments changing over time.
//!
//! From files, the id of a driver or shipment is its line number (blank lines skipped but counted), and
//! the idempotency key is the subject in this run ([`crate::Run`]): an edited line replaces the old one,
//! and publishing the same files again stores them again and changes nothing.

use async_nats::jetstream;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Deserialize;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tributary_broker::fleet::{FleetPayload, Role};
use tributary_broker::{PublishReport, Publisher};

/// The non-blank lines of a list with their 1-based line numbers, trimmed.
pub fn parse_list(text: &str) -> Vec<(usize, String)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l.trim().to_owned())).filter(|(_, l)| !l.is_empty()).collect()
}

/// Reads a list file (`-` for standard input).
pub fn read_list(path: &std::path::Path) -> std::io::Result<Vec<(usize, String)>> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(path)?
    };
    Ok(parse_list(&text))
}

/// Publishes every driver and shipment of the lists.
pub async fn publish_lists(
    js: jetstream::Context,
    drivers: &[(usize, String)],
    shipments: &[(usize, String)],
) -> PublishReport {
    let mut p = Publisher::new(js, 1024);
    let run = crate::Run::new("fleet");
    for (role, list) in [(Role::Driver, drivers), (Role::Shipment, shipments)] {
        for (line, text) in list {
            let subject = role.subject(&line.to_string());
            let key = run.key(&subject);
            let payload = match role {
                Role::Driver => FleetPayload::driver(text),
                Role::Shipment => FleetPayload::shipment(text),
            };
            p.publish(subject, Some(&key), &payload).await;
        }
    }
    p.finish().await
}

/// The fleet simulator's settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSimConfig {
    /// Drivers, and shipments, kept at any time.
    pub size: usize,
    /// Milliseconds between changes (a delivered shipment replaced by a new one, or a driver by another).
    pub interval_ms: u64,
    /// Stop after this many changes.
    #[serde(skip)]
    pub changes: Option<u64>,
    /// Random seed.
    #[serde(skip)]
    pub seed: Option<u64>,
}

impl FleetSimConfig {
    /// Checks the settings, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        crate::at_least_one(&[("size", self.size as u64), ("interval_ms", self.interval_ms)])
    }
}

impl Default for FleetSimConfig {
    fn default() -> Self {
        FleetSimConfig { size: 20, interval_ms: 2000, changes: None, seed: None }
    }
}

const FIRST: [&str; 16] = [
    "Alice", "Bo", "Carmen", "Daniel", "Everardo", "Fatima", "Guo", "Hannah", "Ivan", "Jo Ann", "Kwame", "Lena",
    "Mateo", "Nadia", "Oscar", "Priya",
];
const LAST: [&str; 12] =
    ["Smith", "Ng", "Welch", "Davidson", "Okafor", "Ruiz", "Kowalski", "Tanaka", "Haddad", "Olsen", "Silva", "Byrne"];
const STREETS: [&str; 12] =
    ["Fake", "Elm", "Oak", "Harbor", "Mission", "Sunset", "Pine", "Lakeview", "Maple", "Cedar", "Ocean", "Ridge"];
const SUFFIX: [&str; 6] = ["St.", "Ave", "Dr.", "Blvd", "Way", "Lane"];
const CITIES: [&str; 5] = ["San Diego, CA", "Austin, TX", "Portland, OR", "Denver, CO", "Boston, MA"];

fn name(r: &mut StdRng) -> String {
    format!("{} {}", FIRST[r.random_range(0..FIRST.len())], LAST[r.random_range(0..LAST.len())])
}

fn address(r: &mut StdRng) -> String {
    format!(
        "{} {} {}, {}",
        r.random_range(1..9999),
        STREETS[r.random_range(0..STREETS.len())],
        SUFFIX[r.random_range(0..SUFFIX.len())],
        CITIES[r.random_range(0..CITIES.len())]
    )
}

/// Publishes `size` drivers and shipments, then every interval replaces one of them, until `shutdown`
/// (or `changes` changes). Ids are `sim-<n>`.
pub async fn simulate(js: jetstream::Context, cfg: FleetSimConfig, shutdown: CancellationToken) -> PublishReport {
    let mut rng = StdRng::seed_from_u64(cfg.seed.unwrap_or_else(rand::random));
    let mut p = Publisher::new(js, 256);
    let mut next = 0u64;
    let mut live: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    let fresh = |role: Role, rng: &mut StdRng| match role {
        Role::Driver => FleetPayload::driver(name(rng)),
        Role::Shipment => FleetPayload::shipment(address(rng)),
    };
    for (k, role) in [Role::Driver, Role::Shipment].into_iter().enumerate() {
        for _ in 0..cfg.size {
            next += 1;
            p.publish(role.subject(&format!("sim-{next}")), None, &fresh(role, &mut rng)).await;
            live[k].push(next);
        }
    }
    p.flush().await;
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.interval_ms.max(1)));
    tick.tick().await;
    let mut changes = 0;
    while cfg.changes.is_none_or(|c| changes < c) {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let k = rng.random_range(0..2);
        let role = [Role::Driver, Role::Shipment][k];
        if !live[k].is_empty() {
            let gone = live[k].swap_remove(rng.random_range(0..live[k].len()));
            p.publish(role.subject(&format!("sim-{gone}")), None, &FleetPayload::deleted()).await;
        }
        next += 1;
        p.publish(role.subject(&format!("sim-{next}")), None, &fresh(role, &mut rng)).await;
        live[k].push(next);
        p.flush().await;
        changes += 1;
    }
    p.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_keep_line_numbers() {
        assert_eq!(parse_list("a\n\n  b c \n"), vec![(1, "a".to_owned()), (3, "b c".to_owned())]);
        let mut r = StdRng::seed_from_u64(1);
        assert!(address(&mut r).contains(", "));
        assert!(name(&mut r).contains(' '));
    }
}
