//! `survey.<provider>`: what the aggregator pulled from a survey provider.
//!
//! Two shapes share the subject, so that an item and the outcome of the pull that found it travel in
//! one stream, in order:
//! - an item, `{"id": 42, "text": ..., "device": ..., "location": ..., "created_at": ...}` (the provider's
//!   own id, unique per provider; `created_at` defaults to the JetStream time);
//! - a pull's outcome, `{"status": "ok" | "timeout" | "unreachable" | "error", "at": ..., "error": "..."}`;
//! - in place of an item larger than NATS takes, `{"id": 42, "oversized_bytes": 2000000}`: refused as
//!   invalid, naming its size, so that it is dead-lettered and the provider's later items still flow.

use crate::codec;
use crate::events::Rejection;
use crate::kind::Kind;
use crate::ts::Ts;
use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};

/// The longest text accepted, in characters.
pub const MAX_TEXT: usize = 10_000;
/// The longest device or location accepted, in characters: both are indexed, and PostgreSQL refuses an
/// index entry over about 2.7 kB (on every delivery, so such an item was retried and bisected before it
/// was dead-lettered as a processing failure).
pub const MAX_LABEL: usize = 256;

/// A survey payload as published: an item or a status, told apart by `status`. A field that is `None` is
/// left out.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SurveyPayload {
    /// The provider's id of the item (≥ 1): a JSON integer, also written with a zero fraction (`3.0`).
    #[serde(default, deserialize_with = "whole")]
    pub id: Option<i64>,
    /// The item's text.
    pub text: Option<String>,
    /// The reporting device.
    pub device: Option<String>,
    /// Where it was reported.
    pub location: Option<String>,
    /// When the provider stored it.
    pub created_at: Option<Ts>,
    /// A pull's outcome.
    pub status: Option<String>,
    /// When the pull ended.
    pub at: Option<Ts>,
    /// What went wrong, for a failed pull.
    pub error: Option<String>,
    /// The size in bytes of an item the aggregator could not publish (more than the server's
    /// `max_payload`): it publishes this, with the item's id, in its place.
    pub oversized_bytes: Option<u64>,
}

/// One item of one provider.
#[derive(Debug, Clone, PartialEq)]
pub struct SurveyItem {
    /// The provider's id of the item.
    pub id: i64,
    /// The item's text.
    pub text: String,
    /// The reporting device.
    pub device: String,
    /// Where it was reported.
    pub location: String,
    /// When the provider stored it.
    pub created_at: Ts,
}

/// How a pull from a provider ended.
#[derive(Debug, Clone, PartialEq)]
pub struct PullStatus {
    /// `ok`, `timeout`, `unreachable` or `error`.
    pub status: String,
    /// When the pull ended.
    pub at: Ts,
    /// What went wrong.
    pub error: Option<String>,
}

/// A whole number, as JSON has it: `3` or `3.0` (JSON Schema's `integer` takes both).
fn whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            (None, Some(f)) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => Ok(Some(f as i64)),
            _ => Err(D::Error::custom(format!("invalid type: {n}, expected a whole number"))),
        },
    }
}

/// The statuses a pull can end with.
pub const STATUSES: [&str; 4] = ["ok", "timeout", "unreachable", "error"];

/// A validated survey event.
#[derive(Debug, Clone, PartialEq)]
pub enum SurveyEvent {
    /// An item.
    Item(SurveyItem),
    /// A pull's outcome.
    Status(PullStatus),
}

/// A survey event with its provider (from the subject).
#[derive(Debug, Clone, PartialEq)]
pub struct SurveyRecord {
    /// The provider's name.
    pub provider: String,
    /// What happened.
    pub event: SurveyEvent,
}

impl SurveyRecord {
    /// Decodes and validates a survey message; `received` is the JetStream time.
    pub fn decode(subject: &str, headers: Option<&HeaderMap>, payload: &[u8], received: Ts) -> Result<Self, Rejection> {
        let provider = Kind::Survey.key_of(subject).map_err(Rejection::subject)?.to_owned();
        let p: SurveyPayload = codec::decode(headers, payload).map_err(Rejection::undecodable)?;
        let event = validate(p, received).map_err(Rejection::invalid)?;
        Ok(SurveyRecord { provider, event })
    }
}

fn text(field: &str, v: Option<String>, max: usize) -> Result<String, String> {
    let v = v.ok_or_else(|| format!("missing field `{field}`"))?;
    if v.chars().count() > max {
        return Err(format!("{field} is longer than {max} characters"));
    }
    crate::events::no_nul(field, &v)?;
    Ok(v)
}

