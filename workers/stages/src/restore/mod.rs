//! restore: apply a recovery point to a cluster.
//!
//! # Sources
//!
//! - `job.restore` from the **operational** tier: the RP manifest (`catalog/…`) gives the
//!   resources object and the volume snapshots; a volume held as a CSI VolumeSnapshot is
//!   restored as a new claim with that snapshot as its `dataSource` (pre-bound into the target
//!   namespace when the mapping moves it), for the cluster's CSI driver to provision; each
//!   other restored volume gets a new disk,
//!   `restore-<restore-id>-<volume-id>`, filled by streaming the snapshot's allocated ranges
//!   ([`ClusterContext::copy_piece_bytes`](crate::ClusterContext::copy_piece_bytes) per read) into `create_disk_from_stream`, several
//!   volumes at once ([`ClusterContext::volume_parallelism`](crate::ClusterContext::volume_parallelism)).
//! - `event.restore.hydrated` (or a `job.restore` carrying `staging`): the resources come from
//!   the staged copy (in the vault, or its secondary location) and each volume's data is the
//!   staging disk hydration made — a new disk already, which the restored volume adopts.
//!
//! # Order
//!
//! The resources object is sealed (`stowage_vault::seal`), and a first pass authenticates all
//! of it, so a damaged, truncated or swapped object fails the restore before anything is
//! applied. A second pass builds the dependency graph ([`graph`]: CRD → its custom
//! resources, Namespace → what lives in it, StorageClass → claims, the ServiceAccounts,
//! ConfigMaps, Secrets and PVCs a pod template references → the workload, Role → binding,
//! owner → owned; admission webhooks and APIServices last) and cuts it into waves. Then each
//! wave re-reads the object by ranges and applies its objects, so memory holds one small
//! entry per object, not the objects (the PVs and the claims that get new volumes are held,
//! one small entry per volume). After a wave the restore waits for the CRDs it created to be
//! `Established` (and rediscovers the API) and for the claims it bound to new volumes to be
//! `Bound` when something mounts them (a warning when one is late). A cycle is broken at its
//! weakest edge, with a warning naming its objects.
//!
//! # Objects
//!
//! - **Namespaces**: `options.namespaces` (backed-up names) limits what is restored;
//!   `options.namespace_mapping` renames, for namespaced objects, the `Namespace` objects
//!   themselves, PVC claim references and RBAC subjects.
//! - **Owner references** are dropped (they name uids of the source cluster; the garbage
//!   collector would delete the object). Objects a controller owns (pods, replica sets, jobs,
//!   controller revisions… with a `controller: true` owner) are not restored: their
//!   controller, restored itself, recreates them.
//! - **Existing objects**: `skip` leaves them as they are (what is missing is still created);
//!   `patch` merge-patches them to the backup (an object that already matches is skipped). A
//!   request the target refuses (422, 403, …) is a **conflict**: recorded in the plan and the
//!   warnings, and the restore goes on.
//! - **Volumes**: the source PVs are never applied (they point at the source disks). Each
//!   restored claim gets a new PV, `stowage-<hash>` (stable per restore and claim), on its new
//!   disk, with the claim reference set to the (mapped) claim; the claim's `volumeName` points
//!   at it. A claim whose data is not restored (`include_volumes: false`, or its volume was not
//!   backed up) is created without `volumeName`, for the cluster to provision. An existing
//!   claim is never given a new disk; under `patch` only its labels and annotations change.
//! - **Dry run**: every decision is made (reads only) and returned as the plan; nothing is
//!   created, patched or written, and no disk is made.
//!
//! # Redelivery
//!
//! A finished restore writes `staging/<restore-id>/completed.json` (the `restore.completed`
//! event) create-only, then releases its staging ([`crate::staging::release`]: the staged
//! resources object and the staging disks it did not adopt); a redelivered message finds the
//! record and re-emits it. A restore interrupted earlier runs again: disks are filled
//! again by name, and what the first attempt created now exists (and counts as skipped or
//! patched).

//!
//! # Files
//!
//! [`graph`] (the order), [`objects`] (which objects, changed how, applied how), [`volumes`]
//! (new PVs on new disks), [`plan`] (the plan and report), `reader` (the resources object,
//! one object at a time).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use stowage_cluster::apply::{group_version, name_of};
use stowage_disk::SnapshotId;
use stowage_runtime::{JobContext, JobOrEvent, Outcome, StageError, StageHandler};
use stowage_schemas::Message;
use stowage_schemas::domain::{JobProgress, RecoveryPoint, Tier};
use stowage_schemas::events::{RestoreCompleted, RestoreHydrated};
use stowage_schemas::jobs::{RestoreJob, RestoreOptions, Staging};
use stowage_vault::catalog;
use stowage_vault::layout::{self, BlobKey};
use stowage_vault::store::BlobStore;

