//! Rollup arithmetic: one bucket's statistics from its raw samples, and a wider bucket's from its
//! narrower buckets. The processor (incrementally) and the tests (as a batch) call the same functions,
//! so the two agree bit for bit.
//!
//! Percentiles are nearest-rank (the value at rank ⌈q·n⌉ of the sorted samples): exact in buckets built
//! from raw samples. Wider buckets take them from a merged [`Sketch`]: within [`Sketch::ALPHA`] relative
//! error of the exact value, clamped into [min, max].
//!
//! The common case, samples arriving after every sample of their bucket, has O(new samples) updates
//! that give the same bits as the from-scratch functions: [`Rollup::append`] (a bucket keeps its values
//! sorted) and [`Rollup::merge_step`] (a wider bucket keeps the sum of all its parts but the latest, so
//! replacing the latest part re-adds one term in the same order). Anything else (a correction, a sample
//! before the bucket's latest, a change to an earlier part) recomputes the bucket from scratch.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tributary_store::samples::RollupBucket;

/// The statistics of one bucket of one series, with what updating them takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollup {
    /// The bucket's start and statistics. Its sum is added in time order (and, in wider buckets, bucket
    /// by bucket).
    pub bucket: RollupBucket,
    /// The distribution, for merging into wider buckets.
    pub sketch: Sketch,
    /// From samples: the latest sample's time. Merged: the start of the latest part.
    pub last_ts: DateTime<Utc>,
    /// From samples: every value, ascending (`f64::total_cmp`). Merged: empty.
    pub values: Vec<f64>,
    /// Merged: the sum of every part but the latest, added in start order. From samples: `None`.
    pub prefix_sum: Option<f64>,
}

/// The quantiles every rollup holds.
pub const QUANTILES: [f64; 3] = [0.50, 0.95, 0.99];

/// The smaller in `f64::total_cmp` order (so -0.0 < 0.0, like the sorted values of a bucket), where
/// `f64::min` may return either zero.
fn lesser(a: f64, b: f64) -> f64 {
    if b.total_cmp(&a).is_lt() { b } else { a }
}

/// The greater in `f64::total_cmp` order.
fn greater(a: f64, b: f64) -> f64 {
    if b.total_cmp(&a).is_gt() { b } else { a }
}

/// The 0-based nearest-rank index of quantile `q` among `n` sorted values.
fn rank(q: f64, n: i64) -> i64 {
    ((q * n as f64).ceil() as i64 - 1).clamp(0, n - 1)
}

impl Rollup {
    /// The rollup of `samples` (time, value), which must be non-empty and in ascending time order.
    pub fn of_samples(start: DateTime<Utc>, samples: &[(DateTime<Utc>, f64)]) -> Rollup {
        assert!(!samples.is_empty(), "a rollup needs at least one sample");
        debug_assert!(samples.windows(2).all(|w| w[0].0 <= w[1].0), "samples in time order");
        let sum = samples.iter().fold(0.0, |acc, (_, v)| acc + v);
        let mut sorted: Vec<f64> = samples.iter().map(|(_, v)| *v).collect();
        sorted.sort_by(f64::total_cmp);
        let mut sketch = Sketch::default();
        for v in &sorted {
            sketch.add(*v);
        }
        let mut r = Rollup {
            bucket: RollupBucket {
                start,
                count: 0,
                sum,
                min: 0.0,
                max: 0.0,
                mean: 0.0,
                first: samples[0].1,
                last: samples[samples.len() - 1].1,
                p50: 0.0,
                p95: 0.0,
                p99: 0.0,
            },
            sketch,
            last_ts: samples[samples.len() - 1].0,
            values: sorted,
            prefix_sum: None,
        };
        r.settle_from_values();
        r
    }

    /// Adds `samples`, in ascending time order and all after [`Rollup::last_ts`], to a bucket built from
    /// samples; the result equals [`Rollup::of_samples`] over all of them.
    pub fn append(&mut self, samples: &[(DateTime<Utc>, f64)]) {
        assert!(self.prefix_sum.is_none(), "append is for buckets built from samples");
        assert!(samples.first().is_some_and(|s| s.0 > self.last_ts), "append only after the latest sample");
        for &(ts, v) in samples {
            self.bucket.sum += v;
            let at = self.values.partition_point(|x| x.total_cmp(&v).is_lt());
            self.values.insert(at, v);
            self.sketch.add(v);
            self.bucket.last = v;
            self.last_ts = ts;
        }
        self.settle_from_values();
    }

