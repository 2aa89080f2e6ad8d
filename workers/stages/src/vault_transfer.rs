//! vault-transfer: a recovery point's volume snapshots into the vault tier.
//!
//! For each volume of the RP, the transfer reads only what it must from the snapshot — the
//! ranges changed since the newest snapshot of that volume already in the vault (an
//! incremental), or every allocated range when there is none (a full) — cuts them on the chunk
//! grid, skips zero ranges, and stores each chunk the vault does not hold yet: compressed,
//! encrypted, packed. Then, in this order, each step create-only:
//!
//! 1. packs, named `hash(job, n)` so a redelivered job finds what it uploaded before a crash;
//! 2. the job's chunk-index segment;
//! 3. one extent map per volume (consolidated when its chain grows too long);
//! 4. the RP's vault-tier manifest — last, so the RP shows in the vault tier only when complete.
//!
//! A volume held as a CSI VolumeSnapshot is read through the disk provider only when its driver
//! is the provider's (the local provider reads the sandbox driver's snapshot handles); any
//! other driver's volume stays in the operational tier only (warned), and the tier manifest
//! leaves it out.
//!
//! A redelivery after step 4 returns the stored manifest; after any earlier step it re-reads
//! the snapshot but stores nothing twice: chunks of its earlier packs are known from their
//! trailers, everything later is create-only. Memory stays bounded: one pack filling, up to
//! [`UPLOADS_IN_FLIGHT`] uploading, [`SEAL_QUEUE`] sealed pieces queued and `parallelism` pieces
//! being read and sealed, whatever the volume size.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use stowage_disk::{ByteRange, SnapshotId};
use stowage_runtime::metrics::{BytesKind, metrics};
use stowage_runtime::{JobContext, JobOrEvent, Outcome, StageError, StageHandler};
use stowage_schemas::domain::{JobProgress, RecoveryPoint, Tier};
use stowage_schemas::events::{RpCreated, RpVaultSkipped, RpVaulted};
use stowage_schemas::jobs::VaultTransferJob;
use stowage_schemas::{Message, Stage};
use stowage_vault::catalog::{self, TierManifest, TieredVolume, TransferStats};
use stowage_vault::chunk::{ChangedRanges, ChunkId, SealedChunk, is_all_zero, seal_chunk_as};
use stowage_vault::crypto::ChunkKeys;
use stowage_vault::extent::{ExtentMap, ExtentMapBuilder, load_chain};
use stowage_vault::index::{self, DedupIndex};
use stowage_vault::layout;
use stowage_vault::lease::{Acquired, Lease};
use stowage_vault::pack::{
    ChunkLocation, PackId, PackNaming, PackWriter, UPLOADS_IN_FLIGHT, WrittenPack, read_pack_index,
};
use stowage_vault::store::{BlobStore, CreateOutcome};

use crate::context::VaultContext;

/// The vault-transfer stage, over the vault it fills.
#[derive(Clone)]
pub struct VaultTransfer(pub VaultContext);

impl StageHandler for VaultTransfer {
    type Input = JobOrEvent<VaultTransferJob, RpCreated>;

