//! `stowage preflight`: what a backup needs, checked before the first one runs, the way the
//! prerequisites pages of Azure Backup for AKS and the pre-flight checks of Velero and Kasten
//! list them. Every check answers pass, warn, fail or skipped, and every failure carries its fix.
//!
//! | check | reads | fails when |
//! |---|---|---|
//! | [`VAULT_STORAGE`] | a delimited listing of the container root | the folder or container is missing or unreachable |
//! | [`VAULT_CONTENTS`] | the same listing | a top-level name is not Stowage's ([`layout::TOP_LEVEL_NAMES`]) |
//! | [`BROKER`] | a passive declare of one stage queue | the broker does not answer or refuses |
//! | [`TOPOLOGY`] | a passive declare of every stage queue and dead-letter queue | one is missing |
//! | [`CLUSTER`] | `/version` | no answer, or older than 1.20 (CSI snapshots are GA since 1.20) |
//! | [`CSI_DRIVERS`] | persistent volumes (paged; the instance's namespaces only, when given) | a CSI volume's driver is not the disk provider's (non-CSI volumes warn: snapshots skip them) |
//! | [`PERMISSIONS`] | one `SubjectAccessReview` per permission in [`FLEET_ACCOUNTS`] | a fleet service account lacks one |
//! | [`CONFLICTING_TOOLS`] | CRDs (paged), namespaces `velero` and `kasten-io` | Velero's CRDs or namespace, or Kasten's namespace, exist |
//! | [`AZURE_PERMISSIONS`] | ARM's permissions API at the snapshot, staging (and, when given, source) resource groups, with the Azure disk provider only | an action of `stowage_azure::permissions` is missing; the fix is the `az role assignment create` per role |
//! | [`REGION`] | the vault's region (given, or `vault.json`), node labels `topology.kubernetes.io/region`, the disk provider's [`DiskProvider::location_region`] | they differ |
//!
//! [`run_all`] runs the vault, broker and cluster groups concurrently; within the cluster group
//! the version check goes first (the others are skipped when the cluster does not answer) and
//! the rest run concurrently. Every check has its own deadline ([`PreflightTargets::timeout`],
//! 5 s by default), so a dead endpoint fails its checks instead of hanging the command.
//!
//! # When an instance is created
//!
//! [`for_instance`] runs the checks a new backup instance depends on — vault storage and
//! contents, cluster version, the CSI drivers of the volumes in the instance's scope, the snapshot
//! account's permissions, conflicting tools, region and, with the Azure disk provider, its ARM
//! permissions — with a 2 s deadline each, and skips the
//! broker (instance creation does not publish). A command creating an instance calls it and
//! refuses the instance when [`Report::refusal`] returns a message:
//!
//! ```no_run
//! # async fn create(targets: stowage_control::preflight::PreflightTargets,
//! #                 instance: stowage_schemas::domain::BackupInstance) -> Result<(), String> {
//! let report = stowage_control::preflight::for_instance(&targets, &instance).await;
//! if let Some(why) = report.refusal() {
//!     return Err(format!("instance {} refused: {why}", instance.name));
//! }
//! # Ok(()) }
//! ```

mod azure;
mod broker;
mod cluster;
mod permissions;
mod vault;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, ObjectList, PostParams};
use serde::Serialize;
use stowage_disk::DiskProvider;
use stowage_runtime::{Broker, BrokerError, Names};
use stowage_schemas::Stage;
use stowage_schemas::domain::{BackupInstance, Namespaces, Scope};
use stowage_vault::layout;
use stowage_vault::store::BlobStore;

use azure::azure_checks;
use broker::broker_checks;
use cluster::cluster_checks;
pub use cluster::parse_minor;
pub use permissions::{FLEET_ACCOUNTS, FleetAccount, KINDS, Permission, access_review};
use vault::vault_checks;

/// Check name: the vault's storage is reachable and its container exists.
pub const VAULT_STORAGE: &str = "vault-storage";
/// Check name: the vault's container is empty or holds only Stowage data.
pub const VAULT_CONTENTS: &str = "vault-contents";
/// Check name: the broker is reachable.
pub const BROKER: &str = "broker";
/// Check name: the broker topology is declared.
pub const TOPOLOGY: &str = "topology";
/// Check name: the cluster is reachable and its Kubernetes version supports CSI snapshots.
pub const CLUSTER: &str = "cluster-version";
/// Check name: the volumes' CSI drivers are ones the disk provider handles.
pub const CSI_DRIVERS: &str = "csi-drivers";
/// Check name: the fleet's service accounts hold the permissions each stage needs.
pub const PERMISSIONS: &str = "permissions";
/// Check name: no conflicting backup tool is installed.
pub const CONFLICTING_TOOLS: &str = "conflicting-tools";
/// Check name: the workers' Azure identity holds the ARM actions the Azure disk provider needs.
pub const AZURE_PERMISSIONS: &str = "azure-permissions";
/// Check name: the vault, the cluster and the snapshot location are in the same region.
pub const REGION: &str = "region";

