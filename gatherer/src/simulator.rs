//! What every simulator's configuration ends with: the publishing settings (`seed`, `max_in_flight`,
//! `retry_secs`) and their defaults, declared once by [`simulator_config!`], with the random generator and
//! the publisher they make; and the simulators' clock ([`Ticks`]).
//!
//! A simulator's configuration is one flat table (`[gatherer.prices]` holds `rate` and `retry_secs` alike),
//! checked for unknown keys. serde's `flatten` would take a shared struct as a field but not with
//! `deny_unknown_fields`, so the macro writes the shared fields into each struct instead.

/// Declares a simulator's configuration: the fields given, each with its default, then the shared
/// publishing settings; with `Deserialize` (flat, unknown keys refused, missing keys defaulted) and
/// `Default`; and `rng()` and `publisher(js)` from the shared settings.
macro_rules! simulator_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$field_meta:meta])* pub $field:ident: $ty:ty = $default:expr,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Deserialize, PartialEq)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $($(#[$field_meta])* pub $field: $ty,)*
            /// Random seed, for reproducible runs.
            pub seed: Option<u64>,
            /// Acks awaited at once.
            pub max_in_flight: usize,
            /// Seconds an unacknowledged publish is sent again before it is reported as not delivered (NATS
            /// restarting, a lost connection); the idempotency key makes a repeat harmless.
            pub retry_secs: u64,
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $($field: $default,)* seed: None, max_in_flight: 4096, retry_secs: 60 }
            }
        }

        impl $name {
            /// The random generator: from `seed`, else seeded by the OS.
            pub(crate) fn rng(&self) -> rand::rngs::StdRng {
                use rand::SeedableRng;
                self.seed.map_or_else(rand::rngs::StdRng::from_os_rng, rand::rngs::StdRng::seed_from_u64)
            }

            /// A publisher with at most `max_in_flight` acks outstanding that resends for `retry_secs`.
            pub(crate) fn publisher(&self, js: async_nats::jetstream::Context) -> tributary_broker::Publisher {
                let retry = std::time::Duration::from_secs(self.retry_secs);
                tributary_broker::Publisher::new(js, self.max_in_flight).retry_for(retry)
            }
        }
    };
}

pub(crate) use simulator_config;

use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tributary_broker::Publisher;

/// A simulator's clock: a tick every period, until shutdown.
pub(crate) struct Ticks {
    interval: tokio::time::Interval,
    shutdown: CancellationToken,
}

impl Ticks {
    /// A tick every `period` until `shutdown`; a late tick delays the next ones rather than bursting.
    pub(crate) fn new(period: Duration, shutdown: CancellationToken) -> Ticks {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticks { interval, shutdown }
    }

    /// Waits for the next tick; `false` when the simulator should stop instead: on shutdown, or when
    /// `publisher` gave up (NATS has not acknowledged publishes for the whole retry window). The publisher
    /// collects its acks meanwhile ([`Publisher::settling`]), so between ticks it holds none of the
    /// client's slots.
    pub(crate) async fn next(&mut self, publisher: &mut Publisher) -> bool {
        let (shutdown, interval) = (&self.shutdown, &mut self.interval);
        let tick = async {
            tokio::select! {
                _ = shutdown.cancelled() => false,
                _ = interval.tick() => true,
            }
        };
        if !publisher.settling(tick).await {
            return false;
        }
        if publisher.gave_up() {
            tracing::error!("NATS has not acknowledged publishes for the whole retry window; stopping");
            return false;
        }
        true
    }
}
