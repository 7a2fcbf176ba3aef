//! Fleet: drivers and shipments → the assignment that maximises the total suitability score, one
//! transaction per batch.
//!
//! Drivers and shipments are kept last writer wins by stream sequence (a deletion is a tombstone). When a
//! batch changes either set, the plan is recomputed from every live driver and shipment (Hungarian
//! algorithm, [`tributary_fleet::plan`]) and replaced in the same transaction, with its version bumped.
//! One advisory lock covers the whole fleet, so replicas sharing the consumer never interleave: the
//! stored plan is always the plan of the stored drivers and shipments, the batch computation itself.

use crate::lock;
use sea_orm::sqlx::{self, PgPool, Postgres, Transaction};
use std::collections::BTreeMap;
use tributary_broker::fleet::{FleetRecord, Role};
use tributary_broker::{BatchHandler, Delivery, HandleError, Rejection, ts::Ts};

/// Consumes `fleet.driver.<id>` and `fleet.shipment.<id>`.
#[derive(Clone)]
pub struct FleetHandler {
    pool: PgPool,
}

/// The live drivers and shipments, by id, as the plan is computed from them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fleet {
    /// `(id, address)` by id.
    pub shipments: Vec<(String, String)>,
    /// `(id, name)` by id.
    pub drivers: Vec<(String, String)>,
}

/// A computed plan with the ids it pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPlan {
    /// Total suitability score.
    pub total: f64,
    /// `(shipment id, driver id, score)`.
    pub assignments: Vec<(String, String, f64)>,
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

/// Reads the live drivers and shipments.
pub async fn load(db: &mut sqlx::PgConnection) -> Result<Fleet, sqlx::Error> {
    let shipments =
        sqlx::query_as("SELECT id, address FROM fleet_shipments WHERE address IS NOT NULL ORDER BY id COLLATE \"C\"")
            .fetch_all(&mut *db)
            .await?;
    let drivers = sqlx::query_as("SELECT id, name FROM fleet_drivers WHERE name IS NOT NULL ORDER BY id COLLATE \"C\"")
        .fetch_all(&mut *db)
        .await?;
    Ok(Fleet { shipments, drivers })
}

impl FleetHandler {
    /// A handler writing through `pool`.
    pub fn new(pool: PgPool) -> Self {
        FleetHandler { pool }
    }

    /// Stores the newest version of each driver and shipment in the batch and, if anything changed,
    /// the new plan.
    pub async fn commit(&self, batch: &[Delivery<FleetRecord>]) -> Result<(), sqlx::Error> {
        let mut newest: BTreeMap<(Role, &str), (&FleetRecord, i64)> = BTreeMap::new();
        for d in batch {
            let e = newest.entry((d.event.role, &d.event.id)).or_insert((&d.event, d.seq as i64));
            if d.seq as i64 > e.1 {
                *e = (&d.event, d.seq as i64);
            }
        }
        let mut tx = lock::begin(&self.pool, "fleet", ["plan"]).await?;
        let mut changed = 0;
        for (role, table, column) in
            [(Role::Driver, "fleet_drivers", "name"), (Role::Shipment, "fleet_shipments", "address")]
        {
            let rows: Vec<_> = newest.iter().filter(|((r, _), _)| *r == role).map(|(_, v)| *v).collect();
            if !rows.is_empty() {
                changed += upsert(&mut tx, table, column, &rows).await?;
            }
        }
        // Recompute when something changed, or when no plan exists yet (the first batch may change nothing).
        let recompute = changed > 0
            || !sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM fleet_plan)").fetch_one(&mut *tx).await?;
        if recompute {
            let fleet = load(&mut tx).await?;
            let (drivers, shipments) = (fleet.drivers.len() as i32, fleet.shipments.len() as i32);
            let plan = tokio::task::spawn_blocking(move || compute(&fleet))
                .await
                .map_err(|e| sqlx::Error::Protocol(format!("computing the fleet plan panicked: {e}")))?;
            store_plan(&mut tx, &plan, drivers, shipments).await?;
        }
        tx.commit().await
    }
}

/// Upserts newer versions; returns how many rows changed.
async fn upsert(
    tx: &mut Transaction<'static, Postgres>,
    table: &str,
    column: &str,
    rows: &[(&FleetRecord, i64)],
) -> Result<u64, sqlx::Error> {
    let sql = format!(
        "INSERT INTO {table} (id, {column}, seq) SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])
         ON CONFLICT (id) DO UPDATE SET {column} = EXCLUDED.{column}, seq = EXCLUDED.seq, updated_at = now()
         WHERE {table}.seq < EXCLUDED.seq"
    );
    let r = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(rows.iter().map(|(r, _)| r.id.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(r, _)| r.text.as_deref()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, s)| *s).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    Ok(r.rows_affected())
}

async fn store_plan(
    tx: &mut Transaction<'static, Postgres>,
    plan: &StoredPlan,
    drivers: i32,
    shipments: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM fleet_assignments").execute(&mut **tx).await?;
    sqlx::query(
        "INSERT INTO fleet_assignments (shipment_id, driver_id, score)
         SELECT * FROM unnest($1::text[], $2::text[], $3::float8[])",
    )
    .bind(plan.assignments.iter().map(|a| a.0.as_str()).collect::<Vec<_>>())
    .bind(plan.assignments.iter().map(|a| a.1.as_str()).collect::<Vec<_>>())
    .bind(plan.assignments.iter().map(|a| a.2).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO fleet_plan (version, total_score, drivers, shipments, computed_at) VALUES (1, $1, $2, $3, now())
         ON CONFLICT (one) DO UPDATE SET version = fleet_plan.version + 1, total_score = EXCLUDED.total_score,
           drivers = EXCLUDED.drivers, shipments = EXCLUDED.shipments, computed_at = EXCLUDED.computed_at",
    )
    .bind(plan.total)
    .bind(drivers)
    .bind(shipments)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl BatchHandler for FleetHandler {
    type Event = FleetRecord;

    fn decode(
        &self,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
        _received: Ts,
    ) -> Result<FleetRecord, Rejection> {
        FleetRecord::decode(subject, headers, payload)
    }

    async fn handle(&self, batch: &[Delivery<FleetRecord>]) -> Result<(), HandleError> {
        crate::commit_in_span("fleet batch", "storing the fleet", batch.len(), self.commit(batch)).await
    }
}
