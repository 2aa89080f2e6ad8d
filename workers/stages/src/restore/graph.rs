//! The order of a restore: a dependency graph built from the objects themselves, cut into
//! waves (topological levels). See "Restore order" in ARCHITECTURE.md for the rules and why.
//!
//! [`GraphBuilder::add`] takes each backed-up object once (one pass over the resources
//! object) and keeps a small entry: its key and what it references. [`GraphBuilder::finish`]
//! resolves the references against the objects that are in the restore, breaks cycles (with a
//! warning naming them) and numbers the waves. Objects of a wave depend only on objects of
//! earlier waves; admission webhooks and APIServices get a last wave of their own.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;
use stowage_cluster::apply::{group_version, name_of, namespace_of};

/// An object as backed up: group, kind, namespace (source namespace, before any mapping) and
/// name. Ordered, so that everything the graph decides is independent of read order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// API group (`""` for the core group).
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Namespace; none when cluster-scoped.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// The key of `object`.
    pub fn of(object: &Value) -> Self {
        Self {
            group: group_version(object).0.to_owned(),
            kind: object["kind"].as_str().unwrap_or_default().to_owned(),
            namespace: namespace_of(object),
            name: name_of(object),
        }
    }

    fn new(group: &str, kind: &str, namespace: Option<&str>, name: &str) -> Self {
        Self {
            group: group.to_owned(),
            kind: kind.to_owned(),
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.kind)?;
        if let Some(ns) = &self.namespace {
            write!(f, "{ns}/")?;
        }
        f.write_str(&self.name)
    }
}

/// Why one object waits for another, weakest first: a cycle is broken at its weakest edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EdgeKind {
    /// `metadata.ownerReferences`: the owner first (the reference itself is dropped on apply).
    Owner,
    /// A binding after the Role or ClusterRole it grants (`roleRef`).
    Rbac,
    /// A claim, volume or StatefulSet after its StorageClass.
    StorageClass,
    /// A workload after the ServiceAccounts, ConfigMaps, Secrets, PVCs and PriorityClass its
    /// pod template references.
    Reference,
    /// A namespaced object after its Namespace.
    Namespace,
    /// A custom resource after its CustomResourceDefinition.
    Crd,
}

impl EdgeKind {
    fn word(self) -> &'static str {
        match self {
            EdgeKind::Owner => "owner reference",
            EdgeKind::Rbac => "role reference",
            EdgeKind::StorageClass => "storage class",
            EdgeKind::Reference => "pod template reference",
            EdgeKind::Namespace => "namespace",
            EdgeKind::Crd => "custom resource definition",
        }
    }
}

/// A reference found in an object, not yet resolved against the restore's objects.
#[derive(Debug, Clone)]
enum Ref {
    /// That object.
    Object(ObjectKey, EdgeKind),
    /// An owner, namespaced like the object or cluster-scoped (its scope is not written).
    Owner {
        group: String,
        kind: String,
        namespace: Option<String>,
        name: String,
    },
    /// The CRD defining `(group, kind)`, if the restore has one.
    CrdOf(String, String),
    /// The claims a StatefulSet's template makes: `<prefix><ordinal>` in `namespace`.
    Claims { namespace: String, prefix: String },
}

/// One dependency of a node.
#[derive(Debug, Clone)]
struct Dep {
    on: usize,
    kind: EdgeKind,
    broken: bool,
}

#[derive(Debug)]
struct Node {
    key: ObjectKey,
    /// Whether the restore applies it (controller-owned objects are left to their controller:
    /// nothing waits for them).
    applied: bool,
    /// Admission webhooks and APIServices: a wave of their own, after every other.
    last: bool,
    refs: Vec<Ref>,
    deps: Vec<Dep>,
    wave: u32,
    has_dependents: bool,
}

/// Collects the objects of a restore, one at a time.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    nodes: Vec<Node>,
    index: BTreeMap<ObjectKey, usize>,
    /// `(group, kind)` → the CRD node defining it.
    crds: BTreeMap<(String, String), usize>,
}

