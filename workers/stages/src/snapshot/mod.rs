//! snapshot: take a recovery point of a backup instance — hooks, resources, volume snapshots.
//!
//! In order (issue 4 §3):
//!
//! 1. **Pre-hooks**: each `pre` hook of the instance runs in every running pod its namespace
//!    and label selector match, one pod after another, each with the hook's timeout. A failure
//!    (non-zero exit, timeout, exec refused) fails the backup when the hook says `fail`, and is
//!    recorded as a warning when it says `continue`. A hook that matches no pod is a warning.
//! 2. **Collect** the instance's scope ([`stowage_cluster::collect`]) into one object,
//!    `resources/<instance>/<rp>/resources.jsonl`: one collected object per line, as JSON, in
//!    collection order (namespaces, namespaced types, cluster-scoped types). The object is
//!    streamed while collection runs: objects are encoded into batches of about
//!    [`RESOURCE_BATCH_BYTES`], which go through a channel of [`RESOURCE_BATCHES_IN_FLIGHT`]
//!    batches into a streaming create-only write
//!    ([`BlobStore::put_stream_create_only`](stowage_vault::store::BlobStore::put_stream_create_only)),
//!    so a snapshot's memory does not grow with the cluster: a few MiB of batches plus the
//!    store's upload parts, whatever the object's size. The object is created only when
//!    collection finished: if collection fails (or stops for any reason) the write is abandoned
//!    and nothing is stored under the key.
//! 3. **Snapshot volumes**, in parallel ([`ClusterContext::volume_parallelism`]): every
//!    collected PVC bound to a collected PV whose `spec.csi.driver` is the disk provider's
//!    driver; `spec.csi.volumeHandle` names the disk. Each snapshot is named by
//!    [`snapshot_name`] after the instance, the recovery point and the disk (unique across
//!    instances, recovery points and disks, and idempotent by name). Claims that are not
//!    bound, and volumes of other kinds (NFS, host paths, another CSI driver), are skipped
//!    with a warning; the backup still succeeds. The volume id is the disk name (escaped for
//!    the vault's keys), stable across recovery points so vault transfers can be incremental.
//!    With [`SnapshotMode::Csi`] every CSI volume whose driver has a VolumeSnapshotClass is
//!    snapshotted as a `snapshot.storage.k8s.io/v1` VolumeSnapshot of that name in the claim's
//!    namespace, waited for by watch until `readyToUse` (or `status.error`), and recorded with
//!    its content's handle and restore size (`VolumeBackup::csi`); a driver without a class is
//!    skipped with a warning naming the driver and the fix (ARCHITECTURE.md, "CSI
//!    VolumeSnapshots").
//! 4. **Post-hooks**, like pre-hooks. They also run (best effort) when anything after the
//!    pre-hooks failed, so a `fsfreeze -f` is always followed by its thaw.
//! 5. The **report** (`resources/<instance>/<rp>/snapshot-report.json`: counts and warnings;
//!    the RP manifest has no field for them) and then the **RP manifest**, both create-only.
//! 6. Emit `rp.created`.
//!
//! # Redelivery
//!
//! If the manifest exists, nothing is redone: `rp.created` is rebuilt from the manifest and the
//! report. Otherwise the whole job runs again: hooks run again, snapshots by name return the
//! ones an earlier attempt took, and a resources object an earlier attempt stored is kept
//! (create-only) — it was collected at about the same moment as those snapshots. Collection
//! itself still runs to the end (its claims and volumes decide what to snapshot), but once the
//! store has found the object already there, the batches are no longer uploaded.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use stowage_cluster::csi::{self, SnapshotClasses};
use stowage_cluster::{ClusterTarget, CollectError, CollectedObject, collect};
use stowage_disk::DiskId;
use stowage_runtime::{JobContext, Outcome, StageError, StageHandler};
use stowage_schemas::Message;
use stowage_schemas::domain::{
    CsiSnapshot, HookPhase, JobProgress, RecoveryPoint, RpState, Tier, TierState, VolumeBackup,
};
use stowage_schemas::events::RpCreated;
use stowage_schemas::jobs::SnapshotJob;
use stowage_vault::catalog;
use stowage_vault::layout::{self, BlobKey};
use stowage_vault::store::CreateOutcome;
use tokio::sync::mpsc;

