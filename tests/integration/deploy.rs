//! The Kubernetes manifests in `infra/k8s`: every document of the base parses into its typed
//! Kubernetes object (no unknown or misspelled field: each re-serialises to what was written),
//! and the cross-references hold — service accounts, the health port and probe paths, stage
//! arguments, KEDA queue names from the real topology, PDB selectors, ConfigMap and Secret keys,
//! RBAC (snapshot reads, restore writes, vault stages have no API access, nothing is
//! cluster-admin) and resource requests within the budget. The overlays are rendered with
//! `kubectl kustomize` (no extra flag, as `kubectl apply -k` does) and checked the same way;
//! `manifests` checks the rendered objects against the Kubernetes and KEDA schemas.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PersistentVolumeClaim, Probe, Secret, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::serde::de::DeserializeOwned;
use k8s_openapi::serde::{Deserialize, Serialize};
use serde_json::Value;
use stowage_runtime::topology::{DEFAULT_PREFIX, Names};
use stowage_schemas::Stage;

const HEALTH_PORT: i32 = 8080;
const MAX_REQUEST_MEMORY: f64 = 256.0 * 1024.0 * 1024.0;
const MAX_REQUEST_MILLICPU: f64 = 500.0;
/// Stages with a handler in this build: all of them.
const DEPLOYED: [Stage; 6] = Stage::ALL;
const WRITE_VERBS: [&str; 9] = [
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "escalate",
    "bind",
    "impersonate",
    "*",
];

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/k8s")
}

/// Every object of one set of manifests, by kind.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    deployments: Vec<Deployment>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    pdbs: Vec<PodDisruptionBudget>,
    config_maps: Vec<ConfigMap>,
    secrets: Vec<Secret>,
    claims: Vec<PersistentVolumeClaim>,
    scaled_objects: Vec<Value>,
    pod_monitors: Vec<Value>,
    trigger_auths: Vec<Value>,
}

/// Parses `value` into `T` and requires that nothing was dropped on the way: a field the type
/// does not have (a typo, a wrong nesting) makes the round trip differ.
pub(crate) fn typed<T: DeserializeOwned + Serialize>(value: &Value, source: &str) -> T {
    let parsed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{source}: does not parse as its kind: {e}\n{value:#}"));
    let back = serde_json::to_value(&parsed).expect("re-serialise");
    if let Some(path) = first_difference(value, &back, String::new()) {
        panic!("{source}: unknown or misspelled field at {path} (dropped by the typed parse)");
    }
    parsed
}

/// The JSON path of the first place `written` and `parsed` differ.
fn first_difference(written: &Value, parsed: &Value, path: String) -> Option<String> {
    match (written, parsed) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| match b.get(k) {
            Some(w) => first_difference(v, w, format!("{path}.{k}")),
            None => Some(format!("{path}.{k}")),
        }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, format!("{path}[{i}]"))),
        _ => (written != parsed).then_some(path),
    }
}