impl GraphBuilder {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `object` (as backed up). `applied` is false for objects the restore plans but does
    /// not apply (controller-owned ones). A second object with the same key is ignored.
    pub fn add(&mut self, object: &Value, applied: bool) {
        let key = ObjectKey::of(object);
        if self.index.contains_key(&key) {
            return;
        }
        let id = self.nodes.len();
        if key.group == "apiextensions.k8s.io"
            && key.kind == "CustomResourceDefinition"
            && let (Some(group), Some(kind)) = (
                object.pointer("/spec/group").and_then(Value::as_str),
                object.pointer("/spec/names/kind").and_then(Value::as_str),
            )
        {
            self.crds.insert((group.to_owned(), kind.to_owned()), id);
        }
        let last = is_last(&key);
        self.nodes.push(Node {
            refs: references(&key, object),
            key: key.clone(),
            applied,
            last,
            deps: Vec::new(),
            wave: 0,
            has_dependents: false,
        });
        self.index.insert(key, id);
    }

    /// Resolves references, breaks cycles and numbers the waves.
    pub fn finish(mut self) -> Graph {
        self.resolve();
        let mut warnings = Vec::new();
        let waves = self.layer(&mut warnings);
        Graph {
            nodes: self.nodes,
            index: self.index,
            waves,
            warnings,
        }
    }

