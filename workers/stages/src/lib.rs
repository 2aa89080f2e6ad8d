//! What each stage of the Stowage pipeline does, as handlers for the runtime.
//!
//! | module | stage | consumes | emits |
//! |---|---|---|---|
//! | [`vault_transfer`] | vault-transfer | `job.vault-transfer`, `event.rp.created` | `event.rp.vaulted` |
//! | [`geo_replication`] | geo-replication | `job.geo-replication`, `event.rp.vaulted` | `event.rp.replicated` |
//! | [`restore_hydration`] | restore-hydration | `job.restore-hydration` | `event.restore.hydrated` |
//! | [`snapshot`] | snapshot | `job.snapshot` | `event.rp.created` |
//! | [`restore`] | restore | `job.restore`, `event.restore.hydrated` | `event.restore.completed` |
//! | [`retention`] | retention | `job.retention` | nothing |
//!
//! [`verify`] re-reads a recovery point's data in a tier (`stowage rp verify`).
//! [`job_records`] wraps any handler so its runs are kept in the job's record (status,
//! attempts, progress, cancellation); [`staging`] releases and sweeps restores' staging.
//! [`settings`] reads and writes the vault settings, policies and backup instances with
//! validation; [`scheduler`] computes backup slots and triggers scheduled snapshot jobs.
//! Every handler is idempotent: a redelivered message finds what an earlier attempt made
//! durable (create-only manifests, job-named packs, chunk-index segments) and reuses it.

pub mod cluster_context;
pub mod context;
pub mod geo_replication;
pub mod job_records;
pub mod preflight;
pub mod restore;
pub mod restore_hydration;
pub mod retention;
pub mod scheduler;
pub mod settings;
pub mod snapshot;
pub mod staging;
pub mod vault_transfer;
pub mod verify;

mod errors;

pub use cluster_context::{ClusterContext, ClusterTarget};
pub use context::VaultContext;
pub use geo_replication::GeoReplication;
pub use job_records::{RecordSettings, Recorded};
pub use restore::RestoreStage;
pub use restore_hydration::RestoreHydration;
pub use retention::RetentionStage;
pub use snapshot::SnapshotStage;
pub use vault_transfer::VaultTransfer;
