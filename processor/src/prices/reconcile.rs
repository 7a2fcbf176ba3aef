//! Stored derived values against the configured windows.

use super::series::{Transforms, recompute};
use super::store::{self, Writes};
use crate::lock;
use serde_json::Value;
use tributary_store::sqlx::{self, PgPool};

/// Makes stored derived values match the configured windows: when the windows differ from the ones the
/// values were computed with, every series is recomputed. Returns how many series were recomputed.
pub async fn reconcile_transforms(pool: &PgPool, t: &Transforms) -> Result<usize, sqlx::Error> {
    let names = t.names();
    let wanted = Value::from(names.clone());
    let mut tx = lock::begin(pool, "settings", ["price_transforms"]).await?;
    if store::stored_windows(&mut tx).await?.as_ref() == Some(&wanted) {
        return tx.commit().await.map(|_| 0);
    }
    let instruments = store::instruments(&mut tx).await?;
    // All at once, in the global order: one by one in name order would deadlock with a batch of another
    // replica holding a series whose key sorts first.
    lock::acquire(&mut tx, "price", instruments.iter().map(String::as_str)).await?;
    for instrument in &instruments {
        let mut rows = store::raw_points(&mut tx, instrument).await?;
        let mut points: Vec<_> = rows.iter().map(|r| super::Point::raw(r.point.price)).collect();
        recompute(t, &mut points, 0);
        for (r, p) in rows.iter_mut().zip(points) {
            r.point = p;
        }
        let mut w = Writes::new(&names);
        w.push(instrument, rows, Vec::new());
        store::write_batch(&mut tx, w, &[]).await?;
    }
    store::store_windows(&mut tx, &wanted).await?;
    tx.commit().await?;
    Ok(instruments.len())
}
