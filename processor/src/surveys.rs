//! Surveys: items pulled from providers → one row per (provider, provider id), each provider's cursor
//! advanced in the same transaction, and the outcome of each pull.
//!
//! Items are last writer wins by stream sequence, so a re-pulled item (the aggregator pulls again after a
//! crash, or two aggregators pull the same provider) changes nothing. The cursor is the highest provider
//! id stored; a pull's outcome is last writer wins by sequence, and `last_sync` is the latest successful
//! pull (a maximum, so the order of delivery does not matter).

use crate::lock;
use sea_orm::sqlx::{self, PgPool, Postgres, Transaction};
use std::collections::BTreeMap;
use tributary_broker::surveys::{PullStatus, SurveyEvent, SurveyItem, SurveyRecord};
use tributary_broker::{BatchHandler, Delivery, HandleError, Rejection, ts::Ts};

/// Consumes `survey.<provider>`.
#[derive(Clone)]
pub struct SurveyHandler {
    pool: PgPool,
}

impl SurveyHandler {
    /// A handler writing through `pool`.
    pub fn new(pool: PgPool) -> Self {
        SurveyHandler { pool }
    }

    /// Stores a batch of items and pull outcomes.
    pub async fn commit(&self, batch: &[Delivery<SurveyRecord>]) -> Result<(), sqlx::Error> {
        let mut items: BTreeMap<(&str, i64), (&SurveyItem, i64)> = BTreeMap::new();
        let mut statuses: BTreeMap<&str, (&PullStatus, i64)> = BTreeMap::new();
        for d in batch {
            let seq = d.seq as i64;
            match &d.event.event {
                SurveyEvent::Item(i) => {
                    let e = items.entry((&d.event.provider, i.id)).or_insert((i, seq));
                    if seq > e.1 {
                        *e = (i, seq);
                    }
                }
                SurveyEvent::Status(s) => {
                    let e = statuses.entry(&d.event.provider).or_insert((s, seq));
                    if seq > e.1 {
                        *e = (s, seq);
                    }
                }
            }
        }
        let providers: std::collections::BTreeSet<&str> =
            items.keys().map(|k| k.0).chain(statuses.keys().copied()).collect();
        let mut tx = lock::begin(&self.pool, "survey", providers.iter().copied()).await?;
        if !items.is_empty() {
            store_items(&mut tx, &items).await?;
        }
        if !statuses.is_empty() {
            store_statuses(&mut tx, &statuses).await?;
        }
        tx.commit().await
    }
}

async fn store_items(
    tx: &mut Transaction<'static, Postgres>,
    items: &BTreeMap<(&str, i64), (&SurveyItem, i64)>,
) -> Result<(), sqlx::Error> {
    let col = |f: fn(&SurveyItem) -> &str| items.values().map(|(i, _)| f(i)).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO survey_items (provider, provider_id, text, device, location, created_at, seq)
         SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::int8[])
         ON CONFLICT (provider, provider_id) DO UPDATE SET text = EXCLUDED.text, device = EXCLUDED.device,
           location = EXCLUDED.location, created_at = EXCLUDED.created_at, seq = EXCLUDED.seq
         WHERE survey_items.seq < EXCLUDED.seq",
    )
    .bind(items.keys().map(|k| k.0).collect::<Vec<_>>())
    .bind(items.keys().map(|k| k.1).collect::<Vec<_>>())
    .bind(col(|i| &i.text))
    .bind(col(|i| &i.device))
    .bind(col(|i| &i.location))
    .bind(items.values().map(|(i, _)| i.created_at.0).collect::<Vec<_>>())
    .bind(items.values().map(|(_, s)| *s).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    let mut cursors: BTreeMap<&str, i64> = BTreeMap::new();
    for (p, id) in items.keys() {
        let c = cursors.entry(p).or_default();
        *c = (*c).max(*id);
    }
    sqlx::query(
        "INSERT INTO survey_providers (provider, cursor) SELECT * FROM unnest($1::text[], $2::int8[])
         ON CONFLICT (provider) DO UPDATE SET cursor = GREATEST(survey_providers.cursor, EXCLUDED.cursor)",
    )
    .bind(cursors.keys().copied().collect::<Vec<_>>())
    .bind(cursors.values().copied().collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn store_statuses(
    tx: &mut Transaction<'static, Postgres>,
    statuses: &BTreeMap<&str, (&PullStatus, i64)>,
) -> Result<(), sqlx::Error> {
    let v = statuses.values();
    sqlx::query(
        "INSERT INTO survey_providers AS p (provider, status, error, last_pull, last_sync, status_seq)
         SELECT pr, st, er, at, CASE WHEN st = 'ok' THEN at END, sq
           FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::int8[]) AS x(pr, st, er, at, sq)
         ON CONFLICT (provider) DO UPDATE SET
           status = CASE WHEN p.status_seq < EXCLUDED.status_seq THEN EXCLUDED.status ELSE p.status END,
           error = CASE WHEN p.status_seq < EXCLUDED.status_seq THEN EXCLUDED.error ELSE p.error END,
           last_pull = CASE WHEN p.status_seq < EXCLUDED.status_seq THEN EXCLUDED.last_pull ELSE p.last_pull END,
           last_sync = GREATEST(p.last_sync, EXCLUDED.last_sync),
           status_seq = GREATEST(p.status_seq, EXCLUDED.status_seq)",
    )
    .bind(statuses.keys().copied().collect::<Vec<_>>())
    .bind(v.clone().map(|(s, _)| s.status.as_str()).collect::<Vec<_>>())
    .bind(v.clone().map(|(s, _)| s.error.as_deref()).collect::<Vec<_>>())
    .bind(v.clone().map(|(s, _)| s.at.0).collect::<Vec<_>>())
    .bind(v.map(|(_, q)| *q).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl BatchHandler for SurveyHandler {
    type Event = SurveyRecord;

    fn decode(
        &self,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
        received: Ts,
    ) -> Result<SurveyRecord, Rejection> {
        SurveyRecord::decode(subject, headers, payload, received)
    }

    async fn handle(&self, batch: &[Delivery<SurveyRecord>]) -> Result<(), HandleError> {
        crate::commit_in_span("survey batch", "storing survey items", batch.len(), self.commit(batch)).await
    }
}