use crate::cluster_context::{ClusterContext, SnapshotMode, csi_error, label_value, read_instance};

mod hooks;

use hooks::run_hooks;

/// File name of a recovery point's resources object, under `resources/<instance>/<rp>/`.
pub const RESOURCES_FILE: &str = "resources.jsonl";
/// File name of a recovery point's snapshot report, under `resources/<instance>/<rp>/`.
pub const REPORT_FILE: &str = "snapshot-report.json";
/// Collected objects are encoded into batches of about this many bytes (a batch closes at the
/// first object that reaches it) before they go to the store.
pub const RESOURCE_BATCH_BYTES: usize = 1 << 20;
/// Batches waiting for the store at most; collection waits when they are all taken.
pub const RESOURCE_BATCHES_IN_FLIGHT: usize = 4;

/// Label on a CSI VolumeSnapshot the snapshot stage makes: the backup instance (its name, or
/// `h-` and a hash when it is not a valid label value).
pub const INSTANCE_LABEL: &str = "stowage.io/instance";
/// Label on a CSI VolumeSnapshot the snapshot stage makes: the recovery point (as above).
pub const RECOVERY_POINT_LABEL: &str = "stowage.io/recovery-point";

/// The longest snapshot name [`snapshot_name`] makes: what Azure accepts for a managed-disk
/// snapshot (80 characters; the local provider takes up to 200).
pub const MAX_SNAPSHOT_NAME_LEN: usize = 80;
/// Hex digits of the hash that ends every snapshot name (64 bits).
const SNAPSHOT_NAME_HASH_HEX: usize = 16;

/// The name of the snapshot of `disk` taken for recovery point `rp_id` of `instance`:
/// `<rp>-<disk>` made safe for disk providers (ASCII letters, digits, `.`, `_`, `-`; starting
/// with a letter or digit, no `..`) and cut to fit, then `-` and 16 hex digits of a BLAKE3 hash
/// of the three, each length-prefixed — e.g. `sched-shop-20260102T0630Z-pg-data-1f0c…`. At
/// most [`MAX_SNAPSHOT_NAME_LEN`] characters.
///
/// The readable part is for people (Stowage's own recovery-point ids name the instance); the
/// hash is what makes the name unique: two instances protecting the same disk with recovery
/// points of the same id, ids whose joined text coincides (`a` + `b-c` and `a-b` + `c`) or
/// names cut to the same prefix still get different names. Retention deletes a snapshot only
/// if its name is exactly the one this function gives the recovery point and disk of its own
/// instance's manifest.
pub fn snapshot_name(instance: &str, rp_id: &str, disk: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"stowage snapshot name\0");
    for part in [instance, rp_id, disk] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let hash = hasher.finalize().to_hex();
    let budget = MAX_SNAPSHOT_NAME_LEN - 1 - SNAPSHOT_NAME_HASH_HEX;
    let mut readable = String::with_capacity(budget);
    for c in format!("{rp_id}-{disk}").chars() {
        if readable.len() == budget {
            break;
        }
        let c = if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
            c
        } else {
            '-'
        };
        if readable.is_empty() && !c.is_ascii_alphanumeric() {
            continue;
        }
        readable.push(if c == '.' && readable.ends_with('.') {
            '-'
        } else {
            c
        });
    }
    let readable = readable.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if readable.is_empty() {
        hash[..SNAPSHOT_NAME_HASH_HEX].to_owned()
    } else {
        format!("{readable}-{}", &hash[..SNAPSHOT_NAME_HASH_HEX])
    }
}

/// The snapshot stage, over the clusters it backs up.
#[derive(Clone)]
pub struct SnapshotStage(pub ClusterContext);