    fn resolve(&mut self) {
        for id in 0..self.nodes.len() {
            let refs = std::mem::take(&mut self.nodes[id].refs);
            let mut deps: BTreeMap<usize, EdgeKind> = BTreeMap::new();
            let mut add = |on: usize, kind: EdgeKind| {
                let strongest = deps.entry(on).or_insert(kind);
                *strongest = (*strongest).max(kind);
            };
            for r in refs {
                match r {
                    Ref::Object(key, kind) => {
                        if let Some(&on) = self.index.get(&key) {
                            add(on, kind);
                        }
                    }
                    Ref::Owner {
                        group,
                        kind,
                        namespace,
                        name,
                    } => {
                        let namespaced = ObjectKey {
                            group: group.clone(),
                            kind: kind.clone(),
                            namespace: namespace.clone(),
                            name: name.clone(),
                        };
                        let cluster = ObjectKey {
                            namespace: None,
                            ..namespaced.clone()
                        };
                        if let Some(&on) = self
                            .index
                            .get(&namespaced)
                            .or_else(|| self.index.get(&cluster))
                        {
                            add(on, EdgeKind::Owner);
                        }
                    }
                    Ref::CrdOf(group, kind) => {
                        if let Some(&on) = self.crds.get(&(group, kind)) {
                            add(on, EdgeKind::Crd);
                        }
                    }
                    Ref::Claims { namespace, prefix } => {
                        let from =
                            ObjectKey::new("", "PersistentVolumeClaim", Some(&namespace), &prefix);
                        for (key, &on) in self.index.range(from..) {
                            if !key.group.is_empty()
                                || key.kind != "PersistentVolumeClaim"
                                || key.namespace.as_deref() != Some(namespace.as_str())
                            {
                                break;
                            }
                            let Some(ordinal) = key.name.strip_prefix(prefix.as_str()) else {
                                break;
                            };
                            if !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()) {
                                add(on, EdgeKind::Reference);
                            }
                        }
                    }
                }
            }
            // Nothing waits for itself, for what is not applied, or for the last wave.
            let kept: Vec<Dep> = deps
                .into_iter()
                .filter(|&(on, _)| on != id && self.nodes[on].applied && !self.nodes[on].last)
                .map(|(on, kind)| Dep {
                    on,
                    kind,
                    broken: false,
                })
                .collect();
            self.nodes[id].deps = kept;
        }
        // An owner that itself references what it owns (a StatefulSet owning the claims of its
        // templates under a retention policy): the reference says what comes first.
        for id in 0..self.nodes.len() {
            let owned_back: Vec<usize> = self.nodes[id]
                .deps
                .iter()
                .enumerate()
                .filter(|(_, d)| {
                    d.kind == EdgeKind::Owner
                        && self.nodes[d.on]
                            .deps
                            .iter()
                            .any(|back| back.on == id && back.kind != EdgeKind::Owner)
                })
                .map(|(i, _)| i)
                .collect();
            for i in owned_back.into_iter().rev() {
                self.nodes[id].deps.remove(i);
            }
        }
        for id in 0..self.nodes.len() {
            for d in self.nodes[id].deps.clone() {
                self.nodes[d.on].has_dependents = true;
            }
        }
    }

    /// Numbers the waves (Kahn's algorithm by levels); answers how many there are.
    fn layer(&mut self, warnings: &mut Vec<String>) -> u32 {
        let n = self.nodes.len();
        // dependents[on] = (dependent, index of the dep in the dependent's list)
        let mut dependents: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
        let mut remaining = vec![0usize; n];
        for (id, node) in self.nodes.iter().enumerate() {
            for (i, d) in node.deps.iter().enumerate() {
                dependents[d.on].push((id, i));
            }
            remaining[id] = node.deps.len();
        }
        // Node ids in key order: every choice below is made in that order.
        let ordered: Vec<usize> = self.index.values().copied().collect();
        let mut placed = vec![false; n];
        let mut to_place = self.nodes.iter().filter(|n| !n.last).count();
        let mut ready: Vec<usize> = ordered
            .iter()
            .copied()
            .filter(|&id| !self.nodes[id].last && remaining[id] == 0)
            .collect();
        let mut wave = 0u32;
        while to_place > 0 {
            if ready.is_empty() {
                if let Some(freed) = self.break_cycle(&ordered, &placed, &mut remaining, warnings) {
                    ready.push(freed);
                }
                continue;
            }
            let mut next = Vec::new();
            for &id in &ready {
                self.nodes[id].wave = wave;
                placed[id] = true;
                to_place -= 1;
            }
            for &id in &ready {
                for &(dependent, i) in &dependents[id] {
                    if self.nodes[dependent].deps[i].broken {
                        continue;
                    }
                    remaining[dependent] -= 1;
                    if remaining[dependent] == 0 {
                        next.push(dependent);
                    }
                }
            }
            next.sort_by(|a, b| self.nodes[*a].key.cmp(&self.nodes[*b].key));
            ready = next;
            wave += 1;
        }
        let others = wave;
        let mut waves = others;
        for node in self.nodes.iter_mut().filter(|n| n.last) {
            node.wave = others;
            waves = others + 1;
        }
        waves
    }

    /// Nothing is ready but objects are left: they hold a cycle. Finds one (from the first
    /// unplaced object by key, following each object's first unplaced dependency by key),
    /// breaks its weakest edge, warns, and answers the object that edge freed if it is ready.
    fn break_cycle(
        &mut self,
        ordered: &[usize],
        placed: &[bool],
        remaining: &mut [usize],
        warnings: &mut Vec<String>,
    ) -> Option<usize> {
        let start = ordered
            .iter()
            .copied()
            .find(|&id| !placed[id] && !self.nodes[id].last)?;
        let mut path = vec![start];
        let mut seen = BTreeMap::from([(start, 0usize)]);
        let cycle = loop {
            let at = *path.last().expect("a path");
            let next = self.nodes[at]
                .deps
                .iter()
                .filter(|d| !d.broken && !placed[d.on])
                .map(|d| d.on)
                .min_by(|a, b| self.nodes[*a].key.cmp(&self.nodes[*b].key))
                .expect("an object that is not ready waits for an unplaced one");
            if let Some(&from) = seen.get(&next) {
                break path[from..].to_vec();
            }
            seen.insert(next, path.len());
            path.push(next);
        };
        // Edges of the cycle: cycle[i] depends on cycle[i + 1] (wrapping).
        let (dependent, i) = (0..cycle.len())
            .map(|k| {
                let (a, b) = (cycle[k], cycle[(k + 1) % cycle.len()]);
                let i = self.nodes[a]
                    .deps
                    .iter()
                    .position(|d| d.on == b && !d.broken)
                    .expect("the edge walked");
                (a, i)
            })
            .min_by(|&(a, i), &(b, j)| {
                (self.nodes[a].deps[i].kind, &self.nodes[a].key)
                    .cmp(&(self.nodes[b].deps[j].kind, &self.nodes[b].key))
            })
            .expect("a cycle has edges");
        let dep = self.nodes[dependent].deps[i].clone();
        self.nodes[dependent].deps[i].broken = true;
        remaining[dependent] -= 1;
        let names: Vec<String> = cycle
            .iter()
            .chain(std::iter::once(&cycle[0]))
            .map(|&id| self.nodes[id].key.to_string())
            .collect();
        let warning = format!(
            "dependency cycle {}: broken at its weakest edge, so {} is restored without waiting \
             for {} ({}); check the order of these objects after the restore",
            names.join(" → "),
            self.nodes[dependent].key,
            self.nodes[dep.on].key,
            dep.kind.word()
        );
        tracing::warn!("{warning}");
        warnings.push(warning);
        (remaining[dependent] == 0).then_some(dependent)
    }
}

