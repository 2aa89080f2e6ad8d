//! Collection: every object a backup instance's scope covers, read from a cluster and handed
//! to a sink one at a time, with the fields the server populates stripped.
//!
//! # How the scope is read
//!
//! - **Namespaces.** [`Namespaces::All`] means the namespaces that exist when the collection
//!   runs (so ones created after the instance was defined are included);
//!   [`Namespaces::List`] only those named. `exclude_namespaces` then removes some.
//!   `kube-system`, `kube-public` and `kube-node-lease` are never collected unless named in
//!   the list. The `Namespace` object of every included namespace is collected (restore needs
//!   it), whatever the label selectors say.
//! - **Label selectors.** Each selector is a conjunction (`app=db,tier=data`); an object is
//!   collected when it matches any of them. They apply to every object except namespaces.
//!   One selector is sent to the server; several are checked here, on each page.
//! - **Secrets** (`include_secrets`): core `Secret` objects on or off.
//! - **Volumes** (`include_volumes`): PVCs and PVs on or off. A PV is collected when a
//!   collected PVC is bound to it (`spec.volumeName`), even with cluster-scoped resources
//!   off, since restoring the claim needs it; PVs nobody in scope claims are not collected.
//! - **Cluster-scoped resources** (`include_cluster_scoped`): on, every cluster-scoped object
//!   matching the selectors. Off, none, except the namespaces, PVs above and the CRDs of
//!   custom resources that were collected (restoring a custom resource needs its CRD).
//!
//! Types that are derived or ephemeral are never collected: events, nodes, endpoints and
//! endpoint slices, leases, component statuses, the review and metrics APIs, and CSI
//! VolumeSnapshots and VolumeSnapshotContents (a recovery point records its own). Types that
//! cannot be listed are skipped.
//!
//! # Bounded memory
//!
//! Lists are paged (`limit`/`continue`, [`CollectOptions::page_size`]) and each object goes to
//! the sink before the next page is read, so memory holds one page plus two small sets: the
//! volume names of collected claims and the custom-resource types seen. Namespaced types are
//! read before cluster-scoped ones so those sets are complete when PVs and CRDs come.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error as StdError;

use kube::api::{Api, DynamicObject, ListParams};
use kube::core::ApiResource;
use kube::discovery::{ApiCapabilities, Discovery, Scope as KubeScope, verbs};
use serde_json::Value;
use stowage_schemas::domain::{Namespaces, Scope};

use stowage_schemas::selector::LabelSelector;

/// Namespaces never collected unless a scope names them.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// `(group, plural)` of types never collected; `*` matches every plural of the group.
const NEVER_COLLECTED: &[(&str, &str)] = &[
    ("", "events"),
    ("events.k8s.io", "events"),
    ("", "nodes"),
    ("", "endpoints"),
    ("discovery.k8s.io", "endpointslices"),
    ("coordination.k8s.io", "leases"),
    ("", "componentstatuses"),
    ("", "bindings"),
    ("metrics.k8s.io", "*"),
    ("authentication.k8s.io", "*"),
    ("authorization.k8s.io", "*"),
    // A recovery point's own snapshot handles, recorded in its manifest; a restored copy would
    // bind a content of another time.
    ("snapshot.storage.k8s.io", "volumesnapshots"),
    ("snapshot.storage.k8s.io", "volumesnapshotcontents"),
];

/// One collected object, ready to be written to the vault.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedObject {
    /// The type it was read as (preferred version of its group).
    pub resource: ApiResource,
    /// Namespace; none for cluster-scoped objects.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// The object as JSON, with `apiVersion` and `kind` set and server-populated fields
    /// stripped (see [`strip_server_fields`]).
    pub object: Value,
}

/// Tuning of a collection.
#[derive(Debug, Clone)]
pub struct CollectOptions {
    /// Objects per list request; memory holds about one page.
    pub page_size: u32,
}

