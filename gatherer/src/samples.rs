//! The server metrics simulator: every interval, one sample per server on `metric.<server>` with
//! `cpu_usage`, `memory_usage` and `disk_usage` (percentages that vary smoothly: CPU reverts to a
//! per-server level with noise and spikes, memory drifts, disk fills slowly and is sometimes cleaned).

use crate::simulator::Ticks;
use async_nats::jetstream;
use chrono::Utc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tributary_broker::samples::SampleEvent;
use tributary_broker::ts::Ts;
use tributary_broker::{Kind, PublishReport};

crate::simulator::simulator_config! {
    /// What to simulate.
    pub struct SampleSimConfig {
        /// How many servers: `<prefix>1` … `<prefix>N`.
        pub servers: usize = 10,
        /// The server id prefix.
        pub prefix: String = "server-".into(),
        /// Milliseconds between rounds (one sample per server per round).
        pub interval_ms: u64 = 1000,
        /// Stop after this many rounds (none: run until stopped).
        pub rounds: Option<u64> = None,
    }
}

/// One simulated server's state.
struct Server {
    subject: String,
    host: String,
    cpu_level: f64,
    cpu: f64,
    memory: f64,
    disk: f64,
}

impl SampleSimConfig {
    /// Checks the settings, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        crate::at_least_one(&[("servers", self.servers as u64), ("interval_ms", self.interval_ms)])
    }
}

impl Server {
    /// Levels come from the host name (and disk from the clock), so a restarted simulator carries on near
    /// where the last one was.
    fn new(host: String) -> Self {
        let rng = &mut StdRng::seed_from_u64(tributary_broker::hash::fnv1a(&[host.as_bytes()]));
        let cpu_level = rng.random_range(10.0..60.0);
        Server {
            subject: Kind::Sample.subject(&host),
            host,
            cpu_level,
            cpu: cpu_level,
            memory: rng.random_range(20.0..70.0),
            // Fills by ~0.01 per second from 20 to 80 and is cleaned: where it is follows the clock.
            disk: 20.0 + (Utc::now().timestamp() as f64 / 100.0 + rng.random_range(0.0..60.0)) % 60.0,
        }
    }

    /// One step of each walk, kept within 0–100.
    fn step(&mut self, rng: &mut StdRng) -> BTreeMap<String, f64> {
        let spike = if rng.random_bool(0.01) { rng.random_range(20.0..40.0) } else { 0.0 };
        self.cpu += 0.2 * (self.cpu_level - self.cpu) + rng.random_range(-4.0..4.0) + spike;
        self.memory += rng.random_range(-0.6..0.6);
        self.disk += rng.random_range(0.0..0.02);
        if self.disk > 80.0 {
            self.disk -= 60.0;
        }
        let round = |v: f64| (v.clamp(0.0, 100.0) * 100.0).round() / 100.0;
        (self.cpu, self.memory) = (self.cpu.clamp(0.0, 100.0), self.memory.clamp(5.0, 98.0));
        BTreeMap::from([
            ("cpu_usage".to_owned(), round(self.cpu)),
            ("memory_usage".to_owned(), round(self.memory)),
            ("disk_usage".to_owned(), round(self.disk)),
        ])
    }
}

/// Publishes simulated samples until `shutdown` or the round limit; returns what was delivered.
pub async fn simulate(js: jetstream::Context, cfg: SampleSimConfig, shutdown: CancellationToken) -> PublishReport {
    let mut rng = cfg.rng();
    let mut servers: Vec<Server> =
        (1..=cfg.servers.max(1)).map(|i| Server::new(format!("{}{i}", cfg.prefix))).collect();
    let mut publisher = cfg.publisher(js);
    let mut ticks = Ticks::new(Duration::from_millis(cfg.interval_ms.max(1)), shutdown);
    let mut rounds = 0u64;
    let mut last_ts = None;
    while cfg.rounds.is_none_or(|r| rounds < r) && ticks.next(&mut publisher).await {
        rounds += 1;
        // Millisecond timestamps, strictly increasing, shared by the round.
        let mut ts = Ts::from_millis(Utc::now().timestamp_millis()).expect("now is in range");
        if let Some(prev) = last_ts
            && ts <= prev
        {
            ts = Ts::from_millis(prev.millis() + 1).expect("now is in range");
        }
        last_ts = Some(ts);
        for s in &mut servers {
            let fields = s.step(&mut rng);
            let id = format!("{}:{}", s.host, ts.millis());
            publisher.publish(s.subject.clone(), Some(&id), &SampleEvent { ts: Some(ts), fields }).await;
        }
    }
    publisher.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_stay_plausible() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut s = Server::new("server-1".into());
        let mut prev = s.step(&mut rng);
        for _ in 0..10_000 {
            let next = s.step(&mut rng);
            for (k, v) in &next {
                assert!((0.0..=100.0).contains(v), "{k} = {v}");
                let jump = (v - prev[k]).abs();
                assert!(k == "cpu_usage" || k == "disk_usage" || jump < 1.5, "{k} jumped by {jump}");
            }
            prev = next;
        }
    }
}
