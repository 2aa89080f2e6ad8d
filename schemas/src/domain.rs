//! Domain types: the long-lived things Stowage manages and the jobs and events refer to.
//!
//! These mirror the documents kept in a vault (see "Where data lives" in the design brief):
//! `vault.json` ([`Vault`]), `policies/<name>.json` ([`Policy`]), `instances/<instance>.json`
//! ([`BackupInstance`]) and `catalog/<instance>/<rp-id>.json` ([`RecoveryPoint`]).
//! Job records (`jobs/<job-id>.json`, [`JobRecord`]) are defined here too.
//! They are plain data: validation lives with the code that accepts them.

use jiff::Timestamp;
use jiff::civil::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::job_record::{Handling, JobProgress, JobRecord, JobStatus, StageRun};

/// Where a recovery point's data is kept.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Volume snapshots kept by the disk provider, resources in the vault; instant restore.
    Operational,
    /// Volume data as deduplicated, compressed, encrypted chunks in the vault; long-term.
    Vault,
    /// The vault tier copied to the vault's paired (secondary) region.
    Secondary,
}

as_str! {
    /// The wire name, e.g. `operational`.
    Tier {
        Operational => "operational",
        Vault => "vault",
        Secondary => "secondary",
    }
}

/// A backup vault: one storage location holding the catalog and the vault-tier data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Vault {
    /// Vault name, unique within a deployment.
    pub name: String,
    /// Region of the primary storage location (e.g. `westeurope`).
    pub region: String,
    /// Storage location: a blob container URL or a local folder.
    pub location: String,
    /// Whether the vault tier is also copied to a secondary region.
    #[serde(default)]
    pub redundancy: Redundancy,
    /// Identifier of the key that encrypts chunk data (a key-vault key id or a local key name).
    pub key_id: String,
    /// Whether the vault's lock is in force: while it is `enabled` or `locked`, no part of a
    /// recovery point is deleted before its lock date (`created_at` + `minimum_retention_days`).
    #[serde(default)]
    pub immutability: Immutability,
    /// Days every recovery point is kept, whatever its policy says, while the lock is in force
    /// (1–36500 when `immutability` is `enabled` or `locked`; only grows once `locked`).
    #[serde(default)]
    pub minimum_retention_days: u32,
    /// Days a deleted recovery point can be undeleted before retention purges it (14–180; only
    /// grows once `locked`).
    #[serde(default = "default_soft_delete_days")]
    pub soft_delete_days: u16,
}

/// The undelete window of a vault whose settings name none: 14 days, as Azure Backup's.
pub const DEFAULT_SOFT_DELETE_DAYS: u16 = 14;

fn default_soft_delete_days() -> u16 {
    DEFAULT_SOFT_DELETE_DAYS
}

/// Redundancy of a vault's data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Redundancy {
    /// One copy, in the vault's own region.
    #[default]
    Local,
    /// A second copy in a paired region (the `secondary` tier).
    Geo {
        /// Storage location of the copy: a blob container URL or a local folder.
        secondary_location: String,
        /// Region of the copy (e.g. `northeurope`).
        secondary_region: String,
    },
}

/// Immutability setting of a vault: its lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Immutability {
    /// No lock: recovery points may be deleted whenever their policy or an operator says.
    #[default]
    Disabled,
    /// The lock is enforced (nothing is deleted before its lock date), but the setting can still
    /// be relaxed or turned off.
    Enabled,
    /// Like `enabled`, and final: the setting never goes back and its minimum retention and
    /// undelete window only grow.
    Locked,
}

as_str! {
    /// The wire name, e.g. `locked`.
    Immutability {
        Disabled => "disabled",
        Enabled => "enabled",
        Locked => "locked",
    }
}

/// A backup policy: when backups run and how long each tier keeps them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Policy {
    /// Policy name, unique within a vault.
    pub name: String,
    /// When scheduled backups run.
    pub schedule: Schedule,
    /// How long recovery points are kept in each tier.
    pub retention: Retention,
}

/// A backup schedule: every `frequency_hours` from `start`, in `time_zone`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Schedule {
    /// Hours between backups: 4, 6, 8, 12 or 24.
    pub frequency_hours: u8,
    /// Time of day of the first backup of each day (e.g. `02:00:00`).
    pub start: Time,
    /// IANA time zone the start time is read in (e.g. `Europe/Amsterdam`).
    #[serde(default = "utc")]
    pub time_zone: String,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// Retention rules of a policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Retention {
    /// Days every recovery point is kept in the operational tier (at most 360).
    pub operational_days: u16,
    /// Rules that select recovery points for the vault tier and say how long they stay there.
    /// No rule: nothing is transferred to the vault tier.
    #[serde(default)]
    pub vault: Vec<VaultRule>,
}

