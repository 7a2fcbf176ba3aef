//! The processor's Prometheus text as the benchmark reads it: a histogram's buckets, a sample's value,
//! the phases of `tributary_phase_seconds`, and quantiles of the difference of two scrapes.

use std::collections::{BTreeMap, BTreeSet};

/// (le, cumulative count) of one histogram's buckets for a consumer label, ascending.
pub(super) fn parse_buckets(text: &str, name: &str, consumer: &str) -> Vec<(f64, f64)> {
    buckets_where(text, name, &[("consumer", consumer)])
}

/// The buckets of each phase of `tributary_phase_seconds` for a consumer label, as [`parse_buckets`].
pub(super) fn parse_phase_buckets(text: &str, consumer: &str) -> BTreeMap<String, Vec<(f64, f64)>> {
    let name = "tributary_phase_seconds_bucket";
    let of_consumer = format!("consumer=\"{consumer}\"");
    let phases: BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(&of_consumer))
        .filter_map(|l| l.split("phase=\"").nth(1)?.split('"').next())
        .collect();
    phases
        .into_iter()
        .map(|p| (p.to_owned(), buckets_where(text, name, &[("consumer", consumer), ("phase", p)])))
        .collect()
}

/// The buckets of the histogram `name` whose lines carry every one of `labels`.
fn buckets_where(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let mut out: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label.as_str())))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The value of one sample (a histogram's `_sum` or `_count`) for a consumer label; 0 when absent.
pub(super) fn parse_value(text: &str, name: &str, consumer: &str) -> f64 {
    text.lines()
        .find(|l| {
            l.strip_prefix(name).is_some_and(|r| r.starts_with('{')) && l.contains(&format!("consumer=\"{consumer}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The sum and count of every phase of `tributary_phase_seconds` for a consumer label.
pub(super) fn parse_phases(text: &str, consumer: &str) -> BTreeMap<String, (f64, f64)> {
    let mut phases = BTreeMap::new();
    for (suffix, sum) in [("_sum{", true), ("_count{", false)] {
        let name = format!("tributary_phase_seconds{suffix}");
        for l in text.lines().filter(|l| l.starts_with(&name) && l.contains(&format!("consumer=\"{consumer}\""))) {
            let (Some(phase), Some(v)) = (
                l.split("phase=\"").nth(1).and_then(|r| r.split('"').next()),
                l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()),
            ) else {
                continue;
            };
            let e: &mut (f64, f64) = phases.entry(phase.to_owned()).or_default();
            if sum { e.0 = v } else { e.1 = v }
        }
    }
    phases
}

/// The `q` quantile of the difference of two cumulative histograms, interpolated within its bucket.
pub(super) fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let counts: Vec<(f64, f64)> =
        after.iter().map(|(le, c)| (*le, c - before.iter().find(|(l, _)| l == le).map_or(0.0, |b| b.1))).collect();
    let Some(total) = counts.last().map(|c| c.1).filter(|t| *t > 0.0) else { return f64::NAN };
    let target = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, c) in &counts {
        if c >= target {
            if le.is_infinite() {
                return prev.0;
            }
            let within = if c > prev.1 { (target - prev.1) / (c - prev.1) } else { 1.0 };
            return prev.0 + (le - prev.0) * within;
        }
        prev = (le, c);
    }
    f64::NAN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_from_histogram_differences() {
        let text = "tributary_commit_latency_seconds_bucket{consumer=\"prices\",le=\"0.001\"} 10\n\
                    tributary_commit_latency_seconds_bucket{consumer=\"prices\",le=\"0.002\"} 20\n\
                    tributary_commit_latency_seconds_bucket{consumer=\"prices\",le=\"+Inf\"} 20\n\
                    tributary_commit_latency_seconds_bucket{consumer=\"indices\",le=\"0.001\"} 99\n";
        let before = vec![(0.001, 10.0), (0.002, 10.0), (f64::INFINITY, 10.0)];
        let after = parse_buckets(text, "tributary_commit_latency_seconds_bucket", "prices");
        assert_eq!(after, vec![(0.001, 10.0), (0.002, 20.0), (f64::INFINITY, 20.0)]);
        // The 10 new samples all fall in (1 ms, 2 ms]: the median interpolates to 1.5 ms.
        assert!((bucket_quantile(&before, &after, 0.5) - 0.0015).abs() < 1e-12);
        assert!((bucket_quantile(&before, &after, 1.0) - 0.002).abs() < 1e-12);
    }

    #[test]
    fn a_sample_is_read_by_its_exact_name_and_consumer() {
        let text = "tributary_batch_size_sum{consumer=\"indices\"} 7\n\
                    tributary_batch_size_sum{consumer=\"prices\"} 1234.5\n\
                    tributary_batch_size_sum_other{consumer=\"prices\"} 9\n";
        assert_eq!(parse_value(text, "tributary_batch_size_sum", "prices"), 1234.5);
        assert_eq!(parse_value(text, "tributary_batch_size_count", "prices"), 0.0);
        let phases = "tributary_phase_seconds_sum{consumer=\"prices\",phase=\"lock\"} 0.5\n\
                      tributary_phase_seconds_count{consumer=\"prices\",phase=\"lock\"} 4\n\
                      tributary_phase_seconds_sum{consumer=\"metrics\",phase=\"lock\"} 9\n";
        assert_eq!(parse_phases(phases, "prices").get("lock"), Some(&(0.5, 4.0)));
        let buckets = "tributary_phase_seconds_bucket{consumer=\"prices\",phase=\"lock\",le=\"0.001\"} 3\n\
                       tributary_phase_seconds_bucket{consumer=\"prices\",phase=\"lock\",le=\"+Inf\"} 4\n\
                       tributary_phase_seconds_bucket{consumer=\"prices\",phase=\"write\",le=\"0.001\"} 1\n\
                       tributary_phase_seconds_bucket{consumer=\"metrics\",phase=\"lock\",le=\"0.001\"} 9\n\
                       tributary_phase_seconds_bucket{consumer=\"metrics\",phase=\"flush\",le=\"0.001\"} 2\n";
        let by_phase = parse_phase_buckets(buckets, "prices");
        assert_eq!(by_phase["lock"], vec![(0.001, 3.0), (f64::INFINITY, 4.0)]);
        assert_eq!(by_phase["write"], vec![(0.001, 1.0)]);
        assert_eq!(by_phase.len(), 2);
    }
}
