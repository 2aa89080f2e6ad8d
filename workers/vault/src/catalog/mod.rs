//! The catalog: the vault's documents about what it protects and what happened to it.
//!
//! | module | documents |
//! |---|---|
//! | [`settings`] | `vault.json`, `policies/<name>.json`, `instances/<name>.json`: validated on write, compare-and-swap updates |
//! | [`manifest`] (re-exported here) | `catalog/<instance>/<rp>.json` and its tier manifests: create-only recovery-point manifests |
//! | [`drills`] | `drills/<id>.json`: restore-drill records, create-only, one per run |
//! | [`jobs`] | `jobs/<id>.json`: job records, create-only claims and compare-and-swap updates |
//! | [`soft_delete`] | `catalog/<instance>/<rp>.deleted.json`: soft-deleted recovery points (`rp delete`/`undelete`) |
//! | [`lock`] | no document of its own: what `vault.json`'s lock lets anything delete, and when |
//!
//! The stages read the settings and the manifests and write manifests and job records, so
//! these documents live here, below the stages; what drives the stages from outside (the
//! scheduler, preflight) sits above them in `stowage-control`.

pub mod drills;
pub mod jobs;
pub mod lock;
pub mod manifest;
pub mod settings;
pub mod soft_delete;

pub use manifest::*;