    async fn handle(&self, ctx: JobContext, input: Self::Input) -> Result<Outcome, StageError> {
        let (instance, rp_id, requested) = match input {
            JobOrEvent::Job(job) => (job.instance, job.recovery_point_id, true),
            JobOrEvent::Event(created) => (created.instance, created.recovery_point_id, false),
        };
        // Policy eligibility: an RP no vault rule selects stays operational only. The job
        // completes without copying and emits rp.vault-skipped saying why (not rp.vaulted, so
        // geo-replication is not started for it either). The policy decides what the pipeline
        // does by itself (on rp.created); an explicit job.vault-transfer is an operator's
        // request and copies whatever it names (retention then keeps that copy only while no
        // rule selects it and it is not the newest in the vault tier).
        if !requested
            && let Ok(rp) = catalog::read_recovery_point(&self.0.primary, &instance, &rp_id).await
            && crate::retention::vault_eligibility(&self.0.primary, &rp).await?
                == crate::retention::Eligibility::NotSelected
        {
            let policy = crate::retention::read_policy(&self.0.primary, &instance).await?;
            let reason = skip_reason(policy.as_ref());
            tracing::info!(instance, rp_id, %reason, "vault transfer skipped by the policy");
            return Ok(
                Outcome::done().emit(Message::RpVaultSkipped(RpVaultSkipped {
                    instance,
                    recovery_point_id: rp_id,
                    policy: policy.map(|p| p.name),
                    reason,
                })),
            );
        }
        let manifest = transfer(&self.0, &instance, &rp_id, &ctx).await?;
        let rp = catalog::read_recovery_point(&self.0.primary, &instance, &rp_id).await?;
        let expires_at = crate::retention::vault_expiry(&self.0.primary, &rp).await?;
        Ok(Outcome::done().emit(Message::RpVaulted(RpVaulted {
            instance,
            recovery_point_id: rp_id,
            bytes_read: manifest.stats.bytes_read,
            bytes_stored: manifest.stats.bytes_stored,
            chunks_new: manifest.stats.chunks_new,
            chunks_reused: manifest.stats.chunks_reused,
            expires_at,
        })))
    }
}

/// Why `policy` selects a recovery point for no vault-tier rule, in one sentence.
fn skip_reason(policy: Option<&stowage_schemas::domain::Policy>) -> String {
    let Some(policy) = policy else {
        return "no vault rule selects this recovery point; it stays in the operational tier \
                only"
            .to_owned();
    };
    if policy.retention.vault.is_empty() {
        return format!(
            "policy `{}` has no vault-tier rule, so its recovery points stay in the operational \
             tier only; add a rule (e.g. first of the day) to transfer them, or submit a \
             job.vault-transfer to copy this one",
            policy.name
        );
    }
    let periods: Vec<&str> = policy
        .retention
        .vault
        .iter()
        .map(|rule| rule.first_of.as_str())
        .collect();
    format!(
        "no vault rule of policy `{}` selects this recovery point: the vault tier already holds \
         the first recovery point of its {}; it stays in the operational tier only (submit a \
         job.vault-transfer to copy it anyway)",
        policy.name,
        periods.join(", ")
    )
}

/// Stable identity of the transfer of one RP: names its packs and its index segment.
fn job_key(instance: &str, rp_id: &str) -> String {
    format!("vault-transfer/{instance}/{rp_id}")
}

fn segment_id(job_key: &str) -> String {
    format!("vt-{}", &blake3::hash(job_key.as_bytes()).to_hex()[..32])
}

/// Transfer one recovery point into the vault tier (see the module doc). Returns its manifest.
pub async fn transfer(
    ctx: &VaultContext,
    instance: &str,
    rp_id: &str,
    job: &JobContext,
) -> Result<TierManifest, StageError> {
    let store = &ctx.primary;
    if let Some(done) = catalog::read_tier_manifest(store, instance, rp_id, Tier::Vault).await? {
        tracing::info!(instance, rp_id, "already in the vault tier; nothing to do");
        return Ok(done);
    }
    let rp = catalog::read_recovery_point(store, instance, rp_id).await.map_err(|e| {
        if e.is_not_found() {
            StageError::permanent(format!(
                "recovery point {rp_id} of instance {instance} has no manifest in the vault ({e}); \
                 only recovery points made by the snapshot stage can be transferred"
            ))
        } else {
            StageError::from(e)
        }
    })?;

    let key = job_key(instance, rp_id);
    // One transfer per volume at a time: a second one waits, then opens the index the first
    // extended and stores only what that one did not (see `VolumeLeases`).
    let leases = VolumeLeases::acquire(ctx, &key, &rp, job).await?;
    let waited = leases.waited;
    let result = transfer_leased(ctx, instance, rp_id, &rp, key, waited, job).await;
    leases.release().await;
    result
}

