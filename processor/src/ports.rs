//! Ports: `port.<unlocode>` → the latest version of each port and the per-country counts, one
//! transaction per batch (per part of about `lock::MAX_SERIES_PER_PART` ports, for a larger one).
//!
//! Last writer wins by stream sequence: a batch keeps the newest message per port, takes the ports'
//! locks, reads their stored (sequence, country), upserts only the newer ones and moves the country
//! counts by the difference (a new port adds one to its country; a port that changed country moves one).
//! So re-importing the same file changes nothing, and the counts always equal a `GROUP BY` over `ports`.

use crate::lock;
use std::collections::{BTreeMap, HashMap};
use tributary_broker::Delivery;
use tributary_broker::ports::PortRecord;
use tributary_store::ports::{self as store, PortUpsert};
use tributary_store::sqlx::{self, PgPool};

/// Consumes `port.<unlocode>`.
#[derive(Clone)]
pub struct PortHandler {
    pool: PgPool,
}

impl PortHandler {
    /// A handler writing through `pool`.
    pub fn new(pool: PgPool) -> Self {
        PortHandler { pool }
    }

    /// Stores the newest version of each port in the batch.
    pub async fn commit(&self, batch: &[Delivery<PortRecord>]) -> Result<(), sqlx::Error> {
        let mut newest: BTreeMap<&str, (&PortRecord, i64)> = BTreeMap::new();
        for d in batch {
            let e = newest.entry(&d.event.unlocode).or_insert((&d.event, d.seq as i64));
            if d.seq as i64 > e.1 {
                *e = (&d.event, d.seq as i64);
            }
        }
        let mut tx = lock::begin(&self.pool, "port", newest.keys().copied()).await?;
        let codes: Vec<&str> = newest.keys().copied().collect();
        let stored: HashMap<String, (i64, Option<String>)> = store::stored_versions(&mut tx, &codes)
            .await?
            .into_iter()
            .map(|v| (v.unlocode, (v.seq, v.country)))
            .collect();
        let mut rows = Vec::new();
        let mut counts: BTreeMap<String, i64> = BTreeMap::new();
        for (code, (p, seq)) in newest {
            let before = stored.get(code);
            if before.is_some_and(|(s, _)| *s >= seq) {
                continue;
            }
            if let Some((_, Some(old))) = before {
                *counts.entry(old.clone()).or_default() -= 1;
            }
            if let Some(new) = &p.port.country {
                *counts.entry(new.clone()).or_default() += 1;
            }
            rows.push(upsert_of(p, seq));
        }
        if !rows.is_empty() {
            store::upsert(&mut tx, &rows).await?;
        }
        counts.retain(|_, d| *d != 0);
        if !counts.is_empty() {
            store::move_country_counts(&mut tx, &counts).await?;
        }
        tx.commit().await
    }
}

/// The row that stores version `seq` of a port.
fn upsert_of(p: &PortRecord, seq: i64) -> PortUpsert<'_> {
    PortUpsert {
        unlocode: &p.unlocode,
        name: &p.port.name,
        city: p.port.city.as_deref(),
        country: p.port.country.as_deref(),
        province: p.port.province.as_deref(),
        timezone: p.port.timezone.as_deref(),
        code: p.port.code.as_deref(),
        alias: &p.port.alias,
        regions: &p.port.regions,
        unlocs: &p.port.unlocs,
        lon: p.lon_lat.map(|c| c.0),
        lat: p.lon_lat.map(|c| c.1),
        seq,
    }
}

commits_batches!(
    PortHandler,
    PortRecord,
    |subject, headers, payload, _| PortRecord::decode(subject, headers, payload),
    "port batch",
    "storing ports",
    locking "port",
    |d: &tributary_broker::Delivery<PortRecord>| d.event.unlocode.as_str()
);