/// The oldest Kubernetes minor version (of major 1) with GA CSI volume snapshots.
pub const MIN_KUBERNETES_MINOR: u32 = 20;
/// The node label that names a node's region.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// The namespace the fleet's manifests (`infra/k8s`) deploy into.
pub const DEFAULT_FLEET_NAMESPACE: &str = "stowage";
/// Each check's deadline in [`run_all`] unless the targets say otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Each check's deadline in [`for_instance`].
pub const INSTANCE_TIMEOUT: Duration = Duration::from_secs(2);

/// The fix for missing fleet permissions: commands to paste, from the root of a Stowage
/// checkout, that create the fleet's namespace `ns` if it is missing (idempotent: a client-side
/// dry run piped to apply) and apply `infra/k8s/base/rbac.yaml` into it. The file binds the
/// service accounts of namespace `stowage`; for another namespace the bindings' subjects are
/// rewritten on the way.
pub(crate) fn rbac_fix(ns: &str) -> String {
    let apply = if ns == DEFAULT_FLEET_NAMESPACE {
        format!("kubectl apply -n {ns} -f infra/k8s/base/rbac.yaml")
    } else {
        format!(
            "sed 's/namespace: {DEFAULT_FLEET_NAMESPACE}$/namespace: {ns}/' infra/k8s/base/rbac.yaml \
             | kubectl apply -n {ns} -f -"
        )
    };
    format!(
        "apply the fleet's RBAC, from the root of the Stowage repository: \
         `kubectl create namespace {ns} --dry-run=client -o yaml | kubectl apply -f - && {apply}` \
         (or the whole fleet: `kubectl apply -k infra/k8s/overlays/prod`)"
    )
}

/// How a check came out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum Status {
    /// What the check looks for is in order.
    Pass,
    /// Backups will run, with a caveat the detail explains.
    Warn,
    /// Backups will fail or misbehave until the fix is applied.
    Fail,
    /// Not checked, for the reason given (nothing to check against, or a check it depends on
    /// failed).
    Skipped(String),
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The check's name (one of the constants of this module).
    pub name: String,
    /// Pass, warn, fail or skipped.
    #[serde(flatten)]
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about a failure or warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(name: &str, status: Status, detail: impl Into<String>, fix: Option<String>) -> Self {
        Self {
            name: name.to_owned(),
            status,
            detail: detail.into(),
            fix,
        }
    }

    fn pass(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Pass, detail, None)
    }

    fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, Status::Fail, detail, Some(fix.into()))
    }

    fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, Status::Warn, detail, Some(fix.into()))
    }

    fn skipped(name: &str, reason: impl Into<String>) -> Self {
        Self::new(name, Status::Skipped(reason.into()), "", None)
    }

    /// Whether the check failed.
    pub fn failed(&self) -> bool {
        self.status == Status::Fail
    }
}

/// Every check's result, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The checks, vault first, then broker, then cluster.
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether no check failed (warnings and skips do not count).
    pub fn passed(&self) -> bool {
        !self.checks.iter().any(Check::failed)
    }

    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.failed())
    }

    /// The check of that name, if it ran.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// `None` when nothing failed; otherwise one message naming each failed check, what it found
    /// and its fix: what a command refusing an instance prints.
    pub fn refusal(&self) -> Option<String> {
        let reasons: Vec<String> = self
            .failures()
            .map(|c| match &c.fix {
                Some(fix) => format!("{}: {} (fix: {fix})", c.name, c.detail),
                None => format!("{}: {}", c.name, c.detail),
            })
            .collect();
        (!reasons.is_empty()).then(|| {
            format!(
                "{} preflight check(s) failed: {}",
                reasons.len(),
                reasons.join("; ")
            )
        })
    }
}

/// The vault to check: its location as `--vault` takes it, and its region if known.
#[derive(Debug, Clone)]
pub struct VaultTarget {
    /// A folder, `azurite://<container>` or `azure://<account>/<container>`.
    pub location: String,
    /// The Azure account key, for `azure://` locations.
    pub access_key: Option<String>,
    /// The vault's region; when `None` it is read from `vault.json` if the vault has one.
    pub region: Option<String>,
}

