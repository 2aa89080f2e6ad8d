//! Refusals by the API server's authentication (401) and authorization (403), read into what
//! was refused and how to fix it: retrying cannot help, so the stages fail such a job for good
//! with [`AccessDenied`]'s text.
//!
//! A 403 from Kubernetes words its message the same way everywhere (`configmaps "x" is
//! forbidden: User "u" cannot create resource "configmaps" in API group "" in the namespace
//! "shop"`); the verb, resource, group, namespace and user are read from it. The fix names the
//! ClusterRole in `infra/k8s/base/rbac.yaml` that should grant it: the fleet's roles are named
//! like the service accounts they are bound to (`stowage-snapshot`, `stowage-restore`).

use std::fmt;

/// Where the fleet's roles are defined, relative to the repository root.
pub const FLEET_RBAC_FILE: &str = "infra/k8s/base/rbac.yaml";
/// The namespace the fleet's service accounts live in.
pub const FLEET_NAMESPACE: &str = "stowage";

/// A request the API server refused to a worker's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessDenied {
    /// 401: the credentials were not accepted at all.
    Unauthenticated {
        /// What the server said.
        message: String,
    },
    /// 403: the identity is known but not allowed.
    Forbidden {
        /// The user the server saw (empty if the message did not say).
        user: String,
        /// `get`, `list`, `create`, …
        verb: String,
        /// `configmaps`, `pods/exec`, …
        resource: String,
        /// API group; empty for the core group.
        group: String,
        /// Empty at the cluster scope.
        namespace: String,
        /// The message as the server worded it.
        message: String,
    },
}

impl AccessDenied {
    /// The refusal in `error`, if it is a 401 or a 403.
    pub fn from_error(error: &kube::Error) -> Option<Self> {
        let kube::Error::Api(status) = error else {
            return None;
        };
        match status.code {
            401 => Some(Self::Unauthenticated {
                message: status.message.clone(),
            }),
            403 => Some(Self::parse_forbidden(&status.message)),
            _ => None,
        }
    }

    /// Reads a 403 message worded as Kubernetes words it; fields it does not find stay empty.
    pub fn parse_forbidden(message: &str) -> Self {
        let quoted_after = |marker: &str| -> String {
            message
                .split_once(marker)
                .and_then(|(_, rest)| rest.strip_prefix('"'))
                .and_then(|rest| rest.split_once('"'))
                .map(|(value, _)| value.to_owned())
                .unwrap_or_default()
        };
        let verb = message
            .split_once("\" cannot ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or_default()
            .to_owned();
        Self::Forbidden {
            user: quoted_after("User "),
            verb,
            resource: quoted_after("resource "),
            group: quoted_after("in API group "),
            namespace: quoted_after("in the namespace "),
            message: message.to_owned(),
        }
    }

    /// How to fix it, naming the role in [`FLEET_RBAC_FILE`] that should grant the request.
    pub fn fix(&self) -> String {
        let apply = format!("`kubectl apply -n {FLEET_NAMESPACE} -f {FLEET_RBAC_FILE}`");
        match self {
            Self::Unauthenticated { .. } => format!(
                "the API server did not accept the worker's credentials: check the kubeconfig \
                 (--kubeconfig, KUBECONFIG, --context) and that its token or exec plugin is \
                 current; in a pod, that the service account's token is mounted \
                 (automountServiceAccountToken) and the service account exists ({apply} \
                 creates the fleet's)"
            ),
            Self::Forbidden {
                user,
                verb,
                resource,
                group,
                ..
            } => {
                let rule = format!(
                    "verbs [{verb}] on resources [{resource}] in apiGroups [{group:?}]",
                    verb = if verb.is_empty() { "?" } else { verb },
                    resource = if resource.is_empty() { "?" } else { resource },
                );
                match user
                    .strip_prefix("system:serviceaccount:")
                    .and_then(|sa| sa.split_once(':'))
                {
                    Some((namespace, account)) => format!(
                        "the ClusterRole {account:?} in {FLEET_RBAC_FILE} grants the service \
                         account {namespace}/{account} what its stage needs ({rule}): apply it \
                         with {apply} (or add the rule there if it is missing), and check that \
                         the ClusterRoleBinding {account:?} binds it to that account"
                    ),
                    None => format!(
                        "grant {user:?} {rule} through a Role or ClusterRole binding; the fleet's \
                         workers should run as their service accounts, whose roles are in \
                         {FLEET_RBAC_FILE} (stowage-snapshot for the snapshot stage, \
                         stowage-restore for the restore stage; apply with {apply})"
                    ),
                }
            }
        }
    }
}

impl fmt::Display for AccessDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unauthenticated { message } => {
                write!(f, "the API server refused the credentials (401 {message})")
            }
            Self::Forbidden {
                user,
                verb,
                resource,
                group,
                namespace,
                message,
            } => {
                if verb.is_empty() || resource.is_empty() {
                    return write!(f, "the API server refused the request (403): {message}");
                }
                let group = if group.is_empty() {
                    "the core API group".to_owned()
                } else {
                    format!("API group {group}")
                };
                let scope = if namespace.is_empty() {
                    "at the cluster scope".to_owned()
                } else {
                    format!("in namespace {namespace}")
                };
                write!(
                    f,
                    "access denied (403 Forbidden): {user} may not {verb} {resource} ({group}) \
                     {scope}"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_messages_name_verb_resource_and_the_role_to_fix() {
        let denied = AccessDenied::parse_forbidden(
            "configmaps \"x\" is forbidden: User \"system:serviceaccount:stowage:stowage-snapshot\" \
             cannot create resource \"configmaps\" in API group \"\" in the namespace \"shop\"",
        );
        assert_eq!(
            denied.to_string(),
            "access denied (403 Forbidden): system:serviceaccount:stowage:stowage-snapshot may \
             not create configmaps (the core API group) in namespace shop"
        );
        let fix = denied.fix();
        assert!(
            fix.contains("ClusterRole \"stowage-snapshot\" in infra/k8s/base/rbac.yaml"),
            "{fix}"
        );
        assert!(
            fix.contains("kubectl apply -n stowage -f infra/k8s/base/rbac.yaml"),
            "{fix}"
        );
        assert!(
            fix.contains("verbs [create] on resources [configmaps]"),
            "{fix}"
        );

        let cluster = AccessDenied::parse_forbidden(
            "deployments.apps is forbidden: User \"alice\" cannot list resource \"deployments\" \
             in API group \"apps\" at the cluster scope",
        );
        assert_eq!(
            cluster.to_string(),
            "access denied (403 Forbidden): alice may not list deployments (API group apps) at \
             the cluster scope"
        );
        assert!(
            cluster.fix().contains("grant \"alice\""),
            "{}",
            cluster.fix()
        );
    }
}
