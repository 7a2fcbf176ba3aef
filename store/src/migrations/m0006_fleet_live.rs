//! The live drivers and shipments, apart from the tombstones.

/// The SQL of this migration.
pub const SQL: &str = r#"
-- Every fleet batch counts and loads the live drivers and shipments, in the order the plan reads them,
-- and every plan read lists the unassigned ones. A deletion stays as a tombstone for good, so read
-- through the primary key those queries cost the whole history of deletions (the simulator deletes
-- one and adds one every two seconds); these read the live rows only.
CREATE INDEX fleet_drivers_live ON fleet_drivers (id COLLATE "C") INCLUDE (name) WHERE name IS NOT NULL;
CREATE INDEX fleet_shipments_live ON fleet_shipments (id COLLATE "C") INCLUDE (address) WHERE address IS NOT NULL;
"#;
