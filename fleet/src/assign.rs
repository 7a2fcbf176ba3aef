//! The assignment of shipments to drivers that maximises the total suitability score.
//!
//! Each shipment goes to at most one driver and each driver takes at most one shipment. Scores are never
//! negative, so some optimal assignment pairs every member of the smaller side: the Hungarian algorithm
//! (Kuhn–Munkres with potentials, O(n²·m) for n ≤ m) finds it on integer quarters, exactly. When there
//! are more shipments than drivers the matrix is transposed, so both shapes cost the same.
//!
//! Ties between equally good assignments are broken by the order of the inputs, so the same inputs in
//! the same order always give the same plan.

use crate::score::{Name, Quarters, Street};

/// An optimal assignment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// The total score of the assignment.
    pub total: Quarters,
    /// `(shipment index, driver index, score)`, by shipment index.
    pub pairs: Vec<(usize, usize, Quarters)>,
    /// Shipments with no driver, by index.
    pub unassigned_shipments: Vec<usize>,
    /// Drivers with no shipment, by index.
    pub unassigned_drivers: Vec<usize>,
}

/// The plan for `shipments` (destination addresses) and `drivers` (names), by index into each.
///
/// ```
/// let plan = tributary_fleet::plan(&["44 Fake Dr., San Diego", "1 Elm Street"], &["Alice Smith", "Bo"]);
/// assert_eq!(plan.pairs.len(), 2);
/// assert!(plan.total.value() >= 6.0);
/// ```
pub fn plan<S: AsRef<str>, D: AsRef<str>>(shipments: &[S], drivers: &[D]) -> Plan {
    let (n, m) = (shipments.len(), drivers.len());
    let names: Vec<Name> = drivers.iter().map(|d| Name::of(d.as_ref())).collect();
    let mut scores = Vec::with_capacity(n * m);
    for s in shipments {
        let street = Street::of(s.as_ref());
        scores.extend(names.iter().map(|&name| street.score(name).0));
    }
    plan_scores(n, m, &scores)
}

/// The plan for an `n × m` matrix of scores in quarters, row-major (rows are shipments).
pub fn plan_scores(n: usize, m: usize, scores: &[u64]) -> Plan {
    assert_eq!(scores.len(), n * m, "an n × m score matrix");
    let at = |i: usize, j: usize| scores[i * m + j];
    let column_of_row: Vec<Option<usize>> = if n <= m {
        maximise(n, m, at).into_iter().map(Some).collect()
    } else {
        // Transposed in memory, so the solver reads along rows either way (through `at(i, j)`, every read
        // of its inner loop was `m` apart).
        let columns: Vec<u64> = (0..m).flat_map(|j| (0..n).map(move |i| at(i, j))).collect();
        let row_of_column = maximise(m, n, |j, i| columns[j * n + i]);
        let mut c = vec![None; n];
        for (j, i) in row_of_column.into_iter().enumerate() {
            c[i] = Some(j);
        }
        c
    };
    let mut p = Plan::default();
    let mut driver_taken = vec![false; m];
    for (i, c) in column_of_row.into_iter().enumerate() {
        match c {
            Some(j) => {
                let s = Quarters(at(i, j));
                p.total.0 += s.0;
                p.pairs.push((i, j, s));
                driver_taken[j] = true;
            }
            None => p.unassigned_shipments.push(i),
        }
    }
    p.unassigned_drivers = (0..m).filter(|j| !driver_taken[*j]).collect();
    p
}

