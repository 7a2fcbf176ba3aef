//! `price_series`: one row per instrument.
#![allow(missing_docs)]

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "price_series")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub instrument: String,
    pub points: i64,
    pub first_ts: DateTimeUtc,
    pub last_ts: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub version: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
