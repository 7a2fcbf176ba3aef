//! Indices: `indices` (definitions), `index_constituents` (their weights, by instrument) and
//! `index_points` (levels).
//!
//! The processor stores definitions ([`stored_seq`], [`store_definition`]) and recomputes levels a chunk
//! at a time: [`recompute_start`] reads the definition, the anchor and the constituents' prices after it,
//! [`prices_from`] the next chunk, [`store_levels`] writes a chunk's levels. The API reads [`list`], [`definition`] and
//! [`levels`].

use crate::entity::{index_points, indices};
use crate::{Page, Range, Tx};
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

/// An index's definition and where its recompute of a change in `$2`..=`$5` starts and may end, in one
/// statement, as rows of (part, instrument, ts, value, n, ret):
/// - part 0: the definition's base (`value`) and how many prices of each constituent a chunk reads (`n`:
///   `$3` over the number of constituents, at least `$4`);
/// - part 1: each constituent (`instrument`) and its weight (`value`);
/// - part 2: the anchor: the index's last date before `$2` (`ts`) and its level (`value`), if any;
/// - part 3: each constituent's price at the anchor, then the first chunk of its prices from `$2` on;
///   none without an anchor. Between the two lies no index date (the anchor is the last before `$2`, and
///   no price before `$2` changed), so the prices there are not read: an append after constituents
///   stopped sharing dates read every price since the last shared one.
/// - part 4: the index's first date after `$5` (`ts`), its level (`value`) and return (`ret`), if any: the
///   recompute stops there if it computes the same level.
///
/// No row when there is no such index. The anchor's date is a sub-select, not a join, so that it bounds
/// the primary-key scan like a parameter (a join condition was planned as a filter over a sequential
/// scan, from the statistics of a young table).
pub const INDEX_RECOMPUTE_START: &str = "
WITH cons AS (SELECT instrument, weight FROM index_constituents WHERE name = $1),
per AS (SELECT greatest($3::int8 / nullif(count(*), 0), $4::int8) AS n FROM cons),
anchor AS (SELECT ts, level FROM index_points WHERE name = $1 AND ts < $2 ORDER BY ts DESC LIMIT 1)
SELECT 0::int2 AS part, NULL::text AS instrument, NULL::timestamptz AS ts, i.base AS value, (SELECT n FROM per) AS n,
       NULL::float8 AS ret
  FROM indices i WHERE i.name = $1
UNION ALL SELECT 1::int2, instrument, NULL, weight, NULL, NULL FROM cons
UNION ALL SELECT 2::int2, NULL, ts, level, NULL, NULL FROM anchor
UNION ALL
SELECT 3::int2, c.instrument, p.ts, p.price, NULL, NULL FROM cons c
  JOIN price_points p ON p.instrument = c.instrument AND p.ts = (SELECT ts FROM anchor)
UNION ALL
SELECT 3::int2, c.instrument, p.ts, p.price, NULL, NULL FROM cons c
  CROSS JOIN LATERAL (SELECT ts, price FROM price_points
                       WHERE instrument = c.instrument AND ts >= $2 AND EXISTS (SELECT 1 FROM anchor)
                       ORDER BY ts LIMIT (SELECT n FROM per)) p
UNION ALL
SELECT 4::int2, NULL, ts, level, NULL, ret FROM
  (SELECT ts, level, ret FROM index_points WHERE name = $1 AND ts > $5 ORDER BY ts LIMIT 1) s";

/// Where an index's recompute starts ([`recompute_start`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RecomputeStart {
    /// The definition, weights in byte order of the instrument names.
    pub def: IndexDef,
    /// How many prices of each constituent one chunk reads.
    pub per: usize,
    /// The index's last date before the change, with its level: the recompute continues from it.
    pub anchor: Option<(DateTime<Utc>, f64)>,
    /// The index's first stored date after the change: where the levels settle if it comes out the same.
    pub first_after: Option<StoredLevel>,
    /// With an anchor, the constituents' prices at its date and the first chunk of their prices from the
    /// change on.
    pub prices: Vec<PriceRow>,
}

/// A stored level of an index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoredLevel {
    /// Its date.
    pub ts: DateTime<Utc>,
    /// `I_t`.
    pub level: f64,
    /// `R_t`; `None` on the first index date.
    pub ret: Option<f64>,
}

/// [`INDEX_RECOMPUTE_START`]: index `name`'s definition, its anchor before `from` (none when `from` is
/// `None`) with the first chunk of prices after it, its first stored date after `through` (none when
/// `None`), and the chunk size: `budget` prices over the constituents, at least `least` each. `None` when
/// there is no such index.
pub async fn recompute_start(
    tx: &mut Tx,
    name: &str,
    from: Option<DateTime<Utc>>,
    through: Option<DateTime<Utc>>,
    budget: usize,
    least: usize,
) -> Result<Option<RecomputeStart>, sqlx::Error> {
    type Row = (i16, Option<String>, Option<DateTime<Utc>>, f64, Option<i64>, Option<f64>);
    let rows: Vec<Row> = sqlx::query_as(INDEX_RECOMPUTE_START)
        .bind(name)
        .bind(from)
        .bind(budget as i64)
        .bind(least as i64)
        .bind(through)
        .fetch_all(&mut **tx)
        .await?;
    let (mut head, mut weights, mut anchor, mut prices) = (None, Vec::new(), None, Vec::new());
    let mut first_after = None;
    for (part, instrument, ts, value, n, ret) in rows {
        match (part, instrument, ts, n) {
            (0, _, _, Some(n)) => head = Some((value, n.max(1) as usize)),
            (1, Some(instrument), _, _) => weights.push((instrument, value)),
            (2, _, Some(ts), _) => anchor = Some((ts, value)),
            (3, Some(instrument), Some(ts), _) => prices.push((instrument, ts, value)),
            (4, _, Some(ts), _) => first_after = Some(StoredLevel { ts, level: value, ret }),
            _ => return Err(sqlx::Error::Protocol(format!("unexpected row of part {part} in an index recompute"))),
        }
    }
    // Byte order of the names, the order the level computation sums in and a definition's own (a
    // `BTreeMap`): an `ORDER BY` would follow the database's collation, under which (`en-US`, say) `a` sorts
    // before `A` and `Z`, and the sum would differ in its last bits from the one of the definition's own
    // recompute.
    weights.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(head.map(|(base, per)| RecomputeStart {
        def: IndexDef { name: name.to_owned(), base, weights },
        per,
        anchor,
        first_after,
        prices,
    }))
}

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

/// A constituent's price: (instrument, date, price).
pub type PriceRow = (String, DateTime<Utc>, f64);

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

/// A page of the definitions, by name.
pub async fn list(db: &DatabaseConnection, page: &Page) -> Result<Vec<DefinitionRow>, DbErr> {
    let mut q = indices::Entity::find();
    if let Some(after) = &page.after {
        q = q.filter(indices::Column::Name.gt(after.as_str()));
    }
    q.order_by_asc(indices::Column::Name).limit(page.limit).all(db).await
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
