//! restore: apply a recovery point to a cluster (issue 4 §4).
//!
//! # Sources
//!
//! - `job.restore` from the **operational** tier: the RP manifest (`catalog/…`) gives the
//!   resources object and the volume snapshots; each restored volume gets a new disk,
//!   `restore-<restore-id>-<volume-id>`, filled by streaming the snapshot's allocated ranges
//!   ([`ClusterContext::copy_piece_bytes`] per read) into `create_disk_from_stream`, several
//!   volumes at once ([`ClusterContext::volume_parallelism`]).
//! - `event.restore.hydrated` (or a `job.restore` carrying `staging`): the resources come from
//!   the staged copy (in the vault, or its secondary location) and each volume's data is the
//!   staging disk hydration made — a new disk already, which the restored volume adopts.
//!
//! # Order
//!
//! The resources object is read in passes, one per group, so memory does not grow with its
//! size (it is read by ranges; the PVs and the claims that get new volumes are held, one
//! small entry per volume):
//!
//! 1. CRDs — then the restore waits until each is `Established` and rediscovers the API;
//! 2. namespaces; 3. storage classes; 4. PVs and PVCs; 5. config maps and secrets;
//! 6. service accounts and RBAC; 7. workloads (apps, batch, pods); 8. everything else
//!    (services, custom resources, …).
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

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{ApiCapabilities, Discovery, Scope as KubeScope};
use serde_json::{Map, Value, json};
use stowage_cluster::strip_server_fields;
use stowage_disk::{DiskError, DiskProvider, SnapshotId};
use stowage_runtime::{JobContext, Outcome, StageError, StageHandler};
use stowage_schemas::domain::{JobProgress, RecoveryPoint, Tier};
use stowage_schemas::events::{RestoreCompleted, RestoreHydrated};
use stowage_schemas::jobs::{ExistingPolicy, RestoreJob, RestoreOptions, Staging};
use stowage_schemas::{Envelope, Message, Stage};
use stowage_vault::catalog;
use stowage_vault::layout::{self, BlobKey};
use stowage_vault::store::BlobStore;

use crate::cluster_context::{
    ClusterContext, ClusterTarget, disk_safe_name, kube_error, read_instance_opt,
};
use crate::errors::Classify as _;

/// Bytes read from the resources object per range request.
const READ_WINDOW: u64 = 1 << 20;
/// File name of the completion record under `staging/<restore-id>/`.
pub const COMPLETED_FILE: &str = "completed.json";
/// Annotation on a restored PV: the restore that made it.
pub const RESTORE_ID_ANNOTATION: &str = "stowage.io/restore-id";
/// Annotation on a restored PV: the PV it replaces in the source cluster.
pub const SOURCE_VOLUME_ANNOTATION: &str = "stowage.io/source-volume";

/// The restore stage.
#[derive(Clone)]
pub struct RestoreStage {
    ctx: ClusterContext,
}

impl RestoreStage {
    /// The stage over `ctx`.
    pub fn new(ctx: ClusterContext) -> Self {
        Self { ctx }
    }
}

impl StageHandler for RestoreStage {
    fn stage(&self) -> Stage {
        Stage::Restore
    }

    async fn handle(&self, ctx: JobContext, envelope: Envelope) -> Result<Outcome, StageError> {
        let request = match &envelope.message {
            Message::Restore(job) => RestoreRequest::from_job(job)?,
            Message::RestoreHydrated(event) => RestoreRequest::from_hydrated(event),
            other => {
                return Err(StageError::permanent(format!(
                    "the restore stage does not handle {} messages; send job.restore",
                    other.kind()
                )));
            }
        };
        let completed = run_restore_with(&self.ctx, &request, &ctx).await?;
        Ok(Outcome::done().emit(Message::RestoreCompleted(completed)))
    }
}

/// Where a restore's data comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum RestoreSource {
    /// The operational tier: the RP's snapshots and its resources object.
    Operational,
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

/// What a restore does (or, in a dry run, would do) with one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlanAction {
    /// It is missing in the target and is created.
    Create,
    /// It exists and is left as it is (or is not restored at all; see the note).
    Skip,
    /// It exists and is merge-patched to match the backup.
    Patch,
    /// The target refuses it, or cannot serve its type; see the note.
    Conflict,
}

/// One object of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanEntry {
    /// What happens to it.
    pub action: PlanAction,
    /// `apiVersion` of the object.
    pub api_version: String,
    /// `kind` of the object.
    pub kind: String,
    /// Namespace in the target (after mapping); none when cluster-scoped.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// Why, when it is not obvious (the conflict's reason, "owned by a controller"…).
    pub note: Option<String>,
}

