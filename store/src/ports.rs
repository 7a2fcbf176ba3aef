//! Ports: owns `ports` (the latest version of each port, by UN/LOCODE) and `port_countries` (ports per
//! country, always equal to a `GROUP BY` over `ports`).
//!
//! - Writes, in the processor's transaction (the ports' locks already held): [`stored_versions`] of the
//!   batch's ports, [`upsert`] newer ones ([`PortUpsert`]) and [`move_country_counts`] by the difference.
//! - Reads, for the API, as [`Port`] rows: [`get`] one, [`list`] a page by a [`PortFilter`] with the
//!   total that match ([`PortPage`]), the [`nearest`] to a place ([`NearPort`]), and the per-country
//!   counts ([`countries`], [`CountryCount`]).

use crate::Tx;
use crate::arrays::Arrays;
use sea_orm::sqlx::{self, PgPool, Row, postgres::PgRow};
use serde::Serialize;
use std::collections::BTreeMap;

/// A port's stored sequence and country, as a batch compares its versions with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersion {
    /// The port's UN/LOCODE.
    pub unlocode: String,
    /// The stream sequence of the stored version.
    pub seq: i64,
    /// The stored country.
    pub country: Option<String>,
}

/// The stored versions of the ports `codes` (those stored; in no particular order).
pub async fn stored_versions(tx: &mut Tx, codes: &[&str]) -> Result<Vec<StoredVersion>, sqlx::Error> {
    let rows = sqlx::query_as::<_, (String, i64, Option<String>)>(
        "SELECT unlocode, seq, country FROM ports WHERE unlocode = ANY($1)",
    )
    .bind(codes)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|(unlocode, seq, country)| StoredVersion { unlocode, seq, country }).collect())
}

/// One version of a port to store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PortUpsert<'a> {
    /// The UN/LOCODE.
    pub unlocode: &'a str,
    /// The name.
    pub name: &'a str,
    /// The city.
    pub city: Option<&'a str>,
    /// The country.
    pub country: Option<&'a str>,
    /// The province.
    pub province: Option<&'a str>,
    /// The time zone.
    pub timezone: Option<&'a str>,
    /// The port code.
    pub code: Option<&'a str>,
    /// Other names.
    pub alias: &'a [String],
    /// Regions.
    pub regions: &'a [String],
    /// Related UN/LOCODEs.
    pub unlocs: &'a [String],
    /// Longitude.
    pub lon: Option<f64>,
    /// Latitude.
    pub lat: Option<f64>,
    /// The stream sequence of the message.
    pub seq: i64,
}