    /// count, min, max, mean and percentiles from the sorted values and the sum.
    fn settle_from_values(&mut self) {
        let n = self.values.len() as i64;
        let pick = |q| self.values[rank(q, n) as usize];
        (self.bucket.p50, self.bucket.p95, self.bucket.p99) =
            (pick(QUANTILES[0]), pick(QUANTILES[1]), pick(QUANTILES[2]));
        self.bucket.count = n;
        self.bucket.min = self.values[0];
        self.bucket.max = self.values[self.values.len() - 1];
        self.bucket.mean = self.bucket.sum / n as f64;
    }

    /// Folds a changed part into a merged bucket: `part` is the new state of a part starting at or after
    /// the latest part, and `added` the values it gained. The result equals [`Rollup::merge`] over the
    /// parts as they are now.
    pub fn merge_step(&mut self, part: &Rollup, added: &[f64]) {
        let prefix = self.prefix_sum.expect("merge_step is for merged buckets");
        assert!(part.bucket.start >= self.last_ts, "merge_step only at or after the latest part");
        if part.bucket.start > self.last_ts {
            // The latest part becomes one of the earlier ones.
            self.prefix_sum = Some(self.bucket.sum);
            self.last_ts = part.bucket.start;
        }
        self.bucket.sum = self.prefix_sum.unwrap_or(prefix) + part.bucket.sum;
        self.bucket.count += added.len() as i64;
        for v in added {
            self.sketch.add(*v);
        }
        self.bucket.min = lesser(self.bucket.min, part.bucket.min);
        self.bucket.max = greater(self.bucket.max, part.bucket.max);
        self.bucket.last = part.bucket.last;
        self.settle_from_sketch();
    }

    /// mean and percentiles from the sketch, the sum and the count.
    fn settle_from_sketch(&mut self) {
        let (min, max) = (self.bucket.min, self.bucket.max);
        let pick = |q| self.sketch.quantile(q).clamp(min, max);
        (self.bucket.p50, self.bucket.p95, self.bucket.p99) =
            (pick(QUANTILES[0]), pick(QUANTILES[1]), pick(QUANTILES[2]));
        self.bucket.mean = self.bucket.sum / self.bucket.count as f64;
    }

    /// The rollup of a wider bucket from its narrower `parts`, in ascending start order; none without parts.
    pub fn merge(start: DateTime<Utc>, parts: &[Rollup]) -> Option<Rollup> {
        let (latest, earlier) = parts.split_last()?;
        let prefix = earlier.iter().fold(0.0, |acc, p| acc + p.bucket.sum);
        let mut sketch = Sketch::default();
        for p in parts {
            sketch.merge(&p.sketch);
        }
        let mut r = Rollup {
            bucket: RollupBucket {
                start,
                count: parts.iter().map(|p| p.bucket.count).sum::<i64>(),
                sum: prefix + latest.bucket.sum,
                min: earlier.iter().fold(latest.bucket.min, |m, p| lesser(m, p.bucket.min)),
                max: earlier.iter().fold(latest.bucket.max, |m, p| greater(m, p.bucket.max)),
                mean: 0.0,
                first: parts[0].bucket.first,
                last: latest.bucket.last,
                p50: 0.0,
                p95: 0.0,
                p99: 0.0,
            },
            sketch,
            last_ts: latest.bucket.start,
            values: Vec::new(),
            prefix_sum: Some(prefix),
        };
        r.settle_from_sketch();
        Some(r)
    }
}

/// The stored form of [`Rollup::values`]: little-endian f64s.
pub fn values_to_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Reads [`values_to_bytes`]' form.
pub fn values_from_bytes(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
}

/// The start of the `width`-second bucket holding `ts` (buckets are aligned to the Unix epoch).
pub fn bucket(ts: DateTime<Utc>, width: i64) -> DateTime<Utc> {
    let s = ts.timestamp().div_euclid(width) * width;
    DateTime::from_timestamp(s, 0).expect("a bucket start within chrono's range")
}

