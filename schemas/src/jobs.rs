//! Job payloads: one unit of fleet work per stage.
//!
//! A job is published to the `stowage.jobs` exchange with its stage as routing key, by the
//! scheduler, the CLI or any AMQP producer. Each payload names what to work on; everything else
//! (vault, policy, scope) is read from the vault, so a job stays small and can be re-submitted
//! by hand.

use std::collections::BTreeMap;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::domain::{Tier, yes};

/// Take a snapshot of a backup instance: run hooks, collect resources, snapshot volumes.
///
/// Message type `job.snapshot`; emits `event.rp.created`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotJob {
    /// Name of the backup instance.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub instance: String,
    /// Id the new recovery point gets; chosen by the producer so a redelivery is idempotent.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub recovery_point_id: String,
    /// Why the snapshot is taken.
    pub trigger: Trigger,
}

/// Why a snapshot is taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    /// The policy's schedule.
    Scheduled {
        /// The schedule slot this backup is for.
        #[serde(deserialize_with = "crate::timestamp::required")]
        slot: Timestamp,
    },
    /// A request by a person or a tool.
    OnDemand {
        /// Who asked, for the audit trail.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requested_by: Option<String>,
    },
}

/// Copy a recovery point's volume data into the vault tier, if the policy makes it eligible.
///
/// Message type `job.vault-transfer`; also triggered by `event.rp.created`; emits
/// `event.rp.vaulted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VaultTransferJob {
    /// Name of the backup instance.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub instance: String,
    /// The recovery point to transfer.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub recovery_point_id: String,
}

/// Copy a recovery point's vault-tier data to the vault's secondary region.
///
/// Message type `job.geo-replication`; also triggered by `event.rp.vaulted`; emits
/// `event.rp.replicated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GeoReplicationJob {
    /// Name of the backup instance.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub instance: String,
    /// The recovery point to replicate.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub recovery_point_id: String,
}

/// Prepare a restore from the vault or secondary tier: write the volume data to staging disks
/// and stage the resources.
///
/// Message type `job.restore-hydration`; emits `event.restore.hydrated`, which triggers the
/// restore itself with the same `restore_id` and `options`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RestoreHydrationJob {
    /// Id of the restore; stable across hydration and restore.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub restore_id: String,
    /// Name of the backup instance.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub instance: String,
    /// The recovery point to restore.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub recovery_point_id: String,
    /// The tier to read from: `vault` or `secondary`.
    pub tier: Tier,
    /// Where staging disks are created; none: the instance's snapshot location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging_location: Option<String>,
    /// How the restore applies what was hydrated.
    #[serde(default)]
    pub options: RestoreOptions,
}

/// Apply a recovery point to a cluster.
///
/// Message type `job.restore`; also triggered by `event.restore.hydrated`; emits
/// `event.restore.completed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RestoreJob {
    /// Id of the restore.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub restore_id: String,
    /// Name of the backup instance.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub instance: String,
    /// The recovery point to restore.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub recovery_point_id: String,
    /// The tier the data comes from. `operational` restores straight from snapshots;
    /// `vault` and `secondary` need `staging` from a hydration.
    pub source_tier: Tier,
    /// The hydrated staging area; none when restoring from the operational tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging: Option<Staging>,
    /// How to apply the recovery point.
    #[serde(default)]
    pub options: RestoreOptions,
}

/// How a restore applies a recovery point to a cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RestoreOptions {
    /// The cluster to restore into; none: the instance's own cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "crate::id::fields::option")]
    #[schemars(with = "Option<crate::id::Id>")]
    pub target_cluster: Option<String>,
    /// Namespaces to restore; empty: every namespace in the recovery point.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Renames namespaces on the way in: backed-up name → target name.
    #[serde(default)]
    pub namespace_mapping: BTreeMap<String, String>,
    /// What to do with resources that already exist in the target.
    #[serde(default)]
    pub existing: ExistingPolicy,
    /// Restore volume data (new disks from snapshots or staging); otherwise resources only.
    #[serde(default = "yes")]
    pub include_volumes: bool,
    /// Report what would be done without changing the cluster.
    #[serde(default)]
    pub dry_run: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self {
            target_cluster: None,
            namespaces: Vec::new(),
            namespace_mapping: BTreeMap::new(),
            existing: ExistingPolicy::default(),
            include_volumes: true,
            dry_run: false,
        }
    }
}

/// What a restore does with a resource that already exists in the target cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExistingPolicy {
    /// Leave it as it is.
    #[default]
    Skip,
    /// Patch it to match the backup.
    Patch,
}

/// The staging area a hydration prepared for a restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Staging {
    /// Where the staging disks were created.
    pub location: String,
    /// Vault object key of the staged resources.
    pub resources: String,
    /// One disk per hydrated volume.
    #[serde(default)]
    pub disks: Vec<StagedDisk>,
}

/// A disk holding one volume's hydrated data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StagedDisk {
    /// The backed-up volume.
    pub volume_id: String,
    /// Disk-provider id of the staging disk.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub disk_id: String,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// Expire recovery points of an instance per tier, delete their snapshots and
/// garbage-collect chunks nothing refers to any more.
///
/// Message type `job.retention`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RetentionJob {
    /// Name of the backup instance.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub instance: String,
    /// Expire what is expired at this instant; none: now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "crate::timestamp::option")]
    pub as_of: Option<Timestamp>,
}
