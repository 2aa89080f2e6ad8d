//! `stowage rp verify`: re-read every chunk of a recovery point in a tier and report its
//! integrity. Each distinct chunk is read once, by range, and checked twice (the AES-GCM tag,
//! then a keyed re-hash against its id). Damage is reported, not raised: the report lists every
//! bad chunk with its pack and volume, so one flipped byte does not hide another.

use std::collections::HashSet;

use futures::StreamExt as _;
use serde::Serialize;
use stowage_schemas::domain::Tier;
use stowage_vault::catalog;
use stowage_vault::chunk::ChunkId;
use stowage_vault::crypto::VaultKey;
use stowage_vault::extent::{ExtentMap, load_chain};
use stowage_vault::index::ChunkIndex;
use stowage_vault::pack::read_chunk;
use stowage_vault::store::BlobStore;

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Damage {
    /// The volume whose data is affected.
    pub volume_id: String,
    /// The chunk.
    pub chunk: String,
    /// The pack key, when the chunk's location is known.
    pub pack: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The backup instance.
    pub instance: String,
    /// The recovery point.
    pub recovery_point_id: String,
    /// The tier checked.
    pub tier: Tier,
    /// Volumes checked.
    pub volumes: usize,
    /// Distinct chunks read.
    pub chunks_checked: u64,
    /// Plaintext bytes verified.
    pub bytes_checked: u64,
    /// Every damaged or missing chunk.
    pub damage: Vec<Damage>,
}

impl VerifyReport {
    /// True when nothing is damaged.
    pub fn is_intact(&self) -> bool {
        self.damage.is_empty()
    }
}

/// Why verification could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The RP is not in the tier.
    #[error(
        "recovery point {rp_id} of instance {instance} is not in the {tier:?} tier; `stowage rp list` shows where it is"
    )]
    NotInTier {
        /// The instance.
        instance: String,
        /// The RP.
        rp_id: String,
        /// The tier asked for.
        tier: Tier,
    },
    /// Reading metadata failed.
    #[error("cannot read the recovery point's metadata: {0}")]
    Metadata(String),
}

/// Verify recovery point `rp_id` of `instance` in `tier`, held in `store`.
pub async fn verify(
    store: &BlobStore,
    key: &VaultKey,
    instance: &str,
    rp_id: &str,
    tier: Tier,
    parallelism: usize,
) -> Result<VerifyReport, VerifyError> {
    let manifest = catalog::read_tier_manifest(store, instance, rp_id, tier)
        .await
        .map_err(|e| VerifyError::Metadata(e.to_string()))?
        .ok_or_else(|| VerifyError::NotInTier {
            instance: instance.to_owned(),
            rp_id: rp_id.to_owned(),
            tier,
        })?;
    let keys = key.chunk_keys();
    let mut report = VerifyReport {
        instance: instance.to_owned(),
        recovery_point_id: rp_id.to_owned(),
        tier,
        volumes: manifest.volumes.len(),
        chunks_checked: 0,
        bytes_checked: 0,
        damage: Vec::new(),
    };
    let mut seen: HashSet<ChunkId> = HashSet::new();
    for volume in &manifest.volumes {
        let chain = match load_chain(store, &volume.volume_id, &volume.version).await {
            Ok(chain) => chain,
            Err(e) => {
                report.damage.push(Damage {
                    volume_id: volume.volume_id.clone(),
                    chunk: "-".into(),
                    pack: None,
                    reason: format!("extent map: {e}"),
                });
                continue;
            }
        };
        let resolved =
            ExtentMap::resolve(&chain).map_err(|e| VerifyError::Metadata(e.to_string()))?;
        let ids: Vec<ChunkId> = resolved.chunk_ids().filter(|id| seen.insert(*id)).collect();
        let wanted: HashSet<ChunkId> = ids.iter().copied().collect();
        let index = ChunkIndex::load_only(store, &wanted)
            .await
            .map_err(|e| VerifyError::Metadata(e.to_string()))?;
        let mut results = futures::stream::iter(ids)
            .map(|id| {
                let (index, keys) = (&index, &keys);
                let volume_id = volume.volume_id.clone();
                async move {
                    let Some(location) = index.get(&id) else {
                        return (
                            id,
                            Err(Damage {
                                volume_id,
                                chunk: id.to_string(),
                                pack: None,
                                reason: "in no index segment".into(),
                            }),
                        );
                    };
                    let pack = Some(location.pack.key().to_string());
                    let result = match read_chunk(store, keys, &id, &location).await {
                        Ok(plain) => Ok(plain.len()),
                        Err(e) => Err(Damage {
                            volume_id,
                            chunk: id.to_string(),
                            pack,
                            reason: match e.corruption() {
                                Some(reason) => reason.to_string(),
                                None => e.to_string(),
                            },
                        }),
                    };
                    (id, result)
                }
            })
            .buffer_unordered(parallelism.max(1));
        while let Some((_, result)) = results.next().await {
            report.chunks_checked += 1;
            match result {
                Ok(bytes) => report.bytes_checked += bytes as u64,
                Err(damage) => report.damage.push(damage),
            }
        }
    }
    Ok(report)
}
