//! stowage-azure's integration tests: the ARM client against an ARM stand-in written from the
//! public REST reference (`arm_server`), and the page-blob data path against Azurite.

mod arm;
mod arm_server;
mod azurite;
mod data;
mod diff_proxy;
mod harness;
mod pipeline;
mod provider;