/// [`transfer`] once the RP's volume leases are held.
async fn transfer_leased(
    ctx: &VaultContext,
    instance: &str,
    rp_id: &str,
    rp: &RecoveryPoint,
    key: String,
    waited: bool,
    job: &JobContext,
) -> Result<TierManifest, StageError> {
    let store = &ctx.primary;
    // The RP may have been finished by an earlier attempt while this one waited for a lease.
    if waited
        && let Some(done) = catalog::read_tier_manifest(store, instance, rp_id, Tier::Vault).await?
    {
        return Ok(done);
    }
    let mut known = DedupIndex::open(store).await?;
    let (mut job_entries, next_seq) = recover_packs(store, &key, &mut known).await?;
    if next_seq > 0 {
        // Packs of an interrupted attempt may have been condemned meanwhile: revive them
        // before relying on them (or wait if the collector is deleting them right now).
        let ids: Vec<PackId> = (0..next_seq).map(|n| PackId::for_job(&key, n)).collect();
        stowage_vault::gc::claim(store, &ids, &[]).await?;
    }
    if !job_entries.is_empty() {
        tracing::info!(
            packs = next_seq,
            chunks = job_entries.len(),
            "resuming: reusing packs an earlier attempt uploaded"
        );
    }
    let mut writer =
        PackWriter::new(store.clone(), ctx.pack_target)?.with_naming(PackNaming::Job {
            job_key: key.clone(),
            next_seq,
        });
    let known = Arc::new(known);
    let claimed = Arc::new(Mutex::new(HashSet::new()));
    let keys = Arc::new(ctx.key.chunk_keys());
    let mut stats = TransferStats::default();
    let mut maps = Vec::new();
    let volumes = rp.volumes.len() as u64;

    for (index, volume) in rp.volumes.iter().enumerate() {
        job.check_cancelled("the transfer (packs uploaded so far are reused by a later one)")?;
        job.report_progress(JobProgress {
            bytes_done: stats.bytes_read,
            bytes_total: None,
            items_done: index as u64,
            items_total: Some(volumes),
        });
        if let Some(csi) = &volume.csi
            && csi.driver != ctx.disks.driver()
        {
            tracing::warn!(
                volume = %volume.volume_id,
                pvc = %format!("{}/{}", volume.namespace, volume.pvc),
                driver = %csi.driver,
                "this volume's CSI snapshot is not readable by the vault worker's disk provider ({}): it stays in the operational tier only",
                ctx.disks.driver()
            );
            continue;
        }
        let version = volume.snapshot_id.clone();
        let map = match volume_map(store, &volume.volume_id, &version).await? {
            Some(existing) => existing,
            None => {
                let plan = plan_volume(
                    ctx,
                    &volume.volume_id,
                    &SnapshotId(volume.snapshot_id.clone()),
                    volume.size_bytes,
                )
                .await?;
                tracing::info!(volume = %volume.volume_id, version, base = ?plan.base, bytes = plan.ranges.total_len(), "transferring volume");
                let built = transfer_volume(
                    ctx,
                    job,
                    (index as u64, volumes),
                    &plan,
                    &keys,
                    &known,
                    &claimed,
                    &mut writer,
                    &mut job_entries,
                    &mut stats,
                )
                .await?;
                match &plan.base {
                    None => built,
                    Some(base) => {
                        let chain = load_chain(store, &volume.volume_id, base).await?;
                        ctx.consolidation
                            .apply(&chain, built)
                            .map_err(StageError::permanent)?
                    }
                }
            }
        };
        maps.push((volume.volume_id.clone(), map, volume.size_bytes));
    }
    job.report_progress(JobProgress {
        bytes_done: stats.bytes_read,
        bytes_total: None,
        items_done: volumes,
        items_total: Some(volumes),
    });
    for written in writer.finish().await? {
        record(&written, &mut job_entries);
    }

    // Packs are durable; now what points at them, most general last.
    if !job_entries.is_empty() {
        index::write_segment(store, &segment_id(&key), &job_entries).await?;
    }
    let mut volumes = Vec::new();
    for (volume_id, map, size_bytes) in maps {
        map.save(store, &volume_id).await?;
        volumes.push(TieredVolume {
            volume_id,
            version: map.version().to_owned(),
            size_bytes,
        });
    }
    let manifest = TierManifest {
        instance: instance.to_owned(),
        recovery_point_id: rp_id.to_owned(),
        tier: Tier::Vault,
        completed_at: jiff::Timestamp::now(),
        resources: rp.resources.clone(),
        volumes,
        stats,
    };
    match catalog::write_tier_manifest(store, &manifest).await? {
        CreateOutcome::Created(_) => Ok(manifest),
        // Another worker finished the same RP first; theirs is the record.
        CreateOutcome::AlreadyExists => {
            catalog::read_tier_manifest(store, instance, rp_id, Tier::Vault)
                .await?
                .ok_or_else(|| {
                    StageError::transient("the vault manifest vanished right after it was found")
                })
        }
    }
}