use crate::cluster_context::{ClusterContext, read_instance_opt};

pub mod graph;
pub mod objects;
pub mod plan;
mod reader;
pub mod volumes;

use graph::GraphBuilder;
use objects::{Position, Run, controller_owner, discover};
pub use plan::{PlanAction, PlanEntry, RestoreReport};
use reader::ObjectReader;
use volumes::VolumeOrigin;
pub use volumes::restored_pv_name;

/// File name of the completion record under `staging/<restore-id>/`.
pub const COMPLETED_FILE: &str = "completed.json";
/// Annotation on a restored PV: the restore that made it.
pub const RESTORE_ID_ANNOTATION: &str = "stowage.io/restore-id";
/// Label on the VolumeSnapshotContent and VolumeSnapshot a restore pre-binds to a CSI snapshot
/// handle in a target namespace: the restore (its id, or `h-` and a hash).
pub const RESTORE_ID_LABEL: &str = "stowage.io/restore-id";
/// Annotation on a restored PV: the PV it replaces in the source cluster.
pub const SOURCE_VOLUME_ANNOTATION: &str = "stowage.io/source-volume";

/// The restore stage, over the clusters it restores into.
#[derive(Clone)]
pub struct RestoreStage(pub ClusterContext);

impl StageHandler for RestoreStage {
    type Input = JobOrEvent<RestoreJob, RestoreHydrated>;

    async fn handle(&self, ctx: JobContext, input: Self::Input) -> Result<Outcome, StageError> {
        let request = match &input {
            JobOrEvent::Job(job) => RestoreRequest::from_job(job)?,
            JobOrEvent::Event(hydrated) => RestoreRequest::from_hydrated(hydrated),
        };
        let completed = self.run(&ctx, &request).await?;
        Ok(Outcome::done().emit(Message::RestoreCompleted(completed)))
    }
}

/// Where a restore's data comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum RestoreSource {
    /// The operational tier: the RP's snapshots and its resources object.
    Operational,
    /// A dry run's plan of a restore from `tier` before anything is staged (`stowage restore
    /// create --dry-run`): the resources come from the tier's own copy and each volume is
    /// planned onto the disk its restore would make — the disk filled from the operational
    /// snapshot, or the staging disk hydration would make. Refused outside a dry run.
    Planned {
        /// The tier the restore would read.
        tier: Tier,
    },
    /// A staging area a hydration prepared from `tier`.
    Staged {
        /// The tier hydrated from.
        tier: Tier,
        /// The staging area.
        staging: Staging,
    },
}

/// One restore to run.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreRequest {
    /// Id of the restore.
    pub restore_id: String,
    /// The backup instance.
    pub instance: String,
    /// The recovery point.
    pub recovery_point_id: String,
    /// Where the data comes from.
    pub source: RestoreSource,
    /// How to apply it.
    pub options: RestoreOptions,
}

impl RestoreRequest {
    /// From a `job.restore`: staged when it carries `staging`, else from the operational tier
    /// (a vault or secondary source without staging is refused: hydrate first).
    pub fn from_job(job: &RestoreJob) -> Result<Self, StageError> {
        let source = match (&job.staging, job.source_tier) {
            (Some(staging), tier) => RestoreSource::Staged {
                tier,
                staging: staging.clone(),
            },
            (None, Tier::Operational) => RestoreSource::Operational,
            (None, tier) => {
                return Err(StageError::permanent(format!(
                    "restore {} reads from the {tier:?} tier but carries no staging area; submit \
                     a job.restore-hydration for it (its restore.hydrated event starts the \
                     restore), or restore from the operational tier",
                    job.restore_id
                )));
            }
        };
        Ok(Self {
            restore_id: job.restore_id.clone(),
            instance: job.instance.clone(),
            recovery_point_id: job.recovery_point_id.clone(),
            source,
            options: job.options.clone(),
        })
    }

    /// From an `event.restore.hydrated`.
    pub fn from_hydrated(event: &RestoreHydrated) -> Self {
        Self {
            restore_id: event.restore_id.clone(),
            instance: event.instance.clone(),
            recovery_point_id: event.recovery_point_id.clone(),
            source: RestoreSource::Staged {
                tier: event.tier,
                staging: event.staging.clone(),
            },
            options: event.options.clone(),
        }
    }
}

