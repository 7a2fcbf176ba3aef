//! Ports: `GET /v1/ports/{unlocode}`, `GET /v1/ports?country=&q=&limit=&offset=`, `GET /v1/ports/nearest`
//! and `GET /v1/ports/countries`.

use crate::params::{self, Params};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Serialize;
use tributary_broker::Kind;
use tributary_store::ports;
use utoipa::ToSchema;

/// A port with its distance.
#[derive(Serialize, ToSchema)]
pub struct NearPort {
    /// Great-circle distance from the asked coordinate, in metres.
    #[schema(minimum = 0)]
    pub distance_m: f64,
    /// The port.
    #[serde(flatten)]
    pub port: ports::Port,
}

/// A page of ports.
#[derive(Serialize, ToSchema)]
pub struct PortPage {
    /// The page size asked for.
    pub limit: u64,
    /// Skipped.
    pub offset: i64,
    /// By name.
    pub ports: Vec<ports::Port>,
    /// How many match.
    pub total: i64,
}

/// The nearest ports.
#[derive(Serialize, ToSchema)]
pub struct NearestPorts {
    /// The latitude asked for.
    pub lat: f64,
    /// The longitude asked for.
    pub lon: f64,
    /// Nearest first.
    pub ports: Vec<NearPort>,
}

/// Ports per country.
#[derive(Serialize, ToSchema)]
pub struct Countries {
    /// Most ports first (then by name), at most `limit` of them.
    pub countries: Vec<ports::CountryCount>,
    /// How many countries have ports: more than listed when `limit` cut the list.
    pub total: i64,
}

/// One port.
#[utoipa::path(get, path = "/v1/ports/{unlocode}", tag = "ports", operation_id = "getPort",
    summary = "One port; missing fields are null",
    params(("unlocode" = String, Path, description = "The UN/LOCODE"), crate::openapi::Fresh),
    responses(
        (status = 200, description = "The port", body = ports::Port),
        crate::openapi::Lookup,
    ))]
pub async fn get(
    State(s): State<AppState>,
    Path(unlocode): Path<String>,
    Query(p): Query<Params>,
) -> Result<Json<ports::Port>, ApiError> {
    crate::sync::if_fresh(&s, &p, &[Kind::Port]).await?;
    let port =
        ports::get(s.pool(), &unlocode).await?.ok_or_else(|| ApiError::NotFound(format!("no port {unlocode:?}")))?;
    Ok(Json(port))
}

/// Ports by name, filtered by `country` and a name fragment `q`, with the total that match.
#[utoipa::path(get, path = "/v1/ports", tag = "ports", operation_id = "listPorts",
    summary = "Ports by name, filtered by country and a name fragment, with the total",
    params(
        ("country" = Option<String>, Query, description = "Exact country name."),
        ("q" = Option<String>, Query, description = "A fragment of the name (case-insensitive)."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 50."),
        ("offset" = Option<i64>, Query, minimum = 0, description = "Skip this many (default 0)."),
        crate::openapi::Fresh,
    ),
    responses(
        (status = 200, description = "A page of ports", body = PortPage),
        crate::openapi::Stale,
    ))]
pub async fn list(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Json<PortPage>, ApiError> {
    let limit = params::limit(&p, 50, 1000)?;
    let offset = match p.get("offset") {
        None => 0,
        Some(v) => v.parse::<i64>().ok().filter(|o| *o >= 0).ok_or_else(|| {
            ApiError::field("invalid_offset", "offset", format!("offset must be a whole number ≥ 0, got {v:?}"))
        })?,
    };
    crate::sync::if_fresh(&s, &p, &[Kind::Port]).await?;
    let filter = ports::PortFilter { country: p.get("country").cloned(), name_contains: p.get("q").cloned() };
    let page = ports::list(s.pool(), &filter, limit as i64, offset).await?;
    Ok(Json(PortPage { limit, offset, ports: page.ports, total: page.total }))
}

fn coordinate(p: &Params, field: &'static str, range: f64) -> Result<f64, ApiError> {
    let code = if field == "lat" { "invalid_lat" } else { "invalid_lon" };
    let v = p.get(field).ok_or_else(|| ApiError::field(code, field, format!("{field} is required")))?;
    // To a billionth of a degree (a tenth of a millimetre): a subnormal such as 5e-324 would underflow
    // PostgreSQL's earth distance arithmetic (an error, not a zero).
    v.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && x.abs() <= range)
        .map(|x| (x * 1e9).round() / 1e9 + 0.0)
        .ok_or_else(|| ApiError::field(code, field, format!("{field} must be a number within ±{range}, got {v:?}")))
}

/// The ports nearest to (`lat`, `lon`), nearest first, with their distance in metres (great circle).
/// Answered by a GiST index on the earth position (cube/earthdistance), not a scan.
#[utoipa::path(get, path = "/v1/ports/nearest", tag = "ports", operation_id = "nearestPorts",
    summary = "The ports nearest to a coordinate, nearest first, with distance_m (great circle, metres)",
    params(
        ("lat" = f64, Query, minimum = -90, maximum = 90, description = "Latitude, -90..90."),
        ("lon" = f64, Query, minimum = -180, maximum = 180, description = "Longitude, -180..180."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 10."),
        crate::openapi::Fresh,
    ),
    responses(
        (status = 200, description = "The nearest ports", body = NearestPorts),
        crate::openapi::Stale,
    ))]
pub async fn nearest(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Json<NearestPorts>, ApiError> {
    let lat = coordinate(&p, "lat", 90.0)?;
    let lon = coordinate(&p, "lon", 180.0)?;
    let limit = params::limit(&p, 10, 1000)?;
    crate::sync::if_fresh(&s, &p, &[Kind::Port]).await?;
    let rows = ports::nearest(s.pool(), lat, lon, limit as i64).await?;
    let ports = rows.into_iter().map(|r| NearPort { distance_m: r.distance_m, port: r.port }).collect();
    Ok(Json(NearestPorts { lat, lon, ports }))
}

/// The port counts of the `top` countries with the most ports, and how many countries have ports. (Every
/// country was listed: a country is any text an event names, so the list had no bound.)
async fn per_country(s: &AppState, top: params::Top) -> Result<Countries, ApiError> {
    let (countries, total) = ports::countries(s.pool(), top.0 as i64).await?;
    Ok(Countries { countries, total })
}

fresh_read! {
    /// Ports per country, most first; `limit` (default 1000) of them, `total` says how many there are.
    countries: GET "/v1/ports/countries", tag "ports", operation_id "portCountries",
    summary "Ports per country, most first",
    params crate::openapi::Top, 200 "Countries": Countries, waits for [Port], read by per_country
}
