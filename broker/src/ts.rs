//! Event timestamps.
//!
//! On the wire a timestamp is an RFC 3339 string, a plain `YYYY-MM-DD` date (midnight UTC) or an integer
//! (or float) count of milliseconds since the Unix epoch. Timestamps are truncated to microseconds, the
//! precision PostgreSQL stores, so that a key read back equals the key decoded. Only years 0000 to 9999
//! are taken: what RFC 3339 can write back (and PostgreSQL store).

use chrono::{DateTime, NaiveDate, SubsecRound, TimeZone, Utc};
use serde::de::{self, Deserializer, Visitor};
use std::fmt;

/// A UTC instant with microsecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ts(pub DateTime<Utc>);

/// The earliest time taken, 0000-01-01T00:00:00Z, in epoch milliseconds.
pub const MIN_MILLIS: i64 = -62_167_219_200_000;
/// The latest time taken, 9999-12-31T23:59:59.999Z, in epoch milliseconds.
pub const MAX_MILLIS: i64 = 253_402_300_799_999;

/// Refuses a time RFC 3339 cannot write (a year before 0000 or after 9999).
fn within_years(t: Ts, what: &dyn fmt::Display) -> Result<Ts, String> {
    let micros = t.0.timestamp_micros();
    if !(MIN_MILLIS * 1000..=MAX_MILLIS * 1000 + 999).contains(&micros) {
        return Err(format!("bad ts {what}: outside the years 0000 to 9999"));
    }
    Ok(t)
}

impl Ts {
    /// Truncates to microseconds, and folds a leap second into the next one: chrono reads `10:15:60` as
    /// a 60th second of 10:15, which sorts before 10:16:00 and differs from it, while PostgreSQL stores
    /// both as 10:16:00 (one key to PostgreSQL, two to the processor: such a price failed its batch on
    /// every delivery).
    pub fn new(t: DateTime<Utc>) -> Ts {
        Ts(DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or_else(|| t.trunc_subsecs(6)))
    }

    /// Parses RFC 3339 or `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Result<Ts, String> {
        let s = s.trim();
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return within_years(Ts::new(t.with_timezone(&Utc)), &format_args!("{s:?}"));
        }
        if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            let t = Ts(Utc.from_utc_datetime(&d.and_time(chrono::NaiveTime::MIN)));
            return within_years(t, &format_args!("{s:?}"));
        }
        Err(format!("bad ts {s:?}: expected RFC 3339, YYYY-MM-DD or epoch milliseconds"))
    }

    /// From epoch milliseconds (fractions keep microseconds).
    pub fn from_millis_f64(ms: f64) -> Result<Ts, String> {
        if !ms.is_finite() {
            return Err(format!("bad ts {ms}: not a finite number of milliseconds"));
        }
        let micros = (ms * 1000.0).round();
        // chrono's range is far wider than any real event; reject what it cannot hold.
        if micros.abs() > 8.0e18 {
            return Err(format!("bad ts {ms}: out of range"));
        }
        let t = DateTime::from_timestamp_micros(micros as i64)
            .map(Ts)
            .ok_or_else(|| format!("bad ts {ms}: out of range"))?;
        within_years(t, &ms)
    }

    /// From epoch milliseconds.
    pub fn from_millis(ms: i64) -> Result<Ts, String> {
        let t = DateTime::from_timestamp_millis(ms).map(Ts).ok_or_else(|| format!("bad ts {ms}: out of range"))?;
        within_years(t, &ms)
    }

    /// Epoch milliseconds (truncated).
    pub fn millis(self) -> i64 {
        self.0.timestamp_millis()
    }
}

impl fmt::Display for Ts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
    }
}

impl serde::Serialize for Ts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ts, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Ts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 string, a YYYY-MM-DD date or epoch milliseconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ts, E> {
                Ts::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ts, E> {
                Ts::from_millis(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ts, E> {
                i64::try_from(v)
                    .map_err(|_| E::custom(format!("bad ts {v}: out of range")))
                    .and_then(|v| Ts::from_millis(v).map_err(E::custom))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Ts, E> {
                Ts::from_millis_f64(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// The arrival time the decoders' tests give their events: a fixed "now".
#[cfg(test)]
pub(crate) fn test_now() -> Ts {
    Ts::parse("2026-12-01").unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_documented_form() {
        let day = Ts::parse("2026-01-02").unwrap();
        assert_eq!(day.to_string(), "2026-01-02T00:00:00Z");
        assert_eq!(Ts::parse("2026-01-02T00:00:00Z").unwrap(), day);
        assert_eq!(Ts::parse("2026-01-02T01:00:00+01:00").unwrap(), day);
        assert_eq!(Ts::from_millis(day.millis()).unwrap(), day);
        let t: Ts = serde_json::from_str("1767312000000").unwrap();
        assert_eq!(t, day);
        let t: Ts = serde_json::from_str("\"2026-01-02\"").unwrap();
        assert_eq!(t, day);
    }

    #[test]
    fn truncates_to_microseconds() {
        let t = Ts::parse("2026-01-02T00:00:00.123456789Z").unwrap();
        assert_eq!(t.to_string(), "2026-01-02T00:00:00.123456Z");
    }

    /// A leap second is the next second's start, as PostgreSQL stores it.
    #[test]
    fn a_leap_second_is_the_next_second() {
        let leap = Ts::parse("2026-01-02T10:15:60Z").unwrap();
        assert_eq!(leap, Ts::parse("2026-01-02T10:16:00Z").unwrap());
        assert_eq!(leap.to_string(), "2026-01-02T10:16:00Z");
        assert_eq!(Ts::parse("2026-01-02T10:15:60.5Z").unwrap(), Ts::parse("2026-01-02T10:16:00.5Z").unwrap());
        assert!(Ts::parse("9999-12-31T23:59:60Z").is_err(), "the year 10000");
    }

    #[test]
    fn rejects_garbage() {
        assert!(Ts::parse("yesterday").is_err());
        assert!(Ts::parse("2026-13-01").is_err());
        assert!(Ts::from_millis_f64(f64::NAN).is_err());
        assert!(serde_json::from_str::<Ts>("true").is_err());
    }

    #[test]
    fn only_years_rfc_3339_can_write() {
        assert_eq!(Ts::from_millis(MIN_MILLIS).unwrap().to_string(), "0000-01-01T00:00:00Z");
        assert_eq!(Ts::from_millis(MAX_MILLIS).unwrap().to_string(), "9999-12-31T23:59:59.999Z");
        assert!(Ts::from_millis(MIN_MILLIS - 1).is_err());
        assert!(Ts::from_millis(MAX_MILLIS + 1).is_err());
        assert!(Ts::from_millis_f64(8.0e15).is_err());
        assert!(Ts::parse("9999-12-31T23:59:59-01:00").is_err());
        assert!(Ts::parse("0001-01-01").is_ok());
    }
}
