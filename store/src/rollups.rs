//! Metric rollup settings, shared by the processor (which computes rollups and applies retention) and the
//! API (which maps a width name such as `1m` to its buckets).

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// A length of time written as a whole number and a unit: `90s`, `1m`, `1h`, `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub i64);

impl Span {
    /// Parses `<n><unit>` with unit `s`, `m`, `h` or `d`; `n` ≥ 1.
    pub fn parse(s: &str) -> Result<Span, String> {
        let s = s.trim();
        let unit_at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (n, unit) = s.split_at(unit_at);
        let n: i64 = n.parse().map_err(|_| format!("bad duration {s:?}: expected e.g. 30s, 1m, 1h or 7d"))?;
        let scale = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(format!("bad duration {s:?}: the unit must be s, m, h or d")),
        };
        if n < 1 || n > 100 * 365 * 86_400 / scale {
            return Err(format!("bad duration {s:?}: must be between 1{unit} and 100 years"));
        }
        Ok(Span(n * scale))
    }

    /// Seconds.
    pub fn secs(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Span {
    /// The largest unit that divides it: `3600` → `1h`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        match () {
            _ if s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
            _ if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            _ if s % 60 == 0 => write!(f, "{}m", s / 60),
            _ => write!(f, "{s}s"),
        }
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        let s = String::deserialize(d)?;
        Span::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One rollup width and how long its buckets are kept.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rollup {
    /// The bucket width, e.g. `1m`. Buckets start at multiples of it since the Unix epoch.
    pub width: Span,
    /// Buckets older than this are deleted.
    pub retention: Span,
}

/// How metric samples are rolled up and kept.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RollupConfig {
    /// Raw samples older than this are deleted, and samples older than this are refused on arrival.
    pub raw_retention: Span,
    /// The rollup widths. The smallest is computed from raw samples (exact percentiles); every other must
    /// be a multiple of it and is merged from its buckets (percentiles within 1% relative error).
    pub rollups: Vec<Rollup>,
    /// How often retention is applied, in seconds.
    pub sweep_interval_secs: u64,
}

impl Default for RollupConfig {
    fn default() -> Self {
        RollupConfig {
            raw_retention: Span(7 * 86_400),
            rollups: vec![
                Rollup { width: Span(60), retention: Span(30 * 86_400) },
                Rollup { width: Span(3600), retention: Span(365 * 86_400) },
            ],
            sweep_interval_secs: 60,
        }
    }
}

impl RollupConfig {
    /// Checks that the widths form a hierarchy and that retention never cuts a bucket that can still
    /// change. Returns the rollups sorted by width.
    pub fn validate(&self) -> Result<Vec<Rollup>, String> {
        let mut r = self.rollups.clone();
        r.sort_by_key(|r| r.width);
        let Some(base) = r.first().map(|r| r.width) else {
            return Err("metrics.rollups: at least one width is needed".into());
        };
        for w in r.windows(2) {
            if w[0].width == w[1].width {
                return Err(format!("metrics.rollups: width {} appears twice", w[0].width));
            }
        }
        let widest = r.last().map(|r| r.width).unwrap_or(base);
        for x in &r {
            if x.width.0 % base.0 != 0 {
                return Err(format!("metrics.rollups: width {} is not a multiple of the smallest, {base}", x.width));
            }
            if 86_400 % x.width.0 != 0 && x.width.0 % 86_400 != 0 {
                return Err(format!("metrics.rollups: width {} must divide a day or be whole days", x.width));
            }
        }
        // Raw samples are kept `SWEEP_MARGIN` past their retention, as a commit can land a while after its
        // decode: so are the buckets a late sample can still change. (Swept at their retention alone, a
        // correction committed late re-merged an hour from the minutes left, and the hour kept that count.)
        let margin = crate::samples::SWEEP_MARGIN.as_secs() as i64;
        let need = Span(self.raw_retention.0 + margin + widest.0);
        if r[0].retention < need {
            return Err(format!(
                "metrics.rollups: the {base} retention must be at least raw_retention + {margin}s + the widest \
                 width ({need}), since wider buckets are merged from its buckets"
            ));
        }
        for x in &r[1..] {
            let need = Span(self.raw_retention.0 + margin + x.width.0);
            if x.retention < need {
                return Err(format!(
                    "metrics.rollups: the {} retention must be at least raw_retention + {margin}s + its width \
                     ({need}), since a late sample can still change its buckets",
                    x.width
                ));
            }
        }
        if self.raw_retention.0 < base.0 {
            return Err(format!("metrics.raw_retention must be at least the smallest width, {base}"));
        }
        Ok(r)
    }

    /// The width of a name such as `1m`, if it is configured.
    pub fn width(&self, name: &str) -> Option<Span> {
        let w = Span::parse(name).ok()?;
        self.rollups.iter().any(|r| r.width == w).then_some(w)
    }

    /// The configured widths, ascending, as names.
    pub fn width_names(&self) -> Vec<String> {
        let mut w: Vec<Span> = self.rollups.iter().map(|r| r.width).collect();
        w.sort();
        w.iter().map(Span::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_parse_and_print() {
        assert_eq!(Span::parse("1m"), Ok(Span(60)));
        assert_eq!(Span::parse("7d"), Ok(Span(7 * 86_400)));
        assert_eq!(Span(3600).to_string(), "1h");
        assert_eq!(Span(90).to_string(), "90s");
        assert!(Span::parse("0s").is_err());
        assert!(Span::parse("5w").is_err());
        assert!(Span::parse("m").is_err());
    }

    #[test]
    fn widths_must_form_a_hierarchy() {
        let mut c = RollupConfig::default();
        assert_eq!(c.validate().unwrap().len(), 2);
        assert_eq!(c.width("1h"), Some(Span(3600)));
        assert_eq!(c.width("5m"), None);
        c.rollups.push(Rollup { width: Span(90), retention: Span(86_400 * 30) });
        assert!(c.validate().unwrap_err().contains("multiple"));
        let mut c = RollupConfig::default();
        c.rollups[0].retention = Span(86_400);
        assert!(c.validate().unwrap_err().contains("retention"));
        let mut c = RollupConfig::default();
        c.rollups[1].retention = Span(86_400);
        assert!(c.validate().unwrap_err().contains("the 1h retention"));
        // Raw samples are swept an hour past their retention: the buckets merged from them are kept as
        // long (at raw_retention + the widest width alone, a late correction re-merged an hour from the
        // minutes left).
        let mut c = RollupConfig { raw_retention: Span(86_400), ..RollupConfig::default() };
        c.rollups[0].retention = Span(86_400 + 3600);
        assert!(c.validate().unwrap_err().contains("raw_retention + 3600s + the widest width"), "{c:?}");
        c.rollups[0].retention = Span(86_400 + 2 * 3600);
        assert!(c.validate().is_ok());
        c.rollups[1].retention = Span(86_400 + 3600);
        assert!(c.validate().unwrap_err().contains("raw_retention + 3600s + its width"), "{c:?}");
    }
}
