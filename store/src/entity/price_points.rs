//! `price_points`: raw prices with their derived values.
#![allow(missing_docs)]

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "price_points")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub instrument: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub ts: DateTimeUtc,
    pub price: f64,
    pub volume: Option<f64>,
    pub seq: i64,
    pub ret: Option<f64>,
    pub derived: Json,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