/// A vault-tier rule: the first successful backup of each `first_of` period is kept
/// for `keep_days`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VaultRule {
    /// The calendar period whose first successful backup the rule selects.
    pub first_of: CalendarPeriod,
    /// Days the selected recovery point is kept in the vault tier.
    pub keep_days: u32,
}

/// A calendar period, read in the policy's time zone.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CalendarPeriod {
    /// A day, from midnight.
    Day,
    /// A week, starting on Sunday.
    Week,
    /// A month, starting on day 1.
    Month,
    /// A year, starting on January 1.
    Year,
}

as_str! {
    /// The wire name, e.g. `month`.
    CalendarPeriod {
        Day => "day",
        Week => "week",
        Month => "month",
        Year => "year",
    }
}

/// What to protect: a cluster, backed up into a vault according to a policy, within a scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BackupInstance {
    /// Instance name, unique within a vault.
    pub name: String,
    /// The cluster to back up (a kubeconfig context or cluster name).
    pub cluster: String,
    /// Name of the vault the backups go to.
    pub vault: String,
    /// Name of the policy that schedules and retains the backups.
    pub policy: String,
    /// Which resources and volumes are included.
    #[serde(default)]
    pub scope: Scope,
    /// Where the disk provider keeps operational-tier snapshots (e.g. a resource group or folder).
    pub snapshot_location: String,
    /// Commands run in workload containers around a backup.
    #[serde(default)]
    pub hooks: Vec<Hook>,
}

/// The part of a cluster a backup instance covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Scope {
    /// Namespaces to include.
    #[serde(default)]
    pub namespaces: Namespaces,
    /// Namespaces to leave out, even when `namespaces` includes them.
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
    /// Kubernetes label selectors (e.g. `app=web,tier!=cache`); a resource is included when
    /// it matches any of them. Empty: every resource.
    #[serde(default)]
    pub label_selectors: Vec<String>,
    /// Include cluster-scoped resources (e.g. storage classes, cluster roles).
    #[serde(default = "yes")]
    pub include_cluster_scoped: bool,
    /// Include secrets.
    #[serde(default = "yes")]
    pub include_secrets: bool,
    /// Include the data of persistent volumes.
    #[serde(default = "yes")]
    pub include_volumes: bool,
}

impl Default for Scope {
    fn default() -> Self {
        Self {
            namespaces: Namespaces::All,
            exclude_namespaces: Vec::new(),
            label_selectors: Vec::new(),
            include_cluster_scoped: true,
            include_secrets: true,
            include_volumes: true,
        }
    }
}

pub(crate) fn yes() -> bool {
    true
}

/// Namespaces selected by a scope.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Namespaces {
    /// Every namespace, including ones created later.
    #[default]
    All,
    /// Only the listed namespaces.
    List {
        /// Namespace names.
        names: Vec<String>,
    },
}

/// A command run in workload containers before or after the resources are collected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Hook {
    /// Hook name, for logs and errors.
    pub name: String,
    /// When the hook runs.
    pub phase: HookPhase,
    /// Namespace of the pods the hook runs in.
    pub namespace: String,
    /// Label selector choosing the pods; none: every pod in the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// Container to run in; none: the pod's first container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Command and arguments (exec, no shell).
    pub command: Vec<String>,
    /// Seconds the command may run before it counts as failed.
    #[serde(default = "default_hook_timeout")]
    pub timeout_seconds: u32,
    /// What a failure of the hook does to the backup.
    #[serde(default)]
    pub on_error: HookErrorMode,
}

fn default_hook_timeout() -> u32 {
    60
}

/// When a hook runs relative to the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HookPhase {
    /// Before resources are collected and volumes snapshotted (e.g. flush and freeze).
    Pre,
    /// After the snapshots are taken (e.g. thaw).
    Post,
}

/// What a failing hook does to the backup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HookErrorMode {
    /// The backup fails.
    #[default]
    Fail,
    /// The backup continues and records a warning.
    Continue,
}

/// One backup of one instance, as recorded in the vault catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RecoveryPoint {
    /// Recovery point id, unique within the instance.
    pub id: String,
    /// Name of the backup instance it belongs to.
    pub instance: String,
    /// When the snapshot was taken.
    pub created_at: Timestamp,
    /// The tiers the recovery point exists in, each with its own state and expiry.
    #[serde(default)]
    pub tiers: Vec<TierState>,
    /// Vault object key of the collected Kubernetes resources (under `resources/`).
    pub resources: String,
    /// One entry per backed-up persistent volume.
    #[serde(default)]
    pub volumes: Vec<VolumeBackup>,
}

/// The state of a recovery point in one tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TierState {
    /// The tier.
    pub tier: Tier,
    /// Lifecycle state in this tier.
    pub state: RpState,
    /// When retention removes it from this tier; none: not yet decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

