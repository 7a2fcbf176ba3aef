//! The `tributary` binary's library: configuration, wiring of the roles, and local servers for `up`.
//!
//! # Layout
//! - [`config`]: the TOML file plus environment overrides.
//! - [`app`]: connecting (NATS, PostgreSQL, migrations, streams) and running each role.
//! - [`local`]: finding, installing and starting private nats-server and PostgreSQL for `tributary up`.
//! - [`shutdown`]: one signal handler: the first SIGINT/SIGTERM drains, a second exits at once.
//! - [`urls`]: credentials in URLs, read for connecting and hidden from logs.

pub mod app;
pub mod config;
pub mod local;
pub mod shutdown;
pub mod urls;