impl StageHandler for SnapshotStage {
    type Input = SnapshotJob;

    async fn handle(&self, ctx: JobContext, job: SnapshotJob) -> Result<Outcome, StageError> {
        let created = take_snapshot(&self.0, &job, &ctx).await?;
        Ok(Outcome::done().emit(Message::RpCreated(created)))
    }
}

/// What the snapshot stage records beside the RP manifest: what `rp.created` reports, so a
/// redelivery re-emits the same event, and the warnings, which the manifest has no field for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotReport {
    /// Kubernetes objects in the resources object.
    pub resource_count: u64,
    /// Volumes snapshotted.
    pub volume_count: u32,
    /// Their total size in bytes.
    pub volume_bytes: u64,
    /// What went wrong without failing the backup: skipped volumes, hooks set to `continue`.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// Key of the resources object of one recovery point.
pub fn resources_key(instance: &str, rp_id: &str) -> Result<BlobKey, StageError> {
    layout::resource(instance, rp_id, &[RESOURCES_FILE]).map_err(StageError::permanent)
}

/// Key of the snapshot report of one recovery point.
pub fn report_key(instance: &str, rp_id: &str) -> Result<BlobKey, StageError> {
    layout::resource(instance, rp_id, &[REPORT_FILE]).map_err(StageError::permanent)
}

