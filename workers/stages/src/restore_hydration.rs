//! restore-hydration: bring a recovery point's data out of the vault (or secondary) tier into
//! staging, for the restore stage to apply.
//!
//! First it records `staging/<restore-id>/hydration.json` (when it started, which staging disks
//! it makes; see [`crate::staging`]), so a failed hydration's leftovers can be swept. It stops
//! between volumes when the job is cancelled. For each volume: resolve its extent-map chain into one flat map, find where each chunk lives,
//! read chunks by range, verify them (authentication tag, then a re-hash against the id) and
//! stream the bytes into a new staging disk through the disk provider; ranges no chunk covers
//! stay holes. Before the volumes, the resources object is copied to
//! `staging/<restore-id>/resources` (create-only, streamed, never held in memory): a sealed
//! object is bound to its key, so the copy is opened and sealed again for the staging key,
//! which authenticates every segment on the way. Any damaged
//! or missing chunk fails the job permanently, naming the chunk, its pack and the RP: a restore
//! from damaged data must not look like success. A redelivered job rewrites the same bytes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use stowage_disk::DiskError;
use stowage_runtime::metrics::{BytesKind, metrics};
use stowage_runtime::{JobContext, Outcome, StageError, StageHandler};
use stowage_schemas::domain::{JobProgress, Tier};
use stowage_schemas::events::RestoreHydrated;
use stowage_schemas::jobs::{RestoreHydrationJob, StagedDisk, Staging};
use stowage_schemas::{Message, Stage};
use stowage_vault::catalog::{self, soft_delete};
use stowage_vault::chunk::ChunkId;
use stowage_vault::crypto::ChunkKeys;
use stowage_vault::extent::{ExtentMap, ExtentTarget, load_chain};
use stowage_vault::index::ChunkIndex;
use stowage_vault::layout;
use stowage_vault::pack::read_chunk_bytes;
use stowage_vault::store::BlobStore;

use crate::context::VaultContext;
use crate::staging::{self, StagingRecord};

/// Chunks kept decrypted for reuse: repeated data (a pattern, a zeroed-but-written file) maps
/// many extents to one chunk.
const CHUNK_CACHE_ENTRIES: usize = 8;

/// The restore-hydration stage, over the vault it reads.
#[derive(Clone)]
pub struct RestoreHydration(pub VaultContext);

impl StageHandler for RestoreHydration {
    type Input = RestoreHydrationJob;

    async fn handle(
        &self,
        ctx: JobContext,
        job: RestoreHydrationJob,
    ) -> Result<Outcome, StageError> {
        let mut job = job;
        // The event names the target cluster (the instance's own when the job does not): it
        // routes the restore to that cluster's restore workers (stowage_runtime::topology).
        if job.options.target_cluster.is_none() {
            let instance =
                crate::cluster_context::read_instance(&self.0.primary, &job.instance).await?;
            job.options.target_cluster = Some(instance.cluster);
        }
        let staging = hydrate(&self.0, &job, &ctx).await?;
        Ok(
            Outcome::done().emit(Message::RestoreHydrated(RestoreHydrated {
                restore_id: job.restore_id,
                instance: job.instance,
                recovery_point_id: job.recovery_point_id,
                tier: job.tier,
                staging,
                options: job.options,
            })),
        )
    }
}

/// The name of the staging disk of one volume of one restore.
pub fn staging_disk_name(restore_id: &str, volume_id: &str) -> String {
    let mut name = format!(
        "{}{}",
        staging_disk_prefix(restore_id),
        disk_name_part(volume_id)
    );
    // The name travels as `disk_id` in `restore.hydrated`, which the restore decodes by the id
    // rule (stowage_schemas::id): it must end with a letter or digit and fit in 253 bytes.
    if name.len() > STAGING_NAME_KEPT + 17 || !name.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        let hash = blake3::hash(format!("{restore_id}\0{volume_id}").as_bytes()).to_hex();
        name.truncate(STAGING_NAME_KEPT);
        name.push('-');
        name.push_str(&hash[..16]);
    }
    name
}

