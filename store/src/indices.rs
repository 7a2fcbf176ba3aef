//! Indices: `indices` (definitions), `index_constituents` (their weights, by instrument) and
//! `index_points` (levels).
//!
//! The processor stores definitions ([`stored_seq`], [`store_definition`]) and recomputes levels a chunk
//! at a time: [`prices_since`] reads the anchor and the constituents' prices after it, [`prices_from`]
//! the next chunk, [`store_levels`] writes a chunk's levels. The API reads [`list`], [`definition`] and
//! [`levels`].

use crate::entity::{index_points, indices};
use crate::{Range, Tx};
use chrono::{DateTime, Utc};
use sea_orm::sqlx;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

pub use index_points::Model as LevelRow;
pub use indices::Model as DefinitionRow;

/// A stored index definition.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexDef {
    /// The index's name.
    pub name: String,
    /// The level of the first index date.
    pub base: f64,
    /// (instrument, weight), in byte order of the instrument names.
    pub weights: Vec<(String, f64)>,
}

/// Reads the definitions of `names`.
pub async fn definitions(tx: &mut Tx, names: &[String]) -> Result<Vec<IndexDef>, sqlx::Error> {
    let mut rows: Vec<(String, f64, String, f64)> = sqlx::query_as(
        "SELECT i.name, i.base, c.instrument, c.weight FROM indices i JOIN index_constituents c USING (name)
          WHERE i.name = ANY($1)",
    )
    .bind(names)
    .fetch_all(&mut **tx)
    .await?;
    // Weights in byte order of the instrument names, the order the level computation sums in and a
    // definition's own (a `BTreeMap`): an `ORDER BY` would follow the database's collation, under which
    // (`en-US`, say) `a` sorts before `A` and `Z`, and the sum would differ in its last bits from the one of
    // the definition's own recompute.
    rows.sort_unstable_by(|a, b| (&a.0, &a.2).cmp(&(&b.0, &b.2)));
    let mut out: Vec<IndexDef> = Vec::new();
    for (name, base, instrument, weight) in rows {
        match out.last_mut() {
            Some(d) if d.name == name => d.weights.push((instrument, weight)),
            _ => out.push(IndexDef { name, base, weights: vec![(instrument, weight)] }),
        }
    }
    Ok(out)
}

/// The constituents' prices from the index's last date before `$2` on (at most `$4` per constituent), led
/// by that date and its level (the anchor: a row with a NULL instrument); nothing when the index has no
/// date before `$2`. The anchor's date is a sub-select, not a join, so that it bounds the primary-key scan
/// like a parameter (a join condition was planned as a filter over a sequential scan, from the statistics
/// of a young table).
pub const INDEX_PRICES_SINCE: &str = "
WITH anchor AS (SELECT ts, level FROM index_points WHERE name = $1 AND ts < $2 ORDER BY ts DESC LIMIT 1)
SELECT NULL::text AS instrument, ts, level AS price FROM anchor
UNION ALL
SELECT q.instrument, p.ts, p.price FROM unnest($3::text[]) AS q(instrument)
  CROSS JOIN LATERAL (SELECT ts, price FROM price_points
                       WHERE instrument = q.instrument AND ts >= (SELECT ts FROM anchor) ORDER BY ts LIMIT $4) p";
/// The constituents' prices from `$2` on (from the start when NULL), at most `$3` per constituent: the next
/// chunk of a recompute.
const INDEX_PRICES_FROM: &str = "
SELECT q.instrument, p.ts, p.price FROM unnest($1::text[]) AS q(instrument)
  CROSS JOIN LATERAL (SELECT ts, price FROM price_points
                       WHERE instrument = q.instrument AND ts >= coalesce($2, '-infinity'::timestamptz)
                       ORDER BY ts LIMIT $3) p";

/// Writes an index's levels in (`$2`, `$6`] (unbounded where NULL) and deletes the dates there that are
/// no longer index dates, in one statement. The delete sees the table as it was before the statement, so it
/// must spare the dates the insert writes (`NOT IN` a hashed set).
const STORE_LEVELS: &str = "
WITH stored AS (
  INSERT INTO index_points (name, ts, level, ret)
  SELECT $1, * FROM unnest($3::timestamptz[], $4::float8[], $5::float8[])
  ON CONFLICT (name, ts) DO UPDATE SET level = EXCLUDED.level, ret = EXCLUDED.ret
)
DELETE FROM index_points
 WHERE name = $1 AND ts > coalesce($2::timestamptz, '-infinity') AND ts <= coalesce($6::timestamptz, 'infinity')
   AND ts NOT IN (SELECT unnest($3::timestamptz[]))";

