//! The shipped overlays as `kubectl apply -k` sends them: `kubectl kustomize
//! infra/k8s/overlays/{prod,dev}` (no extra flag), and every rendered object checked against
//! the schema its API server would hold it to.
//!
//! - Kubernetes objects against the Kubernetes 1.33 API: each is parsed into its k8s-openapi
//!   (`v1_33`) type and must serialise back to what was rendered, so an unknown or misspelled
//!   field (which the typed parse drops) or a wrong type fails.
//! - KEDA's ScaledObject and TriggerAuthentication against the `openAPIV3Schema` of KEDA's own
//!   CustomResourceDefinitions, copied into `infra/k8s/schemas/keda/` (source and version in
//!   the README there): unknown fields (structural schemas prune them), types, required
//!   fields, enums, minimums.
//! - Deployment rules: no disk root on an `emptyDir` (state never passes between pods through
//!   one), every `serviceAccountName` is one `rbac.yaml` defines, and a service-account token
//!   is mounted only into pods whose account has RBAC bindings (the cluster-side stages).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, PodSpec, Secret, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::serde::Deserialize;
use serde_json::Value;

use crate::deploy::typed;

/// Where the tests expect kubectl (the machines' package); `KUBECTL` overrides it.
const KUBECTL: &str = "/usr/bin/kubectl";

/// Kinds with no schema to check against here, and why.
const UNCHECKED: [(&str, &str, &str); 1] = [(
    "monitoring.coreos.com/v1",
    "PodMonitor",
    "the Prometheus operator's CRD is not vendored; the deploy test checks its port and path",
)];

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/k8s")
}

/// The kubectl to run, or a failure saying how to install it.
fn kubectl() -> PathBuf {
    let path = std::env::var_os("KUBECTL").map_or_else(|| PathBuf::from(KUBECTL), PathBuf::from);
    let works = Command::new(&path)
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        works,
        "{} does not run: the manifest tests render the overlays with `kubectl kustomize`. \
         Install kubectl (Debian/Ubuntu: `apt-get install kubectl` from the Kubernetes apt \
         repository, see https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/), or \
         point KUBECTL at one",
        path.display()
    );
    path
}

