//! `settings`: values the processors must see unchanged across restarts, by key (the derived windows of
//! prices, the smallest rollup width of metrics, how far the metric sweep deleted). Each kind's module names its keys; this one holds the
//! statements.

use crate::Tx;
use sea_orm::sqlx;
use serde_json::Value;

/// The value of `key`, if set: in a transaction (`&mut **tx`) or on the pool.
pub(crate) async fn get<'e>(db: impl sqlx::PgExecutor<'e>, key: &str) -> Result<Option<Value>, sqlx::Error> {
    sqlx::query_scalar("SELECT value FROM settings WHERE key = $1").bind(key).fetch_optional(db).await
}

/// Sets `key` to `value`.
pub(crate) async fn set(tx: &mut Tx, key: &str, value: &Value) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
    )
    .bind(key)
    .bind(value)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Raises the integer at `key` to `value` where it is lower or unset; returns the value stored after.
pub(crate) async fn raise(tx: &mut Tx, key: &str, value: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO settings (key, value) VALUES ($1, to_jsonb($2::int8))
         ON CONFLICT (key) DO UPDATE SET value = to_jsonb(GREATEST((settings.value)::int8, $2::int8))
         RETURNING (value)::int8",
    )
    .bind(key)
    .bind(value)
    .fetch_one(&mut **tx)
    .await
}

/// Removes `key`.
pub(crate) async fn delete(tx: &mut Tx, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM settings WHERE key = $1").bind(key).execute(&mut **tx).await.map(|_| ())
}
