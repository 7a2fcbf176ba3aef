//! Processors: each consumes one kind of event and turns every batch into one PostgreSQL transaction.
//!
//! # Layout
//! - [`prices`]: raw prices → points with returns, SMA, EMA and volatility, and the weighted indices
//!   over them; [`prices::series`] and [`prices::index`] are the pure derivations (the same code is
//!   the batch computation the tests compare against).
//! - [`indices`]: index definitions → stored definition and a recomputed history.
//! - [`metrics`]: server metric samples → raw series, time-bucket rollups with percentiles
//!   ([`metrics::rollup`] is their pure arithmetic), each host's latest sample, live announcements.
//! - [`ports`]: ports → the latest version of each port and the per-country counts.
//! - [`fleet`]: drivers and shipments → the assignment that maximises the total suitability score.
//! - [`surveys`]: items pulled from survey providers → one row each, cursors and pull outcomes.
//! - [`lock`]: per-series advisory locks that keep replicas sharing a consumer correct.
//! - [`run`]: the consumers of a processor role, wired to their streams.
//!
//! The invariant every module keeps: a stored derived value equals the batch computation over the raw
//! data stored so far, whatever the order, duplication or lateness of delivery.

pub mod fleet;
pub mod indices;
pub mod lock;
pub mod metrics;
pub mod ports;
pub mod prices;
mod run;
pub mod surveys;

pub use run::{ProcessorConfig, run};

/// The span of one transaction: `db`, with the operation and how many events it covers.
pub(crate) fn db_span(operation: &'static str, events: usize) -> tracing::Span {
    tracing::info_span!("db", otel.kind = "client", db.system = "postgresql", db.operation = operation, events)
}

/// Runs one batch's commit in its `db` span; a failure says what was being stored.
pub(crate) async fn commit_in_span(
    operation: &'static str,
    what: &'static str,
    events: usize,
    commit: impl std::future::Future<Output = Result<(), sea_orm::sqlx::Error>>,
) -> Result<(), tributary_broker::HandleError> {
    use tracing::Instrument;
    commit
        .instrument(db_span(operation, events))
        .await
        .map_err(|e| tributary_broker::HandleError(anyhow::Error::new(e).context(what)))
}