impl Manifests {
    /// Parses every document of `text` (multi-document YAML) by kind; unknown kinds fail.
    fn add_yaml(&mut self, text: &str, source: &str) {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let yaml = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{source} document {i}: invalid YAML: {e}"));
            if yaml.is_null() {
                continue;
            }
            let value = serde_json::to_value(&yaml)
                .unwrap_or_else(|e| panic!("{source} document {i}: not JSON-compatible: {e}"));
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            let api = value["apiVersion"].as_str().unwrap_or_default().to_owned();
            let name = value["metadata"]["name"].as_str().unwrap_or_default();
            let src = format!("{source}: {kind} {name}");
            match (api.as_str(), kind.as_str()) {
                ("v1", "Namespace") => self.namespaces.push(typed(&value, &src)),
                ("apps/v1", "Deployment") => self.deployments.push(typed(&value, &src)),
                ("v1", "ServiceAccount") => self.service_accounts.push(typed(&value, &src)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    self.cluster_roles.push(typed(&value, &src))
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    self.cluster_role_bindings.push(typed(&value, &src))
                }
                ("rbac.authorization.k8s.io/v1", "Role") => self.roles.push(typed(&value, &src)),
                ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                    self.role_bindings.push(typed(&value, &src))
                }
                ("policy/v1", "PodDisruptionBudget") => self.pdbs.push(typed(&value, &src)),
                ("v1", "ConfigMap") => self.config_maps.push(typed(&value, &src)),
                ("v1", "Secret") => self.secrets.push(typed(&value, &src)),
                ("v1", "PersistentVolumeClaim") => self.claims.push(typed(&value, &src)),
                ("keda.sh/v1alpha1", "ScaledObject") => self.scaled_objects.push(value),
                ("monitoring.coreos.com/v1", "PodMonitor") => self.pod_monitors.push(value),
                ("keda.sh/v1alpha1", "TriggerAuthentication") => self.trigger_auths.push(value),
                _ => panic!("{src}: unexpected kind {api}/{kind} (add it to the deploy test)"),
            }
        }
    }

    fn config_map(&self, name: &str) -> Option<&ConfigMap> {
        self.config_maps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
    }

    fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
    }

    fn secret_has_key(&self, name: &str, key: &str) -> bool {
        self.secret(name).is_some_and(|s| {
            s.string_data.as_ref().is_some_and(|d| d.contains_key(key))
                || s.data.as_ref().is_some_and(|d| d.contains_key(key))
        })
    }

    /// The value of env var `name` in `container`: a literal or a ConfigMap key (secrets are
    /// not resolved). `None` when it is not set.
    fn env(&self, container: &Container, name: &str) -> Option<String> {
        let var = container.env.iter().flatten().find(|e| e.name == name)?;
        if let Some(v) = &var.value {
            return Some(v.clone());
        }
        let r = var.value_from.as_ref()?.config_map_key_ref.as_ref()?;
        self.config_map(&r.name)?
            .data
            .as_ref()?
            .get(&r.key)
            .cloned()
    }

    /// Every rule granted to service account `sa`, with the binding that grants it.
    fn rules_of(&self, sa: &str, namespace: &str) -> Vec<(String, PolicyRule)> {
        let binds = |subjects: &Option<Vec<Subject>>| {
            subjects.iter().flatten().any(|s| {
                s.kind == "ServiceAccount"
                    && s.name == sa
                    && s.namespace.as_deref() == Some(namespace)
            })
        };
        let mut refs: Vec<(String, RoleRef)> = Vec::new();
        for b in &self.cluster_role_bindings {
            if binds(&b.subjects) {
                refs.push((
                    b.metadata.name.clone().unwrap_or_default(),
                    b.role_ref.clone(),
                ));
            }
        }
        for b in &self.role_bindings {
            if binds(&b.subjects) {
                refs.push((
                    b.metadata.name.clone().unwrap_or_default(),
                    b.role_ref.clone(),
                ));
            }
        }
        let mut rules = Vec::new();
        for (binding, r) in refs {
            let found = match r.kind.as_str() {
                "ClusterRole" => self
                    .cluster_roles
                    .iter()
                    .find(|c| c.metadata.name.as_deref() == Some(&r.name))
                    .map(|c| c.rules.clone().unwrap_or_default()),
                "Role" => self
                    .roles
                    .iter()
                    .find(|c| c.metadata.name.as_deref() == Some(&r.name))
                    .map(|c| c.rules.clone().unwrap_or_default()),
                other => panic!("binding {binding}: roleRef kind {other}"),
            };
            let found = found.unwrap_or_else(|| {
                panic!(
                    "binding {binding} refers to {} {}, which is not in the manifests",
                    r.kind, r.name
                )
            });
            rules.extend(found.into_iter().map(|rule| (binding.clone(), rule)));
        }
        rules
    }
}

/// Bytes of a memory quantity.
fn memory_bytes(q: &str) -> f64 {
    let units = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().expect("memory quantity") * factor;
        }
    }
    q.parse().unwrap_or_else(|_| panic!("memory quantity {q}"))
}

