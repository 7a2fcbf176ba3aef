//! One provider's export API: `GET {base}/api/v1/reporter?after_id=&limit=` answers
//! `[{"id", "text", "device", "location", "created_at"}]` in ascending id.

use bytes::Bytes;
use serde_json::Value;
use tributary_broker::surveys::SurveyPayload;

/// One exported item: its id (for the cursor) and the JSON published for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The provider's id; `None` for an item without a whole-number id, which is published all the same
    /// (the processor dead-letters it, with its reason) and moves no cursor.
    pub id: Option<i64>,
    /// `{"id", "text", "device", "location", "created_at"}` as the provider gave them (other fields are
    /// left out; the processor validates the rest and dead-letters what does not fit); an item that is
    /// not a JSON object, as given.
    pub json: Bytes,
}

impl Item {
    /// The item's `Nats-Msg-Id`: by provider and id, or for an item without one by its content, so that
    /// JetStream stores each once however often it is pulled (within the stream's duplicate window).
    pub fn msg_id(&self, provider: &str) -> String {
        match self.id {
            Some(id) => format!("survey:{provider}:{id}"),
            None => format!("survey:{provider}:content:{:016x}", tributary_broker::hash::fnv1a(&[&self.json])),
        }
    }

    /// What is published in place of this item when it is `bytes` long, more than NATS takes: its id and
    /// size, which the processor refuses as invalid (so the item is dead-lettered, its reason naming both).
    pub fn oversized(&self, bytes: usize) -> Bytes {
        let stub = SurveyPayload { id: self.id, oversized_bytes: Some(bytes as u64), ..Default::default() };
        serde_json::to_vec(&stub).expect("a payload of numbers serializes").into()
    }
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
    /// The answer was not a JSON list.
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

    /// Up to `limit` items with an id above `after_id`, ascending, from an answer of at most `max_bytes`.
    pub async fn page(&self, after_id: i64, limit: u32, max_bytes: usize) -> Result<Page, PullError> {
        let mut r = self
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
        // Read as it comes, up to the bound: read whole, an endless or huge answer took as much memory
        // as it held (the deadline bounds time, not bytes). An error's first bytes are all it shows.
        let max = if status.is_success() { max_bytes } else { 200 };
        let mut body = Vec::new();
        while let Some(chunk) = r.chunk().await.map_err(|e| PullError::BadResponse(e.to_string()))? {
            if body.len() + chunk.len() > max {
                if !status.is_success() {
                    body.extend_from_slice(&chunk[..max - body.len()]);
                    break;
                }
                return Err(PullError::BadResponse(format!(
                    "the answer is longer than aggregator.max_page_bytes ({max_bytes} bytes)"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(PullError::Status(status.as_u16(), String::from_utf8_lossy(&body).into_owned()));
        }
        parse(&body, after_id)
    }
}

/// One page of a provider's answer.
#[derive(Debug)]
pub struct Page {
    /// Its items worth publishing ([`parse`]).
    pub items: Vec<Item>,
    /// How many rows it held, before any was left out (a row repeated, or one at or below the cursor):
    /// a full page that brings no new id is a provider that cannot be paged.
    pub rows: usize,
}

/// The items of a page with an id above `after_id`, ascending by id, then those without a whole-number
/// id (JSON's integers, also written with a zero fraction, as the processor reads them): one bad item
/// must not hold up the provider's others, page after page.
pub fn parse(body: &[u8], after_id: i64) -> Result<Page, PullError> {
    let list: Vec<Value> =
        serde_json::from_slice(body).map_err(|e| PullError::BadResponse(format!("expected a list of items: {e}")))?;
    let rows = list.len();
    let mut items = Vec::with_capacity(list.len());
    for item in list {
        let Value::Object(mut obj) = item else {
            items.push(Item { id: None, json: serde_json::to_vec(&item).unwrap_or_default().into() });
            continue;
        };
        let id = obj.get("id").and_then(whole);
        if id.is_some_and(|id| id <= after_id) {
            continue;
        }
        obj.retain(|k, _| matches!(k.as_str(), "id" | "text" | "device" | "location" | "created_at"));
        let json = serde_json::to_vec(&obj).map_err(|e| PullError::BadResponse(e.to_string()))?;
        items.push(Item { id, json: json.into() });
    }
    items.sort_by_key(|i| (i.id.is_none(), i.id));
    items.dedup_by(|a, b| a.id.is_some() && a.id == b.id);
    Ok(Page { items, rows })
}

/// A JSON number that is a whole `i64` (`3` or `3.0`).
fn whole(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e18).map(|f| f as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_filtered_sorted_and_projected() {
        let body = br#"[{"id":5,"text":"b","device":"d","location":"l","created_at":"2026-01-01T00:00:00Z","extra":1},
                        {"id":2,"text":"a"},{"id":7,"text":"c"},{"id":5,"text":"b"}]"#;
        let page = parse(body, 2).unwrap();
        assert_eq!(page.rows, 4, "every row the provider sent, the repeat and the one at the cursor too");
        let items = page.items;
        assert_eq!(items.iter().map(|i| i.id).collect::<Vec<_>>(), vec![Some(5), Some(7)]);
        let v: Value = serde_json::from_slice(&items[0].json).unwrap();
        assert!(v.get("extra").is_none() && v["device"] == "d");
        assert!(matches!(parse(b"{}", 0), Err(PullError::BadResponse(_))));
    }

    #[test]
    fn items_without_a_whole_number_id_come_last_and_are_kept() {
        let body = br#"[{"id":"x","text":"a"},{"id":4.0,"text":"b"},7,{"id":2.5},{"text":"c"},{"id":3}]"#;
        let items = parse(body, 0).unwrap().items;
        assert_eq!(items.iter().map(|i| i.id).collect::<Vec<_>>(), [Some(3), Some(4), None, None, None, None]);
        let json: Vec<&[u8]> = items[2..].iter().map(|i| &i.json[..]).collect();
        assert_eq!(json, [&br#"{"id":"x","text":"a"}"#[..], b"7", br#"{"id":2.5}"#, br#"{"text":"c"}"#]);
        // Each kept once, under an id of its own that does not change from pull to pull.
        let ids: std::collections::BTreeSet<String> = items.iter().map(|i| i.msg_id("p")).collect();
        assert_eq!(ids.len(), 6);
        assert_eq!(parse(body, 0).unwrap().items[3].msg_id("p"), items[3].msg_id("p"));
        assert_eq!(items[0].msg_id("p"), "survey:p:3");
    }
}
