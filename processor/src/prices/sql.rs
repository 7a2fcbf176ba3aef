//! The SQL of the price and index paths: bulk reads and `UNNEST ... ON CONFLICT` writes, one bind per
//! column, inside the caller's transaction.

use super::Row;
use super::copy::{self, CopyRows};
use super::index;
use super::series::{Point, Transforms, recompute};
use crate::lock;
use chrono::{DateTime, Utc};
use sea_orm::sqlx::{self, PgPool, Postgres, Transaction};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use tributary_store::notify;

type Tx = Transaction<'static, Postgres>;

fn values_of(derived: &Value, names: &[String]) -> Vec<Option<f64>> {
    names.iter().map(|n| derived.get(n).and_then(Value::as_f64)).collect()
}

fn derived_of(values: &[Option<f64>], names: &[String]) -> Value {
    let mut m = Map::with_capacity(names.len());
    for (n, v) in names.iter().zip(values) {
        m.insert(n.clone(), v.map_or(Value::Null, Value::from));
    }
    Value::Object(m)
}

type PointRow = (String, DateTime<Utc>, f64, Option<f64>, i64, Option<f64>, Value, bool);

fn row_of(r: &PointRow, names: &[String]) -> Row {
    Row { ts: r.1, volume: r.3, seq: r.4, point: Point { price: r.2, ret: r.5, values: values_of(&r.6, names) } }
}

/// Per instrument: (the `window` stored points before its start, ascending; the stored points from its
/// start on, ascending).
pub(crate) async fn load_points(
    tx: &mut Tx,
    starts: &[(&str, DateTime<Utc>)],
    window: usize,
    names: &[String],
) -> Result<HashMap<String, (Vec<Row>, Vec<Row>)>, sqlx::Error> {
    if starts.is_empty() {
        return Ok(HashMap::new());
    }
    let instruments: Vec<&str> = starts.iter().map(|s| s.0).collect();
    let froms: Vec<DateTime<Utc>> = starts.iter().map(|s| s.1).collect();
    let rows: Vec<PointRow> = sqlx::query_as(
        "SELECT q.instrument, w.ts, w.price, w.volume, w.seq, w.ret, w.derived, w.tail
           FROM unnest($1::text[], $2::timestamptz[]) AS q(instrument, t0)
           CROSS JOIN LATERAL (
             (SELECT p.ts, p.price, p.volume, p.seq, p.ret, p.derived, false AS tail
                FROM price_points p WHERE p.instrument = q.instrument AND p.ts < q.t0
                ORDER BY p.ts DESC LIMIT $3)
             UNION ALL
             (SELECT p.ts, p.price, p.volume, p.seq, p.ret, p.derived, true
                FROM price_points p WHERE p.instrument = q.instrument AND p.ts >= q.t0)
           ) w",
    )
    .bind(&instruments)
    .bind(&froms)
    .bind(window as i64)
    .fetch_all(&mut **tx)
    .await?;
    let mut out: HashMap<String, (Vec<Row>, Vec<Row>)> = HashMap::new();
    for r in &rows {
        let e = out.entry(r.0.clone()).or_default();
        if r.7 { e.1.push(row_of(r, names)) } else { e.0.push(row_of(r, names)) }
    }
    for (w, t) in out.values_mut() {
        w.sort_unstable_by_key(|r| r.ts);
        t.sort_unstable_by_key(|r| r.ts);
    }
    Ok(out)
}

/// The rows of one batch: points new to their series as `COPY` rows, points already stored column by
/// column for an upsert, and per series how many points were added and their span.
pub(crate) struct Writes<'a> {
    names: &'a [String],
    new: CopyRows,
    instrument: Vec<String>,
    ts: Vec<DateTime<Utc>>,
    price: Vec<f64>,
    volume: Vec<Option<f64>>,
    seq: Vec<i64>,
    ret: Vec<Option<f64>>,
    derived: Vec<Value>,
    series: (Vec<String>, Vec<i64>, Vec<Option<DateTime<Utc>>>, Vec<Option<DateTime<Utc>>>),
}

