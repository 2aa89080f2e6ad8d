//! The objects of a restore: which are restored and how they are changed for the target
//! (namespace mapping, owner references, what binds them to the source cluster), and how each
//! is applied under the existing-object policy. Cluster-generic work — discovery, reading,
//! creating, merge-patching, waiting for CRDs — is `stowage_cluster::apply`'s.

use std::collections::BTreeSet;

use kube::api::{Api, DynamicObject};
use serde_json::{Value, json};
use stowage_cluster::apply::{
    self, Applied, ClusterApi, WaitError, describe, group_version, name_of, namespace_of,
};
use stowage_cluster::strip_server_fields;
use stowage_runtime::StageError;
use stowage_schemas::jobs::{ExistingPolicy, RestoreOptions};

use super::RestoreRequest;
use super::plan::{PlanAction, PlanEntry, RestoreReport};
use crate::cluster_context::{ClusterContext, apply_error, kube_error};

/// Where the object being applied stands: its wave, what it waits for (described for the
/// target) and whether anything waits for it. Plan entries carry it.
#[derive(Debug, Clone, Default)]
pub(super) struct Position {
    pub(super) wave: u32,
    pub(super) after: Vec<String>,
    pub(super) has_dependents: bool,
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

pub(super) struct Run<'a> {
    pub(super) ctx: &'a ClusterContext,
    pub(super) request: &'a RestoreRequest,
    pub(super) options: &'a RestoreOptions,
    /// The target cluster's API, as discovered (again after CRDs are created).
    pub(super) api: ClusterApi,
    pub(super) report: RestoreReport,
    /// `(group, kind)` of CRDs a dry run would create: their custom resources would be created.
    pub(super) planned_crds: BTreeSet<(String, String)>,
    /// Where the object being applied stands (set before each object).
    pub(super) position: Position,
}

/// The controller owning `object` when it is of a kind its controller recreates (pods,
/// replica sets, jobs, …): the restore leaves it to that controller.
pub(super) fn controller_owner(object: &Value) -> Option<&Value> {
    let kind = object["kind"].as_str().unwrap_or_default();
    if !CONTROLLED_KINDS.contains(&kind) {
        return None;
    }
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
}

/// What the target cluster holds for one object.
pub(super) enum Existing {
    Missing,
    Present(Value),
}

