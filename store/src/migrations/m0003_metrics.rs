//! Server metrics: raw samples, their time-bucket rollups, and what the API lists.

/// The SQL of this migration.
pub const SQL: &str = r#"
-- Raw samples: one row per (host, field, ts), last writer wins by JetStream stream sequence (seq).
-- A message on metric.<host> with n numeric fields becomes n rows.
-- No index by time alone, here or on metric_rollups: the planner would pick it for the processor's
-- per-bucket lookups (all series share a bucket start) and read every series per lookup. Retention
-- deletes through metric_series, one primary-key range per series.
CREATE TABLE metric_samples (
    host text NOT NULL,
    field text NOT NULL,
    ts timestamptz NOT NULL,
    value float8 NOT NULL,
    seq int8 NOT NULL,
    PRIMARY KEY (host, field, ts)
);

-- One row per series (host, field): what GET /v1/servers lists.
CREATE TABLE metric_series (
    host text NOT NULL,
    field text NOT NULL,
    first_ts timestamptz NOT NULL,
    last_ts timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host, field)
);

-- The newest message of every host (greatest ts, then greatest seq), all its fields as a JSON object.
CREATE TABLE metric_latest (
    host text PRIMARY KEY,
    ts timestamptz NOT NULL,
    seq int8 NOT NULL,
    fields jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX metric_latest_by_ts ON metric_latest (ts DESC, host);

-- Time-bucket rollups of every series. width is the bucket width in seconds (60, 3600, ...), start is the
-- bucket's start, aligned to the Unix epoch. Percentiles are nearest-rank: exact in buckets of the
-- smallest width (computed from raw samples), within 1% relative error in wider ones (merged from the
-- smaller buckets' sketches, which `sketch` holds).
-- The last three columns let an append update a bucket without re-reading it: last_ts is the latest
-- sample's time (smallest width) or the latest part's start (wider); sorted_values the bucket's values in
-- ascending order as little-endian f64s (smallest width only); prefix_sum the sum of every part but the
-- latest (wider only).
CREATE TABLE metric_rollups (
    host text NOT NULL,
    field text NOT NULL,
    width int4 NOT NULL,
    start timestamptz NOT NULL,
    count int8 NOT NULL,
    sum float8 NOT NULL,
    min float8 NOT NULL,
    max float8 NOT NULL,
    mean float8 NOT NULL,
    first float8 NOT NULL,
    last float8 NOT NULL,
    p50 float8 NOT NULL,
    p95 float8 NOT NULL,
    p99 float8 NOT NULL,
    sketch bytea NOT NULL,
    last_ts timestamptz NOT NULL,
    sorted_values bytea,
    prefix_sum float8,
    PRIMARY KEY (host, field, width, start)
);
"#;
