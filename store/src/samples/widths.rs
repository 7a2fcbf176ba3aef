//! The smallest rollup width the stored rollups were built with (a `settings` row): every wider bucket
//! is merged from buckets of that width, so it cannot change under stored rollups.

use crate::{Tx, settings};
use sea_orm::sqlx;

/// The `settings` key of the smallest rollup width, in seconds.
const BASE_WIDTH_KEY: &str = "metric_base_width";

/// The smallest width, in seconds, of the stored rollups; `None` when no rollup is stored. Recorded
/// ([`store_base_width`]), else (rollups stored before it was recorded) read off them, once.
pub async fn stored_base_width(tx: &mut Tx) -> Result<Option<i64>, sqlx::Error> {
    let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM metric_rollups)").fetch_one(&mut **tx).await?;
    if !any {
        return Ok(None);
    }
    if let Some(secs) = settings::get(&mut **tx, BASE_WIDTH_KEY).await?.and_then(|v| v.as_i64()) {
        return Ok(Some(secs));
    }
    sqlx::query_scalar("SELECT min(width)::int8 FROM metric_rollups").fetch_one(&mut **tx).await
}

/// Records the smallest width, in seconds, the rollups are built with.
pub async fn store_base_width(tx: &mut Tx, secs: i64) -> Result<(), sqlx::Error> {
    settings::set(tx, BASE_WIDTH_KEY, &secs.into()).await
}
