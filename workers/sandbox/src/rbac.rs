//! A small RBAC evaluator: it authorizes every request the sandbox serves, and answers its
//! `SubjectAccessReview` endpoint (`POST /apis/authorization.k8s.io/v1/subjectaccessreviews`),
//! so `stowage preflight` can ask whether the fleet's service accounts hold what each stage
//! needs, as it would on a real cluster.
//!
//! It evaluates the Roles, ClusterRoles, RoleBindings and ClusterRoleBindings stored in the
//! sandbox the way Kubernetes' RBAC authorizer does, for what the checks ask:
//!
//! - subjects: `User` (by name), `Group` (the review's groups) and `ServiceAccount` (the user
//!   `system:serviceaccount:<namespace>:<name>`; a subject without a namespace takes the
//!   binding's);
//! - ClusterRoleBindings grant everywhere; RoleBindings only in their own namespace, to a Role
//!   of that namespace or to a ClusterRole;
//! - rules match on `verbs`, `apiGroups`, `resources` (`resource/subresource`, and `*/sub`),
//!   `resourceNames` (an empty list matches every name) and `nonResourceURLs` (exact, or a
//!   prefix ending in `*`); `*` is a wildcard everywhere.
//!
//! The `system:masters` group is allowed everything, as the API server allows it before RBAC.
//! Not evaluated: aggregated ClusterRoles (`aggregationRule`), impersonation and `escalate`/`bind`
//! semantics, webhooks. The same evaluation authorizes every request the sandbox serves (see
//! `auth`), so the reviews answer what the sandbox then enforces.

use serde_json::{Value, json};

use crate::store::Store;

/// What a review asks: may `user` (in `groups`) do `verb` on a resource or a non-resource path?
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AccessRequest {
    pub user: String,
    pub groups: Vec<String>,
    pub verb: String,
    /// Resource attributes; `None` for a non-resource request.
    pub resource: Option<ResourceAttributes>,
    /// The path of a non-resource request (e.g. `/version`).
    pub path: Option<String>,
}

/// The resource half of a review.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ResourceAttributes {
    /// Empty: a cluster-wide request (only ClusterRoleBindings apply).
    pub namespace: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

/// The answer: allowed or not, and why (the binding and role that allowed it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    pub allowed: bool,
    pub reason: String,
}

