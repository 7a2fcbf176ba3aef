//! Fleet: drivers and shipments → the assignment that maximises the total suitability score, one
//! transaction per batch.
//!
//! Drivers and shipments are kept last writer wins by stream sequence (a deletion is a tombstone). When a
//! batch changes either set, the plan is recomputed from every live driver and shipment (Hungarian
//! algorithm, [`tributary_fleet::plan`]) and replaced in the same transaction, with its version bumped.
//! One advisory lock covers the whole fleet, so replicas sharing the consumer never interleave: the
//! stored plan is always the plan of the stored drivers and shipments, the batch computation itself.

use crate::lock;
use std::collections::BTreeMap;
use tributary_broker::Delivery;
use tributary_broker::fleet::{FleetRecord, Role};
use tributary_store::fleet::{self as store, Table, Upsert};
use tributary_store::sqlx::{self, PgPool};

/// The fleet as stored, and reading it: its SQL lives in [`tributary_store::fleet`].
pub use tributary_store::fleet::{Fleet, StoredPlan, load};

/// Consumes `fleet.driver.<id>` and `fleet.shipment.<id>`.
#[derive(Clone)]
pub struct FleetHandler {
    pool: PgPool,
    /// The most (driver, shipment) pairs a plan may span (`processor.fleet_max_pairs`).
    max_pairs: u64,
}

/// Drivers' and shipments' lists, as `gatherer fleet` publishes them (each line's number its id) and the
/// processor stores them (the lines it takes, as it takes them) and reads them back ([`load`]: by id in
/// byte order, so line 10 comes before line 2). Their [`compute`] is the plan the processor stores, ties
/// included: the solver breaks ties by input order. Also returns why each line it refuses is refused.
pub fn from_lists(drivers: &[(usize, String)], shipments: &[(usize, String)]) -> (Fleet, Vec<String>) {
    use tributary_broker::fleet::FleetPayload;
    let mut refused = Vec::new();
    let mut stored = |role: Role, list: &[(usize, String)]| {
        let mut rows = Vec::with_capacity(list.len());
        for (line, text) in list {
            let payload = match role {
                Role::Driver => FleetPayload::driver(text),
                Role::Shipment => FleetPayload::shipment(text),
            };
            match FleetRecord::validate(role, line.to_string(), payload) {
                Ok(FleetRecord { id, text: Some(text), .. }) => rows.push((id, text)),
                Ok(_) => {}
                Err(why) => refused.push(format!("{}s, line {line}: {why}", role.token())),
            }
        }
        rows.sort();
        rows
    };
    let drivers = stored(Role::Driver, drivers);
    let shipments = stored(Role::Shipment, shipments);
    (Fleet { shipments, drivers }, refused)
}

/// The batch computation: the optimal plan of a fleet.
pub fn compute(fleet: &Fleet) -> StoredPlan {
    let addresses: Vec<&str> = fleet.shipments.iter().map(|s| s.1.as_str()).collect();
    let names: Vec<&str> = fleet.drivers.iter().map(|d| d.1.as_str()).collect();
    let p = tributary_fleet::plan(&addresses, &names);
    StoredPlan {
        total: p.total.value(),
        assignments: p
            .pairs
            .iter()
            .map(|&(s, d, q)| (fleet.shipments[s].0.clone(), fleet.drivers[d].0.clone(), q.value()))
            .collect(),
    }
}

/// The size a fleet counts against `processor.fleet_max_pairs`: its (driver, shipment) pairs, an empty side
/// counting as one. Every batch loads and plans every live driver and shipment, so neither side may grow
/// past the bound on its own (with no shipments, any number of drivers was taken).
pub fn plan_size(drivers: u64, shipments: u64) -> u64 {
    drivers.max(1).saturating_mul(shipments.max(1))
}

