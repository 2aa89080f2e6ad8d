//! [`PERMISSIONS`]: what each fleet service account needs, and the access reviews that check it.

use super::*;

/// One permission a stage needs: `verb` on `resource` (optionally `/subresource`) of `group`,
/// cluster-wide. `*` means every group or resource, as in RBAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    /// The verb.
    pub verb: &'static str,
    /// The API group (`""` for core).
    pub group: &'static str,
    /// The resource, plural.
    pub resource: &'static str,
    /// The subresource, or `""`.
    pub subresource: &'static str,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        write!(f, "{} {}", self.verb, self.resource)?;
        if !self.subresource.is_empty() {
            write!(f, "/{}", self.subresource)?;
        }
        write!(f, " ({group})")
    }
}

/// A service account of the fleet, the stages that run under it and what they need.
#[derive(Debug, Clone, Copy)]
pub struct FleetAccount {
    /// Its name (as in `infra/k8s/base/rbac.yaml`).
    pub name: &'static str,
    /// The stages whose Deployments use it.
    pub stages: &'static [Stage],
    /// Verbs needed on every kind of [`KINDS`] (collection reads them, restore applies them).
    pub verbs_on_kinds: &'static [&'static str],
    /// Any further permissions.
    pub extra: &'static [Permission],
}

impl FleetAccount {
    /// Every permission the account needs, one per verb and kind.
    pub fn permissions(&self) -> Vec<Permission> {
        let mut permissions: Vec<Permission> = KINDS
            .iter()
            .flat_map(|&(group, resource)| {
                self.verbs_on_kinds.iter().map(move |&verb| Permission {
                    verb,
                    group,
                    resource,
                    subresource: "",
                })
            })
            .collect();
        permissions.extend_from_slice(self.extra);
        permissions
    }

    /// The Kubernetes user name of the account in `namespace`.
    pub fn user(&self, namespace: &str) -> String {
        format!("system:serviceaccount:{namespace}:{}", self.name)
    }
}

