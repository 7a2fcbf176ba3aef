//! PostgreSQL: the schema (migrations), the sea-orm entities and the read queries shared by the roles.
//!
//! # Layout
//! - [`migrations`]: the schema, as SQL migrations run by sea-orm's migrator (`Migrator::up` at startup).
//! - [`entity`]: sea-orm entities for the tables the API reads.
//! - [`metrics`]: metric rollup widths and retention, shared by the processor and the API.
//! - [`db`]: connecting, creating a missing database, and readiness.
//! - [`notify`]: commit notifications naming the series a transaction wrote, for readers' caches.
//! - [`samples`]: server samples (`metric.<host>`): every statement on `metric_samples`, `metric_rollups`,
//!   `metric_series` and `metric_latest`, the processor's writes and the API's reads, with typed rows.
//!
//! The processor's hot path writes through the same pool with bulk SQL (`UNNEST ... ON CONFLICT`); the
//! tables are shaped for that and for Grafana's SQL panels (a time column, value columns, a series key).

pub mod db;
pub mod entity;
pub mod metrics;
pub mod migrations;
pub mod notify;
pub mod samples;

pub use db::{DbConfig, StoreError, connect, ensure_database};
/// The SQL toolkit of the hot path, re-exported so that callers name the same types (pools, errors).
pub use sea_orm::sqlx;
/// A transaction on the pool, as every write of a batch runs in one.
pub type Tx = sqlx::Transaction<'static, sqlx::Postgres>;
pub use metrics::MetricsConfig;
pub use migrations::Migrator;
