//! Fleet assignment: which driver takes which shipment.
//!
//! Pure code with no I/O, shared by the processor (which keeps the plan of the drivers and shipments
//! stored so far), the API (which explains one score) and `tributary fleet plan` (which needs no server).
//!
//! # Layout
//! - [`score`]: the suitability score of one shipment for one driver, and its explanation.
//! - [`assign`]: the assignment that maximises the total score (Hungarian algorithm, rectangular).
//!
//! Scores are multiples of 0.25 (a base of `1.5 × vowels` or `consonants`, times 1.5 when the lengths
//! share a factor), so they are computed as whole quarters ([`Quarters`]): totals are exact and the
//! optimum is found with integer arithmetic, never rounding.

pub mod assign;
pub mod score;

pub use assign::{Plan, plan};
pub use score::{Explained, Quarters, explain, street_name};
