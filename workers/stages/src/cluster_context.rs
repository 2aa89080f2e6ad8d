//! What the cluster stages (snapshot, restore) share: the vault, the disk provider, and the
//! Kubernetes clusters this worker can reach, by name.
//!
//! A backup instance names its cluster (`BackupInstance::cluster`), and a restore may name a
//! target (`RestoreOptions::target_cluster`). A worker holds one [`ClusterTarget`] (a
//! `kube::Client` plus the [`PodExec`] its hooks run through) per cluster name it serves
//! (`--cluster-name`), and one of them is the default:
//!
//! - the snapshot stage and a restore without `target_cluster` use the instance's cluster by
//!   name, which must be one this worker has ([`ClusterContext::instance_cluster`]). An instance
//!   that names no cluster, or one this worker does not serve, is refused: backing up (or
//!   restoring onto) whatever cluster the worker happens to reach would put one cluster's
//!   resources under another's instance;
//! - an explicit `target_cluster` must be a name this worker has: restoring somewhere else than
//!   asked is never a good guess;
//! - the default serves only a restore whose instance is no longer in the catalog.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use stowage_cluster::ClusterTarget;
use stowage_cluster::apply::ApplyError;
use stowage_disk::DiskProvider;
use stowage_runtime::StageError;
use stowage_schemas::domain::BackupInstance;
use stowage_vault::catalog::settings;
use stowage_vault::store::BlobStore;

/// How the snapshot stage takes a volume's operational snapshot (`--disk-provider local|csi`;
/// see ARCHITECTURE.md, "CSI VolumeSnapshots").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SnapshotMode {
    /// Through the disk provider itself: only volumes of its CSI driver are snapshotted.
    #[default]
    Disk,
    /// Through `snapshot.storage.k8s.io/v1` VolumeSnapshots: volumes of every CSI driver that
    /// has a VolumeSnapshotClass.
    Csi,
}

/// Everything the snapshot and restore stages need besides their message.
#[derive(Clone)]
pub struct ClusterContext {
    /// The vault's primary storage: instances, catalog, resources objects.
    pub vault: BlobStore,
    /// The vault's secondary storage (geo-redundant vaults), where a restore from the
    /// `secondary` tier finds its staged resources.
    pub secondary: Option<BlobStore>,
    /// The disk provider: snapshots are taken and restored disks created through it.
    pub disks: Arc<dyn DiskProvider>,
    clusters: BTreeMap<String, ClusterTarget>,
    default_cluster: String,
    /// Volumes snapshotted, or restored disks filled, at once.
    pub volume_parallelism: usize,
    /// Bytes read from a snapshot per piece while filling a restored disk (memory per volume
    /// in flight is about this much).
    pub copy_piece_bytes: usize,
    /// How long a restore waits for a created CRD to become `Established`.
    pub crd_established_timeout: Duration,
    /// How long a restore waits, per wave, for the claims it bound to new volumes to be
    /// `Bound` before the objects that mount them (late ones are a warning).
    pub pvc_bound_timeout: Duration,
    /// How the snapshot stage takes operational snapshots (`--disk-provider`).
    pub snapshot_mode: SnapshotMode,
    /// How long the snapshot stage waits for a CSI VolumeSnapshot to become `readyToUse`.
    pub csi_ready_timeout: Duration,
    /// When a recovery point is taken, by the snapshot stage's reckoning (the system clock;
    /// tests simulating weeks of backups set their own).
    clock: crate::retention::Clock,
}

impl ClusterContext {
    /// A context with one cluster, `default_name`, which is also the default.
    pub fn new(
        vault: BlobStore,
        disks: Arc<dyn DiskProvider>,
        default_name: impl Into<String>,
        default_cluster: ClusterTarget,
    ) -> Self {
        let default_name = default_name.into();
        Self {
            vault,
            secondary: None,
            disks,
            clusters: BTreeMap::from([(default_name.clone(), default_cluster)]),
            default_cluster: default_name,
            volume_parallelism: 4,
            copy_piece_bytes: 1 << 20,
            crd_established_timeout: Duration::from_secs(60),
            pvc_bound_timeout: Duration::from_secs(120),
            snapshot_mode: SnapshotMode::Disk,
            csi_ready_timeout: Duration::from_secs(300),
            clock: Arc::new(jiff::Timestamp::now),
        }
    }

    /// The same context taking operational snapshots the way `mode` says.
    pub fn with_snapshot_mode(mut self, mode: SnapshotMode) -> Self {
        self.snapshot_mode = mode;
        self
    }

    /// The same context dating recovery points by `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: crate::retention::Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Now, by this context's clock.
    pub fn now(&self) -> jiff::Timestamp {
        (self.clock)()
    }

    /// The same context with another cluster, reachable as `name`.
    pub fn with_cluster(mut self, name: impl Into<String>, cluster: ClusterTarget) -> Self {
        self.clusters.insert(name.into(), cluster);
        self
    }

    /// The same context with the vault's secondary storage.
    pub fn with_secondary(mut self, store: BlobStore) -> Self {
        self.secondary = Some(store);
        self
    }

    /// The name of the default cluster.
    pub fn default_cluster(&self) -> &str {
        &self.default_cluster
    }

