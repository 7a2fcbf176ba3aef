//! `port.<unlocode>`: one port, in the shape of the ports file (`../shared/data/ports.json`):
//! `{"name": ..., "city": ..., "country": ..., "coordinates": [lon, lat], "province": ..., "timezone": ...,
//! "alias": [...], "regions": [...], "unlocs": [...], "code": ...}`. Only `name` is required; a missing field
//! is stored as null (lists as empty).

use crate::codec;
use crate::events::Rejection;
use crate::kind::Kind;
use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};

/// The longest country accepted, in characters.
pub const MAX_COUNTRY: usize = 256;
/// A coordinate nearer 0 than this, in degrees (a tenth of a millimetre), is stored as 0.
pub const MIN_COORDINATE: f64 = 1e-9;

/// A port as published; a field that is `None` is left out. A field it does not know is refused, as in
/// every other event: a misspelt one (`coordinate`) was dropped, and the port stored without it.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// The port's name (required, not blank).
    pub name: String,
    /// City.
    pub city: Option<String>,
    /// Country name.
    pub country: Option<String>,
    /// `[longitude, latitude]` in degrees.
    pub coordinates: Option<Vec<f64>>,
    /// Province or region.
    pub province: Option<String>,
    /// IANA time zone.
    pub timezone: Option<String>,
    /// Other names.
    #[serde(default)]
    pub alias: Vec<String>,
    /// Regions.
    #[serde(default)]
    pub regions: Vec<String>,
    /// UN/LOCODEs of the port.
    #[serde(default)]
    pub unlocs: Vec<String>,
    /// A further code.
    pub code: Option<String>,
}

/// A validated port with its UN/LOCODE (from the subject).
#[derive(Debug, Clone, PartialEq)]
pub struct PortRecord {
    /// The UN/LOCODE.
    pub unlocode: String,
    /// The port.
    pub port: Port,
    /// (lon, lat), when given.
    pub lon_lat: Option<(f64, f64)>,
}

impl PortRecord {
    /// Decodes and validates a port message.
    pub fn decode(subject: &str, headers: Option<&HeaderMap>, payload: &[u8]) -> Result<Self, Rejection> {
        let unlocode = Kind::Port.key_of(subject).map_err(Rejection::subject)?.to_owned();
        let port: Port = codec::decode(headers, payload).map_err(Rejection::undecodable)?;
        Self::validate(unlocode, port).map_err(Rejection::invalid)
    }

    /// Checks the name and coordinates.
    pub fn validate(unlocode: String, port: Port) -> Result<Self, String> {
        if port.name.trim().is_empty() {
            return Err("name must not be empty".into());
        }
        let texts = [("name", Some(&port.name)), ("city", port.city.as_ref()), ("country", port.country.as_ref())]
            .into_iter()
            .chain([
                ("province", port.province.as_ref()),
                ("timezone", port.timezone.as_ref()),
                ("code", port.code.as_ref()),
            ])
            .filter_map(|(f, v)| v.map(|v| (f, v)))
            .chain(port.alias.iter().map(|v| ("alias", v)))
            .chain(port.regions.iter().map(|v| ("regions", v)))
            .chain(port.unlocs.iter().map(|v| ("unlocs", v)));
        for (field, v) in texts {
            crate::events::no_nul(field, v)?;
        }
        // The country is indexed, and PostgreSQL refuses an index entry over about 2.7 kB.
        if port.country.as_ref().is_some_and(|c| c.chars().count() > MAX_COUNTRY) {
            return Err(format!("country is longer than {MAX_COUNTRY} characters"));
        }
        let lon_lat = match port.coordinates.as_deref() {
            None => None,
            Some(&[lon, lat]) => {
                if !(lon.is_finite() && (-180.0..=180.0).contains(&lon)) {
                    return Err(format!("coordinates: longitude must be within -180..180, got {lon}"));
                }
                if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
                    return Err(format!("coordinates: latitude must be within -90..90, got {lat}"));
                }
                // PostgreSQL's earth position (`ll_to_earth`, indexed) refuses a product of non-zero
                // numbers that underflows to zero, as a subnormal such as 5e-324 makes: that port failed its
                // batch on every delivery. Within a billionth of a degree of 0 (a tenth of a millimetre) is 0,
                // as the API's nearest-ports query rounds its own.
                let snap = |v: f64| if v.abs() < MIN_COORDINATE { 0.0 } else { v };
                Some((snap(lon), snap(lat)))
            }
            Some(other) => {
                return Err(format!("coordinates must be two numbers [lon, lat], got {} numbers", other.len()));
            }
        };
        Ok(PortRecord { unlocode, port, lon_lat })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_decode_with_missing_fields() {
        let p =
            PortRecord::decode("port.AEAJM", None, br#"{"name":"Ajman","coordinates":[55.5,25.4],"unlocs":["AEAJM"]}"#)
                .unwrap();
        assert_eq!(p.unlocode, "AEAJM");
        assert_eq!(p.lon_lat, Some((55.5, 25.4)));
        assert_eq!(p.port.city, None);
        let p = PortRecord::decode("port.X", None, br#"{"name":"Nowhere"}"#).unwrap();
        assert_eq!(p.lon_lat, None);
    }

    #[test]
    fn a_port_leaves_out_its_missing_fields() {
        let port = Port { name: "Ajman".into(), code: Some("X".into()), ..Default::default() };
        let json = serde_json::to_value(&port).unwrap();
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["alias", "code", "name", "regions", "unlocs"]);
        assert_eq!(serde_json::from_value::<Port>(json).unwrap(), port);
    }

    #[test]
    fn bad_ports_are_named() {
        let r = |b: &[u8]| PortRecord::decode("port.X", None, b).unwrap_err().reason;
        assert!(r(br#"{"name":"A","coordinates":[1]}"#).contains("two numbers"));
        assert!(r(br#"{"name":"A","coordinates":["a","b"]}"#).contains("invalid type"));
        assert!(r(br#"{"name":"A","coordinates":[1,95]}"#).contains("latitude"));
        assert!(r(br#"{"name":"A","coordinate":[1,2]}"#).contains("unknown field `coordinate`"));
        let lon_lat = |b: &[u8]| PortRecord::decode("port.X", None, b).unwrap().lon_lat;
        assert_eq!(lon_lat(br#"{"name":"A","coordinates":[5e-324,10]}"#), Some((0.0, 10.0)));
        assert_eq!(lon_lat(br#"{"name":"A","coordinates":[10,-1e-10]}"#), Some((10.0, 0.0)));
        assert_eq!(lon_lat(br#"{"name":"A","coordinates":[1e-9,90]}"#), Some((1e-9, 90.0)));
        assert!(r(br#"{"name":" "}"#).contains("name"));
        assert!(r(br#"{"city":"A"}"#).contains("missing field `name`"));
        let country = |n: usize| format!(r#"{{"name":"A","country":"{}"}}"#, "c".repeat(n)).into_bytes();
        assert!(PortRecord::decode("port.X", None, &country(MAX_COUNTRY)).is_ok());
        assert!(r(&country(3000)).contains("country is longer than 256"));
    }
}
