//! The schema. Each migration is plain SQL, so the schema reads as what PostgreSQL will hold.

use sea_orm_migration::prelude::*;

mod m0001_prices;
mod m0002_series_version;

/// Runs the migrations in order; `Migrator::up(&db, None)` at startup.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m0001_prices::Migration), Box::new(m0002_series_version::Migration)]
    }
}

/// The SQL of every migration, in order: tests key their template database by its hash.
pub fn schema_sql() -> Vec<&'static str> {
    vec![m0001_prices::SQL, m0002_series_version::SQL]
}