/// The packs an interrupted attempt of this job uploaded: their chunks become known, and the
/// writer continues after the last one. Up to [`UPLOADS_IN_FLIGHT`] packs upload at once, so
/// an attempt killed mid-way may have left a gap of fewer numbers than that: the probe looks
/// that far past a missing number before it concludes there are no more.
async fn recover_packs(
    store: &BlobStore,
    job_key: &str,
    known: &mut DedupIndex,
) -> Result<(Vec<(ChunkId, ChunkLocation)>, u64), StageError> {
    let mut entries = Vec::new();
    let mut seq = 0;
    let mut missing_in_a_row = 0;
    loop {
        let id = PackId::for_job(job_key, seq);
        match read_pack_index(store, &id).await {
            Ok(found) => {
                missing_in_a_row = 0;
                for e in found {
                    let location = ChunkLocation {
                        pack: id.clone(),
                        offset: e.offset,
                        length: e.length,
                    };
                    known.insert(e.chunk, location.clone());
                    entries.push((e.chunk, location));
                }
            }
            Err(e) if e.is_not_found() => {
                missing_in_a_row += 1;
                if missing_in_a_row >= UPLOADS_IN_FLIGHT as u64 {
                    return Ok((entries, seq + 1 - missing_in_a_row));
                }
            }
            Err(e) => return Err(StageError::from(e)),
        }
        seq += 1;
    }
}

fn record(written: &WrittenPack, entries: &mut Vec<(ChunkId, ChunkLocation)>) {
    entries.extend(written.locations());
}

