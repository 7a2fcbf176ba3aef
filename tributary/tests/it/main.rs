//! End-to-end tests against real NATS JetStream and real PostgreSQL: a private nats-server and a fresh
//! database per test (see tributary-testkit). One test binary, so the suite links once.

mod api;
mod cluster;
mod common;
mod dashboard;
mod differential;
mod dlq;
mod elastic;
mod faults;
mod fleet;
mod grafana;
mod indices;
mod isolation;
mod live;
mod locks;
mod malformed;
mod openapi;
mod ports;
mod prices;
mod processes;
mod samples;
mod secrets;
mod security;
mod surveys;
mod uploads;
mod windows;
