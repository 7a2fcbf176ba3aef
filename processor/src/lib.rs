//! Processors: each consumes one kind of event and turns every batch into one PostgreSQL transaction.
//!
//! # Layout
//! - [`prices`]: raw prices → points with returns, SMA, EMA and volatility, and the weighted indices
//!   over them; [`prices::series`] and [`prices::index`] are the pure derivations (the same code is
//!   the batch computation the tests compare against).
//! - [`indices`]: index definitions → stored definition and a recomputed history.
//! - [`samples`]: server samples (`metric.<host>`) → raw series, time-bucket rollups with percentiles
//!   ([`samples::rollup`] is their pure arithmetic), each host's latest sample, live announcements.
//! - [`ports`]: ports → the latest version of each port and the per-country counts.
//! - [`fleet`]: drivers and shipments → the assignment that maximises the total suitability score.
//! - [`surveys`]: items pulled from survey providers → one row each, cursors and pull outcomes.
//! - [`lock`]: per-series advisory locks that keep replicas sharing a consumer correct.
//! - [`failure`]: which failures of a batch are retried (transient or lasting) and which are isolated to
//!   its messages.
//! - [`run`]: the consumers of a processor role, wired to their streams.
//! - [`group`]: elastic groups: the partitions shared evenly by however many processors run.
//!
//! The invariant every module keeps: a stored derived value equals the batch computation over the raw
//! data stored so far, whatever the order, duplication or lateness of delivery.

/// The `decode` of a [`tributary_broker::BatchHandler`] whose event is `$event`: `$decode` turns
/// (subject, headers, payload, received) into the event or a rejection.
macro_rules! decode_with {
    ($event:ty, $decode:expr) => {
        fn decode(
            &self,
            subject: &str,
            headers: Option<&async_nats::HeaderMap>,
            payload: &[u8],
            received: tributary_broker::ts::Ts,
        ) -> Result<$event, tributary_broker::Rejection> {
            let decode: fn(&str, Option<&async_nats::HeaderMap>, &[u8], tributary_broker::ts::Ts) -> _ = $decode;
            decode(subject, headers, payload, received)
        }
    };
}

/// Implements [`tributary_broker::BatchHandler`] for a handler whose batches are each one transaction,
/// its `commit`, run in a `db` span named `$operation`; a failure says it was `$what`. `$decode` as in
/// `decode_with!`. With `locking $class, $name`, a batch over more series (`$name` of an event) than one
/// transaction should lock is committed in parts, one after the other ([`lock::split`]).
macro_rules! commits_batches {
    (@split $batch:ident) => {
        Vec::new()
    };
    (@split $batch:ident, $class:literal, $name:expr) => {
        crate::lock::split($batch, 1, $class, $name)
    };
    ($handler:ty, $event:ty, $decode:expr, $operation:literal, $what:literal $(, locking $class:literal, $name:expr)?) => {
        impl tributary_broker::BatchHandler for $handler {
            type Event = $event;

            decode_with!($event, $decode);

            async fn handle(
                &self,
                batch: &[tributary_broker::Delivery<$event>],
            ) -> Result<(), tributary_broker::HandleError> {
                let parts: Vec<Vec<&tributary_broker::Delivery<$event>>> =
                    commits_batches!(@split batch $(, $class, $name)?);
                if parts.len() < 2 {
                    return crate::commit_in_span($operation, $what, batch.len(), self.commit(batch)).await;
                }
                for part in parts {
                    let part: Vec<tributary_broker::Delivery<$event>> = part.into_iter().cloned().collect();
                    crate::commit_in_span($operation, $what, part.len(), self.commit(&part)).await?;
                }
                Ok(())
            }
        }
    };
}

pub mod failure;
pub mod fleet;
pub mod group;
pub mod indices;
pub mod lock;
pub mod ports;
pub mod prices;
mod run;
pub mod samples;
pub mod surveys;

pub use run::{ProcessorConfig, run};

/// The span of one transaction: `db`, with the operation and how many events it covers.
pub(crate) fn db_span(operation: &'static str, events: usize) -> tracing::Span {
    tracing::info_span!("db", otel.kind = "client", db.system = "postgresql", db.operation = operation, events)
}

/// Runs one batch's commit in its `db` span; a failure says what was being stored.
pub(crate) async fn commit_in_span<E: std::error::Error + Send + Sync + 'static>(
    operation: &'static str,
    what: &'static str,
    events: usize,
    commit: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), tributary_broker::HandleError> {
    use tracing::Instrument;
    commit
        .instrument(db_span(operation, events))
        .await
        .map_err(|e| tributary_broker::HandleError(anyhow::Error::new(e).context(what)))
}