impl<'a> Writes<'a> {
    /// No rows yet, for derived values named `names`.
    pub(crate) fn new(names: &'a [String]) -> Writes<'a> {
        Writes {
            names,
            new: CopyRows::new(names),
            instrument: Vec::new(),
            ts: Vec::new(),
            price: Vec::new(),
            volume: Vec::new(),
            seq: Vec::new(),
            ret: Vec::new(),
            derived: Vec::new(),
            series: Default::default(),
        }
    }

    /// Adds the rows of `instrument` (ascending) of which those at `added` (ascending) are not stored:
    /// the caller holds the series' lock and has read it (or validated its cached tail) in this
    /// transaction, so no one else can have stored them.
    pub(crate) fn push(&mut self, instrument: &str, rows: &[Row], added: Vec<DateTime<Utc>>) {
        let mut new = added.iter().peekable();
        for r in rows {
            if new.next_if(|t| **t == r.ts).is_some() {
                self.new.push(instrument, r);
                continue;
            }
            self.instrument.push(instrument.to_owned());
            self.ts.push(r.ts);
            self.price.push(r.point.price);
            self.volume.push(r.volume);
            self.seq.push(r.seq);
            self.ret.push(r.point.ret);
            self.derived.push(derived_of(&r.point.values, self.names));
        }
        debug_assert!(new.next().is_none(), "every added point is among the rows");
        self.series.0.push(instrument.to_owned());
        self.series.1.push(added.len() as i64);
        self.series.2.push(added.first().copied());
        self.series.3.push(added.last().copied());
    }
}

/// The current version of each existing series among `instruments`.
pub(crate) async fn series_versions<'a>(
    tx: &mut Tx,
    instruments: impl Iterator<Item = &'a str>,
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let instruments: Vec<&str> = instruments.collect();
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT instrument, version FROM price_series WHERE instrument = ANY($1)")
            .bind(&instruments)
            .fetch_all(&mut **tx)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Upserts points (guarded by sequence) and the per-instrument summary, bumping the version of every
/// series written; returns the new versions.
pub(crate) async fn write_points(tx: &mut Tx, w: Writes<'_>) -> Result<HashMap<String, i64>, sqlx::Error> {
    if !w.new.is_empty() {
        let mut copy = tx.copy_in_raw(copy::STATEMENT).await?;
        copy.send(w.new.finish()).await?;
        copy.finish().await?;
    }
    if !w.instrument.is_empty() {
        sqlx::query(
            "INSERT INTO price_points (instrument, ts, price, volume, seq, ret, derived)
             SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::float8[], $5::int8[], $6::float8[], $7::jsonb[])
             ON CONFLICT (instrument, ts) DO UPDATE
               SET price = EXCLUDED.price, volume = EXCLUDED.volume, seq = EXCLUDED.seq,
                   ret = EXCLUDED.ret, derived = EXCLUDED.derived
             WHERE price_points.seq <= EXCLUDED.seq",
        )
        .bind(&w.instrument)
        .bind(&w.ts)
        .bind(&w.price)
        .bind(&w.volume)
        .bind(&w.seq)
        .bind(&w.ret)
        .bind(&w.derived)
        .execute(&mut **tx)
        .await?;
    }
    if w.series.0.is_empty() {
        return Ok(HashMap::new());
    }
    // A batch that added no point to a series (a correction) leaves its span as it was; such a series
    // exists already, so the placeholder span of the proposed row is never inserted.
    let versions: Vec<(String, i64)> = sqlx::query_as(
        "INSERT INTO price_series (instrument, points, first_ts, last_ts)
         SELECT i, n, coalesce(f, 'epoch'), coalesce(l, 'epoch')
           FROM unnest($1::text[], $2::int8[], $3::timestamptz[], $4::timestamptz[]) AS u(i, n, f, l)
         ON CONFLICT (instrument) DO UPDATE
           SET points = price_series.points + EXCLUDED.points,
               first_ts = CASE WHEN EXCLUDED.points = 0 THEN price_series.first_ts
                               ELSE LEAST(price_series.first_ts, EXCLUDED.first_ts) END,
               last_ts = CASE WHEN EXCLUDED.points = 0 THEN price_series.last_ts
                              ELSE GREATEST(price_series.last_ts, EXCLUDED.last_ts) END,
               version = price_series.version + 1,
               updated_at = now()
         RETURNING instrument, version",
    )
    .bind(&w.series.0)
    .bind(&w.series.1)
    .bind(&w.series.2)
    .bind(&w.series.3)
    .fetch_all(&mut **tx)
    .await?;
    Ok(versions.into_iter().collect())
}

