//! Surveys: owns `survey_items` (one row per (provider, provider id), last writer wins by stream
//! sequence) and `survey_providers` (each provider's pull cursor and the outcome of its latest pull).
//!
//! - Writes, in the processor's transaction (the providers' locks already held): [`upsert_items`]
//!   ([`ItemUpsert`]), [`advance_cursors`] with them, and [`store_statuses`] of pulls ([`StatusUpsert`]).
//! - Reads: [`cursors`] for the aggregator ([`ProviderCursor`]); for the API, the newest [`items`] by an
//!   [`ItemFilter`] ([`Item`]) and every provider's state ([`providers`], [`Provider`]).

use crate::Tx;
use crate::arrays::Arrays;
use chrono::{DateTime, Utc};
use sea_orm::sqlx::{self, PgPool};
use serde::Serialize;

/// One version of an item to store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ItemUpsert<'a> {
    /// The provider's name.
    pub provider: &'a str,
    /// The provider's id of the item.
    pub provider_id: i64,
    /// The item's text.
    pub text: &'a str,
    /// The device.
    pub device: &'a str,
    /// The location.
    pub location: &'a str,
    /// When the provider says it was created.
    pub created_at: DateTime<Utc>,
    /// The stream sequence of the message: the newer one wins.
    pub seq: i64,
}

/// Upserts the newer of `items`.
pub async fn upsert_items(tx: &mut Tx, items: &[ItemUpsert<'_>]) -> Result<(), sqlx::Error> {
    let args = Arrays::of(items).column(|i| i.provider).column(|i| i.provider_id).column(|i| i.text);
    let args = args.column(|i| i.device).column(|i| i.location).column(|i| i.created_at).column(|i| i.seq);
    sqlx::query_with(
        "INSERT INTO survey_items (provider, provider_id, text, device, location, created_at, seq)
         SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::int8[])
         ON CONFLICT (provider, provider_id) DO UPDATE SET text = EXCLUDED.text, device = EXCLUDED.device,
           location = EXCLUDED.location, created_at = EXCLUDED.created_at, seq = EXCLUDED.seq
         WHERE survey_items.seq < EXCLUDED.seq",
        args.done()?,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Moves each provider's cursor up to the given provider id (never down), creating the provider's row.
pub async fn advance_cursors(tx: &mut Tx, cursors: &[(&str, i64)]) -> Result<(), sqlx::Error> {
    sqlx::query_with(
        "INSERT INTO survey_providers (provider, cursor) SELECT * FROM unnest($1::text[], $2::int8[])
         ON CONFLICT (provider) DO UPDATE SET cursor = GREATEST(survey_providers.cursor, EXCLUDED.cursor)",
        Arrays::of(cursors).column(|c| c.0).column(|c| c.1).done()?,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The outcome of one pull, to store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatusUpsert<'a> {
    /// The provider's name.
    pub provider: &'a str,
    /// `ok`, `timeout`, `unreachable` or `error`.
    pub status: &'a str,
    /// What went wrong.
    pub error: Option<&'a str>,
    /// When the pull ended.
    pub at: DateTime<Utc>,
    /// The stream sequence of the message: the newer one wins.
    pub seq: i64,
    /// When the latest successful pull among those stored with it ended (it need not be this one: a
    /// batch stores only its newest outcome per provider, and an earlier success in it still counts).
    pub last_ok: Option<DateTime<Utc>>,
}

/// Stores pull outcomes: status, error and time of the latest by sequence, and `last_sync` the latest
/// successful pull (a maximum, so the order of delivery does not matter).
pub async fn store_statuses(tx: &mut Tx, statuses: &[StatusUpsert<'_>]) -> Result<(), sqlx::Error> {
    let args = Arrays::of(statuses).column(|s| s.provider).column(|s| s.status).column(|s| s.error);
    let args = args.column(|s| s.at).column(|s| s.seq).column(|s| s.last_ok);
    sqlx::query_with(
        "INSERT INTO survey_providers AS p (provider, status, error, last_pull, last_sync, status_seq)
         SELECT pr, st, er, at, lo, sq
           FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::int8[], $6::timestamptz[])
             AS x(pr, st, er, at, sq, lo)
         ON CONFLICT (provider) DO UPDATE SET
           status = CASE WHEN p.status_seq < EXCLUDED.status_seq THEN EXCLUDED.status ELSE p.status END,
           error = CASE WHEN p.status_seq < EXCLUDED.status_seq THEN EXCLUDED.error ELSE p.error END,
           last_pull = CASE WHEN p.status_seq < EXCLUDED.status_seq THEN EXCLUDED.last_pull ELSE p.last_pull END,
           last_sync = GREATEST(p.last_sync, EXCLUDED.last_sync),
           status_seq = GREATEST(p.status_seq, EXCLUDED.status_seq)",
        args.done()?,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A provider's stored cursor: the highest provider id stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderCursor {
    /// The provider's name.
    pub provider: String,
    /// The highest provider id stored.
    pub cursor: i64,
}

/// Every provider's stored cursor.
pub async fn cursors(pool: &PgPool) -> Result<Vec<ProviderCursor>, sqlx::Error> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT provider, cursor FROM survey_providers").fetch_all(pool).await?;
    Ok(rows.into_iter().map(|(provider, cursor)| ProviderCursor { provider, cursor }).collect())
}

/// A stored item, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = SurveyItem))]
pub struct Item {
    /// The provider's name.
    pub provider: String,
    /// The provider's id of the item.
    pub provider_id: i64,
    /// The item's text.
    pub text: String,
    /// The device.
    pub device: String,
    /// The location.
    pub location: String,
    /// When the provider says it was created.
    pub created_at: DateTime<Utc>,
}

/// Which items [`items`] covers; `None` leaves a field unfiltered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemFilter {
    /// Exactly this device.
    pub device: Option<String>,
    /// Exactly this location.
    pub location: Option<String>,
}

impl ItemFilter {
    /// The `WHERE` clause (empty when nothing is filtered) and its binds, `$1` on.
    ///
    /// Only the filters that are set are written: `($1::text IS NULL OR device = $1)` would become, under
    /// a generic plan, a filter over every row instead of a use of `survey_items_device` (or
    /// `survey_items_location`). So each combination is a statement of its own, planned for what it
    /// filters. The text is made of fixed fragments and bind numbers only: nothing from the filter
    /// reaches it.
    fn clause(&self) -> (String, Vec<&str>) {
        let mut conditions = Vec::new();
        let mut binds = Vec::new();
        for (column, value) in [("device", &self.device), ("location", &self.location)] {
            if let Some(v) = value {
                binds.push(v.as_str());
                conditions.push(format!("{column} = ${}", binds.len()));
            }
        }
        let clause = if conditions.is_empty() { String::new() } else { format!(" WHERE {}", conditions.join(" AND ")) };
        (clause, binds)
    }
}

/// The newest `limit` items matching `filter` (by creation time, then provider, then provider id
/// descending).
pub async fn items(pool: &PgPool, filter: &ItemFilter, limit: i64) -> Result<Vec<Item>, sqlx::Error> {
    let (clause, binds) = filter.clause();
    let sql = format!(
        "SELECT provider, provider_id, text, device, location, created_at FROM survey_items{clause}
          ORDER BY created_at DESC, provider, provider_id DESC LIMIT ${}",
        binds.len() + 1
    );
    let mut query = sqlx::query_as::<_, (String, i64, String, String, String, DateTime<Utc>)>(sqlx::AssertSqlSafe(sql));
    for b in binds {
        query = query.bind(b);
    }
    let rows = query.bind(limit).fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|(provider, provider_id, text, device, location, created_at)| Item {
            provider,
            provider_id,
            text,
            device,
            location,
            created_at,
        })
        .collect())
}

