//! Cross-stage tests: one binary, shared harness in `stowage_tests`.
//!
//! - `runtime`: behaviour of the worker runtime, each test run against the real RabbitMQ and
//!   against the in-process broker.
//! - `faults`: worker processes killed with SIGKILL, stopped with SIGTERM, and a broker restart.
//! - `edges`: oversized input, counters at their maximum, broker timeouts (issue 13).
//! - `arrows`: the crate graph, from `cargo metadata`, keeps its arrows pointing one way.
//! - `deploy`, `manifests`: the Kubernetes manifests, their cross-references and their schemas.

mod arrows;
mod deploy;
mod edges;
mod faults;
mod jobs;
mod manifests;
mod runtime;
mod vault;