/// Key of the completion record of a restore.
pub fn completed_key(restore_id: &str) -> Result<BlobKey, StageError> {
    layout::staging(restore_id, COMPLETED_FILE).map_err(StageError::permanent)
}

/// Runs a restore and answers its `restore.completed`, reusing the completion record of an
/// earlier attempt (see "Redelivery" in the module doc). A finished restore writes the
/// record (unless a dry run) and releases its staging: the staged resources object and the
/// staging disks it did not adopt (see [`crate::staging`]).
impl RestoreStage {
    /// Runs `request` (stopping between resource groups once `job` is cancelled, reporting the
    /// objects considered as progress) and answers its `restore.completed`.
    pub async fn run(
        &self,
        job: &JobContext,
        request: &RestoreRequest,
    ) -> Result<RestoreCompleted, StageError> {
        let ctx = &self.0;
        let record = completed_key(&request.restore_id)?;
        if !request.options.dry_run {
            match ctx.vault.get(&record).await {
                Ok(object) => {
                    if let Ok(done) = serde_json::from_slice::<RestoreCompleted>(&object.bytes) {
                        tracing::info!(restore_id = %request.restore_id, "restore already completed; re-emitting");
                        return Ok(done);
                    }
                    tracing::warn!(%record, "completion record unreadable; restoring again");
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(StageError::from(e)),
            }
        }
        let report = restore(ctx, request, job).await?;
        for entry in &report.plan {
            tracing::info!(restore_id = %request.restore_id, dry_run = report.dry_run, "{entry}");
        }
        let completed = report.completed_event(request);
        if !report.dry_run {
            let bytes = serde_json::to_vec_pretty(&completed).expect("an event serializes");
            ctx.vault.put_create_only(&record, bytes).await?;
        }
        if let RestoreSource::Staged { staging, .. } = &request.source {
            let store = staging_store(ctx, staging)?;
            let released = crate::staging::release(
                store,
                ctx.disks.as_ref(),
                &request.restore_id,
                staging,
                &report.adopted_disks,
            )
            .await;
            tracing::info!(restore_id = %request.restore_id, objects_deleted = released.objects_deleted, disks_deleted = released.disks_deleted, disks_adopted = released.disks_kept, disks_refused = released.disks_refused, "staging released");
        }
        Ok(completed)
    }
}

/// A `staging/<restore-id>/<file>` key; `None` for anything else (never delete elsewhere).
fn staged_key(text: &str) -> Option<BlobKey> {
    let parts: Vec<&str> = text.split('/').collect();
    match parts.as_slice() {
        [layout::STAGING, restore, file] => layout::staging(restore, file).ok(),
        _ => None,
    }
}

fn staging_store<'a>(
    ctx: &'a ClusterContext,
    staging: &Staging,
) -> Result<&'a BlobStore, StageError> {
    match staging.location.as_str() {
        "vault" => Ok(&ctx.vault),
        "secondary" => ctx.secondary.as_ref().ok_or_else(|| {
            StageError::permanent(
                "the staging area is in the vault's secondary location, which this worker has no \
                 access to; configure the secondary storage on the restore worker",
            )
        }),
        other => Err(StageError::permanent(format!(
            "unknown staging location {other:?}: expected \"vault\" or \"secondary\"; the \
             restore.hydrated event was made by an incompatible producer"
        ))),
    }
}