/// A restore's objects in waves.
#[derive(Debug)]
pub struct Graph {
    nodes: Vec<Node>,
    index: BTreeMap<ObjectKey, usize>,
    waves: u32,
    warnings: Vec<String>,
}

/// Where one object stands in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeId(usize);

impl NodeId {
    /// Its index: `0..graph.len()`, for a caller's per-object bookkeeping.
    pub fn index(self) -> usize {
        self.0
    }
}

impl Graph {
    /// How many waves.
    pub fn waves(&self) -> u32 {
        self.waves
    }

    /// How many objects.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no objects.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The cycles broken, as warnings naming their objects.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The node of `object` (as backed up), if it was added.
    pub fn node_of(&self, object: &Value) -> Option<NodeId> {
        self.index.get(&ObjectKey::of(object)).copied().map(NodeId)
    }

    /// The node of `key`, if it was added.
    pub fn node(&self, key: &ObjectKey) -> Option<NodeId> {
        self.index.get(key).copied().map(NodeId)
    }

    /// The wave of `node`.
    pub fn wave(&self, node: NodeId) -> u32 {
        self.nodes[node.0].wave
    }

    /// The wave of `key`, if it is in the graph.
    pub fn wave_of(&self, key: &ObjectKey) -> Option<u32> {
        self.node(key).map(|n| self.wave(n))
    }

    /// What `node` waits for (edges not broken), in key order.
    pub fn dependencies(&self, node: NodeId) -> Vec<&ObjectKey> {
        let mut deps: Vec<&ObjectKey> = self.nodes[node.0]
            .deps
            .iter()
            .filter(|d| !d.broken)
            .map(|d| &self.nodes[d.on].key)
            .collect();
        deps.sort();
        deps
    }

    /// Whether anything waits for `node` (so its readiness matters).
    pub fn has_dependents(&self, node: NodeId) -> bool {
        self.nodes[node.0].has_dependents
    }

    /// Every key with its wave, in key order.
    pub fn keys(&self) -> impl Iterator<Item = (&ObjectKey, u32)> {
        self.index.iter().map(|(k, &id)| (k, self.nodes[id].wave))
    }
}

/// Admission webhooks and policies, and APIServices: last (see ARCHITECTURE.md).
fn is_last(key: &ObjectKey) -> bool {
    key.group == "admissionregistration.k8s.io"
        || (key.group == "apiregistration.k8s.io" && key.kind == "APIService")
}

/// Where a kind keeps its pod template's spec.
fn pod_spec<'a>(key: &ObjectKey, object: &'a Value) -> Option<&'a Value> {
    let pointer = match (key.group.as_str(), key.kind.as_str()) {
        ("", "Pod") => "/spec",
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("", "ReplicationController")
        | ("batch", "Job") => "/spec/template/spec",
        ("batch", "CronJob") => "/spec/jobTemplate/spec/template/spec",
        _ => return None,
    };
    object.pointer(pointer)
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn items<'a>(value: &'a Value, field: &str) -> impl Iterator<Item = &'a Value> {
    value
        .get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// What `object` references (see the table in ARCHITECTURE.md).
