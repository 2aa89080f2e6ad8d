//! `stowage rp verify`: re-read everything a recovery point holds in a tier and report its
//! integrity: its manifests (the tier's and the RP's), its resources objects (read whole, by
//! ranges, every segment authenticated), the extent maps of each volume's chain, the trailer
//! index of each pack its chunks live in, and every distinct chunk once, by range, checked
//! twice (the AES-GCM tag, then a keyed re-hash against its id). Damage is reported, not
//! raised: the report names every damaged or missing object (and chunk, with its volume), so
//! one flipped byte does not hide another.

use std::collections::{BTreeSet, HashSet};

use futures::StreamExt as _;
use serde::Serialize;
use stowage_schemas::domain::Tier;
use stowage_vault::catalog::{self, TierManifest};
use stowage_vault::chunk::ChunkId;
use stowage_vault::crypto::VaultKey;
use stowage_vault::extent::{CHAIN_LIMIT, ExtentMap};
use stowage_vault::index::ChunkIndex;
use stowage_vault::layout::{self, BlobKey};
use stowage_vault::pack::{PackId, read_chunk, read_pack_index};
use stowage_vault::store::BlobStore;

/// What [`Damage::volume_id`] and [`Damage::chunk`] say when the damage is not a volume's or a
/// chunk's.
pub const NOT_APPLICABLE: &str = "-";

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Damage {
    /// The object at fault, by key: a manifest, a resources object, an extent map, or the pack
    /// that holds a damaged chunk (`index` for a chunk no index segment locates).
    pub object: String,
    /// The volume whose data is affected, or `-`.
    pub volume_id: String,
    /// The damaged chunk, or `-` when the damage is the object's as a whole.
    pub chunk: String,
    /// What is wrong.
    pub reason: String,
}

impl Damage {
    /// Whether this is a damaged or missing chunk (rather than a whole object).
    pub fn is_chunk(&self) -> bool {
        self.chunk != NOT_APPLICABLE
    }
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
    /// Manifests, resources objects, extent maps and pack indexes read and found intact.
    pub objects_checked: u64,
    /// Distinct chunks read.
    pub chunks_checked: u64,
    /// Plaintext bytes of chunks verified.
    pub bytes_checked: u64,
    /// Every damaged or missing object and chunk.
    pub damage: Vec<Damage>,
}

impl VerifyReport {
    /// True when nothing is damaged.
    pub fn is_intact(&self) -> bool {
        self.damage.is_empty()
    }

    /// How many chunks are damaged or missing.
    pub fn damaged_chunks(&self) -> usize {
        self.damage.iter().filter(|d| d.is_chunk()).count()
    }

    /// How many objects (manifests, resources, maps, packs) are damaged or missing.
    pub fn damaged_objects(&self) -> usize {
        self.damage.len() - self.damaged_chunks()
    }

