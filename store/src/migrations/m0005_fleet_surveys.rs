//! Fleet (drivers, shipments, the optimal plan) and surveys (items pulled from providers, each provider's
//! cursor and last pull).

/// The SQL of this migration.
pub const SQL: &str = r#"
-- Drivers and shipments, last writer wins by JetStream stream sequence (seq). A deletion stays as a
-- tombstone (name/address NULL), so an older message delivered after it cannot bring the row back.
CREATE TABLE fleet_drivers (
    id text PRIMARY KEY,
    name text,
    seq int8 NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE fleet_shipments (
    id text PRIMARY KEY,
    address text,
    seq int8 NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The assignment that maximises the total suitability score over the live drivers and shipments,
-- replaced in the same transaction as the change that moved it. One row; version counts recomputes.
CREATE TABLE fleet_plan (
    one bool PRIMARY KEY DEFAULT true CHECK (one),
    version int8 NOT NULL,
    total_score float8 NOT NULL,
    drivers int4 NOT NULL,
    shipments int4 NOT NULL,
    computed_at timestamptz NOT NULL
);
CREATE TABLE fleet_assignments (
    shipment_id text PRIMARY KEY,
    driver_id text NOT NULL UNIQUE,
    score float8 NOT NULL
);

-- Items pulled from survey providers: unique per (provider, the provider's id), last writer wins by seq.
CREATE TABLE survey_items (
    provider text NOT NULL,
    provider_id int8 NOT NULL,
    text text NOT NULL,
    device text NOT NULL,
    location text NOT NULL,
    created_at timestamptz NOT NULL,
    seq int8 NOT NULL,
    PRIMARY KEY (provider, provider_id)
);
CREATE INDEX survey_items_recent ON survey_items (created_at DESC, provider, provider_id DESC);
CREATE INDEX survey_items_device ON survey_items (device, created_at DESC);
CREATE INDEX survey_items_location ON survey_items (location, created_at DESC);

-- Per provider: the highest provider id stored (the pull cursor, advanced with the items), and the
-- outcome of the latest pull (last writer wins by status_seq); last_sync is the latest successful pull.
CREATE TABLE survey_providers (
    provider text PRIMARY KEY,
    cursor int8 NOT NULL DEFAULT 0,
    status text,
    error text,
    last_pull timestamptz,
    last_sync timestamptz,
    status_seq int8 NOT NULL DEFAULT 0
);
"#;
