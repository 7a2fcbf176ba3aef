//! A version per price series, bumped by every write to it, so that a processor can trust a cached tail
//! of the series only while nobody else (another replica) has written it.

/// The SQL of this migration.
pub const SQL: &str = r#"
ALTER TABLE price_series ADD COLUMN version int8 NOT NULL DEFAULT 0;
"#;
