//! A vault, a secondary location and local disks for the data-plane tests, with a stand-in for
//! the snapshot stage (snapshot the disks, store a resources object, write the RP manifest).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::{RngExt as _, SeedableRng as _};
use stowage_disk::{ByteRange, DiskId, DiskProvider, LocalDiskProvider, SnapshotId};
use stowage_runtime::{JobContext, StageError};
use stowage_schemas::Stage;
use stowage_schemas::domain::{
    RecoveryPoint, Redundancy, RpState, Tier, TierState, Vault, VolumeBackup,
};
use stowage_schemas::jobs::{RestoreHydrationJob, RestoreOptions, Staging};
use stowage_stages::VaultContext;
use stowage_vault::catalog::TierManifest;
use stowage_vault::catalog::settings::{self, WriteMode};
use stowage_vault::crypto::VaultKey;
use stowage_vault::layout;
use stowage_vault::store::{AzureConfig, BlobStore, LocalDurability};

/// The instance every fixture RP belongs to.
pub const INSTANCE: &str = "shop-prod";

/// The secondary region the fixture's `vault.json` records.
pub const SECONDARY_REGION: &str = "westeurope";

/// Where the fixture's vault lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaultBackend {
    /// Local folders.
    LocalFolder,
    /// Azurite containers.
    Azurite,
}

/// A vault (primary + secondary), local disks, and the context the stages run with.
pub struct VaultFixture {
    /// Temporary folder holding everything local.
    pub dir: PathBuf,
    /// The stages' context.
    pub ctx: VaultContext,
    /// The disks.
    pub disks: Arc<LocalDiskProvider>,
}

impl VaultFixture {
    /// A fresh fixture on `backend`.
    pub async fn new(backend: VaultBackend) -> Self {
        let dir = crate::temp_dir("vault");
        let disks = Arc::new(LocalDiskProvider::open(dir.join("disks")).expect("disk provider"));
        let ((primary, location), (secondary, secondary_location)) = match backend {
            VaultBackend::LocalFolder => {
                let folder = |name: &str| {
                    let path = dir.join(name);
                    let store = BlobStore::local_folder(&path, LocalDurability::OsBuffered)
                        .expect("vault folder");
                    (store, path.display().to_string())
                };
                (folder("vault"), folder("secondary"))
            }
            VaultBackend::Azurite => (
                azurite_location("vault").await,
                azurite_location("secondary").await,
            ),
        };
        // The settings the stages and workers read: a geo vault, its secondary in westeurope.
        let settings = Vault {
            redundancy: Redundancy::Geo {
                secondary_location,
                secondary_region: SECONDARY_REGION.into(),
            },
            region: "local".into(),
            ..stowage_schemas::samples::vault("fixture", &location)
        };
        settings::write_vault(&primary, &settings, WriteMode::Create)
            .await
            .expect("vault.json");
        let key = VaultKey::generate().expect("key");
        let ctx = VaultContext::new(primary, key, disks.clone()).with_secondary(secondary);
        Self { dir, ctx, disks }
    }

    /// Create `disk` of `size` bytes and apply `writes` through the provider (so they are tracked).
    pub async fn write(&self, disk: &str, size: u64, writes: &[(u64, Vec<u8>)]) {
        let info = self
            .disks
            .create_disk(disk, size)
            .await
            .expect("create disk");
        for (offset, data) in writes {
            self.disks
                .write(&info.id, *offset, data)
                .await
                .expect("write disk");
        }
    }

    /// Create `disk` of `size` bytes with `len` bytes of [`half_random_half_pattern`] at `offset`.
    pub async fn write_patterned(&self, disk: &str, size: u64, offset: u64, len: u64, seed: u64) {
        let data = half_random_half_pattern(len as usize, seed);
        self.write(disk, size, &[(offset, data)]).await;
    }

    /// Run vault-transfer for `rp_id` of [`INSTANCE`], outside a worker.
    pub async fn transfer(&self, rp_id: &str) -> Result<TierManifest, StageError> {
        let job = JobContext::detached(Stage::VaultTransfer);
        stowage_stages::vault_transfer::transfer(&self.ctx, INSTANCE, rp_id, &job).await
    }

    /// Run restore-hydration of `rp_id` from `tier` as restore `restore_id`, outside a worker.
    pub async fn hydrate(
        &self,
        restore_id: &str,
        rp_id: &str,
        tier: Tier,
    ) -> Result<Staging, StageError> {
        let job = JobContext::detached(Stage::RestoreHydration);
        let hydration = hydration(restore_id, rp_id, tier);
        stowage_stages::restore_hydration::hydrate(&self.ctx, &hydration, &job).await
    }

    /// Create an empty (sparse) disk.
    pub async fn disks_create(&self, disk: &str, size: u64) {
        self.disks
            .create_disk(disk, size)
            .await
            .expect("create disk");
    }

    /// Write `len` seeded random bytes at `offset` of `disk`.
    pub async fn write_random(&self, disk: &str, offset: u64, len: usize, seed: u64) {
        let mut data = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill(&mut data[..]);
        self.disks
            .write(&DiskId(disk.into()), offset, &data)
            .await
            .expect("write disk");
    }