/// Takes one recovery point (see the module doc) and answers the `rp.created` to emit. A
/// cancelled `run` stops before its volumes are snapshotted (post-hooks still run), and
/// progress counts the volumes snapshotted.
pub async fn take_snapshot(
    ctx: &ClusterContext,
    job: &SnapshotJob,
    run: &JobContext,
) -> Result<RpCreated, StageError> {
    let (instance_name, rp_id) = (job.instance.as_str(), job.recovery_point_id.as_str());
    let resources = resources_key(instance_name, rp_id)?;
    match catalog::read_recovery_point(&ctx.vault, instance_name, rp_id).await {
        Ok(rp) => {
            tracing::info!(
                instance = instance_name,
                rp_id,
                "recovery point already recorded; re-emitting rp.created"
            );
            return rp_created_from(ctx, &rp).await;
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(StageError::from(e)),
    }
    let instance = read_instance(&ctx.vault, instance_name).await?;
    let (cluster_name, cluster) = ctx.instance_cluster(&instance)?;
    tracing::info!(
        instance = instance_name,
        rp_id,
        cluster = cluster_name,
        "snapshot starting"
    );
    let created_at = ctx.now();
    let mut warnings = Vec::new();

    let pre = run_hooks(cluster, &instance.hooks, HookPhase::Pre, &mut warnings).await;
    let main = match pre {
        Ok(()) => {
            collect_and_snapshot(
                ctx,
                run,
                (cluster_name, cluster),
                &instance.scope,
                instance_name,
                rp_id,
                &mut warnings,
            )
            .await
        }
        Err(e) => Err(e),
    };
    let post = run_hooks(cluster, &instance.hooks, HookPhase::Post, &mut warnings).await;
    let (resource_count, volumes) = match (main, post) {
        (Ok(done), Ok(())) => done,
        (Err(e), post) => {
            if let Err(post_error) = post {
                tracing::warn!(error = %post_error, "post-hook failed after the snapshot had failed");
            }
            return Err(e);
        }
        (Ok(_), Err(e)) => return Err(e),
    };

    let report = SnapshotReport {
        resource_count,
        volume_count: u32::try_from(volumes.len()).unwrap_or(u32::MAX),
        volume_bytes: volumes.iter().map(|v| v.size_bytes).sum(),
        warnings,
    };
    let report_bytes = serde_json::to_vec_pretty(&report).expect("a report serializes");
    ctx.vault
        .put_create_only(&report_key(instance_name, rp_id)?, report_bytes)
        .await?;
    let rp = RecoveryPoint {
        id: rp_id.to_owned(),
        instance: instance_name.to_owned(),
        created_at,
        tiers: vec![TierState {
            tier: Tier::Operational,
            state: RpState::Available,
            expires_at: None,
        }],
        resources: resources.to_string(),
        volumes,
    };
    match catalog::write_recovery_point(&ctx.vault, &rp).await? {
        CreateOutcome::Created(_) => {
            tracing::info!(
                instance = instance_name,
                rp_id,
                resources = report.resource_count,
                volumes = report.volume_count,
                warnings = report.warnings.len(),
                "recovery point created"
            );
            Ok(event(&rp, &report))
        }
        // Another attempt of the same job got there first: its manifest is the truth.
        CreateOutcome::AlreadyExists => {
            let stored = catalog::read_recovery_point(&ctx.vault, instance_name, rp_id).await?;
            rp_created_from(ctx, &stored).await
        }
    }
}

fn event(rp: &RecoveryPoint, report: &SnapshotReport) -> RpCreated {
    RpCreated {
        instance: rp.instance.clone(),
        recovery_point_id: rp.id.clone(),
        created_at: rp.created_at,
        resource_count: report.resource_count,
        volume_count: report.volume_count,
        volume_bytes: report.volume_bytes,
        warnings: report.warnings.clone(),
    }
}

/// The snapshot report of a recovery point; `None` if it has none (made by another producer).
pub async fn read_report(
    ctx: &ClusterContext,
    instance: &str,
    rp_id: &str,
) -> Result<Option<SnapshotReport>, StageError> {
    let key = report_key(instance, rp_id)?;
    match ctx.vault.get(&key).await {
        Ok(object) => serde_json::from_slice(&object.bytes)
            .map(Some)
            .map_err(|e| {
                StageError::permanent(format!(
                    "snapshot report {key} is unreadable ({e}); it was damaged or written by an \
                 incompatible version"
                ))
            }),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(StageError::from(e)),
    }
}

async fn rp_created_from(
    ctx: &ClusterContext,
    rp: &RecoveryPoint,
) -> Result<RpCreated, StageError> {
    let report = read_report(ctx, &rp.instance, &rp.id)
        .await?
        .unwrap_or_else(|| SnapshotReport {
            resource_count: 0,
            volume_count: u32::try_from(rp.volumes.len()).unwrap_or(u32::MAX),
            volume_bytes: rp.volumes.iter().map(|v| v.size_bytes).sum(),
            warnings: Vec::new(),
        });
    Ok(event(rp, &report))
}

/// A claim seen during collection, and the volumes it may be bound to.
#[derive(Debug)]
struct Claim {
    namespace: String,
    name: String,
    volume_name: Option<String>,
}

/// Why collection's sink stopped.
#[derive(Debug, thiserror::Error)]
enum SinkError {
    #[error("an object could not be encoded as JSON: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What the collection side sends to the store side of a snapshot's resources object.
enum Batch {
    /// The next bytes of the object.
    Data(Bytes),
    /// Collection finished: everything was sent, the object may be created.
    End,
}

/// The store side's view of a collection that stopped without [`Batch::End`].
#[derive(Debug, thiserror::Error)]
#[error(
    "collection of the instance's resources stopped before the end, so the resources object \
     would be incomplete; the collection error says why"
)]
struct CollectionStopped;

/// The batches of `rx` as a stream of the object's bytes. The stream ends only after
/// [`Batch::End`]; a channel closed without it (collection failed, or its future was dropped)
/// yields an error, so the store never creates a truncated object.
fn batches(
    rx: mpsc::Receiver<Batch>,
) -> impl futures::Stream<Item = Result<Bytes, CollectionStopped>> + Send {
    futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(Batch::Data(bytes)) => Some((Ok(bytes), Some(rx))),
            Some(Batch::End) => None,
            None => Some((Err(CollectionStopped), None)),
        }
    })
}