/// A mergeable distribution with relative accuracy [`Sketch::ALPHA`] (the DDSketch idea): a value `v`
/// falls into bucket `⌈log_γ |v|⌉` with `γ = (1 + α) / (1 − α)`; counts add when sketches merge, so a
/// merged sketch is exactly the sketch of all the samples, in any order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sketch {
    /// Values with |v| below [`Sketch::MIN`].
    zero: u64,
    /// Counts of positive values by bucket index.
    pos: BTreeMap<i32, u64>,
    /// Counts of negative values by the bucket index of |v|.
    neg: BTreeMap<i32, u64>,
}

impl Sketch {
    /// The relative error bound of a quantile read from a sketch.
    pub const ALPHA: f64 = 0.01;
    /// Magnitudes below this count as zero.
    pub const MIN: f64 = 1e-9;

    fn gamma() -> f64 {
        (1.0 + Self::ALPHA) / (1.0 - Self::ALPHA)
    }

    fn index(magnitude: f64) -> i32 {
        (magnitude.ln() / Self::gamma().ln()).ceil() as i32
    }

    fn value(index: i32) -> f64 {
        let g = Self::gamma();
        2.0 * g.powi(index) / (g + 1.0)
    }

    /// Counts one value.
    pub fn add(&mut self, v: f64) {
        if v.abs() < Self::MIN {
            self.zero += 1;
        } else if v > 0.0 {
            *self.pos.entry(Self::index(v)).or_default() += 1;
        } else {
            *self.neg.entry(Self::index(-v)).or_default() += 1;
        }
    }

    /// Adds another sketch's counts.
    pub fn merge(&mut self, other: &Sketch) {
        self.zero += other.zero;
        for (i, c) in &other.pos {
            *self.pos.entry(*i).or_default() += c;
        }
        for (i, c) in &other.neg {
            *self.neg.entry(*i).or_default() += c;
        }
    }

    /// How many values it holds.
    pub fn count(&self) -> u64 {
        self.zero + self.pos.values().sum::<u64>() + self.neg.values().sum::<u64>()
    }

