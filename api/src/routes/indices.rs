//! `GET /v1/indices`, `GET /v1/indices/{name}` and `PUT /v1/indices/{name}`.
//!
//! A PUT publishes the definition to `index.<name>` (every write goes through NATS); the processor
//! stores it and computes the index over existing history. The PUT waits, up to `api.write_wait_ms`,
//! for that commit and answers 200 with the index; past the wait it answers 202 with the sequence.

use crate::params::{self, Params};
use crate::{ApiError, AppState};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use std::time::{Duration, Instant};
use tributary_broker::events::IndexDefinition;
use tributary_broker::kind::valid_key;
use tributary_broker::{Kind, codec, publish};
use tributary_store::{Page, indices};
use utoipa::ToSchema;

/// A page of the index definitions.
#[derive(Serialize, ToSchema)]
pub struct Indices {
    /// By name.
    pub indices: Vec<IndexSummary>,
    /// The name to pass as `after` for the next page; null on the last one.
    pub next: Option<String>,
}

/// One index's definition.
#[derive(Serialize, ToSchema)]
pub struct IndexSummary {
    /// The level of the first index date.
    pub base: f64,
    /// The index.
    pub name: String,
    /// Weight per constituent instrument.
    #[schema(value_type = std::collections::BTreeMap<String, f64>)]
    pub weights: Value,
}

/// One index with its levels.
#[derive(Serialize, ToSchema)]
pub struct Index {
    /// The level of the first index date.
    pub base: f64,
    /// The index.
    pub name: String,
    /// Levels, ascending by ts.
    pub points: Vec<IndexPoint>,
    /// The sequence of the definition in force (in the INDICES stream).
    pub seq: i64,
    /// Weight per constituent instrument.
    #[schema(value_type = std::collections::BTreeMap<String, f64>)]
    pub weights: Value,
}

/// One level.
#[derive(Serialize, ToSchema)]
pub struct IndexPoint {
    /// The level; null where it is not a finite number (a weight of 0 over a price of 0, say).
    pub level: Option<f64>,
    /// The return from the previous level.
    pub ret: Option<f64>,
    /// When.
    pub ts: DateTime<Utc>,
}

/// A definition published that the processor had not stored within `api.write_wait_ms`.
#[derive(Serialize, ToSchema)]
pub struct Pending {
    /// Its sequence in the stream.
    pub seq: u64,
    /// Always `pending`.
    pub status: PendingStatus,
    /// The stream.
    pub stream: String,
}

/// `pending`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PendingStatus {
    /// Published, not stored yet.
    Pending,
}

/// A page of the index definitions, by name.
async fn definitions(s: &AppState, page: Page) -> Result<Indices, ApiError> {
    let rows = indices::list(&s.db, &page).await?;
    let next = params::next(&page, &rows, |r| &r.name);
    let list = rows.into_iter().map(|r| IndexSummary { base: r.base, name: r.name, weights: r.weights }).collect();
    Ok(Indices { indices: list, next })
}

fresh_read! {
    /// The index definitions, a page at a time.
    list: GET "/v1/indices", tag "indices", operation_id "listIndices", summary "List index definitions",
    params crate::openapi::Page, 200 "Definitions": Indices, waits for [Index], read by definitions
}

/// One index with its levels, ascending; `limit` keeps the newest within `from`..`to`.
#[utoipa::path(get, path = "/v1/indices/{name}", tag = "indices", operation_id = "getIndex",
    summary = "One index with its levels",
    params(
        ("name" = String, Path, description = "The index"),
        crate::openapi::Newest,
    ),
    responses(
        (status = 200, description = "The index", body = Index),
        crate::openapi::Lookup,
    ))]
pub async fn get(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(p): Query<Params>,
) -> Result<Json<Index>, ApiError> {
    let range = params::newest(&p, 1000, 100_000)?;
    crate::sync::if_fresh(&s, &p, &[Kind::Index, Kind::Price]).await?;
    let def =
        indices::definition(&s.db, &name).await?.ok_or_else(|| ApiError::NotFound(format!("no index {name:?}")))?;
    let rows = indices::levels(&s.db, &name, range).await?;
    let points = rows
        .into_iter()
        .map(|r| IndexPoint { level: Some(r.level).filter(|l| l.is_finite()), ret: r.ret, ts: r.ts })
        .collect();
    Ok(Json(Index { base: def.base, name: def.name, points, seq: def.seq, weights: def.weights }))
}

/// Defines or redefines an index.
#[utoipa::path(put, path = "/v1/indices/{name}", tag = "indices", operation_id = "putIndex",
    summary = "Define or redefine an index; it is computed over existing history",
    params(("name" = String, Path, min_length = 1, max_length = 128,
        pattern = "^[^.*>\\x00-\\x20\\x7f-\\xa0\u{1680}\u{2000}-\u{200a}\u{2028}\u{2029}\u{202f}\u{205f}\u{3000}]+$",
        description = "The index: one token (no spaces, '.', '*' or '>'), at most 128 characters")),
    request_body(content = ref("#/components/schemas/IndexDefinition"), content_type = "application/json"),
    responses(
        (status = 200, description = "Stored and computed", body = Index),
        (status = 202, description = "Published; the processor has not committed it yet", body = Pending),
        crate::openapi::Publishing,
    ))]
pub async fn put(State(s): State<AppState>, Path(name): Path<String>, body: Body) -> Result<Response, ApiError> {
    if !valid_key(&name) {
        return Err(ApiError::field(
            "invalid_name",
            "name",
            format!("{name:?} is not a valid index name (one token, no spaces, '.', '*' or '>')"),
        ));
    }
    let bytes = super::body(&s, body).await?;
    let def: IndexDefinition = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad("invalid_index", format!("invalid index definition: {e}")))?;
    def.validate().map_err(|e| ApiError::bad("invalid_index", e))?;
    let ack = publish::publish_one(&s.js, Kind::Index.subject(&name), publish::headers(None, codec::JSON), bytes)
        .await
        .map_err(|e| super::not_published("the definition with its headers", e))?;
    let deadline = Instant::now() + s.write_wait();
    loop {
        let stored = indices::stored_seq(s.pool(), &name).await?;
        if stored.is_some_and(|seq| seq >= ack.sequence as i64) {
            return Ok((StatusCode::OK, get(State(s), Path(name), Query(Params::new())).await?).into_response());
        }
        if Instant::now() >= deadline {
            return Ok((
                StatusCode::ACCEPTED,
                Json(Pending { seq: ack.sequence, status: PendingStatus::Pending, stream: ack.stream }),
            )
                .into_response());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
