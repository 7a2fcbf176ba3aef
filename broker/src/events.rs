//! The payloads on the wire and their validation into domain values.
//!
//! Validation lives here, beside the wire types, so that the processor, the API's ingest route and the
//! importers reject exactly the same input with exactly the same reason.

use crate::codec;
use crate::kind::{Kind, valid_key};
use crate::ts::Ts;
use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Why an event was refused: a short machine-readable class (a metrics label) and a human reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `bad_subject`, `undecodable`, `invalid` or `expired`.
    pub class: &'static str,
    /// What was wrong, for people reading the dead-letter stream.
    pub reason: String,
}

/// Refuses text PostgreSQL cannot store: it has no NUL character in `text` (a message carrying one would
/// fail its batch's transaction on every delivery, so it is dead-lettered instead).
pub fn no_nul(field: &str, v: &str) -> Result<(), String> {
    match v.contains('\0') {
        true => Err(format!("{field} contains a NUL character (U+0000), which cannot be stored")),
        false => Ok(()),
    }
}

impl Rejection {
    /// The subject does not have the shape of its kind.
    pub fn subject(reason: String) -> Self {
        Rejection { class: "bad_subject", reason }
    }
    /// The payload could not be decoded into the event.
    pub fn undecodable(e: codec::DecodeError) -> Self {
        Rejection { class: "undecodable", reason: e.to_string() }
    }
    /// The payload decoded but its values are not acceptable.
    pub fn invalid(reason: String) -> Self {
        Rejection { class: "invalid", reason }
    }
    /// The event is older than what is kept.
    pub fn expired(reason: String) -> Self {
        Rejection { class: "expired", reason }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The smallest price taken.
pub const MIN_PRICE: f64 = 1e-50;
/// The largest price taken. Within these every derived value is finite (a return is at most 1e100, its
/// square 1e200, a window's sum far from f64's limit): an infinite one would be stored as JSON `null`
/// (jsonb has no infinity), not what a recompute gives, and recomputed by every correction after it.
pub const MAX_PRICE: f64 = 1e50;

/// `price.<instrument>`: `{"ts": ..., "price": f64, "volume": f64?}`. A missing `ts` takes the JetStream
/// message time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PriceEvent {
    /// When the price was observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<Ts>,
    /// The price: within [`MIN_PRICE`] and [`MAX_PRICE`].
    pub price: f64,
    /// The traded volume, if known: finite and not negative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<f64>,
}

/// A validated price of one instrument.
#[derive(Debug, Clone, PartialEq)]
pub struct PricePoint {
    /// The instrument, from the subject.
    pub instrument: String,
    /// When, from the payload or the message time.
    pub ts: Ts,
    /// Finite and positive.
    pub price: f64,
    /// Finite and not negative.
    pub volume: Option<f64>,
}

impl PricePoint {
    /// Decodes and validates a price message. `received` is the JetStream time, used when `ts` is missing.
    pub fn decode(subject: &str, headers: Option<&HeaderMap>, payload: &[u8], received: Ts) -> Result<Self, Rejection> {
        let instrument = Kind::Price.key_of(subject).map_err(Rejection::subject)?.to_owned();
        let e: PriceEvent = codec::decode(headers, payload).map_err(Rejection::undecodable)?;
        e.validate(instrument, received).map_err(Rejection::invalid)
    }
}

impl PriceEvent {
    /// Checks the values and attaches the key.
    pub fn validate(self, instrument: String, received: Ts) -> Result<PricePoint, String> {
        if !self.price.is_finite() {
            return Err(format!("price must be a finite number, got {}", self.price));
        }
        if self.price <= 0.0 {
            return Err(format!("price must be positive, got {}", self.price));
        }
        if !(MIN_PRICE..=MAX_PRICE).contains(&self.price) {
            return Err(format!(
                "price must be within {MIN_PRICE:e} to {MAX_PRICE:e} (so that every derived value is finite), got {:e}",
                self.price
            ));
        }
        if let Some(v) = self.volume
            && (!v.is_finite() || v < 0.0)
        {
            return Err(format!("volume must be a finite number ≥ 0, got {v}"));
        }
        Ok(PricePoint { instrument, ts: self.ts.unwrap_or(received), price: self.price, volume: self.volume })
    }
}

/// `index.<name>`: the definition of a weighted index, `{"base": 100, "weights": {"S0": 0.2, ...}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IndexDefinition {
    /// The level of the first index date (default 100).
    #[serde(default = "default_base")]
    pub base: f64,
    /// Weight per constituent instrument.
    pub weights: BTreeMap<String, f64>,
}