/// Millicores of a CPU quantity.
fn millicpu(q: &str) -> f64 {
    match q.strip_suffix('m') {
        Some(n) => n.parse().unwrap_or_else(|_| panic!("cpu quantity {q}")),
        None => {
            q.parse::<f64>()
                .unwrap_or_else(|_| panic!("cpu quantity {q}"))
                * 1000.0
        }
    }
}

fn check_probe(probe: Option<&Probe>, path: &str, what: &str) {
    let probe = probe.unwrap_or_else(|| panic!("{what}: no probe"));
    let get = probe
        .http_get
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: not an HTTP probe"));
    assert_eq!(get.path.as_deref(), Some(path), "{what}: path");
    assert!(
        matches!(&get.port, IntOrString::String(p) if p == "health")
            || get.port == IntOrString::Int(HEALTH_PORT),
        "{what}: must hit the health port, not {:?}",
        get.port
    );
}

/// How many Deployments' pods carry every label of `selector`.
fn selected_deployments(m: &Manifests, selector: &BTreeMap<String, String>) -> usize {
    m.deployments
        .iter()
        .filter(|d| {
            let labels = d
                .spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            is_subset(selector, &labels)
        })
        .count()
}

/// The labels a PodDisruptionBudget selects its pods by.
fn pdb_selector(pdb: &PodDisruptionBudget) -> BTreeMap<String, String> {
    pdb.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_default()
}

