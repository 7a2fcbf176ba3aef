//! `metric.<host>`: a sample of any number of numeric fields of one host, e.g.
//! `{"ts": "...", "cpu_usage": 12.5, "load1": 0.7}`. Each field is the series `<host>/<field>`.
//!
//! Accepted: a JSON or MessagePack object whose `ts` (optional; RFC 3339, a date or epoch milliseconds)
//! is a time and whose every other member is a finite number. Fields named `*_usage`, `*_pct` or
//! `*_percent` are percentages and must lie in 0–100. Anything else is refused with a reason naming the
//! field, and goes to the dead-letter stream.

use crate::codec;
use crate::events::Rejection;
use crate::kind::{Kind, valid_key};
use crate::ts::Ts;
use async_nats::HeaderMap;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Core NATS subjects `live.metric.<host>`: after a commit, the processor announces each host's newest
/// sample of the batch there (as JSON [`LiveSample`]); the API relays them to browsers. Not a stream:
/// a missed announcement is only a missed screen update.
pub const LIVE_PREFIX: &str = "live.metric";
/// The most fields a sample may have. Each is a row of `metric_samples` and of every rollup width, and
/// the decoder checks every field against the ones before it for a repeat.
pub const MAX_FIELDS: usize = 1000;

/// A committed sample as announced to live readers: `{"host": ..., "ts": ..., "fields": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LiveSample {
    /// The host.
    pub host: String,
    /// When the sample was taken.
    pub ts: Ts,
    /// Its values.
    pub fields: BTreeMap<String, f64>,
}

/// The wire form our simulator publishes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SampleEvent {
    /// When the sample was taken; a missing `ts` takes the JetStream message time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<Ts>,
    /// The values, by field name.
    #[serde(flatten)]
    pub fields: BTreeMap<String, f64>,
}

/// A validated sample of one host.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSample {
    /// The host, from the subject.
    pub host: String,
    /// When, from the payload or the message time.
    pub ts: Ts,
    /// At least one finite value, by field name.
    pub fields: BTreeMap<String, f64>,
}

impl ServerSample {
    /// Decodes and validates a metric message. `received` is the JetStream time, used when `ts` is missing.
    pub fn decode(subject: &str, headers: Option<&HeaderMap>, payload: &[u8], received: Ts) -> Result<Self, Rejection> {
        let host = Kind::Sample.key_of(subject).map_err(Rejection::subject)?.to_owned();
        let members: Members = codec::decode(headers, payload).map_err(Rejection::undecodable)?;
        let mut ts = None;
        let mut fields = BTreeMap::new();
        for (name, value) in members.0 {
            if name == "ts" {
                ts = Some(
                    match value {
                        Member::Number(ms) => Ts::from_millis_f64(ms),
                        Member::Text(s) => Ts::parse(&s),
                        other => Err(format!("bad ts: expected a time, got {}", other.what())),
                    }
                    .map_err(Rejection::invalid)?,
                );
                continue;
            }
            let v = match value {
                Member::Number(v) => v,
                Member::Text(s) => {
                    return Err(invalid(format!("field {name:?} must be a number, got the string {s:?}")));
                }
                other => return Err(invalid(format!("field {name:?} must be a number, got {}", other.what()))),
            };
            check(&name, v).map_err(Rejection::invalid)?;
            fields.insert(name, v);
        }
        if fields.is_empty() {
            return Err(invalid("a metric sample needs at least one numeric field besides ts".into()));
        }
        Ok(ServerSample { host, ts: ts.unwrap_or(received), fields })
    }
}

fn invalid(reason: String) -> Rejection {
    Rejection::invalid(reason)
}

/// Whether `name` is a field name we store and `v` an acceptable value for it.
pub fn check(name: &str, v: f64) -> Result<(), String> {
    if !valid_key(name) || name.contains('/') {
        return Err(format!("{name:?} is not a valid field name (one token, no '/', '.', '*', '>' or spaces)"));
    }
    if !v.is_finite() {
        return Err(format!("field {name:?} must be a finite number, got {v}"));
    }
    if is_percentage(name) && !(0.0..=100.0).contains(&v) {
        return Err(format!("field {name:?} is a percentage and must be within 0–100, got {v}"));
    }
    Ok(())
}

/// Fields whose values are percentages (0–100): `*_usage`, `*_pct`, `*_percent`.
pub fn is_percentage(name: &str) -> bool {
    name.ends_with("_usage") || name.ends_with("_pct") || name.ends_with("_percent")
}

/// The members of the payload's object, in order, each kept as what it is so errors can name it.
struct Members(Vec<(String, Member)>);