fn default_base() -> f64 {
    100.0
}

impl IndexDefinition {
    /// Decodes and validates an index definition message.
    pub fn decode(subject: &str, headers: Option<&HeaderMap>, payload: &[u8]) -> Result<(String, Self), Rejection> {
        let name = Kind::Index.key_of(subject).map_err(Rejection::subject)?.to_owned();
        let d: IndexDefinition = codec::decode(headers, payload).map_err(Rejection::undecodable)?;
        d.validate().map_err(Rejection::invalid)?;
        Ok((name, d))
    }

    /// The most constituents an index may have. Storing a definition locks each of them in one
    /// transaction, and PostgreSQL's lock table holds `max_locks_per_transaction` (64) ×
    /// `max_connections` (100) locks for every session together: a definition over that could never be
    /// stored, and would make every other transaction fail meanwhile.
    pub const MAX_CONSTITUENTS: usize = 5000;

    /// Checks the base and weights.
    pub fn validate(&self) -> Result<(), String> {
        if !self.base.is_finite() || self.base <= 0.0 {
            return Err(format!("base must be a finite positive number, got {}", self.base));
        }
        if self.weights.is_empty() {
            return Err("weights must name at least one instrument".into());
        }
        if self.weights.len() > Self::MAX_CONSTITUENTS {
            return Err(format!(
                "weights name {} instruments; an index may have at most {}",
                self.weights.len(),
                Self::MAX_CONSTITUENTS
            ));
        }
        for (k, w) in &self.weights {
            if !valid_key(k) {
                return Err(format!("weights: {k:?} is not a valid instrument name"));
            }
            if !w.is_finite() {
                return Err(format!("weights: weight of {k} must be finite, got {w}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::test_now as now;

    #[test]
    fn price_from_plain_json() {
        let p = PricePoint::decode("price.ACME", None, br#"{"ts":"2026-01-02","price":10}"#, now()).unwrap();
        assert_eq!(p.instrument, "ACME");
        assert_eq!(p.ts, Ts::parse("2026-01-02").unwrap());
        assert_eq!(p.price, 10.0);
        let p = PricePoint::decode("price.ACME", None, br#"{"price":10,"volume":3}"#, now()).unwrap();
        assert_eq!(p.ts, now());
        assert_eq!(p.volume, Some(3.0));
    }

    #[test]
    fn bad_prices_are_named() {
        let r = |p: &[u8]| PricePoint::decode("price.ACME", None, p, now()).unwrap_err().reason;
        assert!(r(br#"{"ts":"2026-01-02"}"#).contains("missing field `price`"));
        assert!(r(br#"{"price":-1}"#).contains("positive"));
        assert!(r(br#"{"price":"ten"}"#).contains("invalid type"));
        assert!(r(br#"{"price":1,"ts":"nope"}"#).contains("bad ts"));
        assert!(r(br#"{"price":1,"volume":-2}"#).contains("volume"));
        assert!(r(br#"{"price":1e308}"#).contains("within 1e-50 to 1e50"));
        assert!(r(br#"{"price":5e-324}"#).contains("within 1e-50 to 1e50"));
        for edge in [&br#"{"price":1e50}"#[..], br#"{"price":1e-50}"#] {
            assert!(PricePoint::decode("price.ACME", None, edge, now()).is_ok());
        }
        let nan = codec::to_msgpack(&PriceEvent { ts: None, price: f64::NAN, volume: None });
        assert!(r(&nan).contains("finite"));
        assert!(PricePoint::decode("price.A.B", None, br#"{"price":1}"#, now()).unwrap_err().class == "bad_subject");
    }

    #[test]
    fn index_definitions_validate() {
        let (name, d) = IndexDefinition::decode("index.world", None, br#"{"weights":{"S0":0.5,"S1":0.5}}"#).unwrap();
        assert_eq!(name, "world");
        assert_eq!(d.base, 100.0);
        assert!(IndexDefinition::decode("index.w", None, br#"{"base":100,"weights":{}}"#).is_err());
        assert!(IndexDefinition::decode("index.w", None, br#"{"base":0,"weights":{"A":1}}"#).is_err());
        assert!(IndexDefinition::decode("index.w", None, br#"{"weights":{"A":1},"x":1}"#).is_err());
    }
}
