//! sea-orm entities for the tables the API reads. Each module is one table of `migrations`.

pub mod index_points;
pub mod indices;
pub mod price_series;