/// For `rows ≤ cols`, the column of each row in an assignment of every row to a distinct column that
/// maximises the total weight: the Hungarian algorithm minimising the negated weights.
fn maximise(rows: usize, cols: usize, weight: impl Fn(usize, usize) -> u64) -> Vec<usize> {
    debug_assert!(rows <= cols);
    if rows == 0 {
        return Vec::new();
    }
    const INF: i64 = i64::MAX / 4;
    let cost = |i: usize, j: usize| -(weight(i, j) as i64);
    // 1-based as in the classic formulation; column 0 is a virtual start.
    let (mut u, mut v) = (vec![0i64; rows + 1], vec![0i64; cols + 1]);
    let (mut row_at, mut way) = (vec![0usize; cols + 1], vec![0usize; cols + 1]);
    let (mut min_v, mut used) = (vec![INF; cols + 1], vec![false; cols + 1]);
    for i in 1..=rows {
        row_at[0] = i;
        let mut j0 = 0;
        min_v.fill(INF);
        used.fill(false);
        loop {
            used[j0] = true;
            let i0 = row_at[j0];
            let (mut delta, mut j1) = (INF, 0);
            for j in 1..=cols {
                if !used[j] {
                    let cur = cost(i0 - 1, j - 1) - u[i0] - v[j];
                    if cur < min_v[j] {
                        min_v[j] = cur;
                        way[j] = j0;
                    }
                    if min_v[j] < delta {
                        delta = min_v[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=cols {
                if used[j] {
                    u[row_at[j]] += delta;
                    v[j] -= delta;
                } else {
                    min_v[j] -= delta;
                }
            }
            j0 = j1;
            if row_at[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            row_at[j0] = row_at[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut column = vec![0; rows];
    for j in 1..=cols {
        if row_at[j] != 0 {
            column[row_at[j] - 1] = j - 1;
        }
    }
    column
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// The best total over every matching (each row unassigned or given any free column), by dynamic
    /// programming over the set of used columns.
    fn brute_force(n: usize, m: usize, s: &[u64]) -> u64 {
        let mut best = vec![0u64; 1 << m]; // best[mask] after the rows so far, columns in mask used
        let mut reachable = vec![false; 1 << m];
        reachable[0] = true;
        for i in 0..n {
            let (mut next, mut next_r) = (best.clone(), reachable.clone());
            for mask in 0..1usize << m {
                if !reachable[mask] {
                    continue;
                }
                for j in 0..m {
                    if mask & (1 << j) == 0 {
                        let to = mask | (1 << j);
                        let t = best[mask] + s[i * m + j];
                        if !next_r[to] || t > next[to] {
                            next[to] = t;
                            next_r[to] = true;
                        }
                    }
                }
            }
            best = next;
            reachable = next_r;
        }
        (0..1usize << m).filter(|k| reachable[*k]).map(|k| best[k]).max().unwrap_or(0)
    }

    fn check(n: usize, m: usize, s: &[u64]) {
        let p = plan_scores(n, m, s);
        assert_eq!(p.total.0, brute_force(n, m, s), "{n}×{m} {s:?}");
        assert_eq!(p.pairs.len(), n.min(m));
        assert_eq!(p.unassigned_shipments.len(), n - n.min(m));
        assert_eq!(p.unassigned_drivers.len(), m - n.min(m));
        let mut drivers: Vec<usize> = p.pairs.iter().map(|x| x.1).collect();
        drivers.sort();
        drivers.dedup();
        assert_eq!(drivers.len(), p.pairs.len(), "a driver takes at most one shipment");
        assert_eq!(p.total.0, p.pairs.iter().map(|x| x.2.0).sum::<u64>());
        for &(i, j, q) in &p.pairs {
            assert_eq!(q.0, s[i * m + j]);
        }
    }

    #[test]
    fn optimal_on_500_random_instances_up_to_8_by_8() {
        let mut rng = StdRng::seed_from_u64(7);
        for k in 0..500 {
            let (n, m) = (rng.random_range(0..=8), rng.random_range(0..=8));
            // Few distinct values make many ties; wide values make greedy choices wrong.
            let top = if k % 2 == 0 { 4 } else { 1000 };
            let s: Vec<u64> = (0..n * m).map(|_| rng.random_range(0..=top)).collect();
            check(n, m, &s);
        }
    }

    #[test]
    fn optimal_on_random_names_and_addresses() {
        use crate::score::score;
        let mut rng = StdRng::seed_from_u64(11);
        // Letters of either case, accented ones, digits and punctuation: each counted its own way.
        const CHARS: [char; 12] = ['a', 'E', 'x', 'Z', 'é', 'Ø', 'ß', '2', '-', '.', 'o', 'ü'];
        let word = |rng: &mut StdRng| -> String {
            (0..rng.random_range(1..9)).map(|_| CHARS[rng.random_range(0..CHARS.len())]).collect()
        };
        for _ in 0..100 {
            let (n, m) = (rng.random_range(1..=8), rng.random_range(1..=8));
            let shipments: Vec<String> =
                (0..n).map(|_| format!("{} {} St., Town", rng.random_range(1..999), word(&mut rng))).collect();
            let drivers: Vec<String> = (0..m).map(|_| format!("{} {}", word(&mut rng), word(&mut rng))).collect();
            let p = plan(&shipments, &drivers);
            let s: Vec<u64> = shipments.iter().flat_map(|a| drivers.iter().map(move |d| score(a, d).0)).collect();
            assert_eq!(p.total.0, brute_force(n, m, &s));
            assert_eq!(p, plan_scores(n, m, &s), "each text read once gives the pairs' scores");
        }
    }

    #[test]
    fn greedy_is_not_enough() {
        // Greedy takes 10 first and ends with 10 + 0; the optimum is 9 + 9.
        let p = plan_scores(2, 2, &[10, 9, 9, 0]);
        assert_eq!(p.total.0, 18);
        assert_eq!(p.pairs, vec![(0, 1, Quarters(9)), (1, 0, Quarters(9))]);
    }
}
