//! Advisory locks: the SQL that takes `pg_advisory_xact_lock` on 64-bit keys, held until the transaction
//! ends. Which keys a series has, and the order that rules out deadlocks, is the processor's
//! (`tributary_processor::lock`); the keys arrive here sorted and deduplicated.

use crate::Tx;
use sea_orm::sqlx::{self, AssertSqlSafe, PgPool};

/// Takes the locks of `keys`, in the order given, in the caller's transaction.
pub async fn acquire(tx: &mut Tx, keys: &[i64]) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_advisory_xact_lock(k) FROM unnest($1::int8[]) WITH ORDINALITY AS t(k, n) ORDER BY n")
        .bind(keys)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Begins a transaction holding the locks of `keys` (in the order given), in one round trip: the locking
/// `SELECT` and `BEGIN` go as one simple query (the keys are integers written into it, so no text from
/// outside reaches the SQL). The `SELECT` comes first: it runs in the query's implicit transaction, which
/// the `BEGIN` after it turns into the transaction returned, locks held. Should the `SELECT` fail (a lock
/// timeout, a deadlock, a cancel), the implicit transaction ends with it and the connection is idle again.
///
/// Both rules come from one fact: sqlx counts a transaction as open, and rolls it back when dropped, only
/// once its begin statement has returned. So with `BEGIN` first a failed lock would leave the connection
/// in an aborted transaction for good; and a begin dropped while it waits for a lock would put the
/// connection back in the pool inside a transaction holding the locks, for every other session to wait
/// on. Hence the begin runs as a task of its own, which completes (and, unused, is rolled back as usual)
/// even if the caller is gone.
pub async fn begin(pool: &PgPool, keys: &[i64]) -> Result<Tx, sqlx::Error> {
    begin_sharing(pool, None, keys).await
}

/// [`begin`], holding the lock `shared` in shared mode first, when given: many transactions hold it at
/// once, and one holding it exclusively (as [`begin`] takes it) waits for them all and keeps them waiting.
pub async fn begin_sharing(pool: &PgPool, shared: Option<i64>, keys: &[i64]) -> Result<Tx, sqlx::Error> {
    let list = keys.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let shared = shared.map(|k| format!("SELECT pg_advisory_xact_lock_shared({k}); ")).unwrap_or_default();
    let pool = pool.clone();
    let begin = tokio::spawn(async move {
        if list.is_empty() && shared.is_empty() {
            return pool.begin().await;
        }
        pool.begin_with(AssertSqlSafe(format!(
            "{shared}SELECT pg_advisory_xact_lock(k) FROM unnest('{{{list}}}'::int8[]) WITH ORDINALITY AS t(k, n) ORDER BY n; BEGIN"
        )))
        .await
    });
    begin.await.map_err(|_| sqlx::Error::WorkerCrashed)?
}
