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
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tributary_broker::events::IndexDefinition;
use tributary_broker::kind::valid_key;
use tributary_broker::{Kind, codec, publish};
use tributary_store::entity::{index_points, indices};

/// Every index definition.
pub async fn list(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Json<Value>, ApiError> {
    crate::sync::if_fresh(&s, &p, &[Kind::Index]).await?;
    let rows = indices::Entity::find().order_by_asc(indices::Column::Name).all(&s.db).await?;
    let list: Vec<Value> =
        rows.into_iter().map(|r| json!({"name": r.name, "base": r.base, "weights": r.weights})).collect();
    Ok(Json(json!({"indices": list})))
}

/// One index with its levels, ascending; `limit` keeps the newest within `from`..`to`.
pub async fn get(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(p): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    let (from, to) = params::range(&p)?;
    let limit = params::limit(&p, 1000, 100_000)?;
    crate::sync::if_fresh(&s, &p, &[Kind::Index, Kind::Price]).await?;
    let def = indices::Entity::find_by_id(name.clone())
        .one(&s.db)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no index {name:?}")))?;
    let mut q = index_points::Entity::find().filter(index_points::Column::Name.eq(name.clone()));
    if let Some(f) = from {
        q = q.filter(index_points::Column::Ts.gte(f));
    }
    if let Some(t) = to {
        q = q.filter(index_points::Column::Ts.lte(t));
    }
    let mut rows = q.order_by_desc(index_points::Column::Ts).limit(limit).all(&s.db).await?;
    rows.reverse();
    let points: Vec<Value> = rows.into_iter().map(|r| json!({"ts": r.ts, "level": r.level, "ret": r.ret})).collect();
    Ok(Json(json!({"name": def.name, "base": def.base, "weights": def.weights, "seq": def.seq, "points": points})))
}

/// Defines or redefines an index.
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
        .map_err(|e| ApiError::Unavailable(format!("cannot publish to NATS: {e}")))?;
    let deadline = Instant::now() + s.write_wait();
    loop {
        let stored = indices::Entity::find_by_id(name.clone())
            .select_only()
            .column(indices::Column::Seq)
            .into_tuple::<i64>()
            .one(&s.db)
            .await?;
        if stored.is_some_and(|seq| seq >= ack.sequence as i64) {
            let Json(v) = get(State(s), Path(name), Query(Params::new())).await?;
            return Ok((StatusCode::OK, Json(v)).into_response());
        }
        if Instant::now() >= deadline {
            return Ok((
                StatusCode::ACCEPTED,
                Json(json!({"stream": ack.stream, "seq": ack.sequence, "status": "pending"})),
            )
                .into_response());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
