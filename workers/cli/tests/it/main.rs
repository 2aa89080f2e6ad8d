//! The `stowage` binary end to end, in one test binary: each module is one area of the command
//! line, and `helpers` holds what they share (running the binary, temporary folders, waiting).
//! The tests use the real RabbitMQ and Azurite (`scripts/test.sh` starts them).

mod helpers;

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
