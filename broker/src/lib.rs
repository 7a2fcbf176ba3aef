//! The event contract and the JetStream plumbing every Tributary role shares.
//!
//! # Layout
//! - [`kind`]: the kinds of event, their subjects (`price.<instrument>`, `index.<name>`, `metric.<host>`,
//!   `port.<unlocode>`, `fleet.driver.<id>`, `fleet.shipment.<id>`, `survey.<provider>`) and streams.
//! - [`ts`]: event timestamps (RFC 3339, `YYYY-MM-DD` or epoch milliseconds).
//! - [`codec`]: MessagePack from our publishers, JSON from anyone, told apart by header or first byte.
//! - [`events`]: the payload types and their validation into domain values.
//! - [`server`]: the oldest nats-server supported, checked at startup.
//! - [`samples`]: server samples on `metric.<host>` (any object of numeric fields) and their validation.
//! - [`ports`]: `port.<unlocode>` ports and their validation.
//! - [`fleet`]: `fleet.driver.<id>` / `fleet.shipment.<id>` drivers and shipments, and their deletion.
//! - [`surveys`]: `survey.<provider>` items pulled from survey providers, and each pull's outcome.
//! - [`streams`]: stream definitions, created or updated idempotently.
//! - [`publish`]: publishing with idempotency keys, pipelined acks and trace context.
//! - [`group`]: the processor group: its members, who owns which partition, each partition's lag.
//! - [`consume`]: the consume loop (per-series lanes, ack after commit, backoff, poison isolation, dead letters).
//! - [`dlq`]: dead letters: their headers, listing and replay.
//! - [`trace`]: W3C trace context carried in NATS headers.
//! - [`hash`]: FNV-1a 64, the one stable hash.
//! - [`uploads`]: the upload header and the processors' progress reports.
//! - [`metric_names`]: every Prometheus metric the pipeline records, with its help text.

pub mod codec;
pub mod consume;
pub mod dlq;
pub mod events;
pub mod fleet;
pub mod group;
pub mod hash;
pub mod kind;
mod kv;
pub mod metric_names;
pub mod ports;
pub mod publish;
pub mod samples;
pub mod server;
pub mod streams;
pub mod surveys;
pub mod trace;
pub mod ts;
pub mod uploads;

pub use consume::{BatchHandler, ConsumerSpec, Delivery, HandleError};
pub use events::Rejection;
pub use kind::Kind;
pub use publish::{PublishReport, Publisher};
pub use streams::StreamsConfig;
