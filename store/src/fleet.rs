//! Fleet: owns `fleet_drivers`, `fleet_shipments`, `fleet_plan` and `fleet_assignments`.
//!
//! Drivers and shipments are kept last writer wins by stream sequence (a deletion is a tombstone, its
//! name or address NULL); the plan (one `fleet_plan` row, its version counting recomputes) and its
//! assignments are replaced together, in the transaction that changed the drivers or shipments.
//!
//! - Writes, in the processor's transaction (its fleet lock already held): [`upsert`] newer versions of
//!   drivers or shipments ([`Table`], [`Upsert`]), [`live_counts`], [`plan_exists`], [`load`] the live
//!   [`Fleet`] the plan is computed from, and [`store_plan`] a computed [`StoredPlan`] (or [`clear_plan`]
//!   when none can be).
//! - Reads, for the API: [`plan_snapshot`] (the plan's head, assignments and who is left without one, in
//!   one snapshot: a [`PlanSnapshot`]), [`shipment_address`] and [`driver_name`].

use crate::Tx;
use crate::arrays::Arrays;
use chrono::{DateTime, Utc};
use sea_orm::sqlx::{self, PgPool};
use serde::Serialize;

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

/// The table of drivers or the table of shipments: the two are shaped alike (`id`, one text column, `seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `fleet_drivers`, whose text column is `name`.
    Drivers,
    /// `fleet_shipments`, whose text column is `address`.
    Shipments,
}

impl Table {
    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Drivers => "fleet_drivers",
            Table::Shipments => "fleet_shipments",
        }
    }

    /// The text column: `name` or `address`.
    pub fn column(self) -> &'static str {
        match self {
            Table::Drivers => "name",
            Table::Shipments => "address",
        }
    }
}

/// One version of a driver or shipment to store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Upsert<'a> {
    /// The driver's or shipment's id.
    pub id: &'a str,
    /// The name or address; `None` for a deletion (a tombstone).
    pub text: Option<&'a str>,
    /// The stream sequence of the message: the newer one wins.
    pub seq: i64,
}

/// Upserts newer versions into `table` (one per id); returns how many changed the live fleet: a driver or
/// shipment added, removed, or given another name or address. A newer version with the same text (sent
/// again after the duplicate window), or the deletion of one never stored, is stored for its sequence but
/// changes no plan. (Every newer version counted, and each cost a whole new plan.)
pub async fn upsert(tx: &mut Tx, table: Table, rows: &[Upsert<'_>]) -> Result<u64, sqlx::Error> {
    // Only the table's fixed names reach the text; the values are binds. The `before` rows are read in
    // the statement's snapshot, before its upsert.
    let (table, column) = (table.name(), table.column());
    let sql = format!(
        "WITH input AS (SELECT * FROM unnest($1::text[], $2::text[], $3::int8[]) AS i(id, text, seq)),
         before AS (SELECT t.id, t.{column} AS text FROM {table} t JOIN input USING (id)),
         stored AS (
           INSERT INTO {table} (id, {column}, seq) SELECT id, text, seq FROM input
           ON CONFLICT (id) DO UPDATE SET {column} = EXCLUDED.{column}, seq = EXCLUDED.seq, updated_at = now()
           WHERE {table}.seq < EXCLUDED.seq
           RETURNING id, {column} AS text)
         SELECT count(*) FROM stored s LEFT JOIN before b USING (id) WHERE s.text IS DISTINCT FROM b.text"
    );
    let args = Arrays::of(rows).column(|r| r.id).column(|r| r.text).column(|r| r.seq).done()?;
    let changed: i64 = sqlx::query_scalar_with(sqlx::AssertSqlSafe(sql), args).fetch_one(&mut **tx).await?;
    Ok(changed.max(0) as u64)
}

/// Exempts `tx` from `database.idle_in_transaction_secs`: the plan of a large fleet is computed inside
/// its transaction, for longer than that. A process that dies meanwhile still gives the fleet's lock back
/// once TCP keepalives find it gone (see [`crate::connect`]).
pub async fn allow_long_computation(tx: &mut Tx) -> Result<(), sqlx::Error> {
    sqlx::query("SET LOCAL idle_in_transaction_session_timeout = 0").execute(&mut **tx).await.map(|_| ())
}

/// How many drivers and how many shipments are live (through the partial indexes `fleet_*_live`, not the
/// tombstones).
pub const LIVE_COUNTS: &str = "SELECT (SELECT count(*) FROM fleet_drivers WHERE name IS NOT NULL),
       (SELECT count(*) FROM fleet_shipments WHERE address IS NOT NULL)";

/// The live drivers, by id in byte order.
pub const LIVE_DRIVERS: &str = "SELECT id, name FROM fleet_drivers WHERE name IS NOT NULL ORDER BY id COLLATE \"C\"";

/// The live shipments, by id in byte order.
pub const LIVE_SHIPMENTS: &str =
    "SELECT id, address FROM fleet_shipments WHERE address IS NOT NULL ORDER BY id COLLATE \"C\"";

/// How many drivers and how many shipments are live ([`LIVE_COUNTS`]).
pub async fn live_counts(tx: &mut Tx) -> Result<(u64, u64), sqlx::Error> {
    let (drivers, shipments): (i64, i64) = sqlx::query_as(LIVE_COUNTS).fetch_one(&mut **tx).await?;
    Ok((drivers.max(0) as u64, shipments.max(0) as u64))
}

/// Removes the stored plan (head and assignments): there is none of the fleet as stored.
pub async fn clear_plan(tx: &mut Tx) -> Result<(), sqlx::Error> {
    sqlx::raw_sql("DELETE FROM fleet_assignments; DELETE FROM fleet_plan").execute(&mut **tx).await?;
    Ok(())
}

/// Whether a plan is stored (none before the first computation, or while the fleet is past its bound).
pub async fn plan_exists(tx: &mut Tx) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM fleet_plan)").fetch_one(&mut **tx).await
}