/// Collects the scope into the resources object, then snapshots the eligible volumes.
/// Returns the number of objects collected and the volumes snapshotted.
async fn collect_and_snapshot(
    ctx: &ClusterContext,
    run: &JobContext,
    (cluster_name, cluster): (&str, &ClusterTarget),
    scope: &stowage_schemas::domain::Scope,
    instance: &str,
    rp_id: &str,
    warnings: &mut Vec<String>,
) -> Result<(u64, Vec<VolumeBackup>), StageError> {
    let key = resources_key(instance, rp_id)?;
    let mut claims: Vec<Claim> = Vec::new();
    // PV name → spec: small (one per collected claim), kept to resolve claims to disks.
    let mut volumes: BTreeMap<String, Value> = BTreeMap::new();
    let (tx, rx) = mpsc::channel::<Batch>(RESOURCE_BATCHES_IN_FLIGHT);
    // Collection and the store's write run side by side in this task; the channel's bound is
    // what keeps collection from running ahead of the upload.
    let collecting = async {
        let tx = tx;
        let mut batch: Vec<u8> = Vec::new();
        let summary = collect(&cluster.client, scope, |object| {
            let encoded = encode(&object, &mut batch, &mut claims, &mut volumes);
            let tx = tx.clone();
            async move {
                if let Some(full) = encoded? {
                    // A closed channel means the store side is done early (the object already
                    // exists, or the write failed and will say so): keep collecting for the
                    // claims and volumes, without the bytes.
                    let _ = tx.send(Batch::Data(full)).await;
                }
                Ok::<(), SinkError>(())
            }
        })
        .await?;
        if !batch.is_empty() {
            let _ = tx.send(Batch::Data(Bytes::from(batch))).await;
        }
        let _ = tx.send(Batch::End).await;
        Ok::<_, CollectError>(summary)
    };
    let writing = ctx.vault.put_stream_create_only(&key, batches(rx));
    let (collected, written) = tokio::join!(collecting, writing);
    let summary = collected.map_err(|e| collect_error(e, instance))?;
    let resource_count = summary.objects() as u64;
    match written? {
        CreateOutcome::Created(_) => {}
        CreateOutcome::AlreadyExists => tracing::info!(
            %key,
            "an earlier attempt stored the resources object; keeping it"
        ),
    }

    // Which claims can be snapshotted, and how.
    let driver = ctx.disks.driver().to_owned();
    let mode = ctx.snapshot_mode;
    let mut classes: Option<SnapshotClasses> = None;
    let mut eligible = Vec::new();
    for claim in claims {
        let who = format!("PVC {}/{}", claim.namespace, claim.name);
        let Some(pv) = claim.volume_name.clone() else {
            warnings.push(format!(
                "{who} is not bound to a volume: there is no data to back up; only the claim was backed up"
            ));
            continue;
        };
        let Some(spec) = volumes.get(&pv) else {
            warnings.push(format!(
                "{who} is bound to PV {pv}, which the cluster did not list: its data was not \
                 backed up; check that the PV exists"
            ));
            continue;
        };
        match (mode, volume_kind(spec)) {
            (SnapshotMode::Disk, VolumeKind::Csi { driver: d, handle }) if d == driver => {
                eligible.push((claim, pv, handle, How::Disk));
            }
            (SnapshotMode::Csi, VolumeKind::Csi { driver: d, handle }) => {
                if classes.is_none() {
                    classes = Some(
                        SnapshotClasses::load(&cluster.client)
                            .await
                            .map_err(csi_error)?,
                    );
                }
                let loaded = classes.as_ref().expect("just loaded");
                match loaded.choose(&d) {
                    Some(choice) => {
                        if let Some(warning) = choice.warning {
                            warnings.push(warning);
                        }
                        eligible.push((
                            claim,
                            pv,
                            handle,
                            How::Csi {
                                driver: d,
                                class: choice.class.name,
                            },
                        ));
                    }
                    None => warnings.push(csi::no_class_warning(
                        &format!("{who} (PV {pv})"),
                        &d,
                        loaded.crds_missing,
                    )),
                }
            }
            (SnapshotMode::Disk, VolumeKind::Csi { driver: d, .. }) => warnings.push(format!(
                "{who} (PV {pv}) is a CSI volume of driver {d}, which this worker's disk provider \
                 ({driver}) does not handle: its data was not backed up; only the claim was (a \
                 worker with --disk-provider csi snapshots it if the driver has a \
                 VolumeSnapshotClass)"
            )),
            (_, VolumeKind::Other(kind)) => warnings.push(format!(
                "{who} (PV {pv}) is a {kind} volume, not a CSI volume: its data was not backed \
                 up; only the claim was"
            )),
        }
    }
    // A class chosen among several, said once per driver.
    warnings.dedup();
    for warning in warnings.iter() {
        tracing::warn!(instance, rp_id, "{warning}");
    }

    run.check_cancelled("the snapshot (resources collected, no volume snapshotted)")?;
    let items_total = eligible.len() as u64;
    let progress = |items_done: u64, bytes_done: u64| JobProgress {
        bytes_done,
        bytes_total: None,
        items_done,
        items_total: Some(items_total),
    };
    run.report_progress(progress(0, 0));
    let (mut items_done, mut bytes_done) = (0u64, 0u64);
    let disks = ctx.disks.clone();
    let client = cluster.client.clone();
    let ready_timeout = ctx.csi_ready_timeout;
    let mut snapshots = futures::stream::iter(eligible)
        .map(|(claim, pv, disk, how)| {
            let disks = disks.clone();
            let client = client.clone();
            let name = snapshot_name(instance, rp_id, &disk);
            async move {
                let backup = match how {
                    How::Disk => {
                        let owner = stowage_disk::SnapshotOwner {
                            instance,
                            recovery_point: rp_id,
                        };
                        let info = disks.snapshot_for(&DiskId(disk.clone()), &name, owner).await.map_err(|e| {
                            let message = format!(
                                "snapshotting the volume of PVC {}/{} (PV {pv}, disk {disk}) failed: {e}",
                                claim.namespace, claim.name
                            );
                            if e.is_transient() {
                                StageError::transient(message)
                            } else {
                                StageError::permanent(message)
                            }
                        })?;
                        VolumeBackup {
                            volume_id: layout::escape_component(&disk),
                            namespace: claim.namespace,
                            pvc: claim.name,
                            size_bytes: info.size,
                            snapshot_id: info.id.0,
                            vault_version: None,
                            csi: None,
                        }
                    }
                    How::Csi { driver, class } => {
                        let labels = BTreeMap::from([
                            (INSTANCE_LABEL.to_owned(), label_value(instance)),
                            (RECOVERY_POINT_LABEL.to_owned(), label_value(rp_id)),
                        ]);
                        let request = csi::SnapshotRequest {
                            namespace: &claim.namespace,
                            name: &name,
                            claim: &claim.name,
                            class: &class,
                            labels,
                        };
                        csi::create_volume_snapshot(&client, &request)
                            .await
                            .map_err(csi_error)?;
                        let ready =
                            csi::wait_ready(&client, &claim.namespace, &name, &driver, ready_timeout)
                                .await
                                .map_err(csi_error)?;
                        VolumeBackup {
                            volume_id: layout::escape_component(&disk),
                            namespace: claim.namespace,
                            pvc: claim.name,
                            size_bytes: ready.restore_size,
                            snapshot_id: ready.handle.clone(),
                            vault_version: None,
                            csi: Some(CsiSnapshot {
                                cluster: cluster_name.to_owned(),
                                driver,
                                class,
                                name,
                                content: ready.content,
                                handle: ready.handle,
                                restore_size: ready.restore_size,
                            }),
                        }
                    }
                };
                tracing::info!(disk, snapshot = %backup.snapshot_id, bytes = backup.size_bytes, csi = backup.csi.is_some(), "volume snapshotted");
                Ok::<_, StageError>(backup)
            }
        })
        .buffer_unordered(ctx.volume_parallelism.max(1));
    let mut backups: Vec<VolumeBackup> = Vec::with_capacity(items_total as usize);
    while let Some(backup) = snapshots.next().await {
        let backup = backup?;
        items_done += 1;
        bytes_done += backup.size_bytes;
        run.report_progress(progress(items_done, bytes_done));
        backups.push(backup);
    }
    backups.sort_by(|a, b| (&a.namespace, &a.pvc).cmp(&(&b.namespace, &b.pvc)));
    Ok((resource_count, backups))
}