impl AccessRequest {
    /// Reads `spec` of a `SubjectAccessReview`.
    pub fn from_review(review: &Value) -> Result<Self, String> {
        let spec = &review["spec"];
        let text = |v: &Value, field: &str| v[field].as_str().unwrap_or_default().to_owned();
        let user = text(spec, "user");
        let groups: Vec<String> = spec["groups"]
            .as_array()
            .map(|g| {
                g.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if user.is_empty() && groups.is_empty() {
            return Err("spec.user or spec.groups must be set".to_owned());
        }
        let (verb, resource, path) = match (
            spec.get("resourceAttributes").filter(|v| v.is_object()),
            spec.get("nonResourceAttributes").filter(|v| v.is_object()),
        ) {
            (Some(r), None) => (
                text(r, "verb"),
                Some(ResourceAttributes {
                    namespace: text(r, "namespace"),
                    group: text(r, "group"),
                    resource: text(r, "resource"),
                    subresource: text(r, "subresource"),
                    name: text(r, "name"),
                }),
                None,
            ),
            (None, Some(n)) => (text(n, "verb"), None, Some(text(n, "path"))),
            _ => {
                return Err(
                    "exactly one of spec.resourceAttributes and spec.nonResourceAttributes must be set"
                        .to_owned(),
                );
            }
        };
        Ok(Self {
            user,
            groups,
            verb,
            resource,
            path,
        })
    }
}

/// Evaluates `request` against the RBAC objects in `store`.
pub(crate) fn evaluate(store: &Store, request: &AccessRequest) -> Decision {
    // The API server's superuser group, allowed before any authorizer is asked.
    if request.groups.iter().any(|g| g == "system:masters") {
        return Decision {
            allowed: true,
            reason: "allowed: member of the system:masters group".to_owned(),
        };
    }
    let rbac = "rbac.authorization.k8s.io";
    for binding in store.objects_of(rbac, "clusterrolebindings") {
        if let Some(subject) = matching_subject(binding, "", request) {
            let role = &binding["roleRef"]["name"];
            let allowed = binding["roleRef"]["kind"] == "ClusterRole"
                && role.as_str().is_some_and(|name| {
                    store
                        .object(rbac, "clusterroles", "", name)
                        .is_some_and(|r| rules_allow(r, request))
                });
            if allowed {
                return Decision {
                    allowed: true,
                    reason: format!(
                        "RBAC: allowed by ClusterRoleBinding {:?} of ClusterRole {} to {subject}",
                        name_of(binding),
                        role
                    ),
                };
            }
        }
    }
    let namespace = request
        .resource
        .as_ref()
        .map(|r| r.namespace.as_str())
        .filter(|ns| !ns.is_empty());
    if let Some(namespace) = namespace {
        for binding in store
            .objects_of(rbac, "rolebindings")
            .filter(|b| b["metadata"]["namespace"] == namespace)
        {
            let Some(subject) = matching_subject(binding, namespace, request) else {
                continue;
            };
            let Some(role) = binding["roleRef"]["name"].as_str() else {
                continue;
            };
            let kind = binding["roleRef"]["kind"].as_str().unwrap_or_default();
            let role_object = match kind {
                "Role" => store.object(rbac, "roles", namespace, role),
                "ClusterRole" => store.object(rbac, "clusterroles", "", role),
                _ => None,
            };
            if role_object.is_some_and(|r| rules_allow(r, request)) {
                return Decision {
                    allowed: true,
                    reason: format!(
                        "RBAC: allowed by RoleBinding \"{namespace}/{}\" of {kind} {role:?} to {subject}",
                        name_of(binding)
                    ),
                };
            }
        }
    }
    Decision {
        allowed: false,
        reason: String::new(),
    }
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// The subject of `binding` that `request` is, described as Kubernetes does.
fn matching_subject(binding: &Value, binding_ns: &str, request: &AccessRequest) -> Option<String> {
    binding["subjects"].as_array()?.iter().find_map(|subject| {
        let name = subject["name"].as_str()?;
        match subject["kind"].as_str()? {
            "User" => (request.user == name).then(|| format!("User {name:?}")),
            "Group" => request
                .groups
                .iter()
                .any(|g| g == name)
                .then(|| format!("Group {name:?}")),
            "ServiceAccount" => {
                let ns = subject["namespace"]
                    .as_str()
                    .filter(|ns| !ns.is_empty())
                    .unwrap_or(binding_ns);
                (request.user == format!("system:serviceaccount:{ns}:{name}"))
                    .then(|| format!("ServiceAccount \"{ns}/{name}\""))
            }
            _ => None,
        }
    })
}

fn strings(value: &Value) -> impl Iterator<Item = &str> {
    value
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
}

fn rules_allow(role: &Value, request: &AccessRequest) -> bool {
    role["rules"]
        .as_array()
        .is_some_and(|rules| rules.iter().any(|rule| rule_allows(rule, request)))
}

/// Whether one policy rule covers the request (Kubernetes' `RuleAllows`).
pub(crate) fn rule_allows(rule: &Value, request: &AccessRequest) -> bool {
    if !strings(&rule["verbs"]).any(|v| v == "*" || v == request.verb) {
        return false;
    }
    match (&request.resource, &request.path) {
        (Some(r), _) => {
            let group_ok = strings(&rule["apiGroups"]).any(|g| g == "*" || g == r.group);
            let combined = if r.subresource.is_empty() {
                r.resource.clone()
            } else {
                format!("{}/{}", r.resource, r.subresource)
            };
            let resource_ok = strings(&rule["resources"]).any(|res| {
                res == "*"
                    || res == combined
                    || (!r.subresource.is_empty()
                        && res.strip_prefix("*/") == Some(r.subresource.as_str()))
            });
            let mut names = strings(&rule["resourceNames"]).peekable();
            let name_ok = names.peek().is_none() || names.any(|n| n == r.name);
            group_ok && resource_ok && name_ok
        }
        (None, Some(path)) => strings(&rule["nonResourceURLs"]).any(|url| {
            url == "*"
                || url == path
                || url
                    .strip_suffix('*')
                    .is_some_and(|prefix| path.starts_with(prefix))
        }),
        (None, None) => false,
    }
}

/// The review as the API server answers it: the request echoed with `status` filled in.
pub(crate) fn answer(mut review: Value, decision: &Decision) -> Value {
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    review["kind"] = json!("SubjectAccessReview");
    if !review["metadata"].is_object() {
        review["metadata"] = json!({});
    }
    let mut status = json!({"allowed": decision.allowed});
    if !decision.reason.is_empty() {
        status["reason"] = json!(decision.reason);
    }
    review["status"] = status;
    review
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(objects: Vec<Value>) -> Store {
        let mut store = Store::new();
        for ns in ["stowage", "shop"] {
            store
                .create_object(
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                )
                .unwrap();
        }
        for object in objects {
            store.create_object(object).unwrap();
        }
        store
    }

    fn role(kind: &str, name: &str, namespace: Option<&str>, rules: Value) -> Value {
        let mut metadata = json!({"name": name});
        if let Some(ns) = namespace {
            metadata["namespace"] = json!(ns);
        }
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": metadata, "rules": rules})
    }

    fn binding(
        kind: &str,
        name: &str,
        namespace: Option<&str>,
        role_kind: &str,
        subjects: Value,
    ) -> Value {
        let mut metadata = json!({"name": name});
        if let Some(ns) = namespace {
            metadata["namespace"] = json!(ns);
        }
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": metadata,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name},
            "subjects": subjects,
        })
    }

    fn sa(namespace: &str, name: &str) -> String {
        format!("system:serviceaccount:{namespace}:{name}")
    }

    fn ask(user: &str, verb: &str, ns: &str, group: &str, resource: &str) -> AccessRequest {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        AccessRequest {
            user: user.to_owned(),
            groups: vec!["system:authenticated".to_owned()],
            verb: verb.to_owned(),
            resource: Some(ResourceAttributes {
                namespace: ns.to_owned(),
                group: group.to_owned(),
                resource: resource.to_owned(),
                subresource: subresource.to_owned(),
                name: String::new(),
            }),
            path: None,
        }
    }

    #[test]
    fn cluster_role_bindings_grant_everywhere_with_wildcards() {
        let store = store_with(vec![
            role(
                "ClusterRole",
                "reader",
                None,
                json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list"]}]),
            ),
            binding(
                "ClusterRoleBinding",
                "reader",
                None,
                "ClusterRole",
                json!([{"kind": "ServiceAccount", "name": "snap", "namespace": "stowage"}]),
            ),
        ]);
        let user = sa("stowage", "snap");
        for (verb, ns, group, resource, allowed) in [
            ("list", "", "", "persistentvolumes", true),
            ("get", "shop", "apps", "deployments", true),
            ("list", "", "demo.stowage.io", "widgets", true),
            ("list", "", "*", "*", true),
            ("create", "shop", "", "configmaps", false),
            ("delete", "", "", "namespaces", false),
        ] {
            let decision = evaluate(&store, &ask(&user, verb, ns, group, resource));
            assert_eq!(
                decision.allowed, allowed,
                "{verb} {group}/{resource} in {ns:?}: {decision:?}"
            );
            if allowed {
                assert!(
                    decision.reason.contains("ClusterRoleBinding \"reader\""),
                    "{decision:?}"
                );
            }
        }
        // Another account, and the same name in another namespace, get nothing.
        assert!(
            !evaluate(
                &store,
                &ask(&sa("stowage", "other"), "list", "", "", "pods")
            )
            .allowed
        );
        assert!(!evaluate(&store, &ask(&sa("shop", "snap"), "list", "", "", "pods")).allowed);
    }

    #[test]
    fn role_bindings_grant_only_in_their_namespace() {
        let store = store_with(vec![
            role(
                "Role",
                "cm",
                Some("shop"),
                json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]),
            ),
            binding(
                "RoleBinding",
                "cm",
                Some("shop"),
                "Role",
                // No namespace on the subject: the binding's namespace is meant.
                json!([{"kind": "ServiceAccount", "name": "web"}]),
            ),
            role(
                "ClusterRole",
                "secrets",
                None,
                json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}]),
            ),
            binding(
                "RoleBinding",
                "secrets",
                Some("shop"),
                "ClusterRole",
                json!([{"kind": "Group", "name": "auditors"}]),
            ),
        ]);
        let web = sa("shop", "web");
        assert!(evaluate(&store, &ask(&web, "get", "shop", "", "configmaps")).allowed);
        assert!(!evaluate(&store, &ask(&web, "get", "stowage", "", "configmaps")).allowed);
        assert!(!evaluate(&store, &ask(&web, "get", "", "", "configmaps")).allowed);
        assert!(!evaluate(&store, &ask(&web, "list", "shop", "", "configmaps")).allowed);
        let mut auditor = ask("alice", "list", "shop", "", "secrets");
        assert!(
            !evaluate(&store, &auditor).allowed,
            "alice is not an auditor"
        );
        auditor.groups.push("auditors".to_owned());
        let decision = evaluate(&store, &auditor);
        assert!(decision.allowed);
        assert!(
            decision
                .reason
                .contains("RoleBinding \"shop/secrets\" of ClusterRole"),
            "{decision:?}"
        );
        auditor.resource.as_mut().unwrap().namespace = "stowage".to_owned();
        assert!(
            !evaluate(&store, &auditor).allowed,
            "a RoleBinding grants a ClusterRole only in its namespace"
        );
    }

    #[test]
    fn subresources_resource_names_and_user_subjects() {
        let store = store_with(vec![
            role(
                "ClusterRole",
                "exec",
                None,
                json!([
                    {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]},
                    {"apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["update"]},
                    {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["only-this"], "verbs": ["get"]},
                    {"nonResourceURLs": ["/version", "/healthz/*"], "verbs": ["get"]},
                ]),
            ),
            binding(
                "ClusterRoleBinding",
                "exec",
                None,
                "ClusterRole",
                json!([{"kind": "User", "name": "bob"}]),
            ),
        ]);
        assert!(evaluate(&store, &ask("bob", "create", "shop", "", "pods/exec")).allowed);
        assert!(
            !evaluate(&store, &ask("bob", "create", "shop", "", "pods")).allowed,
            "a subresource rule does not grant the resource"
        );
        assert!(
            !evaluate(&store, &ask("bob", "create", "shop", "", "pods/log")).allowed,
            "nor another subresource"
        );
        assert!(
            evaluate(
                &store,
                &ask("bob", "update", "shop", "apps", "deployments/scale")
            )
            .allowed
        );
        let mut named = ask("bob", "get", "shop", "", "configmaps");
        assert!(
            !evaluate(&store, &named).allowed,
            "resourceNames: an unnamed request is not covered"
        );
        named.resource.as_mut().unwrap().name = "only-this".to_owned();
        assert!(evaluate(&store, &named).allowed);
        named.resource.as_mut().unwrap().name = "another".to_owned();
        assert!(!evaluate(&store, &named).allowed);
        let path = |p: &str| AccessRequest {
            user: "bob".to_owned(),
            verb: "get".to_owned(),
            path: Some(p.to_owned()),
            ..AccessRequest::default()
        };
        assert!(evaluate(&store, &path("/version")).allowed);
        assert!(evaluate(&store, &path("/healthz/ready")).allowed);
        assert!(!evaluate(&store, &path("/metrics")).allowed);
        assert!(
            !evaluate(&store, &ask("carol", "create", "shop", "", "pods/exec")).allowed,
            "only bob is bound"
        );
    }

    #[test]
    fn reviews_are_parsed_and_answered() {
        let review = json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": "bob", "groups": ["g"], "resourceAttributes": {
                "namespace": "shop", "verb": "get", "group": "apps", "resource": "deployments",
                "subresource": "scale", "name": "web"}},
        });
        let request = AccessRequest::from_review(&review).unwrap();
        assert_eq!(request.verb, "get");
        let attributes = request.resource.clone().unwrap();
        assert_eq!(
            (
                attributes.namespace.as_str(),
                attributes.group.as_str(),
                attributes.resource.as_str(),
                attributes.subresource.as_str(),
                attributes.name.as_str()
            ),
            ("shop", "apps", "deployments", "scale", "web")
        );
        let answered = answer(
            review,
            &Decision {
                allowed: false,
                reason: String::new(),
            },
        );
        assert_eq!(answered["status"], json!({"allowed": false}));
        assert!(AccessRequest::from_review(&json!({"spec": {"user": "bob"}})).is_err());
        assert!(
            AccessRequest::from_review(&json!({"spec": {"resourceAttributes": {"verb": "get"}}}))
                .is_err()
        );
    }
}