impl std::fmt::Display for PlanEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let action = match self.action {
            PlanAction::Create => "create",
            PlanAction::Skip => "skip",
            PlanAction::Patch => "patch",
            PlanAction::Conflict => "conflict",
        };
        write!(f, "{action:8} {} ", self.kind)?;
        if let Some(ns) = &self.namespace {
            write!(f, "{ns}/")?;
        }
        write!(f, "{}", self.name)?;
        if let Some(note) = &self.note {
            write!(f, " ({note})")?;
        }
        Ok(())
    }
}

/// What a restore did, or would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// The cluster restored into.
    pub target_cluster: String,
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// Every object considered, in the order applied.
    pub plan: Vec<PlanEntry>,
    /// Volumes restored onto new disks (planned, in a dry run).
    pub volumes_restored: u32,
    /// What went wrong without failing the restore.
    pub warnings: Vec<String>,
    /// Staging disks that became restored volumes (kept when the staging is released).
    pub adopted_disks: Vec<String>,
}

impl RestoreReport {
    /// Objects with `action`.
    pub fn count(&self, action: PlanAction) -> u64 {
        self.plan.iter().filter(|e| e.action == action).count() as u64
    }

    /// The plan entry of `kind` `namespace/name`, if the restore considered it.
    pub fn entry(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<&PlanEntry> {
        self.plan
            .iter()
            .find(|e| e.kind == kind && e.namespace.as_deref() == namespace && e.name == name)
    }

    /// The `restore.completed` event for `request`.
    pub fn completed_event(&self, request: &RestoreRequest) -> RestoreCompleted {
        RestoreCompleted {
            restore_id: request.restore_id.clone(),
            instance: request.instance.clone(),
            recovery_point_id: request.recovery_point_id.clone(),
            target_cluster: self.target_cluster.clone(),
            dry_run: self.dry_run,
            resources_created: self.count(PlanAction::Create),
            resources_patched: self.count(PlanAction::Patch),
            resources_skipped: self.count(PlanAction::Skip),
            volumes_restored: self.volumes_restored,
            warnings: self.warnings.clone(),
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
pub async fn run_restore(
    ctx: &ClusterContext,
    request: &RestoreRequest,
) -> Result<RestoreCompleted, StageError> {
    run_restore_with(ctx, request, &JobContext::detached(Stage::Restore)).await
}

/// [`run_restore`] for a worker: stops between resource groups once `run` is cancelled and
/// reports the objects considered as progress.
pub async fn run_restore_with(
    ctx: &ClusterContext,
    request: &RestoreRequest,
    run: &JobContext,
) -> Result<RestoreCompleted, StageError> {
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
            Err(e) => return Err(e.stage_error()),
        }
    }
    let report = restore_with(ctx, request, run).await?;
    for entry in &report.plan {
        tracing::info!(restore_id = %request.restore_id, dry_run = report.dry_run, "{entry}");
    }
    let completed = report.completed_event(request);
    if !report.dry_run {
        let bytes = serde_json::to_vec_pretty(&completed).expect("an event serializes");
        ctx.vault
            .put_create_only(&record, bytes)
            .await
            .map_err(|e| e.stage_error())?;
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
        tracing::info!(restore_id = %request.restore_id, objects_deleted = released.objects_deleted, disks_deleted = released.disks_deleted, disks_adopted = released.disks_kept, "staging released");
    }
    Ok(completed)
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

/// Where one restored claim's data comes from.
#[derive(Debug, Clone)]
enum VolumeOrigin {
    /// Fill a new disk from this operational snapshot.
    Snapshot { snapshot: SnapshotId, size: u64 },
    /// Adopt this staging disk.
    Disk { disk: String },
}

/// Restore a recovery point (see the module doc) and report what was done. Makes no
/// completion record; [`run_restore`] does.
pub async fn restore(
    ctx: &ClusterContext,
    request: &RestoreRequest,
) -> Result<RestoreReport, StageError> {
    restore_with(ctx, request, &JobContext::detached(Stage::Restore)).await
}

/// [`restore`], checking `run` for cancellation between resource groups.
pub async fn restore_with(
    ctx: &ClusterContext,
    request: &RestoreRequest,
    job: &JobContext,
) -> Result<RestoreReport, StageError> {
    let options = &request.options;
    let (cluster_name, cluster) = match &options.target_cluster {
        Some(name) => ctx.cluster(name)?,
        None => match read_instance_opt(&ctx.vault, &request.instance).await? {
            Some(instance) => ctx.instance_cluster(&instance.cluster),
            None => ctx.cluster(ctx.default_cluster())?,
        },
    };
    let mut warnings = Vec::new();
    let (store, resources, rp) = match &request.source {
        RestoreSource::Operational => {
            let rp = read_rp(&ctx.vault, request).await?;
            let key = layout::parse_resource_key(&rp.resources).map_err(StageError::permanent)?;
            (&ctx.vault, key, rp)
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

    // (backed-up namespace, claim) → where its data comes from.
    let mut origins: BTreeMap<(String, String), (String, VolumeOrigin)> = BTreeMap::new();
    if options.include_volumes {
        for volume in &rp.volumes {
            let origin = match &request.source {
                RestoreSource::Operational => VolumeOrigin::Snapshot {
                    snapshot: SnapshotId(volume.snapshot_id.clone()),
                    size: volume.size_bytes,
                },
                RestoreSource::Staged { staging, .. } => {
                    match staging
                        .disks
                        .iter()
                        .find(|d| d.volume_id == volume.volume_id)
                    {
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
        cluster,
        request,
        options,
        discovery: discover(cluster).await?,
        report: RestoreReport {
            target_cluster: cluster_name.to_owned(),
            dry_run: options.dry_run,
            plan: Vec::new(),
            volumes_restored: 0,
            warnings,
            adopted_disks: Vec::new(),
        },
        planned_crds: BTreeSet::new(),
    };

    let groups = Phase::ALL.len() as u64;
    for (done, phase) in Phase::ALL.into_iter().enumerate() {
        job.check_cancelled("the restore")?;
        job.report_progress(JobProgress {
            bytes_done: 0,
            bytes_total: None,
            items_done: run.report.plan.len() as u64,
            items_total: None,
        });
        tracing::debug!(?phase, done, groups, "restoring a resource group");
        match phase {
            Phase::Volumes => run.restore_volumes(store, &resources, &origins).await?,
            _ => {
                let mut reader = ObjectReader::open(store, &resources).await?;
                let mut crds = Vec::new();
                while let Some(object) = reader.next().await? {
                    if Phase::of(&object) != phase {
                        continue;
                    }
                    let Some(prepared) = run.prepare(object) else {
                        continue;
                    };
                    if phase == Phase::Crds {
                        crds.push(name_of(&prepared));
                    }
                    run.apply(prepared).await?;
                }
                if phase == Phase::Crds && !crds.is_empty() && !options.dry_run {
                    run.wait_established(&crds).await?;
                    run.discovery = discover(cluster).await?;
                }
            }
        }
    }
    Ok(run.report)
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
                e.stage_error()
            }
        })
}

async fn discover(cluster: &ClusterTarget) -> Result<Discovery, StageError> {
    Discovery::new(cluster.client.clone())
        .run()
        .await
        .map_err(|e| {
            kube_error(
                "discovering the target cluster's resource types failed".into(),
                e,
            )
        })
}

/// The groups objects are applied in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Crds,
    Namespaces,
    StorageClasses,
    Volumes,
    Config,
    Identity,
    Workloads,
    Rest,
}

impl Phase {
    const ALL: [Phase; 8] = [
        Phase::Crds,
        Phase::Namespaces,
        Phase::StorageClasses,
        Phase::Volumes,
        Phase::Config,
        Phase::Identity,
        Phase::Workloads,
        Phase::Rest,
    ];

    fn of(object: &Value) -> Phase {
        let (group, _) = group_version(object);
        let kind = object["kind"].as_str().unwrap_or_default();
        match (group, kind) {
            ("apiextensions.k8s.io", "CustomResourceDefinition") => Phase::Crds,
            ("", "Namespace") => Phase::Namespaces,
            ("storage.k8s.io", "StorageClass") => Phase::StorageClasses,
            ("", "PersistentVolume" | "PersistentVolumeClaim") => Phase::Volumes,
            ("", "ConfigMap" | "Secret") => Phase::Config,
            ("", "ServiceAccount") | ("rbac.authorization.k8s.io", _) => Phase::Identity,
            ("apps" | "batch", _) | ("", "Pod" | "ReplicationController") => Phase::Workloads,
            _ => Phase::Rest,
        }
    }
}

fn group_version(object: &Value) -> (&str, &str) {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

fn name_of(object: &Value) -> String {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn namespace_of(object: &Value) -> Option<String> {
    object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Kinds whose controller-owned objects are left to their controller.
const CONTROLLED_KINDS: &[&str] = &[
    "Pod",
    "ReplicaSet",
    "Job",
    "ControllerRevision",
    "EndpointSlice",
    "Endpoints",
];

/// Annotations of the source cluster's volume binding, dropped from restored claims.
const BINDING_ANNOTATIONS: &[&str] = &[
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.kubernetes.io/selected-node",
];

struct Run<'a> {
    ctx: &'a ClusterContext,
    cluster: &'a ClusterTarget,
    request: &'a RestoreRequest,
    options: &'a RestoreOptions,
    discovery: Discovery,
    report: RestoreReport,
    /// `(group, kind)` of CRDs a dry run would create: their custom resources would be created.
    planned_crds: BTreeSet<(String, String)>,
}

/// What the target cluster holds for one object.
enum Existing {
    Missing,
    Present(Value),
}

impl Run<'_> {
    fn namespace_included(&self, ns: &str) -> bool {
        self.options.namespaces.is_empty() || self.options.namespaces.iter().any(|n| n == ns)
    }

    fn map_namespace(&self, ns: &str) -> String {
        self.options
            .namespace_mapping
            .get(ns)
            .cloned()
            .unwrap_or_else(|| ns.to_owned())
    }

    fn plan(&mut self, action: PlanAction, object: &Value, note: Option<String>) {
        if action == PlanAction::Conflict
            && let Some(note) = &note
        {
            self.report.warnings.push(format!(
                "{} {}{}: {note}",
                object["kind"].as_str().unwrap_or_default(),
                namespace_of(object)
                    .map(|n| format!("{n}/"))
                    .unwrap_or_default(),
                name_of(object)
            ));
        }
        self.report.plan.push(PlanEntry {
            action,
            api_version: object["apiVersion"].as_str().unwrap_or_default().to_owned(),
            kind: object["kind"].as_str().unwrap_or_default().to_owned(),
            namespace: namespace_of(object),
            name: name_of(object),
            note,
        });
    }

    /// Filters, maps and cleans a backed-up object for the target; `None` when it is not
    /// restored (out of the namespaces asked for), after planning it as skipped when that is
    /// worth saying (controller-owned objects).
    fn prepare(&mut self, mut object: Value) -> Option<Value> {
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let core = group_version(&object).0.is_empty();
        if core && kind == "Namespace" {
            if !self.namespace_included(&name_of(&object)) {
                return None;
            }
        } else if let Some(ns) = namespace_of(&object)
            && !self.namespace_included(&ns)
        {
            return None;
        }
        strip_server_fields(&mut object);
        // Map namespaces.
        if core && kind == "Namespace" {
            let mapped = self.map_namespace(&name_of(&object));
            object["metadata"]["name"] = json!(mapped);
        }
        if let Some(ns) = namespace_of(&object) {
            object["metadata"]["namespace"] = json!(self.map_namespace(&ns));
        }
        if group_version(&object).0 == "rbac.authorization.k8s.io"
            && let Some(subjects) = object.get_mut("subjects").and_then(Value::as_array_mut)
        {
            // A role binding moves with its namespace. A cluster role binding is shared: it
            // keeps its subjects and gains the mapped ones, so restoring a copy next to the
            // original (same cluster, mapped namespace) does not take the original's rights.
            let cluster_wide = kind == "ClusterRoleBinding";
            let mut added = Vec::new();
            for subject in subjects.iter_mut() {
                let Some(mapped) = subject
                    .get("namespace")
                    .and_then(Value::as_str)
                    .and_then(|ns| self.options.namespace_mapping.get(ns))
                else {
                    continue;
                };
                let mut moved = subject.clone();
                moved["namespace"] = json!(mapped);
                if cluster_wide {
                    added.push(moved);
                } else {
                    *subject = moved;
                }
            }
            subjects.extend(added);
        }
        // Owner references: controller-owned objects are left to their controller; the rest
        // lose references that name the source cluster's uids.
        let metadata = object["metadata"].as_object_mut()?;
        if let Some(owners) = metadata.remove("ownerReferences") {
            let controller = owners.as_array().and_then(|o| {
                o.iter()
                    .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
            });
            if let Some(owner) = controller
                && CONTROLLED_KINDS.contains(&kind.as_str())
            {
                let note = format!(
                    "owned by {} {}; its controller recreates it",
                    owner["kind"].as_str().unwrap_or_default(),
                    owner["name"].as_str().unwrap_or_default()
                );
                self.plan(PlanAction::Skip, &object, Some(note));
                return None;
            }
        }
        if core
            && kind == "Pod"
            && let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut)
        {
            // The source's node may not exist here; let the scheduler choose.
            spec.remove("nodeName");
        }
        Some(object)
    }

    fn api_for(
        &self,
        ar: &ApiResource,
        caps: &ApiCapabilities,
        namespace: Option<&str>,
    ) -> Api<DynamicObject> {
        match (caps.scope == KubeScope::Namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.cluster.client.clone(), ns, ar),
            (true, None) => Api::namespaced_with(self.cluster.client.clone(), "default", ar),
            (false, _) => Api::all_with(self.cluster.client.clone(), ar),
        }
    }

    fn resolve(&self, object: &Value) -> Option<(ApiResource, ApiCapabilities)> {
        let (group, version) = group_version(object);
        let kind = object["kind"].as_str().unwrap_or_default();
        self.discovery
            .resolve_gvk(&GroupVersionKind::gvk(group, version, kind))
    }

    fn describe(object: &Value) -> String {
        format!(
            "{} {}{}",
            object["kind"].as_str().unwrap_or_default(),
            namespace_of(object)
                .map(|n| format!("{n}/"))
                .unwrap_or_default(),
            name_of(object)
        )
    }

    /// What the target holds for `object`; `None` when its type is not served (planned).
    async fn existing(
        &mut self,
        object: &Value,
    ) -> Result<Option<(Api<DynamicObject>, Existing)>, StageError> {
        let Some((ar, caps)) = self.resolve(object) else {
            let (group, _) = group_version(object);
            let kind = object["kind"].as_str().unwrap_or_default();
            if self.options.dry_run
                && self
                    .planned_crds
                    .contains(&(group.to_owned(), kind.to_owned()))
            {
                self.plan(PlanAction::Create, object, Some("after its CRD".into()));
            } else {
                self.plan(
                    PlanAction::Conflict,
                    object,
                    Some(format!(
                        "the target cluster does not serve {}; install its CRD or API there and \
                         restore again",
                        object["apiVersion"].as_str().unwrap_or_default()
                    )),
                );
            }
            return Ok(None);
        };
        let api = self.api_for(&ar, &caps, namespace_of(object).as_deref());
        let name = name_of(object);
        let current = api.get_opt(&name).await.map_err(|e| {
            kube_error(
                format!(
                    "reading {} from the target cluster failed",
                    Self::describe(object)
                ),
                e,
            )
        })?;
        let existing = match current {
            None => Existing::Missing,
            Some(current) => {
                Existing::Present(serde_json::to_value(current).expect("an object serializes"))
            }
        };
        Ok(Some((api, existing)))
    }

    /// Applies one prepared object per the existing-object policy; `patch_body` overrides what
    /// an existing object is patched with. Answers the action taken.
    async fn apply_with(
        &mut self,
        object: Value,
        patch_body: Option<Value>,
    ) -> Result<PlanAction, StageError> {
        let Some((api, existing)) = self.existing(&object).await? else {
            return Ok(PlanAction::Conflict);
        };
        let name = name_of(&object);
        match existing {
            Existing::Missing => {
                if self.options.dry_run {
                    self.note_planned_crd(&object);
                    self.plan(PlanAction::Create, &object, None);
                    return Ok(PlanAction::Create);
                }
                let dynamic: DynamicObject =
                    serde_json::from_value(object.clone()).map_err(|e| {
                        StageError::permanent(format!(
                            "{} in the resources object is not a Kubernetes object ({e}); the \
                         resources object is damaged",
                            Self::describe(&object)
                        ))
                    })?;
                match api.create(&PostParams::default(), &dynamic).await {
                    Ok(_) => {
                        self.plan(PlanAction::Create, &object, None);
                        Ok(PlanAction::Create)
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        // Created meanwhile (by a controller, or a concurrent attempt).
                        self.plan(PlanAction::Skip, &object, Some("created meanwhile".into()));
                        Ok(PlanAction::Skip)
                    }
                    Err(kube::Error::Api(status)) if status.code < 500 && status.code != 429 => {
                        self.plan(
                            PlanAction::Conflict,
                            &object,
                            Some(format!(
                                "the target refused to create it ({} {}): {}",
                                status.code, status.reason, status.message
                            )),
                        );
                        Ok(PlanAction::Conflict)
                    }
                    Err(e) => Err(kube_error(
                        format!("creating {} failed", Self::describe(&object)),
                        e,
                    )),
                }
            }
            Existing::Present(current) => match self.options.existing {
                ExistingPolicy::Skip => {
                    self.plan(PlanAction::Skip, &object, Some("exists".into()));
                    Ok(PlanAction::Skip)
                }
                ExistingPolicy::Patch => {
                    let body = patch_body.unwrap_or(object.clone());
                    let mut merged = current.clone();
                    merge_patch(&mut merged, &body);
                    if merged == current {
                        self.plan(
                            PlanAction::Skip,
                            &object,
                            Some("exists and already matches".into()),
                        );
                        return Ok(PlanAction::Skip);
                    }
                    if self.options.dry_run {
                        self.plan(PlanAction::Patch, &object, None);
                        return Ok(PlanAction::Patch);
                    }
                    match api
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
                        .await
                    {
                        Ok(_) => {
                            self.plan(PlanAction::Patch, &object, None);
                            Ok(PlanAction::Patch)
                        }
                        Err(kube::Error::Api(status))
                            if status.code < 500 && status.code != 429 =>
                        {
                            self.plan(
                                PlanAction::Conflict,
                                &object,
                                Some(format!(
                                    "the target refused the patch ({} {}): {}",
                                    status.code, status.reason, status.message
                                )),
                            );
                            Ok(PlanAction::Conflict)
                        }
                        Err(e) => Err(kube_error(
                            format!("patching {} failed", Self::describe(&object)),
                            e,
                        )),
                    }
                }
            },
        }
    }

    async fn apply(&mut self, object: Value) -> Result<PlanAction, StageError> {
        self.apply_with(object, None).await
    }

    fn note_planned_crd(&mut self, object: &Value) {
        if group_version(object).0 == "apiextensions.k8s.io"
            && object["kind"] == "CustomResourceDefinition"
            && let (Some(group), Some(kind)) = (
                object.pointer("/spec/group").and_then(Value::as_str),
                object.pointer("/spec/names/kind").and_then(Value::as_str),
            )
        {
            self.planned_crds
                .insert((group.to_owned(), kind.to_owned()));
        }
    }

    /// Waits until every CRD in `names` reports `Established`.
    async fn wait_established(&mut self, names: &[String]) -> Result<(), StageError> {
        let crd = ApiResource {
            group: "apiextensions.k8s.io".into(),
            version: "v1".into(),
            api_version: "apiextensions.k8s.io/v1".into(),
            kind: "CustomResourceDefinition".into(),
            plural: "customresourcedefinitions".into(),
        };
        let api: Api<DynamicObject> = Api::all_with(self.cluster.client.clone(), &crd);
        let deadline = tokio::time::Instant::now() + self.ctx.crd_established_timeout;
        for name in names {
            loop {
                let current = api
                    .get_opt(name)
                    .await
                    .map_err(|e| kube_error(format!("reading CRD {name} failed"), e))?;
                let established = current.as_ref().is_some_and(|c| {
                    c.data
                        .pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .is_some_and(|conditions| {
                            conditions
                                .iter()
                                .any(|c| c["type"] == "Established" && c["status"] == "True")
                        })
                });
                if established || current.is_none() {
                    // A CRD the target refused (a conflict) is not waited for.
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(StageError::transient(format!(
                        "CRD {name} is not Established after {}s; check the target's API server \
                         (its apiextensions controller); the restore will be retried",
                        self.ctx.crd_established_timeout.as_secs()
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// The PV/PVC phase (see "Volumes" in the module doc).
    async fn restore_volumes(
        &mut self,
        store: &BlobStore,
        resources: &BlobKey,
        origins: &BTreeMap<(String, String), (String, VolumeOrigin)>,
    ) -> Result<(), StageError> {
        // Pass 1: the source PVs (one per backed-up claim), to model the new ones on.
        let mut source_pvs: BTreeMap<String, Value> = BTreeMap::new();
        let mut reader = ObjectReader::open(store, resources).await?;
        while let Some(object) = reader.next().await? {
            if group_version(&object).0.is_empty() && object["kind"] == "PersistentVolume" {
                source_pvs.insert(name_of(&object), object);
            }
        }
        // Pass 2: the claims. Those that get a new volume wait for their disks.
        let mut pending = Vec::new();
        let mut reader = ObjectReader::open(store, resources).await?;
        while let Some(object) = reader.next().await? {
            if !(group_version(&object).0.is_empty() && object["kind"] == "PersistentVolumeClaim") {
                continue;
            }
            let source_ns = namespace_of(&object).unwrap_or_default();
            let source_pv = object
                .pointer("/spec/volumeName")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let Some(mut claim) = self.prepare(object) else {
                continue;
            };
            clean_claim(&mut claim);
            let origin = origins.get(&(source_ns.clone(), name_of(&claim)));
            let Some((_, existing)) = self.existing(&claim).await? else {
                continue;
            };
            match (existing, origin) {
                (Existing::Missing, Some((volume_id, origin))) => {
                    let pv = source_pv.and_then(|n| source_pvs.get(&n).cloned());
                    pending.push((claim, pv, volume_id.clone(), origin.clone()));
                }
                (Existing::Missing, None) => {
                    if self.options.include_volumes {
                        let key = (source_ns.clone(), name_of(&claim));
                        self.report.warnings.push(format!(
                            "PVC {}/{} is restored without data: its volume was not backed up \
                             (see the recovery point's warnings); the cluster provisions a new \
                             volume for it if its storage class can",
                            key.0, key.1
                        ));
                    }
                    if let Some(spec) = claim.get_mut("spec").and_then(Value::as_object_mut) {
                        spec.remove("volumeName");
                    }
                    self.apply(claim).await?;
                }
                (Existing::Present(_), _) => {
                    // Never a new disk under an existing claim; patch only its metadata.
                    let mut metadata = Map::new();
                    for field in ["labels", "annotations"] {
                        if let Some(value) = claim["metadata"].get(field) {
                            metadata.insert(field.into(), value.clone());
                        }
                    }
                    let body = json!({ "metadata": metadata });
                    self.apply_with(claim, Some(body)).await?;
                }
            }
        }
        if pending.is_empty() {
            return Ok(());
        }

        // The disks, in parallel.
        let disks = self.ctx.disks.clone();
        let dry_run = self.options.dry_run;
        let restore_id = self.request.restore_id.clone();
        let piece = self.ctx.copy_piece_bytes.max(4096) as u64;
        let jobs: Vec<(String, String, VolumeOrigin)> = pending
            .iter()
            .map(|(claim, _, volume_id, origin)| {
                (
                    format!(
                        "{}/{}",
                        namespace_of(claim).unwrap_or_default(),
                        name_of(claim)
                    ),
                    disk_safe_name(&format!("restore-{restore_id}-{volume_id}")),
                    origin.clone(),
                )
            })
            .collect();
        let made: Vec<Option<String>> = futures::stream::iter(jobs.into_iter().map(|(who, name, origin)| {
            let disks = disks.clone();
            async move {
                match origin {
                    VolumeOrigin::Disk { disk } => Ok(Some(disk)),
                    VolumeOrigin::Snapshot { .. } if dry_run => Ok(None),
                    VolumeOrigin::Snapshot { snapshot, size } => {
                        let info = disk_from_snapshot(disks.as_ref(), &snapshot, &name, size, piece)
                            .await
                            .map_err(|e| {
                                let message = format!(
                                    "restoring the volume of PVC {who} from snapshot {snapshot} into \
                                     disk {name} failed: {e}"
                                );
                                if e.is_transient() {
                                    StageError::transient(message)
                                } else {
                                    StageError::permanent(message)
                                }
                            })?;
                        tracing::info!(pvc = who, disk = %info.id, bytes = info.size, "volume restored");
                        Ok::<_, StageError>(Some(info.id.0))
                    }
                }
            }
        }))
        .buffered(self.ctx.volume_parallelism.max(1))
        .try_collect()
        .await?;

        // Then each new PV, and its claim.
        if !dry_run {
            for (_, _, _, origin) in &pending {
                if let VolumeOrigin::Disk { disk } = origin {
                    self.report.adopted_disks.push(disk.clone());
                }
            }
        }
        for ((mut claim, source_pv, _, _), disk) in pending.into_iter().zip(made) {
            let target_ns = namespace_of(&claim).unwrap_or_default();
            let claim_name = name_of(&claim);
            let pv_name = restored_pv_name(&self.request.restore_id, &target_ns, &claim_name);
            let pv = self.new_volume(
                &pv_name,
                &claim,
                source_pv.as_ref(),
                disk.as_deref().unwrap_or("<new disk>"),
            );
            let action = self.apply(pv).await?;
            if matches!(action, PlanAction::Create) {
                self.report.volumes_restored += 1;
            }
            claim["spec"]["volumeName"] = json!(pv_name);
            self.apply(claim).await?;
        }
        Ok(())
    }

    /// A PV on the restored disk `disk`, bound to `claim` (already mapped).
    fn new_volume(&self, name: &str, claim: &Value, source: Option<&Value>, disk: &str) -> Value {
        let mut spec: Map<String, Value> = source
            .and_then(|pv| pv.get("spec"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        spec.remove("claimRef");
        spec.remove("nodeAffinity");
        let mut csi = spec
            .get("csi")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        csi.insert("driver".into(), json!(self.ctx.disks.driver()));
        csi.insert("volumeHandle".into(), json!(disk));
        spec.insert("csi".into(), Value::Object(csi));
        if !spec.contains_key("capacity") {
            let size = claim
                .pointer("/spec/resources/requests/storage")
                .cloned()
                .unwrap_or(json!("1Gi"));
            spec.insert("capacity".into(), json!({"storage": size}));
        }
        for field in ["accessModes", "storageClassName", "volumeMode"] {
            if !spec.contains_key(field)
                && let Some(value) = claim.pointer(&format!("/spec/{field}"))
            {
                spec.insert(field.into(), value.clone());
            }
        }
        spec.insert(
            "claimRef".into(),
            json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": namespace_of(claim).unwrap_or_default(), "name": name_of(claim),
            }),
        );
        let mut metadata = json!({"name": name, "annotations": {
            RESTORE_ID_ANNOTATION: self.request.restore_id,
        }});
        if let Some(source) = source {
            if let Some(labels) = source.pointer("/metadata/labels") {
                metadata["labels"] = labels.clone();
            }
            metadata["annotations"][SOURCE_VOLUME_ANNOTATION] = json!(name_of(source));
        }
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": metadata, "spec": spec})
    }
}

/// Drops what binds a claim to the source cluster's volume (annotations of the binding).
fn clean_claim(claim: &mut Value) {
    if let Some(annotations) = claim
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        for a in BINDING_ANNOTATIONS {
            annotations.remove(*a);
        }
    }
}

/// The name of the PV a restore makes for one claim: stable per restore and claim, so a
/// redelivered restore finds the one it made.
pub fn restored_pv_name(restore_id: &str, namespace: &str, claim: &str) -> String {
    let hash = blake3::hash(format!("{restore_id}\n{namespace}\n{claim}").as_bytes());
    format!("stowage-{}", &hash.to_hex()[..20])
}

/// Creates disk `name` from `snapshot`: its allocated ranges, read `piece` bytes at a time and
/// streamed into the provider; holes stay holes.
async fn disk_from_snapshot(
    disks: &dyn DiskProvider,
    snapshot: &SnapshotId,
    name: &str,
    size: u64,
    piece: u64,
) -> Result<stowage_disk::DiskInfo, DiskError> {
    let ranges = disks.allocated_ranges(snapshot).await?;
    let pieces = ranges.into_iter().flat_map(move |r| {
        let end = r.end().min(size);
        let mut offset = r.offset;
        std::iter::from_fn(move || {
            (offset < end).then(|| {
                let len = piece.min(end - offset);
                let at = offset;
                offset += len;
                (at, len)
            })
        })
    });
    let stream = futures::stream::iter(pieces)
        .then(move |(offset, len)| async move {
            let mut buf = vec![0u8; usize::try_from(len).expect("a piece fits in memory")];
            disks.read_snapshot(snapshot, offset, &mut buf).await?;
            Ok((offset, Bytes::from(buf)))
        })
        .boxed();
    disks.create_disk_from_stream(name, size, stream).await
}

/// JSON merge patch (RFC 7386): what the API server does with `application/merge-patch+json`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target = target.as_object_mut().expect("made an object");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Reads a resources object (JSON lines; a line may also be a `…List` whose items are the
/// objects) one object at a time, by ranges of [`READ_WINDOW`] bytes.
struct ObjectReader<'a> {
    store: &'a BlobStore,
    key: &'a BlobKey,
    size: u64,
    position: u64,
    buffer: Vec<u8>,
    start: usize,
    pending: VecDeque<Value>,
    line: u64,
}

impl<'a> ObjectReader<'a> {
    async fn open(store: &'a BlobStore, key: &'a BlobKey) -> Result<Self, StageError> {
        let info = store.head(key).await.map_err(|e| {
            if e.is_not_found() {
                StageError::permanent(format!(
                    "the resources object {key} is missing ({e}); the recovery point (or its \
                     staging area) is incomplete: restore another recovery point, or hydrate again"
                ))
            } else {
                e.stage_error()
            }
        })?;
        Ok(Self {
            store,
            key,
            size: info.size,
            position: 0,
            buffer: Vec::new(),
            start: 0,
            pending: VecDeque::new(),
            line: 0,
        })
    }

    async fn next(&mut self) -> Result<Option<Value>, StageError> {
        loop {
            if let Some(object) = self.pending.pop_front() {
                return Ok(Some(object));
            }
            let rest = &self.buffer[self.start..];
            let line = match rest.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    let line = self.start..self.start + end;
                    self.start += end + 1;
                    line
                }
                None if self.position < self.size => {
                    self.buffer.drain(..self.start);
                    self.start = 0;
                    let end = (self.position + READ_WINDOW).min(self.size);
                    let bytes = self
                        .store
                        .get_range(self.key, self.position..end)
                        .await
                        .map_err(|e| e.stage_error())?;
                    self.buffer.extend_from_slice(&bytes);
                    self.position = end;
                    continue;
                }
                None if self.start < self.buffer.len() => {
                    let line = self.start..self.buffer.len();
                    self.start = self.buffer.len();
                    line
                }
                None => return Ok(None),
            };
            self.line += 1;
            let text = &self.buffer[line];
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let value: Value = serde_json::from_slice(text).map_err(|e| {
                StageError::permanent(format!(
                    "line {} of the resources object {} is not JSON ({e}); the object is damaged: \
                     restore another recovery point",
                    self.line, self.key
                ))
            })?;
            let is_list = value["kind"].as_str().is_some_and(|k| k.ends_with("List"))
                && value.get("items").is_some_and(Value::is_array);
            if is_list {
                if let Value::Array(items) = value["items"].clone() {
                    self.pending.extend(items);
                }
                continue;
            }
            return Ok(Some(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(&mut target, &json!({"a": "z", "c": {"f": null}, "l": [3]}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
    }

    #[test]
    fn phases() {
        let of = |api: &str, kind: &str| Phase::of(&json!({"apiVersion": api, "kind": kind}));
        assert_eq!(
            of("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
            Phase::Crds
        );
        assert_eq!(of("v1", "Namespace"), Phase::Namespaces);
        assert_eq!(of("v1", "PersistentVolumeClaim"), Phase::Volumes);
        assert_eq!(
            of("rbac.authorization.k8s.io/v1", "ClusterRole"),
            Phase::Identity
        );
        assert_eq!(of("apps/v1", "Deployment"), Phase::Workloads);
        assert_eq!(of("v1", "Service"), Phase::Rest);
        assert_eq!(of("demo.stowage.io/v1", "Widget"), Phase::Rest);
    }

    #[test]
    fn pv_names_are_stable_and_valid() {
        let a = restored_pv_name("r1", "shop", "data-db-0");
        assert_eq!(a, restored_pv_name("r1", "shop", "data-db-0"));
        assert_ne!(a, restored_pv_name("r2", "shop", "data-db-0"));
        assert!(
            a.len() < 63
                && a.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }
}