/// Restores a recovery point (see the module doc), checking `job` for cancellation between
/// resource groups, and reports what was done (or, in a dry run, would be). Makes no completion
/// record and releases no staging; [`RestoreStage::run`] does.
pub async fn restore(
    ctx: &ClusterContext,
    request: &RestoreRequest,
    job: &JobContext,
) -> Result<RestoreReport, StageError> {
    let options = &request.options;
    let (cluster_name, cluster) = match &options.target_cluster {
        Some(name) => ctx.cluster(name)?,
        None => match read_instance_opt(&ctx.vault, &request.instance).await? {
            Some(instance) => ctx.instance_cluster(&instance)?,
            None => ctx.cluster(ctx.default_cluster())?,
        },
    };
    let mut warnings = Vec::new();
    let (store, resources, rp) = match &request.source {
        RestoreSource::Operational => {
            let rp = read_rp(&ctx.vault, request).await?;
            let deleted = stowage_vault::catalog::soft_delete::deleted(
                &ctx.vault,
                &request.instance,
                &request.recovery_point_id,
            )
            .await?;
            if let Some(deleted) = deleted {
                return Err(StageError::permanent(deleted.restore_refusal()));
            }
            let key = layout::parse_resource_key(&rp.resources).map_err(StageError::permanent)?;
            (&ctx.vault, key, rp)
        }
        RestoreSource::Planned { tier } => {
            if !options.dry_run {
                return Err(StageError::permanent(format!(
                    "restore {} is a plan (source `planned`) but not a dry run; a restore that \
                     applies reads the operational tier or a staging area hydration made",
                    request.restore_id
                )));
            }
            let store = match tier {
                Tier::Secondary => ctx.secondary.as_ref().ok_or_else(|| {
                    StageError::permanent(
                        "planning a restore from the secondary tier needs the vault's secondary \
                         storage: give --secondary",
                    )
                })?,
                _ => &ctx.vault,
            };
            let rp = read_rp(&ctx.vault, request).await?;
            if let Some(deleted) = stowage_vault::catalog::soft_delete::deleted(
                &ctx.vault,
                &request.instance,
                &request.recovery_point_id,
            )
            .await?
            {
                return Err(StageError::permanent(deleted.restore_refusal()));
            }
            let resources = match tier {
                Tier::Operational => rp.resources.clone(),
                tier => {
                    catalog::read_tier_manifest(
                        store,
                        &request.instance,
                        &request.recovery_point_id,
                        *tier,
                    )
                    .await?
                    .ok_or_else(|| {
                        StageError::permanent(format!(
                            "recovery point {} is not in the {tier:?} tier; `stowage rp list` \
                                 shows the tiers each recovery point is in",
                            request.recovery_point_id
                        ))
                    })?
                    .resources
                }
            };
            let key = layout::parse_resource_key(&resources).map_err(StageError::permanent)?;
            (store, key, rp)
        }
        RestoreSource::Staged { staging, .. } => {
            let store = staging_store(ctx, staging)?;
            let key = match staged_key(&staging.resources) {
                Some(key) => key,
                None => {
                    layout::parse_resource_key(&staging.resources).map_err(StageError::permanent)?
                }
            };
            let rp = match read_rp(&ctx.vault, request).await {
                Ok(rp) => rp,
                Err(e) if !std::ptr::eq(store, &ctx.vault) => {
                    tracing::info!(error = %e, "RP manifest not readable from the primary; trying the secondary");
                    read_rp(store, request).await?
                }
                Err(e) => return Err(e),
            };
            (store, key, rp)
        }
    };

    // The vault's own account of what this restore's hydration made: only those staging disks
    // are used (and later released); any other disk a message names is refused and reported.
    let mut refused = BTreeSet::new();
    if let RestoreSource::Staged { staging, .. } = &request.source
        && !staging.disks.is_empty()
    {
        let hydration = crate::staging::read_record(store, &request.restore_id).await?;
        for disk in &staging.disks {
            if let Some(reason) =
                crate::staging::disk_refusal(hydration.as_ref(), &request.restore_id, &disk.disk_id)
            {
                tracing::warn!(restore_id = %request.restore_id, disk = %disk.disk_id, "{reason}");
                warnings.push(reason);
                refused.insert(disk.disk_id.clone());
            }
        }
    }

    // (backed-up namespace, claim) → where its data comes from.
    let mut origins: BTreeMap<(String, String), (String, VolumeOrigin)> = BTreeMap::new();
    if options.include_volumes {
        for volume in &rp.volumes {
            let origin = match &request.source {
                RestoreSource::Planned { tier } if *tier != Tier::Operational => {
                    VolumeOrigin::Disk {
                        disk: crate::restore_hydration::staging_disk_name(
                            &request.restore_id,
                            &volume.volume_id,
                        ),
                    }
                }
                RestoreSource::Operational | RestoreSource::Planned { .. } => match &volume.csi {
                    Some(csi) => VolumeOrigin::Csi(csi.clone()),
                    None => VolumeOrigin::Snapshot {
                        snapshot: SnapshotId(volume.snapshot_id.clone()),
                        size: volume.size_bytes,
                    },
                },
                RestoreSource::Staged { staging, .. } => {
                    match staging
                        .disks
                        .iter()
                        .find(|d| d.volume_id == volume.volume_id)
                    {
                        Some(disk) if refused.contains(&disk.disk_id) => {
                            warnings.push(format!(
                                "the data of PVC {}/{} is not restored: its staging disk {} was \
                                 refused (above)",
                                volume.namespace, volume.pvc, disk.disk_id
                            ));
                            continue;
                        }
                        Some(disk) => VolumeOrigin::Disk {
                            disk: disk.disk_id.clone(),
                        },
                        None => {
                            warnings.push(format!(
                                "volume {} of PVC {}/{} has no staging disk: the hydration did \
                                 not stage it, so its data is not restored",
                                volume.volume_id, volume.namespace, volume.pvc
                            ));
                            continue;
                        }
                    }
                }
            };
            origins.insert(
                (volume.namespace.clone(), volume.pvc.clone()),
                (volume.volume_id.clone(), origin),
            );
        }
    }

    let mut run = Run {
        ctx,
        request,
        options,
        api: discover(cluster.client.clone()).await?,
        report: RestoreReport {
            target_cluster: cluster_name.to_owned(),
            dry_run: options.dry_run,
            plan: Vec::new(),
            waves: 0,
            volumes_restored: 0,
            warnings,
            adopted_disks: Vec::new(),
        },
        planned_crds: BTreeSet::new(),
        position: Position::default(),
    };

    // Every segment of the resources object is authenticated before anything is applied.
    reader::authenticate(store, &resources).await?;
    // One pass for the order (and the source PVs new volumes are modelled on), then one per
    // wave: the graph holds a small entry per object, never the objects.
    let mut builder = GraphBuilder::new();
    let mut source_pvs: BTreeMap<String, Value> = BTreeMap::new();
    let mut reader = ObjectReader::open(store, &resources).await?;
    while let Some(object) = reader.next().await? {
        if is_core(&object, "PersistentVolume") {
            // Never applied: each restored claim gets a new one.
            source_pvs.insert(name_of(&object), object);
        } else if run.selected(&object) {
            builder.add(&object, controller_owner(&object).is_none());
        }
    }
    let graph = builder.finish();
    run.report.waves = graph.waves();
    run.report.warnings.extend(graph.warnings().iter().cloned());
    tracing::info!(restore_id = %request.restore_id, objects = graph.len(), waves = graph.waves(), "restore order");

    let mut done = vec![false; graph.len()];
    for wave in 0..graph.waves() {
        job.check_cancelled("the restore")?;
        job.report_progress(JobProgress {
            bytes_done: 0,
            bytes_total: None,
            // Objects of the graph handled so far (the PVs a restore makes are not counted).
            items_done: done.iter().filter(|&&d| d).count() as u64,
            items_total: Some(graph.len() as u64),
        });
        tracing::debug!(wave, waves = graph.waves(), "restoring a wave");
        let mut reader = ObjectReader::open(store, &resources).await?;
        let (mut crds, mut claims) = (Vec::new(), Vec::new());
        while let Some(object) = reader.next().await? {
            let Some(node) = graph.node_of(&object) else {
                continue;
            };
            if graph.wave(node) != wave || std::mem::replace(&mut done[node.index()], true) {
                continue;
            }
            run.position = Position {
                wave,
                after: graph
                    .dependencies(node)
                    .into_iter()
                    .map(|key| run.describe_key(key))
                    .collect(),
                has_dependents: graph.has_dependents(node),
            };
            if is_core(&object, "PersistentVolumeClaim") {
                claims.push((object, run.position.clone()));
                continue;
            }
            let Some(prepared) = run.prepare(object) else {
                continue;
            };
            let (group, _) = group_version(&prepared);
            if group == "apiextensions.k8s.io" && prepared["kind"] == "CustomResourceDefinition" {
                crds.push(name_of(&prepared));
            }
            run.apply(prepared).await?;
        }
        let to_bind = run.restore_claims(claims, &source_pvs, &origins).await?;
        if options.dry_run {
            continue;
        }
        // Readiness where it matters before the next wave: CRDs Established (and the API
        // rediscovered), claims bound to their new volumes when something mounts them.
        if !crds.is_empty() {
            run.wait_established(&crds).await?;
        }
        if !to_bind.is_empty() {
            run.wait_bound(&to_bind).await?;
        }
    }
    Ok(run.report)
}

fn is_core(object: &Value, kind: &str) -> bool {
    group_version(object).0.is_empty() && object["kind"] == kind
}

async fn read_rp(store: &BlobStore, request: &RestoreRequest) -> Result<RecoveryPoint, StageError> {
    let (instance, rp_id) = (&request.instance, &request.recovery_point_id);
    catalog::read_recovery_point(store, instance, rp_id)
        .await
        .map_err(|e| {
            if e.is_not_found() {
                StageError::permanent(format!(
                    "recovery point {rp_id} of instance {instance} has no manifest in the vault \
                     ({e}); check the ids (`stowage rp list`)"
                ))
            } else {
                StageError::from(e)
            }
        })
}
