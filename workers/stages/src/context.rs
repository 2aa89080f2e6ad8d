//! What the vault stages share: where the vault is, its key, the disks, and tuning.

use std::sync::Arc;

use stowage_disk::DiskProvider;
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
}

/// The secondary location of a geo-redundant vault.
#[derive(Clone)]
pub struct Secondary {
    /// Its storage.
    pub store: BlobStore,
    /// Its region, for events and messages.
    pub region: String,
}

impl VaultContext {
    /// A context with default tuning. The store is given the key, so it seals and opens what a
    /// recovery point holds (see `stowage_vault::seal`).
    pub fn new(primary: BlobStore, key: VaultKey, disks: Arc<dyn DiskProvider>) -> Self {
        Self {
            primary: primary.with_key(&key),
            secondary: None,
            key: Arc::new(key),
            disks,
            grid: ChunkGrid::default(),
            pack_target: DEFAULT_PACK_TARGET / 2,
            consolidation: ConsolidationPolicy::default(),
            parallelism: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, 8)
                * 2,
        }
    }

    /// The same context with a secondary location (given the vault's key too).
    pub fn with_secondary(mut self, store: BlobStore, region: impl Into<String>) -> Self {
        self.secondary = Some(Secondary {
            store: store.with_key(&self.key),
            region: region.into(),
        });
        self
    }
}