fn is_subset(sel: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Every cross-reference of one set of manifests.
fn check(m: &Manifests, source: &str) {
    // One namespace; every binding subject and namespaced object lives in it.
    assert_eq!(m.namespaces.len(), 1, "{source}: exactly one Namespace");
    let namespace = m.namespaces[0]
        .metadata
        .name
        .clone()
        .expect("namespace name");

    let sa_names: BTreeSet<String> = m
        .service_accounts
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();

    // RBAC: no wildcard verbs, no cluster-admin, every binding resolves.
    let roles = m
        .cluster_roles
        .iter()
        .map(|r| ("ClusterRole", &r.metadata.name, &r.rules))
        .chain(m.roles.iter().map(|r| ("Role", &r.metadata.name, &r.rules)));
    for (kind, name, rules) in roles {
        for rule in rules.iter().flatten() {
            assert!(
                !rule.verbs.iter().any(|v| v == "*"),
                "{source}: {kind} {name:?} grants the * verb"
            );
        }
    }
    let role_refs = m
        .cluster_role_bindings
        .iter()
        .map(|b| (&b.role_ref, &b.subjects))
        .chain(m.role_bindings.iter().map(|b| (&b.role_ref, &b.subjects)));
    for (role_ref, subjects) in role_refs {
        assert!(
            !["cluster-admin", "admin", "edit"].contains(&role_ref.name.as_str()),
            "{source}: binds the built-in {} role",
            role_ref.name
        );
        for s in subjects.iter().flatten() {
            assert_eq!(s.kind, "ServiceAccount", "{source}: binds a non-SA subject");
            assert!(
                sa_names.contains(&s.name),
                "{source}: binds unknown SA {}",
                s.name
            );
            assert_eq!(
                s.namespace.as_deref(),
                Some(namespace.as_str()),
                "{source}: SA namespace"
            );
        }
    }

    // TriggerAuthentications read keys that exist.
    let mut trigger_auths = BTreeSet::new();
    for t in &m.trigger_auths {
        trigger_auths.insert(t["metadata"]["name"].as_str().expect("name").to_owned());
        for r in t["spec"]["secretTargetRef"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let (name, key) = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
            assert!(
                m.secret_has_key(name, key),
                "{source}: TriggerAuthentication reads missing {name}/{key}"
            );
        }
    }

    let mut deployed = BTreeSet::new();
    let mut schedulers = 0;
    let mut deployment_names = BTreeSet::new();
    for d in &m.deployments {
        let name = d.metadata.name.clone().expect("deployment name");
        deployment_names.insert(name.clone());
        let what = format!("{source}: Deployment {name}");
        if let Some(ns) = &d.metadata.namespace {
            assert_eq!(ns, &namespace, "{what}: namespace");
        }
        let spec = d.spec.as_ref().expect("spec");
        let template = spec.template.metadata.clone().unwrap_or_default();
        let template_labels = template.labels.unwrap_or_default();
        let selector = spec.selector.match_labels.clone().unwrap_or_default();
        assert!(
            is_subset(&selector, &template_labels),
            "{what}: selector does not match its pods"
        );
        let pod = spec.template.spec.as_ref().expect("pod spec");

        // Service account.
        let sa = pod
            .service_account_name
            .clone()
            .unwrap_or_else(|| panic!("{what}: no serviceAccountName"));
        assert!(
            sa_names.contains(&sa),
            "{what}: service account {sa} is not in the manifests"
        );

        assert_eq!(pod.containers.len(), 1, "{what}: one container");
        let c = &pod.containers[0];

        // The stage.
        assert_eq!(
            c.command.as_deref(),
            Some(&["stowage".to_owned()][..]),
            "{what}: command"
        );
        let args = c.args.clone().unwrap_or_default();
        let is_scheduler = args.first().map(String::as_str) == Some("scheduler");
        if is_scheduler {
            schedulers += 1;
            assert!(
                m.env(c, "STOWAGE_VAULT_KEY").is_none()
                    && !c
                        .env
                        .iter()
                        .flatten()
                        .any(|e| e.name == "STOWAGE_VAULT_KEY"),
                "{what}: the scheduler reads the catalog only and gets no vault key"
            );
        }
        assert!(
            is_scheduler || args.first().map(String::as_str) == Some("worker"),
            "{what}: stowage worker or stowage scheduler, not {args:?}"
        );
        let stage = if is_scheduler {
            None
        } else {
            let at = args
                .iter()
                .position(|a| a == "--stage")
                .unwrap_or_else(|| panic!("{what}: no --stage"));
            let stage: Stage = args
                .get(at + 1)
                .unwrap_or_else(|| panic!("{what}: --stage without a value"))
                .parse()
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                DEPLOYED.contains(&stage),
                "{what}: {stage} has no handler in this build"
            );
            assert!(
                deployed.insert(stage),
                "{what}: a second Deployment for {stage}"
            );
            Some(stage)
        };

        // Health port and probes.
        let health = c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("health"))
            .unwrap_or_else(|| panic!("{what}: no port named health"));
        assert_eq!(health.container_port, HEALTH_PORT, "{what}: health port");
        if let Some(addr) = m.env(c, "STOWAGE_HEALTH_ADDR") {
            assert!(
                addr.ends_with(&format!(":{HEALTH_PORT}")),
                "{what}: STOWAGE_HEALTH_ADDR {addr}"
            );
        }
        let annotations = template.annotations.unwrap_or_default();
        assert_eq!(
            annotations.get("prometheus.io/port").map(String::as_str),
            Some(HEALTH_PORT.to_string().as_str()),
            "{what}: metrics are scraped from the health port"
        );
        assert_eq!(
            annotations.get("prometheus.io/path").map(String::as_str),
            Some("/metrics"),
            "{what}: metrics path"
        );
        check_probe(
            c.liveness_probe.as_ref(),
            "/livez",
            &format!("{what}: liveness"),
        );
        if is_scheduler {
            // It consumes no queue: /readyz (consuming stages) would never pass.
            assert!(c.readiness_probe.is_none(), "{what}: no readiness gate");
        } else {
            check_probe(
                c.readiness_probe.as_ref(),
                "/readyz",
                &format!("{what}: readiness"),
            );
        }

        // Env references exist.
        for e in c.env.iter().flatten() {
            let Some(from) = &e.value_from else { continue };
            if let Some(r) = &from.config_map_key_ref {
                let has = m
                    .config_map(&r.name)
                    .and_then(|c| c.data.as_ref())
                    .is_some_and(|d| d.contains_key(&r.key));
                assert!(
                    has,
                    "{what}: {} reads missing ConfigMap key {}/{}",
                    e.name, r.name, r.key
                );
            }
            if let Some(r) = &from.secret_key_ref {
                assert!(
                    m.secret_has_key(&r.name, &r.key),
                    "{what}: {} reads missing Secret key {}/{}",
                    e.name,
                    r.name,
                    r.key
                );
            }
        }
        for e in c.env_from.iter().flatten() {
            if let Some(r) = &e.config_map_ref {
                assert!(
                    m.config_map(&r.name).is_some(),
                    "{what}: envFrom missing ConfigMap {}",
                    r.name
                );
            }
            if let Some(r) = &e.secret_ref {
                assert!(
                    m.secret(&r.name).is_some(),
                    "{what}: envFrom missing Secret {}",
                    r.name
                );
            }
        }
        // Every claimed volume is one the manifests create.
        for v in pod.volumes.iter().flatten() {
            if let Some(claim) = &v.persistent_volume_claim {
                assert!(
                    m.claims
                        .iter()
                        .any(|c| c.metadata.name.as_deref() == Some(claim.claim_name.as_str())),
                    "{what}: volume {} claims {}, which the manifests do not create",
                    v.name,
                    claim.claim_name
                );
            }
        }
        // The rest is about stage workers: the scheduler needs no disks, cluster or queue.
        let Some(stage) = stage else {
            continue;
        };
        for required in ["STOWAGE_AMQP_URL", "STOWAGE_VAULT", "STOWAGE_VAULT_KEY"] {
            assert!(
                c.env.iter().flatten().any(|e| e.name == required),
                "{what}: {required} not set"
            );
        }
        // The cluster-side stages run inside their cluster with in-cluster credentials (no
        // cluster URL or kubeconfig to set), serve its queues only (STOWAGE_CLUSTER_NAME) and
        // reach volume snapshots through CSI; the vault stages read the local provider's disks.
        let cluster_side = stage.is_cluster_side();
        assert!(
            m.env(c, "STOWAGE_CLUSTER_URL").is_none() && m.env(c, "KUBECONFIG").is_none(),
            "{what}: in-cluster credentials: no STOWAGE_CLUSTER_URL or KUBECONFIG"
        );
        // Retention names its cluster too: it deletes that cluster's expired VolumeSnapshots.
        assert_eq!(
            m.env(c, "STOWAGE_CLUSTER_NAME").is_some(),
            cluster_side || stage == Stage::Retention,
            "{what}: STOWAGE_CLUSTER_NAME is for the snapshot, restore and retention stages only"
        );
        let provider = args
            .iter()
            .position(|a| a == "--disk-provider")
            .and_then(|i| args.get(i + 1))
            .map_or("local", String::as_str);
        if cluster_side {
            assert_eq!(provider, "csi", "{what}: --disk-provider csi");
        } else {
            assert!(
                provider == "local" && m.env(c, "STOWAGE_DISK_ROOT").is_some(),
                "{what}: a vault stage reads the local provider's disks: STOWAGE_DISK_ROOT"
            );
        }
        assert_eq!(
            m.env(c, "MALLOC_ARENA_MAX").as_deref(),
            Some("2"),
            "{what}: MALLOC_ARENA_MAX"
        );

        // Shutdown: the grace period outlasts the drain deadline.
        let deadline: i64 = m
            .env(c, "STOWAGE_SHUTDOWN_DEADLINE")
            .map_or(30, |v| v.parse().expect("STOWAGE_SHUTDOWN_DEADLINE"));
        let grace = pod.termination_grace_period_seconds.unwrap_or(30);
        assert!(
            grace > deadline,
            "{what}: terminationGracePeriodSeconds {grace} <= deadline {deadline}"
        );

        // Resources.
        let res = c
            .resources
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: no resources"));
        let requests = res.requests.clone().unwrap_or_default();
        let limits = res.limits.clone().unwrap_or_default();
        let req_mem = memory_bytes(
            &requests
                .get("memory")
                .unwrap_or_else(|| panic!("{what}: no memory request"))
                .0,
        );
        let req_cpu = millicpu(
            &requests
                .get("cpu")
                .unwrap_or_else(|| panic!("{what}: no cpu request"))
                .0,
        );
        let lim_mem = memory_bytes(
            &limits
                .get("memory")
                .unwrap_or_else(|| panic!("{what}: no memory limit"))
                .0,
        );
        assert!(
            req_mem <= MAX_REQUEST_MEMORY,
            "{what}: memory request above 256Mi"
        );
        assert!(
            req_cpu <= MAX_REQUEST_MILLICPU,
            "{what}: cpu request above 500m"
        );
        assert!(lim_mem >= req_mem, "{what}: memory limit below the request");
        if let Some(cpu) = limits.get("cpu") {
            assert!(
                millicpu(&cpu.0) >= req_cpu,
                "{what}: cpu limit below the request"
            );
        }

        // API access by stage.
        let sa_obj = m
            .service_accounts
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(&sa))
            .unwrap();
        let rules = m.rules_of(&sa, &namespace);
        let writes =
            |rule: &PolicyRule| rule.verbs.iter().any(|v| WRITE_VERBS.contains(&v.as_str()));
        match stage {
            Stage::Snapshot => {
                assert!(!rules.is_empty(), "{what}: snapshot SA has no read access");
                for (binding, rule) in &rules {
                    if !writes(rule) {
                        continue;
                    }
                    // It creates exec sessions (hooks) and VolumeSnapshots, nothing else.
                    let creates_only = rule
                        .verbs
                        .iter()
                        .all(|v| v == "create" || !WRITE_VERBS.contains(&v.as_str()));
                    let exec = rule.resources.as_deref() == Some(&["pods/exec".to_owned()][..])
                        && rule.api_groups.as_deref() == Some(&[String::new()][..]);
                    let snapshots = rule.resources.as_deref()
                        == Some(&["volumesnapshots".to_owned()][..])
                        && rule.api_groups.as_deref()
                            == Some(&["snapshot.storage.k8s.io".to_owned()][..]);
                    assert!(
                        creates_only && (exec || snapshots),
                        "{what}: snapshot SA may write through {binding}: {rule:?}"
                    );
                }
                assert!(
                    rules
                        .iter()
                        .any(|(_, r)| r.verbs.iter().any(|v| v == "list")),
                    "{what}: snapshot SA cannot list"
                );
            }
            Stage::Restore => {
                for verb in ["create", "patch", "update", "get", "list"] {
                    assert!(
                        rules.iter().any(|(_, r)| r.verbs.iter().any(|v| v == verb)),
                        "{what}: restore SA cannot {verb}"
                    );
                }
                assert!(
                    !rules.iter().any(|(_, r)| r
                        .verbs
                        .iter()
                        .any(|v| v == "delete" || v == "deletecollection")),
                    "{what}: restore SA may delete"
                );
            }
            Stage::Retention => {
                // Deletes VolumeSnapshots of expired operational tiers, and may do nothing else.
                assert!(!rules.is_empty(), "{what}: retention SA has no bindings");
                for (binding, rule) in &rules {
                    let only_snapshots = rule.resources.as_deref()
                        == Some(&["volumesnapshots".to_owned()][..])
                        && rule.api_groups.as_deref()
                            == Some(&["snapshot.storage.k8s.io".to_owned()][..]);
                    let writes_only_delete = rule
                        .verbs
                        .iter()
                        .all(|v| v == "delete" || !WRITE_VERBS.contains(&v.as_str()));
                    assert!(
                        only_snapshots && writes_only_delete,
                        "{what}: retention SA may do more than delete VolumeSnapshots through {binding}: {rule:?}"
                    );
                }
            }
            _ => {
                assert!(
                    rules.is_empty(),
                    "{what}: vault stage SA {sa} has RBAC bindings"
                );
                assert_eq!(
                    pod.automount_service_account_token,
                    Some(false),
                    "{what}: token mounted"
                );
                assert_eq!(
                    sa_obj.automount_service_account_token,
                    Some(false),
                    "{what}: SA {sa} automounts"
                );
            }
        }

        // Exactly one ScaledObject, on this stage's queue.
        let prefix = m
            .env(c, "STOWAGE_TOPOLOGY_PREFIX")
            .unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
        let names = Names::new(prefix);
        let queue = if stage.is_cluster_side() {
            let cluster = m
                .env(c, "STOWAGE_CLUSTER_NAME")
                .unwrap_or_else(|| panic!("{what}: no STOWAGE_CLUSTER_NAME"));
            names.cluster_queue(stage, &cluster)
        } else {
            names.stage_queue(stage)
        };
        let scaled: Vec<&Value> = m
            .scaled_objects
            .iter()
            .filter(|s| s["spec"]["scaleTargetRef"]["name"] == name.as_str())
            .collect();
        assert_eq!(
            scaled.len(),
            1,
            "{what}: exactly one ScaledObject must target it"
        );
        let so = &scaled[0]["spec"];
        let min = so["minReplicaCount"]
            .as_i64()
            .unwrap_or_else(|| panic!("{what}: no minReplicaCount"));
        let max = so["maxReplicaCount"]
            .as_i64()
            .unwrap_or_else(|| panic!("{what}: no maxReplicaCount"));
        assert!(
            0 <= min && min <= max && max >= 1,
            "{what}: KEDA min {min} max {max}"
        );
        let triggers = so["triggers"].as_array().cloned().unwrap_or_default();
        assert_eq!(triggers.len(), 1, "{what}: one trigger");
        let t = &triggers[0];
        assert_eq!(t["type"], "rabbitmq", "{what}: trigger type");
        assert_eq!(
            t["metadata"]["queueName"],
            queue.as_str(),
            "{what}: KEDA queue is not the topology's"
        );
        assert_eq!(t["metadata"]["mode"], "QueueLength", "{what}: trigger mode");
        let value: u32 = t["metadata"]["value"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(
            value > 0,
            "{what}: trigger value must be a positive integer string"
        );
        match (
            t["authenticationRef"]["name"].as_str(),
            t["metadata"]["hostFromEnv"].as_str(),
        ) {
            (Some(auth), _) => assert!(
                trigger_auths.contains(auth),
                "{what}: unknown TriggerAuthentication {auth}"
            ),
            (None, Some(var)) => assert!(
                c.env.iter().flatten().any(|e| e.name == var),
                "{what}: hostFromEnv {var} unset"
            ),
            (None, None) => panic!("{what}: the trigger has no broker credentials"),
        }

        // Exactly one PDB.
        let pdbs = m
            .pdbs
            .iter()
            .filter(|p| is_subset(&pdb_selector(p), &template_labels))
            .count();
        assert_eq!(
            pdbs, 1,
            "{what}: exactly one PodDisruptionBudget must select it"
        );
    }
    assert_eq!(
        deployed,
        DEPLOYED.into_iter().collect(),
        "{source}: one Deployment per stage with a handler"
    );

    // Every PDB and ScaledObject belongs to exactly one Deployment.
    for p in &m.pdbs {
        let n = selected_deployments(m, &pdb_selector(p));
        assert_eq!(
            n, 1,
            "{source}: PDB {:?} selects {n} Deployments",
            p.metadata.name
        );
    }
    assert_eq!(schedulers, 1, "{source}: one scheduler Deployment");
    assert_eq!(m.pod_monitors.len(), 1, "{source}: one PodMonitor");
    for pm in &m.pod_monitors {
        let selector: BTreeMap<String, String> =
            serde_json::from_value(pm["spec"]["selector"]["matchLabels"].clone())
                .unwrap_or_default();
        let selected = selected_deployments(m, &selector);
        assert!(
            selected >= deployed.len(),
            "{source}: the PodMonitor selects {selected} Deployments, fewer than the {} stage workers",
            deployed.len()
        );
        for endpoint in pm["spec"]["podMetricsEndpoints"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert_eq!(endpoint["port"], "health", "{source}: PodMonitor port");
            assert_eq!(endpoint["path"], "/metrics", "{source}: PodMonitor path");
        }
    }
    for s in &m.scaled_objects {
        let target = s["spec"]["scaleTargetRef"]["name"]
            .as_str()
            .unwrap_or_default();
        assert!(
            deployment_names.contains(target),
            "{source}: ScaledObject targets unknown {target}"
        );
    }
}

