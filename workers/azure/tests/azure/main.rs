//! stowage-azure's integration tests: the ARM client against an ARM stand-in written from the
//! public REST reference (`arm_server`), the page-blob data path against Azurite, and the whole
//! pipeline (snapshot, vault, geo, hydration, restore) with the Azure provider (`pipeline`).

mod arm;
mod arm_server;
mod azurite;
mod data;
mod diff_proxy;
mod harness;
mod pipeline;
mod provider;
