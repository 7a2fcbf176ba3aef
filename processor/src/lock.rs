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

/// Splits a batch into at most `parts` non-empty parts by series (the lock key of `(class, name)`), so
/// each part can commit in its own transaction: a series' events share one part, and parts lock disjoint
/// series.
pub fn split<'a, T>(batch: &'a [T], parts: usize, class: &str, name: impl Fn(&T) -> &str) -> Vec<Vec<&'a T>> {
    let parts = parts.min(batch.len()).max(1);
    let mut split: Vec<Vec<&T>> = vec![Vec::new(); parts];
    for d in batch {
        split[(key(class, name(d)) as u64 % parts as u64) as usize].push(d);
    }
    split.retain(|p| !p.is_empty());
    split
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_differ_by_class_and_name() {
        assert_ne!(super::key("price", "A"), super::key("index", "A"));
        assert_ne!(super::key("price", "A"), super::key("price", "B"));
        assert_eq!(super::key("price", "A"), super::key("price", "A"));
    }

    #[test]
    fn a_split_keeps_each_series_in_one_part() {
        let batch: Vec<String> = (0..100).map(|i| format!("S{}", i % 7)).collect();
        let parts = super::split(&batch, 3, "price", |s| s.as_str());
        assert!(parts.len() <= 3 && parts.iter().all(|p| !p.is_empty()));
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 100);
        for name in ["S0", "S3", "S6"] {
            assert_eq!(parts.iter().filter(|p| p.iter().any(|s| *s == name)).count(), 1, "{name}");
        }
    }
}
