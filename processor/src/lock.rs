//! Per-series advisory locks.
//!
//! Work on one series is serialised by `pg_advisory_xact_lock` on a key hashed from the series name,
//! held until the transaction ends. To rule out deadlocks every transaction takes its locks in one global
//! order: the [`WINDOWS`] lock (shared by price batches, exclusive for a recompute's part), then all
//! instrument locks (ascending key), then all index locks (ascending key). An index definition's
//! transaction first takes [`DEFINITIONS`], which nothing else takes, so it cannot close a cycle.
//!
//! [`begin`] opens a transaction and takes its first locks in one round trip ([`begin_sharing`] with a
//! shared one before them); [`acquire`] takes more. The SQL is [`tributary_store::locks`]'; the keys and
//! their order are this module's.

use tributary_store::sqlx::{self, PgPool};
use tributary_store::{Tx, locks};

/// The class and name of the lock that lets one index definition at a time be stored: each locks up to
/// `IndexDefinition::MAX_CONSTITUENTS` series, and several side by side overflow PostgreSQL's lock table.
pub const DEFINITIONS: &str = "definitions";

/// The class and name of the lock that fences the derived windows: a recompute for new windows holds it
/// exclusively for each of its parts, and every price batch holds it shared, so no batch runs beside a
/// part. (A batch begun before a part's first commit saw the old windows recorded; had it created a
/// series after the part listed its series, that series would have kept the old windows' values.)
pub const WINDOWS: (&str, &str) = ("settings", "price_transforms");

/// The lock key of a series: FNV-1a 64 of `<class>:<name>`.
pub fn key(class: &str, name: &str) -> i64 {
    tributary_broker::hash::fnv1a(&[class.as_bytes(), b":", name.as_bytes()]) as i64
}

/// Takes the locks of `names` in class `class` in ascending key order.
pub async fn acquire<'a>(
    tx: &mut Tx,
    class: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), sqlx::Error> {
    locks::acquire(tx, &sorted_keys(class, names)).await
}

/// Begins a transaction holding the locks of `names` in class `class`, in one round trip (see
/// [`locks::begin`], which also says why it cannot be cancelled half-way).
pub async fn begin<'a>(
    pool: &PgPool,
    class: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<Tx, sqlx::Error> {
    locks::begin(pool, &sorted_keys(class, names)).await
}

/// [`begin`], holding the lock `shared` (class, name) in shared mode before the others.
pub async fn begin_sharing<'a>(
    pool: &PgPool,
    shared: (&str, &str),
    class: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<Tx, sqlx::Error> {
    locks::begin_sharing(pool, Some(key(shared.0, shared.1)), &sorted_keys(class, names)).await
}

fn sorted_keys<'a>(class: &str, names: impl IntoIterator<Item = &'a str>) -> Vec<i64> {
    let mut keys: Vec<i64> = names.into_iter().map(|n| key(class, n)).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// About the most series (so locks) one part of a split holds. PostgreSQL keeps every session's locks in
/// one table of about `max_locks_per_transaction` (64) × `max_connections` (100) entries, and a
/// transaction that does not fit fails with "out of shared memory" and makes the others fail too: a batch
/// over thousands of series, in one or two transactions, failed for as long as the backlog lasted.
pub const MAX_SERIES_PER_PART: usize = 512;

/// Splits a batch into parts by series (the lock key of `(class, name)`), so each part can commit in its
/// own transaction: a series' events share one part, and parts lock disjoint series. At most `parts`
/// parts, unless the batch holds more than `parts` × [`MAX_SERIES_PER_PART`] series.
pub fn split<'a, T>(batch: &'a [T], parts: usize, class: &str, name: impl Fn(&T) -> &str) -> Vec<Vec<&'a T>> {
    split_by(batch, parts, |d| key(class, name(d)), |d| key(class, name(d)))
}

