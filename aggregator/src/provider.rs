//! One provider's export API: `GET {base}/api/v1/reporter?after_id=&limit=` answers
//! `[{"id", "text", "device", "location", "created_at"}]` in ascending id.

use bytes::Bytes;
use serde_json::{Map, Value};

/// One exported item: its id (for the cursor) and the JSON published for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The provider's id.
    pub id: i64,
    /// `{"id", "text", "device", "location", "created_at"}` as the provider gave them (other fields are
    /// left out; the processor validates the rest and dead-letters what does not fit).
    pub json: Bytes,
}

/// Why a page could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Nothing answered at the address.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The provider answered with an error status.
    #[error("HTTP {0}: {1}")]
    Status(u16, String),
    /// The answer was not a list of items with integer ids.
    #[error("bad response: {0}")]
    BadResponse(String),
    /// JetStream did not store what was pulled.
    #[error("publishing: {0}")]
    Publish(String),
}

impl PullError {
    /// The status reported for it: `unreachable` or `error`.
    pub fn status(&self) -> &'static str {
        match self {
            PullError::Unreachable(_) => "unreachable",
            _ => "error",
        }
    }
}

/// A client for one provider.
#[derive(Debug, Clone)]
pub struct ProviderClient {
    base: String,
    http: reqwest::Client,
}

impl ProviderClient {
    /// A client for the provider at `base` (e.g. `http://127.0.0.1:1101`).
    pub fn new(base: &str, http: reqwest::Client) -> Self {
        ProviderClient { base: base.trim_end_matches('/').to_owned(), http }
    }

    /// Up to `limit` items with an id above `after_id`, ascending.
    pub async fn page(&self, after_id: i64, limit: u32) -> Result<Vec<Item>, PullError> {
        let r = self
            .http
            .get(format!("{}/api/v1/reporter", self.base))
            .query(&[("after_id", after_id.to_string()), ("limit", limit.to_string())])
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    PullError::Unreachable(e.to_string())
                } else {
                    PullError::BadResponse(e.to_string())
                }
            })?;
        let status = r.status();
        let body = r.bytes().await.map_err(|e| PullError::BadResponse(e.to_string()))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(PullError::Status(status.as_u16(), text));
        }
        parse(&body, after_id)
    }
}

/// The items of a page with an id above `after_id`, ascending by id.
pub fn parse(body: &[u8], after_id: i64) -> Result<Vec<Item>, PullError> {
    let list: Vec<Map<String, Value>> =
        serde_json::from_slice(body).map_err(|e| PullError::BadResponse(format!("expected a list of items: {e}")))?;
    let mut items = Vec::with_capacity(list.len());
    for mut obj in list {
        let id = obj.get("id").and_then(Value::as_i64).ok_or_else(|| {
            PullError::BadResponse(format!("an item without an integer id: {}", Value::Object(obj.clone())))
        })?;
        if id <= after_id {
            continue;
        }
        obj.retain(|k, _| matches!(k.as_str(), "id" | "text" | "device" | "location" | "created_at"));
        let json = serde_json::to_vec(&obj).map_err(|e| PullError::BadResponse(e.to_string()))?;
        items.push(Item { id, json: json.into() });
    }
    items.sort_by_key(|i| i.id);
    items.dedup_by_key(|i| i.id);
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_filtered_sorted_and_projected() {
        let body = br#"[{"id":5,"text":"b","device":"d","location":"l","created_at":"2026-01-01T00:00:00Z","extra":1},
                        {"id":2,"text":"a"},{"id":7,"text":"c"},{"id":5,"text":"b"}]"#;
        let items = parse(body, 2).unwrap();
        assert_eq!(items.iter().map(|i| i.id).collect::<Vec<_>>(), vec![5, 7]);
        let v: Value = serde_json::from_slice(&items[0].json).unwrap();
        assert!(v.get("extra").is_none() && v["device"] == "d");
        assert!(matches!(parse(b"{}", 0), Err(PullError::BadResponse(_))));
        assert!(matches!(parse(br#"[{"id":"x"}]"#, 0), Err(PullError::BadResponse(_))));
    }
}
