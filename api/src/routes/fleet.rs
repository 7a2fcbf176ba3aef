//! Fleet: `GET /v1/fleet/plan` (the stored optimal assignment) and `GET /v1/fleet/scores` (one score,
//! explained).

use crate::params::Params;
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use sea_orm::sqlx::{self, Row};
use serde_json::{Value, json};
use tributary_broker::Kind;

fn internal(what: &'static str) -> impl FnOnce(sqlx::Error) -> ApiError {
    move |e| ApiError::Internal(anyhow::Error::new(e).context(what))
}

/// The plan: total, version, every assignment (best first) and who is left without one. Read in one
/// snapshot, so the parts always belong to the same version.
pub async fn plan(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Json<Value>, ApiError> {
    crate::sync::if_fresh(&s, &p, &[Kind::Fleet]).await?;
    let mut tx = s.db.get_postgres_connection_pool().begin().await.map_err(internal("reading the plan"))?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(internal("reading the plan"))?;
    let head: Option<(i64, f64, DateTime<Utc>)> =
        sqlx::query_as("SELECT version, total_score, computed_at FROM fleet_plan")
            .fetch_optional(&mut *tx)
            .await
            .map_err(internal("reading the plan"))?;
    let assignments: Vec<Value> = sqlx::query(
        "SELECT a.shipment_id, s.address, a.driver_id, d.name, a.score FROM fleet_assignments a
           JOIN fleet_shipments s ON s.id = a.shipment_id JOIN fleet_drivers d ON d.id = a.driver_id
          ORDER BY a.score DESC, a.shipment_id",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(internal("reading assignments"))?
    .iter()
    .map(|r| {
        json!({
            "shipment_id": r.get::<String, _>(0), "address": r.get::<String, _>(1),
            "driver_id": r.get::<String, _>(2), "driver": r.get::<String, _>(3), "score": r.get::<f64, _>(4),
        })
    })
    .collect();
    let unassigned = |sql: &'static str| sqlx::query_as::<_, (String, String)>(sql);
    let shipments = unassigned(
        "SELECT id, address FROM fleet_shipments s WHERE address IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM fleet_assignments a WHERE a.shipment_id = s.id) ORDER BY id",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(internal("reading unassigned shipments"))?;
    let drivers = unassigned(
        "SELECT id, name FROM fleet_drivers d WHERE name IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM fleet_assignments a WHERE a.driver_id = d.id) ORDER BY id",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(internal("reading unassigned drivers"))?;
    let (version, total, computed_at) = head.map_or((0, 0.0, None), |(v, t, c)| (v, t, Some(c)));
    Ok(Json(json!({
        "total_score": total,
        "version": version,
        "computed_at": computed_at,
        "assignments": assignments,
        "unassigned_shipments": shipments.into_iter().map(|(id, a)| json!({"shipment_id": id, "address": a})).collect::<Vec<_>>(),
        "unassigned_drivers": drivers.into_iter().map(|(id, n)| json!({"driver_id": id, "driver": n})).collect::<Vec<_>>(),
    })))
}

/// One shipment's score for one driver, with the lengths, letter counts and common factor behind it.
pub async fn scores(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Json<Value>, ApiError> {
    let id = |f: &'static str| {
        p.get(f)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| ApiError::field("missing_param", f, format!("{f} is required: the id of a {f}")))
    };
    let (shipment, driver) = (id("shipment")?, id("driver")?);
    crate::sync::if_fresh(&s, &p, &[Kind::Fleet]).await?;
    let pool = s.db.get_postgres_connection_pool();
    let address: Option<String> =
        sqlx::query_scalar("SELECT address FROM fleet_shipments WHERE id = $1 AND address IS NOT NULL")
            .bind(shipment)
            .fetch_optional(pool)
            .await
            .map_err(internal("reading a shipment"))?;
    let name: Option<String> = sqlx::query_scalar("SELECT name FROM fleet_drivers WHERE id = $1 AND name IS NOT NULL")
        .bind(driver)
        .fetch_optional(pool)
        .await
        .map_err(internal("reading a driver"))?;
    let address = address.ok_or_else(|| ApiError::NotFound(format!("no shipment {shipment:?}")))?;
    let name = name.ok_or_else(|| ApiError::NotFound(format!("no driver {driver:?}")))?;
    let e = tributary_fleet::explain(&address, &name);
    let mut v = serde_json::to_value(&e).map_err(|e| ApiError::Internal(e.into()))?;
    v["shipment_id"] = json!(shipment);
    v["address"] = json!(address);
    v["driver_id"] = json!(driver);
    v["driver"] = json!(name);
    Ok(Json(v))
}
