//! Per-series advisory locks.
//!
//! Work on one series is serialised by `pg_advisory_xact_lock` on a key hashed from the series name,
//! held until the transaction ends. To rule out deadlocks every transaction takes its locks in one global
//! order: all instrument locks (ascending key), then all index locks (ascending key).

use sea_orm::sqlx::{Postgres, Transaction};

/// The lock key of a series: FNV-1a 64 of `<class>:<name>`.
pub fn key(class: &str, name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in class.bytes().chain([b':']).chain(name.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// Takes the locks of `names` in class `class` in ascending key order.
pub async fn acquire<'a>(
    tx: &mut Transaction<'static, Postgres>,
    class: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), sea_orm::sqlx::Error> {
    let mut keys: Vec<i64> = names.into_iter().map(|n| key(class, n)).collect();
    if keys.is_empty() {
        return Ok(());
    }
    keys.sort_unstable();
    keys.dedup();
    sea_orm::sqlx::query(
        "SELECT pg_advisory_xact_lock(k) FROM unnest($1::int8[]) WITH ORDINALITY AS t(k, n) ORDER BY n",
    )
    .bind(keys)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_differ_by_class_and_name() {
        assert_ne!(super::key("price", "A"), super::key("index", "A"));
        assert_ne!(super::key("price", "A"), super::key("price", "B"));
        assert_eq!(super::key("price", "A"), super::key("price", "A"));
    }
}
