//! Fleet: `GET /v1/fleet/plan` (the stored optimal assignment) and `GET /v1/fleet/scores` (one score,
//! explained).

use crate::params::Params;
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tributary_broker::Kind;
use tributary_store::fleet;
use utoipa::ToSchema;

/// The stored plan.
#[derive(Serialize, ToSchema)]
pub struct FleetPlan {
    /// Every assignment, best first.
    pub assignments: Vec<fleet::Assignment>,
    /// When it was computed; null before the first.
    pub computed_at: Option<DateTime<Utc>>,
    /// The maximum total suitability score over the live drivers and shipments.
    pub total_score: f64,
    /// Drivers without a shipment.
    pub unassigned_drivers: Vec<fleet::UnassignedDriver>,
    /// Shipments without a driver.
    pub unassigned_shipments: Vec<fleet::UnassignedShipment>,
    /// Bumped by every recompute; 0 before the first.
    #[schema(minimum = 0)]
    pub version: i64,
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

/// The stored plan, in one snapshot.
async fn stored_plan(s: &AppState, _: ()) -> Result<FleetPlan, ApiError> {
    let plan = fleet::plan_snapshot(s.pool()).await?;
    let (version, total, computed_at) =
        plan.head.map_or((0, 0.0, None), |h| (h.version, h.total_score, Some(h.computed_at)));
    Ok(FleetPlan {
        assignments: plan.assignments,
        computed_at,
        total_score: total,
        unassigned_drivers: plan.unassigned_drivers,
        unassigned_shipments: plan.unassigned_shipments,
        version,
    })
}

fresh_read! {
    /// The plan: total, version, every assignment (best first) and who is left without one. Read in one
    /// snapshot, so the parts always belong to the same version.
    plan: GET "/v1/fleet/plan", tag "fleet", operation_id "getFleetPlan",
    summary "The assignment of shipments to drivers that maximises the total suitability score",
    params crate::openapi::Fresh, 200 "The plan": FleetPlan, waits for [Fleet], read by stored_plan
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
        crate::openapi::Lookup,
    ))]
pub async fn scores(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Json<FleetScore>, ApiError> {
    let id = |f: &'static str| {
        p.get(f)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::field("missing_param", f, format!("{f} is required: the id of a {f}")))
    };
    let (shipment, driver) = (id("shipment")?, id("driver")?);
    crate::sync::if_fresh(&s, &p, &[Kind::Fleet]).await?;
    let address = fleet::shipment_address(s.pool(), shipment).await?;
    let name = fleet::driver_name(s.pool(), driver).await?;
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
