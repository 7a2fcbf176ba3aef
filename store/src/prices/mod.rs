//! Prices: `price_points`, `price_series` and the `settings` row of the derived windows.
//!
//! The processor's writes are bulk statements inside the caller's transaction (the series locked by the
//! caller): [`load_points`] and [`load_after`] read stored points a chunk at a time, [`write_batch`] is a
//! batch's one statement (new points by [`copy`] from [`COPY_MIN_ROWS`] on), [`write_rows`] a later chunk
//! of a rewrite. [`Row`] is a stored point as the derivations see it: derived values are a JSON object in
//! the table and a vector in [`Point`], in the order of the names the caller passes. The API's reads are
//! [`list_series`], [`read_points`] and [`series_exists`]. `windows`: the windows the stored values were
//! computed with, and the reads of a recompute for new ones ([`stored_windows`], [`raw_points`], …).

mod copy;
mod windows;

use crate::entity::price_series;
use crate::{Page, Range, Tx, notify};
use chrono::{DateTime, Utc};
use copy::CopyRows;
use sea_orm::sqlx::{self, PgPool};
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::{Map, Value};
use std::collections::HashMap;
pub use windows::{
    Progress, instruments_after, progress, raw_points, series_count, store_progress, store_windows, stored_windows,
};

/// One point of a series with its derived values.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The price.
    pub price: f64,
    /// The simple return against the previous point.
    pub ret: Option<f64>,
    /// The derived values, in the order of the windows' names.
    pub values: Vec<Option<f64>>,
}

impl Point {
    /// A point whose derived values are not computed yet.
    pub fn raw(price: f64) -> Point {
        Point { price, ret: None, values: Vec::new() }
    }
}

/// A stored (or about to be stored) row of `price_points`, its instrument aside.
#[derive(Debug, Clone)]
pub struct Row {
    /// The point's time.
    pub ts: DateTime<Utc>,
    /// The traded volume, if given.
    pub volume: Option<f64>,
    /// The stream sequence of the event that last wrote the point: the newer write wins.
    pub seq: i64,
    /// The price and its derived values.
    pub point: Point,
}

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

/// Per instrument: (the `window` stored points before its start, ascending; at most `chunk` stored points
/// from its start on, ascending). Fewer than `chunk` points from the start means the series' end was read.
pub async fn load_points(
    tx: &mut Tx,
    starts: &[(&str, DateTime<Utc>)],
    window: usize,
    chunk: usize,
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
                FROM price_points p WHERE p.instrument = q.instrument AND p.ts >= q.t0
                ORDER BY p.ts LIMIT $4)
           ) w",
    )
    .bind(&instruments)
    .bind(&froms)
    .bind(window as i64)
    .bind(chunk as i64)
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

/// At most `chunk` stored points of `instrument` after `after`, ascending: the next chunk of a rewrite.
pub async fn load_after(
    tx: &mut Tx,
    instrument: &str,
    after: DateTime<Utc>,
    chunk: usize,
    names: &[String],
) -> Result<Vec<Row>, sqlx::Error> {
    let rows: Vec<PointRow> = sqlx::query_as(
        "SELECT instrument, ts, price, volume, seq, ret, derived, true FROM price_points
          WHERE instrument = $1 AND ts > $2 ORDER BY ts LIMIT $3",
    )
    .bind(instrument)
    .bind(after)
    .bind(chunk as i64)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.iter().map(|r| row_of(r, names)).collect())
}

/// The stored points of `instrument` a rewrite needs to go on at `next` once its recompute has settled
/// at `after`: the last `window` points between them (after `after`, before `next`) and at most `chunk`
/// points from `next` on, each ascending. The points in between are as stored and need no reading: a
/// correction deep in a long series batched with an append read every point between the two.
pub async fn load_skipping(
    tx: &mut Tx,
    instrument: &str,
    after: DateTime<Utc>,
    next: DateTime<Utc>,
    window: usize,
    chunk: usize,
    names: &[String],
) -> Result<(Vec<Row>, Vec<Row>), sqlx::Error> {
    let rows: Vec<PointRow> = sqlx::query_as(
        "(SELECT instrument, ts, price, volume, seq, ret, derived, false FROM price_points
           WHERE instrument = $1 AND ts > $2 AND ts < $3 ORDER BY ts DESC LIMIT $4)
         UNION ALL
         (SELECT instrument, ts, price, volume, seq, ret, derived, true FROM price_points
           WHERE instrument = $1 AND ts >= $3 ORDER BY ts LIMIT $5)",
    )
    .bind(instrument)
    .bind(after)
    .bind(next)
    .bind(window as i64)
    .bind(chunk as i64)
    .fetch_all(&mut **tx)
    .await?;
    let (mut before, mut from) = (Vec::new(), Vec::new());
    for r in &rows {
        if r.7 { from.push(row_of(r, names)) } else { before.push(row_of(r, names)) }
    }
    before.sort_unstable_by_key(|r| r.ts);
    from.sort_unstable_by_key(|r| r.ts);
    Ok((before, from))
}