fn references(key: &ObjectKey, object: &Value) -> Vec<Ref> {
    let mut refs = Vec::new();
    let ns = key.namespace.as_deref();
    let object_ref = |group: &str, kind: &str, namespace: Option<&str>, name: &str, edge| {
        Ref::Object(ObjectKey::new(group, kind, namespace, name), edge)
    };
    if let Some(ns) = ns {
        refs.push(object_ref("", "Namespace", None, ns, EdgeKind::Namespace));
    }
    refs.push(Ref::CrdOf(key.group.clone(), key.kind.clone()));
    for owner in items(&object["metadata"], "ownerReferences") {
        let (Some(api_version), Some(kind), Some(name)) = (
            owner["apiVersion"].as_str(),
            owner["kind"].as_str(),
            owner["name"].as_str(),
        ) else {
            continue;
        };
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        refs.push(Ref::Owner {
            group: group.to_owned(),
            kind: kind.to_owned(),
            namespace: key.namespace.clone(),
            name: name.to_owned(),
        });
    }
    let storage_class = |refs: &mut Vec<Ref>, spec: &Value| {
        if let Some(class) = str_at(spec, "/storageClassName") {
            refs.push(object_ref(
                "storage.k8s.io",
                "StorageClass",
                None,
                class,
                EdgeKind::StorageClass,
            ));
        }
    };
    match (key.group.as_str(), key.kind.as_str()) {
        ("", "PersistentVolumeClaim" | "PersistentVolume") => {
            storage_class(&mut refs, &object["spec"]);
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            if let (Some(kind), Some(name)) = (
                str_at(object, "/roleRef/kind"),
                str_at(object, "/roleRef/name"),
            ) {
                let scope = if kind == "Role" { ns } else { None };
                refs.push(object_ref(
                    "rbac.authorization.k8s.io",
                    kind,
                    scope,
                    name,
                    EdgeKind::Rbac,
                ));
            }
        }
        ("apps", "StatefulSet") => {
            for template in items(&object["spec"], "volumeClaimTemplates") {
                if let (Some(ns), Some(claim)) = (ns, str_at(template, "/metadata/name")) {
                    refs.push(Ref::Claims {
                        namespace: ns.to_owned(),
                        prefix: format!("{claim}-{}-", key.name),
                    });
                }
                storage_class(&mut refs, &template["spec"]);
            }
        }
        _ => {}
    }
    if let (Some(spec), Some(ns)) = (pod_spec(key, object), ns) {
        pod_references(spec, ns, &mut refs);
    }
    refs
}

