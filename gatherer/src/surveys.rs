//! A survey provider, as the original system had them: `POST /api/v1/reporter` takes
//! `{"text", "device", "location"}` and answers 201 with the stored item; `GET /api/v1/reporter?limit=&device=
//! &location=&after_id=` exports items in ascending id (exact-match filters, limit 100 by default, at most
//! 1000). Errors are 400 with `{"error": {"code", "message", "field"?}}`.
//!
//! It keeps its items in memory (a simulator, not a store): a [`Provider`] outlives its HTTP server, so a
//! test can take the server down and bring it back with the same items. `slow` delays every export, to
//! show a provider that misses its deadline.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One stored item.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReporterItem {
    /// Ascending from 1.
    pub id: i64,
    /// The text.
    pub text: String,
    /// The device.
    pub device: String,
    /// The location.
    pub location: String,
    /// When it was stored (RFC 3339).
    pub created_at: String,
}

#[derive(Default)]
struct Inner {
    items: Vec<ReporterItem>,
    slow: Option<Duration>,
}

/// A provider's items. Cheap to clone.
#[derive(Clone, Default)]
pub struct Provider {
    inner: Arc<Mutex<Inner>>,
}

impl Provider {
    /// An empty provider.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores an item; returns it with its id.
    pub fn post(&self, text: &str, device: &str, location: &str) -> ReporterItem {
        let mut inner = self.inner.lock().expect("provider store");
        let item = ReporterItem {
            id: inner.items.len() as i64 + 1,
            text: text.to_owned(),
            device: device.to_owned(),
            location: location.to_owned(),
            created_at: tributary_broker::ts::Ts::new(chrono::Utc::now()).to_string(),
        };
        inner.items.push(item.clone());
        item
    }

    /// Delays every export by `d` (or not, with `None`).
    pub fn set_slow(&self, d: Option<Duration>) {
        self.inner.lock().expect("provider store").slow = d;
    }

    fn export(&self, after: i64, limit: usize, device: Option<&str>, location: Option<&str>) -> Vec<ReporterItem> {
        let inner = self.inner.lock().expect("provider store");
        inner
            .items
            .iter()
            .filter(|i| i.id > after)
            .filter(|i| device.is_none_or(|d| i.device == d))
            .filter(|i| location.is_none_or(|l| i.location == l))
            .take(limit)
            .cloned()
            .collect()
    }
}

/// Serves `provider` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, provider: Provider, shutdown: CancellationToken) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/api/v1/reporter", get(export).post(post))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such route", None) })
        .with_state(provider);
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

fn error(status: StatusCode, code: &str, message: impl Into<String>, field: Option<&str>) -> Response {
    let mut e = json!({"code": code, "message": message.into()});
    if let Some(f) = field {
        e["field"] = f.into();
    }
    (status, Json(json!({ "error": e }))).into_response()
}

async fn post(State(p): State<Provider>, body: axum::body::Bytes) -> Response {
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_json", format!("body is not JSON: {e}"), None),
    };
    let mut fields = Vec::new();
    for f in ["text", "device", "location"] {
        match v.get(f).and_then(Value::as_str) {
            Some(s) if !s.trim().is_empty() => fields.push(s.to_owned()),
            Some(_) => {
                return error(StatusCode::BAD_REQUEST, "invalid_field", format!("{f} must not be blank"), Some(f));
            }
            None => {
                return error(StatusCode::BAD_REQUEST, "invalid_field", format!("{f} is required (a string)"), Some(f));
            }
        }
    }
    let item = p.post(&fields[0], &fields[1], &fields[2]);
    (StatusCode::CREATED, Json(item)).into_response()
}

async fn export(State(p): State<Provider>, Query(q): Query<HashMap<String, String>>) -> Response {
    // Err: the parameter at fault and what is wrong with it.
    let whole = |f: &'static str, default: i64, min: i64, max: i64| -> Result<i64, (&'static str, String)> {
        match q.get(f) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| (f, format!("{f} must be a whole number from {min} to {max}, got {v:?}"))),
        }
    };
    let (limit, after) = match (whole("limit", 100, 1, 1000), whole("after_id", 0, 0, i64::MAX)) {
        (Ok(l), Ok(a)) => (l, a),
        (Err((f, why)), _) | (_, Err((f, why))) => {
            return error(StatusCode::BAD_REQUEST, "invalid_param", why, Some(f));
        }
    };
    let slow = p.inner.lock().expect("provider store").slow;
    if let Some(d) = slow {
        tokio::time::sleep(d).await;
    }
    Json(p.export(after, limit as usize, q.get("device").map(String::as_str), q.get("location").map(String::as_str)))
        .into_response()
}

/// Posts a random item every `every` until `shutdown` (the demo's traffic).
pub async fn generate(provider: Provider, every: Duration, seed: u64, shutdown: CancellationToken) {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    const TEXTS: [&str; 6] = ["road closed", "power outage", "water leak", "all clear", "heavy traffic", "flooding"];
    const DEVICES: [&str; 3] = ["android", "ios", "web"];
    const LOCATIONS: [&str; 4] = ["north", "south", "east", "west"];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let pick = |r: &mut StdRng, xs: &[&'static str]| xs[r.random_range(0..xs.len())];
        let (t, d, l) = (pick(&mut rng, &TEXTS), pick(&mut rng, &DEVICES), pick(&mut rng, &LOCATIONS));
        provider.post(t, d, l);
    }
}