/// Upserts rows of `instrument` (guarded by sequence): a later chunk of a rewrite, written as it goes so
/// that memory does not grow with the series. The series row is written with the batch ([`write_batch`]).
pub async fn write_rows(tx: &mut Tx, instrument: &str, rows: &[Row], names: &[String]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let rows: Vec<(&str, Row)> = rows.iter().map(|r| (instrument, r.clone())).collect();
    let c = Columns::of(&rows, names);
    sqlx::query(
        "INSERT INTO price_points (instrument, ts, price, volume, seq, ret, derived)
         SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::float8[], $5::int8[], $6::float8[], $7::jsonb[])
         ON CONFLICT (instrument, ts) DO UPDATE
           SET price = EXCLUDED.price, volume = EXCLUDED.volume, seq = EXCLUDED.seq,
               ret = EXCLUDED.ret, derived = EXCLUDED.derived
         WHERE price_points.seq <= EXCLUDED.seq",
    )
    .bind(&c.instrument)
    .bind(&c.ts)
    .bind(&c.price)
    .bind(&c.volume)
    .bind(&c.seq)
    .bind(&c.ret)
    .bind(&c.derived)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// From this many new points on, a batch sends them by `COPY` (two round trips more, and cheaper per row
/// than an `INSERT` from arrays); below it they go in the batch's one statement ([`write_batch`]).
const COPY_MIN_ROWS: usize = 256;

