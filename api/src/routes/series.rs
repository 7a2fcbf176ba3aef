//! `GET /v1/series/price` and `GET /v1/series/price/{instrument}`.

use crate::params::{self, Params};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, Query, State};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::{Map, Value, json};
use tributary_store::entity::{price_points, price_series};

/// Every instrument with its point count and time span.
pub async fn list(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let rows = price_series::Entity::find().order_by_asc(price_series::Column::Instrument).all(&s.db).await?;
    let series: Vec<Value> = rows
        .into_iter()
        .map(|r| json!({"key": r.instrument, "points": r.points, "first_ts": r.first_ts, "last_ts": r.last_ts}))
        .collect();
    Ok(Json(json!({"kind": "price", "series": series})))
}

/// One instrument's points, ascending; `limit` keeps the newest within `from`..`to`.
pub async fn get(
    State(s): State<AppState>,
    Path(instrument): Path<String>,
    Query(p): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    let (from, to) = params::range(&p)?;
    let limit = params::limit(&p, 1000, 100_000)?;
    if price_series::Entity::find_by_id(instrument.clone()).one(&s.db).await?.is_none() {
        return Err(ApiError::NotFound(format!("no price series {instrument:?}")));
    }
    let mut q = price_points::Entity::find().filter(price_points::Column::Instrument.eq(instrument.clone()));
    if let Some(f) = from {
        q = q.filter(price_points::Column::Ts.gte(f));
    }
    if let Some(t) = to {
        q = q.filter(price_points::Column::Ts.lte(t));
    }
    let mut rows = q.order_by_desc(price_points::Column::Ts).limit(limit).all(&s.db).await?;
    rows.reverse();
    let points: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            let mut m = Map::new();
            m.insert("ts".into(), json!(r.ts));
            m.insert("value".into(), json!(r.price));
            m.insert("volume".into(), json!(r.volume));
            m.insert("ret".into(), json!(r.ret));
            if let Value::Object(d) = r.derived {
                m.extend(d);
            }
            Value::Object(m)
        })
        .collect();
    Ok(Json(json!({"kind": "price", "key": instrument, "points": points})))
}