/// A constituent's price (or, with no instrument, the anchor: the index's last date before the start and
/// its level).
pub type PriceRow = (Option<String>, DateTime<Utc>, f64);

/// [`INDEX_PRICES_SINCE`]: the anchor before `from` and at most `per` prices of each of `instruments` from
/// it on; nothing when the index has no date before `from`.
pub async fn prices_since(
    tx: &mut Tx,
    name: &str,
    from: DateTime<Utc>,
    instruments: &[&str],
    per: usize,
) -> Result<Vec<PriceRow>, sqlx::Error> {
    sqlx::query_as(INDEX_PRICES_SINCE)
        .bind(name)
        .bind(from)
        .bind(instruments)
        .bind(per as i64)
        .fetch_all(&mut **tx)
        .await
}

/// At most `per` prices of each of `instruments` from `from` on (from the start when `None`).
pub async fn prices_from(
    tx: &mut Tx,
    instruments: &[&str],
    from: Option<DateTime<Utc>>,
    per: usize,
) -> Result<Vec<PriceRow>, sqlx::Error> {
    sqlx::query_as(INDEX_PRICES_FROM).bind(instruments).bind(from).bind(per as i64).fetch_all(&mut **tx).await
}

/// One chunk of levels: dates, levels and returns, ascending.
#[derive(Debug, Default)]
pub struct Levels {
    /// The dates.
    pub ts: Vec<DateTime<Utc>>,
    /// The level at each date.
    pub level: Vec<f64>,
    /// The return against the date before.
    pub ret: Vec<Option<f64>>,
}

/// Writes `levels` of index `name` as its levels in (`after`, `until`] (unbounded where `None`), deleting
/// the dates there that are not in `levels` ([`STORE_LEVELS`]).
pub async fn store_levels(
    tx: &mut Tx,
    name: &str,
    after: Option<DateTime<Utc>>,
    levels: &Levels,
    until: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query(STORE_LEVELS)
        .bind(name)
        .bind(after)
        .bind(&levels.ts)
        .bind(&levels.level)
        .bind(&levels.ret)
        .bind(until)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The stream sequence of the stored definition of `name`, if any (in a transaction or on the pool).
pub async fn stored_seq<'e>(db: impl sqlx::PgExecutor<'e>, name: &str) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT seq FROM indices WHERE name = $1").bind(name).fetch_optional(db).await
}

/// Stores a definition (its weights also as the constituents' rows), replacing any before it.
pub async fn store_definition(tx: &mut Tx, def: &IndexDef, seq: i64) -> Result<(), sqlx::Error> {
    let weights: serde_json::Map<String, serde_json::Value> =
        def.weights.iter().map(|(k, w)| (k.clone(), serde_json::Value::from(*w))).collect();
    sqlx::query(
        "INSERT INTO indices (name, base, weights, seq) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO UPDATE SET base = EXCLUDED.base, weights = EXCLUDED.weights,
           seq = EXCLUDED.seq, updated_at = now()",
    )
    .bind(&def.name)
    .bind(def.base)
    .bind(serde_json::Value::Object(weights))
    .bind(seq)
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM index_constituents WHERE name = $1").bind(&def.name).execute(&mut **tx).await?;
    let (instruments, weights): (Vec<&str>, Vec<f64>) = def.weights.iter().map(|(k, w)| (k.as_str(), *w)).unzip();
    sqlx::query(
        "INSERT INTO index_constituents (name, instrument, weight) SELECT $1, * FROM unnest($2::text[], $3::float8[])",
    )
    .bind(&def.name)
    .bind(&instruments)
    .bind(&weights)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Every definition, by name.
pub async fn list(db: &DatabaseConnection) -> Result<Vec<DefinitionRow>, DbErr> {
    indices::Entity::find().order_by_asc(indices::Column::Name).all(db).await
}

/// The definition of `name`, if any.
pub async fn definition(db: &DatabaseConnection, name: &str) -> Result<Option<DefinitionRow>, DbErr> {
    indices::Entity::find_by_id(name.to_owned()).one(db).await
}

/// The levels of `name` in `range`, ascending.
pub async fn levels(db: &DatabaseConnection, name: &str, range: Range) -> Result<Vec<LevelRow>, DbErr> {
    let mut q = index_points::Entity::find().filter(index_points::Column::Name.eq(name));
    if let Some(f) = range.from {
        q = q.filter(index_points::Column::Ts.gte(f));
    }
    if let Some(t) = range.to {
        q = q.filter(index_points::Column::Ts.lte(t));
    }
    let mut rows = q.order_by_desc(index_points::Column::Ts).limit(range.limit.max(0) as u64).all(db).await?;
    rows.reverse();
    Ok(rows)
}
