//! `fleet.driver.<id>` with `{"name": ...}` and `fleet.shipment.<id>` with `{"address": ...}`; the payload
//! `{"deleted": true}` removes the driver or shipment.

use crate::codec;
use crate::events::Rejection;
use crate::kind::Kind;
use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};

/// The longest name or address accepted, in characters.
pub const MAX_TEXT: usize = 1000;

/// Which side of the assignment a fleet event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// A driver, with a name.
    Driver,
    /// A shipment, with a destination address.
    Shipment,
}

impl Role {
    /// `driver` or `shipment`.
    pub fn token(self) -> &'static str {
        match self {
            Role::Driver => "driver",
            Role::Shipment => "shipment",
        }
    }

    /// The subject of one driver or shipment, e.g. `fleet.driver.7`.
    pub fn subject(self, id: &str) -> String {
        format!("{}.{}.{id}", Kind::Fleet.prefix(), self.token())
    }
}

/// A fleet payload as published.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetPayload {
    /// A driver's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A shipment's destination address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `true` removes the driver or shipment.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

impl FleetPayload {
    /// A driver called `name`.
    pub fn driver(name: impl Into<String>) -> Self {
        FleetPayload { name: Some(name.into()), ..Default::default() }
    }
    /// A shipment to `address`.
    pub fn shipment(address: impl Into<String>) -> Self {
        FleetPayload { address: Some(address.into()), ..Default::default() }
    }
    /// The removal of a driver or shipment.
    pub fn deleted() -> Self {
        FleetPayload { deleted: true, ..Default::default() }
    }
}

/// A validated fleet event.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetRecord {
    /// Driver or shipment.
    pub role: Role,
    /// Its id, from the subject.
    pub id: String,
    /// The driver's name or the shipment's address; `None` when it was deleted.
    pub text: Option<String>,
}

impl FleetRecord {
    /// Decodes and validates a fleet message.
    pub fn decode(subject: &str, headers: Option<&HeaderMap>, payload: &[u8]) -> Result<Self, Rejection> {
        let (role, id) = parse_subject(subject).map_err(Rejection::subject)?;
        let p: FleetPayload = codec::decode(headers, payload).map_err(Rejection::undecodable)?;
        Self::validate(role, id.to_owned(), p).map_err(Rejection::invalid)
    }

    /// Checks that the payload fits its role.
    pub fn validate(role: Role, id: String, p: FleetPayload) -> Result<Self, String> {
        if p.deleted {
            if p.name.is_some() || p.address.is_some() {
                return Err("a deletion carries only {\"deleted\": true}".into());
            }
            return Ok(FleetRecord { role, id, text: None });
        }
        let (wanted, other, field, other_field) = match role {
            Role::Driver => (p.name, p.address, "name", "address"),
            Role::Shipment => (p.address, p.name, "address", "name"),
        };
        if other.is_some() {
            return Err(format!("a {} has a {field}, not a {other_field}", role.token()));
        }
        let text = wanted.ok_or_else(|| format!("missing field `{field}` (or {{\"deleted\": true}})"))?;
        let text = text.trim().to_owned();
        if text.is_empty() {
            return Err(format!("{field} must not be blank"));
        }
        if text.chars().count() > MAX_TEXT {
            return Err(format!("{field} is longer than {MAX_TEXT} characters"));
        }
        crate::events::no_nul(field, &text)?;
        Ok(FleetRecord { role, id, text: Some(text) })
    }
}

/// `fleet.driver.<id>` → (Driver, id); the shape is checked by [`crate::kind::parse_subject`].
pub fn parse_subject(subject: &str) -> Result<(Role, &str), String> {
    crate::kind::parse_subject(subject).and_then(|k| match k {
        Kind::Fleet => Ok(()),
        other => {
            Err(format!("unknown subject shape {subject:?}: expected {}, not {}", Kind::Fleet.shape(), other.shape()))
        }
    })?;
    let (role, id) = subject.strip_prefix("fleet.").and_then(|r| r.split_once('.')).unwrap_or_default();
    Ok((if role == "driver" { Role::Driver } else { Role::Shipment }, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_shipments_and_deletions() {
        let d = FleetRecord::decode("fleet.driver.7", None, br#"{"name":" Alice Smith "}"#).unwrap();
        assert_eq!((d.role, d.id.as_str(), d.text.as_deref()), (Role::Driver, "7", Some("Alice Smith")));
        let s = FleetRecord::decode("fleet.shipment.a1", None, br#"{"address":"44 Fake Dr., San Diego"}"#).unwrap();
        assert_eq!((s.role, s.text.as_deref()), (Role::Shipment, Some("44 Fake Dr., San Diego")));
        let x = FleetRecord::decode("fleet.shipment.a1", None, br#"{"deleted":true}"#).unwrap();
        assert_eq!(x.text, None);
        let m = FleetRecord::decode("fleet.driver.8", None, &codec::to_msgpack(&FleetPayload::driver("Bo"))).unwrap();
        assert_eq!(m.text.as_deref(), Some("Bo"));
    }

    #[test]
    fn bad_fleet_events_are_named() {
        let r = |s: &str, b: &[u8]| FleetRecord::decode(s, None, b).unwrap_err();
        assert_eq!(r("fleet.truck.1", br#"{"name":"A"}"#).class, "bad_subject");
        assert_eq!(r("fleet.driver", br#"{"name":"A"}"#).class, "bad_subject");
        assert_eq!(r("fleet.driver.a.b", br#"{"name":"A"}"#).class, "bad_subject");
        assert!(r("fleet.driver.1", br#"{"address":"x"}"#).reason.contains("has a name, not a address"));
        assert!(r("fleet.driver.1", br#"{}"#).reason.contains("missing field `name`"));
        assert!(r("fleet.shipment.1", br#"{"address":"  "}"#).reason.contains("blank"));
        assert!(r("fleet.shipment.1", br#"{"deleted":true,"address":"x"}"#).reason.contains("only"));
        assert!(r("fleet.shipment.1", br#"{"addr":"x"}"#).reason.contains("unknown field"));
    }
}
