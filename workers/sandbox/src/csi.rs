//! The sandbox's CSI snapshot controller and driver, over a [`DiskProvider`]'s disks: what the
//! external-snapshotter, the CSI external-provisioner and a CSI driver do in a real cluster,
//! for volumes of [`LOCAL_CSI_DRIVER`], so Stowage's generic CSI path runs end to end here.
//!
//! Started by [`Sandbox::with_csi_disks`](crate::Sandbox::with_csi_disks). A task reconciles
//! the whole store after every change (an in-process notification, as an informer would see
//! it) and writes its results into the store, so API watchers see them as any other change:
//!
//! - **A new VolumeSnapshot of a claim** (`spec.source.persistentVolumeClaimName`) whose class
//!   and PV are of [`LOCAL_CSI_DRIVER`]: a provider snapshot `snapshot-<uid>` of the PV's disk
//!   (`spec.csi.volumeHandle`), a bound VolumeSnapshotContent `snapcontent-<uid>` (its
//!   `status.snapshotHandle` is the provider's snapshot id, `restoreSize` the disk's size) and
//!   the snapshot's status (`boundVolumeSnapshotContentName`, `readyToUse`, `restoreSize`,
//!   `creationTime`). Any failure (no such claim, unbound, the disk refused) sets
//!   `status.error` instead, and the snapshot is not retried.
//! - **A pre-provisioned snapshot** (`spec.source.volumeSnapshotContentName`): once its content
//!   exists and points back at it, the content's handle is checked against the provider and
//!   both are made ready.
//! - **A bound content whose VolumeSnapshot is gone** (deleted, or replaced under the same
//!   name): `deletionPolicy: Delete` deletes the provider snapshot and the content; `Retain`
//!   keeps both. (The sandbox has no finalizers, so this is how a deletion reaches the driver.)
//! - **A pending claim with a VolumeSnapshot `dataSource`**: once the snapshot is ready, a new
//!   disk `pvc-<uid>` is filled from it (its data ranges only), a PV `pvc-<uid>` (CSI, that
//!   disk as `volumeHandle`, claim reference set) is created and the claim is Bound.
//!
//! Volumes, classes and contents of other drivers are left alone, as another driver's
//! sidecars would handle them.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use serde_json::{Value, json};
use stowage_disk::{DiskId, DiskProvider, SnapshotId};
use tokio::sync::Notify;

use crate::sample::LOCAL_CSI_DRIVER;
use crate::store::Store;

const GROUP: &str = "snapshot.storage.k8s.io";
/// Bytes read from a snapshot per piece while filling a provisioned disk.
const PIECE: u64 = 1 << 20;

