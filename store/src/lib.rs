//! PostgreSQL: the schema (migrations), the sea-orm entities and the read queries shared by the roles.
//!
//! # Layout
//! - [`migrations`]: the schema, as SQL migrations run by sea-orm's migrator (`Migrator::up` at startup).
//! - [`entity`]: sea-orm entities for the tables the API reads.
//! - [`rollups`]: the rollup widths and retentions of server samples (the `[metrics]` section), shared by
//!   the processor and the API.
//! - [`prices`]: price points, their series and the derived windows' setting.
//! - [`indices`]: index definitions, constituents and levels.
//! - [`locks`]: advisory locks on keys the processor computes.
//! - `arrays`: a batch's rows as the array arguments of `unnest`, column by column.
//! - [`db`]: connecting, creating a missing database, and readiness.
//! - [`notify`]: commit notifications naming the series a transaction wrote, for readers' caches.
//! - [`fleet`]: the fleet's drivers, shipments and plan: the processor's writes, the API's reads.
//! - [`ports`]: ports and per-country counts: the processor's writes, the API's reads.
//! - [`surveys`]: survey items and providers: the processor's writes, the aggregator's and API's reads.
//! - [`samples`]: server samples (`metric.<host>`): every statement on `metric_samples`, `metric_rollups`,
//!   `metric_series` and `metric_latest`, the processor's writes and the API's reads, with typed rows.
//!
//! The processor's hot path writes through the same pool with bulk SQL (`UNNEST ... ON CONFLICT`); the
//! tables are shaped for that and for Grafana's SQL panels (a time column, value columns, a series key).

mod arrays;
pub mod db;
pub mod entity;
pub mod fleet;
pub mod indices;
pub mod locks;
pub mod migrations;
pub mod notify;
pub mod ports;
pub mod prices;
pub mod rollups;
pub mod samples;
mod settings;
pub mod surveys;

pub use db::{DbConfig, StoreError, connect, connect_bounded, ensure_database};
/// The SQL toolkit of the hot path, re-exported so that callers name the same types (pools, errors).
pub use sea_orm::sqlx;
/// A transaction on the pool, as every write of a batch runs in one.
pub type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

/// What a range read returns: the newest `limit` rows from `from` to `to` inclusive (unbounded where
/// `None`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    /// The earliest time, if bounded.
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// The latest time, if bounded.
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    /// How many rows at most.
    pub limit: i64,
}
/// What a listing returns: at most `limit` rows whose keys come after `after` (from the first when `None`),
/// in key order (the database's collation).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The last key of the page before, if any.
    pub after: Option<String>,
    /// How many rows at most.
    pub limit: u64,
}

pub use migrations::Migrator;
pub use rollups::RollupConfig;
