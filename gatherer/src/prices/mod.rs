//! Prices: the simulator and the CSV importer.

mod csv;
mod sim;

pub use csv::{import_csv, import_csv_with, parse_line};
pub use sim::{SimConfig, simulate};