/// Tells readers, once the transaction commits, that `series` changed (see [`tributary_store::notify`]).
pub(crate) async fn notify_written<'a>(
    tx: &mut Tx,
    series: impl IntoIterator<Item = &'a str>,
) -> Result<(), sqlx::Error> {
    let payloads = notify::payloads(series);
    if payloads.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .bind(notify::PRICE_SERIES_CHANNEL)
        .bind(&payloads)
        .execute(&mut **tx)
        .await
        .map(|_| ())
}

/// The names of the indices that hold any of `instruments`, sorted.
pub(crate) async fn indices_of<'a>(
    tx: &mut Tx,
    instruments: impl Iterator<Item = &'a str>,
) -> Result<Vec<String>, sqlx::Error> {
    let instruments: Vec<&str> = instruments.collect();
    sqlx::query_scalar("SELECT DISTINCT name FROM index_constituents WHERE instrument = ANY($1) ORDER BY name")
        .bind(&instruments)
        .fetch_all(&mut **tx)
        .await
}

/// A stored index definition.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexDef {
    /// The index's name.
    pub name: String,
    /// The level of the first index date.
    pub base: f64,
    /// (instrument, weight), by instrument name.
    pub weights: Vec<(String, f64)>,
}

/// Reads the definitions of `names`.
pub(crate) async fn index_defs(tx: &mut Tx, names: &[String]) -> Result<Vec<IndexDef>, sqlx::Error> {
    let rows: Vec<(String, f64, String, f64)> = sqlx::query_as(
        "SELECT i.name, i.base, c.instrument, c.weight FROM indices i JOIN index_constituents c USING (name)
          WHERE i.name = ANY($1) ORDER BY i.name, c.instrument",
    )
    .bind(names)
    .fetch_all(&mut **tx)
    .await?;
    let mut out: Vec<IndexDef> = Vec::new();
    for (name, base, instrument, weight) in rows {
        match out.last_mut() {
            Some(d) if d.name == name => d.weights.push((instrument, weight)),
            _ => out.push(IndexDef { name, base, weights: vec![(instrument, weight)] }),
        }
    }
    Ok(out)
}

/// The constituents' prices from an index date on (the recompute's input after its anchor).
pub const INDEX_PRICES_SINCE: &str =
    "SELECT instrument, ts, price FROM price_points WHERE instrument = ANY($1) AND ts >= $2";
/// All the constituents' prices (a recompute from scratch).
const INDEX_PRICES_ALL: &str = "SELECT instrument, ts, price FROM price_points WHERE instrument = ANY($1)";

