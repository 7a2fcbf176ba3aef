//! The schemas of the event payloads `POST /v1/events/...` takes, as JSON Schema.
//!
//! The payloads are the broker's wire types (`tributary_broker::events` and its siblings), decoded and
//! validated there, by the same code for the API, the processors and the importers. Their rules do not
//! fit a derive (a key's shape, a percentage by field name, "at least one field besides ts", a deletion
//! or a value), so they are written out here, next to each other, keyword for keyword; the
//! tests send what these schemas allow and what they refuse (`scripts/fuzz-api.sh` too).

use serde_json::{Value, json};
use tributary_broker::ts::{MAX_MILLIS, MIN_MILLIS};

/// Whitespace as Rust's `char::is_whitespace` has it (what `trim` removes), for a regex class.
const WHITESPACE: &str = "\\t-\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";

/// A key as `valid_key` takes it (an index name, a weight's instrument): one token, at most 128 characters,
/// no `.`, `*`, `>`, whitespace or control character.
pub(crate) fn valid_key() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": 128,
           "pattern": format!("^[^.*>\\x00-\\x1f\\x7f-\\x9f{WHITESPACE}]+$")})
}

/// Text PostgreSQL can store (no NUL), at most `max` characters.
fn text(max: u64) -> Value {
    json!({"type": "string", "maxLength": max, "pattern": "^[^\\x00]*$"})
}

/// Text with something besides whitespace, no NUL, at most `max` characters.
fn nonblank(max: u64) -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": max,
           "pattern": format!("^[^\\x00]*[^\\x00{WHITESPACE}][^\\x00]*$")})
}

/// A time in an event: RFC 3339, `YYYY-MM-DD` or epoch milliseconds (a fraction keeps microseconds).
fn ts() -> Value {
    json!({"anyOf": [
        {"type": "string", "format": "date-time"},
        {"type": "string", "format": "date"},
        {"type": "number", "minimum": MIN_MILLIS, "maximum": MAX_MILLIS},
    ], "description": "RFC 3339, YYYY-MM-DD or epoch milliseconds, in the years 0000 to 9999"})
}

fn or_null(v: Value) -> Value {
    json!({"anyOf": [v, {"type": "null"}]})
}

