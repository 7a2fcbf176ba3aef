//! The per-series derivations, as pure functions.
//!
//! For points `p_0..p_k` of one instrument in time order:
//! - `ret_k = p_k / p_{k-1} - 1`, undefined for k = 0;
//! - `sma_n,k` = mean of `p_{k-n+1..=k}`, undefined while k < n - 1;
//! - `ema_n,k = α p_k + (1 - α) ema_n,k-1` with α = 2 / (n + 1) and `ema_n,0 = p_0`;
//! - `vol_n,k` = sample standard deviation of `ret_{k-n+1..=k}`, undefined until n returns exist.
//!
//! [`recompute`] fills points from an index onward, reading only the points before it. The batch
//! computation is `recompute(all, 0)`; the incremental one is `recompute(window ++ changed tail, window
//! length)`, where the window holds the stored points before the first change. Both run the same
//! arithmetic on the same inputs in the same order (stored values round-trip exactly as float8), so
//! incremental results equal batch results exactly, bit for bit.

use serde::Deserialize;

/// Which windows to derive. Names are `sma_<n>`, `ema_<n>`, `vol_<n>`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Transforms {
    /// Simple moving average windows (n ≥ 1).
    pub sma: Vec<usize>,
    /// Exponential moving average spans (n ≥ 1), α = 2 / (n + 1).
    pub ema: Vec<usize>,
    /// Rolling volatility windows over returns (n ≥ 2).
    pub vol: Vec<usize>,
}

impl Default for Transforms {
    fn default() -> Self {
        Transforms { sma: vec![20, 50], ema: vec![12, 26], vol: vec![20] }
    }
}

impl Transforms {
    /// The derived value names in storage order: every sma, then every ema, then every vol.
    pub fn names(&self) -> Vec<String> {
        let f = |p: &str, ns: &[usize]| ns.iter().map(|n| format!("{p}_{n}")).collect::<Vec<_>>();
        [f("sma", &self.sma), f("ema", &self.ema), f("vol", &self.vol)].concat()
    }

    /// How many points before the first changed one a recompute needs.
    pub fn window(&self) -> usize {
        self.sma.iter().chain(&self.vol).copied().max().unwrap_or(1).max(1)
    }

    /// Checks the windows.
    pub fn validate(&self) -> Result<(), String> {
        if self.sma.iter().chain(&self.ema).any(|&n| n == 0) {
            return Err("sma and ema windows must be at least 1".into());
        }
        if self.vol.iter().any(|&n| n < 2) {
            return Err("vol windows must be at least 2 (a sample standard deviation)".into());
        }
        let names = self.names();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != names.len() {
            return Err(format!("windows repeat: {names:?}"));
        }
        Ok(())
    }
}

/// One point of a series with its derived values (stored as a row of `price_points`).
pub use tributary_store::prices::Point;

/// Computes `ret` and the derived values of `points[from..]` from the points before them.
///
/// `points[..from]` must carry their derived values and be either the whole series before `from` or at
/// least its last [`Transforms::window`] points.
pub fn recompute(t: &Transforms, points: &mut [Point], from: usize) {
    for i in from..points.len() {
        compute_at(t, points, i);
    }
}

/// Like [`recompute`], but stops once the rest of the series is provably what is stored: `stored[i]` is
/// the stored version of `points[i]` (`None` for a point not stored), and no price after `last_change`
/// differs from the stored one. Returns the end of what was computed: `points[from..end]` are computed,
/// `points[end..]` are untouched and equal to their stored versions as computed.
///
/// Why stopping is exact: a point's values read only its own price and the [`Transforms::window`] − 1
/// points before it (prices, returns, the previous EMA values). Once `window` consecutive points after the
/// last change compute to exactly the stored bits, the next point reads exactly what it read when it was
/// stored, with the same price, so it computes to its stored bits too, and so on to the end.
pub fn recompute_until_settled(
    t: &Transforms,
    points: &mut [Point],
    stored: &[Option<&Point>],
    from: usize,
    last_change: usize,
) -> usize {
    let need = t.window();
    let mut same = 0;
    for i in from..points.len() {
        compute_at(t, points, i);
        if i > last_change && stored.get(i).copied().flatten().is_some_and(|s| same_bits(s, &points[i])) {
            same += 1;
            if same >= need {
                return i + 1;
            }
        } else {
            same = 0;
        }
    }
    points.len()
}

/// Whether two points hold the same bits (a `-0.0` is not a `0.0` here: equal bits, not equal values).
pub fn same_bits(a: &Point, b: &Point) -> bool {
    let bits = |v: Option<f64>| v.map(f64::to_bits);
    a.price.to_bits() == b.price.to_bits()
        && bits(a.ret) == bits(b.ret)
        && a.values.len() == b.values.len()
        && a.values.iter().zip(&b.values).all(|(x, y)| bits(*x) == bits(*y))
}

