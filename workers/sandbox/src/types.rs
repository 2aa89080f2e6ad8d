//! The resource types the sandbox serves: a fixed set of built-ins plus one per registered CRD.

use serde_json::Value;

/// One resource type, as discovery describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    /// Served versions, preferred first.
    pub versions: Vec<String>,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
}

impl ResourceType {
    /// A built-in type, served at `v1`.
    fn builtin(group: &str, kind: &str, plural: &str, namespaced: bool, short: &[&str]) -> Self {
        Self {
            group: group.to_owned(),
            versions: vec!["v1".to_owned()],
            kind: kind.to_owned(),
            plural: plural.to_owned(),
            singular: kind.to_lowercase(),
            namespaced,
            short_names: short.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// Whether this is one of the built-in types (not defined by a CRD).
    pub fn is_builtin(&self) -> bool {
        builtin_types()
            .iter()
            .any(|t| t.group == self.group && t.plural == self.plural)
    }

    /// Whether this is the CustomResourceDefinition type itself.
    pub fn is_crd(&self) -> bool {
        self.group == "apiextensions.k8s.io" && self.plural == "customresourcedefinitions"
    }

    /// The type a stored CRD object defines; `None` if it serves no version.
    pub fn from_crd(crd: &Value) -> Option<Self> {
        let text = |path: &str| crd.pointer(path).and_then(Value::as_str).map(str::to_owned);
        let kind = text("/spec/names/kind")?;
        let mut versions: Vec<(bool, String)> = crd
            .pointer("/spec/versions")?
            .as_array()?
            .iter()
            .filter(|v| v["served"] != Value::Bool(false))
            .filter_map(|v| {
                Some((
                    v["storage"] != Value::Bool(true),
                    v["name"].as_str()?.to_owned(),
                ))
            })
            .collect();
        // The storage version is preferred; the rest keep their order.
        versions.sort_by_key(|(not_storage, _)| *not_storage);
        if versions.is_empty() {
            return None;
        }
        Some(Self {
            group: text("/spec/group")?,
            versions: versions.into_iter().map(|(_, v)| v).collect(),
            singular: text("/spec/names/singular").unwrap_or_else(|| kind.to_lowercase()),
            kind,
            plural: text("/spec/names/plural")?,
            namespaced: crd.pointer("/spec/scope").and_then(Value::as_str) == Some("Namespaced"),
            short_names: crd
                .pointer("/spec/names/shortNames")
                .and_then(Value::as_array)
                .map(|s| {
                    s.iter()
                        .filter_map(|n| Some(n.as_str()?.to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// The built-in types Stowage backs up and restores.
pub(crate) fn builtin_types() -> Vec<ResourceType> {
    let t = ResourceType::builtin;
    let core = |kind, plural, namespaced, short| t("", kind, plural, namespaced, short);
    let rbac =
        |kind, plural, namespaced| t("rbac.authorization.k8s.io", kind, plural, namespaced, &[]);
    vec![
        core("Namespace", "namespaces", false, &["ns"]),
        core("ConfigMap", "configmaps", true, &["cm"]),
        core("Secret", "secrets", true, &[]),
        core("Service", "services", true, &["svc"]),
        core("ServiceAccount", "serviceaccounts", true, &["sa"]),
        core("PersistentVolume", "persistentvolumes", false, &["pv"]),
        core(
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            true,
            &["pvc"],
        ),
        core("Pod", "pods", true, &["po"]),
        // Served for their labels (`topology.kubernetes.io/region`); never collected.
        core("Node", "nodes", false, &["no"]),
        t("apps", "Deployment", "deployments", true, &["deploy"]),
        t("apps", "StatefulSet", "statefulsets", true, &["sts"]),
        t(
            "storage.k8s.io",
            "StorageClass",
            "storageclasses",
            false,
            &["sc"],
        ),
        rbac("Role", "roles", true),
        rbac("RoleBinding", "rolebindings", true),
        rbac("ClusterRole", "clusterroles", false),
        rbac("ClusterRoleBinding", "clusterrolebindings", false),
        // Discovery lists it; reviews are answered by `rbac`, never stored.
        t(
            "authorization.k8s.io",
            "SubjectAccessReview",
            "subjectaccessreviews",
            false,
            &[],
        ),
        // Stored and served, never called: the sandbox runs no admission webhooks.
        t(
            "admissionregistration.k8s.io",
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
            false,
            &[],
        ),
        t(
            "admissionregistration.k8s.io",
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
            false,
            &[],
        ),
        t(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
            &["crd", "crds"],
        ),
    ]
}
