//! The `settings` rows of the windows the stored derived values were computed with (and of a recompute
//! for new ones under way), and the reads of that recompute: the series a part at a time, each series'
//! raw points a chunk at a time.

use super::{Point, Row};
use crate::{Tx, settings};
use chrono::{DateTime, Utc};
use sea_orm::sqlx;
use serde_json::Value;
use std::collections::HashMap;

/// The `settings` key of the windows the stored derived values were computed with.
pub(super) const TRANSFORMS_KEY: &str = "price_transforms";
/// The `settings` key of a recompute for new windows under way: `{"windows": [...], "through": name,
/// "at": time}`, the last series (in the table's order) done, and when.
const PROGRESS_KEY: &str = "price_transforms_progress";

/// The names of the windows the stored derived values were computed with, if recorded.
pub async fn stored_windows(tx: &mut Tx) -> Result<Option<Value>, sqlx::Error> {
    settings::get(&mut **tx, TRANSFORMS_KEY).await
}

/// Records the names of the windows the stored derived values are computed with, ending any recompute
/// under way ([`store_progress`]).
pub async fn store_windows(tx: &mut Tx, names: &Value) -> Result<(), sqlx::Error> {
    settings::delete(tx, PROGRESS_KEY).await?;
    settings::set(tx, TRANSFORMS_KEY, names).await
}

/// A recompute for new windows under way, as recorded by its last part.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// The names of the windows it recomputes for.
    pub windows: Value,
    /// The last series done.
    pub through: String,
    /// When that part committed (by the recording processor's clock).
    pub at: DateTime<Utc>,
}

/// The recompute under way, if any.
pub async fn progress(tx: &mut Tx) -> Result<Option<Progress>, sqlx::Error> {
    let Some(p) = settings::get(&mut **tx, PROGRESS_KEY).await? else { return Ok(None) };
    let through = p.get("through").and_then(Value::as_str).map(str::to_owned);
    let at = p.get("at").and_then(Value::as_str).and_then(|t| DateTime::parse_from_rfc3339(t).ok());
    Ok(through.zip(at).map(|(through, at)| Progress {
        windows: p.get("windows").cloned().unwrap_or_default(),
        through,
        at: at.to_utc(),
    }))
}

/// Records that a recompute for the windows `names` has done every series up to `through`. Until it is
/// done ([`store_windows`]), the stored values are of no windows throughout: the recorded windows say so
/// (`{"recomputing": names}`, which no configuration's names equal), so that a processor started with
/// the old windows again recomputes every series too, rather than take half of them as its own.
pub async fn store_progress(tx: &mut Tx, names: &Value, through: &str) -> Result<(), sqlx::Error> {
    settings::set(tx, TRANSFORMS_KEY, &serde_json::json!({"recomputing": names})).await?;
    let at = Utc::now().to_rfc3339();
    settings::set(tx, PROGRESS_KEY, &serde_json::json!({"windows": names, "through": through, "at": at})).await
}

/// How many series there are.
pub async fn series_count(tx: &mut Tx) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM price_series").fetch_one(&mut **tx).await
}

/// At most `limit` instruments with a series after `after` (from the first when `None`), in the table's
/// order. (`coalesce`, not `$1 IS NULL OR`, so that a generic plan still scans the key from `after`; no
/// instrument name is empty.)
pub async fn instruments_after(tx: &mut Tx, after: Option<&str>, limit: usize) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT instrument FROM price_series WHERE instrument > coalesce($1::text, '') ORDER BY instrument LIMIT $2",
    )
    .bind(after)
    .bind(limit as i64)
    .fetch_all(&mut **tx)
    .await
}

/// Per instrument, at most `per` stored points after its time (from its first point when `None`),
/// ascending, without their derived values (`point.values` empty): the next chunk of a recompute from
/// scratch.
pub async fn raw_points(
    tx: &mut Tx,
    after: &[(&str, Option<DateTime<Utc>>)],
    per: usize,
) -> Result<HashMap<String, Vec<Row>>, sqlx::Error> {
    let (instruments, afters): (Vec<&str>, Vec<Option<DateTime<Utc>>>) = after.iter().copied().unzip();
    let rows: Vec<(String, DateTime<Utc>, f64, Option<f64>, i64)> = sqlx::query_as(
        "SELECT q.instrument, p.ts, p.price, p.volume, p.seq
           FROM unnest($1::text[], $2::timestamptz[]) AS q(instrument, after)
           CROSS JOIN LATERAL (SELECT ts, price, volume, seq FROM price_points
                                WHERE instrument = q.instrument AND ts > coalesce(q.after, '-infinity')
                                ORDER BY ts LIMIT $3) p",
    )
    .bind(&instruments)
    .bind(&afters)
    .bind(per as i64)
    .fetch_all(&mut **tx)
    .await?;
    let mut out: HashMap<String, Vec<Row>> = HashMap::new();
    for (instrument, ts, price, volume, seq) in rows {
        out.entry(instrument).or_default().push(Row { ts, volume, seq, point: Point::raw(price) });
    }
    for rows in out.values_mut() {
        rows.sort_unstable_by_key(|r| r.ts);
    }
    Ok(out)
}