/// Encodes one collected object as a line of `batch`, and notes it if it is a claim or a
/// volume. Answers the batch to send once it reached [`RESOURCE_BATCH_BYTES`].
fn encode(
    object: &CollectedObject,
    batch: &mut Vec<u8>,
    claims: &mut Vec<Claim>,
    volumes: &mut BTreeMap<String, Value>,
) -> Result<Option<Bytes>, SinkError> {
    serde_json::to_writer(&mut *batch, &object.object)?;
    batch.push(b'\n');
    let core = object.resource.group.is_empty();
    match (core, object.resource.kind.as_str()) {
        (true, "PersistentVolumeClaim") => claims.push(Claim {
            namespace: object.namespace.clone().unwrap_or_default(),
            name: object.name.clone(),
            volume_name: object
                .object
                .pointer("/spec/volumeName")
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
        }),
        (true, "PersistentVolume") => {
            volumes.insert(
                object.name.clone(),
                object.object.get("spec").cloned().unwrap_or(Value::Null),
            );
        }
        _ => {}
    }
    Ok((batch.len() >= RESOURCE_BATCH_BYTES).then(|| Bytes::from(std::mem::take(batch))))
}

fn collect_error(error: CollectError, instance: &str) -> StageError {
    let message = format!("collecting the resources of instance {instance} failed: {error}");
    if let CollectError::Discovery(source) | CollectError::List { source, .. } = &error
        && let Some(denied) = stowage_cluster::AccessDenied::from_error(source)
    {
        return crate::cluster_context::access_denied(&message, &denied);
    }
    if error.is_transient() {
        StageError::transient(message)
    } else {
        StageError::permanent(format!("{message}; fix the instance's scope"))
    }
}