fn read_yaml(path: &Path) -> serde_yaml::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn string_list(v: &serde_yaml::Value, key: &str) -> Vec<String> {
    v[key]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

#[test]
fn base_manifests_parse_and_cross_reference() {
    let base = k8s_dir().join("base");
    let kustomization = read_yaml(&base.join("kustomization.yaml"));
    let listed: BTreeSet<String> = string_list(&kustomization, "resources")
        .into_iter()
        .collect();
    let mut files = BTreeSet::new();
    let mut m = Manifests::default();
    for entry in std::fs::read_dir(&base).expect("infra/k8s/base") {
        let path = entry.expect("entry").path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if file == "kustomization.yaml" || !(file.ends_with(".yaml") || file.ends_with(".yml")) {
            continue;
        }
        m.add_yaml(
            &std::fs::read_to_string(&path).expect("read"),
            &format!("base/{file}"),
        );
        files.insert(file);
    }
    assert_eq!(
        listed, files,
        "base/kustomization.yaml must list every manifest in base/"
    );
    check(&m, "base");
    assert_eq!(
        kustomization["namespace"].as_str(),
        m.namespaces[0].metadata.name.as_deref(),
        "the kustomization's namespace is the Namespace object"
    );

    // The RabbitMQ definitions the base generates: a copy inside the base (kustomize loads no
    // file outside it) of infra/rabbitmq/definitions.json, with every vault stage's queue and
    // every DLQ (the cluster-side stages' queues are per cluster, declared at run time).
    let generators = kustomization["configMapGenerator"]
        .as_sequence()
        .expect("configMapGenerator");
    let source = generators
        .iter()
        .flat_map(|g| string_list(g, "files"))
        .find_map(|f| f.strip_prefix("definitions.json=").map(str::to_owned))
        .expect("a configMapGenerator file definitions.json=...");
    assert!(
        !source.contains(".."),
        "the definitions must be inside the base, not {source}"
    );
    let defs_path = base.join(&source);
    let text = std::fs::read_to_string(&defs_path)
        .unwrap_or_else(|e| panic!("{}: {e}", defs_path.display()));
    assert_eq!(
        text,
        std::fs::read_to_string(k8s_dir().join("../rabbitmq/definitions.json")).unwrap(),
        "base/{source} is not a copy of infra/rabbitmq/definitions.json: run \
         STOWAGE_BLESS=1 cargo test -p stowage-cli the_checked_in_rabbitmq_definitions"
    );
    let defs: Value = serde_json::from_str(&text).unwrap();
    let queues: BTreeSet<&str> = defs["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .filter_map(|q| q["name"].as_str())
        .collect();
    let names = Names::new(DEFAULT_PREFIX);
    for stage in DEPLOYED {
        let work = (!stage.is_cluster_side()).then(|| names.stage_queue(stage));
        for q in work.into_iter().chain([names.dead_letter_queue(stage)]) {
            assert!(queues.contains(q.as_str()), "definitions.json lacks {q}");
        }
    }
}

#[test]
fn overlays_build_and_cross_reference() {
    for overlay in ["dev", "prod"] {
        let dir = k8s_dir().join("overlays").join(overlay);
        let k = read_yaml(&dir.join("kustomization.yaml"));
        assert!(
            string_list(&k, "resources")
                .iter()
                .any(|r| r == "../../base"),
            "overlays/{overlay} must build on ../../base"
        );
        let rendered = crate::manifests::kustomize(&dir);
        let mut m = Manifests::default();
        m.add_yaml(&rendered, &format!("overlays/{overlay} (rendered)"));
        check(&m, &format!("overlays/{overlay}"));
        for d in &m.deployments {
            let image = d
                .spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .containers[0]
                .image
                .clone()
                .unwrap_or_default();
            assert!(
                image.contains(':'),
                "overlays/{overlay}: {image} has no tag"
            );
        }
        assert!(
            m.config_map("stowage-rabbitmq-definitions")
                .and_then(|c| c.data.as_ref())
                .is_some_and(|d| d.contains_key("definitions.json")),
            "overlays/{overlay}: the RabbitMQ definitions ConfigMap is missing"
        );
    }
}