/// The ServiceAccount, ConfigMaps, Secrets, PVCs and PriorityClass a pod spec references.
fn pod_references(spec: &Value, ns: &str, refs: &mut Vec<Ref>) {
    let mut found: BTreeSet<(&str, &str)> = BTreeSet::new();
    if let Some(account) =
        str_at(spec, "/serviceAccountName").or_else(|| str_at(spec, "/serviceAccount"))
    {
        found.insert(("ServiceAccount", account));
    }
    for secret in items(spec, "imagePullSecrets") {
        if let Some(name) = str_at(secret, "/name") {
            found.insert(("Secret", name));
        }
    }
    for volume in items(spec, "volumes") {
        if let Some(name) = str_at(volume, "/configMap/name") {
            found.insert(("ConfigMap", name));
        }
        if let Some(name) = str_at(volume, "/secret/secretName") {
            found.insert(("Secret", name));
        }
        if let Some(name) = str_at(volume, "/persistentVolumeClaim/claimName") {
            found.insert(("PersistentVolumeClaim", name));
        }
        if let Some(projected) = volume.get("projected") {
            for source in items(projected, "sources") {
                if let Some(name) = str_at(source, "/configMap/name") {
                    found.insert(("ConfigMap", name));
                }
                if let Some(name) = str_at(source, "/secret/name") {
                    found.insert(("Secret", name));
                }
            }
        }
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for container in items(spec, list) {
            for from in items(container, "envFrom") {
                if let Some(name) = str_at(from, "/configMapRef/name") {
                    found.insert(("ConfigMap", name));
                }
                if let Some(name) = str_at(from, "/secretRef/name") {
                    found.insert(("Secret", name));
                }
            }
            for env in items(container, "env") {
                if let Some(name) = str_at(env, "/valueFrom/configMapKeyRef/name") {
                    found.insert(("ConfigMap", name));
                }
                if let Some(name) = str_at(env, "/valueFrom/secretKeyRef/name") {
                    found.insert(("Secret", name));
                }
            }
        }
    }
    for (kind, name) in found {
        refs.push(Ref::Object(
            ObjectKey::new("", kind, Some(ns), name),
            EdgeKind::Reference,
        ));
    }
    if let Some(class) = str_at(spec, "/priorityClassName") {
        refs.push(Ref::Object(
            ObjectKey::new("scheduling.k8s.io", "PriorityClass", None, class),
            EdgeKind::Reference,
        ));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The realistic sets the end-to-end test restores too: a cert-manager-like CRD bundle
    /// with its custom resources, a StatefulSet with volumeClaimTemplates, an operator with a
    /// webhook.
    fn realistic() -> Vec<Value> {
        serde_json::from_str(include_str!("../../tests/fixtures/restore-order.json"))
            .expect("the fixture is JSON")
    }

    /// The graph of `objects` as the restore builds it (source PVs are never applied).
    fn graph(objects: &[Value]) -> Graph {
        let mut builder = GraphBuilder::new();
        for object in objects {
            if object["kind"] != "PersistentVolume" {
                builder.add(object, true);
            }
        }
        builder.finish()
    }

    fn key(group: &str, kind: &str, ns: Option<&str>, name: &str) -> ObjectKey {
        ObjectKey::new(group, kind, ns, name)
    }

    fn wave(g: &Graph, group: &str, kind: &str, ns: Option<&str>, name: &str) -> u32 {
        g.wave_of(&key(group, kind, ns, name))
            .unwrap_or_else(|| panic!("{kind} {name} is in the graph"))
    }

    #[test]
    fn realistic_sets_come_in_waves() {
        let g = graph(&realistic());
        assert!(g.warnings().is_empty(), "{:?}", g.warnings());
        let w = |group, kind, ns, name| wave(&g, group, kind, ns, name);
        // Wave 0: what depends on nothing here.
        for (group, kind, name) in [
            ("", "Namespace", "payments"),
            ("", "Namespace", "db"),
            (
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                "certificates.cert-manager.io",
            ),
            (
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                "widgets.ops.example.com",
            ),
            ("storage.k8s.io", "StorageClass", "fast"),
            ("rbac.authorization.k8s.io", "ClusterRole", "operator"),
        ] {
            assert_eq!(w(group, kind, None, name), 0, "{kind} {name}");
        }
        // cert-manager: CRD → custom resources → the Secret a Certificate owns → the
        // Deployment mounting it.
        assert_eq!(w("cert-manager.io", "ClusterIssuer", None, "selfsigned"), 1);
        assert_eq!(
            w(
                "cert-manager.io",
                "Certificate",
                Some("payments"),
                "api-tls"
            ),
            1
        );
        assert_eq!(w("", "Secret", Some("payments"), "api-tls"), 2);
        assert_eq!(w("apps", "Deployment", Some("payments"), "api"), 3);
        // The StatefulSet after its claims, account, config and secret; the claims after the
        // namespace and class (their ownerReference to the set does not make a cycle).
        for name in ["data-pg-0", "data-pg-1"] {
            assert_eq!(w("", "PersistentVolumeClaim", Some("db"), name), 1);
        }
        assert_eq!(w("apps", "StatefulSet", Some("db"), "pg"), 2);
        let sts = g
            .node(&key("apps", "StatefulSet", Some("db"), "pg"))
            .unwrap();
        let deps: Vec<String> = g.dependencies(sts).iter().map(|k| k.to_string()).collect();
        assert_eq!(
            deps,
            [
                "ConfigMap db/pg-config",
                "Namespace db",
                "PersistentVolumeClaim db/data-pg-0",
                "PersistentVolumeClaim db/data-pg-1",
                "Secret db/pg-auth",
                "ServiceAccount db/pg",
                "StorageClass fast",
            ]
        );
        let claim = g
            .node(&key("", "PersistentVolumeClaim", Some("db"), "data-pg-0"))
            .unwrap();
        assert!(g.has_dependents(claim), "the set waits for it");
        // The operator: bindings after roles, the Deployment after its account and the
        // projected secret, the custom resource after its CRD, webhooks last of all.
        let op = Some("operator-system");
        let rbac = "rbac.authorization.k8s.io";
        assert_eq!(w(rbac, "ClusterRoleBinding", None, "operator"), 1);
        assert_eq!(w(rbac, "RoleBinding", op, "leader-election"), 2);
        assert_eq!(w("apps", "Deployment", op, "operator"), 2);
        assert_eq!(w("ops.example.com", "Widget", op, "sample"), 1);
        let admission = "admissionregistration.k8s.io";
        assert_eq!(
            w(
                admission,
                "ValidatingWebhookConfiguration",
                None,
                "operator"
            ),
            4
        );
        assert_eq!(
            w(admission, "MutatingWebhookConfiguration", None, "operator"),
            4
        );
        assert_eq!(g.waves(), 5);
        // Every object's dependencies are in earlier waves.
        for (k, wave) in g.keys() {
            let node = g.node(k).unwrap();
            for dep in g.dependencies(node) {
                assert!(g.wave_of(dep).unwrap() < wave, "{k} after {dep}");
            }
        }
    }

    #[test]
    fn the_order_does_not_depend_on_the_read_order() {
        let mut objects = realistic();
        let forward: Vec<(ObjectKey, u32)> = graph(&objects)
            .keys()
            .map(|(k, w)| (k.clone(), w))
            .collect();
        objects.reverse();
        let backward: Vec<(ObjectKey, u32)> = graph(&objects)
            .keys()
            .map(|(k, w)| (k.clone(), w))
            .collect();
        assert_eq!(forward, backward);
    }

    fn config_map(name: &str, owner: Option<(&str, &str)>) -> Value {
        let mut object = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "app"}});
        if let Some((kind, owner)) = owner {
            object["metadata"]["ownerReferences"] =
                json!([{"apiVersion": "v1", "kind": kind, "name": owner, "uid": "u"}]);
        }
        object
    }

    #[test]
    fn a_cycle_is_broken_at_its_weakest_edge_with_a_warning() {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}});
        // A Deployment mounting ConfigMap a, a owned by Secret s, s owned by the Deployment.
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "app"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i",
                "envFrom": [{"configMapRef": {"name": "a"}}]}]}}}});
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "namespace": "app", "ownerReferences":
                [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u"}]}});
        let objects = [
            deployment,
            config_map("a", Some(("Secret", "s"))),
            secret,
            ns,
        ];
        let g = graph(&objects);
        let [warning] = g.warnings() else {
            panic!("one cycle, one warning: {:?}", g.warnings());
        };
        for name in ["ConfigMap app/a", "Secret app/s", "Deployment app/web"] {
            assert!(warning.contains(name), "{warning}");
        }
        // Two owner edges are the weakest; of those, the one of the first dependent by key
        // (the ConfigMap) is broken.
        assert!(
            warning.contains("so ConfigMap app/a is restored without waiting for Secret app/s"),
            "{warning}"
        );
        let w = |kind, name| {
            wave(
                &g,
                if kind == "Deployment" { "apps" } else { "" },
                kind,
                Some("app"),
                name,
            )
        };
        assert_eq!(w("ConfigMap", "a"), 1);
        assert_eq!(w("Deployment", "web"), 2);
        assert_eq!(w("Secret", "s"), 3);
        // The same, whatever the read order.
        let mut reversed = objects.to_vec();
        reversed.reverse();
        assert_eq!(graph(&reversed).warnings(), g.warnings());
    }

    #[test]
    fn objects_owning_each_other_do_not_hang_the_restore() {
        let objects = [
            config_map("b", Some(("ConfigMap", "a"))),
            config_map("a", Some(("ConfigMap", "b"))),
        ];
        let g = graph(&objects);
        assert_eq!(g.warnings().len(), 1, "{:?}", g.warnings());
        assert_eq!(wave(&g, "", "ConfigMap", Some("app"), "a"), 0);
        assert_eq!(wave(&g, "", "ConfigMap", Some("app"), "b"), 1);
    }

    #[test]
    fn nothing_waits_for_what_is_not_restored() {
        // A pod its ReplicaSet owns is left to the controller; a ConfigMap it owns does not
        // wait for it; a reference to an object not in the backup orders nothing.
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "app"},
            "spec": {"serviceAccountName": "missing", "containers": []}});
        let mut builder = GraphBuilder::new();
        builder.add(&pod, false);
        builder.add(&config_map("cache", Some(("Pod", "web-1"))), true);
        let g = builder.finish();
        assert_eq!(wave(&g, "", "ConfigMap", Some("app"), "cache"), 0);
        assert_eq!(wave(&g, "", "Pod", Some("app"), "web-1"), 0);
        assert!(g.warnings().is_empty());
    }

    #[test]
    fn api_services_and_admission_come_last() {
        let service = json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": "v1beta1.metrics.k8s.io"}});
        let policy = json!({"apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy", "metadata": {"name": "p"}});
        let g = graph(&[service, policy, config_map("a", None)]);
        assert_eq!(g.waves(), 2);
        assert_eq!(
            wave(
                &g,
                "apiregistration.k8s.io",
                "APIService",
                None,
                "v1beta1.metrics.k8s.io"
            ),
            1
        );
        assert_eq!(
            wave(
                &g,
                "admissionregistration.k8s.io",
                "ValidatingAdmissionPolicy",
                None,
                "p"
            ),
            1
        );
        assert_eq!(graph(&[]).waves(), 0);
    }

    #[test]
    fn workloads_of_every_kind_wait_for_what_their_pods_use() {
        let template = json!({"spec": {
            "serviceAccount": "legacy",
            "imagePullSecrets": [{"name": "registry"}],
            "priorityClassName": "critical",
            "initContainers": [{"name": "i", "env": [{"name": "X", "valueFrom":
                {"configMapKeyRef": {"name": "init-cm", "key": "x"}}}]}],
            "ephemeralContainers": [{"name": "e", "envFrom": [{"secretRef": {"name": "debug"}}]}],
            "volumes": [{"name": "c", "configMap": {"name": "files"}},
                        {"name": "d", "persistentVolumeClaim": {"claimName": "data"}}],
        }});
        let cron = json!({"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "nightly", "namespace": "app"},
            "spec": {"jobTemplate": {"spec": {"template": template}}}});
        let mut objects = vec![cron];
        for (kind, name) in [
            ("ServiceAccount", "legacy"),
            ("Secret", "registry"),
            ("ConfigMap", "init-cm"),
            ("Secret", "debug"),
            ("ConfigMap", "files"),
            ("PersistentVolumeClaim", "data"),
        ] {
            objects.push(json!({"apiVersion": "v1", "kind": kind,
                "metadata": {"name": name, "namespace": "app"}}));
        }
        objects.push(
            json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": "critical"}, "value": 1000}),
        );
        let g = graph(&objects);
        let cron = g
            .node(&key("batch", "CronJob", Some("app"), "nightly"))
            .unwrap();
        assert_eq!(g.dependencies(cron).len(), 7, "{:?}", g.dependencies(cron));
        assert_eq!(g.wave(cron), 1);
    }
}
