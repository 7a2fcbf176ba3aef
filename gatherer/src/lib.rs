//! Sources: simulators and importers that publish events to JetStream.
//!
//! # Layout
//! - [`prices`]: the price simulator (random walks with late and corrected prices) and the CSV importer
//!   (`instrument,ts,price[,volume]`, streamed with bounded memory and a progress bar).
//! - [`ports`]: the ports importer (a JSON object keyed by UN/LOCODE, streamed with bounded memory).
//! - [`metrics`]: the server metrics simulator (N servers, one sample each per interval).
//!
//! Every source publishes through [`tributary_broker::Publisher`]: idempotency keys, pipelined acks, and a
//! report of what was stored, deduplicated or not delivered.

pub mod metrics;
pub mod ports;
pub mod prices;
