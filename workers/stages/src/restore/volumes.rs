//! The volumes of a restore: each restored claim gets a new PV on a new disk — filled from an
//! operational snapshot, or adopted from hydration's staging disk — never the source's; a
//! claim whose snapshot is a CSI VolumeSnapshot gets it as its `dataSource`, and the cluster's
//! CSI driver provisions the new volume.

use std::collections::BTreeMap;

use futures::{StreamExt as _, TryStreamExt as _};
use serde_json::{Map, Value, json};
use stowage_cluster::apply::{name_of, namespace_of};
use stowage_disk::SnapshotId;
use stowage_runtime::StageError;

use super::objects::{Existing, Position, Run};
use super::plan::PlanAction;
use super::{RESTORE_ID_ANNOTATION, RESTORE_ID_LABEL, SOURCE_VOLUME_ANNOTATION};
use crate::cluster_context::{csi_error, disk_safe_name, label_value};
use stowage_schemas::domain::CsiSnapshot;

/// Where one restored claim's data comes from.
#[derive(Debug, Clone)]
pub(super) enum VolumeOrigin {
    /// Fill a new disk from this operational snapshot.
    Snapshot { snapshot: SnapshotId, size: u64 },
    /// Adopt this staging disk.
    Disk { disk: String },
    /// Provision through the cluster's CSI driver from this VolumeSnapshot (`dataSource`).
    Csi(CsiSnapshot),
}

/// Annotations of the source cluster's volume binding, dropped from restored claims.
const BINDING_ANNOTATIONS: &[&str] = &[
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.kubernetes.io/selected-node",
];