impl Default for CollectOptions {
    fn default() -> Self {
        Self { page_size: 250 }
    }
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectSummary {
    /// Objects handed to the sink, by `kind.group` (`Deployment.apps`, `ConfigMap`).
    pub objects_by_type: BTreeMap<String, usize>,
    /// List requests made.
    pub pages: usize,
}

impl CollectSummary {
    /// Objects handed to the sink in all.
    pub fn objects(&self) -> usize {
        self.objects_by_type.values().sum()
    }
}

/// Why a collection stopped.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The scope cannot be applied (a malformed label selector). Retrying cannot help.
    #[error("invalid backup scope: {0}")]
    InvalidScope(String),
    /// Discovering the cluster's resource types failed.
    #[error("discovering the cluster's resource types failed: {0}")]
    Discovery(#[source] kube::Error),
    /// Listing one resource type failed.
    #[error("listing {resource} failed: {source}")]
    List {
        /// `kind.group` of the type.
        resource: String,
        /// What the client reported.
        #[source]
        source: kube::Error,
    },
    /// The sink refused an object.
    #[error("the sink refused {object}: {source}")]
    Sink {
        /// `kind namespace/name` of the object.
        object: String,
        /// What the sink reported.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

impl CollectError {
    /// Whether a later attempt may succeed: connection failures, server errors, throttling
    /// and expired continue tokens are transient; a bad scope or a refused request is not.
    /// Sink errors count as transient (the vault's storage failing); a sink that fails
    /// permanently should say so to its caller itself.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::InvalidScope(_) => false,
            Self::Discovery(e) | Self::List { source: e, .. } => match e {
                kube::Error::Api(status) => {
                    status.code >= 500 || status.code == 429 || status.code == 410
                }
                _ => true,
            },
            Self::Sink { .. } => true,
        }
    }
}

/// Collects every object `scope` covers and hands each to `sink`, in order: namespaces,
/// namespaced types, cluster-scoped types. See the module docs for how the scope is read.
pub async fn collect<F, Fut, E>(
    client: &kube::Client,
    scope: &Scope,
    sink: F,
) -> Result<CollectSummary, CollectError>
where
    F: FnMut(CollectedObject) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    collect_with_options(client, scope, &CollectOptions::default(), sink).await
}

/// [`collect`] with explicit options.
#[tracing::instrument(skip_all, fields(page_size = options.page_size))]
pub async fn collect_with_options<F, Fut, E>(
    client: &kube::Client,
    scope: &Scope,
    options: &CollectOptions,
    mut sink: F,
) -> Result<CollectSummary, CollectError>
where
    F: FnMut(CollectedObject) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    let filter = ScopeFilter::new(scope)?;
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(CollectError::Discovery)?;
    let mut types: Vec<(ApiResource, ApiCapabilities)> = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .filter(|(ar, caps)| {
            caps.supports_operation(verbs::LIST)
                && !NEVER_COLLECTED
                    .iter()
                    .any(|(g, p)| *g == ar.group && (*p == "*" || *p == ar.plural))
        })
        .collect();
    // Namespaced types before cluster-scoped ones; otherwise discovery order, made stable.
    types.sort_by_key(|(ar, caps)| {
        (
            caps.scope == KubeScope::Cluster,
            ar.group.clone(),
            ar.plural.clone(),
        )
    });

    let mut run = Run {
        client,
        filter: &filter,
        options,
        summary: CollectSummary::default(),
        claimed_volumes: BTreeSet::new(),
        collected_types: BTreeSet::new(),
        namespaces: BTreeSet::new(),
    };

    // Namespaces first: they decide what the namespaced lists keep.
    let namespace_type = types
        .iter()
        .find(|(ar, _)| ar.group.is_empty() && ar.plural == "namespaces")
        .map(|(ar, _)| ar.clone())
        .unwrap_or_else(|| ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&()));
    run.list_type(&namespace_type, None, &mut sink).await?;

    for (ar, caps) in &types {
        if ar.group.is_empty() && ar.plural == "namespaces" {
            continue;
        }
        let cluster_scoped = caps.scope == KubeScope::Cluster;
        if !filter.type_included(ar)
            || (cluster_scoped && !scope.include_cluster_scoped && !follows_others(ar))
        {
            continue;
        }
        match (caps.scope == KubeScope::Namespaced, &scope.namespaces) {
            (true, Namespaces::List { .. }) => {
                let namespaces: Vec<String> = run.namespaces.iter().cloned().collect();
                for ns in &namespaces {
                    run.list_type(ar, Some(ns), &mut sink).await?;
                }
            }
            _ => run.list_type(ar, None, &mut sink).await?,
        }
    }
    tracing::info!(
        objects = run.summary.objects(),
        pages = run.summary.pages,
        "collection finished"
    );
    Ok(run.summary)
}

/// The scope, prepared for checking objects.
struct ScopeFilter {
    scope: Scope,
    selectors: Vec<LabelSelector>,
}