/// Computes `ret` and the derived values of `points[i]` from the points before it.
fn compute_at(t: &Transforms, points: &mut [Point], i: usize) {
    let ema_at = t.sma.len();
    let vol_at = ema_at + t.ema.len();
    let p = points[i].price;
    let ret = (i > 0).then(|| p / points[i - 1].price - 1.0);
    let mut values = Vec::with_capacity(vol_at + t.vol.len());
    for &n in &t.sma {
        values.push((i + 1 >= n).then(|| points[i + 1 - n..=i].iter().map(|q| q.price).sum::<f64>() / n as f64));
    }
    for (j, &n) in t.ema.iter().enumerate() {
        let alpha = 2.0 / (n as f64 + 1.0);
        let prev = if i == 0 { None } else { points[i - 1].values.get(ema_at + j).copied().flatten() };
        values.push(Some(match prev {
            Some(e) => alpha * p + (1.0 - alpha) * e,
            None => p,
        }));
    }
    for &n in &t.vol {
        values.push(volatility(points, i, n, ret));
    }
    points[i].ret = ret;
    points[i].values = values;
}

/// Sample standard deviation of the returns of points `i-n+1..=i`, `ret_i` given (not yet stored).
fn volatility(points: &[Point], i: usize, n: usize, ret_i: Option<f64>) -> Option<f64> {
    if i + 1 < n {
        return None;
    }
    let mut rets = Vec::with_capacity(n);
    for q in &points[i + 1 - n..i] {
        rets.push(q.ret?);
    }
    rets.push(ret_i?);
    let mean = rets.iter().sum::<f64>() / n as f64;
    let ss = rets.iter().map(|r| (r - mean) * (r - mean)).sum::<f64>();
    Some((ss / (n as f64 - 1.0)).sqrt())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `len` pseudo-random numbers (xorshift64 from a generated seed): cheap noise for long generated
    /// series, shrinking by seed and length.
    pub(crate) fn noise(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u64>> {
        (any::<u64>(), len).prop_map(|(seed, len)| {
            let mut x = seed | 1;
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                })
                .collect()
        })
    }

    fn series(prices: &[f64], t: &Transforms) -> Vec<Point> {
        let mut ps: Vec<Point> = prices.iter().map(|&p| Point::raw(p)).collect();
        recompute(t, &mut ps, 0);
        ps
    }

    #[test]
    fn hand_computed_values() {
        let t = Transforms { sma: vec![2], ema: vec![3], vol: vec![2] };
        assert_eq!(t.names(), ["sma_2", "ema_3", "vol_2"]);
        let ps = series(&[10.0, 11.0, 12.1, 9.68], &t);
        // returns: -, 0.1, 0.1, -0.2
        assert_eq!(ps[0].ret, None);
        assert!((ps[1].ret.unwrap() - 0.1).abs() < 1e-12);
        assert!((ps[3].ret.unwrap() + 0.2).abs() < 1e-12);
        // sma_2: -, 10.5, 11.55, 10.89
        assert_eq!(ps[0].values[0], None);
        assert_eq!(ps[1].values[0], Some(10.5));
        assert!((ps[2].values[0].unwrap() - 11.55).abs() < 1e-12);
        assert!((ps[3].values[0].unwrap() - 10.89).abs() < 1e-12);
        // ema_3 (α = 0.5): 10, 10.5, 11.3, 10.49
        assert_eq!(ps[0].values[1], Some(10.0));
        assert_eq!(ps[1].values[1], Some(10.5));
        assert!((ps[2].values[1].unwrap() - 11.3).abs() < 1e-12);
        assert!((ps[3].values[1].unwrap() - 10.49).abs() < 1e-12);
        // vol_2: needs two returns: -, -, sd(0.1, 0.1) = 0, sd(0.1, -0.2) = 0.3/√2
        assert_eq!(ps[1].values[2], None);
        assert!(ps[2].values[2].unwrap().abs() < 1e-12);
        assert!((ps[3].values[2].unwrap() - 0.3 / 2f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn incremental_equals_batch_bit_for_bit() {
        let t = Transforms::default();
        let prices: Vec<f64> = (0..300).map(|i| 100.0 + ((i * 37) % 23) as f64 * 0.37 - (i as f64) * 0.01).collect();
        let batch = series(&prices, &t);
        for from in [1usize, 7, 49, 50, 51, 120, 299] {
            let w = t.window();
            let start = from.saturating_sub(w);
            let mut part: Vec<Point> = batch[start..from].to_vec();
            part.extend(prices[from..].iter().map(|&p| Point::raw(p)));
            recompute(&t, &mut part, from - start);
            assert_eq!(&part[from - start..], &batch[from..], "from {from}");
        }
    }

    /// Early cutoff is exact: corrections anywhere in a long series, recomputed from a window before the
    /// first one and stopped once settled, leave every point (computed or not) equal to the batch
    /// computation over the corrected prices, bit for bit.
    #[test]
    fn early_cutoff_equals_the_batch_computation() {
        let config = proptest::test_runner::Config::with_cases(64);
        proptest::proptest!(config, |(
            noise in noise(60..1500),
            changes in proptest::collection::vec((any::<prop::sample::Index>(), -0.2f64..0.2), 1..4),
            windows in prop::sample::select(vec![(vec![20, 50], vec![12, 26], vec![20]), (vec![3], vec![], vec![2]), (vec![], vec![5], vec![])]),
        )| {
            let t = Transforms { sma: windows.0, ema: windows.1, vol: windows.2 };
            let len = noise.len();
            let mut p = 100.0;
            let mut prices: Vec<f64> = noise.iter().map(|x| {
                p *= 1.0 + ((x % 2001) as f64 - 1000.0) / 50_000.0;
                p
            }).collect();
            let old = series(&prices, &t);
            let mut at: Vec<usize> = changes.iter().map(|(i, _)| i.index(len)).collect();
            for ((_, d), &i) in changes.iter().zip(&at) {
                prices[i] *= 1.0 + d;
            }
            at.sort_unstable();
            let want = series(&prices, &t);
            let (first, last) = (at[0], *at.last().unwrap());
            let start = first.saturating_sub(t.window());
            let mut part: Vec<Point> = old[start..first].to_vec();
            part.extend(prices[first..].iter().map(|&p| Point::raw(p)));
            let stored: Vec<Option<&Point>> = old[start..].iter().map(Some).collect();
            let end = recompute_until_settled(&t, &mut part, &stored, first - start, last - start);
            for (k, w) in want[first..].iter().enumerate() {
                let got = if first - start + k < end { &part[first - start + k] } else { &old[first + k] };
                prop_assert!(same_bits(got, w), "point {} of {len} (changes {at:?}, stopped at {})", first + k, start + end);
            }
        });
    }

    /// A correction deep in a long history stops within a few hundred points of it.
    #[test]
    fn a_deep_correction_settles_within_a_few_hundred_points() {
        let t = Transforms::default();
        let prices: Vec<f64> =
            (0..100_000).map(|i| 100.0 + ((i * 37) % 23) as f64 * 0.37 + (i % 1000) as f64 * 0.01).collect();
        let old = series(&prices, &t);
        let mut part: Vec<Point> = prices.iter().map(|&p| Point::raw(p)).collect();
        part[0].price *= 1.05;
        let stored: Vec<Option<&Point>> = old.iter().map(Some).collect();
        let end = recompute_until_settled(&t, &mut part, &stored, 0, 0);
        assert!(end < 2_000, "settled only at {end}");
        let mut corrected = prices.clone();
        corrected[0] *= 1.05;
        let want = series(&corrected, &t);
        assert!(part[..end].iter().zip(&want).all(|(a, b)| same_bits(a, b)));
        assert!(old[end..].iter().zip(&want[end..]).all(|(a, b)| same_bits(a, b)));
    }

    /// Prices swinging between the decoder's bounds give finite values in every window: stored as JSON,
    /// an infinite one would read back as `null`, not what a recompute gives.
    #[test]
    fn prices_within_the_decoders_bounds_give_finite_values() {
        use tributary_broker::events::{MAX_PRICE, MIN_PRICE};
        let t = Transforms { sma: vec![2, 50], ema: vec![3], vol: vec![2, 50] };
        let prices: Vec<f64> = (0..200).map(|i| if i % 3 == 0 { MIN_PRICE } else { MAX_PRICE }).collect();
        for p in series(&prices, &t) {
            assert!(p.ret.is_none_or(f64::is_finite), "{p:?}");
            assert!(p.values.iter().flatten().all(|v| v.is_finite()), "{p:?}");
        }
    }

    #[test]
    fn validation() {
        assert!(Transforms::default().validate().is_ok());
        assert!(Transforms { sma: vec![0], ..Default::default() }.validate().is_err());
        assert!(Transforms { vol: vec![1], ..Default::default() }.validate().is_err());
        assert!(Transforms { sma: vec![5, 5], ..Default::default() }.validate().is_err());
    }
}
