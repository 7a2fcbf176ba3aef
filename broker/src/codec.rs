//! Payload encoding: MessagePack from our own publishers, JSON from anyone else.
//!
//! The `Content-Type` header decides when present (`application/msgpack` or `application/json`); without
//! it, a payload whose first non-space byte is `{` or `[` is JSON and anything else is MessagePack. That
//! is what lets `nats pub price.ACME '{"price":10}'` (no headers at all) work beside our binary traffic.

use async_nats::HeaderMap;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The `Content-Type` our publishers set.
pub const MSGPACK: &str = "application/msgpack";
/// The `Content-Type` for JSON payloads.
pub const JSON: &str = "application/json";

/// How a payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// MessagePack with named fields (`rmp_serde::to_vec_named`).
    MsgPack,
    /// JSON text.
    Json,
}

/// Why a payload could not be decoded. The message is meant for people reading the dead-letter stream.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The `Content-Type` header names a format we do not speak.
    #[error("unsupported Content-Type {0:?}: expected {MSGPACK} or {JSON}")]
    ContentType(String),
    /// The payload is empty.
    #[error("empty payload")]
    Empty,
    /// JSON that does not parse or does not fit the event.
    #[error("invalid JSON payload: {0}")]
    Json(#[from] serde_json::Error),
    /// MessagePack that does not parse or does not fit the event.
    #[error("invalid MessagePack payload: {0}")]
    MsgPack(#[from] rmp_serde::decode::Error),
}

/// Picks the format of a payload from its headers, else from its first non-space byte.
pub fn detect(headers: Option<&HeaderMap>, payload: &[u8]) -> Result<Format, DecodeError> {
    if let Some(ct) = headers.and_then(|h| h.get("Content-Type")) {
        let ct = ct.as_str().split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        return match ct.as_str() {
            MSGPACK | "application/x-msgpack" | "application/vnd.msgpack" => Ok(Format::MsgPack),
            JSON => Ok(Format::Json),
            _ => Err(DecodeError::ContentType(ct)),
        };
    }
    match payload.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Err(DecodeError::Empty),
        Some(b'{' | b'[') => Ok(Format::Json),
        Some(_) => Ok(Format::MsgPack),
    }
}

/// Decodes a payload into `T` in whichever format it is in.
pub fn decode<T: DeserializeOwned>(headers: Option<&HeaderMap>, payload: &[u8]) -> Result<T, DecodeError> {
    if payload.is_empty() {
        return Err(DecodeError::Empty);
    }
    match detect(headers, payload)? {
        Format::Json => Ok(serde_json::from_slice(payload)?),
        Format::MsgPack => Ok(rmp_serde::from_slice(payload)?),
    }
}

/// Encodes `value` as MessagePack with named fields, the form our publishers send.
pub fn to_msgpack<T: Serialize>(value: &T) -> Bytes {
    // Serialising our own plain structs into a Vec cannot fail.
    Bytes::from(rmp_serde::to_vec_named(value).expect("event types serialise to MessagePack"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct E {
        price: f64,
    }

    #[test]
    fn json_without_headers_and_msgpack_both_decode() {
        let e: E = decode(None, br#"  {"price":10}"#).unwrap();
        assert_eq!(e, E { price: 10.0 });
        let bytes = to_msgpack(&E { price: 2.5 });
        let e: E = decode(None, &bytes).unwrap();
        assert_eq!(e, E { price: 2.5 });
        let mut h = HeaderMap::new();
        h.insert("Content-Type", MSGPACK);
        assert_eq!(decode::<E>(Some(&h), &bytes).unwrap(), E { price: 2.5 });
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(matches!(decode::<E>(None, b""), Err(DecodeError::Empty)));
        let err = decode::<E>(None, b"{\"price\":").unwrap_err().to_string();
        assert!(err.starts_with("invalid JSON payload"), "{err}");
        let mut h = HeaderMap::new();
        h.insert("Content-Type", "text/plain");
        assert!(matches!(decode::<E>(Some(&h), b"{}"), Err(DecodeError::ContentType(_))));
    }
}
