//! A version per price series, bumped by every write to it, so that a processor can trust a cached tail
//! of the series only while nobody else (another replica) has written it.

use sea_orm_migration::prelude::*;

/// The SQL of this migration.
pub const SQL: &str = r#"
ALTER TABLE price_series ADD COLUMN version int8 NOT NULL DEFAULT 0;
"#;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(SQL).await.map(|_| ())
    }
}