impl ScopeFilter {
    fn new(scope: &Scope) -> Result<Self, CollectError> {
        let selectors = scope
            .label_selectors
            .iter()
            .map(|s| LabelSelector::parse(s).map_err(|e| CollectError::InvalidScope(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            scope: scope.clone(),
            selectors: selectors.into_iter().filter(|s| !s.is_empty()).collect(),
        })
    }

    fn namespace_included(&self, name: &str) -> bool {
        let listed = match &self.scope.namespaces {
            Namespaces::All => !SYSTEM_NAMESPACES.contains(&name),
            Namespaces::List { names } => names.iter().any(|n| n == name),
        };
        listed && !self.scope.exclude_namespaces.iter().any(|n| n == name)
    }

    fn type_included(&self, ar: &ApiResource) -> bool {
        let core = ar.group.is_empty();
        if core && ar.plural == "secrets" {
            return self.scope.include_secrets;
        }
        if core && (ar.plural == "persistentvolumeclaims" || ar.plural == "persistentvolumes") {
            return self.scope.include_volumes;
        }
        true
    }

    fn labels_match(&self, object: &Value) -> bool {
        self.selectors.is_empty() || self.selectors.iter().any(|s| s.matches_object(object))
    }

    /// The selector worth sending to the server: only when there is exactly one.
    fn server_selector(&self) -> Option<String> {
        match self.selectors.as_slice() {
            [only] => Some(only.to_string()),
            _ => None,
        }
    }
}

/// The state of one collection.
struct Run<'a> {
    client: &'a kube::Client,
    filter: &'a ScopeFilter,
    options: &'a CollectOptions,
    summary: CollectSummary,
    /// `spec.volumeName` of every collected PVC.
    claimed_volumes: BTreeSet<String>,
    /// `plural.group` of every type with a collected object (CRD names have this form).
    collected_types: BTreeSet<String>,
    /// Included namespaces.
    namespaces: BTreeSet<String>,
}

impl Run<'_> {
    /// Lists one type (in one namespace, or everywhere) page by page, handing on what is in scope.
    async fn list_type<F, Fut, E>(
        &mut self,
        ar: &ApiResource,
        namespace: Option<&str>,
        sink: &mut F,
    ) -> Result<(), CollectError>
    where
        F: FnMut(CollectedObject) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, ar),
            None => Api::all_with(self.client.clone(), ar),
        };
        let mut params = ListParams::default().limit(self.options.page_size);
        // Namespaces, PVs and CRDs can be in scope without matching the selectors.
        if !follows_others(ar)
            && let Some(selector) = self.filter.server_selector()
        {
            params = params.labels(&selector);
        }
        loop {
            let page = api
                .list(&params)
                .await
                .map_err(|source| CollectError::List {
                    resource: type_name(ar),
                    source,
                })?;
            self.summary.pages += 1;
            let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
            for item in page.items {
                let mut object = serde_json::to_value(&item).expect("a listed object serializes");
                object["apiVersion"] = Value::String(ar.api_version.clone());
                object["kind"] = Value::String(ar.kind.clone());
                if !self.in_scope(ar, &object) {
                    continue;
                }
                self.remember(ar, &object);
                strip_server_fields(&mut object);
                let collected = CollectedObject {
                    resource: ar.clone(),
                    namespace: item.metadata.namespace.clone(),
                    name: item.metadata.name.clone().unwrap_or_default(),
                    object,
                };
                let label = format!(
                    "{} {}/{}",
                    ar.kind,
                    collected.namespace.as_deref().unwrap_or(""),
                    collected.name
                );
                sink(collected).await.map_err(|e| CollectError::Sink {
                    object: label,
                    source: e.into(),
                })?;
                *self
                    .summary
                    .objects_by_type
                    .entry(type_name(ar))
                    .or_default() += 1;
            }
            match next {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(()),
            }
        }
    }

    fn in_scope(&self, ar: &ApiResource, object: &Value) -> bool {
        let text = |path: &str| object.pointer(path).and_then(Value::as_str);
        let core = ar.group.is_empty();
        if core && ar.plural == "namespaces" {
            return text("/metadata/name").is_some_and(|n| self.filter.namespace_included(n));
        }
        if let Some(ns) = text("/metadata/namespace") {
            return self.namespaces.contains(ns) && self.filter.labels_match(object);
        }
        // Cluster-scoped.
        if core && ar.plural == "persistentvolumes" {
            return text("/metadata/name").is_some_and(|n| self.claimed_volumes.contains(n));
        }
        let is_crd = ar.group == "apiextensions.k8s.io" && ar.plural == "customresourcedefinitions";
        if is_crd && text("/metadata/name").is_some_and(|n| self.collected_types.contains(n)) {
            return true;
        }
        self.filter.scope.include_cluster_scoped && self.filter.labels_match(object)
    }

    fn remember(&mut self, ar: &ApiResource, object: &Value) {
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if ar.group.is_empty() && ar.plural == "namespaces" {
            self.namespaces.insert(name.to_owned());
        }
        if ar.group.is_empty()
            && ar.plural == "persistentvolumeclaims"
            && let Some(volume) = object.pointer("/spec/volumeName").and_then(Value::as_str)
        {
            self.claimed_volumes.insert(volume.to_owned());
        }
        if !ar.group.is_empty() {
            self.collected_types
                .insert(format!("{}.{}", ar.plural, ar.group));
        }
    }
}