    /// The nearest-rank quantile `q`, within [`Sketch::ALPHA`] relative error; 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        let n = self.count();
        if n == 0 {
            return 0.0;
        }
        let mut left = rank(q, n as i64) as u64;
        // Ascending: the most negative first, then zeros, then positives.
        for (i, c) in self.neg.iter().rev() {
            if left < *c {
                return -Self::value(*i);
            }
            left -= c;
        }
        if left < self.zero {
            return 0.0;
        }
        left -= self.zero;
        for (i, c) in &self.pos {
            if left < *c {
                return Self::value(*i);
            }
            left -= c;
        }
        unreachable!("rank {q} lies within the count")
    }

    /// The stored form (MessagePack).
    pub fn to_bytes(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("a sketch serialises")
    }

    /// Reads the stored form.
    pub fn from_bytes(b: &[u8]) -> Result<Sketch, rmp_serde::decode::Error> {
        rmp_serde::from_slice(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).unwrap()
    }

    #[test]
    fn a_bucket_of_samples() {
        let s: Vec<_> = [5.0, 1.0, 3.0, 2.0, 4.0].iter().enumerate().map(|(i, v)| (t(i as i64), *v)).collect();
        let r = Rollup::of_samples(t(0), &s);
        assert_eq!((r.bucket.count, r.bucket.sum, r.bucket.min, r.bucket.max, r.bucket.mean), (5, 15.0, 1.0, 5.0, 3.0));
        assert_eq!((r.bucket.first, r.bucket.last), (5.0, 4.0));
        // nearest rank: p50 of 5 values is the 3rd, p95 and p99 the 5th.
        assert_eq!((r.bucket.p50, r.bucket.p95, r.bucket.p99), (3.0, 5.0, 5.0));
        let hundred: Vec<_> = (1..=100).map(|i| (t(i), i as f64)).collect();
        let r = Rollup::of_samples(t(0), &hundred);
        assert_eq!((r.bucket.p50, r.bucket.p95, r.bucket.p99), (50.0, 95.0, 99.0));
    }

    #[test]
    fn merged_buckets_are_exact_but_for_percentiles_within_alpha() {
        let samples: Vec<_> = (0..3600).map(|i| (t(i), 50.0 + 40.0 * ((i as f64) / 97.0).sin())).collect();
        let minutes: Vec<Rollup> = samples.chunks(60).map(|c| Rollup::of_samples(bucket(c[0].0, 60), c)).collect();
        let hour = Rollup::merge(t(0), &minutes).unwrap();
        let exact = Rollup::of_samples(t(0), &samples);
        assert_eq!(
            (hour.bucket.count, hour.bucket.min, hour.bucket.max, hour.bucket.first, hour.bucket.last),
            (3600, exact.bucket.min, exact.bucket.max, exact.bucket.first, exact.bucket.last)
        );
        assert!((hour.bucket.sum - exact.bucket.sum).abs() < 1e-9 * exact.bucket.sum);
        assert_eq!(hour.sketch, exact.sketch, "merging sketches equals sketching everything");
        for (got, want) in [
            (hour.bucket.p50, exact.bucket.p50),
            (hour.bucket.p95, exact.bucket.p95),
            (hour.bucket.p99, exact.bucket.p99),
        ] {
            assert!((got - want).abs() <= Sketch::ALPHA * want.abs(), "{got} vs {want}");
        }
    }

    #[test]
    fn appending_equals_recomputing() {
        let samples: Vec<_> = (0..600).map(|i| (t(i), ((i * 7919) % 101) as f64 / 3.0 - 5.0)).collect();
        // Minute buckets grown a few samples at a time, and an hour grown from them, step by step.
        let mut minute: Option<Rollup> = None;
        let mut hour: Option<Rollup> = None;
        for chunk in samples.chunks(7) {
            for piece in chunk.chunk_by(|a, b| bucket(a.0, 60) == bucket(b.0, 60)) {
                let start = bucket(piece[0].0, 60);
                let m = match minute.take() {
                    Some(mut m) if m.bucket.start == start => {
                        m.append(piece);
                        m
                    }
                    _ => Rollup::of_samples(start, piece),
                };
                let added: Vec<f64> = piece.iter().map(|s| s.1).collect();
                hour = Some(match hour.take() {
                    None => Rollup::merge(t(0), std::slice::from_ref(&m)).unwrap(),
                    Some(mut h) => {
                        h.merge_step(&m, &added);
                        h
                    }
                });
                minute = Some(m);
            }
        }
        let minutes: Vec<Rollup> = samples.chunks(60).map(|c| Rollup::of_samples(bucket(c[0].0, 60), c)).collect();
        assert_eq!(minute.as_ref(), minutes.last());
        assert_eq!(hour, Rollup::merge(t(0), &minutes));
    }

    #[test]
    fn signed_zeros_merge_like_they_sort() {
        let minute = |s: i64, v: &[f64]| {
            let samples: Vec<_> = v.iter().enumerate().map(|(i, v)| (t(s + i as i64), *v)).collect();
            Rollup::of_samples(t(s), &samples)
        };
        let (a, b) = (minute(0, &[5.0]), minute(60, &[0.0]));
        let mut hour = Rollup::merge(t(0), &[a.clone(), b.clone()]).unwrap();
        let mut b2 = b.clone();
        b2.append(&[(t(61), -0.0)]);
        hour.merge_step(&b2, &[-0.0]);
        let want = Rollup::merge(t(0), &[a, b2]).unwrap();
        assert_eq!(hour.bucket.min.to_bits(), (-0.0f64).to_bits());
        assert_eq!(hour.bucket.min.to_bits(), want.bucket.min.to_bits());
        assert_eq!(hour.bucket.max.to_bits(), want.bucket.max.to_bits());
    }

    #[test]
    fn sketches_hold_negatives_and_zeros_and_round_trip() {
        let mut s = Sketch::default();
        for v in [-10.0, -1.0, 0.0, 0.0, 1.0, 10.0] {
            s.add(v);
        }
        assert_eq!(s.count(), 6);
        assert!((s.quantile(0.0) + 10.0).abs() <= 0.1);
        assert_eq!(s.quantile(0.5), 0.0);
        assert!((s.quantile(1.0) - 10.0).abs() <= 0.1);
        assert_eq!(Sketch::from_bytes(&s.to_bytes()).unwrap(), s);
    }

    #[test]
    fn buckets_align_to_the_epoch() {
        assert_eq!(bucket(t(3599), 3600), t(0));
        assert_eq!(bucket(t(3600), 3600), t(3600));
        assert_eq!(bucket(t(-1), 60), t(-60));
    }
}