    /// Stand-in for the snapshot stage: snapshot each `(disk, volume id)` as `<rp_id>-<disk>`, store a
    /// resources object, and write the RP manifest.
    pub async fn snapshot_rp(&self, rp_id: &str, volumes: &[(&str, &str)]) -> RecoveryPoint {
        let mut backups = Vec::new();
        for (disk, volume_id) in volumes {
            let snap = self
                .disks
                .snapshot(&DiskId(disk.to_string()), &format!("{rp_id}-{disk}"))
                .await
                .expect("snapshot");
            backups.push(VolumeBackup {
                volume_id: volume_id.to_string(),
                namespace: "shop".into(),
                pvc: format!("data-{disk}"),
                size_bytes: snap.size,
                snapshot_id: snap.id.0.clone(),
                vault_version: None,
                csi: None,
            });
        }
        let resources = layout::resource(INSTANCE, rp_id, &["resources.json"]).expect("key");
        let objects = format!(
            "{{\"kind\":\"List\",\"items\":[{{\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"cm-{rp_id}\"}}}}]}}\n"
        );
        self.ctx
            .primary
            .put_create_only(&resources, objects.into_bytes())
            .await
            .expect("resources");
        let rp = RecoveryPoint {
            id: rp_id.into(),
            instance: INSTANCE.into(),
            created_at: jiff::Timestamp::now(),
            tiers: vec![TierState {
                tier: Tier::Operational,
                state: RpState::Available,
                expires_at: None,
            }],
            resources: resources.to_string(),
            volumes: backups,
        };
        stowage_vault::catalog::write_recovery_point(&self.ctx.primary, &rp)
            .await
            .expect("manifest");
        rp
    }

    /// Assert the disk `hydrated` holds exactly the bytes of snapshot `snapshot`.
    pub async fn assert_same_bytes(&self, snapshot: &str, hydrated: &str) {
        let snap = self
            .disks
            .get_snapshot(&SnapshotId(snapshot.into()))
            .await
            .expect("snapshot");
        self.assert_same_bytes_in(snapshot, hydrated, &[(0, snap.size)])
            .await;
    }

    /// Assert the disk `hydrated` holds the bytes of snapshot `snapshot` in each `(offset, len)`.
    pub async fn assert_same_bytes_in(
        &self,
        snapshot: &str,
        hydrated: &str,
        ranges: &[(u64, u64)],
    ) {
        let snap = SnapshotId(snapshot.into());
        let mut expected = vec![0u8; 1 << 20];
        let mut actual = vec![0u8; 1 << 20];
        for &(start, length) in ranges {
            let mut offset = start;
            while offset < start + length {
                let len = (start + length - offset).min(1 << 20) as usize;
                self.disks
                    .read_snapshot(&snap, offset, &mut expected[..len])
                    .await
                    .expect("read snapshot");
                self.disks
                    .read_disk(&DiskId(hydrated.into()), offset, &mut actual[..len])
                    .await
                    .expect("read hydrated disk");
                if expected[..len] != actual[..len] {
                    let at = expected[..len]
                        .iter()
                        .zip(&actual[..len])
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    panic!(
                        "disk {hydrated} differs from snapshot {snapshot} at byte {}",
                        offset + at as u64
                    );
                }
                offset += len as u64;
            }
        }
    }

    /// Total size of the files in a local folder (the vault's growth, for the incremental test).
    pub fn folder_bytes(path: &Path) -> u64 {
        let mut total = 0;
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                if entry.file_name() != stowage_vault::store::LOCAL_LOCK_DIR {
                    total += Self::folder_bytes(&entry.path());
                }
            } else {
                total += meta.len();
            }
        }
        total
    }
}

impl Drop for VaultFixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A restore-hydration job for `rp_id` of [`INSTANCE`] from `tier`, with default options.
pub fn hydration(restore_id: &str, rp_id: &str, tier: Tier) -> RestoreHydrationJob {
    RestoreHydrationJob {
        restore_id: restore_id.into(),
        instance: INSTANCE.into(),
        recovery_point_id: rp_id.into(),
        tier,
        staging_location: None,
        // The hydrated event is addressed to the target cluster's restore workers; the fixture's
        // vault holds no instance to take it from.
        options: RestoreOptions {
            target_cluster: Some(crate::TEST_CLUSTER.into()),
            ..RestoreOptions::default()
        },
    }
}

/// `len` bytes: the first half random (incompressible), the second a repeated 4 KiB pattern.
pub fn half_random_half_pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data[..len / 2]);
    let pattern: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    for (i, b) in data[len / 2..].iter_mut().enumerate() {
        *b = pattern[i % pattern.len()];
    }
    data
}

/// `count` random 4 KiB-aligned writes of 4 KiB random bytes inside `0..size`.
pub fn scattered_writes(size: u64, count: usize, seed: u64) -> Vec<(u64, Vec<u8>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let blocks = size / 4096;
    let mut chosen = std::collections::BTreeSet::new();
    while chosen.len() < count {
        chosen.insert(rng.random_range(0..blocks));
    }
    chosen
        .into_iter()
        .map(|b| {
            let mut data = vec![0u8; 4096];
            rng.fill(&mut data[..]);
            (b * 4096, data)
        })
        .collect()
}

/// Sum of range lengths.
pub fn total(ranges: &[ByteRange]) -> u64 {
    ranges.iter().map(|r| r.len).sum()
}

/// A fresh Azurite container (Azurite must be running: `scripts/test.sh` starts it).
pub async fn azurite_container(purpose: &str) -> BlobStore {
    azurite_location(purpose).await.0
}

/// A fresh Azurite container for `purpose`, and its location as `--vault` takes it.
pub async fn azurite_location(purpose: &str) -> (BlobStore, String) {
    let container = format!(
        "{purpose}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    stowage_vault::store::create_azurite_container(&container).await.unwrap_or_else(|e| {
        panic!("cannot create Azurite container {container}: {e}\nStart Azurite with infra/scripts/start-azurite.sh (scripts/test.sh does it).")
    });
    let location = format!("azurite://{container}");
    let store = BlobStore::azure(&AzureConfig::Emulator { container }).expect("azure store");
    (store, location)
}
