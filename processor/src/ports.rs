//! Ports: `port.<unlocode>` → the latest version of each port and the per-country counts, one
//! transaction per batch.
//!
//! Last writer wins by stream sequence: a batch keeps the newest message per port, takes the ports'
//! locks, reads their stored (sequence, country), upserts only the newer ones and moves the country
//! counts by the difference (a new port adds one to its country; a port that changed country moves one).
//! So re-importing the same file changes nothing, and the counts always equal a `GROUP BY` over `ports`.

use crate::lock;
use sea_orm::sqlx::{self, PgPool};
use std::collections::{BTreeMap, HashMap};
use tributary_broker::ports::PortRecord;
use tributary_broker::{BatchHandler, Delivery, HandleError, Rejection, ts::Ts};

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
        let stored: HashMap<String, (i64, Option<String>)> = sqlx::query_as::<_, (String, i64, Option<String>)>(
            "SELECT unlocode, seq, country FROM ports WHERE unlocode = ANY($1)",
        )
        .bind(&codes)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(u, s, c)| (u, (s, c)))
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
            rows.push((p, seq));
        }
        if !rows.is_empty() {
            upsert(&mut tx, &rows).await?;
        }
        counts.retain(|_, d| *d != 0);
        if !counts.is_empty() {
            let (countries, deltas): (Vec<String>, Vec<i64>) = counts.into_iter().unzip();
            sqlx::query(
                "INSERT INTO port_countries (country, ports) SELECT * FROM unnest($1::text[], $2::int8[])
                 ON CONFLICT (country) DO UPDATE SET ports = port_countries.ports + EXCLUDED.ports",
            )
            .bind(&countries)
            .bind(&deltas)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM port_countries WHERE country = ANY($1) AND ports = 0")
                .bind(&countries)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }
}

async fn upsert(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    rows: &[(&PortRecord, i64)],
) -> Result<(), sqlx::Error> {
    let text =
        |f: fn(&PortRecord) -> Option<&str>| rows.iter().map(|(p, _)| f(p).map(str::to_owned)).collect::<Vec<_>>();
    let list = |f: fn(&PortRecord) -> &Vec<String>| {
        rows.iter().map(|(p, _)| serde_json::to_string(f(p)).unwrap_or_else(|_| "[]".into())).collect::<Vec<_>>()
    };
    sqlx::query(
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
    )
    .bind(rows.iter().map(|(p, _)| p.unlocode.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(p, _)| p.port.name.as_str()).collect::<Vec<_>>())
    .bind(text(|p| p.port.city.as_deref()))
    .bind(text(|p| p.port.country.as_deref()))
    .bind(text(|p| p.port.province.as_deref()))
    .bind(text(|p| p.port.timezone.as_deref()))
    .bind(text(|p| p.port.code.as_deref()))
    .bind(list(|p| &p.port.alias))
    .bind(list(|p| &p.port.regions))
    .bind(list(|p| &p.port.unlocs))
    .bind(rows.iter().map(|(p, _)| p.lon_lat.map(|c| c.0)).collect::<Vec<_>>())
    .bind(rows.iter().map(|(p, _)| p.lon_lat.map(|c| c.1)).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, s)| *s).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl BatchHandler for PortHandler {
    type Event = PortRecord;

    fn decode(
        &self,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
        _received: Ts,
    ) -> Result<PortRecord, Rejection> {
        PortRecord::decode(subject, headers, payload)
    }

    async fn handle(&self, batch: &[Delivery<PortRecord>]) -> Result<(), HandleError> {
        crate::commit_in_span("port batch", "storing ports", batch.len(), self.commit(batch)).await
    }
}