/// Splits a batch into non-empty parts by series (`series`, its lock key), keeping the items of a `group`
/// (several series, e.g. an index's constituents) in one part while the group holds at most
/// [`MAX_SERIES_PER_PART`] of the batch's series; a larger group is split by series. At most `parts`
/// parts, or as many as keep about [`MAX_SERIES_PER_PART`] series in each: groups go, largest first, to
/// the part with the fewest series so far, so no part holds more than about twice that. Items of one
/// series share one part, so parts lock disjoint series, as long as each series is in one group.
pub fn split_by<T>(batch: &[T], parts: usize, series: impl Fn(&T) -> i64, group: impl Fn(&T) -> i64) -> Vec<Vec<&T>> {
    use std::collections::{HashMap, HashSet};
    // Too few items to span more series than one part should lock: no sets to build on the hot path.
    if parts <= 1 && batch.len() <= MAX_SERIES_PER_PART {
        return if batch.is_empty() { Vec::new() } else { vec![batch.iter().collect()] };
    }
    let keys: Vec<(i64, i64)> = batch.iter().map(|d| (group(d), series(d))).collect();
    let mut groups: HashMap<i64, HashSet<i64>> = HashMap::new();
    for &(g, s) in &keys {
        groups.entry(g).or_default().insert(s);
    }
    let all: usize = groups.values().map(HashSet::len).sum();
    let parts = parts.max(all.div_ceil(MAX_SERIES_PER_PART)).min(batch.len()).max(1);
    // The unit each item goes by (its group, or its series in a large group) and how many series it has.
    let mut units: Vec<(usize, i64)> = Vec::with_capacity(groups.len());
    for (g, members) in &groups {
        if members.len() > MAX_SERIES_PER_PART {
            units.extend(members.iter().map(|&s| (1, s)));
        } else {
            units.push((members.len(), *g));
        }
    }
    units.sort_unstable_by(|a, b| b.cmp(a));
    let mut load = vec![0usize; parts];
    let mut part_of: HashMap<i64, usize> = HashMap::with_capacity(units.len());
    for (n, unit) in units {
        let p = (0..parts).min_by_key(|&p| load[p]).unwrap_or(0);
        load[p] += n;
        part_of.insert(unit, p);
    }
    let mut split: Vec<Vec<&T>> = vec![Vec::new(); parts];
    for (d, &(g, s)) in batch.iter().zip(&keys) {
        let unit = if groups[&g].len() > MAX_SERIES_PER_PART { s } else { g };
        split[part_of[&unit]].push(d);
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
    fn a_split_over_many_series_keeps_each_part_near_the_lock_budget() {
        let batch: Vec<String> = (0..20_000).map(|i| format!("S{}", i % 10_000)).collect();
        let parts = super::split(&batch, 2, "price", |s| s.as_str());
        assert_eq!(parts.len(), 10_000usize.div_ceil(super::MAX_SERIES_PER_PART));
        for p in &parts {
            let series: std::collections::HashSet<&String> = p.iter().copied().collect();
            assert!(series.len() <= super::MAX_SERIES_PER_PART * 3 / 2, "{}", series.len());
        }
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 20_000);
        // Few series: the parts asked for.
        assert_eq!(super::split(&batch[..300], 2, "price", |s| s.as_str()).len(), 2);
    }

    /// A group (an index's constituents) stays in one part while it is small; a group of more series
    /// than a part should lock is split by series like the rest.
    #[test]
    fn a_group_stays_whole_until_it_holds_more_series_than_a_part_should_lock() {
        let batch: Vec<(u32, bool)> = (0..8000).map(|i| (i % 6000, i % 6000 < 5000)).chain([(7000, false)]).collect();
        let series = |d: &(u32, bool)| d.0 as i64;
        let big = |d: &(u32, bool)| if d.1 { -1 } else { d.0 as i64 };
        let parts = super::split_by(&batch, 2, series, big);
        assert_eq!(parts.len(), 6001usize.div_ceil(super::MAX_SERIES_PER_PART));
        for p in &parts {
            let n = p.iter().map(|d| d.0).collect::<std::collections::HashSet<_>>().len();
            assert!(n <= super::MAX_SERIES_PER_PART * 3 / 2, "{n} series in one part");
        }
        // Twelve groups of 500 series whose keys all fall in one part by remainder: spread by load.
        let groups = |d: &(u32, bool)| (d.0 / 500 * 12) as i64;
        let parts = super::split_by(&batch[..6000], 2, series, groups);
        for p in &parts {
            let n = p.iter().map(|d| d.0).collect::<std::collections::HashSet<_>>().len();
            assert!(n <= super::MAX_SERIES_PER_PART * 2, "{n} series in one part");
        }
        let small = |d: &(u32, bool)| if d.0 < 10 { -1 } else { d.0 as i64 };
        let parts = super::split_by(&batch, 2, series, small);
        let with_group = parts.iter().filter(|p| p.iter().any(|d| d.0 < 10)).count();
        assert_eq!(with_group, 1, "the small group in one part");
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
