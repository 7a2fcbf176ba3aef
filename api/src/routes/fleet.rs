//! Fleet: `GET /v1/fleet/plan` (the stored optimal assignment) and `GET /v1/fleet/scores` (one score,
//! explained).

use crate::error::ErrorBody;
use crate::params::Params;
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use sea_orm::sqlx::{self, Row};
use serde::Serialize;
use tributary_broker::Kind;
use utoipa::ToSchema;

/// The stored plan.
#[derive(Serialize, ToSchema)]
pub struct FleetPlan {
    /// Every assignment, best first.
    pub assignments: Vec<Assignment>,
    /// When it was computed; null before the first.
    pub computed_at: Option<DateTime<Utc>>,
    /// The maximum total suitability score over the live drivers and shipments.
    pub total_score: f64,
    /// Drivers without a shipment.
    pub unassigned_drivers: Vec<Driver>,
    /// Shipments without a driver.
    pub unassigned_shipments: Vec<Shipment>,
    /// Bumped by every recompute; 0 before the first.
    #[schema(minimum = 0)]
    pub version: i64,
}

/// One shipment given to one driver.
#[derive(Serialize, ToSchema)]
pub struct Assignment {
    /// The shipment's address.
    pub address: String,
    /// The driver's name.
    pub driver: String,
    /// The driver's id.
    pub driver_id: String,
    /// The suitability score.
    pub score: f64,
    /// The shipment's id.
    pub shipment_id: String,
}

/// A driver.
#[derive(Serialize, ToSchema)]
pub struct Driver {
    /// The name.
    pub driver: String,
    /// The id.
    pub driver_id: String,
}

/// A shipment.
#[derive(Serialize, ToSchema)]
pub struct Shipment {
    /// The address.
    pub address: String,
    /// The id.
    pub shipment_id: String,
}

/// One shipment's score for one driver, explained.
#[derive(Serialize, ToSchema)]
pub struct FleetScore {
    /// The shipment's address.
    pub address: String,
    /// `1.5 × vowels` (even street) or `consonants` (odd street).
    pub base: f64,
    /// Whether the lengths share a factor other than 1 (gcd > 1), which adds 50%.
    pub common_factor: bool,
    /// Consonants in the driver's name.
    pub consonants: u64,
    /// The driver's name.
    pub driver: String,
    /// The driver's id.
    pub driver_id: String,
    /// The driver name's length in characters.
    pub driver_length: u64,
    /// The greatest common divisor of the two lengths.
    pub gcd: u64,
    /// The suitability score.
    pub score: f64,
    /// The shipment's id.
    pub shipment_id: String,
    /// The street name taken from the address.
    pub street: String,
    /// Its length in characters.
    pub street_length: u64,
    /// Whether that length is even.
    pub street_length_even: bool,
    /// Vowels in the driver's name.
    pub vowels: u64,
}

fn internal(what: &'static str) -> impl FnOnce(sqlx::Error) -> ApiError {
    move |e| ApiError::Internal(anyhow::Error::new(e).context(what))
}

/// The plan: total, version, every assignment (best first) and who is left without one. Read in one
/// snapshot, so the parts always belong to the same version.
#[utoipa::path(get, path = "/v1/fleet/plan", tag = "fleet", operation_id = "getFleetPlan",
    summary = "The assignment of shipments to drivers that maximises the total suitability score",
    params(crate::openapi::Fresh),
    responses(
        (status = 200, description = "The plan", body = FleetPlan),
        (status = 504, description = "A fresh read's wait ran out", body = ErrorBody),
    ))]
pub async fn plan(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Json<FleetPlan>, ApiError> {
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
    let assignments: Vec<Assignment> = sqlx::query(
        "SELECT a.shipment_id, s.address, a.driver_id, d.name, a.score FROM fleet_assignments a
           JOIN fleet_shipments s ON s.id = a.shipment_id JOIN fleet_drivers d ON d.id = a.driver_id
          ORDER BY a.score DESC, a.shipment_id",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(internal("reading assignments"))?
    .iter()
    .map(|r| Assignment {
        shipment_id: r.get::<String, _>(0),
        address: r.get::<String, _>(1),
        driver_id: r.get::<String, _>(2),
        driver: r.get::<String, _>(3),
        score: r.get::<f64, _>(4),
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
    Ok(Json(FleetPlan {
        assignments,
        computed_at,
        total_score: total,
        unassigned_drivers: drivers.into_iter().map(|(driver_id, driver)| Driver { driver, driver_id }).collect(),
        unassigned_shipments: shipments
            .into_iter()
            .map(|(shipment_id, address)| Shipment { address, shipment_id })
            .collect(),
        version,
    }))
}

/// One shipment's score for one driver, with the lengths, letter counts and common factor behind it.
#[utoipa::path(get, path = "/v1/fleet/scores", tag = "fleet", operation_id = "getFleetScore",
    summary = "One shipment's suitability score for one driver, explained",
    params(
        ("shipment" = String, Query, min_length = 1, description = "A shipment id"),
        ("driver" = String, Query, min_length = 1, description = "A driver id"),
        crate::openapi::Fresh,
    ),
    responses(
        (status = 200, description = "The score with its parts", body = FleetScore),
        (status = 404, description = "No such shipment or driver", body = ErrorBody),
        (status = 504, description = "A fresh read's wait ran out", body = ErrorBody),
    ))]
pub async fn scores(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Json<FleetScore>, ApiError> {
    let id = |f: &'static str| {
        p.get(f)
            .filter(|v| !v.is_empty())
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
    Ok(Json(FleetScore {
        address,
        base: e.base,
        common_factor: e.common_factor,
        consonants: e.consonants,
        driver: name,
        driver_id: driver.clone(),
        driver_length: e.driver_length,
        gcd: e.gcd,
        score: e.score,
        shipment_id: shipment.clone(),
        street: e.street,
        street_length: e.street_length,
        street_length_even: e.street_length_even,
        vowels: e.vowels,
    }))
}
