//! The schema. Each migration is plain SQL, so the schema reads as what PostgreSQL will hold; the list
//! below is the order they run in (add a file, then a line).

use sea_orm_migration::prelude::*;

mod m0001_prices;
mod m0002_series_version;
mod m0003_metrics;
mod m0004_ports;
mod m0005_fleet_surveys;
mod m0006_fleet_live;

/// Every migration: (name, SQL), in order.
const MIGRATIONS: &[(&str, &str)] = &[
    ("m0001_prices", m0001_prices::SQL),
    ("m0002_series_version", m0002_series_version::SQL),
    ("m0003_metrics", m0003_metrics::SQL),
    ("m0004_ports", m0004_ports::SQL),
    ("m0005_fleet_surveys", m0005_fleet_surveys::SQL),
    ("m0006_fleet_live", m0006_fleet_live::SQL),
];

/// Runs the migrations in order; `Migrator::up(&db, None)` at startup.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        MIGRATIONS.iter().map(|&(name, sql)| Box::new(SqlMigration { name, sql }) as Box<dyn MigrationTrait>).collect()
    }
}

/// The SQL of every migration, in order: tests key their template database by its hash.
pub fn schema_sql() -> Vec<&'static str> {
    MIGRATIONS.iter().map(|m| m.1).collect()
}

/// A migration that runs one SQL text in a transaction.
struct SqlMigration {
    name: &'static str,
    sql: &'static str,
}

impl MigrationName for SqlMigration {
    fn name(&self) -> &str {
        self.name
    }
}

#[async_trait::async_trait]
impl MigrationTrait for SqlMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(self.sql).await.map(|_| ())
    }
}
