//! Prices: the simulator and the CSV importer.

mod csv;
mod sim;

pub use csv::{ImportReport, import_csv};
pub use sim::{SimConfig, simulate};