/// The rows of one batch: points new to their series, points already stored (rewritten), and per series
/// how many points were added and their span.
pub struct Writes<'a> {
    names: &'a [String],
    new: Vec<(&'a str, Row)>,
    rewritten: Vec<(&'a str, Row)>,
    series: (Vec<&'a str>, Vec<i64>, Vec<Option<DateTime<Utc>>>, Vec<Option<DateTime<Utc>>>),
}

impl<'a> Writes<'a> {
    /// No rows yet, for derived values named `names`.
    pub fn new(names: &'a [String]) -> Writes<'a> {
        Writes { names, new: Vec::new(), rewritten: Vec::new(), series: Default::default() }
    }

    /// Adds the rows of `instrument` (ascending) of which those at `added` (ascending) are not stored (added
    /// points past the rows were written with a later chunk of a rewrite, [`write_rows`]; they count here):
    /// the caller holds the series' lock and has read it (or trusts a cached tail that [`write_batch`]'s
    /// versions then confirm) in this transaction, so no one else can have stored them.
    pub fn push(&mut self, instrument: &'a str, rows: Vec<Row>, added: Vec<DateTime<Utc>>) {
        let mut new = added.iter().peekable();
        for r in rows {
            if new.next_if(|t| **t == r.ts).is_some() {
                self.new.push((instrument, r));
            } else {
                self.rewritten.push((instrument, r));
            }
        }
        self.series.0.push(instrument);
        self.series.1.push(added.len() as i64);
        self.series.2.push(added.first().copied());
        self.series.3.push(added.last().copied());
    }
}

/// `price_points` rows column by column, for `unnest`.
#[derive(Default)]
struct Columns<'a> {
    instrument: Vec<&'a str>,
    ts: Vec<DateTime<Utc>>,
    price: Vec<f64>,
    volume: Vec<Option<f64>>,
    seq: Vec<i64>,
    ret: Vec<Option<f64>>,
    derived: Vec<Value>,
}

impl<'a> Columns<'a> {
    fn of(rows: &[(&'a str, Row)], names: &[String]) -> Columns<'a> {
        let mut c = Columns::default();
        for (instrument, r) in rows {
            c.instrument.push(instrument);
            c.ts.push(r.ts);
            c.price.push(r.point.price);
            c.volume.push(r.volume);
            c.seq.push(r.seq);
            c.ret.push(r.point.ret);
            c.derived.push(derived_of(&r.point.values, names));
        }
        c
    }
}

/// What [`write_batch`] reports.
pub struct Written {
    /// The new version of every series written.
    pub versions: HashMap<String, i64>,
    /// The indices that hold any of the changed instruments, sorted.
    pub indices: Vec<String>,
    /// The changed instruments that are constituents, each with an index over it.
    pub constituents: Vec<(String, String)>,
    /// The windows the stored derived values are recorded as computed with ([`stored_windows`]), read by
    /// the statement that wrote, after the batch's locks were taken: a processor whose windows differ
    /// must not commit (another recomputed, or is recomputing, every series for these). `None` when
    /// nothing was written or none are recorded.
    pub windows: Option<Value>,
}

/// The one statement of a batch's writes: new points (unless sent by `COPY`), rewritten points (guarded
/// by sequence), the per-series summary with its version bumped, the notification of readers (sent on
/// commit; see [`crate::notify`]), the names of the indices over the changed instruments, and the windows
/// the stored derived values are recorded as computed with. One round trip, where these were six
/// statements.
const WRITE_BATCH: &str = "
WITH new_points AS (
  INSERT INTO price_points (instrument, ts, price, volume, seq, ret, derived)
  SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::float8[], $5::int8[], $6::float8[], $7::jsonb[])
), rewritten AS (
  INSERT INTO price_points (instrument, ts, price, volume, seq, ret, derived)
  SELECT * FROM unnest($8::text[], $9::timestamptz[], $10::float8[], $11::float8[], $12::int8[], $13::float8[], $14::jsonb[])
  ON CONFLICT (instrument, ts) DO UPDATE
    SET price = EXCLUDED.price, volume = EXCLUDED.volume, seq = EXCLUDED.seq,
        ret = EXCLUDED.ret, derived = EXCLUDED.derived
  WHERE price_points.seq <= EXCLUDED.seq
), series AS (
  -- A batch that added no point to a series (a correction) leaves its span as it was; such a series
  -- exists already, so the placeholder span of the proposed row is never inserted.
  INSERT INTO price_series (instrument, points, first_ts, last_ts)
  SELECT i, n, coalesce(f, 'epoch'), coalesce(l, 'epoch')
    FROM unnest($15::text[], $16::int8[], $17::timestamptz[], $18::timestamptz[]) AS u(i, n, f, l)
  ON CONFLICT (instrument) DO UPDATE
    SET points = price_series.points + EXCLUDED.points,
        first_ts = CASE WHEN EXCLUDED.points = 0 THEN price_series.first_ts
                        ELSE LEAST(price_series.first_ts, EXCLUDED.first_ts) END,
        last_ts = CASE WHEN EXCLUDED.points = 0 THEN price_series.last_ts
                       ELSE GREATEST(price_series.last_ts, EXCLUDED.last_ts) END,
        version = price_series.version + 1,
        updated_at = now()
  RETURNING instrument, version
), notified AS (
  SELECT count(pg_notify($19, p)) AS n FROM unnest($20::text[]) AS p
)
SELECT 's' AS kind, instrument AS name, version, NULL AS constituent FROM series
UNION ALL
SELECT 'n', NULL, n, NULL FROM notified
UNION ALL
SELECT 'i', name, NULL::int8, instrument FROM index_constituents WHERE instrument = ANY($21)
UNION ALL
SELECT 'w', value::text, NULL, NULL FROM settings WHERE key = $22";

/// Stores a batch's rows, bumps the version of every series written and notifies readers (see
/// [`WRITE_BATCH`]); `changed` are the instruments whose prices changed, for the indices over them and
/// which of them are constituents.
pub async fn write_batch(tx: &mut Tx, w: Writes<'_>, changed: &[&str]) -> Result<Written, sqlx::Error> {
    if w.series.0.is_empty() {
        // Only redeliveries: nothing written, nothing changed.
        return Ok(Written { versions: HashMap::new(), indices: Vec::new(), constituents: Vec::new(), windows: None });
    }
    let names = w.names;
    let new = if w.new.len() >= COPY_MIN_ROWS {
        let mut rows = CopyRows::new(names);
        for (instrument, r) in &w.new {
            rows.push(instrument, r);
        }
        let mut copy = tx.copy_in_raw(copy::STATEMENT).await?;
        copy.send(rows.finish()).await?;
        copy.finish().await?;
        Columns::default()
    } else {
        Columns::of(&w.new, names)
    };
    let old = Columns::of(&w.rewritten, names);
    let payloads = notify::payloads(w.series.0.iter().copied());
    let rows: Vec<(String, Option<String>, Option<i64>, Option<String>)> = sqlx::query_as(WRITE_BATCH)
        .bind(&new.instrument)
        .bind(&new.ts)
        .bind(&new.price)
        .bind(&new.volume)
        .bind(&new.seq)
        .bind(&new.ret)
        .bind(&new.derived)
        .bind(&old.instrument)
        .bind(&old.ts)
        .bind(&old.price)
        .bind(&old.volume)
        .bind(&old.seq)
        .bind(&old.ret)
        .bind(&old.derived)
        .bind(&w.series.0)
        .bind(&w.series.1)
        .bind(&w.series.2)
        .bind(&w.series.3)
        .bind(notify::PRICE_SERIES_CHANNEL)
        .bind(&payloads)
        .bind(changed)
        .bind(windows::TRANSFORMS_KEY)
        .fetch_all(&mut **tx)
        .await?;
    let mut out = Written {
        versions: HashMap::with_capacity(w.series.0.len()),
        indices: Vec::new(),
        constituents: Vec::new(),
        windows: None,
    };
    for (kind, name, version, constituent) in rows {
        match (kind.as_str(), name, version, constituent) {
            ("s", Some(name), Some(version), _) => {
                out.versions.insert(name, version);
            }
            ("i", Some(name), _, Some(instrument)) => {
                out.indices.push(name.clone());
                out.constituents.push((instrument, name));
            }
            // Refused rather than let through, should it ever not parse.
            ("w", Some(windows), _, _) => out.windows = Some(serde_json::from_str(&windows).unwrap_or(Value::Null)),
            _ => {}
        }
    }
    out.indices.sort_unstable();
    out.indices.dedup();
    Ok(out)
}

/// A row of `price_series`: one instrument's point count and span.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesRow {
    /// The instrument.
    pub instrument: String,
    /// How many points it has.
    pub points: i64,
    /// Its first point's time.
    pub first_ts: DateTime<Utc>,
    /// Its last point's time.
    pub last_ts: DateTime<Utc>,
}

/// A page of the series, by instrument.
pub async fn list_series(db: &DatabaseConnection, page: &Page) -> Result<Vec<SeriesRow>, DbErr> {
    let mut q = price_series::Entity::find();
    if let Some(after) = &page.after {
        q = q.filter(price_series::Column::Instrument.gt(after.as_str()));
    }
    let rows = q.order_by_asc(price_series::Column::Instrument).limit(page.limit).all(db).await?;
    Ok(rows
        .into_iter()
        .map(|r| SeriesRow { instrument: r.instrument, points: r.points, first_ts: r.first_ts, last_ts: r.last_ts })
        .collect())
}

/// Whether `instrument` has a series.
pub async fn series_exists(db: &DatabaseConnection, instrument: &str) -> Result<bool, DbErr> {
    Ok(price_series::Entity::find_by_id(instrument.to_owned()).one(db).await?.is_some())
}

/// A point as the API serves it: the derived values as the JSON text PostgreSQL prints, to be spliced
/// into a response unparsed.
#[derive(Debug, Clone, PartialEq)]
pub struct PointText {
    /// The point's time.
    pub ts: DateTime<Utc>,
    /// The price.
    pub price: f64,
    /// The volume, if given.
    pub volume: Option<f64>,
    /// The simple return.
    pub ret: Option<f64>,
    /// The derived values, a JSON object.
    pub derived: String,
}

/// The points of `instrument` in `range`, newest first.
///
/// The bounds are `coalesce`d to infinities, not written `$2 IS NULL OR ts >= $2`: under a generic plan
/// (a prepared statement after five runs) that OR is a filter over every point of the instrument, where
/// the coalesced bound is an index range.
pub async fn read_points(pool: &PgPool, instrument: &str, range: Range) -> Result<Vec<PointText>, sqlx::Error> {
    let rows: Vec<(DateTime<Utc>, f64, Option<f64>, Option<f64>, String)> = sqlx::query_as(
        "SELECT ts, price, volume, ret, derived::text FROM price_points
          WHERE instrument = $1 AND ts >= coalesce($2, '-infinity'::timestamptz)
            AND ts <= coalesce($3, 'infinity'::timestamptz)
          ORDER BY ts DESC LIMIT $4",
    )
    .bind(instrument)
    .bind(range.from)
    .bind(range.to)
    .bind(range.limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| PointText { ts: r.0, price: r.1, volume: r.2, ret: r.3, derived: r.4 }).collect())
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
