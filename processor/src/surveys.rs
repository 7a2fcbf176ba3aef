//! Surveys: items pulled from providers → one row per (provider, provider id), each provider's cursor
//! advanced in the same transaction, and the outcome of each pull.
//!
//! Items are last writer wins by stream sequence, so a re-pulled item (the aggregator pulls again after a
//! crash, or two aggregators pull the same provider) changes nothing. The cursor is the highest provider
//! id stored; a pull's outcome is last writer wins by sequence, and `last_sync` is the latest successful
//! pull (a maximum, so the order of delivery does not matter).

use crate::lock;
use std::collections::BTreeMap;
use tributary_broker::Delivery;
use tributary_broker::surveys::{PullStatus, SurveyEvent, SurveyItem, SurveyRecord};
use tributary_store::sqlx::{self, PgPool};
use tributary_store::surveys::{self as store, ItemUpsert, StatusUpsert};

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
        // Per provider: its newest outcome, and when its latest successful pull in the batch ended.
        let mut statuses: BTreeMap<&str, (&PullStatus, i64)> = BTreeMap::new();
        let mut last_ok: BTreeMap<&str, chrono::DateTime<chrono::Utc>> = BTreeMap::new();
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
                    if s.status == "ok" {
                        let at = last_ok.entry(&d.event.provider).or_insert(s.at.0);
                        *at = (*at).max(s.at.0);
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
            let rows: Vec<StatusUpsert<'_>> = statuses
                .iter()
                .map(|(provider, (s, seq))| StatusUpsert {
                    provider,
                    status: &s.status,
                    error: s.error.as_deref(),
                    at: s.at.0,
                    seq: *seq,
                    last_ok: last_ok.get(provider).copied(),
                })
                .collect();
            store::store_statuses(&mut tx, &rows).await?;
        }
        tx.commit().await
    }
}

/// Stores the items and advances each provider's cursor to the highest provider id among them.
async fn store_items(
    tx: &mut tributary_store::Tx,
    items: &BTreeMap<(&str, i64), (&SurveyItem, i64)>,
) -> Result<(), sqlx::Error> {
    let rows: Vec<ItemUpsert<'_>> = items
        .iter()
        .map(|(&(provider, provider_id), &(i, seq))| ItemUpsert {
            provider,
            provider_id,
            text: &i.text,
            device: &i.device,
            location: &i.location,
            created_at: i.created_at.0,
            seq,
        })
        .collect();
    store::upsert_items(tx, &rows).await?;
    let mut cursors: BTreeMap<&str, i64> = BTreeMap::new();
    for (p, id) in items.keys() {
        let c = cursors.entry(p).or_default();
        *c = (*c).max(*id);
    }
    store::advance_cursors(tx, &cursors.into_iter().collect::<Vec<_>>()).await
}

commits_batches!(
    SurveyHandler,
    SurveyRecord,
    SurveyRecord::decode,
    "survey batch",
    "storing survey items",
    locking "survey",
    |d: &tributary_broker::Delivery<SurveyRecord>| d.event.provider.as_str()
);