/// One member's value. Serde tries the variants in order, so anything that is neither a number nor text
/// lands in the variant that names what it is, for the reason (those variants' payloads are never read).
#[derive(Deserialize)]
#[allow(dead_code)]
#[serde(untagged)]
enum Member {
    Number(f64),
    Text(String),
    Boolean(bool),
    Null(()),
    Array(Vec<de::IgnoredAny>),
    Object(BTreeMap<String, de::IgnoredAny>),
    Other(de::IgnoredAny),
}

impl Member {
    /// What a value that is neither a number nor text is, as a reason says it: "a boolean", "null", ...
    fn what(&self) -> &'static str {
        match self {
            Member::Number(_) => "a number",
            Member::Text(_) => "a string",
            Member::Boolean(_) => "a boolean",
            Member::Null(_) => "null",
            Member::Array(_) => "an array",
            Member::Object(_) => "an object",
            Member::Other(_) => "bytes or another kind of value",
        }
    }
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of numeric fields")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    // Before the repeat check, which compares each field with those before it: a 1 MiB
                    // body of 131,000 fields kept a core busy for many seconds, in the API and then in
                    // the processor on every delivery.
                    if out.len() == MAX_FIELDS {
                        return Err(de::Error::custom(format!("a sample has at most {MAX_FIELDS} fields")));
                    }
                    if out.iter().any(|(name, _)| *name == k) {
                        return Err(de::Error::custom(format!("field {k:?} appears twice")));
                    }
                    let v = map.next_value::<Member>()?;
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::test_now as now;

    fn reason(payload: &[u8]) -> String {
        ServerSample::decode("metric.db-1", None, payload, now()).unwrap_err().reason
    }

    #[test]
    fn any_object_of_numbers_is_a_sample() {
        let s = ServerSample::decode("metric.db-1", None, br#"{"cpu_usage":12.5,"load1":0.7}"#, now()).unwrap();
        assert_eq!(s.host, "db-1");
        assert_eq!(s.ts, now());
        assert_eq!(s.fields, BTreeMap::from([("cpu_usage".into(), 12.5), ("load1".into(), 0.7)]));
        let s = ServerSample::decode("metric.h", None, br#"{"ts":1700000000000,"x":-3}"#, now()).unwrap();
        assert_eq!(s.ts, Ts::from_millis(1_700_000_000_000).unwrap());
        let e = SampleEvent { ts: Some(now()), fields: BTreeMap::from([("disk_usage".into(), 70.25)]) };
        let s = ServerSample::decode("metric.h", None, &codec::to_msgpack(&e), now()).unwrap();
        assert_eq!((s.ts, s.fields), (now(), e.fields));
    }

    /// At most `MAX_FIELDS` fields: a body of 131,000 fields (1 MiB) took seconds to check for repeats.
    #[test]
    fn a_sample_of_too_many_fields_is_refused_at_once() {
        let fields = |n: usize| {
            let body: Vec<String> = (0..n).map(|i| format!("\"f{i}\":1")).collect();
            format!("{{{}}}", body.join(",")).into_bytes()
        };
        let s = ServerSample::decode("metric.h", None, &fields(MAX_FIELDS), now()).unwrap();
        assert_eq!(s.fields.len(), MAX_FIELDS);
        assert!(reason(&fields(131_000)).contains("at most 1000 fields"));
    }

    #[test]
    fn bad_samples_are_named() {
        assert!(
            reason(br#"{"cpu_usage":"high"}"#).contains(r#"field "cpu_usage" must be a number, got the string "high""#)
        );
        assert!(reason(br#"{"cpu_usage":true}"#).contains("a boolean"));
        assert!(reason(br#"{"cpu_usage":null}"#).contains("null"));
        assert!(reason(br#"{"cpu_usage":[1]}"#).contains("an array"));
        assert!(reason(br#"{"cpu_usage":{"a":1}}"#).contains("an object"));
        assert!(reason(br#"{"ts":true,"x":1}"#).contains("bad ts: expected a time, got a boolean"));
        assert!(reason(br#"{"cpu_usage":120}"#).contains("within 0–100"));
        assert!(reason(br#"{"memory_usage":-1}"#).contains("within 0–100"));
        assert!(reason(br#"{"ts":"2026-01-01"}"#).contains("at least one numeric field"));
        assert!(reason(br#"{"ts":"yesterday","x":1}"#).contains("bad ts"));
        assert!(reason(br#"[1,2]"#).contains("invalid type"));
        assert!(reason(br#"{"a b":1}"#).contains("not a valid field name"));
        let nan = codec::to_msgpack(&SampleEvent { ts: None, fields: BTreeMap::from([("x".into(), f64::NAN)]) });
        assert!(reason(&nan).contains("finite"));
        assert_eq!(ServerSample::decode("metric.a.b", None, br#"{"x":1}"#, now()).unwrap_err().class, "bad_subject");
    }
}
