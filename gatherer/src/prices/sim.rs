//! The price simulator: N instruments, R events per second, random walks, with a share of late and of
//! corrected prices (the cases the incremental engine must get right).

use crate::simulator::Ticks;
use async_nats::jetstream;
use chrono::{DateTime, Duration as Span, Utc};
use rand::Rng;
use std::collections::VecDeque;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tributary_broker::events::PriceEvent;
use tributary_broker::ts::Ts;
use tributary_broker::{Kind, PublishReport};

crate::simulator::simulator_config! {
    /// What to simulate.
    pub struct SimConfig {
        /// How many instruments: `S0` … `S<n-1>`.
        pub instruments: usize = 10,
        /// Events per second, all instruments together.
        pub rate: f64 = 100.0,
        /// Share of events held back and published 2 to 49 rounds (one price per instrument) later (0 to 1).
        pub late_share: f64 = 0.01,
        /// Share of events that correct an earlier price (0 to 1).
        pub correction_share: f64 = 0.01,
        /// Stop after this many events (none: run until stopped).
        pub limit: Option<u64> = None,
    }
}

struct Walk {
    name: String,
    price: f64,
    recent: VecDeque<DateTime<Utc>>,
    corrections: u64,
}

impl SimConfig {
    /// Checks the settings, naming the field: a rate that is not a positive number (infinite, say) kept
    /// the simulator from ever reaching its next tick, or from publishing anything.
    pub fn validate(&self) -> Result<(), String> {
        crate::at_least_one(&[("instruments", self.instruments as u64)])?;
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= MAX_RATE) {
            return Err(format!(
                "rate must be a number of events per second above 0, at most {MAX_RATE}, got {}",
                self.rate
            ));
        }
        for (field, share) in [("late_share", self.late_share), ("correction_share", self.correction_share)] {
            if !(0.0..=1.0).contains(&share) {
                return Err(format!("{field} must be within 0 to 1, got {share}"));
            }
        }
        Ok(())
    }
}

/// The highest simulated rate, events per second.
pub const MAX_RATE: f64 = 10_000_000.0;

/// Publishes simulated prices until `shutdown` or the limit; returns what was delivered.
pub async fn simulate(js: jetstream::Context, cfg: SimConfig, shutdown: CancellationToken) -> PublishReport {
    let mut rng = cfg.rng();
    let start = Utc::now();
    let mut walks: Vec<Walk> = (0..cfg.instruments.max(1))
        .map(|i| Walk { name: format!("S{i}"), price: 100.0, recent: VecDeque::new(), corrections: 0 })
        .collect();
    let walks_len = walks.len();
    let mut publisher = cfg.publisher(js);
    let mut held: Vec<(u32, String, String, PriceEvent)> = Vec::new();
    let tick = Duration::from_millis(10);
    let per_tick = cfg.rate.max(0.0) * tick.as_secs_f64();
    let mut ticks = Ticks::new(tick, shutdown);
    // Prices come in rounds: one per instrument, all at the round's timestamp, so that indices over
    // the instruments have dates on which every constituent has a price.
    let (mut due, mut sent, mut next, mut round_ts) = (0.0, 0u64, 0usize, start);
    'run: while ticks.next(&mut publisher).await {
        due += per_tick;
        while due >= 1.0 {
            due -= 1.0;
            if cfg.limit.is_some_and(|l| sent >= l) {
                break 'run;
            }
            sent += 1;
            if next == 0 {
                round_ts = (round_ts + Span::milliseconds(1)).max(Ts::new(Utc::now()).0);
                // Late prices are held for a number of rounds, not of ticks, so how late they are (in
                // points of their series) does not grow with the rate.
                for h in held.iter_mut() {
                    h.0 = h.0.saturating_sub(1);
                }
                for (_, subject, id, e) in held.extract_if(.., |h| h.0 == 0) {
                    publisher.publish(subject, Some(&id), &e).await;
                }
            }
            let w = &mut walks[next];
            next = (next + 1) % walks_len;
            let subject = Kind::Price.subject(&w.name);
            if !w.recent.is_empty() && rng.random_bool(cfg.correction_share.clamp(0.0, 1.0)) {
                let ts = w.recent[rng.random_range(0..w.recent.len())];
                w.corrections += 1;
                let id = format!("{}:{}:c{}", w.name, ts.timestamp_micros(), w.corrections);
                let e = PriceEvent { ts: Some(Ts(ts)), price: w.price * rng.random_range(0.98..1.02), volume: None };
                publisher.publish(subject, Some(&id), &e).await;
                continue;
            }
            w.price *= (rng.random_range(-1.0..1.0) * 0.002f64).exp();
            w.recent.push_back(round_ts);
            if w.recent.len() > 64 {
                w.recent.pop_front();
            }
            let id = format!("{}:{}", w.name, round_ts.timestamp_micros());
            let e = PriceEvent {
                ts: Some(Ts(round_ts)),
                price: w.price,
                volume: Some(rng.random_range(1.0..1000.0f64).round()),
            };
            if rng.random_bool(cfg.late_share.clamp(0.0, 1.0)) {
                held.push((rng.random_range(2..50), subject, id, e));
            } else {
                publisher.publish(subject, Some(&id), &e).await;
            }
        }
    }
    for (_, subject, id, e) in held.drain(..) {
        publisher.publish(subject, Some(&id), &e).await;
    }
    publisher.finish().await
}