/// The broker to check.
#[derive(Clone)]
pub struct BrokerTarget {
    /// The broker (RabbitMQ or in-process).
    pub broker: Arc<dyn Broker>,
    /// The topology's names (its prefix).
    pub names: Names,
}

/// The cluster to check.
#[derive(Clone)]
pub struct KubeTarget {
    /// A client for its API server.
    pub client: kube::Client,
    /// Its URL, for messages.
    pub url: String,
}

/// What [`run_all`] and [`for_instance`] check. A target left `None` skips its checks.
#[derive(Clone)]
pub struct PreflightTargets {
    /// The vault.
    pub vault: Option<VaultTarget>,
    /// The broker.
    pub broker: Option<BrokerTarget>,
    /// The cluster.
    pub cluster: Option<KubeTarget>,
    /// The disk provider the snapshot stage uses (its CSI driver and snapshot region).
    pub disks: Option<Arc<dyn DiskProvider>>,
    /// The name of the cluster checked (`--cluster-name`): the broker check then reports
    /// whether any worker serves its snapshot and restore queues.
    pub cluster_name: Option<String>,
    /// The namespace of the fleet's service accounts.
    pub fleet_namespace: String,
    /// Only volumes claimed in these namespaces are checked; `None`: every volume.
    pub scope: Option<Scope>,
    /// Each check's deadline.
    pub timeout: Duration,
    /// With the Azure disk provider: the ARM client and the scopes whose permissions are
    /// checked ([`AZURE_PERMISSIONS`]).
    pub azure: Option<AzureTarget>,
}

/// The Azure permissions to check.
#[derive(Debug, Clone)]
pub struct AzureTarget {
    /// A client of ARM as the workers' identity.
    pub arm: stowage_azure::ArmClient,
    /// The scopes and what is needed at each (`stowage_azure::AzureConfig::scopes`).
    pub scopes: Vec<stowage_azure::config::Scope>,
}

impl Default for PreflightTargets {
    fn default() -> Self {
        Self {
            vault: None,
            broker: None,
            cluster: None,
            disks: None,
            cluster_name: None,
            fleet_namespace: DEFAULT_FLEET_NAMESPACE.to_owned(),
            scope: None,
            timeout: DEFAULT_TIMEOUT,
            azure: None,
        }
    }
}

/// Runs every check (see the module docs), each with the targets' deadline.
pub async fn run_all(targets: &PreflightTargets) -> Report {
    run(targets, Selection::All).await
}