/// Every payload schema, by component name.
pub(crate) fn schemas() -> Vec<(&'static str, Value)> {
    let fleet_text = nonblank(tributary_broker::fleet::MAX_TEXT as u64);
    let survey_label = text(tributary_broker::surveys::MAX_LABEL as u64);
    let fleet = |field: &str, other: &str| {
        json!({"oneOf": [
            {"type": "object", "description": format!("The {field}"), "required": [field],
             "properties": {field: fleet_text, other: {"type": "null"}, "deleted": {"const": false}},
             "additionalProperties": false},
            {"type": "object", "description": "A removal", "required": ["deleted"],
             "properties": {"deleted": {"const": true}, field: {"type": "null"}, other: {"type": "null"}},
             "additionalProperties": false},
        ]})
    };
    vec![
        (
            "PriceEvent",
            json!({"type": "object", "required": ["price"],
               "description": "A price of the instrument named by the subject; a missing ts takes the arrival time.",
               "properties": {
                   "ts": or_null(ts()),
                   "price": {"type": "number", "minimum": tributary_broker::events::MIN_PRICE,
                             "maximum": tributary_broker::events::MAX_PRICE,
                             "description": "Within 1e-50 to 1e50, so that every derived value is finite"},
                   "volume": {"type": ["number", "null"], "minimum": 0},
               },
               "example": {"ts": "2026-11-20", "price": 101.5}}),
        ),
        (
            "IndexDefinition",
            json!({"type": "object", "required": ["weights"], "additionalProperties": false,
               "description": "A weighted index over price series.",
               "properties": {
                   "base": {"type": "number", "exclusiveMinimum": 0, "default": 100,
                            "description": "The level of the first index date."},
                   "weights": {"type": "object", "minProperties": 1,
                               "maxProperties": tributary_broker::events::IndexDefinition::MAX_CONSTITUENTS,
                               "propertyNames": valid_key(),
                               "additionalProperties": {"type": "number"},
                               "description": format!("Weight per constituent instrument (at most {}).",
                                   tributary_broker::events::IndexDefinition::MAX_CONSTITUENTS)},
               },
               "example": {"base": 100, "weights": {"ACME": 0.5, "INITECH": 0.5}}}),
        ),
        (
            "SampleEvent",
            json!({"type": "object",
               "description": "A server's sample: numeric fields by name (`*_usage`, `*_pct` and `*_percent` are \
                   percentages, 0–100) and an optional ts; at least one field besides ts, at most 1000.",
               "propertyNames": {"type": "string", "minLength": 1, "maxLength": 128,
                                 "pattern": format!("^[^./*>\\x00-\\x1f\\x7f-\\x9f{WHITESPACE}]+$")},
               "properties": {"ts": ts()},
               "patternProperties": {"_(usage|pct|percent)$": {"type": "number", "minimum": 0, "maximum": 100}},
               "additionalProperties": {"type": "number"},
               "anyOf": [
                   {"required": ["ts"], "minProperties": 2,
                    "maxProperties": tributary_broker::samples::MAX_FIELDS + 1},
                   {"not": {"required": ["ts"]}, "minProperties": 1,
                    "maxProperties": tributary_broker::samples::MAX_FIELDS},
               ],
               "example": {"ts": "2026-11-20T10:00:00Z", "cpu_usage": 42.5, "load1": 0.7}}),
        ),
        (
            "PortEvent",
            json!({"type": "object", "required": ["name"], "additionalProperties": false,
               "description": "A port, as in the ports file (keyed by its UN/LOCODE, the subject's key).",
               "properties": {
                   "name": nonblank(1 << 20),
                   "city": or_null(text(1 << 20)),
                   "country": or_null(text(tributary_broker::ports::MAX_COUNTRY as u64)),
                   "province": or_null(text(1 << 20)),
                   "timezone": or_null(text(1 << 20)),
                   "code": or_null(text(1 << 20)),
                   "coordinates": or_null(json!({"type": "array", "minItems": 2, "maxItems": 2,
                       "description": "[lon, lat]; a coordinate within 1e-9° of 0 is stored as 0",
                       "prefixItems": [{"type": "number", "minimum": -180, "maximum": 180},
                                       {"type": "number", "minimum": -90, "maximum": 90}]})),
                   "alias": {"type": "array", "items": text(1 << 20)},
                   "regions": {"type": "array", "items": text(1 << 20)},
                   "unlocs": {"type": "array", "items": text(1 << 20)},
               },
               "example": {"name": "Ajman", "country": "United Arab Emirates", "coordinates": [55.5, 25.4]}}),
        ),
        ("DriverEvent", fleet("name", "address")),
        ("ShipmentEvent", fleet("address", "name")),
        (
            "SurveyEvent",
            json!({"oneOf": [
                {"type": "object", "description": "An item", "additionalProperties": false,
                 "required": ["id", "text", "device", "location"],
                 "properties": {
                     "id": {"type": "integer", "minimum": 1, "maximum": i64::MAX},
                     "text": nonblank(tributary_broker::surveys::MAX_TEXT as u64),
                     "device": survey_label.clone(), "location": survey_label,
                     "created_at": or_null(ts()),
                     "status": {"type": "null"}, "at": {"type": "null"}, "error": {"type": "null"},
                 }},
                {"type": "object", "description": "A pull's outcome", "additionalProperties": false,
                 "required": ["status"],
                 "properties": {
                     "status": {"enum": tributary_broker::surveys::STATUSES},
                     "at": or_null(ts()),
                     "error": or_null(text(1 << 20)),
                     "id": {"type": "null"}, "text": {"type": "null"}, "device": {"type": "null"},
                     "location": {"type": "null"}, "created_at": {"type": "null"},
                 }},
            ]}),
        ),
    ]
}