/// A batch that would take the fleet past `processor.fleet_max_pairs`: its messages' own failure, so the
/// one that does it is dead-lettered even when nothing else commits (the consume loop's
/// [`crate::failure::own`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "the fleet would be too large to plan: {drivers} drivers × {shipments} shipments = {size} pairs, over \
     processor.fleet_max_pairs ({max}); delete drivers or shipments, or raise it, then replay this"
)]
pub struct TooLarge {
    pub(crate) drivers: usize,
    pub(crate) shipments: usize,
    pub(crate) size: u64,
    pub(crate) max: u64,
}

/// Why a fleet batch was not stored.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Past the bound.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// PostgreSQL failed. Not transparent: the `sqlx::Error` must be in the error's chain (its source) for
    /// [`crate::failure`] to find it (transparent, a lost connection was taken for the message's own
    /// failure and dead-lettered it).
    #[error("PostgreSQL failed")]
    Db(#[from] sqlx::Error),
}

impl FleetHandler {
    /// A handler writing through `pool`, planning fleets of at most `max_pairs` (driver, shipment) pairs.
    pub fn new(pool: PgPool, max_pairs: u64) -> Self {
        FleetHandler { pool, max_pairs }
    }

    /// Stores the newest version of each driver and shipment in the batch and, if anything changed,
    /// the new plan.
    pub async fn commit(&self, batch: &[Delivery<FleetRecord>]) -> Result<(), FleetError> {
        let mut newest: BTreeMap<(Role, &str), (&FleetRecord, i64)> = BTreeMap::new();
        for d in batch {
            let e = newest.entry((d.event.role, &d.event.id)).or_insert((&d.event, d.seq as i64));
            if d.seq as i64 > e.1 {
                *e = (&d.event, d.seq as i64);
            }
        }
        let mut tx = lock::begin(&self.pool, "fleet", ["plan"]).await?;
        let (drivers, shipments) = store::live_counts(&mut tx).await?;
        let size_before = plan_size(drivers, shipments);
        let mut changed = 0;
        for (role, table) in [(Role::Driver, Table::Drivers), (Role::Shipment, Table::Shipments)] {
            let rows: Vec<Upsert<'_>> = newest
                .iter()
                .filter(|((r, _), _)| *r == role)
                .map(|(_, (r, seq))| Upsert { id: &r.id, text: r.text.as_deref(), seq: *seq })
                .collect();
            if !rows.is_empty() {
                changed += store::upsert(&mut tx, table, &rows).await?;
            }
        }
        // Recompute when something changed, or when no plan exists yet (the first batch may change nothing).
        let recompute = changed > 0 || !store::plan_exists(&mut tx).await?;
        if recompute {
            store::allow_long_computation(&mut tx).await?;
            let fleet = load(&mut tx).await?;
            let size = plan_size(fleet.drivers.len() as u64, fleet.shipments.len() as u64);
            if size > self.max_pairs && size <= size_before {
                // Past the bound already (a lower bound configured since it was stored) and not growing: the
                // changes (deletions above all) are stored, and no plan can be computed, so none is served.
                tracing::warn!(size, max = self.max_pairs, "the fleet is over processor.fleet_max_pairs: no plan");
                store::clear_plan(&mut tx).await?;
                return Ok(tx.commit().await?);
            }
            if size > self.max_pairs {
                // Rolled back: the batch is narrowed down to what takes the fleet past the bound, which is
                // dead-lettered with this reason; the stored plan stays the plan of what is stored.
                let (drivers, shipments) = (fleet.drivers.len(), fleet.shipments.len());
                return Err(TooLarge { drivers, shipments, size, max: self.max_pairs }.into());
            }
            let (drivers, shipments) = (fleet.drivers.len() as i32, fleet.shipments.len() as i32);
            let plan = tokio::task::spawn_blocking(move || compute(&fleet))
                .await
                .map_err(|e| sqlx::Error::Protocol(format!("computing the fleet plan panicked: {e}")))?;
            store::store_plan(&mut tx, &plan, drivers, shipments).await?;
        }
        Ok(tx.commit().await?)
    }
}

commits_batches!(
    FleetHandler,
    FleetRecord,
    |subject, headers, payload, _| FleetRecord::decode(subject, headers, payload),
    "fleet batch",
    "storing the fleet"
);