async fn volume_map(
    store: &BlobStore,
    volume_id: &str,
    version: &str,
) -> Result<Option<ExtentMap>, StageError> {
    match ExtentMap::load(store, volume_id, version).await {
        Ok(map) => Ok(Some(map)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(StageError::from(e)),
    }
}

/// What to read for one volume.
struct VolumePlan {
    volume_id: String,
    snapshot: SnapshotId,
    size: u64,
    /// The vaulted version this one is incremental on, if any.
    base: Option<String>,
    ranges: ChangedRanges,
}

/// Walk the snapshot's ancestors back to the newest one already in the vault, collecting what
/// changed since; with none (or a gap in the chain), plan a full transfer.
async fn plan_volume(
    ctx: &VaultContext,
    volume_id: &str,
    snapshot: &SnapshotId,
    size: u64,
) -> Result<VolumePlan, StageError> {
    let info = ctx.disks.get_snapshot(snapshot).await?;
    let mut changed: Vec<ByteRange> = info.changed.clone();
    let mut parent = info.parent.clone();
    let mut base = None;
    let (gc_state, _) = stowage_vault::gc::read_state(&ctx.primary).await?;
    while let Some(p) = parent {
        let key = layout::volume_version(volume_id, &p.0).map_err(StageError::permanent)?;
        match ctx.primary.head(&key).await {
            // A map the collector condemned is not built on: it may be deleted.
            Ok(_) if gc_state.map_usable(volume_id, &p.0) => {
                base = Some(p.0.clone());
                break;
            }
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(StageError::from(e)),
        }
        match ctx.disks.get_snapshot(&p).await {
            Ok(older) => {
                changed.extend(older.changed.iter().copied());
                parent = older.parent.clone();
            }
            // The chain has a gap (retention deleted a snapshot): fall back to a full.
            Err(stowage_disk::DiskError::NotFound { .. }) => break,
            Err(e) => return Err(StageError::from(e)),
        }
    }
    let ranges: Vec<ByteRange> = match base {
        Some(_) => changed,
        None => ctx.disks.allocated_ranges(snapshot).await?,
    };
    let ranges = ChangedRanges::from_unsorted(
        ranges
            .iter()
            .map(|r| r.offset..(r.offset + r.len).min(size))
            .filter(|r| r.start < r.end),
    );
    Ok(VolumePlan {
        volume_id: volume_id.to_owned(),
        snapshot: snapshot.clone(),
        size,
        base,
        ranges,
    })
}

enum Prepared {
    Zero(Range<u64>),
    Chunk {
        range: Range<u64>,
        id: ChunkId,
        sealed: Option<SealedChunk>,
    },
}

#[allow(clippy::too_many_arguments)]
async fn transfer_volume(
    ctx: &VaultContext,
    job: &JobContext,
    (volume_index, volumes): (u64, u64),
    plan: &VolumePlan,
    keys: &Arc<ChunkKeys>,
    known: &Arc<DedupIndex>,
    claimed: &Arc<Mutex<HashSet<ChunkId>>>,
    writer: &mut PackWriter,
    job_entries: &mut Vec<(ChunkId, ChunkLocation)>,
    stats: &mut TransferStats,
) -> Result<ExtentMap, StageError> {
    let version = &plan.snapshot.0;
    let mut builder = match &plan.base {
        None => ExtentMapBuilder::full(version, plan.size),
        Some(base) => ExtentMapBuilder::incremental(version, base, plan.size),
    }
    .map_err(StageError::permanent)?;
    let pieces: Vec<Range<u64>> = ctx.grid.pieces(&plan.ranges).collect();
    let expected = pieces.len() as u64;
    // Adjacent pieces are read together when the provider says a call costs something of its
    // own (Azure: an HTTP request a read); the bytes in flight stay `parallelism` pieces' worth.
    let read_size = ctx.disks.read_size_hint().unwrap_or(0);
    let reads = coalesce(pieces.into_iter(), read_size);
    // A hint below the piece size reads piece by piece: never more pieces in flight than
    // `parallelism`.
    let reads_in_flight = match read_size {
        0 => ctx.parallelism.max(1),
        size => {
            let chunk = ctx.grid.chunk_size();
            (ctx.parallelism as u64 * chunk / size.max(chunk)).max(1) as usize
        }
    };
    let (disks, snapshot) = (ctx.disks.clone(), plan.snapshot.clone());
    let (keys, known, claimed) = (keys.clone(), known.clone(), claimed.clone());
    let sealing = futures::stream::iter(reads)
        .map(move |pieces| {
            let (disks, snapshot) = (disks.clone(), snapshot.clone());
            let (keys, known, claimed) = (keys.clone(), known.clone(), claimed.clone());
            async move {
                let (start, end) = (pieces[0].start, pieces[pieces.len() - 1].end);
                let data = disks
                    .read_snapshot_owned(&snapshot, start, (end - start) as usize)
                    .await?;
                tokio::task::spawn_blocking(move || {
                    pieces
                        .into_iter()
                        .map(|range| {
                            let at = (range.start - start) as usize..(range.end - start) as usize;
                            prepare(range, &data[at], &keys, &known, &claimed)
                        })
                        .collect::<Vec<_>>()
                })
                .await
                .map_err(|e| StageError::transient(format!("a chunking task failed: {e}")))
            }
        })
        .buffered(reads_in_flight)
        .flat_map(|read| {
            futures::stream::iter(match read {
                Ok(prepared) => prepared,
                Err(e) => vec![Err(e)],
            })
        });
    // Reading, hashing and sealing run in a task of their own, a bounded queue ahead of the
    // pack writer, so they go on while a pack's (fsync'd) upload is awaited (see ARCHITECTURE
    // "The data path at the machine's limit"). Dropping `_producer` stops it.
    let (ahead, mut prepared) =
        futures::channel::mpsc::channel::<Result<Prepared, StageError>>(SEAL_QUEUE);
    let _producer = AbortOnDrop(tokio::spawn(async move {
        let mut ahead = ahead;
        futures::pin_mut!(sealing);
        while let Some(piece) = sealing.next().await {
            let failed = piece.is_err();
            if futures::SinkExt::send(&mut ahead, piece).await.is_err() || failed {
                break;
            }
        }
    }));
    let mut done = 0u64;
    // Where the writer's time goes says which side bounds the transfer: waiting for sealed
    // pieces (read, hash, compress, encrypt) or for pack uploads (the writes and their fsyncs).
    let (mut waited_for_sealing, mut waited_for_uploads) = (Duration::ZERO, Duration::ZERO);
    loop {
        let asked = std::time::Instant::now();
        let Some(piece) = prepared.next().await else {
            break;
        };
        waited_for_sealing += asked.elapsed();
        match piece? {
            Prepared::Zero(range) => {
                stats.bytes_read += range.end - range.start;
                metrics().add_bytes(
                    Stage::VaultTransfer,
                    BytesKind::Read,
                    range.end - range.start,
                );
                builder
                    .push_zero(range.start, range.end - range.start)
                    .map_err(StageError::permanent)?;
            }
            Prepared::Chunk { range, id, sealed } => {
                let len = range.end - range.start;
                stats.bytes_read += len;
                metrics().add_bytes(Stage::VaultTransfer, BytesKind::Read, len);
                match sealed {
                    Some(chunk) => {
                        stats.chunks_new += 1;
                        stats.bytes_stored += chunk.bytes.len() as u64;
                        metrics().add_bytes(
                            Stage::VaultTransfer,
                            BytesKind::Written,
                            chunk.bytes.len() as u64,
                        );
                        let adding = std::time::Instant::now();
                        if let Some(written) = writer.add(chunk).await? {
                            record(&written, job_entries);
                        }
                        waited_for_uploads += adding.elapsed();
                    }
                    None => {
                        stats.chunks_reused += 1;
                        metrics().add_bytes(Stage::VaultTransfer, BytesKind::Deduplicated, len);
                    }
                }
                builder
                    .push_chunk(range.start, len, id, 0)
                    .map_err(StageError::permanent)?;
            }
        }
        done += 1;
        if done.is_multiple_of(16) {
            // Between pieces is a safe point: what was sealed so far sits in uploaded packs,
            // which a later transfer of this RP reuses by name.
            job.check_cancelled("the transfer (packs uploaded so far are reused by a later one)")?;
            job.report_progress(JobProgress {
                bytes_done: stats.bytes_read,
                bytes_total: None,
                items_done: volume_index,
                items_total: Some(volumes),
            });
        }
        if done.is_multiple_of(256) {
            if job.is_shutting_down() {
                return Err(StageError::transient(
                    "the worker is shutting down; the transfer resumes from its uploaded packs on redelivery",
                ));
            }
            tracing::info!(volume = %plan.volume_id, read_bytes = stats.bytes_read, "vault transfer progress");
        }
    }
    // The queue also ends if the producer stopped without a word (its task cancelled): a map
    // missing pieces must never be written.
    tracing::info!(
        volume = %plan.volume_id,
        pieces = done,
        waited_for_sealing_ms = waited_for_sealing.as_millis() as u64,
        waited_for_uploads_ms = waited_for_uploads.as_millis() as u64,
        "volume read and sealed"
    );
    if done != expected {
        return Err(StageError::transient(format!(
            "the sealing task of volume {} stopped after {done} of {expected} pieces; the transfer resumes from its uploaded packs on redelivery",
            plan.volume_id
        )));
    }
    Ok(builder.finish())
}

/// `pieces` (in volume order) gathered into reads: a read takes the pieces that follow on from
/// each other without a gap, up to `read_size` bytes in all; a piece is never split. A
/// `read_size` of 0 reads piece by piece.
fn coalesce(
    pieces: impl Iterator<Item = Range<u64>>,
    read_size: u64,
) -> impl Iterator<Item = Vec<Range<u64>>> {
    let mut pieces = pieces.peekable();
    std::iter::from_fn(move || {
        let first = pieces.next()?;
        let start = first.start;
        let mut read = vec![first];
        while let Some(next) = pieces
            .next_if(|next| next.start == read[read.len() - 1].end && next.end - start <= read_size)
        {
            read.push(next);
        }
        Some(read)
    })
}

/// Sealed pieces queued between the producer (read, hash, seal) and the pack writer: 8 MiB of
/// 1 MiB chunks, enough to keep sealing while a pack upload is awaited.
const SEAL_QUEUE: usize = 8;

/// A task aborted when this is dropped (the transfer failed or was dropped mid-way).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Off the async threads: skip zeros, hash, and seal chunks that are new to the vault and not
/// already claimed by another piece of this job.
fn prepare(
    range: Range<u64>,
    data: &[u8],
    keys: &ChunkKeys,
    known: &DedupIndex,
    claimed: &Mutex<HashSet<ChunkId>>,
) -> Result<Prepared, StageError> {
    if is_all_zero(data) {
        return Ok(Prepared::Zero(range));
    }
    let id = keys.chunk_id(data);
    let is_new = !known.contains_blocking(&id)?
        && claimed.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
    let sealed = if is_new {
        Some(seal_chunk_as(keys, id, data).map_err(StageError::permanent)?)
    } else {
        None
    };
    Ok(Prepared::Chunk { range, id, sealed })
}

/// How long a volume lease lasts without renewal: a transfer killed mid-way blocks the next one
/// of its volumes for at most this long.
const LEASE_TTL: Duration = Duration::from_secs(60);
/// How often a transfer waiting for a volume lease asks again.
const LEASE_POLL: Duration = Duration::from_millis(500);

/// The leases of one transfer on its RP's volumes (`leases/transfer/<volume>.json`), renewed in
/// the background until released.
///
/// Two transfers of one volume at once (consecutive recovery points whose transfers overlap, or
/// two instances protecting the same volume) would each open the chunk index before the other
/// wrote its segment, and store the chunks they share twice. With the lease the second waits,
/// then opens the index the first extended and reads incrementally from the first's map. Leases
/// are taken in volume order, so two transfers never wait on each other. The holder is the job
/// key: a redelivered attempt of the same transfer takes its own lease back at once.
struct VolumeLeases {
    leases: Vec<Lease>,
    /// Another transfer held one of them first: what it did may include this RP.
    waited: bool,
    /// Aborted on drop too: a transfer dropped mid-way (cancelled at the shutdown deadline, or
    /// its future dropped) stops renewing, and its leases run out within [`LEASE_TTL`] instead
    /// of blocking the volume's next transfer in this process for ever.
    renewer: AbortOnDrop,
}

impl VolumeLeases {
    async fn acquire(
        ctx: &VaultContext,
        holder: &str,
        rp: &RecoveryPoint,
        job: &JobContext,
    ) -> Result<Self, StageError> {
        let volumes: std::collections::BTreeSet<&str> =
            rp.volumes.iter().map(|v| v.volume_id.as_str()).collect();
        let mut leases = Vec::with_capacity(volumes.len());
        let mut waited = false;
        for volume in volumes {
            let key = layout::transfer_lease(volume).map_err(StageError::permanent)?;
            let lease = Lease::new(ctx.primary.clone(), key, holder, LEASE_TTL);
            let mut told = false;
            loop {
                match lease.try_acquire().await? {
                    Acquired::Yes => break,
                    Acquired::HeldBy { holder, expires_at } => {
                        waited = true;
                        if !told {
                            tracing::info!(volume, other = %holder, until = %expires_at, "another transfer of this volume is running; waiting for it, so chunks they share are stored once");
                            told = true;
                        }
                        if let Err(e) =
                            job.check_cancelled("waiting for another transfer of the volume")
                        {
                            release_all(&leases).await;
                            return Err(e);
                        }
                        if job.is_shutting_down() {
                            release_all(&leases).await;
                            return Err(StageError::transient(
                                "the worker is shutting down while this transfer waited for another one of the same volume; it runs on redelivery",
                            ));
                        }
                        tokio::time::sleep(LEASE_POLL).await;
                    }
                }
            }
            leases.push(lease);
        }
        let renewing = leases.clone();
        let renewer = AbortOnDrop(tokio::spawn(async move {
            let every = renewing.first().map_or(LEASE_TTL / 3, Lease::renew_every);
            loop {
                tokio::time::sleep(every).await;
                for lease in &renewing {
                    match lease.renew().await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(lease = %lease.key(), "a volume lease ran out and another transfer took it: the two may store some chunks twice (never wrongly)")
                        }
                        Err(e) => {
                            tracing::warn!(lease = %lease.key(), error = %e, "cannot renew a volume lease; trying again")
                        }
                    }
                }
            }
        }));
        Ok(Self {
            leases,
            waited,
            renewer,
        })
    }

    async fn release(self) {
        drop(self.renewer);
        release_all(&self.leases).await;
    }
}

