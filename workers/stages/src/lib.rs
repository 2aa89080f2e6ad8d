//! What each stage of the Stowage pipeline does, as handlers for the runtime.
//!
//! | module | stage | consumes | emits |
//! |---|---|---|---|
//! | [`vault_transfer`] | vault-transfer | `job.vault-transfer`, `event.rp.created` | `event.rp.vaulted` |
//! | [`geo_replication`] | geo-replication | `job.geo-replication`, `event.rp.vaulted` | `event.rp.replicated` |
//! | [`restore_hydration`] | restore-hydration | `job.restore-hydration` | `event.restore.hydrated` |
//!
//! [`verify`] re-reads a recovery point's data in a tier (`stowage rp verify`).
//! Every handler is idempotent: a redelivered message finds what an earlier attempt made
//! durable (create-only manifests, job-named packs, chunk-index segments) and reuses it.

pub mod context;
pub mod geo_replication;
pub mod restore_hydration;
pub mod vault_transfer;
pub mod verify;

mod errors;

pub use context::VaultContext;
pub use geo_replication::GeoReplication;
pub use restore_hydration::RestoreHydration;
pub use vault_transfer::VaultTransfer;