/// Lifecycle state of a recovery point in one tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RpState {
    /// Being written; not restorable yet.
    Creating,
    /// Complete and restorable.
    Available,
    /// Writing failed; retention cleans it up.
    Failed,
    /// Expired; retention is deleting it.
    Deleting,
}

/// One persistent volume in a recovery point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeBackup {
    /// Stable id of the volume (keys `volumes/<volume-id>/` in the vault).
    pub volume_id: String,
    /// Namespace of the persistent volume claim.
    pub namespace: String,
    /// Name of the persistent volume claim.
    pub pvc: String,
    /// Size of the volume in bytes.
    pub size_bytes: u64,
    /// Disk-provider snapshot id (operational tier).
    pub snapshot_id: String,
    /// Extent-map version in the vault tier; none until vaulted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_version: Option<String>,
    /// The CSI VolumeSnapshot the operational tier holds this volume in, when the snapshot was
    /// taken through `snapshot.storage.k8s.io` (`--disk-provider csi`); none when the disk
    /// provider took it directly (`snapshot_id` is then the provider's snapshot id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csi: Option<CsiSnapshot>,
}

/// A volume's operational snapshot as a CSI VolumeSnapshot: what restore (a PVC with a
/// `dataSource`) and retention (deleting the VolumeSnapshot) need, and what the vault tier
/// reads through (`handle`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CsiSnapshot {
    /// The cluster (as workers name it) holding the VolumeSnapshot.
    pub cluster: String,
    /// CSI driver of the source volume and of the snapshot.
    pub driver: String,
    /// The VolumeSnapshotClass it was taken with.
    pub class: String,
    /// Name of the VolumeSnapshot, in the claim's namespace.
    pub name: String,
    /// Name of the bound VolumeSnapshotContent (cluster-scoped).
    pub content: String,
    /// The driver's snapshot handle (`status.snapshotHandle` of the content).
    pub handle: String,
    /// Smallest size a volume restored from it can have, in bytes (`status.restoreSize`).
    pub restore_size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T>(value: &T)
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let packed = rmp_serde::to_vec_named(value).unwrap();
        assert_eq!(&rmp_serde::from_slice::<T>(&packed).unwrap(), value);
        let json = serde_json::to_vec(value).unwrap();
        assert_eq!(&serde_json::from_slice::<T>(&json).unwrap(), value);
    }

    #[test]
    fn domain_types_round_trip_in_both_formats() {
        round_trip(&Vault {
            name: "shop-vault".into(),
            region: "westeurope".into(),
            location: "https://acct.blob.core.windows.net/stowage".into(),
            redundancy: Redundancy::Geo {
                secondary_location: "https://acct-sec.blob.core.windows.net/stowage".into(),
                secondary_region: "northeurope".into(),
            },
            key_id: "https://kv.vault.azure.net/keys/stowage/1".into(),
            immutability: Immutability::Locked,
            minimum_retention_days: 30,
            soft_delete_days: 14,
        });
        round_trip(&crate::samples::policy());
        round_trip(&BackupInstance {
            name: "shop-prod".into(),
            cluster: "aks-prod".into(),
            vault: "shop-vault".into(),
            policy: "daily".into(),
            scope: Scope {
                namespaces: Namespaces::List {
                    names: vec!["shop".into()],
                },
                label_selectors: vec!["app=web".into()],
                include_secrets: false,
                ..Scope::default()
            },
            snapshot_location: "rg-snapshots".into(),
            hooks: vec![Hook {
                name: "freeze".into(),
                phase: HookPhase::Pre,
                namespace: "shop".into(),
                label_selector: Some("app=db".into()),
                container: None,
                command: vec!["fsfreeze".into(), "-f".into(), "/data".into()],
                timeout_seconds: 30,
                on_error: HookErrorMode::Continue,
            }],
        });
        round_trip(&RecoveryPoint {
            id: "rp-1".into(),
            instance: "shop-prod".into(),
            created_at: Timestamp::constant(1_736_906_400, 0),
            tiers: vec![TierState {
                tier: Tier::Operational,
                state: RpState::Available,
                expires_at: Some(Timestamp::constant(1_737_511_200, 0)),
            }],
            resources: "resources/shop-prod/rp-1/objects.json.zst".into(),
            volumes: vec![VolumeBackup {
                volume_id: "vol-1".into(),
                namespace: "shop".into(),
                pvc: "data-db-0".into(),
                size_bytes: 1 << 30,
                snapshot_id: "snap-1".into(),
                vault_version: None,
                csi: None,
            }],
        });
    }

    #[test]
    fn scope_defaults_include_everything() {
        let scope: Scope = serde_json::from_str("{}").unwrap();
        assert_eq!(scope, Scope::default());
        assert_eq!(scope.namespaces, Namespaces::All);
        assert!(scope.include_cluster_scoped && scope.include_secrets && scope.include_volumes);
        let json = serde_json::to_value(Namespaces::All).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "all"}));
    }
}