/// The kinds collection reads and restore applies, as `(group, resource)`; `("*", "*")` stands
/// for custom resources of any group, since collection reads every type discovery lists.
pub const KINDS: &[(&str, &str)] = &[
    ("", "namespaces"),
    ("", "persistentvolumes"),
    ("", "persistentvolumeclaims"),
    ("", "configmaps"),
    ("", "secrets"),
    ("", "services"),
    ("", "serviceaccounts"),
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("rbac.authorization.k8s.io", "roles"),
    ("rbac.authorization.k8s.io", "rolebindings"),
    ("rbac.authorization.k8s.io", "clusterroles"),
    ("rbac.authorization.k8s.io", "clusterrolebindings"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("storage.k8s.io", "storageclasses"),
    ("*", "*"),
];

/// The fleet's service accounts and what each needs: the one table the permissions check asks
/// about (the CLI's test loads `infra/k8s/base/rbac.yaml` into a sandbox and checks that it
/// grants all of it, and that removing a rule is reported).
///
/// - `stowage-snapshot` (snapshot): gets and lists every kind it collects, creates
///   `pods/exec` for hooks and VolumeSnapshots for CSI volumes.
/// - `stowage-restore` (restore): gets, lists, creates, patches and updates every kind it
///   applies (VolumeSnapshots and their contents among them: `*`); never deletes.
/// - `stowage-retention` (retention): deletes the VolumeSnapshots of expired operational tiers.
/// - `stowage-vault` (vault-transfer, geo-replication, restore-hydration): no Kubernetes access.
pub const FLEET_ACCOUNTS: &[FleetAccount] = &[
    FleetAccount {
        name: "stowage-snapshot",
        stages: &[Stage::Snapshot],
        verbs_on_kinds: &["get", "list"],
        extra: &[
            Permission {
                verb: "create",
                group: "",
                resource: "pods",
                subresource: "exec",
            },
            Permission {
                verb: "create",
                group: "snapshot.storage.k8s.io",
                resource: "volumesnapshots",
                subresource: "",
            },
        ],
    },
    FleetAccount {
        name: "stowage-restore",
        stages: &[Stage::Restore],
        verbs_on_kinds: &["get", "list", "create", "patch", "update"],
        extra: &[],
    },
    FleetAccount {
        name: "stowage-retention",
        stages: &[Stage::Retention],
        verbs_on_kinds: &[],
        extra: &[
            Permission {
                verb: "get",
                group: "snapshot.storage.k8s.io",
                resource: "volumesnapshots",
                subresource: "",
            },
            Permission {
                verb: "delete",
                group: "snapshot.storage.k8s.io",
                resource: "volumesnapshots",
                subresource: "",
            },
        ],
    },
    FleetAccount {
        name: "stowage-vault",
        stages: &[
            Stage::VaultTransfer,
            Stage::GeoReplication,
            Stage::RestoreHydration,
        ],
        verbs_on_kinds: &[],
        extra: &[],
    },
];

pub(super) async fn check_permissions(
    targets: &PreflightTargets,
    cluster: &KubeTarget,
    selection: Selection,
) -> Check {
    let ns = targets.fleet_namespace.as_str();
    let accounts: Vec<&FleetAccount> = FLEET_ACCOUNTS
        .iter()
        .filter(|a| selection == Selection::All || a.stages.contains(&Stage::Snapshot))
        .collect();
    let reviews: Vec<(&FleetAccount, Permission)> = accounts
        .iter()
        .flat_map(|a| a.permissions().into_iter().map(move |p| (*a, p)))
        .collect();
    let api: Api<SubjectAccessReview> = Api::all(cluster.client.clone());
    let answers: Vec<Result<(&FleetAccount, Permission, bool), kube::Error>> =
        futures::stream::iter(reviews)
            .map(|(account, permission)| {
                let api = api.clone();
                async move {
                    let review = access_review(&account.user(ns), ns, &permission);
                    let answer = api.create(&PostParams::default(), &review).await?;
                    let allowed = answer.status.is_some_and(|s| s.allowed);
                    Ok((account, permission, allowed))
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
    let answers: Vec<(&FleetAccount, Permission, bool)> = match answers
        .into_iter()
        .collect::<Result<_, _>>()
    {
        Ok(a) => a,
        Err(e) => {
            return Check::fail(
                PERMISSIONS,
                format!("cannot create SubjectAccessReviews: {}", chain(&e)),
                "let the identity running preflight create subjectaccessreviews.authorization.k8s.io \
                     (e.g. bind it to the system:auth-delegator ClusterRole)",
            );
        }
    };
    let mut missing: Vec<String> = Vec::new();
    for account in &accounts {
        let mut denied: Vec<String> = answers
            .iter()
            .filter(|(a, _, allowed)| a.name == account.name && !allowed)
            .map(|(_, p, _)| p.to_string())
            .collect();
        denied.sort();
        if !denied.is_empty() {
            missing.push(format!(
                "{} ({}) cannot {}",
                account.name,
                account
                    .stages
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                first_few(denied.iter().map(String::as_str), 6)
            ));
        }
    }
    let checked: Vec<&str> = accounts.iter().map(|a| a.name).collect();
    if missing.is_empty() {
        Check::pass(
            PERMISSIONS,
            format!(
                "{} in namespace {ns} hold every permission their stages need ({} access reviews)",
                checked.join(", "),
                answers.len()
            ),
        )
    } else {
        Check::fail(PERMISSIONS, missing.join("; "), rbac_fix(ns))
    }
}

/// The access review asking whether `user` holds `permission` cluster-wide.
pub fn access_review(user: &str, namespace: &str, permission: &Permission) -> SubjectAccessReview {
    let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            groups: Some(vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_owned(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(permission.verb.to_owned()),
                group: Some(permission.group.to_owned()),
                resource: Some(permission.resource.to_owned()),
                subresource: text(permission.subresource),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    }
}
