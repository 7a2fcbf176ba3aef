//! Weighted indices, as a pure function.
//!
//! Index dates are the timestamps at which every constituent has a price. The first index date gets
//! `base`; at each later one, with `t-1` the previous index date,
//! `r_i,t = P_i,t / P_i,t-1 - 1`, `R_t = Σ_i w_i r_i,t` (summed in instrument-name order) and
//! `I_t = I_t-1 (1 + R_t)`.
//!
//! A change at `t` recomputes from the last index date before `t` (the anchor, whose level stays) forward;
//! the batch computation is the same function with no anchor.

use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};

/// One index level.
#[derive(Debug, Clone, PartialEq)]
pub struct Level {
    /// The index date.
    pub ts: DateTime<Utc>,
    /// `I_t`.
    pub level: f64,
    /// `R_t`; `None` on the first index date.
    pub ret: Option<f64>,
}

/// Computes levels from constituent prices.
///
/// `weights` are (instrument, weight) in name order; `prices` hold each constituent's prices in time
/// order from the anchor's date on (or from the start when `anchor` is `None`). With an anchor, its
/// date must be the first index date found; it is not returned again.
pub fn levels(
    base: f64,
    weights: &[(String, f64)],
    prices: &HashMap<String, BTreeMap<DateTime<Utc>, f64>>,
    anchor: Option<(DateTime<Utc>, f64)>,
) -> Result<Vec<Level>, String> {
    let empty = BTreeMap::new();
    let series: Vec<&BTreeMap<DateTime<Utc>, f64>> =
        weights.iter().map(|(name, _)| prices.get(name).unwrap_or(&empty)).collect();
    let Some(shortest) = series.iter().min_by_key(|s| s.len()) else {
        return Ok(Vec::new());
    };
    let mut chain = Chain::new(base, weights.iter().map(|w| w.1).collect(), anchor);
    let mut out = Vec::new();
    for ts in shortest.keys() {
        if let Some(now) = series.iter().map(|s| s.get(ts).copied()).collect::<Option<Vec<f64>>>() {
            out.extend(chain.step(*ts, now)?);
        }
    }
    Ok(out)
}

/// The level recurrence one index date at a time, so that a long history can be computed in chunks with
/// the same arithmetic as [`levels`] (which is this over every date at once).
#[derive(Debug, Clone)]
pub struct Chain {
    base: f64,
    weights: Vec<f64>,
    anchor: Option<(DateTime<Utc>, f64)>,
    prev: Option<(f64, Vec<f64>)>,
}

impl Chain {
    /// A chain starting at `base`, or continuing from `anchor` (its date must be the first one stepped).
    pub fn new(base: f64, weights: Vec<f64>, anchor: Option<(DateTime<Utc>, f64)>) -> Chain {
        Chain { base, weights, anchor, prev: None }
    }

    /// Steps over one index date, `now` holding every constituent's price there in weight order; the
    /// anchor's date yields no level (it has one).
    pub fn step(&mut self, ts: DateTime<Utc>, now: Vec<f64>) -> Result<Option<Level>, String> {
        match (&self.prev, self.anchor) {
            (None, Some((at, level))) => {
                if ts != at {
                    return Err(format!("index anchor {at} is not an index date"));
                }
                self.prev = Some((level, now));
                Ok(None)
            }
            (None, None) => {
                self.prev = Some((self.base, now));
                Ok(Some(Level { ts, level: self.base, ret: None }))
            }
            (Some((level, before)), _) => {
                let r: f64 =
                    self.weights.iter().zip(before.iter().zip(&now)).map(|(w, (b, n))| w * (n / b - 1.0)).sum();
                let level = level * (1.0 + r);
                self.prev = Some((level, now));
                Ok(Some(Level { ts, level, ret: Some(r) }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn day(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, d, 0, 0, 0).unwrap()
    }

    fn prices(rows: &[(&str, u32, f64)]) -> HashMap<String, BTreeMap<DateTime<Utc>, f64>> {
        let mut m: HashMap<String, BTreeMap<_, _>> = HashMap::new();
        for (i, d, p) in rows {
            m.entry(i.to_string()).or_default().insert(day(*d), *p);
        }
        m
    }

    #[test]
    fn hand_computed_index_with_a_gap_and_a_correction() {
        let w = vec![("A".to_string(), 0.5), ("B".to_string(), 0.5)];
        // Day 3 has no price for B: not an index date, so day 4 compares with day 2.
        let mut p = prices(&[
            ("A", 1, 10.0),
            ("B", 1, 20.0),
            ("A", 2, 11.0),
            ("B", 2, 20.0),
            ("A", 3, 50.0),
            ("A", 4, 11.0),
            ("B", 4, 22.0),
        ]);
        let l = levels(100.0, &w, &p, None).unwrap();
        assert_eq!(l.iter().map(|l| l.ts).collect::<Vec<_>>(), [day(1), day(2), day(4)]);
        assert_eq!(l[0].level, 100.0);
        // R_2 = 0.5 * 0.1 + 0.5 * 0 = 0.05
        assert!((l[1].level - 105.0).abs() < 1e-12);
        // R_4 = 0.5 * 0 + 0.5 * 0.1 = 0.05
        assert!((l[2].level - 110.25).abs() < 1e-12);
        // Correct A on day 2 to 12: R_2 = 0.1 → 110; R_4 = 0.5 * (11/12 - 1) + 0.05 = 0.008333… → 110.9166…
        p.get_mut("A").unwrap().insert(day(2), 12.0);
        let l = levels(100.0, &w, &p, None).unwrap();
        assert!((l[1].level - 110.0).abs() < 1e-12);
        assert!((l[2].level - 110.0 * (1.0 + 0.5 * (11.0 / 12.0 - 1.0) + 0.05)).abs() < 1e-12);
        // Recomputing from the anchor day 2 gives the same tail, exactly.
        let mut tail = p.clone();
        for s in tail.values_mut() {
            s.retain(|ts, _| *ts >= day(2));
        }
        let inc = levels(100.0, &w, &tail, Some((day(2), l[1].level))).unwrap();
        assert_eq!(inc, l[2..]);
    }

    #[test]
    fn a_constituent_without_prices_means_no_dates() {
        let w = vec![("A".to_string(), 1.0), ("Z".to_string(), 1.0)];
        assert!(levels(100.0, &w, &prices(&[("A", 1, 1.0)]), None).unwrap().is_empty());
    }
}