/// Gives `leases` up; one that cannot be released runs out on its own within [`LEASE_TTL`].
async fn release_all(leases: &[Lease]) {
    for lease in leases {
        if let Err(e) = lease.release().await {
            tracing::warn!(lease = %lease.key(), error = %e, "cannot release a volume lease; it runs out on its own");
        }
    }
}

#[cfg(test)]
mod tests {
    use stowage_schemas::domain::CalendarPeriod;
    use stowage_schemas::samples;

    use super::*;

    #[test]
    fn adjacent_pieces_are_read_together_up_to_the_read_size_and_never_across_a_gap() {
        const M: u64 = 1 << 20;
        let pieces = [
            0..M,
            M..2 * M,
            2 * M..3 * M,
            3 * M..4 * M,
            4 * M..5 * M,
            6 * M..6 * M + 4096,
        ];
        let reads: Vec<_> = coalesce(pieces.iter().cloned(), 4 * M).collect();
        assert_eq!(
            reads,
            vec![
                vec![0..M, M..2 * M, 2 * M..3 * M, 3 * M..4 * M],
                vec![4 * M..5 * M],
                vec![6 * M..6 * M + 4096],
            ]
        );
        let one_by_one: Vec<_> = coalesce(pieces.iter().cloned(), 0).collect();
        assert_eq!(one_by_one.len(), pieces.len());
        let small_hint: Vec<_> = coalesce(pieces.iter().cloned(), M / 2).collect();
        assert_eq!(small_hint.len(), pieces.len(), "a piece is never split");
    }

    /// Issue 16, item 4: the skip event's reason names the policy and its rules, and the way out.
    #[test]
    fn a_skip_says_which_policy_and_rules_decided() {
        let ruled = samples::policy();
        let reason = skip_reason(Some(&ruled));
        assert!(
            reason.contains("no vault rule of policy `daily`")
                && reason.contains("first recovery point of its day, year")
                && reason.contains("submit a job.vault-transfer"),
            "{reason}"
        );
        let mut bare = samples::policy_every(
            "ops",
            24,
            jiff::civil::Time::midnight(),
            "UTC",
            7,
            &[(CalendarPeriod::Week, 30)],
        );
        bare.retention.vault.clear();
        let reason = skip_reason(Some(&bare));
        assert!(
            reason.contains("policy `ops` has no vault-tier rule"),
            "{reason}"
        );
        assert!(skip_reason(None).contains("operational tier only"));
    }
}