impl Run<'_> {
    /// Whether `object` (as backed up) is in the namespaces the restore asked for.
    pub(super) fn selected(&self, object: &Value) -> bool {
        let core = group_version(object).0.is_empty();
        if core && object["kind"] == "Namespace" {
            self.namespace_included(&name_of(object))
        } else {
            namespace_of(object).is_none_or(|ns| self.namespace_included(&ns))
        }
    }

    /// `key` as the target will know it (namespaces mapped), for messages and the plan.
    pub(super) fn describe_key(&self, key: &super::graph::ObjectKey) -> String {
        let mut key = key.clone();
        if key.group.is_empty() && key.kind == "Namespace" {
            key.name = self.map_namespace(&key.name);
        }
        if let Some(ns) = &key.namespace {
            key.namespace = Some(self.map_namespace(ns));
        }
        key.to_string()
    }

    /// Sets the disk of the plan's last entry (the claim or volume just applied).
    pub(super) fn note_disk(&mut self, disk: String) {
        if let Some(entry) = self.report.plan.last_mut() {
            entry.disk = Some(disk);
        }
    }

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

    pub(super) fn plan(&mut self, action: PlanAction, object: &Value, note: Option<String>) {
        if action == PlanAction::Conflict
            && let Some(note) = &note
        {
            self.report
                .warnings
                .push(format!("{}: {note}", describe(object)));
        }
        self.report.plan.push(PlanEntry {
            action,
            api_version: object["apiVersion"].as_str().unwrap_or_default().to_owned(),
            kind: object["kind"].as_str().unwrap_or_default().to_owned(),
            namespace: namespace_of(object),
            name: name_of(object),
            note,
            wave: self.position.wave,
            after: self.position.after.clone(),
            disk: None,
        });
    }

    /// Filters, maps and cleans a backed-up object for the target; `None` when it is not
    /// restored (out of the namespaces asked for), after planning it as skipped when that is
    /// worth saying (controller-owned objects).
    pub(super) fn prepare(&mut self, mut object: Value) -> Option<Value> {
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let core = group_version(&object).0.is_empty();
        if !self.selected(&object) {
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
        if let Some(owner) = controller_owner(&object) {
            let note = format!(
                "owned by {} {}; its controller recreates it",
                owner["kind"].as_str().unwrap_or_default(),
                owner["name"].as_str().unwrap_or_default()
            );
            self.plan(PlanAction::Skip, &object, Some(note));
            return None;
        }
        object["metadata"]
            .as_object_mut()?
            .remove("ownerReferences");
        if core
            && kind == "Pod"
            && let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut)
        {
            // The source's node may not exist here; let the scheduler choose.
            spec.remove("nodeName");
        }
        Some(object)
    }

    /// What the target holds for `object`; `None` when its type is not served (planned).
    pub(super) async fn existing(
        &mut self,
        object: &Value,
    ) -> Result<Option<(Api<DynamicObject>, Existing)>, StageError> {
        let Some(api) = self.api.api_for(object) else {
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
        let current = apply::current(&api, object).await.map_err(|e| {
            kube_error(
                format!(
                    "reading {} from the target cluster failed",
                    describe(object)
                ),
                e,
            )
        })?;
        let existing = match current {
            None => Existing::Missing,
            Some(current) => Existing::Present(current),
        };
        Ok(Some((api, existing)))
    }

    /// Applies one prepared object per the existing-object policy; `patch_body` overrides what
    /// an existing object is patched with. Plans and answers the action taken.
    pub(super) async fn apply_with(
        &mut self,
        object: Value,
        patch_body: Option<Value>,
    ) -> Result<PlanAction, StageError> {
        let Some((api, existing)) = self.existing(&object).await? else {
            return Ok(PlanAction::Conflict);
        };
        let (action, note) = match existing {
            Existing::Missing if self.options.dry_run => {
                self.note_planned_crd(&object);
                (PlanAction::Create, None)
            }
            Existing::Missing => match apply::create(&api, &object).await.map_err(apply_error)? {
                Applied::Done => (PlanAction::Create, None),
                // Created meanwhile (by a controller, or a concurrent attempt).
                Applied::AlreadyExists => (PlanAction::Skip, Some("created meanwhile".into())),
                Applied::Refused(why) => (PlanAction::Conflict, Some(why)),
            },
            Existing::Present(current) => match self.options.existing {
                ExistingPolicy::Skip => (PlanAction::Skip, Some("exists".into())),
                ExistingPolicy::Patch => {
                    let body = patch_body.unwrap_or_else(|| object.clone());
                    if apply::merged(&current, &body) == current {
                        (PlanAction::Skip, Some("exists and already matches".into()))
                    } else if self.options.dry_run {
                        (PlanAction::Patch, None)
                    } else {
                        match apply::merge_patch(&api, &object, &body)
                            .await
                            .map_err(apply_error)?
                        {
                            Applied::Done | Applied::AlreadyExists => (PlanAction::Patch, None),
                            Applied::Refused(why) => (PlanAction::Conflict, Some(why)),
                        }
                    }
                }
            },
        };
        self.plan(action, &object, note);
        Ok(action)
    }

    pub(super) async fn apply(&mut self, object: Value) -> Result<PlanAction, StageError> {
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

    /// Waits until every CRD in `names` is `Established`, then discovers the API again so
    /// their custom resources resolve.
    pub(super) async fn wait_established(&mut self, names: &[String]) -> Result<(), StageError> {
        let client = self.api.client().clone();
        apply::wait_established(&client, names, self.ctx.crd_established_timeout)
            .await
            .map_err(|e| match e {
                WaitError::Api { name, source } => kube_error(
                    format!("watching CRD {name} until it is Established failed"),
                    source,
                ),
                timeout @ WaitError::Timeout { .. } => {
                    StageError::transient(format!("{timeout}; the restore will be retried"))
                }
            })?;
        self.api = discover(client).await?;
        Ok(())
    }
}

impl Run<'_> {
    /// Waits until the claims `(namespace, name)` are `Bound`; one that is not in time is a
    /// warning naming it (the workloads after it bind it when it is).
    pub(super) async fn wait_bound(
        &mut self,
        claims: &[(String, String)],
    ) -> Result<(), StageError> {
        let client = self.api.client().clone();
        let timeout = self.ctx.pvc_bound_timeout;
        for (ns, name, why) in apply::wait_bound(&client, claims, timeout).await {
            let warning = format!(
                "PVC {ns}/{name} was not Bound to its restored volume within {}s ({why}); what \
                 mounts it was restored anyway and waits for it: check the claim's events",
                timeout.as_secs()
            );
            tracing::warn!("{warning}");
            self.report.warnings.push(warning);
        }
        Ok(())
    }
}

/// The target cluster's API, discovered.
pub(super) async fn discover(client: kube::Client) -> Result<ClusterApi, StageError> {
    ClusterApi::discover(client).await.map_err(|e| {
        kube_error(
            "discovering the target cluster's resource types failed".into(),
            e,
        )
    })
}
