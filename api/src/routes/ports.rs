//! Ports: `GET /v1/ports/{unlocode}`, `GET /v1/ports?country=&q=&limit=&offset=`, `GET /v1/ports/nearest`
//! and `GET /v1/ports/countries`.

use crate::params::{self, Params};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, Query, State};
use sea_orm::sqlx::{self, PgPool, Row, postgres::PgRow};
use serde_json::{Value, json};
use tributary_broker::Kind;

const COLUMNS: &str = "unlocode, name, city, country, province, timezone, code, alias, regions, unlocs, lon, lat";

fn pool(s: &AppState) -> &PgPool {
    s.db.get_postgres_connection_pool()
}

fn internal(what: &'static str) -> impl FnOnce(sqlx::Error) -> ApiError {
    move |e| ApiError::Internal(anyhow::Error::new(e).context(what))
}

fn port(r: &PgRow) -> Value {
    let lon: Option<f64> = r.get("lon");
    let lat: Option<f64> = r.get("lat");
    json!({
        "unlocode": r.get::<String, _>("unlocode"),
        "name": r.get::<String, _>("name"),
        "city": r.get::<Option<String>, _>("city"),
        "country": r.get::<Option<String>, _>("country"),
        "province": r.get::<Option<String>, _>("province"),
        "timezone": r.get::<Option<String>, _>("timezone"),
        "code": r.get::<Option<String>, _>("code"),
        "alias": r.get::<Vec<String>, _>("alias"),
        "regions": r.get::<Vec<String>, _>("regions"),
        "unlocs": r.get::<Vec<String>, _>("unlocs"),
        "coordinates": lon.zip(lat).map(|(lon, lat)| json!([lon, lat])),
    })
}

/// One port.
pub async fn get(
    State(s): State<AppState>,
    Path(unlocode): Path<String>,
    Query(p): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    crate::sync::if_fresh(&s, &p, &[Kind::Port]).await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM ports WHERE unlocode = $1")))
        .bind(&unlocode)
        .fetch_optional(pool(&s))
        .await
        .map_err(internal("reading a port"))?
        .ok_or_else(|| ApiError::NotFound(format!("no port {unlocode:?}")))?;
    Ok(Json(port(&row)))
}

/// Ports by name, filtered by `country` and a name fragment `q`, with the total that match.
pub async fn list(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Json<Value>, ApiError> {
    let limit = params::limit(&p, 50, 1000)?;
    crate::sync::if_fresh(&s, &p, &[Kind::Port]).await?;
    let offset = match p.get("offset") {
        None => 0,
        Some(v) => v.parse::<i64>().ok().filter(|o| *o >= 0).ok_or_else(|| {
            ApiError::field("invalid_offset", "offset", format!("offset must be a whole number ≥ 0, got {v:?}"))
        })?,
    };
    let country = p.get("country");
    let q = p
        .get("q")
        .map(|q| format!("%{}%", q.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
    let filter = "($1::text IS NULL OR country = $1) AND ($2::text IS NULL OR lower(name) LIKE $2)";
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM ports WHERE {filter}")))
        .bind(country)
        .bind(&q)
        .fetch_one(pool(&s))
        .await
        .map_err(internal("counting ports"))?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM ports WHERE {filter} ORDER BY name, unlocode LIMIT $3 OFFSET $4"
    )))
    .bind(country)
    .bind(&q)
    .bind(limit as i64)
    .bind(offset)
    .fetch_all(pool(&s))
    .await
    .map_err(internal("listing ports"))?;
    Ok(Json(
        json!({"total": total, "limit": limit, "offset": offset, "ports": rows.iter().map(port).collect::<Vec<_>>()}),
    ))
}

fn coordinate(p: &Params, field: &'static str, range: f64) -> Result<f64, ApiError> {
    let code = if field == "lat" { "invalid_lat" } else { "invalid_lon" };
    let v = p.get(field).ok_or_else(|| ApiError::field(code, field, format!("{field} is required")))?;
    v.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && x.abs() <= range)
        .ok_or_else(|| ApiError::field(code, field, format!("{field} must be a number within ±{range}, got {v:?}")))
}

/// The ports nearest to (`lat`, `lon`), nearest first, with their distance in metres (great circle).
/// Answered by a GiST index on the earth position (cube/earthdistance), not a scan.
pub async fn nearest(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Json<Value>, ApiError> {
    let lat = coordinate(&p, "lat", 90.0)?;
    let lon = coordinate(&p, "lon", 180.0)?;
    let limit = params::limit(&p, 10, 1000)?;
    crate::sync::if_fresh(&s, &p, &[Kind::Port]).await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, earth_distance(ll_to_earth(lat, lon), ll_to_earth($1, $2)) AS distance_m
           FROM ports WHERE lat IS NOT NULL
          ORDER BY ll_to_earth(lat, lon) <-> ll_to_earth($1, $2) LIMIT $3"
    )))
    .bind(lat)
    .bind(lon)
    .bind(limit as i64)
    .fetch_all(pool(&s))
    .await
    .map_err(internal("finding nearest ports"))?;
    let ports: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut v = port(r);
            v["distance_m"] = json!(r.get::<f64, _>("distance_m"));
            v
        })
        .collect();
    Ok(Json(json!({"lat": lat, "lon": lon, "ports": ports})))
}

/// Ports per country, most first.
pub async fn countries(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Json<Value>, ApiError> {
    crate::sync::if_fresh(&s, &p, &[Kind::Port]).await?;
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT country, ports FROM port_countries ORDER BY ports DESC, country")
            .fetch_all(pool(&s))
            .await
            .map_err(internal("counting ports by country"))?;
    let list: Vec<Value> = rows.into_iter().map(|(c, n)| json!({"country": c, "ports": n})).collect();
    Ok(Json(json!({ "countries": list })))
}