/// How much of a staging disk's name survives when it must be shortened (a hash follows).
const STAGING_NAME_KEPT: usize = stowage_schemas::id::MAX_ID_LEN - 17;

/// What every staging disk name of restore `restore_id` starts with (at most the part of it
/// a shortened name keeps): the ownership rule checks a disk's name against it.
pub fn staging_disk_prefix(restore_id: &str) -> String {
    let mut prefix = format!("staging-{}-", disk_name_part(restore_id));
    prefix.truncate(STAGING_NAME_KEPT);
    prefix
}

/// `raw` with every character a disk name cannot hold replaced by `-`.
fn disk_name_part(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Hydrates one recovery point into staging (see the module doc), stopping between volumes
/// if `run` is cancelled and reporting progress (bytes hydrated, volumes done) to it.
pub async fn hydrate(
    ctx: &VaultContext,
    job: &RestoreHydrationJob,
    run: &JobContext,
) -> Result<Staging, StageError> {
    let settings;
    let (store, location) = match job.tier {
        Tier::Vault => (&ctx.primary, "vault"),
        Tier::Secondary => {
            settings = ctx.settings().await?;
            match ctx.secondary_of(&settings).await? {
                Some((store, _)) => (store, "secondary"),
                None => {
                    return Err(StageError::permanent(format!(
                        "vault {} is locally redundant: it has no secondary tier; restore from \
                         the vault tier",
                        settings.name
                    )));
                }
            }
        }
        Tier::Operational => {
            return Err(StageError::permanent(
                "an operational-tier restore needs no hydration: submit a job.restore with source_tier operational",
            ));
        }
    };
    let (instance, rp_id) = (&job.instance, &job.recovery_point_id);
    if let Some(deleted) = soft_delete::deleted(&ctx.primary, instance, rp_id).await? {
        return Err(StageError::permanent(deleted.restore_refusal()));
    }
    let Some(manifest) = catalog::read_tier_manifest(store, instance, rp_id, job.tier).await?
    else {
        return Err(StageError::permanent(format!(
            "recovery point {rp_id} of instance {instance} is not in the {location} tier; \
             `stowage rp list` shows the tiers each recovery point is in"
        )));
    };
    // Recorded before anything is made, so a failed or abandoned hydration's disks can be
    // found and swept (see `crate::staging`).
    staging::write_record(
        store,
        &StagingRecord {
            restore_id: job.restore_id.clone(),
            instance: instance.clone(),
            recovery_point_id: rp_id.clone(),
            tier: job.tier,
            started_at: jiff::Timestamp::now(),
            disks: manifest
                .volumes
                .iter()
                .map(|v| staging_disk_name(&job.restore_id, &v.volume_id))
                .collect(),
        },
    )
    .await?;
    // The resources first: it is small next to the volumes, and a damaged one fails the
    // hydration before any staging disk is written.
    let resources =
        layout::staging(&job.restore_id, staging::RESOURCES_FILE).map_err(StageError::permanent)?;
    if !manifest.resources.is_empty() {
        let source =
            layout::parse_resource_key(&manifest.resources).map_err(StageError::permanent)?;
        // Streamed (a resources object grows with the cluster), opened and sealed again for
        // its staging key, every segment authenticated on the way. Create-only: a redelivered
        // job finds the copy made before and keeps it.
        store
            .copy_to_key_create_only(&source, store, &resources)
            .await
            .map_err(|e| match e.is_transient() {
                true => StageError::from(e),
                false => StageError::permanent(format!(
                    "recovery point {rp_id} ({location} tier) cannot be restored: {e}"
                )),
            })?;
    }
    let keys = Arc::new(ctx.key.chunk_keys());
    let mut disks = Vec::new();
    let items_total = manifest.volumes.len() as u64;
    let mut bytes_done = 0u64;
    for (done, volume) in manifest.volumes.iter().enumerate() {
        run.check_cancelled("the hydration")?;
        run.report_progress(JobProgress {
            bytes_done,
            bytes_total: None,
            items_done: done as u64,
            items_total: Some(items_total),
        });
        let chain = load_chain(store, &volume.volume_id, &volume.version).await?;
        let resolved = ExtentMap::resolve(&chain).map_err(StageError::permanent)?;
        let name = staging_disk_name(&job.restore_id, &volume.volume_id);
        let info = hydrate_volume(ctx, store, &keys, &resolved, &name, rp_id, location).await?;
        tracing::info!(volume = %volume.volume_id, disk = %info.id, bytes = resolved.data_bytes(), "volume hydrated");
        let stage = Stage::RestoreHydration;
        metrics().add_bytes(stage, BytesKind::Read, resolved.data_bytes());
        metrics().add_bytes(stage, BytesKind::Written, resolved.data_bytes());
        bytes_done += resolved.data_bytes();
        disks.push(StagedDisk {
            volume_id: volume.volume_id.clone(),
            disk_id: info.id.0,
            size_bytes: info.size,
        });
    }

    run.report_progress(JobProgress {
        bytes_done,
        bytes_total: None,
        items_done: items_total,
        items_total: Some(items_total),
    });
    Ok(Staging {
        location: location.to_owned(),
        resources: resources.to_string(),
        disks,
    })
}

async fn hydrate_volume(
    ctx: &VaultContext,
    store: &BlobStore,
    keys: &Arc<ChunkKeys>,
    resolved: &ExtentMap,
    disk_name: &str,
    rp_id: &str,
    tier: &str,
) -> Result<stowage_disk::DiskInfo, StageError> {
    let wanted: HashSet<ChunkId> = resolved.chunk_ids().collect();
    let index = Arc::new(ChunkIndex::load_only(store, &wanted).await?);
    if let Some(missing) = wanted.iter().find(|id| !index.contains(id)) {
        return Err(StageError::permanent(format!(
            "chunk {missing} of recovery point {rp_id} ({tier} tier) is in no index segment: the data is \
             missing; run `stowage rp verify {rp_id} --tier {tier}` and restore from the other tier"
        )));
    }
    let cache: Arc<Mutex<HashMap<ChunkId, Bytes>>> = Arc::default();
    let failure: Arc<Mutex<Option<StageError>>> = Arc::default();
    let extents: Vec<_> = resolved
        .extents()
        .iter()
        .filter_map(|e| match e.target {
            ExtentTarget::Chunk {
                id,
                offset_in_chunk,
            } => Some((e.offset, e.length, id, offset_in_chunk)),
            ExtentTarget::Zero => None,
        })
        .collect();
    let (store, keys, rp_id, tier) = (
        store.clone(),
        keys.clone(),
        rp_id.to_owned(),
        tier.to_owned(),
    );
    // Chunks read (and decrypted) at once, and as many more queued ahead of the disk writes, so
    // the pack reads go on while the provider writes a batch.
    let read_ahead = ctx.parallelism.max(1);
    let pieces = futures::stream::iter(extents)
        .map(move |(offset, length, id, offset_in_chunk)| {
            let (store, keys, index, cache) = (store.clone(), keys.clone(), index.clone(), cache.clone());
            let rp_id = rp_id.clone();
            let tier = tier.clone();
            async move {
                let cached = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned();
                let plain = match cached {
                    Some(p) => p,
                    None => {
                        let location = index.get(&id).expect("checked above");
                        // A task of its own, so decryption and decompression of the chunks in
                        // flight run on every core, not serially inside this stream.
                        let read = tokio::spawn({
                            let (store, keys) = (store.clone(), keys.clone());
                            async move { read_chunk_bytes(&store, &keys, &id, &location).await }
                        });
                        let read = read.await.map_err(|e| StageError::transient(format!("a chunk read task failed: {e}")))?;
                        let plain = read.map_err(|e| match e {
                            e if e.corruption().is_some() => StageError::permanent(format!(
                                "recovery point {rp_id} ({tier} tier) cannot be restored: {e}"
                            )),
                            other => StageError::from(other),
                        })?;
                        let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
                        if c.len() >= CHUNK_CACHE_ENTRIES {
                            c.clear();
                        }
                        c.insert(id, plain.clone());
                        plain
                    }
                };
                let start = offset_in_chunk as usize;
                let end = start + length as usize;
                if end > plain.len() {
                    return Err(StageError::permanent(format!(
                        "chunk {id} of recovery point {rp_id} holds {} bytes but its extent map needs {end}; the map is damaged",
                        plain.len()
                    )));
                }
                Ok::<_, StageError>((offset, plain.slice(start..end)))
            }
        })
        .buffered(read_ahead);
    // The disk provider sees a DiskError stream; the real cause is kept aside to report it.
    let slot = failure.clone();
    let mut pieces = pieces
        .map(move |piece| {
            piece.map_err(|err| {
                let text = err.to_string();
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
                DiskError::Io {
                    context: "reading the vault".into(),
                    source: std::io::Error::other(text),
                }
            })
        })
        .boxed();
    // Reading and decrypting run in a task of their own, a bounded channel ahead of the disk
    // writes, so the two overlap instead of taking turns.
    // It also keeps account of what it waited for: the vault (reading, opening and hashing the
    // chunks) or the disk (the channel full because the provider is writing): what bounds a
    // restore, logged per volume as the transfer logs its own.
    let (mut ahead, behind) = futures::channel::mpsc::channel(read_ahead);
    let producer = tokio::spawn(async move {
        let (mut for_vault, mut for_disk) = (Duration::ZERO, Duration::ZERO);
        loop {
            let asked = Instant::now();
            let Some(piece) = pieces.next().await else {
                break;
            };
            let got = Instant::now();
            for_vault += got - asked;
            let failed = piece.is_err();
            let sent = futures::SinkExt::send(&mut ahead, piece).await;
            for_disk += got.elapsed();
            if sent.is_err() || failed {
                break;
            }
        }
        (for_vault, for_disk)
    });
    let created = ctx
        .disks
        .create_disk_from_stream(disk_name, resolved.volume_size(), behind.boxed())
        .await;
    // The provider has returned, so it dropped its end of the channel: the reader has ended
    // or ends at its next send.
    if created.is_ok() {
        if let Ok((for_vault, for_disk)) = producer.await {
            tracing::info!(
                disk = disk_name,
                waited_for_vault_ms = for_vault.as_millis() as u64,
                waited_for_disk_ms = for_disk.as_millis() as u64,
                "volume hydrated: what its reader waited for"
            );
        }
    } else {
        producer.abort();
    }
    if let Some(cause) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(cause);
    }
    created.map_err(StageError::from)
}