/// Runs the checks creating `instance` depends on, fast (a [`INSTANCE_TIMEOUT`] deadline each,
/// or the targets' if shorter), with the CSI-driver check limited to the volumes in the
/// instance's scope and the permissions check to the snapshot account. The broker is not
/// checked. Refuse the instance when [`Report::refusal`] answers a message.
pub async fn for_instance(targets: &PreflightTargets, instance: &BackupInstance) -> Report {
    let mut targets = targets.clone();
    targets.timeout = targets.timeout.min(INSTANCE_TIMEOUT);
    targets.scope = Some(instance.scope.clone());
    run(&targets, Selection::Instance).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Selection {
    All,
    Instance,
}

async fn run(targets: &PreflightTargets, selection: Selection) -> Report {
    let broker = async {
        if selection == Selection::All {
            broker_checks(targets).await
        } else {
            Vec::new()
        }
    };
    let (vault, broker, cluster, azure) = tokio::join!(
        vault_checks(targets),
        broker,
        cluster_checks(targets, selection),
        azure_checks(targets)
    );
    let mut checks = vault;
    checks.extend(broker);
    checks.extend(cluster);
    checks.extend(azure);
    Report { checks }
}

/// Runs `check` with a deadline; on timeout, fails `name` saying what did not answer.
async fn timed<F>(name: &str, timeout: Duration, what: &str, fix: &str, check: F) -> Check
where
    F: Future<Output = Check>,
{
    match tokio::time::timeout(timeout, check).await {
        Ok(check) => check,
        Err(_) => Check::fail(
            name,
            format!("{what} did not answer within {} s", timeout.as_secs_f32()),
            fix,
        ),
    }
}

/// An error with its sources, for details.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

fn first_few<'a>(items: impl Iterator<Item = &'a str>, n: usize) -> String {
    let all: Vec<&str> = items.collect();
    let mut text = all.iter().take(n).copied().collect::<Vec<_>>().join(", ");
    if all.len() > n {
        text.push_str(&format!(" and {} more", all.len() - n));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::cluster::namespace_in_scope;
    use super::*;

    #[test]
    fn minor_versions_parse_as_kubernetes_reports_them() {
        assert_eq!(parse_minor("33"), Some(33));
        assert_eq!(parse_minor("27+"), Some(27));
        assert_eq!(parse_minor(""), None);
    }

    #[test]
    fn the_table_expands_one_permission_per_verb() {
        let snapshot = &FLEET_ACCOUNTS[0];
        let permissions = snapshot.permissions();
        assert_eq!(permissions.len(), KINDS.len() * 2 + 2);
        assert!(permissions.contains(&Permission {
            verb: "create",
            group: "snapshot.storage.k8s.io",
            resource: "volumesnapshots",
            subresource: ""
        }));
        assert!(permissions.contains(&Permission {
            verb: "create",
            group: "",
            resource: "pods",
            subresource: "exec"
        }));
        let restore = &FLEET_ACCOUNTS[1];
        assert_eq!(restore.permissions().len(), KINDS.len() * 5);
        assert!(
            !restore.permissions().iter().any(|p| p.verb == "delete"),
            "restore never deletes"
        );
        let retention = &FLEET_ACCOUNTS[2];
        assert_eq!(retention.name, "stowage-retention");
        assert!(
            retention
                .permissions()
                .iter()
                .all(|p| p.resource == "volumesnapshots" && p.verb != "create"),
            "retention only reads and deletes VolumeSnapshots"
        );
        assert!(FLEET_ACCOUNTS[3].permissions().is_empty());
        // Every stage with a Deployment is served by exactly one account.
        for stage in [
            Stage::Snapshot,
            Stage::Retention,
            Stage::VaultTransfer,
            Stage::GeoReplication,
            Stage::RestoreHydration,
            Stage::Restore,
        ] {
            assert_eq!(
                FLEET_ACCOUNTS
                    .iter()
                    .filter(|a| a.stages.contains(&stage))
                    .count(),
                1,
                "{stage}"
            );
        }
    }

    #[test]
    fn checks_serialize_with_status_and_reason() {
        let check = Check::skipped(REGION, "nothing to compare");
        let json = serde_json::to_value(&check).unwrap();
        assert_eq!(json["status"], "skipped");
        assert_eq!(json["reason"], "nothing to compare");
        let json = serde_json::to_value(Check::fail(BROKER, "down", "start it")).unwrap();
        assert_eq!(json["status"], "fail");
        assert_eq!(json["fix"], "start it");
        assert!(json.get("reason").is_none());
    }

    #[test]
    fn a_refusal_names_each_failure_and_its_fix() {
        let report = Report {
            checks: vec![
                Check::pass(VAULT_STORAGE, "ok"),
                Check::fail(REGION, "not in one region", "move the vault"),
            ],
        };
        assert!(!report.passed());
        let why = report.refusal().unwrap();
        assert!(
            why.contains("region: not in one region (fix: move the vault)"),
            "{why}"
        );
        let ok = Report {
            checks: vec![Check::warn(CSI_DRIVERS, "nfs", "move it")],
        };
        assert!(ok.passed());
        assert_eq!(ok.refusal(), None);
    }

    #[test]
    fn scopes_select_namespaces() {
        let scope = Scope {
            namespaces: Namespaces::List {
                names: vec!["shop".into(), "blog".into()],
            },
            exclude_namespaces: vec!["blog".into()],
            ..Scope::default()
        };
        assert!(namespace_in_scope(Some(&scope), "shop"));
        assert!(!namespace_in_scope(Some(&scope), "blog"));
        assert!(!namespace_in_scope(Some(&scope), "other"));
        assert!(namespace_in_scope(None, "other"));
    }

    #[tokio::test]
    async fn a_missing_local_vault_folder_fails_with_its_fix_and_creates_nothing() {
        let dir = std::env::temp_dir().join(format!("stowage-preflight-{}", std::process::id()));
        let missing = dir.join("no-such-vault");
        let targets = PreflightTargets {
            vault: Some(VaultTarget {
                location: missing.display().to_string(),
                access_key: None,
                region: None,
            }),
            ..PreflightTargets::default()
        };
        let report = run_all(&targets).await;
        let storage = report.get(VAULT_STORAGE).unwrap();
        assert!(storage.failed(), "{storage:?}");
        assert!(
            storage.fix.as_deref().unwrap().contains("mkdir -p"),
            "{storage:?}"
        );
        assert!(matches!(
            report.get(VAULT_CONTENTS).unwrap().status,
            Status::Skipped(_)
        ));
        assert!(!missing.exists(), "preflight must not create the vault");
        assert!(matches!(
            report.get(BROKER).unwrap().status,
            Status::Skipped(_)
        ));
    }
}