/// Starts the controller over `store`; it stops once the store is dropped.
pub(crate) fn spawn(store: &Arc<Mutex<Store>>, changed: Arc<Notify>, disks: Arc<dyn DiskProvider>) {
    let store = Arc::downgrade(store);
    tokio::spawn(async move {
        loop {
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let Some(strong) = store.upgrade() else {
                return;
            };
            drop(strong);
            if reconcile(&store, disks.as_ref()).await {
                // What it wrote may unblock more (a ready snapshot, a claim waiting on it).
                changed.notify_waiters();
            }
            // Wake on the next change; now and then anyway, to notice the store is gone.
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
    });
}

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

fn text<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// What one pass decided to do, read under the lock and done outside it.
enum Work {
    /// Take a snapshot for VolumeSnapshot `ns/name` (uid) of `disk`, class with `policy`.
    Snapshot {
        namespace: String,
        name: String,
        uid: String,
        disk: String,
        class: String,
        policy: String,
    },
    /// Make a pre-bound pair ready.
    PreBound {
        namespace: String,
        name: String,
        uid: String,
        content: String,
        handle: String,
    },
    /// Fail VolumeSnapshot `ns/name` with `message`.
    Fail {
        namespace: String,
        name: String,
        message: String,
    },
    /// Content whose snapshot is gone: delete it (and the provider snapshot when `delete`).
    Orphan {
        content: String,
        handle: String,
        delete: bool,
    },
    /// Provision claim `ns/name` (uid) from snapshot handle `handle`.
    Provision {
        namespace: String,
        name: String,
        uid: String,
        handle: String,
        size: u64,
    },
}

fn lock(store: &Weak<Mutex<Store>>) -> Option<Arc<Mutex<Store>>> {
    store.upgrade()
}

fn with<T>(store: &Weak<Mutex<Store>>, f: impl FnOnce(&mut Store) -> T) -> Option<T> {
    let strong = lock(store)?;
    let mut guard = strong.lock().unwrap_or_else(PoisonError::into_inner);
    Some(f(&mut guard))
}

/// One pass; answers whether it did anything.
async fn reconcile(store: &Weak<Mutex<Store>>, disks: &dyn DiskProvider) -> bool {
    let Some(work) = with(store, plan) else {
        return false;
    };
    let mut busy = false;
    for item in work {
        let done = perform(store, disks, item).await;
        busy |= done.is_ok();
        if let Err(error) = done {
            tracing::warn!(%error, "sandbox CSI controller: a step failed; it is tried again on the next change");
        }
    }
    busy
}

/// Reads the store and lists what is to be done.
fn plan(store: &mut Store) -> Vec<Work> {
    let mut work = Vec::new();
    let class_of = |store: &Store, name: &str| {
        store
            .object(GROUP, "volumesnapshotclasses", "", name)
            .cloned()
    };
    // Snapshots not yet bound nor failed.
    let snapshots: Vec<Value> = store
        .objects_of(GROUP, "volumesnapshots")
        .filter(|s| {
            s.pointer("/status/boundVolumeSnapshotContentName")
                .is_none()
                && s.pointer("/status/error").is_none()
        })
        .cloned()
        .collect();
    for s in snapshots {
        let namespace = text(&s, "/metadata/namespace").to_owned();
        let name = text(&s, "/metadata/name").to_owned();
        let uid = text(&s, "/metadata/uid").to_owned();
        let fail = |message: String| Work::Fail {
            namespace: namespace.clone(),
            name: name.clone(),
            message,
        };
        let content = text(&s, "/spec/source/volumeSnapshotContentName");
        if !content.is_empty() {
            let Some(c) = store.object(GROUP, "volumesnapshotcontents", "", content) else {
                continue; // not created yet
            };
            if text(c, "/spec/driver") != LOCAL_CSI_DRIVER {
                continue;
            }
            if text(c, "/spec/volumeSnapshotRef/name") != name
                || text(c, "/spec/volumeSnapshotRef/namespace") != namespace
            {
                work.push(fail(format!(
                    "VolumeSnapshotContent {content} is not pre-bound to this VolumeSnapshot \
                     (its volumeSnapshotRef names another)"
                )));
                continue;
            }
            work.push(Work::PreBound {
                namespace: namespace.clone(),
                name: name.clone(),
                uid,
                content: content.to_owned(),
                handle: text(c, "/spec/source/snapshotHandle").to_owned(),
            });
            continue;
        }
        let claim = text(&s, "/spec/source/persistentVolumeClaimName");
        let class_name = text(&s, "/spec/volumeSnapshotClassName");
        let Some(class) = class_of(store, class_name) else {
            continue; // no class (or another controller's default): not ours to take
        };
        if text(&class, "/driver") != LOCAL_CSI_DRIVER {
            continue;
        }
        let Some(pvc) = store.object("", "persistentvolumeclaims", &namespace, claim) else {
            work.push(fail(format!(
                "PersistentVolumeClaim {namespace}/{claim} does not exist"
            )));
            continue;
        };
        let volume = text(pvc, "/spec/volumeName");
        let Some(pv) = (!volume.is_empty())
            .then(|| store.object("", "persistentvolumes", "", volume))
            .flatten()
        else {
            work.push(fail(format!(
                "PersistentVolumeClaim {namespace}/{claim} is not bound to a volume"
            )));
            continue;
        };
        if text(pv, "/spec/csi/driver") != LOCAL_CSI_DRIVER {
            work.push(fail(format!(
                "the volume of PersistentVolumeClaim {namespace}/{claim} is not a volume of \
                 {LOCAL_CSI_DRIVER}, the driver of VolumeSnapshotClass {class_name}"
            )));
            continue;
        }
        work.push(Work::Snapshot {
            namespace: namespace.clone(),
            name: name.clone(),
            uid,
            disk: text(pv, "/spec/csi/volumeHandle").to_owned(),
            class: class_name.to_owned(),
            policy: text(&class, "/deletionPolicy").to_owned(),
        });
    }
    // Bound contents whose snapshot is gone.
    for c in store.objects_of(GROUP, "volumesnapshotcontents") {
        if text(c, "/spec/driver") != LOCAL_CSI_DRIVER {
            continue;
        }
        let bound_uid = text(c, "/spec/volumeSnapshotRef/uid");
        if bound_uid.is_empty() {
            continue; // pre-bound, its snapshot not made yet
        }
        let snapshot = store.object(
            GROUP,
            "volumesnapshots",
            text(c, "/spec/volumeSnapshotRef/namespace"),
            text(c, "/spec/volumeSnapshotRef/name"),
        );
        if snapshot.is_some_and(|s| text(s, "/metadata/uid") == bound_uid) {
            continue;
        }
        let delete = text(c, "/spec/deletionPolicy") == "Delete";
        if !delete && c.pointer("/status/orphaned").is_some() {
            continue;
        }
        work.push(Work::Orphan {
            content: text(c, "/metadata/name").to_owned(),
            handle: text(c, "/status/snapshotHandle").to_owned(),
            delete,
        });
    }
    // Pending claims restoring from a snapshot.
    for pvc in store.objects_of("", "persistentvolumeclaims") {
        let source = pvc.pointer("/spec/dataSource");
        if source.is_none_or(|d| d["kind"] != "VolumeSnapshot" || d["apiGroup"] != GROUP)
            || !text(pvc, "/spec/volumeName").is_empty()
        {
            continue;
        }
        let namespace = text(pvc, "/metadata/namespace");
        let snapshot_name = text(pvc, "/spec/dataSource/name");
        let Some(snapshot) = store.object(GROUP, "volumesnapshots", namespace, snapshot_name)
        else {
            continue;
        };
        if snapshot.pointer("/status/readyToUse") != Some(&Value::Bool(true)) {
            continue;
        }
        let Some(content) = store.object(
            GROUP,
            "volumesnapshotcontents",
            "",
            text(snapshot, "/status/boundVolumeSnapshotContentName"),
        ) else {
            continue;
        };
        if text(content, "/spec/driver") != LOCAL_CSI_DRIVER {
            continue;
        }
        let restore_size = content
            .pointer("/status/restoreSize")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let requested =
            stowage_cluster::csi::parse_quantity(text(pvc, "/spec/resources/requests/storage"))
                .unwrap_or(0);
        work.push(Work::Provision {
            namespace: namespace.to_owned(),
            name: text(pvc, "/metadata/name").to_owned(),
            uid: text(pvc, "/metadata/uid").to_owned(),
            handle: text(content, "/status/snapshotHandle").to_owned(),
            size: restore_size.max(requested),
        });
    }
    work
}

/// Why a step failed (logged; the step runs again on the next change).
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("{0}")]
    Api(String),
    #[error("{0}")]
    Disk(#[from] stowage_disk::DiskError),
}

