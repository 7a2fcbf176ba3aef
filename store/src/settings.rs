//! `settings`: values the processors must see unchanged across restarts, by key (the derived windows of
//! prices, the smallest rollup width of metrics). Each kind's module names its keys; this one holds the
//! statements.

use crate::Tx;
use sea_orm::sqlx;
use serde_json::Value;

/// The value of `key`, if set.
pub(crate) async fn get(tx: &mut Tx, key: &str) -> Result<Option<Value>, sqlx::Error> {
    sqlx::query_scalar("SELECT value FROM settings WHERE key = $1").bind(key).fetch_optional(&mut **tx).await
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

/// Removes `key`.
pub(crate) async fn delete(tx: &mut Tx, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM settings WHERE key = $1").bind(key).execute(&mut **tx).await.map(|_| ())
}