/// Types whose objects can be in scope because of other objects, not their own labels:
/// namespaces (of included namespaced objects), PVs (of collected claims), CRDs (of collected
/// custom resources).
fn follows_others(ar: &ApiResource) -> bool {
    matches!(
        (ar.group.as_str(), ar.plural.as_str()),
        ("", "namespaces" | "persistentvolumes")
            | ("apiextensions.k8s.io", "customresourcedefinitions")
    )
}

fn type_name(ar: &ApiResource) -> String {
    if ar.group.is_empty() {
        ar.kind.clone()
    } else {
        format!("{}.{}", ar.kind, ar.group)
    }
}

/// The `metadata` fields the server populates, which [`strip_server_fields`] removes.
pub const SERVER_METADATA_FIELDS: [&str; 8] = [
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Removes what the server populates, so the object can be created again elsewhere:
/// `metadata.uid`, `resourceVersion`, `creationTimestamp`, `generation`, `managedFields`,
/// `selfLink`, `deletionTimestamp`, `deletionGracePeriodSeconds` and `status`; a PV's
/// `spec.claimRef.uid`/`resourceVersion` (they name the old claim); a Service's allocated
/// `spec.clusterIP(s)` (headless `None` is kept).
///
/// Kept on purpose: a PVC's `spec.volumeName` and a PV's `spec` (CSI driver and volume
/// handle, claim reference by namespace and name), which restore remaps to new disks;
/// annotations and owner references, which restore decides about.
pub fn strip_server_fields(object: &mut Value) {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in SERVER_METADATA_FIELDS {
            metadata.remove(field);
        }
    }
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let core = object.get("apiVersion").and_then(Value::as_str) == Some("v1");
    if let Some(body) = object.as_object_mut() {
        body.remove("status");
    }
    match (core, kind.as_str()) {
        (true, "PersistentVolume") => {
            if let Some(claim) = object
                .pointer_mut("/spec/claimRef")
                .and_then(Value::as_object_mut)
            {
                claim.remove("uid");
                claim.remove("resourceVersion");
            }
        }
        (true, "Service") => {
            if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut)
                && spec.get("clusterIP").and_then(Value::as_str) != Some("None")
            {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stripping_keeps_what_restore_needs() {
        let mut pv = json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "pv", "uid": "u", "resourceVersion": "7", "creationTimestamp": "t",
                         "generation": 1, "managedFields": [], "labels": {"a": "b"}},
            "spec": {"csi": {"driver": "d", "volumeHandle": "h"},
                     "claimRef": {"namespace": "n", "name": "c", "uid": "old", "resourceVersion": "3"}},
            "status": {"phase": "Bound"},
        });
        strip_server_fields(&mut pv);
        assert_eq!(
            pv,
            json!({
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": "pv", "labels": {"a": "b"}},
                "spec": {"csi": {"driver": "d", "volumeHandle": "h"}, "claimRef": {"namespace": "n", "name": "c"}},
            })
        );

        let mut headless = json!({"apiVersion": "v1", "kind": "Service", "metadata": {}, "spec": {"clusterIP": "None"}});
        strip_server_fields(&mut headless);
        assert_eq!(headless["spec"]["clusterIP"], "None");
        let mut allocated = json!({"apiVersion": "v1", "kind": "Service", "metadata": {},
                                   "spec": {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"], "ports": []}});
        strip_server_fields(&mut allocated);
        assert_eq!(allocated["spec"], json!({"ports": []}));
    }

    #[test]
    fn system_namespaces_need_naming() {
        let all = ScopeFilter::new(&Scope::default()).unwrap();
        assert!(all.namespace_included("shop"));
        assert!(!all.namespace_included("kube-system"));
        let listed = ScopeFilter::new(&Scope {
            namespaces: Namespaces::List {
                names: vec!["kube-system".into(), "shop".into()],
            },
            exclude_namespaces: vec!["shop".into()],
            ..Scope::default()
        })
        .unwrap();
        assert!(listed.namespace_included("kube-system"));
        assert!(!listed.namespace_included("shop"), "excludes win");
        assert!(!listed.namespace_included("blog"));
    }

    #[test]
    fn a_malformed_selector_is_a_permanent_error() {
        let scope = Scope {
            label_selectors: vec!["app in (x".into()],
            ..Scope::default()
        };
        let error = ScopeFilter::new(&scope).err().unwrap();
        assert!(!error.is_transient());
    }
}