/// Upserts `rows` (already known to be newer than what is stored).
pub async fn upsert(tx: &mut Tx, rows: &[PortUpsert<'_>]) -> Result<(), sqlx::Error> {
    // The lists go as JSON text, one per port (PostgreSQL has no arrays of arrays of differing lengths).
    let json = |list: &[String]| serde_json::to_string(list).unwrap_or_else(|_| "[]".into());
    let args = Arrays::of(rows).column(|p| p.unlocode).column(|p| p.name).column(|p| p.city).column(|p| p.country);
    let args = args.column(|p| p.province).column(|p| p.timezone).column(|p| p.code);
    let args = args.column(|p| json(p.alias)).column(|p| json(p.regions)).column(|p| json(p.unlocs));
    let args = args.column(|p| p.lon).column(|p| p.lat).column(|p| p.seq);
    sqlx::query_with(
        "INSERT INTO ports (unlocode, name, city, country, province, timezone, code, alias, regions, unlocs, lon, lat, seq)
         SELECT u, n, ci, co, pr, tz, cd,
                ARRAY(SELECT jsonb_array_elements_text(al::jsonb)), ARRAY(SELECT jsonb_array_elements_text(re::jsonb)),
                ARRAY(SELECT jsonb_array_elements_text(ul::jsonb)), lo, la, s
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                       $8::text[], $9::text[], $10::text[], $11::float8[], $12::float8[], $13::int8[])
             AS x(u, n, ci, co, pr, tz, cd, al, re, ul, lo, la, s)
         ON CONFLICT (unlocode) DO UPDATE SET name = EXCLUDED.name, city = EXCLUDED.city, country = EXCLUDED.country,
           province = EXCLUDED.province, timezone = EXCLUDED.timezone, code = EXCLUDED.code, alias = EXCLUDED.alias,
           regions = EXCLUDED.regions, unlocs = EXCLUDED.unlocs, lon = EXCLUDED.lon, lat = EXCLUDED.lat,
           seq = EXCLUDED.seq, updated_at = now()",
        args.done()?,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Moves the per-country counts by `deltas` (country → change, none zero); a country left with no port
/// is removed.
pub async fn move_country_counts(tx: &mut Tx, deltas: &BTreeMap<String, i64>) -> Result<(), sqlx::Error> {
    let (countries, deltas): (Vec<String>, Vec<i64>) = deltas.iter().map(|(c, d)| (c.clone(), *d)).unzip();
    sqlx::query(
        "INSERT INTO port_countries (country, ports) SELECT * FROM unnest($1::text[], $2::int8[])
                 ON CONFLICT (country) DO UPDATE SET ports = port_countries.ports + EXCLUDED.ports",
    )
    .bind(&countries)
    .bind(&deltas)
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM port_countries WHERE country = ANY($1) AND ports = 0")
        .bind(&countries)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The columns of a [`Port`] row.
const COLUMNS: &str = "unlocode, name, city, country, province, timezone, code, alias, regions, unlocs, lon, lat";

/// A stored port, which the API serves as it is. Its fields are in the order the API writes every
/// object's, by name; `lon` and `lat` are read as one `coordinates` pair, as the ports file has them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(description = "One port; missing fields are null."))]
pub struct Port {
    /// Other names.
    pub alias: Vec<String>,
    /// The city.
    pub city: Option<String>,
    /// The port code.
    pub code: Option<String>,
    /// `[lon, lat]`, when known.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<f64>>, min_items = 2, max_items = 2))]
    pub coordinates: Option<[f64; 2]>,
    /// The country.
    pub country: Option<String>,
    /// The name.
    pub name: String,
    /// The province.
    pub province: Option<String>,
    /// Regions.
    pub regions: Vec<String>,
    /// The time zone.
    pub timezone: Option<String>,
    /// The UN/LOCODE.
    pub unlocode: String,
    /// Related UN/LOCODEs.
    pub unlocs: Vec<String>,
}

impl sqlx::FromRow<'_, PgRow> for Port {
    fn from_row(r: &PgRow) -> Result<Self, sqlx::Error> {
        let (lon, lat): (Option<f64>, Option<f64>) = (r.try_get("lon")?, r.try_get("lat")?);
        Ok(Port {
            unlocode: r.try_get("unlocode")?,
            name: r.try_get("name")?,
            city: r.try_get("city")?,
            country: r.try_get("country")?,
            province: r.try_get("province")?,
            timezone: r.try_get("timezone")?,
            code: r.try_get("code")?,
            alias: r.try_get("alias")?,
            regions: r.try_get("regions")?,
            unlocs: r.try_get("unlocs")?,
            coordinates: lon.zip(lat).map(|(lon, lat)| [lon, lat]),
        })
    }
}

/// Port `unlocode`, if stored.
pub async fn get(pool: &PgPool, unlocode: &str) -> Result<Option<Port>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM ports WHERE unlocode = $1")))
        .bind(unlocode)
        .fetch_optional(pool)
        .await
}

/// Which ports a [`list`] covers; `None` leaves a field unfiltered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortFilter {
    /// Exactly this country.
    pub country: Option<String>,
    /// Names containing this fragment, ignoring case (taken literally: `%`, `_` and `\` match themselves).
    pub name_contains: Option<String>,
}

