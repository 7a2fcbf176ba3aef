//! Index definitions: `index.<name>` → the stored definition and its history, recomputed from scratch.
//!
//! Definitions are last writer wins by stream sequence, one transaction each. A transaction takes the
//! locks of the new constituents, then of the index, so a price batch touching a constituent either commits before the
//! recompute reads it or sees the new definition when it takes the index lock.

use crate::lock;
use crate::prices::{IndexDef, recompute_index};
use std::collections::BTreeMap;
use tributary_broker::Delivery;
use tributary_broker::events::IndexDefinition;
use tributary_store::indices;
use tributary_store::sqlx::{self, PgPool};

/// Consumes `index.<name>`.
#[derive(Clone)]
pub struct IndexHandler {
    pool: PgPool,
}

impl IndexHandler {
    /// A handler writing through `pool`.
    pub fn new(pool: PgPool) -> Self {
        IndexHandler { pool }
    }

    /// Stores the newest definition per index in the batch and recomputes each, one transaction each (a
    /// failure redelivers the batch; the definitions already stored are skipped by their sequence).
    pub async fn commit(&self, batch: &[Delivery<(String, IndexDefinition)>]) -> Result<(), sqlx::Error> {
        let mut newest: BTreeMap<&str, (&IndexDefinition, u64)> = BTreeMap::new();
        for d in batch {
            let (name, def) = &d.event;
            let e = newest.entry(name).or_insert((def, d.seq));
            if d.seq > e.1 {
                *e = (def, d.seq);
            }
        }
        // One transaction per definition, so none locks more than one definition's constituents (at most
        // `IndexDefinition::MAX_CONSTITUENTS`): a batch of large definitions in one transaction overflowed
        // PostgreSQL's lock table ("out of shared memory", retried for ever as a transient failure). And one
        // definition at a time, anywhere (the `definitions` lock, first: see `crate::lock`): the consumer's
        // lanes, and other processors, storing large definitions side by side overflowed it the same way.
        for (name, (def, seq)) in newest {
            let mut tx = lock::begin(&self.pool, lock::DEFINITIONS, [lock::DEFINITIONS]).await?;
            lock::acquire(&mut tx, "price", def.weights.keys().map(String::as_str)).await?;
            lock::acquire(&mut tx, "index", [name]).await?;
            if indices::stored_seq(&mut *tx, name).await?.is_some_and(|s| s >= seq as i64) {
                continue;
            }
            let def = IndexDef {
                name: name.to_owned(),
                base: def.base,
                weights: def.weights.iter().map(|(k, w)| (k.clone(), *w)).collect(),
            };
            indices::store_definition(&mut tx, &def, seq as i64).await?;
            recompute_index(&mut tx, name, None).await?;
            tx.commit().await?;
        }
        Ok(())
    }
}

commits_batches!(
    IndexHandler,
    (String, IndexDefinition),
    |subject, headers, payload, _| IndexDefinition::decode(subject, headers, payload),
    "index definitions",
    "storing index definitions"
);
