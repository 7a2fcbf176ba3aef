//! Online statistics over plain numbers, one per line, streamed with bounded memory: count, mean,
//! variance, min and max by Welford's method, reported as the stream goes.

use crate::Progress;
use crate::lines::{Lines, LinesRead};
use serde::Serialize;
use tokio::io::AsyncRead;

/// Running statistics (Welford). `variance` is the sample variance (n − 1), null below two values (and
/// when it is beyond f64's range).
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    /// How many numbers.
    pub count: u64,
    /// Their mean.
    pub mean: f64,
    /// Sample variance.
    pub variance: Option<f64>,
    /// The smallest.
    pub min: Option<f64>,
    /// The largest.
    pub max: Option<f64>,
    #[serde(skip)]
    m2: f64,
}

impl Stats {
    /// Adds one value.
    pub fn push(&mut self, x: f64) {
        self.count += 1;
        let n = self.count as f64;
        let delta = x - self.mean;
        if delta.is_finite() {
            self.mean += delta / n;
            self.m2 += delta * (x - self.mean);
        } else {
            // Finite values further apart than f64 reaches (1e308 after -1e308): the mean, always between
            // them, is still finite this way; the spread is not (m2 infinite, variance null).
            self.mean = self.mean - self.mean / n + x / n;
            self.m2 = f64::INFINITY;
        }
        self.variance = (self.count > 1).then(|| self.m2 / (self.count - 1) as f64);
        self.min = Some(self.min.map_or(x, |m| m.min(x)));
        self.max = Some(self.max.map_or(x, |m| m.max(x)));
    }
}

/// What a numbers stream gave.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NumbersReport {
    /// The statistics of every valid line.
    pub stats: Stats,
    /// What it read and refused, and why it stopped early if it did.
    pub read: LinesRead,
}

/// The longest line accepted: a bound on memory.
pub const MAX_LINE: usize = 4096;

/// Reads `input` to the end; `progress` is called every 4096 lines and at the end with the running stats.
pub async fn stats(
    input: impl AsyncRead + Unpin,
    progress: &mut (dyn FnMut(&Progress, &Stats) + Send),
) -> NumbersReport {
    let mut lines = Lines::new(input, MAX_LINE);
    let mut stats = Stats::default();
    while let Some((number, line)) = lines.next().await {
        let text = String::from_utf8_lossy(line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        match text.parse::<f64>() {
            Ok(x) if x.is_finite() => {
                stats.push(x);
                lines.read.progress.published += 1;
            }
            _ => {
                let why = format!("not a finite number: {text:?}");
                lines.refuse(why);
            }
        }
        if number % 4096 == 0 {
            progress(&lines.read.progress, &stats);
        }
    }
    progress(&lines.read.progress, &stats);
    NumbersReport { stats, read: lines.read }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn welford_matches_two_passes() {
        let values: Vec<f64> = (0..10_000).map(|i| ((i * 7919) % 1000) as f64 / 7.0 - 50.0).collect();
        let mut text: String = values.iter().map(|v| format!("{v}\n")).collect();
        text.push_str("nope\n\n1e999\n");
        let r = stats(std::io::Cursor::new(text.into_bytes()), &mut |_, _| {}).await;
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        assert_eq!(r.stats.count, 10_000);
        assert!((r.stats.mean - mean).abs() <= 1e-12 * mean.abs().max(1.0));
        assert!((r.stats.variance.unwrap() - var).abs() <= 1e-12 * var);
        assert_eq!(r.stats.min, values.iter().copied().reduce(f64::min));
        assert_eq!(r.read.errors.len(), 2, "{:?}", r.read.errors);
        assert_eq!(r.read.errors[0].line, 10_001);
        let before: usize = values.iter().map(|v| format!("{v}\n").len()).sum();
        assert_eq!(r.read.errors[0].byte, before as u64, "the offset of \"nope\"");
        assert_eq!((r.read.errors[1].line, r.read.errors[1].byte), (10_003, before as u64 + 6));
    }

    /// Values further apart than f64 reaches made the mean -inf (served as a null `mean`, which the
    /// API's schema says is a number): it stays the finite mean, and only the spread is out of range.
    #[tokio::test]
    async fn the_mean_of_values_at_f64s_ends_stays_finite() {
        let r = stats(std::io::Cursor::new(b"1e308\n-1e308\n3\n".to_vec()), &mut |_, _| {}).await;
        assert_eq!(r.stats.count, 3);
        assert_eq!(r.stats.mean, 1.0);
        assert_eq!(r.stats.variance, Some(f64::INFINITY));
        let json = serde_json::to_value(r.stats).unwrap();
        assert_eq!((json["mean"].as_f64(), &json["variance"]), (Some(1.0), &serde_json::Value::Null));
    }
}