impl PortFilter {
    /// The `WHERE` clause (empty when nothing is filtered) and its binds, `$1` on.
    ///
    /// Only the filters that are set are written: `($1::text IS NULL OR country = $1)` would become, under
    /// a generic plan, a filter over every row instead of a use of `ports_by_country` (or, for the name,
    /// `ports_by_name`). So each combination is a statement of its own, planned for what it filters. The
    /// text is made of fixed fragments and bind numbers only: nothing from the filter reaches it.
    fn clause(&self) -> (String, Vec<String>) {
        let mut conditions = Vec::new();
        let mut binds = Vec::new();
        if let Some(country) = &self.country {
            binds.push(country.clone());
            conditions.push(format!("country = ${}", binds.len()));
        }
        if let Some(q) = &self.name_contains {
            // Both sides lowered by PostgreSQL, as one rule: Rust's lowercase differs for some letters
            // ('İ' becomes "i̇", with a combining dot, where PostgreSQL's is "i"), and missed names.
            binds.push(format!("%{}%", q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
            conditions.push(format!("lower(name) LIKE lower(${})", binds.len()));
        }
        let clause = if conditions.is_empty() { String::new() } else { format!(" WHERE {}", conditions.join(" AND ")) };
        (clause, binds)
    }
}

/// A page of ports and how many match in all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortPage {
    /// Ports matching the filter, all pages.
    pub total: i64,
    /// This page, by name then UN/LOCODE.
    pub ports: Vec<Port>,
}

/// The ports matching `filter`, by name then UN/LOCODE, `limit` of them from `offset`, with the total
/// that match.
pub async fn list(pool: &PgPool, filter: &PortFilter, limit: i64, offset: i64) -> Result<PortPage, sqlx::Error> {
    let (clause, binds) = filter.clause();
    let mut count = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM ports{clause}")));
    for b in &binds {
        count = count.bind(b);
    }
    let total: i64 = count.fetch_one(pool).await?;
    let (l, o) = (binds.len() + 1, binds.len() + 2);
    let mut page = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM ports{clause} ORDER BY name, unlocode LIMIT ${l} OFFSET ${o}"
    )));
    for b in &binds {
        page = page.bind(b);
    }
    let ports = page.bind(limit).bind(offset).fetch_all(pool).await?;
    Ok(PortPage { total, ports })
}

/// A port and its distance from the place asked about.
#[derive(Debug, Clone, PartialEq)]
pub struct NearPort {
    /// The port.
    pub port: Port,
    /// Great-circle distance in metres.
    pub distance_m: f64,
}

impl sqlx::FromRow<'_, PgRow> for NearPort {
    fn from_row(r: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(NearPort { port: Port::from_row(r)?, distance_m: r.try_get("distance_m")? })
    }
}

/// The `limit` ports nearest to (`lat`, `lon`), nearest first (great circle). Answered by the GiST index
/// on the earth position (cube/earthdistance), not a scan.
pub async fn nearest(pool: &PgPool, lat: f64, lon: f64, limit: i64) -> Result<Vec<NearPort>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, earth_distance(ll_to_earth(lat, lon), ll_to_earth($1, $2)) AS distance_m
           FROM ports WHERE lat IS NOT NULL
          ORDER BY ll_to_earth(lat, lon) <-> ll_to_earth($1, $2) LIMIT $3"
    )))
    .bind(lat)
    .bind(lon)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One country's ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = CountryPorts))]
pub struct CountryCount {
    /// The country.
    pub country: String,
    /// How many ports.
    pub ports: i64,
}

/// The port counts of the `limit` countries with the most ports (then by name), and how many countries have
/// ports, in one statement (the window counts before the limit).
pub async fn countries(pool: &PgPool, limit: i64) -> Result<(Vec<CountryCount>, i64), sqlx::Error> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT country, ports, count(*) OVER () FROM port_countries ORDER BY ports DESC, country LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let total = rows.first().map_or(0, |r| r.2);
    Ok((rows.into_iter().map(|(country, ports, _)| CountryCount { country, ports }).collect(), total))
}

#[cfg(test)]
mod tests {
    use super::PortFilter;

    #[test]
    fn a_filter_writes_only_what_is_set_and_binds_every_value() {
        let none = PortFilter::default();
        assert_eq!(none.clause(), (String::new(), vec![]));
        let both = PortFilter { country: Some("X'; DROP".into()), name_contains: Some("Dub_%\\".into()) };
        let (clause, binds) = both.clause();
        assert_eq!(clause, " WHERE country = $1 AND lower(name) LIKE lower($2)");
        assert_eq!(binds, vec!["X'; DROP".to_owned(), "%Dub\\_\\%\\\\%".to_owned()]);
        let name = PortFilter { country: None, name_contains: Some("a".into()) };
        assert_eq!(name.clause(), (" WHERE lower(name) LIKE lower($1)".to_owned(), vec!["%a%".to_owned()]));
    }
}