    fn object_damage(&mut self, object: &BlobKey, volume: Option<&str>, error: &dyn ToString) {
        self.damage.push(Damage {
            object: object.to_string(),
            volume_id: volume.unwrap_or(NOT_APPLICABLE).to_owned(),
            chunk: NOT_APPLICABLE.to_owned(),
            reason: error.to_string(),
        });
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

fn metadata(error: impl ToString) -> VerifyError {
    VerifyError::Metadata(error.to_string())
}

/// What to say about an object that could not be read: missing, or why it is unusable.
fn unreadable(error: &stowage_vault::Error) -> String {
    if error.is_not_found() {
        format!("missing: {error}")
    } else {
        error.to_string()
    }
}

/// Verify recovery point `rp_id` of `instance` in `tier`, held in `store`, with the vault key
/// `key`. Transient storage failures are errors (the answer would be a guess); damage of any
/// object or chunk is in the report.
pub async fn verify(
    store: &BlobStore,
    key: &VaultKey,
    instance: &str,
    rp_id: &str,
    tier: Tier,
    parallelism: usize,
) -> Result<VerifyReport, VerifyError> {
    let store = &store.with_key(key);
    let mut report = VerifyReport {
        instance: instance.to_owned(),
        recovery_point_id: rp_id.to_owned(),
        tier,
        volumes: 0,
        objects_checked: 0,
        chunks_checked: 0,
        bytes_checked: 0,
        damage: Vec::new(),
    };
    let tier_key = catalog::tier_manifest_key(instance, rp_id, tier).map_err(metadata)?;
    let manifest = match catalog::read_tier_manifest(store, instance, rp_id, tier).await {
        Ok(Some(manifest)) => Some(manifest),
        Ok(None) => {
            return Err(VerifyError::NotInTier {
                instance: instance.to_owned(),
                rp_id: rp_id.to_owned(),
                tier,
            });
        }
        Err(e) if e.is_transient() => return Err(metadata(e)),
        Err(e) => {
            report.object_damage(&tier_key, None, &unreadable(&e));
            None
        }
    };
    if manifest.is_some() {
        report.objects_checked += 1;
    }
    let rp_key = layout::recovery_point(instance, rp_id).map_err(metadata)?;
    let rp = match catalog::read_recovery_point(store, instance, rp_id).await {
        Ok(rp) => {
            report.objects_checked += 1;
            Some(rp)
        }
        Err(e) if e.is_transient() => return Err(metadata(e)),
        Err(e) => {
            report.object_damage(&rp_key, None, &unreadable(&e));
            None
        }
    };
    let named = manifest
        .as_ref()
        .map(|m| m.resources.clone())
        .or_else(|| rp.map(|rp| rp.resources))
        .unwrap_or_default();
    verify_resources(store, instance, rp_id, &named, &mut report).await?;
    if let Some(manifest) = manifest {
        verify_volumes(store, key, &manifest, parallelism, &mut report).await?;
    }
    Ok(report)
}

/// Reads every resources object of the RP whole (the one its manifest names, which must exist,
/// and any other under its `resources/` prefix, such as the snapshot report).
async fn verify_resources(
    store: &BlobStore,
    instance: &str,
    rp_id: &str,
    named: &str,
    report: &mut VerifyReport,
) -> Result<(), VerifyError> {
    let mut keys = BTreeSet::new();
    if !named.is_empty() {
        match layout::parse_resource_key(named) {
            Ok(key) => {
                keys.insert(key);
            }
            Err(e) => report.damage.push(Damage {
                object: named.to_owned(),
                volume_id: NOT_APPLICABLE.into(),
                chunk: NOT_APPLICABLE.into(),
                reason: format!("the manifest names an impossible resources key: {e}"),
            }),
        }
    }
    let prefix = layout::resources(instance, rp_id).map_err(metadata)?;
    let mut listing = store.list(&prefix);
    while let Some(info) = listing.next().await {
        keys.insert(info.map_err(metadata)?.key);
    }
    for key in keys {
        let read = match store.read_windows(&key).await {
            Ok(reader) => reader.check_to_end().await,
            Err(e) => Err(e),
        };
        match read {
            Ok(_) => report.objects_checked += 1,
            Err(e) if e.is_transient() => return Err(metadata(e)),
            Err(e) => report.object_damage(&key, None, &unreadable(&e)),
        }
    }
    Ok(())
}

/// Loads the chain of one volume version map by map, reporting the first map that is missing
/// or damaged; `None` then.
async fn load_chain_checked(
    store: &BlobStore,
    volume_id: &str,
    version: &str,
    report: &mut VerifyReport,
) -> Result<Option<Vec<ExtentMap>>, VerifyError> {
    let mut chain: Vec<ExtentMap> = Vec::new();
    let mut version = version.to_owned();
    loop {
        let key = layout::volume_version(volume_id, &version).map_err(metadata)?;
        match ExtentMap::load(store, volume_id, &version).await {
            Ok(map) => {
                report.objects_checked += 1;
                let parent = map.parent().map(str::to_owned);
                chain.push(map);
                match parent {
                    None => break,
                    Some(_) if chain.len() >= CHAIN_LIMIT => {
                        report.object_damage(
                            &key,
                            Some(volume_id),
                            &format!(
                                "more than {CHAIN_LIMIT} ancestors: the parent links probably loop"
                            ),
                        );
                        return Ok(None);
                    }
                    Some(parent) => version = parent,
                }
            }
            Err(e) if e.is_transient() => return Err(metadata(e)),
            Err(e) => {
                report.object_damage(&key, Some(volume_id), &unreadable(&e));
                return Ok(None);
            }
        }
    }
    chain.reverse();
    Ok(Some(chain))
}

/// Checks each volume's maps, the packs its chunks live in, and every chunk not seen before.
async fn verify_volumes(
    store: &BlobStore,
    key: &VaultKey,
    manifest: &TierManifest,
    parallelism: usize,
    report: &mut VerifyReport,
) -> Result<(), VerifyError> {
    let keys = key.chunk_keys();
    report.volumes = manifest.volumes.len();
    let mut seen: HashSet<ChunkId> = HashSet::new();
    let mut packs_seen: HashSet<PackId> = HashSet::new();
    for volume in &manifest.volumes {
        let volume_id = volume.volume_id.as_str();
        let Some(chain) = load_chain_checked(store, volume_id, &volume.version, report).await?
        else {
            continue;
        };
        let resolved = match ExtentMap::resolve(&chain) {
            Ok(resolved) => resolved,
            Err(e) => {
                let top = layout::volume_version(volume_id, &volume.version).map_err(metadata)?;
                report.object_damage(&top, Some(volume_id), &format!("its chain: {e}"));
                continue;
            }
        };
        let ids: Vec<ChunkId> = resolved.chunk_ids().filter(|id| seen.insert(*id)).collect();
        let wanted: HashSet<ChunkId> = ids.iter().copied().collect();
        let index = ChunkIndex::load_only(store, &wanted)
            .await
            .map_err(metadata)?;
        let packs: BTreeSet<PackId> = ids
            .iter()
            .filter_map(|id| index.get(id))
            .map(|location| location.pack)
            .filter(|pack| packs_seen.insert(pack.clone()))
            .collect();
        for pack in packs {
            match read_pack_index(store, &pack).await {
                Ok(_) => report.objects_checked += 1,
                Err(e) if e.is_transient() => return Err(metadata(e)),
                Err(e) => report.object_damage(&pack.key(), Some(volume_id), &unreadable(&e)),
            }
        }
        let mut results = futures::stream::iter(ids)
            .map(|id| {
                let (index, keys) = (&index, &keys);
                async move {
                    let Some(location) = index.get(&id) else {
                        return Err(Damage {
                            object: layout::INDEX.to_owned(),
                            volume_id: volume_id.to_owned(),
                            chunk: id.to_string(),
                            reason: "in no index segment: the chunk is missing".into(),
                        });
                    };
                    let pack = location.pack.key().to_string();
                    match read_chunk(store, keys, &id, &location).await {
                        Ok(plain) => Ok(plain.len()),
                        Err(e) => Err(Damage {
                            object: pack,
                            volume_id: volume_id.to_owned(),
                            chunk: id.to_string(),
                            reason: match e.corruption() {
                                Some(reason) => reason.to_string(),
                                None => unreadable(&e),
                            },
                        }),
                    }
                }
            })
            .buffer_unordered(parallelism.max(1));
        while let Some(result) = results.next().await {
            report.chunks_checked += 1;
            match result {
                Ok(bytes) => report.bytes_checked += bytes as u64,
                Err(damage) => report.damage.push(damage),
            }
        }
    }
    Ok(())
}