/// Recomputes an index from the last index date before `from` forward (from scratch when `from` is
/// `None` or precedes every index date). The caller holds the locks of the index and its constituents.
pub async fn recompute_index(tx: &mut Tx, def: &IndexDef, from: Option<DateTime<Utc>>) -> Result<(), sqlx::Error> {
    let anchor: Option<(DateTime<Utc>, f64)> = match from {
        Some(f) => {
            sqlx::query_as("SELECT ts, level FROM index_points WHERE name = $1 AND ts < $2 ORDER BY ts DESC LIMIT 1")
                .bind(&def.name)
                .bind(f)
                .fetch_optional(&mut **tx)
                .await?
        }
        None => None,
    };
    let since = anchor.map(|a| a.0);
    let instruments: Vec<&str> = def.weights.iter().map(|w| w.0.as_str()).collect();
    // Two statements, not one with `$2 IS NULL OR ts >= $2`: under a generic plan that OR is a filter
    // applied to every stored point of the constituents, so each recompute would read the whole history
    // (likewise the delete below for the index's own levels).
    let rows: Vec<(String, DateTime<Utc>, f64)> = match since {
        Some(since) => sqlx::query_as(INDEX_PRICES_SINCE).bind(&instruments).bind(since).fetch_all(&mut **tx).await?,
        None => sqlx::query_as(INDEX_PRICES_ALL).bind(&instruments).fetch_all(&mut **tx).await?,
    };
    let mut prices: HashMap<String, BTreeMap<DateTime<Utc>, f64>> = HashMap::new();
    for (i, ts, p) in rows {
        prices.entry(i).or_default().insert(ts, p);
    }
    let levels = index::levels(def.base, &def.weights, &prices, anchor).map_err(sqlx::Error::Protocol)?;
    match since {
        Some(since) => sqlx::query("DELETE FROM index_points WHERE name = $1 AND ts > $2").bind(&def.name).bind(since),
        None => sqlx::query("DELETE FROM index_points WHERE name = $1").bind(&def.name),
    }
    .execute(&mut **tx)
    .await?;
    if !levels.is_empty() {
        let ts: Vec<DateTime<Utc>> = levels.iter().map(|l| l.ts).collect();
        let level: Vec<f64> = levels.iter().map(|l| l.level).collect();
        let ret: Vec<Option<f64>> = levels.iter().map(|l| l.ret).collect();
        sqlx::query("INSERT INTO index_points (name, ts, level, ret) SELECT $1, * FROM unnest($2::timestamptz[], $3::float8[], $4::float8[])")
            .bind(&def.name)
            .bind(&ts)
            .bind(&level)
            .bind(&ret)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

const TRANSFORMS_KEY: &str = "price_transforms";

/// Makes stored derived values match the configured windows: when the windows differ from the ones the
/// values were computed with, every series is recomputed. Returns how many series were recomputed.
pub async fn reconcile_transforms(pool: &PgPool, t: &Transforms) -> Result<usize, sqlx::Error> {
    let names = t.names();
    let wanted = Value::from(names.clone());
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock::key("settings", TRANSFORMS_KEY))
        .execute(&mut *tx)
        .await?;
    let stored: Option<Value> = sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
        .bind(TRANSFORMS_KEY)
        .fetch_optional(&mut *tx)
        .await?;
    if stored.as_ref() == Some(&wanted) {
        return tx.commit().await.map(|_| 0);
    }
    let instruments: Vec<String> =
        sqlx::query_scalar("SELECT instrument FROM price_series ORDER BY instrument").fetch_all(&mut *tx).await?;
    for instrument in &instruments {
        lock::acquire(&mut tx, "price", [instrument.as_str()]).await?;
        let rows: Vec<(DateTime<Utc>, f64, Option<f64>, i64)> =
            sqlx::query_as("SELECT ts, price, volume, seq FROM price_points WHERE instrument = $1 ORDER BY ts")
                .bind(instrument)
                .fetch_all(&mut *tx)
                .await?;
        let mut points: Vec<Point> = rows.iter().map(|r| Point::raw(r.1)).collect();
        recompute(t, &mut points, 0);
        let rows: Vec<Row> =
            rows.iter().zip(points).map(|(r, point)| Row { ts: r.0, volume: r.2, seq: r.3, point }).collect();
        let mut w = Writes::new(&names);
        w.push(instrument, &rows, Vec::new());
        write_points(&mut tx, w).await?;
    }
    if !instruments.is_empty() {
        notify_written(&mut tx, [notify::ALL_SERIES]).await?;
    }
    sqlx::query(
        "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
    )
    .bind(TRANSFORMS_KEY)
    .bind(&wanted)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(instruments.len())
}

#[cfg(test)]
mod tests {
    use super::{derived_of, values_of};

    /// Derived values live in jsonb: text out and back in must give the same bits, or incremental
    /// results drift from the batch computation in the last digit (serde_json needs `float_roundtrip`).
    #[test]
    fn derived_values_round_trip_through_json_text_exactly() {
        let names: Vec<String> = (0..4).map(|i| format!("v{i}")).collect();
        let mut x = 0.1f64;
        for _ in 0..10_000 {
            x = (x * 1.618_033_988_749_895 + 98.563_148_448_493_21).fract() * 1e3;
            let values = vec![Some(x), None, Some(-x / 7.0), Some(x.sqrt())];
            let text = derived_of(&values, &names).to_string();
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            let got = values_of(&back, &names);
            for (a, b) in values.iter().zip(&got) {
                assert_eq!(a.map(f64::to_bits), b.map(f64::to_bits), "{text}");
            }
        }
    }
}