/// `kubectl kustomize <dir>`, exactly as `kubectl apply -k` builds it: no extra flag.
pub(crate) fn kustomize(dir: &Path) -> String {
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed (so `kubectl apply -k` would): {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Every document of a multi-document YAML text, as JSON.
fn documents(text: &str, source: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .enumerate()
        .filter_map(|(i, doc)| {
            let yaml = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{source} document {i}: invalid YAML: {e}"));
            (!yaml.is_null()).then(|| {
                serde_json::to_value(&yaml)
                    .unwrap_or_else(|e| panic!("{source} document {i}: not JSON: {e}"))
            })
        })
        .collect()
}

/// The openAPIV3Schema of a vendored CRD.
fn crd_schema(file: &str) -> Value {
    let path = k8s_dir().join("schemas/keda").join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (the vendored KEDA schema)", path.display()));
    let doc: Value = serde_json::from_str(&text).expect("schema JSON");
    doc["openAPIV3Schema"].clone()
}

/// The CEL rules (`x-kubernetes-validations`) of the vendored schemas, each checked in Rust: a
/// rule the test does not know fails, so a new KEDA rule cannot pass unchecked.
fn cel_rule(rule: &str, value: &Value, path: &str) -> Result<(), String> {
    match rule {
        "!has(self.minReplicaCount) || self.minReplicaCount <= (has(self.maxReplicaCount) ? self.maxReplicaCount : 100)" =>
        {
            let min = value["minReplicaCount"].as_i64();
            let max = value["maxReplicaCount"].as_i64().unwrap_or(100);
            match min {
                Some(min) if min > max => Err(format!(
                    "{path}: minReplicaCount {min} is above maxReplicaCount {max}"
                )),
                _ => Ok(()),
            }
        }
        other => Err(format!(
            "{path}: the schema has a CEL rule this test does not evaluate: {other:?}; add it to \
             manifests::cel_rule"
        )),
    }
}

/// Checks `value` against an OpenAPI v3 structural schema the way the API server does for a
/// custom resource: unknown fields (which it would prune), types, required fields, enums,
/// minimums, int-or-string, maps, and the CEL rules [`cel_rule`] knows.
fn validate(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() && schema["nullable"] == true {
        return;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            errors.push(format!(
                "{path}: must be an integer or a string, not {value}"
            ));
        }
        return;
    }
    let kind = schema["type"].as_str();
    let type_ok = match kind {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        None => true,
        Some(other) => {
            errors.push(format!(
                "{path}: schema type {other} is not known to this test"
            ));
            return;
        }
    };
    if !type_ok {
        errors.push(format!(
            "{path}: must be {}, not {value}",
            kind.unwrap_or_default()
        ));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!("{path}: {value} is not one of {allowed:?}"));
    }
    if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), value.as_f64())
        && n < min
    {
        errors.push(format!("{path}: {n} is below the minimum {min}"));
    }
    if let (Some(min), Some(s)) = (schema["minLength"].as_u64(), value.as_str())
        && (s.chars().count() as u64) < min
    {
        errors.push(format!("{path}: shorter than {min} characters"));
    }
    if let (Some(min), Some(a)) = (schema["minItems"].as_u64(), value.as_array())
        && (a.len() as u64) < min
    {
        errors.push(format!("{path}: fewer than {min} items"));
    }
    if schema.get("pattern").is_some() {
        errors.push(format!(
            "{path}: the schema constrains this value with a pattern this test does not \
             evaluate ({}); check it by hand and extend manifests::validate",
            schema["pattern"]
        ));
    }
    for rule in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Err(e) = cel_rule(rule["rule"].as_str().unwrap_or_default(), value, path) {
            errors.push(e);
        }
    }
    if let Some(any_of) = schema["anyOf"].as_array() {
        let fits = any_of.iter().any(|s| {
            let mut e = Vec::new();
            validate(s, value, path, &mut e);
            e.is_empty()
        });
        if !fits {
            errors.push(format!("{path}: {value} fits none of {any_of:?}"));
        }
    }
    match value {
        Value::Object(map) => {
            // `metadata` is the API server's ObjectMeta, not described by the CRD.
            if path.is_empty() || path == "." {
                for field in ["apiVersion", "kind", "metadata"] {
                    if !map.contains_key(field) {
                        errors.push(format!("{path}{field}: missing"));
                    }
                }
            }
            if let Some(required) = schema["required"].as_array() {
                for field in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(field) {
                        errors.push(format!("{path}.{field}: required, missing"));
                    }
                }
            }
            let properties = schema["properties"].as_object();
            let additional = &schema["additionalProperties"];
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
            for (key, v) in map {
                let at = format!("{path}.{key}");
                if path.is_empty() && key == "metadata" {
                    continue;
                }
                match properties.and_then(|p| p.get(key)) {
                    Some(s) => validate(s, v, &at, errors),
                    None if additional.is_object() => validate(additional, v, &at, errors),
                    None if additional == &Value::Bool(true) || preserve => {}
                    None => errors.push(format!(
                        "{at}: unknown field (not in the CRD's schema; the API server would \
                         drop it)"
                    )),
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    validate(s, v, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

/// Checks one rendered object against its schema; returns (apiVersion, kind, name).
fn check_schema(value: &Value, source: &str) -> (String, String, String) {
    let api = value["apiVersion"].as_str().unwrap_or_default().to_owned();
    let kind = value["kind"].as_str().unwrap_or_default().to_owned();
    let name = value["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let src = format!("{source}: {kind} {name}");
    match (api.as_str(), kind.as_str()) {
        ("v1", "Namespace") => {
            typed::<Namespace>(value, &src);
        }
        ("v1", "ConfigMap") => {
            typed::<ConfigMap>(value, &src);
        }
        ("v1", "Secret") => {
            typed::<Secret>(value, &src);
        }
        ("v1", "ServiceAccount") => {
            typed::<ServiceAccount>(value, &src);
        }
        ("v1", "PersistentVolumeClaim") => {
            typed::<PersistentVolumeClaim>(value, &src);
        }
        ("apps/v1", "Deployment") => {
            typed::<Deployment>(value, &src);
        }
        ("policy/v1", "PodDisruptionBudget") => {
            typed::<PodDisruptionBudget>(value, &src);
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            typed::<ClusterRole>(value, &src);
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            typed::<ClusterRoleBinding>(value, &src);
        }
        ("rbac.authorization.k8s.io/v1", "Role") => {
            typed::<Role>(value, &src);
        }
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            typed::<RoleBinding>(value, &src);
        }
        ("keda.sh/v1alpha1", "ScaledObject" | "TriggerAuthentication") => {
            let file = if kind == "ScaledObject" {
                "scaledobjects.keda.sh.v1alpha1.json"
            } else {
                "triggerauthentications.keda.sh.v1alpha1.json"
            };
            let mut errors = Vec::new();
            validate(&crd_schema(file), value, "", &mut errors);
            assert!(
                errors.is_empty(),
                "{src}: does not match KEDA's CRD schema:\n  {}",
                errors.join("\n  ")
            );
        }
        (a, k) if UNCHECKED.iter().any(|(ua, uk, _)| (*ua, *uk) == (a, k)) => {}
        _ => panic!(
            "{src}: {api}/{kind} has no schema in this test: add its k8s-openapi type or CRD"
        ),
    }
    (api, kind, name)
}

/// The service accounts `infra/k8s/base/rbac.yaml` defines, with their automount setting,
/// and those bound to any role.
fn rbac_accounts() -> (BTreeMap<String, Option<bool>>, BTreeSet<String>) {
    let path = k8s_dir().join("base/rbac.yaml");
    let text = std::fs::read_to_string(&path).expect("read base/rbac.yaml");
    let mut accounts = BTreeMap::new();
    let mut bound = BTreeSet::new();
    for doc in documents(&text, "base/rbac.yaml") {
        match doc["kind"].as_str() {
            Some("ServiceAccount") => {
                let sa: ServiceAccount = typed(&doc, "base/rbac.yaml ServiceAccount");
                accounts.insert(
                    sa.metadata.name.expect("service account name"),
                    sa.automount_service_account_token,
                );
            }
            Some("RoleBinding" | "ClusterRoleBinding") => {
                for s in doc["subjects"].as_array().into_iter().flatten() {
                    if s["kind"] == "ServiceAccount" {
                        bound.insert(s["name"].as_str().unwrap_or_default().to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    (accounts, bound)
}

/// The value of env var `name` in the pod's first container: a literal, or its key in a
/// ConfigMap of `config`.
fn env_value(pod: &PodSpec, name: &str, config: &[ConfigMap]) -> Option<String> {
    let var = pod.containers[0]
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)?;
    if let Some(v) = &var.value {
        return Some(v.clone());
    }
    let r = var.value_from.as_ref()?.config_map_key_ref.as_ref()?;
    config
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(r.name.as_str()))?
        .data
        .as_ref()?
        .get(&r.key)
        .cloned()
}

/// The rules on one rendered Deployment (see the module docs).
fn check_deployment(
    d: &Deployment,
    config: &[ConfigMap],
    accounts: &BTreeMap<String, Option<bool>>,
    bound: &BTreeSet<String>,
    source: &str,
) {
    let name = d.metadata.name.clone().unwrap_or_default();
    let what = format!("{source}: Deployment {name}");
    let pod = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .unwrap_or_else(|| panic!("{what}: no pod spec"));

    let sa = pod
        .service_account_name
        .clone()
        .unwrap_or_else(|| panic!("{what}: no serviceAccountName (it would run as `default`)"));
    let sa_automount = accounts.get(&sa).unwrap_or_else(|| {
        panic!("{what}: service account {sa} is not defined in infra/k8s/base/rbac.yaml")
    });
    let mounted = pod
        .automount_service_account_token
        .or(*sa_automount)
        .unwrap_or(true);
    let needs_api = bound.contains(&sa);
    assert_eq!(
        mounted,
        needs_api,
        "{what}: a service-account token {} mounted, but its account {sa} {} RBAC bindings: \
         mount a token only where the pod uses the Kubernetes API",
        if mounted { "is" } else { "is not" },
        if needs_api { "has" } else { "has no" }
    );

    // The disk root: from --disk-root or STOWAGE_DISK_ROOT; it must be on a volume that
    // outlives the pod (a PVC), never on an emptyDir or the container's own filesystem.
    let args = pod.containers[0].args.clone().unwrap_or_default();
    let from_args = args
        .iter()
        .position(|a| a == "--disk-root")
        .and_then(|i| args.get(i + 1).cloned());
    let Some(root) = from_args.or_else(|| env_value(pod, "STOWAGE_DISK_ROOT", config)) else {
        return;
    };
    let mount = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| Path::new(&root).starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())
        .unwrap_or_else(|| {
            panic!("{what}: disk root {root} is on no volume (the container's filesystem dies with the pod)")
        });
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap_or_else(|| panic!("{what}: volume {} is mounted but not defined", mount.name));
    assert!(
        volume.empty_dir.is_none(),
        "{what}: disk root {root} is on emptyDir volume {}: another pod never sees its disks; \
         use the shared PVC (base/disks.yaml)",
        volume.name
    );
    assert!(
        volume.persistent_volume_claim.is_some(),
        "{what}: disk root {root} is on volume {}, which is not a PersistentVolumeClaim",
        volume.name
    );
}

fn check_overlay(overlay: &str) {
    let source = format!("overlays/{overlay}");
    let rendered = kustomize(&k8s_dir().join("overlays").join(overlay));
    let docs = documents(&rendered, &source);
    let mut kinds = BTreeMap::<String, usize>::new();
    for doc in &docs {
        let (_, kind, _) = check_schema(doc, &source);
        *kinds.entry(kind).or_default() += 1;
    }
    for kind in [
        "Deployment",
        "ScaledObject",
        "TriggerAuthentication",
        "ServiceAccount",
    ] {
        assert!(
            kinds.get(kind).copied().unwrap_or(0) > 0,
            "{source}: renders no {kind}: {kinds:?}"
        );
    }
    let config: Vec<ConfigMap> = docs
        .iter()
        .filter(|d| d["kind"] == "ConfigMap")
        .map(|d| typed(d, &source))
        .collect();
    let (accounts, bound) = rbac_accounts();
    for doc in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let d: Deployment = typed(doc, &source);
        check_deployment(&d, &config, &accounts, &bound, &source);
    }
}

#[test]
fn the_prod_overlay_renders_objects_that_match_their_schemas() {
    check_overlay("prod");
}

#[test]
fn the_dev_overlay_renders_objects_that_match_their_schemas() {
    check_overlay("dev");
}

/// The checks themselves catch what they claim to: a misspelled field in a Deployment and in
/// a ScaledObject, a wrong type, a missing required field, an emptyDir disk root and a token
/// mounted into a vault stage are each refused.
#[test]
fn the_schema_checks_refuse_broken_objects() {
    let rendered = kustomize(&k8s_dir().join("overlays/dev"));
    let docs = documents(&rendered, "dev");
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("dev renders no {kind} {name}"))
    };
    let panics = |f: &dyn Fn()| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .err()
            .map(|e| {
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default()
            })
    };

    let mut typo = find("Deployment", "stowage-snapshot");
    typo["spec"]["template"]["spec"]["serviceAcountName"] = "stowage-snapshot".into();
    let err = panics(&|| {
        check_schema(&typo, "broken");
    })
    .expect("a misspelled field");
    assert!(err.contains("serviceAcountName"), "{err}");

    let so = find("ScaledObject", "stowage-snapshot");
    let schema = crd_schema("scaledobjects.keda.sh.v1alpha1.json");
    let errors_of = |v: &Value| {
        let mut e = Vec::new();
        validate(&schema, v, "", &mut e);
        e
    };
    assert_eq!(errors_of(&so), Vec::<String>::new());
    let mut bad = so.clone();
    bad["spec"]["triggers"][0]["authRef"] = serde_json::json!({"name": "x"});
    assert!(
        errors_of(&bad)
            .iter()
            .any(|e| e.contains("authRef") && e.contains("unknown"))
    );
    let mut bad = so.clone();
    bad["spec"]["minReplicaCount"] = "1".into();
    assert!(
        errors_of(&bad)
            .iter()
            .any(|e| e.contains("minReplicaCount"))
    );
    let mut bad = so.clone();
    bad["spec"]
        .as_object_mut()
        .unwrap()
        .remove("scaleTargetRef");
    assert!(
        errors_of(&bad)
            .iter()
            .any(|e| e.contains("scaleTargetRef") && e.contains("required"))
    );
    let mut bad = so.clone();
    bad["spec"]["minReplicaCount"] = 5.into();
    bad["spec"]["maxReplicaCount"] = 2.into();
    assert!(
        errors_of(&bad)
            .iter()
            .any(|e| e.contains("above maxReplicaCount"))
    );

    let config: Vec<ConfigMap> = docs
        .iter()
        .filter(|d| d["kind"] == "ConfigMap")
        .map(|d| typed(d, "dev"))
        .collect();
    let (accounts, bound) = rbac_accounts();
    let mut vt: Deployment = typed(&find("Deployment", "stowage-vault-transfer"), "dev");
    check_deployment(&vt, &config, &accounts, &bound, "dev");
    {
        let pod = vt.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        for v in pod.volumes.iter_mut().flatten() {
            if v.persistent_volume_claim.is_some() {
                v.persistent_volume_claim = None;
                v.empty_dir = Some(Default::default());
            }
        }
    }
    let err = panics(&|| check_deployment(&vt, &config, &accounts, &bound, "broken"))
        .expect("an emptyDir disk root");
    assert!(err.contains("emptyDir"), "{err}");
    let mut vt: Deployment = typed(&find("Deployment", "stowage-vault-transfer"), "dev");
    vt.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .automount_service_account_token = Some(true);
    let err = panics(&|| check_deployment(&vt, &config, &accounts, &bound, "broken"))
        .expect("a token mounted into a vault stage");
    assert!(err.contains("token is mounted"), "{err}");
}