impl Run<'_> {
    /// The claims of one wave, each with its position (see "Volumes" in the module doc):
    /// answers the claims created bound to a new PV that something waits for, `(namespace,
    /// name)` in the target, for the wave to wait until they are Bound.
    pub(super) async fn restore_claims(
        &mut self,
        claims: Vec<(Value, Position)>,
        source_pvs: &BTreeMap<String, Value>,
        origins: &BTreeMap<(String, String), (String, VolumeOrigin)>,
    ) -> Result<Vec<(String, String)>, StageError> {
        let mut to_bind = Vec::new();
        // Those that get a new volume wait for their disks.
        let mut pending = Vec::new();
        let mut from_snapshots = Vec::new();
        for (object, position) in claims {
            self.position = position.clone();
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
                (Existing::Missing, Some((_, VolumeOrigin::Csi(csi)))) => {
                    from_snapshots.push((claim, source_ns.clone(), csi.clone(), position));
                }
                (Existing::Missing, Some((volume_id, origin))) => {
                    let pv = source_pv.and_then(|n| source_pvs.get(&n).cloned());
                    pending.push((claim, pv, volume_id.clone(), origin.clone(), position));
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
                    let provisioned = match claim
                        .pointer("/spec/storageClassName")
                        .and_then(Value::as_str)
                    {
                        Some(class) => format!("new, empty: provisioned by storage class {class}"),
                        None => "new, empty: provisioned by the default storage class".to_owned(),
                    };
                    if self.apply(claim).await? == PlanAction::Create {
                        self.note_disk(provisioned);
                    }
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
        for (claim, source_ns, csi, position) in from_snapshots {
            self.position = position;
            self.restore_from_volume_snapshot(claim, &source_ns, &csi)
                .await?;
        }
        if pending.is_empty() {
            return Ok(to_bind);
        }

        // The disks, in parallel.
        let disks = self.ctx.disks.clone();
        let dry_run = self.options.dry_run;
        let restore_id = self.request.restore_id.clone();
        let piece = self.ctx.copy_piece_bytes.max(4096) as u64;
        let jobs: Vec<(String, String, VolumeOrigin)> = pending
            .iter()
            .map(|(claim, _, volume_id, origin, _)| {
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
                    VolumeOrigin::Csi(_) => unreachable!("CSI snapshots are restored through a dataSource above"),
                    VolumeOrigin::Snapshot { .. } if dry_run => Ok(Some(name)),
                    VolumeOrigin::Snapshot { snapshot, size } => {
                        let info = stowage_disk::disk_from_snapshot(disks.as_ref(), &snapshot, &name, size, piece)
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
            for (_, _, _, origin, _) in &pending {
                if let VolumeOrigin::Disk { disk } = origin {
                    self.report.adopted_disks.push(disk.clone());
                }
            }
        }
        for ((mut claim, source_pv, _, _, position), disk) in pending.into_iter().zip(made) {
            self.position = position;
            let target_ns = namespace_of(&claim).unwrap_or_default();
            let claim_name = name_of(&claim);
            let pv_name = restored_pv_name(&self.request.restore_id, &target_ns, &claim_name);
            let disk = disk.unwrap_or_else(|| "<new disk>".to_owned());
            let pv = self.new_volume(&pv_name, &claim, source_pv.as_ref(), &disk);
            let action = self.apply(pv).await?;
            if matches!(action, PlanAction::Create) {
                self.report.volumes_restored += 1;
                self.note_disk(disk.clone());
            }
            claim["spec"]["volumeName"] = json!(pv_name);
            if self.apply(claim).await? == PlanAction::Create {
                self.note_disk(disk);
                if self.position.has_dependents {
                    to_bind.push((target_ns, claim_name));
                }
            }
        }
        Ok(to_bind)
    }

    /// Restores `claim` (already mapped) from a CSI VolumeSnapshot: a new claim with the
    /// snapshot as its `dataSource`, which the cluster's CSI driver provisions. The snapshot
    /// must be in the claim's namespace: the recovery point's own when the claim stays in
    /// `source_ns` and it is there, else a pre-bound VolumeSnapshotContent and VolumeSnapshot
    /// made for this restore (ARCHITECTURE.md, "CSI VolumeSnapshots").
    async fn restore_from_volume_snapshot(
        &mut self,
        mut claim: Value,
        source_ns: &str,
        csi: &CsiSnapshot,
    ) -> Result<(), StageError> {
        let target_ns = namespace_of(&claim).unwrap_or_default();
        let claim_name = name_of(&claim);
        let client = self.api.client().clone();
        let own = target_ns == source_ns
            && stowage_cluster::csi::volume_snapshot_exists(&client, &target_ns, &csi.name)
                .await
                .map_err(csi_error)?;
        let snapshot = if own {
            csi.name.clone()
        } else {
            let name = restored_pv_name(&self.request.restore_id, &target_ns, &claim_name);
            let labels = json!({RESTORE_ID_LABEL: label_value(&self.request.restore_id)});
            let content = json!({
                "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "deletionPolicy": "Retain",
                    "driver": csi.driver,
                    "source": {"snapshotHandle": csi.handle},
                    "volumeSnapshotClassName": csi.class,
                    "volumeSnapshotRef": {"name": name, "namespace": target_ns},
                },
            });
            let snapshot = json!({
                "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "metadata": {"name": name, "namespace": target_ns, "labels": labels},
                "spec": {
                    "volumeSnapshotClassName": csi.class,
                    "source": {"volumeSnapshotContentName": name},
                },
            });
            self.apply(content).await?;
            self.apply(snapshot).await?;
            name
        };
        let spec = claim["spec"].as_object_mut().ok_or_else(|| {
            StageError::permanent(format!(
                "PVC {target_ns}/{claim_name} in the resources object has no spec; the resources \
                 object is damaged"
            ))
        })?;
        spec.remove("volumeName");
        spec.remove("dataSourceRef");
        spec.insert(
            "dataSource".into(),
            json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": snapshot}),
        );
        let requested = spec
            .get("resources")
            .and_then(|r| r.pointer("/requests/storage"))
            .and_then(Value::as_str)
            .and_then(stowage_cluster::csi::parse_quantity);
        if requested.is_none_or(|r| r < csi.restore_size) {
            claim["spec"]["resources"]["requests"]["storage"] = json!(csi.restore_size.to_string());
        }
        let action = self.apply(claim).await?;
        if matches!(action, PlanAction::Create) {
            self.report.volumes_restored += 1;
            self.note_disk(format!(
                "new, provisioned by CSI driver {} from VolumeSnapshot {target_ns}/{snapshot}",
                csi.driver
            ));
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
        // The provider's handle of the disk (Azure: the staging disk's ARM id).
        let handle = self
            .ctx
            .disks
            .volume_handle(&stowage_disk::DiskId(disk.to_owned()));
        csi.insert("volumeHandle".into(), json!(handle));
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

#[cfg(test)]
mod tests {
    use super::*;

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
