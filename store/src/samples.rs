//! Server samples (the "metrics" kind, subject `metric.<host>`): every statement on its tables.
//!
//! Owns `metric_samples` (raw samples, one row per host, field and time), `metric_rollups` (their
//! time-bucket rollups, every width), `metric_series` (each series' first and last time: the server list)
//! and `metric_latest` (each host's newest message, all its fields).
//!
//! # Shape
//! - The processor's batch, inside its transaction (`&mut Tx`), one bind per column (`UNNEST`):
//!   [`upsert_samples`] (returns the rows that changed), the bulk bucket reads that redo what changed
//!   ([`load_samples`], [`load_buckets`], [`load_wide_buckets`], [`load_rollups`], keyed by
//!   [`BucketKey`]), then
//!   [`upsert_rollups`], [`upsert_series`] and [`upsert_latest`].
//! - Retention, on the pool: [`sweep`], which records how far it deleted raw samples ([`swept_before`]).
//! - The API's reads, on the pool: [`latest_samples`], [`hosts`], [`series_exists`], [`raw_samples`] and
//!   [`rollup_buckets`].
//!
//! Rows are plain column structs. A [`RollupRow`] holds the sketch and the sorted values as the stored bytes:
//! the processor owns their encoding (and the bucket arithmetic), converting to and from its `Rollup`.

mod batch;
mod read;
mod retention;
#[cfg(test)]
mod tests;
mod widths;

pub use batch::{
    BucketKey, ChangedSample, NewLatest, NewSample, RollupRow, SampleRow, SeriesSpan, load_buckets, load_rollups,
    load_samples, load_wide_buckets, upsert_latest, upsert_rollups, upsert_samples, upsert_series,
};
pub use read::{
    HostFields, LatestSample, RollupBucket, SamplePoint, hosts, latest_samples, raw_samples, rollup_buckets,
    series_exists,
};
pub use retention::{SWEEP_MARGIN, Swept, sweep, swept_before};
pub use widths::{store_base_width, stored_base_width};