    /// The cluster named `name` exactly; an error naming the clusters this worker has if none.
    pub fn cluster(&self, name: &str) -> Result<(&str, &ClusterTarget), StageError> {
        self.clusters
            .get_key_value(name)
            .map(|(n, c)| (n.as_str(), c))
            .ok_or_else(|| {
                StageError::permanent(format!(
                    "cluster {name:?} is not configured on this worker (it has: {}); \
                     name one of those as the target cluster, or configure {name:?} on the worker",
                    self.clusters.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })
    }

    /// The cluster of a backup instance: the one it names, exactly. An instance that names no
    /// cluster, or one this worker does not have, is a permanent error saying which and the fix;
    /// there is no fallback to this worker's default cluster.
    pub fn instance_cluster(
        &self,
        instance: &BackupInstance,
    ) -> Result<(&str, &ClusterTarget), StageError> {
        if instance.cluster.trim().is_empty() {
            return Err(StageError::permanent(format!(
                "backup instance {:?} names no cluster, so no worker can tell which cluster to \
                 back up or restore it from; give it one (`stowage instance create {} --cluster \
                 <name> ... --update`), the name a worker serves that cluster by (--cluster-name)",
                instance.name, instance.name
            )));
        }
        self.clusters
            .get_key_value(instance.cluster.as_str())
            .map(|(n, c)| (n.as_str(), c))
            .ok_or_else(|| {
                StageError::permanent(format!(
                    "backup instance {:?} is of cluster {:?}, which this worker does not serve (it \
                     serves: {}); run a worker with --cluster-name {} for it, or fix the \
                     instance's cluster",
                    instance.name,
                    instance.cluster,
                    self.clusters.keys().cloned().collect::<Vec<_>>().join(", "),
                    instance.cluster
                ))
            })
    }
}

/// Reads a backup instance from the vault's catalog. A missing instance is a permanent error
/// naming it and the fix; a damaged document is permanent; storage trouble is transient.
pub async fn read_instance(store: &BlobStore, name: &str) -> Result<BackupInstance, StageError> {
    read_instance_opt(store, name).await?.ok_or_else(|| {
        StageError::permanent(format!(
            "backup instance {name:?} is not defined in the vault; create the instance first \
             (or check the instance name in the job)"
        ))
    })
}

/// Reads a backup instance if it exists: `None` when the vault has no document for it.
pub(crate) async fn read_instance_opt(
    store: &BlobStore,
    name: &str,
) -> Result<Option<BackupInstance>, StageError> {
    match settings::read_instance(store, name).await {
        Ok(instance) => Ok(Some(instance)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(StageError::from(e)),
    }
}

/// Classifies a Kubernetes API failure: server errors, throttling and connection failures are
/// transient; a refused request is permanent.
pub(crate) fn kube_is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429 || status.code == 410,
        kube::Error::SerdeError(_) => false,
        _ => true,
    }
}

/// A stage error for a Kubernetes API failure, with `what` naming what was being done. A 401
/// or 403 is permanent and names the verb, the resource and the RBAC fix.
pub(crate) fn kube_error(what: String, error: kube::Error) -> StageError {
    if let Some(denied) = stowage_cluster::AccessDenied::from_error(&error) {
        return access_denied(&what, &denied);
    }
    #[derive(Debug, thiserror::Error)]
    #[error("{what}: {source}")]
    struct KubeFailure {
        what: String,
        #[source]
        source: kube::Error,
    }
    let transient = kube_is_transient(&error);
    let failure = KubeFailure {
        what,
        source: error,
    };
    if transient {
        StageError::transient(failure)
    } else {
        StageError::permanent(failure)
    }
}

/// The permanent error for a request the API server refused to the worker's identity.
pub(crate) fn access_denied(what: &str, denied: &stowage_cluster::AccessDenied) -> StageError {
    StageError::permanent(format!("{what}: {denied}; fix: {}", denied.fix()))
}

/// A stage error for a failed CSI snapshot operation, transient or permanent as the error says.
pub(crate) fn csi_error(error: stowage_cluster::csi::CsiError) -> StageError {
    if error.is_transient() {
        StageError::transient(error)
    } else {
        StageError::permanent(error)
    }
}

/// A label value for `text`: itself when Kubernetes accepts it as one (at most 63 characters,
/// letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit), else `h-` and
/// 32 hex digits of its hash.
pub(crate) fn label_value(text: &str) -> String {
    let bytes = text.as_bytes();
    let fits = !text.is_empty()
        && text.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if fits {
        text.to_owned()
    } else {
        format!("h-{}", &blake3::hash(text.as_bytes()).to_hex()[..32])
    }
}

/// A stage error for a failed create or patch of a restored object.
pub(crate) fn apply_error(error: ApplyError) -> StageError {
    match error {
        ApplyError::NotAnObject { .. } => StageError::permanent(format!(
            "{error} in the resources object; the resources object is damaged"
        )),
        ApplyError::Api {
            what,
            object,
            source,
        } => kube_error(format!("{what} {object} failed"), source),
    }
}

/// Turns any text into a name the disk provider accepts: ASCII letters, digits, `.`, `_`, `-`
/// (others become `-`), at most 200 bytes (longer names keep a hash of the whole).
pub(crate) fn disk_safe_name(raw: &str) -> String {
    let mut clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean.starts_with('.') {
        clean.replace_range(0..1, "-");
    }
    if clean.len() > 200 {
        let hash = blake3::hash(raw.as_bytes()).to_hex();
        clean.truncate(183);
        clean.push('-');
        clean.push_str(&hash[..16]);
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_valid() {
        assert_eq!(
            label_value("sched-shop-20260102T0630Z"),
            "sched-shop-20260102T0630Z"
        );
        let long = label_value(&"x".repeat(64));
        assert!(long.starts_with("h-") && long.len() == 34);
        assert_ne!(label_value("a/b"), "a/b");
    }

    #[test]
    fn disk_names_are_safe_and_bounded() {
        assert_eq!(disk_safe_name("rp-1-shop-data"), "rp-1-shop-data");
        assert_eq!(disk_safe_name(".a/b:c"), "-a-b-c");
        let long = "x".repeat(300);
        let name = disk_safe_name(&long);
        assert_eq!(name.len(), 200);
        assert_ne!(name, disk_safe_name(&"x".repeat(301)));
    }
}