/// A provider's state, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Provider {
    /// The provider's name.
    pub provider: String,
    /// The latest pull's outcome: `ok`, `timeout`, `unreachable` or `error`.
    pub status: Option<String>,
    /// The latest successful pull.
    pub last_sync: Option<DateTime<Utc>>,
    /// The latest pull.
    pub last_pull: Option<DateTime<Utc>>,
    /// The highest provider id stored.
    pub cursor: i64,
    /// What went wrong in the latest pull.
    pub error: Option<String>,
}

/// Every provider's state, by name.
pub async fn providers(pool: &PgPool) -> Result<Vec<Provider>, sqlx::Error> {
    let rows: Vec<(String, Option<String>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, i64, Option<String>)> =
        sqlx::query_as(
            "SELECT provider, status, last_sync, last_pull, cursor, error FROM survey_providers ORDER BY provider",
        )
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(provider, status, last_sync, last_pull, cursor, error)| Provider {
            provider,
            status,
            last_sync,
            last_pull,
            cursor,
            error,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::ItemFilter;

    #[test]
    fn a_filter_writes_only_what_is_set_and_binds_every_value() {
        assert_eq!(ItemFilter::default().clause(), (String::new(), vec![]));
        let f = ItemFilter { device: None, location: Some("x' OR 1=1".into()) };
        assert_eq!(f.clause(), (" WHERE location = $1".to_owned(), vec!["x' OR 1=1"]));
        let f = ItemFilter { device: Some("d".into()), location: Some("l".into()) };
        assert_eq!(f.clause().0, " WHERE device = $1 AND location = $2");
    }
}