#[cfg(test)]
mod tests {
    use super::{staging_disk_name, staging_disk_prefix};

    #[test]
    fn staging_disk_names_follow_the_id_rule() {
        assert_eq!(
            staging_disk_name("restore-7f3a", "vol-5d1c"),
            "staging-restore-7f3a-vol-5d1c"
        );
        let long = "r".repeat(253);
        for (restore, volume) in [(&*long, "vol-1"), ("r-1", "vol%2E_"), ("r-1", "ünï")] {
            let name = staging_disk_name(restore, volume);
            stowage_schemas::id::validate(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_ne!(
            staging_disk_name(&long, "a"),
            staging_disk_name(&long, "b"),
            "a cut name stays distinct"
        );
    }

    #[test]
    fn every_staging_disk_name_starts_with_its_restores_prefix() {
        // The ownership rule (staging::owns_disk) checks names against the prefix.
        let long = "r".repeat(253);
        for (restore, volume) in [
            ("restore-rp-2-from-vault", "shop-data"),
            ("r-1", "vol%2E_"),
            (&*long, "vol-1"),
        ] {
            let name = staging_disk_name(restore, volume);
            assert!(
                name.starts_with(&staging_disk_prefix(restore)),
                "{name} does not start with {}",
                staging_disk_prefix(restore)
            );
        }
        assert!(!staging_disk_name("r-10", "v").starts_with(&staging_disk_prefix("r-1-x")));
    }
}
