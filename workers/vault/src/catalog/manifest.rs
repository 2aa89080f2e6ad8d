//! Recovery-point manifests in the vault.
//!
//! * `catalog/<instance>/<rp-id>.json` — the [`RecoveryPoint`] as the snapshot stage recorded it
//!   (resources object, volumes and their snapshots). Create-only.
//! * `catalog/<instance>/<rp-id>.<tier>.json` — a [`TierManifest`] per data tier (`vault`,
//!   `secondary`): which volume versions hold the RP's data there. Create-only and written
//!   **last** by the stage that fills the tier, so its presence means the tier is complete and
//!   a half-written RP is never visible.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use stowage_schemas::domain::{RecoveryPoint, Tier};

use crate::error::{Error, ErrorKind};
use crate::layout::{self, BlobKey, LayoutError};
use crate::store::{BlobStore, CreateOutcome};

/// One volume of a recovery point, in a data tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TieredVolume {
    /// The volume (`volumes/<volume-id>/`).
    pub volume_id: String,
    /// The extent-map version holding this RP's data.
    pub version: String,
    /// Volume size in bytes.
    pub size_bytes: u64,
}

/// What filling a tier cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferStats {
    /// Volume bytes read from snapshots.
    pub bytes_read: u64,
    /// Bytes written to blob storage for new chunks (compressed and encrypted).
    pub bytes_stored: u64,
    /// Chunks stored by this transfer.
    pub chunks_new: u64,
    /// Chunks the vault already held.
    pub chunks_reused: u64,
}

/// A recovery point's presence in one data tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierManifest {
    /// The backup instance.
    pub instance: String,
    /// The recovery point.
    pub recovery_point_id: String,
    /// The tier.
    pub tier: Tier,
    /// When the tier became complete.
    pub completed_at: jiff::Timestamp,
    /// Key of the resources object (the same key in every store of the vault).
    pub resources: String,
    /// The RP's volumes in this tier.
    pub volumes: Vec<TieredVolume>,
    /// Transfer statistics.
    #[serde(default)]
    pub stats: TransferStats,
}

async fn read_json<T: for<'de> Deserialize<'de>>(
    store: &BlobStore,
    key: &BlobKey,
) -> Result<T, Error> {
    let bytes = store.get(key).await?.bytes;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::new(
            ErrorKind::Damaged,
            format!(
                "manifest {key} is unreadable: {e}; it was damaged or written by an incompatible \
                 version"
            ),
        )
    })
}

async fn write_json<T: Serialize>(
    store: &BlobStore,
    key: &BlobKey,
    value: &T,
) -> Result<CreateOutcome, Error> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("manifests always serialize");
    bytes.push(b'\n');
    store.put_create_only(key, Bytes::from(bytes)).await
}

/// The recovery point manifest.
pub async fn read_recovery_point(
    store: &BlobStore,
    instance: &str,
    rp_id: &str,
) -> Result<RecoveryPoint, Error> {
    read_json(store, &layout::recovery_point(instance, rp_id)?).await
}

/// Write the recovery point manifest, create-only.
pub async fn write_recovery_point(
    store: &BlobStore,
    rp: &RecoveryPoint,
) -> Result<CreateOutcome, Error> {
    write_json(store, &layout::recovery_point(&rp.instance, &rp.id)?, rp).await
}

/// The manifest of the RP in `tier`, or `None` if the tier is not complete (yet).
pub async fn read_tier_manifest(
    store: &BlobStore,
    instance: &str,
    rp_id: &str,
    tier: Tier,
) -> Result<Option<TierManifest>, Error> {
    match read_json(
        store,
        &layout::recovery_point_tier(instance, rp_id, layout::tier_name(tier))?,
    )
    .await
    {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Write a tier manifest, create-only: the last write of the stage that fills the tier.
pub async fn write_tier_manifest(
    store: &BlobStore,
    manifest: &TierManifest,
) -> Result<CreateOutcome, Error> {
    let key = layout::recovery_point_tier(
        &manifest.instance,
        &manifest.recovery_point_id,
        layout::tier_name(manifest.tier),
    )?;
    write_json(store, &key, manifest).await
}

/// Key of a tier manifest, for copying it.
pub fn tier_manifest_key(instance: &str, rp_id: &str, tier: Tier) -> Result<BlobKey, LayoutError> {
    layout::recovery_point_tier(instance, rp_id, layout::tier_name(tier))
}
