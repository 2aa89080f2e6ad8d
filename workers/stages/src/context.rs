//! What the vault stages share: where the vault is, its key, the disks, and tuning.

use std::collections::BTreeMap;
use std::sync::Arc;

use stowage_disk::DiskProvider;
use stowage_runtime::StageError;
use stowage_schemas::domain::{Redundancy, Vault};
use stowage_vault::catalog::settings;
use stowage_vault::chunk::ChunkGrid;
use stowage_vault::crypto::VaultKey;
use stowage_vault::extent::ConsolidationPolicy;
use stowage_vault::pack::DEFAULT_PACK_TARGET;
use stowage_vault::store::BlobStore;

/// Everything a vault stage needs besides its message.
#[derive(Clone)]
pub struct VaultContext {
    /// The vault's own storage (primary region), sealing with [`Self::key`].
    pub primary: BlobStore,
    /// The paired region's storage, for a geo-redundant vault.
    pub secondary: Option<Secondary>,
    /// Why this worker has no `secondary` although the vault is geo-redundant (what opening it
    /// at start said); the stages that need it fail with this reason.
    pub secondary_unavailable: Option<String>,
    /// The vault's key (chunk ids and encryption).
    pub key: Arc<VaultKey>,
    /// The disk provider that holds snapshots and staging disks.
    pub disks: Arc<dyn DiskProvider>,
    /// How changed ranges are cut into chunks.
    pub grid: ChunkGrid,
    /// Target pack size in bytes. The default, 8 MiB, keeps a worker within its 128 MiB budget
    /// with one pack filling while the previous one uploads.
    pub pack_target: usize,
    /// When incremental chains are consolidated.
    pub consolidation: ConsolidationPolicy,
    /// Pieces read and sealed at once (bounds memory: about two pieces of `grid` size each).
    pub parallelism: usize,
    /// Clients of the clusters whose CSI VolumeSnapshots retention may delete, by the name
    /// workers give the cluster (`CsiSnapshot::cluster`); empty unless the worker has clusters.
    pub csi_clusters: BTreeMap<String, kube::Client>,
}

/// The secondary location of a geo-redundant vault. Its region is the one `vault.json` records,
/// read per job ([`VaultContext::settings`]).
#[derive(Clone)]
pub struct Secondary {
    /// Its storage.
    pub store: BlobStore,
}

impl VaultContext {
    /// A context with default tuning. The store is given the key, so it seals and opens what a
    /// recovery point holds (see `stowage_vault::seal`).
    pub fn new(primary: BlobStore, key: VaultKey, disks: Arc<dyn DiskProvider>) -> Self {
        Self {
            primary: primary.with_key(&key),
            secondary: None,
            secondary_unavailable: None,
            key: Arc::new(key),
            disks,
            grid: ChunkGrid::default(),
            pack_target: DEFAULT_PACK_TARGET / 2,
            consolidation: ConsolidationPolicy::default(),
            parallelism: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, 8)
                * 2,
            csi_clusters: BTreeMap::new(),
        }
    }

    /// The same context reaching the cluster `name` for deleting CSI VolumeSnapshots.
    pub fn with_csi_cluster(mut self, name: impl Into<String>, client: kube::Client) -> Self {
        self.csi_clusters.insert(name.into(), client);
        self
    }

    /// The same context with a secondary location (given the vault's key too).
    pub fn with_secondary(mut self, store: BlobStore) -> Self {
        self.secondary = Some(Secondary {
            store: store.with_key(&self.key),
        });
        self.secondary_unavailable = None;
        self
    }

    /// The same context without a secondary location, saying why (the vault is geo-redundant,
    /// but its secondary storage could not be opened).
    pub fn without_secondary(mut self, reason: impl Into<String>) -> Self {
        self.secondary = None;
        self.secondary_unavailable = Some(reason.into());
        self
    }

    /// The vault's settings (`vault.json`), read now: what the stages act on is what the vault
    /// says at the time of the job, not at the worker's start.
    pub async fn settings(&self) -> Result<Vault, StageError> {
        Ok(settings::read_vault(&self.primary).await?)
    }

    /// The secondary storage `vault`'s settings call for, with the region they record: `None`
    /// for a locally redundant vault; for a geo vault this worker's secondary once it answers
    /// ([`BlobStore::probe`]; transient while it does not), or a permanent error naming the
    /// vault, its secondary and why this worker has none.
    pub async fn secondary_of<'a>(
        &'a self,
        vault: &'a Vault,
    ) -> Result<Option<(&'a BlobStore, &'a str)>, StageError> {
        let Redundancy::Geo {
            secondary_location,
            secondary_region,
        } = &vault.redundancy
        else {
            return Ok(None);
        };
        let Some(secondary) = &self.secondary else {
            let reason = self
                .secondary_unavailable
                .as_deref()
                .unwrap_or("the worker was started without one");
            return Err(StageError::permanent(format!(
                "vault {} is geo-redundant (secondary {secondary_location} in {secondary_region}) \
                 but this worker has no secondary storage: {reason}; start it with --secondary \
                 <location> (or make {secondary_location} reachable from it), then replay the \
                 job (`stowage dlq replay <stage>`)",
                vault.name
            )));
        };
        secondary.store.probe().await.map_err(|e| {
            let transient = stowage_schemas::Retryable::is_transient(&e);
            let message = format!(
                "the secondary storage of vault {} ({secondary_region}) is unreachable: {e}",
                vault.name
            );
            if transient {
                StageError::transient(message)
            } else {
                StageError::permanent(message)
            }
        })?;
        Ok(Some((&secondary.store, secondary_region)))
    }
}
