//! The `stowage` binary end to end, in one test binary: each module is one area of the command
//! line, and `helpers` holds what they share (running the binary, temporary folders, waiting).
//! The tests use the real RabbitMQ and Azurite (`scripts/test.sh` starts them).

mod helpers;

/// The ARM stand-in of stowage-azure's tests, for `--disk-provider azure`.
#[path = "../../../azure/tests/azure/arm_server.rs"]
#[allow(dead_code)]
mod arm_server;

mod azure;

mod catalog;
mod cli;
mod clusters;
mod drill;
mod events;
mod instances;
mod jobs;
mod journey;
mod keys;
mod kubeconfig;
mod lock;
mod observability;
mod outbox;
mod ownership;
mod poison;
mod preflight;
mod rbac_fix;
mod restore_plan;
mod secrets;
mod serve;
mod tamper;
mod ui;
mod vault_worker;
