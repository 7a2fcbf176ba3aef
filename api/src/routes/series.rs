//! `GET /v1/series/price` and `GET /v1/series/price/{instrument}`.

use crate::params::{self, Params};
use crate::{ApiError, AppState};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use tributary_broker::Kind;
use tributary_store::{Page, prices};
use utoipa::ToSchema;

/// The kind of a price series.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PriceKind {
    /// Prices.
    Price,
}

/// A page of the price instruments.
#[derive(Serialize, ToSchema)]
pub struct SeriesList {
    /// Always `price`.
    pub kind: PriceKind,
    /// The key to pass as `after` for the next page; null on the last one.
    pub next: Option<String>,
    /// One entry per instrument, by key.
    pub series: Vec<SeriesInfo>,
}

/// One instrument's extent.
#[derive(Serialize, ToSchema)]
pub struct SeriesInfo {
    /// Its first point's time.
    pub first_ts: DateTime<Utc>,
    /// The instrument.
    pub key: String,
    /// Its last point's time.
    pub last_ts: DateTime<Utc>,
    /// How many points it has.
    #[schema(minimum = 0)]
    pub points: i64,
}

/// One instrument's points (the body is written by hand, see [`get`]; this is its shape).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct PriceSeries {
    /// The instrument.
    pub key: String,
    /// Always `price`.
    pub kind: PriceKind,
    /// The points, ascending by ts.
    pub points: Vec<PricePoint>,
}

/// One point: ts, value, volume, ret and one field per configured window (sma_20, ema_12, vol_20, ...);
/// null where undefined.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct PricePoint {
    /// When.
    pub ts: DateTime<Utc>,
    /// The price.
    pub value: f64,
    /// The traded volume, if known.
    pub volume: Option<f64>,
    /// The return from the previous point.
    pub ret: Option<f64>,
    /// The derived values, by window name.
    #[serde(flatten)]
    pub derived: BTreeMap<String, Option<f64>>,
}

/// A page of the instruments' extents, by key.
async fn instruments(s: &AppState, page: Page) -> Result<SeriesList, ApiError> {
    let rows = prices::list_series(&s.db, &page).await?;
    let next = params::next(&page, &rows, |r| &r.instrument);
    let series = rows
        .into_iter()
        .map(|r| SeriesInfo { first_ts: r.first_ts, key: r.instrument, last_ts: r.last_ts, points: r.points })
        .collect();
    Ok(SeriesList { kind: PriceKind::Price, next, series })
}

fresh_read! {
    /// The instruments with their point counts and time spans, a page at a time.
    list: GET "/v1/series/price", tag "series", operation_id "listPriceSeries", summary "List price instruments",
    params crate::openapi::Page, 200 "Instruments": SeriesList, waits for [Price], read by instruments
}

/// One instrument's points, ascending; `limit` keeps the newest within `from`..`to`.
///
/// The hot read: served from the [`crate::SeriesCache`] until a commit changes the series (a fresh read
/// always reads the table); otherwise one query, and the body written straight from the rows (the
/// derived values' jsonb text is spliced in as PostgreSQL prints it, never parsed), so a point costs no
/// JSON tree.
#[utoipa::path(get, path = "/v1/series/price/{instrument}", tag = "series", operation_id = "getPriceSeries",
    summary = "Points of one instrument with derived values, ascending by ts",
    description = "`limit` keeps the newest points within from..to.",
    params(
        ("instrument" = String, Path, description = "The instrument"),
        crate::openapi::Newest,
    ),
    responses(
        (status = 200, description = "The series", body = PriceSeries),
        crate::openapi::Lookup,
    ))]
pub async fn get(
    State(s): State<AppState>,
    Path(instrument): Path<String>,
    Query(p): Query<Params>,
) -> Result<Response, ApiError> {
    let range = params::newest(&p, 1000, 100_000)?;
    let key = (range.from, range.to, range.limit as u64);
    let cache = (!crate::sync::fresh(&p)?).then_some(&s.series_cache);
    if let Some(body) = cache.and_then(|c| c.get(&instrument, &key)) {
        return Ok(json(body));
    }
    // Taken before the query: a commit notified after it keeps this body out of the cache.
    let ticket = cache.and_then(|c| c.ticket());
    crate::sync::if_fresh(&s, &p, &[Kind::Price]).await?;
    let rows = prices::read_points(s.pool(), &instrument, range).await?;
    if rows.is_empty() && !prices::series_exists(&s.db, &instrument).await? {
        return Err(ApiError::NotFound(format!("no price series {instrument:?}")));
    }
    let mut body = String::with_capacity(64 + rows.len() * 256);
    body.push_str(r#"{"kind":"price","key":"#);
    body.push_str(&serde_json::to_string(&instrument).map_err(anyhow::Error::from)?);
    body.push_str(r#","points":["#);
    for (i, prices::PointText { ts, price, volume, ret, derived }) in rows.iter().rev().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let _ = write!(
            body,
            r#"{{"ts":"{}","value":{},"volume":{},"ret":{}"#,
            ts.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            number(Some(*price)),
            number(*volume),
            number(*ret)
        );
        // derived is a JSON object: splice its members in.
        let inner = derived.trim().trim_start_matches('{').trim_end_matches('}').trim();
        if !inner.is_empty() {
            body.push(',');
            body.push_str(inner);
        }
        body.push('}');
    }
    body.push_str("]}");
    let body = Bytes::from(body);
    if let (Some(c), Some(t)) = (cache, ticket) {
        c.put(&instrument, key, body.clone(), t);
    }
    Ok(json(body))
}

fn json(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A JSON number or null (values stored are always finite).
fn number(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => serde_json::to_string(&x).unwrap_or_else(|_| "null".into()),
        _ => "null".into(),
    }
}