fn validate(p: SurveyPayload, received: Ts) -> Result<SurveyEvent, String> {
    if let Some(bytes) = p.oversized_bytes {
        let which = p.id.map(|id| format!(" {id}")).unwrap_or_default();
        return Err(format!(
            "the provider's item{which} is {bytes} bytes, more than NATS takes (its max_payload): \
             not published, and not pulled again (fetch it from the provider)"
        ));
    }
    if let Some(status) = p.status {
        if p.id.is_some() || p.text.is_some() || p.device.is_some() || p.location.is_some() || p.created_at.is_some() {
            return Err("a status carries only status, at and error".into());
        }
        if !STATUSES.contains(&status.as_str()) {
            return Err(format!("status must be one of {}, got {status:?}", STATUSES.join(", ")));
        }
        if let Some(e) = &p.error {
            crate::events::no_nul("error", e)?;
        }
        return Ok(SurveyEvent::Status(PullStatus { status, at: p.at.unwrap_or(received), error: p.error }));
    }
    if p.at.is_some() || p.error.is_some() {
        return Err("at and error belong to a status (missing field `status`)".into());
    }
    let id = p.id.ok_or("missing field `id` (an item) or `status` (a pull's outcome)")?;
    if id < 1 {
        return Err(format!("id must be ≥ 1, got {id}"));
    }
    let text_ = text("text", p.text, MAX_TEXT)?;
    if text_.trim().is_empty() {
        return Err("text must not be blank".into());
    }
    Ok(SurveyEvent::Item(SurveyItem {
        id,
        text: text_,
        device: text("device", p.device, MAX_LABEL)?,
        location: text("location", p.location, MAX_LABEL)?,
        created_at: p.created_at.unwrap_or(received),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::test_now as now;

    #[test]
    fn items_and_statuses() {
        let r = SurveyRecord::decode(
            "survey.blue",
            None,
            br#"{"id":3,"text":"hi","device":"ios","location":"MX","created_at":"2026-11-30T10:00:00Z"}"#,
            now(),
        )
        .unwrap();
        assert_eq!(r.provider, "blue");
        let SurveyEvent::Item(i) = r.event else { panic!("an item") };
        assert_eq!((i.id, i.text.as_str(), i.device.as_str()), (3, "hi", "ios"));
        // JSON's integers: 3.0 is 3 (as JSON Schema's `integer` has it); 3.5 is not an id.
        let item = |id: &str| format!(r#"{{"id":{id},"text":"hi","device":"ios","location":"MX"}}"#);
        let r = SurveyRecord::decode("survey.blue", None, item("3.0").as_bytes(), now()).unwrap();
        assert!(matches!(r.event, SurveyEvent::Item(SurveyItem { id: 3, .. })));
        assert!(SurveyRecord::decode("survey.blue", None, item("3.5").as_bytes(), now()).is_err());
        let r = SurveyRecord::decode("survey.red", None, br#"{"status":"timeout","error":"slow"}"#, now()).unwrap();
        assert_eq!(
            r.event,
            SurveyEvent::Status(PullStatus { status: "timeout".into(), at: now(), error: Some("slow".into()) })
        );
    }

    /// What the aggregator publishes leaves out what it does not have, and reads back the same.
    #[test]
    fn a_payload_leaves_out_its_missing_fields() {
        let status = SurveyPayload { status: Some("ok".into()), at: Some(now()), ..Default::default() };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json.as_object().unwrap().keys().collect::<Vec<_>>(), ["at", "status"]);
        let back: SurveyPayload = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);
        let packed: SurveyPayload = rmp_serde::from_slice(&rmp_serde::to_vec_named(&status).unwrap()).unwrap();
        assert_eq!(packed, status);
    }

    #[test]
    fn bad_survey_events_are_named() {
        let r = |b: &[u8]| SurveyRecord::decode("survey.blue", None, b, now()).unwrap_err().reason;
        assert!(r(br#"{"text":"a","device":"d","location":"l"}"#).contains("missing field `id`"));
        assert!(r(br#"{"id":0,"text":"a","device":"d","location":"l"}"#).contains("≥ 1"));
        assert!(r(br#"{"id":1,"text":" ","device":"d","location":"l"}"#).contains("blank"));
        assert!(r(br#"{"id":1,"text":"a","location":"l"}"#).contains("missing field `device`"));
        let long = |field: &str, n: usize| {
            let mut item = serde_json::json!({"id": 1, "text": "a", "device": "d", "location": "l"});
            item[field] = "x".repeat(n).into();
            item.to_string().into_bytes()
        };
        assert!(SurveyRecord::decode("survey.blue", None, &long("device", MAX_LABEL), now()).is_ok());
        assert!(r(&long("device", MAX_LABEL + 1)).contains("device is longer than 256"));
        assert!(r(&long("location", 3000)).contains("location is longer than 256"));
        assert!(r(br#"{"status":"meh"}"#).contains("one of"));
        assert!(r(br#"{"status":"ok","id":1}"#).contains("only"));
        assert!(r(br#"{"id":1,"text":"a","device":"d","location":"l","x":1}"#).contains("unknown field"));
        assert_eq!(SurveyRecord::decode("survey.a.b", None, b"{}", now()).unwrap_err().class, "bad_subject");
        // The aggregator's stand-in for an item it could not publish: invalid, named by id and size.
        let stub = SurveyRecord::decode("survey.blue", None, br#"{"id":7,"oversized_bytes":2000000}"#, now());
        let stub = stub.unwrap_err();
        assert_eq!(stub.class, "invalid");
        assert!(stub.reason.contains("item 7 is 2000000 bytes"), "{}", stub.reason);
        assert!(r(br#"{"oversized_bytes":5}"#).contains("item is 5 bytes"));
    }
}