/// Reads the live drivers and shipments.
pub async fn load(db: &mut sqlx::PgConnection) -> Result<Fleet, sqlx::Error> {
    let shipments = sqlx::query_as(LIVE_SHIPMENTS).fetch_all(&mut *db).await?;
    let drivers = sqlx::query_as(LIVE_DRIVERS).fetch_all(&mut *db).await?;
    Ok(Fleet { shipments, drivers })
}

/// Replaces the stored plan and its assignments with `plan`, computed over `drivers` drivers and
/// `shipments` shipments, and bumps its version.
pub async fn store_plan(tx: &mut Tx, plan: &StoredPlan, drivers: i32, shipments: i32) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM fleet_assignments").execute(&mut **tx).await?;
    let assignments = Arrays::of(&plan.assignments).column(|a| a.0.as_str()).column(|a| a.1.as_str());
    sqlx::query_with(
        "INSERT INTO fleet_assignments (shipment_id, driver_id, score)
         SELECT * FROM unnest($1::text[], $2::text[], $3::float8[])",
        assignments.column(|a| a.2).done()?,
    )
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

/// The stored plan's head: its version, total and when it was computed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanHead {
    /// Counts recomputes, from 1.
    pub version: i64,
    /// The total suitability score.
    pub total_score: f64,
    /// When it was computed.
    pub computed_at: DateTime<Utc>,
}

/// One assignment of the plan, with the address and the driver's name.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Assignment {
    /// The shipment's id.
    pub shipment_id: String,
    /// The shipment's address.
    pub address: String,
    /// The driver's id.
    pub driver_id: String,
    /// The driver's name.
    pub driver: String,
    /// The suitability score of the pair.
    pub score: f64,
}

/// A live shipment that the plan leaves without a driver.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = Shipment))]
pub struct UnassignedShipment {
    /// The shipment's id.
    pub shipment_id: String,
    /// Its address.
    pub address: String,
}

/// A live driver that the plan leaves without a shipment.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = Driver))]
pub struct UnassignedDriver {
    /// The driver's id.
    pub driver_id: String,
    /// The driver's name.
    pub driver: String,
}

/// The stored plan as one snapshot: its parts always belong to the same version.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PlanSnapshot {
    /// `None` before the first plan is computed.
    pub head: Option<PlanHead>,
    /// Best first (score descending, then shipment id).
    pub assignments: Vec<Assignment>,
    /// By id.
    pub unassigned_shipments: Vec<UnassignedShipment>,
    /// By id.
    pub unassigned_drivers: Vec<UnassignedDriver>,
}

/// Reads the plan: head, every assignment (best first) and who is left without one, in one
/// `REPEATABLE READ READ ONLY` transaction, so the parts always belong to the same version.
pub async fn plan_snapshot(pool: &PgPool) -> Result<PlanSnapshot, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
    let head: Option<(i64, f64, DateTime<Utc>)> =
        sqlx::query_as("SELECT version, total_score, computed_at FROM fleet_plan").fetch_optional(&mut *tx).await?;
    let assignments: Vec<(String, String, String, String, f64)> = sqlx::query_as(
        "SELECT a.shipment_id, s.address, a.driver_id, d.name, a.score FROM fleet_assignments a
           JOIN fleet_shipments s ON s.id = a.shipment_id JOIN fleet_drivers d ON d.id = a.driver_id
          ORDER BY a.score DESC, a.shipment_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    let unassigned = |sql: &'static str| sqlx::query_as::<_, (String, String)>(sql);
    let shipments = unassigned(
        "SELECT id, address FROM fleet_shipments s WHERE address IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM fleet_assignments a WHERE a.shipment_id = s.id) ORDER BY id",
    )
    .fetch_all(&mut *tx)
    .await?;
    let drivers = unassigned(
        "SELECT id, name FROM fleet_drivers d WHERE name IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM fleet_assignments a WHERE a.driver_id = d.id) ORDER BY id",
    )
    .fetch_all(&mut *tx)
    .await?;
    Ok(PlanSnapshot {
        head: head.map(|(version, total_score, computed_at)| PlanHead { version, total_score, computed_at }),
        assignments: assignments
            .into_iter()
            .map(|(shipment_id, address, driver_id, driver, score)| Assignment {
                shipment_id,
                address,
                driver_id,
                driver,
                score,
            })
            .collect(),
        unassigned_shipments: shipments
            .into_iter()
            .map(|(shipment_id, address)| UnassignedShipment { shipment_id, address })
            .collect(),
        unassigned_drivers: drivers
            .into_iter()
            .map(|(driver_id, driver)| UnassignedDriver { driver_id, driver })
            .collect(),
    })
}

/// The address of live shipment `id`; `None` if there is none (or it was deleted).
pub async fn shipment_address(pool: &PgPool, id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT address FROM fleet_shipments WHERE id = $1 AND address IS NOT NULL")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The name of live driver `id`; `None` if there is none (or it was deleted).
pub async fn driver_name(pool: &PgPool, id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT name FROM fleet_drivers WHERE id = $1 AND name IS NOT NULL")
        .bind(id)
        .fetch_optional(pool)
        .await
}
