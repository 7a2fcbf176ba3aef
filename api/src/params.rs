//! Query parameters, parsed by hand so that every mistake names its field.

use crate::ApiError;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use tributary_broker::ts::Ts;

/// Raw query parameters.
pub type Params = HashMap<String, String>;

/// `from`/`to`: RFC 3339, a date, or epoch milliseconds.
pub fn time(p: &Params, field: &'static str) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(v) = p.get(field) else { return Ok(None) };
    let ts = match v.parse::<i64>() {
        Ok(ms) => Ts::from_millis(ms),
        Err(_) => Ts::parse(v),
    };
    ts.map(|t| Some(t.0))
        .map_err(|e| ApiError::field(if field == "from" { "invalid_from" } else { "invalid_to" }, field, e))
}

/// `from` and `to`. A `from` after `to` is an empty range, not a mistake: whether two valid times are in
/// order is not something a client's schema can check, so every pair of valid times is a valid request.
pub fn range(p: &Params) -> Result<(Option<DateTime<Utc>>, Option<DateTime<Utc>>), ApiError> {
    Ok((time(p, "from")?, time(p, "to")?))
}

/// `limit`: a whole number from 1 to `max`; `default` when absent.
pub fn limit(p: &Params, default: u64, max: u64) -> Result<u64, ApiError> {
    let Some(v) = p.get("limit") else { return Ok(default) };
    match v.trim().parse::<i64>() {
        Ok(n) if n >= 1 && n as u64 <= max => Ok(n as u64),
        Ok(n) => Err(ApiError::field("invalid_limit", "limit", format!("limit must be between 1 and {max}, got {n}"))),
        Err(_) => Err(ApiError::field("invalid_limit", "limit", format!("limit must be a whole number, got {v:?}"))),
    }
}

/// The `from`..`to` range and `limit` (see [`range`] and [`limit`]) as a store read takes them: the newest
/// `limit` rows in range.
pub fn newest(p: &Params, default: u64, max: u64) -> Result<tributary_store::Range, ApiError> {
    let (from, to) = range(p)?;
    Ok(tributary_store::Range { from, to, limit: limit(p, default, max)? as i64 })
}

/// `after` and `limit` of a listing (default 100, at most 1,000): a page of rows by key.
pub fn page(p: &Params) -> Result<tributary_store::Page, ApiError> {
    Ok(tributary_store::Page { after: p.get("after").cloned(), limit: limit(p, 100, 1000)? })
}

/// What a read takes from its query parameters, parsed before it waits for anything.
pub trait FromParams: Sized {
    fn from_params(p: &Params) -> Result<Self, ApiError>;
}

/// A listing's page ([`page`]).
impl FromParams for tributary_store::Page {
    fn from_params(p: &Params) -> Result<Self, ApiError> {
        page(p)
    }
}

/// The first rows of a ranking: `limit` (default 1,000, at most 10,000).
pub struct Top(pub u64);

impl FromParams for Top {
    fn from_params(p: &Params) -> Result<Self, ApiError> {
        limit(p, 1000, 10_000).map(Top)
    }
}

/// Nothing: a read of one whole answer.
impl FromParams for () {
    fn from_params(_: &Params) -> Result<Self, ApiError> {
        Ok(())
    }
}

/// The `next` of a listing's answer: its last key when the page is full (more may follow), else `None`.
pub fn next<T>(page: &tributary_store::Page, rows: &[T], key: impl Fn(&T) -> &str) -> Option<String> {
    (rows.len() as u64 >= page.limit).then(|| rows.last().map(|r| key(r).to_owned())).flatten()
}
