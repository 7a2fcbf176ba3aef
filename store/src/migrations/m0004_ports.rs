//! Ports: the latest version of every port, per-country counts, and indexes for name search and
//! nearest-port queries.

/// The SQL of this migration.
pub const SQL: &str = r#"
-- cube + earthdistance give ll_to_earth(lat, lon), a point on the earth's surface whose GiST index answers
-- "nearest first" (ORDER BY ... <-> ...) without a full scan; pg_trgm indexes name search (ILIKE '%q%').
CREATE EXTENSION IF NOT EXISTS cube;
CREATE EXTENSION IF NOT EXISTS earthdistance;
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- One row per UN/LOCODE, last writer wins by JetStream stream sequence (seq). Missing fields are null.
CREATE TABLE ports (
    unlocode text PRIMARY KEY,
    name text NOT NULL,
    city text,
    country text,
    province text,
    timezone text,
    code text,
    alias text[] NOT NULL DEFAULT '{}',
    regions text[] NOT NULL DEFAULT '{}',
    unlocs text[] NOT NULL DEFAULT '{}',
    lon float8,
    lat float8,
    seq int8 NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ports_by_country ON ports (country);
CREATE INDEX ports_by_name ON ports USING gin (lower(name) gin_trgm_ops);
CREATE INDEX ports_by_place ON ports USING gist (ll_to_earth(lat, lon)) WHERE lat IS NOT NULL;

-- Ports per country, kept by the processor in the same transaction as the ports.
CREATE TABLE port_countries (
    country text PRIMARY KEY,
    ports int8 NOT NULL
);
"#;
