//! The pipeline's stages, one module each, as handlers for the runtime.
//!
//! | module | stage | consumes | emits |
//! |---|---|---|---|
//! | [`snapshot`] | snapshot | `job.snapshot` | `event.rp.created` |
//! | [`vault_transfer`] | vault-transfer | `job.vault-transfer`, `event.rp.created` | `event.rp.vaulted` |
//! | [`geo_replication`] | geo-replication | `job.geo-replication`, `event.rp.vaulted` | `event.rp.replicated` |
//! | [`restore_hydration`] | restore-hydration | `job.restore-hydration` | `event.restore.hydrated` |
//! | [`restore`] | restore | `job.restore`, `event.restore.hydrated` | `event.restore.completed` |
//! | [`retention`] | retention | `job.retention` | nothing |
//!
//! Shared by several stages: [`context`] (what the vault stages need) and
//! [`cluster_context`] (what the cluster stages need), [`staging`] (the staging area
//! hydration fills and restore releases; retention sweeps failed restores' leftovers).
//!
//! Error policy: whether a failure is worth a retry is decided once per error type
//! (`stowage_schemas::Retryable`, answered by `stowage_vault::Error`, the catalog's
//! `SettingsError`, `DiskError`), and `?` turns any of them into the runtime's `StageError`;
//! the stages decide only what the type cannot know (a missing manifest is the caller's
//! mistake, a missing cluster object is not).
//!
//! Every handler is idempotent: a redelivered message finds what an earlier attempt made
//! durable (create-only manifests, job-named packs, chunk-index segments) and reuses it. The
//! catalog documents stages read and write live below them (`stowage_vault::catalog`); what
//! drives them from outside (scheduler, preflight, job records, verify) lives above, in
//! `stowage-control`.

pub mod cluster_context;
pub mod context;
pub mod geo_replication;
pub mod restore;
pub mod restore_hydration;
pub mod retention;
pub mod snapshot;
pub mod staging;
pub mod vault_transfer;

pub use cluster_context::{ClusterContext, SnapshotMode};
pub use context::VaultContext;
pub use geo_replication::GeoReplication;
pub use restore::RestoreStage;
pub use restore_hydration::RestoreHydration;
pub use retention::RetentionStage;
pub use snapshot::SnapshotStage;
pub use vault_transfer::VaultTransfer;