impl From<crate::error::ApiError> for StepError {
    fn from(e: crate::error::ApiError) -> Self {
        StepError::Api(e.message)
    }
}

/// Replaces `status` of the stored object `group/plural ns/name` (merging into it).
fn set_status(
    store: &mut Store,
    (group, plural): (&str, &str),
    namespace: &str,
    name: &str,
    status: Value,
) -> Result<(), StepError> {
    let target = store.target(
        group,
        "v1",
        plural,
        (!namespace.is_empty()).then_some(namespace),
    )?;
    let mut object = store.get(&target, name)?;
    let current = object
        .get("status")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or(json!({}));
    let mut merged = current;
    json_patch::merge(&mut merged, &status);
    object["status"] = merged;
    store.update(&target, name, object)?;
    Ok(())
}

/// Marks VolumeSnapshot `namespace/name` failed with `message`, as the external-snapshotter
/// reports a driver's error.
fn fail_snapshot(
    store: &Weak<Mutex<Store>>,
    namespace: &str,
    name: &str,
    message: String,
) -> Result<(), StepError> {
    with(store, |s| {
        set_status(
            s,
            (GROUP, "volumesnapshots"),
            namespace,
            name,
            json!({"readyToUse": false, "error": {"message": message, "time": now()}}),
        )
    })
    .ok_or_else(|| StepError::Api("the sandbox is gone".into()))?
}

