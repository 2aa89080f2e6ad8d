//! Event payloads: what a stage announces when it is done.
//!
//! Events are published to the `stowage.events` topic exchange with their name (e.g.
//! `rp.created`) as routing key. The next stage's queue is bound to the events that trigger it;
//! anyone else (dashboards, notifications, audit) may bind too. Events carry ids and small
//! summaries, never bulk data.

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Stage;
use crate::domain::Tier;
use crate::jobs::{RestoreOptions, Staging};

/// A recovery point was created in the operational tier.
///
/// Message type `event.rp.created`; triggers vault transfer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RpCreated {
    /// Name of the backup instance.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub instance: String,
    /// The new recovery point.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub recovery_point_id: String,
    /// When the snapshot was taken.
    #[serde(deserialize_with = "crate::timestamp::required")]
    pub created_at: Timestamp,
    /// Number of Kubernetes resources collected.
    #[serde(default)]
    pub resource_count: u64,
    /// Number of volumes snapshotted.
    #[serde(default)]
    pub volume_count: u32,
    /// Total size of the snapshotted volumes, in bytes.
    #[serde(default)]
    pub volume_bytes: u64,
    /// Things that went wrong without failing the backup (e.g. a hook set to `continue`).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// A recovery point's data was transferred to the vault tier.
///
/// Message type `event.rp.vaulted`; triggers geo-replication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RpVaulted {
    /// Name of the backup instance.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub instance: String,
    /// The recovery point.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub recovery_point_id: String,
    /// Volume bytes read from the disk provider (changed ranges only when incremental).
    #[serde(default)]
    pub bytes_read: u64,
    /// Bytes newly written to the vault, after deduplication, compression and encryption.
    #[serde(default)]
    pub bytes_stored: u64,
    /// Chunks newly written.
    #[serde(default)]
    pub chunks_new: u64,
    /// Chunks already present and reused.
    #[serde(default)]
    pub chunks_reused: u64,
    /// When retention may delete the vault-tier copy: the policy's vault expiry (the RP's
    /// creation when no vault rule selects it), or the vault lock's date if later; absent when
    /// the instance has no stored policy. The newest vault copy is kept past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "crate::timestamp::option")]
    pub expires_at: Option<Timestamp>,
}

/// A recovery point's vault-tier data was copied to the secondary region.
///
/// Message type `event.rp.replicated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RpReplicated {
    /// Name of the backup instance.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub instance: String,
    /// The recovery point.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub recovery_point_id: String,
    /// Region of the secondary copy, as the vault's settings (`vault.json`) record it.
    pub secondary_region: String,
    /// Objects the secondary lacked and that were copied.
    #[serde(default)]
    pub objects_copied: u64,
    /// Bytes copied.
    #[serde(default)]
    pub bytes_copied: u64,
}

/// A restore's data was hydrated into a staging area.
///
/// Message type `event.restore.hydrated`; triggers the restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RestoreHydrated {
    /// Id of the restore.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub restore_id: String,
    /// Name of the backup instance.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub instance: String,
    /// The recovery point being restored.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub recovery_point_id: String,
    /// The tier the data was read from.
    pub tier: Tier,
    /// The staging area.
    pub staging: Staging,
    /// The restore options from the hydration job, passed on to the restore.
    #[serde(default)]
    pub options: RestoreOptions,
}

/// A restore finished; its staging area, if any, was cleaned up.
///
/// Message type `event.restore.completed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RestoreCompleted {
    /// Id of the restore.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub restore_id: String,
    /// Name of the backup instance.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub instance: String,
    /// The recovery point restored.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub recovery_point_id: String,
    /// The cluster restored into.
    pub target_cluster: String,
    /// Whether this was a dry run (nothing changed).
    #[serde(default)]
    pub dry_run: bool,
    /// Resources created.
    #[serde(default)]
    pub resources_created: u64,
    /// Existing resources patched.
    #[serde(default)]
    pub resources_patched: u64,
    /// Existing resources left as they were.
    #[serde(default)]
    pub resources_skipped: u64,
    /// Volumes restored onto new disks.
    #[serde(default)]
    pub volumes_restored: u32,
    /// Things that went wrong without failing the restore.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// Progress of a running job.
///
/// Message type `event.job.progress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobProgress {
    /// The job.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub job_id: String,
    /// The stage running it.
    pub stage: Stage,
    /// How far it got; its fields sit beside `job_id` and `stage` on the wire.
    #[serde(flatten)]
    pub progress: crate::domain::JobProgress,
}

/// One attempt of a job failed. Published by the runtime for every failed attempt, so a client
/// waiting on a job learns of a failure at once: `will_retry` says whether another attempt
/// follows (after a delay) or the job was dead-lettered.
///
/// Message type `event.job.failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobFailed {
    /// The job.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub job_id: String,
    /// The stage that ran it.
    pub stage: Stage,
    /// What went wrong and what to do about it, in one sentence.
    pub reason: String,
    /// The error and its causes, outermost first.
    #[serde(default)]
    pub error_chain: Vec<String>,
    /// True when retrying cannot help (bad input); false for a failure that may pass (a
    /// dependency unavailable), whether or not attempts remain.
    #[serde(default)]
    pub permanent: bool,
    /// The attempt that failed: 0 for the first delivery, 1 for the first retry, and so on
    /// (the envelope's `attempt`).
    #[serde(default)]
    pub attempt: u32,
    /// True when the job will be tried again after a delay; false when it was given up on and
    /// dead-lettered (`stowage dlq list <stage>` shows it).
    #[serde(default)]
    pub will_retry: bool,
}

/// A vault transfer was skipped: the policy selects this recovery point for no vault-tier
/// rule, so it stays in the operational tier only and geo-replication does not start for it.
///
/// Message type `event.rp.vault-skipped`; published instead of `rp.vaulted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RpVaultSkipped {
    /// Name of the backup instance.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub instance: String,
    /// The recovery point left in the operational tier.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub recovery_point_id: String,
    /// The policy that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Why, in one sentence (which rules were considered, what would make it transfer).
    pub reason: String,
}

/// A restore drill finished: the latest recovery point of a tier was restored into an isolated
/// target, verified against the recovery point, timed, and cleaned up.
///
/// Message type `event.drill.completed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DrillCompleted {
    /// Id of the drill (its record is `drills/<drill-id>.json` in the vault).
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub drill_id: String,
    /// Name of the backup instance drilled.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub instance: String,
    /// The recovery point restored (the tier's latest).
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub recovery_point_id: String,
    /// The tier restored from.
    pub tier: Tier,
    /// The cluster restored into.
    pub target_cluster: String,
    /// Whether the restore completed and every object and volume verified.
    pub succeeded: bool,
    /// Why the drill failed, in one sentence; absent when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Recovery time: from the restore request to restored and verified, in seconds.
    pub rto_seconds: f64,
    /// Objects verified against the recovery point.
    #[serde(default)]
    pub objects_verified: u64,
    /// Volume bytes verified against the recovery point.
    #[serde(default)]
    pub bytes_verified: u64,
    /// When the drill finished.
    #[serde(deserialize_with = "crate::timestamp::required")]
    pub finished_at: Timestamp,
}
