//! Prices, their derived values, and weighted indices.

/// The SQL of this migration.
pub const SQL: &str = r#"
-- Raw prices, last writer wins by JetStream stream sequence (seq), with the derived values of each
-- point: ret is the simple return against the previous point; derived holds the configured windows
-- (sma_<n>, ema_<n>, vol_<n>) as {"sma_20": 10.5, ...}, null where a window is not yet full.
CREATE TABLE price_points (
    instrument text NOT NULL,
    ts timestamptz NOT NULL,
    price float8 NOT NULL,
    volume float8,
    seq int8 NOT NULL,
    ret float8,
    derived jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (instrument, ts)
);

-- One row per instrument: what the API lists, kept by the processor in the same transaction.
CREATE TABLE price_series (
    instrument text PRIMARY KEY,
    points int8 NOT NULL,
    first_ts timestamptz NOT NULL,
    last_ts timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Weighted index definitions, last writer wins by stream sequence.
CREATE TABLE indices (
    name text PRIMARY KEY,
    base float8 NOT NULL,
    weights jsonb NOT NULL,
    seq int8 NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE index_constituents (
    name text NOT NULL REFERENCES indices (name) ON DELETE CASCADE,
    instrument text NOT NULL,
    weight float8 NOT NULL,
    PRIMARY KEY (name, instrument)
);
CREATE INDEX index_constituents_by_instrument ON index_constituents (instrument);

-- Index levels on index dates (the timestamps at which every constituent has a price).
CREATE TABLE index_points (
    name text NOT NULL,
    ts timestamptz NOT NULL,
    level float8 NOT NULL,
    ret float8,
    PRIMARY KEY (name, ts)
);

-- Settings the processor must see unchanged across restarts (e.g. the derived windows).
CREATE TABLE settings (
    key text PRIMARY KEY,
    value jsonb NOT NULL
);
"#;