/// How one volume is snapshotted.
enum How {
    /// Through the disk provider.
    Disk,
    /// Through a CSI VolumeSnapshot of this class.
    Csi { driver: String, class: String },
}

enum VolumeKind {
    Csi { driver: String, handle: String },
    Other(String),
}

/// What backs a PV, from its spec: CSI (driver and handle) or the name of its volume source.
fn volume_kind(spec: &Value) -> VolumeKind {
    if let Some(csi) = spec.get("csi") {
        let text = |f: &str| {
            csi.get(f)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        return VolumeKind::Csi {
            driver: text("driver"),
            handle: text("volumeHandle"),
        };
    }
    const NOT_SOURCES: [&str; 9] = [
        "accessModes",
        "capacity",
        "claimRef",
        "mountOptions",
        "nodeAffinity",
        "persistentVolumeReclaimPolicy",
        "storageClassName",
        "volumeMode",
        "volumeAttributesClassName",
    ];
    let source = spec
        .as_object()
        .and_then(|o| {
            o.keys()
                .find(|k| !NOT_SOURCES.contains(&k.as_str()))
                .cloned()
        })
        .unwrap_or_else(|| "unknown".to_owned());
    VolumeKind::Other(source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What every provider (the local one and Azure managed-disk snapshots) accepts.
    fn acceptable(name: &str) -> bool {
        let bytes = name.as_bytes();
        (1..=MAX_SNAPSHOT_NAME_LEN).contains(&name.len())
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && !name.contains("..")
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    }

    #[test]
    fn snapshot_names_are_unique_per_instance_and_fit_every_provider() {
        let name = snapshot_name("shop", "sched-shop-20260102T0630Z", "pg-data");
        assert!(
            name.starts_with("sched-shop-20260102T0630Z-pg-data-"),
            "{name}"
        );
        assert_eq!(name.len(), "sched-shop-20260102T0630Z-pg-data-".len() + 16);
        // Deterministic: a redelivered job asks for the same snapshot.
        assert_eq!(
            name,
            snapshot_name("shop", "sched-shop-20260102T0630Z", "pg-data")
        );
        let long = "a".repeat(stowage_schemas::id::MAX_ID_LEN);
        let longest = "b".repeat(stowage_schemas::id::MAX_INSTANCE_NAME_LEN);
        let cases = [
            // Two instances, one recovery-point id, one disk: the collision of issue 12.
            ("shop", "rp-1", "pg"),
            ("blog", "rp-1", "pg"),
            // Joined texts that coincide.
            ("a", "b-c", "d"),
            ("a", "b", "c-d"),
            ("a-b", "c", "d"),
            // Long ids cut to one readable prefix.
            (longest.as_str(), long.as_str(), "x"),
            (longest.as_str(), long.as_str(), "y"),
            ("c", long.as_str(), long.as_str()),
            // Characters providers refuse, and `..`.
            ("c", "rp..1", "disk/with:odd chars"),
            ("c", ".hidden", "-"),
        ];
        let mut seen = std::collections::HashSet::new();
        for (instance, rp, disk) in cases {
            let name = snapshot_name(instance, rp, disk);
            assert!(acceptable(&name), "{instance} {rp} {disk}: {name:?}");
            assert!(
                seen.insert(name.clone()),
                "{instance} {rp} {disk}: {name} twice"
            );
        }
    }

    #[tokio::test]
    async fn batches_end_only_after_the_end_marker() {
        let (tx, rx) = mpsc::channel(2);
        let reader = tokio::spawn(batches(rx).collect::<Vec<_>>());
        tx.send(Batch::Data(Bytes::from_static(b"a\n")))
            .await
            .unwrap();
        tx.send(Batch::End).await.unwrap();
        let read = reader.await.unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(&read[0].as_ref().unwrap()[..], b"a\n");

        // A collection that stops without the marker (an error, a dropped future) must not
        // look like the whole object.
        let (tx, rx) = mpsc::channel(2);
        let reader = tokio::spawn(batches(rx).collect::<Vec<_>>());
        tx.send(Batch::Data(Bytes::from_static(b"a\n")))
            .await
            .unwrap();
        drop(tx);
        let read = reader.await.unwrap();
        assert_eq!(read.len(), 2);
        assert!(read[1].is_err());
    }

    #[tokio::test]
    async fn an_unfinished_collection_stores_no_resources_object() {
        let store = stowage_vault::store::BlobStore::in_memory()
            .with_key(&stowage_vault::crypto::VaultKey::generate().unwrap());
        let key = resources_key("web", "rp-1").unwrap();
        let (tx, rx) = mpsc::channel(RESOURCE_BATCHES_IN_FLIGHT);
        let writing = store.put_stream_create_only(&key, batches(rx));
        let collecting = async move {
            // More than one upload part, then the collection fails.
            for _ in 0..(3 * stowage_vault::store::STREAM_PART_BYTES / RESOURCE_BATCH_BYTES) {
                let batch = Bytes::from(vec![b'x'; RESOURCE_BATCH_BYTES]);
                tx.send(Batch::Data(batch)).await.unwrap();
            }
        };
        let ((), written) = tokio::join!(collecting, writing);
        let error = written.unwrap_err();
        assert!(
            error.to_string().contains("stopped before the end"),
            "{error}"
        );
        assert!(store.head(&key).await.unwrap_err().is_not_found());
    }

    #[test]
    fn volume_kinds() {
        let csi =
            json!({"capacity": {"storage": "1Gi"}, "csi": {"driver": "d", "volumeHandle": "h"}});
        assert!(
            matches!(volume_kind(&csi), VolumeKind::Csi { driver, handle } if driver == "d" && handle == "h")
        );
        let nfs = json!({"capacity": {}, "accessModes": [], "nfs": {"server": "s", "path": "/"}});
        assert!(matches!(volume_kind(&nfs), VolumeKind::Other(k) if k == "nfs"));
    }
}