async fn perform(
    store: &Weak<Mutex<Store>>,
    disks: &dyn DiskProvider,
    work: Work,
) -> Result<(), StepError> {
    let gone = || StepError::Api("the sandbox is gone".into());
    match work {
        Work::Fail {
            namespace,
            name,
            message,
        } => fail_snapshot(store, &namespace, &name, message),
        Work::Snapshot {
            namespace,
            name,
            uid,
            disk,
            class,
            policy,
        } => {
            let taken = disks
                .snapshot(&DiskId(disk.clone()), &format!("snapshot-{uid}"))
                .await;
            let info = match taken {
                Ok(info) => info,
                Err(e) => {
                    let message = format!("failed to take snapshot of disk {disk}: {e}");
                    return fail_snapshot(store, &namespace, &name, message);
                }
            };
            let content_name = format!("snapcontent-{uid}");
            let created_ns = info.created_at.as_nanosecond();
            let content = json!({
                "apiVersion": format!("{GROUP}/v1"), "kind": "VolumeSnapshotContent",
                "metadata": {"name": content_name},
                "spec": {
                    "deletionPolicy": if policy.is_empty() { "Delete" } else { policy.as_str() },
                    "driver": LOCAL_CSI_DRIVER,
                    "source": {"volumeHandle": disk},
                    "volumeSnapshotClassName": class,
                    "volumeSnapshotRef": {
                        "apiVersion": format!("{GROUP}/v1"), "kind": "VolumeSnapshot",
                        "name": name, "namespace": namespace, "uid": uid,
                    },
                },
                "status": {
                    "creationTime": i64::try_from(created_ns).unwrap_or(i64::MAX),
                    "readyToUse": true,
                    "restoreSize": info.size,
                    "snapshotHandle": info.id.0,
                },
            });
            with(store, |s| {
                // The snapshot may have been deleted meanwhile: then the content is an orphan
                // the next pass deletes.
                match s.create_object(content) {
                    Ok(_) => {}
                    Err(e) if e.code == axum::http::StatusCode::CONFLICT => {}
                    Err(e) => return Err(StepError::from(e)),
                }
                set_status(
                    s,
                    (GROUP, "volumesnapshots"),
                    &namespace,
                    &name,
                    json!({
                        "boundVolumeSnapshotContentName": content_name,
                        "creationTime": info.created_at.round(jiff::Unit::Second).unwrap_or(info.created_at).to_string(),
                        "readyToUse": true,
                        "restoreSize": info.size.to_string(),
                    }),
                )
            })
            .ok_or_else(gone)?
        }
        Work::PreBound {
            namespace,
            name,
            uid,
            content,
            handle,
        } => {
            let info = match disks.get_snapshot(&SnapshotId(handle.clone())).await {
                Ok(info) => info,
                Err(e) => {
                    let message = format!("snapshot handle {handle:?} is not usable: {e}");
                    return fail_snapshot(store, &namespace, &name, message);
                }
            };
            with(store, |s| {
                let target = s.target(GROUP, "v1", "volumesnapshotcontents", None)?;
                let mut object = s.get(&target, &content)?;
                object["spec"]["volumeSnapshotRef"]["uid"] = json!(uid);
                object["status"] = json!({
                    "creationTime": i64::try_from(info.created_at.as_nanosecond()).unwrap_or(i64::MAX),
                    "readyToUse": true,
                    "restoreSize": info.size,
                    "snapshotHandle": handle,
                });
                s.update(&target, &content, object)?;
                set_status(
                    s,
                    (GROUP, "volumesnapshots"),
                    &namespace,
                    &name,
                    json!({
                        "boundVolumeSnapshotContentName": content,
                        "creationTime": info.created_at.round(jiff::Unit::Second).unwrap_or(info.created_at).to_string(),
                        "readyToUse": true,
                        "restoreSize": info.size.to_string(),
                    }),
                )
            })
            .ok_or_else(gone)?
        }
        Work::Orphan {
            content,
            handle,
            delete,
        } => {
            if delete {
                if !handle.is_empty() {
                    disks.delete_snapshot(&SnapshotId(handle)).await?;
                }
                with(store, |s| {
                    let target = s.target(GROUP, "v1", "volumesnapshotcontents", None)?;
                    match s.delete(&target, &content, &json!({})) {
                        Ok(_) => Ok(()),
                        Err(e) if e.code == axum::http::StatusCode::NOT_FOUND => Ok(()),
                        Err(e) => Err(StepError::from(e)),
                    }
                })
                .ok_or_else(gone)?
            } else {
                // Retained: the data stays; mark it so it is not visited again.
                with(store, |s| {
                    set_status(
                        s,
                        (GROUP, "volumesnapshotcontents"),
                        "",
                        &content,
                        json!({"orphaned": true}),
                    )
                })
                .ok_or_else(gone)?
            }
        }
        Work::Provision {
            namespace,
            name,
            uid,
            handle,
            size,
        } => {
            let disk = format!("pvc-{uid}");
            stowage_disk::disk_from_snapshot(disks, &SnapshotId(handle), &disk, size, PIECE)
                .await?;
            with(store, |s| {
                let pvc_target = s.target("", "v1", "persistentvolumeclaims", Some(&namespace))?;
                let mut pvc = s.get(&pvc_target, &name)?;
                if pvc.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid.as_str()) {
                    return Ok(()); // replaced meanwhile
                }
                let storage = pvc
                    .pointer("/spec/resources/requests/storage")
                    .cloned()
                    .unwrap_or_else(|| json!(size.to_string()));
                let access = pvc
                    .pointer("/spec/accessModes")
                    .cloned()
                    .unwrap_or_else(|| json!(["ReadWriteOnce"]));
                let pv = json!({
                    "apiVersion": "v1", "kind": "PersistentVolume",
                    "metadata": {
                        "name": disk,
                        "annotations": {"pv.kubernetes.io/provisioned-by": LOCAL_CSI_DRIVER},
                    },
                    "spec": {
                        "capacity": {"storage": storage},
                        "accessModes": access,
                        "persistentVolumeReclaimPolicy": "Delete",
                        "storageClassName": pvc.pointer("/spec/storageClassName").cloned().unwrap_or(json!("")),
                        "volumeMode": pvc.pointer("/spec/volumeMode").cloned().unwrap_or(json!("Filesystem")),
                        "claimRef": {
                            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                            "namespace": namespace, "name": name, "uid": uid,
                        },
                        "csi": {"driver": LOCAL_CSI_DRIVER, "volumeHandle": disk, "fsType": "ext4"},
                    },
                    "status": {"phase": "Bound"},
                });
                match s.create_object(pv) {
                    Ok(_) => {}
                    Err(e) if e.code == axum::http::StatusCode::CONFLICT => {}
                    Err(e) => return Err(StepError::from(e)),
                }
                pvc["spec"]["volumeName"] = json!(disk);
                pvc["status"] = json!({"phase": "Bound", "accessModes": access, "capacity": {"storage": storage}});
                s.update(&pvc_target, &name, pvc)?;
                Ok(())
            })
            .ok_or_else(gone)?
        }
    }
}
