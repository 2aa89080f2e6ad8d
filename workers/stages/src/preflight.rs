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
//! account's permissions, conflicting tools and region — with a 2 s deadline each, and skips the
//! broker (instance creation does not publish). A command creating an instance calls it and
//! refuses the instance when [`Report::refusal`] returns a message:
//!
//! ```no_run
//! # async fn create(targets: stowage_stages::preflight::PreflightTargets,
//! #                 instance: stowage_schemas::domain::BackupInstance) -> Result<(), String> {
//! let report = stowage_stages::preflight::for_instance(&targets, &instance).await;
//! if let Some(why) = report.refusal() {
//!     return Err(format!("instance {} refused: {why}", instance.name));
//! }
//! # Ok(()) }
//! ```

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

/// Where the fleet's RBAC lives, for fixes.
const RBAC_FIX: &str = "apply the fleet's RBAC: `kubectl apply -n {ns} -f infra/k8s/base/rbac.yaml` \
     (or the whole fleet: `kubectl kustomize --load-restrictor LoadRestrictionsNone infra/k8s/overlays/prod | kubectl apply -f -`)";

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
    fn pass(name: &str, detail: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn skipped(name: &str, reason: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            status: Status::Skipped(reason.into()),
            detail: String::new(),
            fix: None,
        }
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
    /// The namespace of the fleet's service accounts.
    pub fleet_namespace: String,
    /// Only volumes claimed in these namespaces are checked; `None`: every volume.
    pub scope: Option<Scope>,
    /// Each check's deadline.
    pub timeout: Duration,
}

impl Default for PreflightTargets {
    fn default() -> Self {
        Self {
            vault: None,
            broker: None,
            cluster: None,
            disks: None,
            fleet_namespace: DEFAULT_FLEET_NAMESPACE.to_owned(),
            scope: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

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
/// - `stowage-snapshot` (snapshot): gets and lists every kind it collects, and creates
///   `pods/exec` for hooks.
/// - `stowage-restore` (restore): gets, lists, creates, patches and updates every kind it
///   applies; never deletes.
/// - `stowage-vault` (vault-transfer, geo-replication, restore-hydration): no Kubernetes access.
pub const FLEET_ACCOUNTS: &[FleetAccount] = &[
    FleetAccount {
        name: "stowage-snapshot",
        stages: &[Stage::Snapshot],
        verbs_on_kinds: &["get", "list"],
        extra: &[Permission {
            verb: "create",
            group: "",
            resource: "pods",
            subresource: "exec",
        }],
    },
    FleetAccount {
        name: "stowage-restore",
        stages: &[Stage::Restore],
        verbs_on_kinds: &["get", "list", "create", "patch", "update"],
        extra: &[],
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
    let (vault, broker, cluster) = tokio::join!(
        vault_checks(targets),
        broker,
        cluster_checks(targets, selection)
    );
    let mut checks = vault;
    checks.extend(broker);
    checks.extend(cluster);
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

// ---------------------------------------------------------------------------------------------
// Vault

fn local_path(location: &str) -> Option<&str> {
    (!location.contains("://") || location.starts_with("file://"))
        .then(|| location.strip_prefix("file://").unwrap_or(location))
}

/// Opens the vault without creating anything: a local folder must already exist.
fn open_vault(target: &VaultTarget) -> Result<BlobStore, Check> {
    if let Some(path) = local_path(&target.location) {
        match std::fs::metadata(Path::new(path)) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Check::fail(
                    VAULT_STORAGE,
                    format!("the vault folder {path} is a file, not a folder"),
                    "point --vault at a folder (an empty one for a new vault)",
                ));
            }
            Err(e) => {
                return Err(Check::fail(
                    VAULT_STORAGE,
                    format!("the vault folder {path} cannot be used: {e}"),
                    format!(
                        "create it (`mkdir -p {path}`) on a local filesystem, or point --vault at the vault"
                    ),
                ));
            }
        }
    }
    BlobStore::open(&target.location, target.access_key.as_deref()).map_err(|e| {
        Check::fail(
            VAULT_STORAGE,
            chain(&e),
            "fix --vault: a folder, azurite://<container> or azure://<account>/<container> with STOWAGE_AZURE_ACCESS_KEY",
        )
    })
}

fn container_of(location: &str) -> Option<&str> {
    location.strip_prefix("azurite://").or_else(|| {
        location
            .strip_prefix("azure://")?
            .split_once('/')
            .map(|(_, c)| c)
    })
}

fn storage_failure(target: &VaultTarget, error: &stowage_vault::Error) -> Check {
    let text = chain(error);
    let container = container_of(&target.location);
    if let Some(container) = container
        .filter(|_| text.contains("ContainerNotFound") || text.contains("container does not exist"))
    {
        let create = if target.location.starts_with("azurite://") {
            format!(
                "create it: `az storage container create --name {container} --connection-string \"UseDevelopmentStorage=true\"` (Azurite)"
            )
        } else {
            format!(
                "create it: `az storage container create --name {container} --account-name <account>`"
            )
        };
        return Check::fail(
            VAULT_STORAGE,
            format!("the container {container:?} does not exist"),
            create,
        );
    }
    Check::fail(
        VAULT_STORAGE,
        format!(
            "the vault storage at {} cannot be listed: {text}",
            target.location
        ),
        if container.is_some() {
            "check that the storage endpoint is reachable (Azurite: `infra/scripts/start-azurite.sh`), the account key (STOWAGE_AZURE_ACCESS_KEY) and the container name"
        } else {
            "check that the folder is readable by this user"
        },
    )
}

/// [`VAULT_STORAGE`] and [`VAULT_CONTENTS`], from one listing of the container's top level.
async fn vault_checks(targets: &PreflightTargets) -> Vec<Check> {
    let Some(target) = &targets.vault else {
        let why = "no vault given (--vault)";
        return vec![
            Check::skipped(VAULT_STORAGE, why),
            Check::skipped(VAULT_CONTENTS, why),
        ];
    };
    let listing = async {
        let store = open_vault(target)?;
        let names = store
            .list_top_level()
            .await
            .map_err(|e| storage_failure(target, &e))?;
        Ok::<_, Check>((store, names))
    };
    let listing = tokio::time::timeout(targets.timeout, listing).await;
    let (store, names) = match listing {
        Ok(Ok(found)) => found,
        Ok(Err(failed)) => {
            return vec![
                failed,
                Check::skipped(VAULT_CONTENTS, "the vault storage cannot be read"),
            ];
        }
        Err(_) => {
            return vec![
                Check::fail(
                    VAULT_STORAGE,
                    format!(
                        "the vault storage at {} did not answer within {} s",
                        target.location,
                        targets.timeout.as_secs_f32()
                    ),
                    "check that the storage endpoint is up and reachable from here (Azurite: `infra/scripts/start-azurite.sh`)",
                ),
                Check::skipped(VAULT_CONTENTS, "the vault storage cannot be read"),
            ];
        }
    };
    let storage = Check::pass(
        VAULT_STORAGE,
        format!(
            "{store} is reachable ({} top-level names)",
            names.iter().filter(|n| !n.starts_with('.')).count()
        ),
    );
    let foreign: Vec<&String> = names
        .iter()
        .filter(|n| !layout::is_vault_top_level(n))
        .collect();
    let contents = if names.iter().all(|n| n.starts_with('.')) {
        Check::pass(VAULT_CONTENTS, "empty: ready to become a vault")
    } else if foreign.is_empty() {
        let ours: Vec<&str> = names
            .iter()
            .filter(|n| !n.starts_with('.'))
            .map(String::as_str)
            .collect();
        Check::pass(
            VAULT_CONTENTS,
            format!("holds only Stowage data ({})", ours.join(", ")),
        )
    } else {
        Check::fail(
            VAULT_CONTENTS,
            format!(
                "holds {} top-level name(s) that are not Stowage data: {}",
                foreign.len(),
                first_few(foreign.iter().map(|s| s.as_str()), 5)
            ),
            "give the vault a container or folder of its own (empty, or written only by Stowage); \
             Stowage's retention and verification walk the whole vault and must not meet other data",
        )
    };
    vec![storage, contents]
}

fn first_few<'a>(items: impl Iterator<Item = &'a str>, n: usize) -> String {
    let all: Vec<&str> = items.collect();
    let mut text = all.iter().take(n).copied().collect::<Vec<_>>().join(", ");
    if all.len() > n {
        text.push_str(&format!(" and {} more", all.len() - n));
    }
    text
}

/// The vault's region: given, or read from `vault.json`.
async fn vault_region(target: &VaultTarget) -> Result<Option<String>, String> {
    if let Some(region) = &target.region {
        return Ok(Some(region.clone()));
    }
    let store = open_vault(target).map_err(|c| c.detail)?;
    match crate::settings::read_vault(&store).await {
        Ok(vault) => Ok(Some(vault.region)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(chain(&e)),
    }
}

// ---------------------------------------------------------------------------------------------
// Broker

/// [`BROKER`] and [`TOPOLOGY`].
async fn broker_checks(targets: &PreflightTargets) -> Vec<Check> {
    let Some(target) = &targets.broker else {
        let why = "no broker to check (--no-broker)";
        return vec![Check::skipped(BROKER, why), Check::skipped(TOPOLOGY, why)];
    };
    let endpoint = target.broker.endpoint();
    let reach_fix = format!(
        "start RabbitMQ, or fix --amqp-url (now {endpoint}); check the user's password and vhost"
    );
    let probe_queue = target.names.stage_queue(Stage::Snapshot);
    let reach = timed(
        BROKER,
        targets.timeout,
        &format!("the broker at {endpoint}"),
        &reach_fix,
        async {
            match target.broker.queue_depth(&probe_queue).await {
                Ok(_) | Err(BrokerError::NotFound { .. }) => {
                    Check::pass(BROKER, format!("{endpoint} answers"))
                }
                Err(e) => Check::fail(BROKER, chain(&e), reach_fix.clone()),
            }
        },
    )
    .await;
    if reach.failed() {
        return vec![reach, Check::skipped(TOPOLOGY, "the broker is unreachable")];
    }
    let declare_fix = format!(
        "declare it: `stowage topology declare --amqp-url <url> --prefix {}` (every worker also declares it at start)",
        target.names.prefix()
    );
    let topology = timed(
        TOPOLOGY,
        targets.timeout,
        &format!("the broker at {endpoint}"),
        &declare_fix,
        async {
            let queues: Vec<String> = Stage::ALL
                .iter()
                .flat_map(|&s| {
                    [
                        target.names.stage_queue(s),
                        target.names.dead_letter_queue(s),
                    ]
                })
                .collect();
            let answers = futures::stream::iter(queues.iter())
                .map(|q| async move { (q, target.broker.queue_depth(q).await) })
                .buffered(4)
                .collect::<Vec<_>>()
                .await;
            let mut missing = Vec::new();
            for (queue, answer) in answers {
                match answer {
                    Ok(_) => {}
                    Err(BrokerError::NotFound { .. }) => missing.push(queue.as_str()),
                    Err(e) => {
                        return Check::fail(
                            TOPOLOGY,
                            format!("cannot inspect queue {queue}: {}", chain(&e)),
                            reach_fix.clone(),
                        );
                    }
                }
            }
            if missing.is_empty() {
                Check::pass(
                    TOPOLOGY,
                    format!(
                        "prefix {:?}: all {} stage and dead-letter queues exist",
                        target.names.prefix(),
                        queues.len()
                    ),
                )
            } else {
                Check::fail(
                    TOPOLOGY,
                    format!(
                        "prefix {:?}: {} of {} queues are missing: {}",
                        target.names.prefix(),
                        missing.len(),
                        queues.len(),
                        first_few(missing.into_iter(), 4)
                    ),
                    declare_fix.clone(),
                )
            }
        },
    )
    .await;
    vec![reach, topology]
}

// ---------------------------------------------------------------------------------------------
// Cluster

/// [`CLUSTER`] first; then [`CSI_DRIVERS`], [`PERMISSIONS`], [`CONFLICTING_TOOLS`] and
/// [`REGION`] concurrently.
async fn cluster_checks(targets: &PreflightTargets, selection: Selection) -> Vec<Check> {
    let names = [CSI_DRIVERS, PERMISSIONS, CONFLICTING_TOOLS, REGION];
    let Some(cluster) = &targets.cluster else {
        let why = "no cluster given (--cluster-url)";
        let mut checks = vec![Check::skipped(CLUSTER, why)];
        checks.extend(names.iter().map(|n| Check::skipped(n, why)));
        return checks;
    };
    let reach_fix = format!(
        "check that the API server at {} is up and that --cluster-url is right",
        cluster.url
    );
    let version = timed(
        CLUSTER,
        targets.timeout,
        &format!("the API server at {}", cluster.url),
        &reach_fix,
        check_version(cluster, &reach_fix),
    )
    .await;
    if version.status != Status::Pass {
        let mut checks = vec![version];
        let why = "the cluster did not pass the version check";
        checks.extend(names.iter().map(|n| Check::skipped(n, why)));
        return checks;
    }
    let t = targets.timeout;
    let api = format!("the API server at {}", cluster.url);
    let (drivers, permissions, tools, region) = tokio::join!(
        timed(
            CSI_DRIVERS,
            t,
            &api,
            &reach_fix,
            check_csi_drivers(targets, cluster)
        ),
        timed(
            PERMISSIONS,
            t,
            &api,
            &reach_fix,
            check_permissions(targets, cluster, selection)
        ),
        timed(
            CONFLICTING_TOOLS,
            t,
            &api,
            &reach_fix,
            check_conflicting_tools(cluster)
        ),
        timed(REGION, t, &api, &reach_fix, check_region(targets, cluster)),
    );
    vec![version, drivers, permissions, tools, region]
}

/// Parses a version's minor number as Kubernetes reports it (`"33"`, `"27+"`).
pub fn parse_minor(minor: &str) -> Option<u32> {
    let digits: String = minor.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

async fn check_version(cluster: &KubeTarget, reach_fix: &str) -> Check {
    let info = match cluster.client.apiserver_version().await {
        Ok(info) => info,
        Err(e) => {
            return Check::fail(
                CLUSTER,
                format!(
                    "the API server at {} cannot be reached: {}",
                    cluster.url,
                    chain(&e)
                ),
                reach_fix,
            );
        }
    };
    let supported = (info.major == "1"
        && parse_minor(&info.minor).is_some_and(|m| m >= MIN_KUBERNETES_MINOR))
        || info.major.parse::<u32>().is_ok_and(|m| m > 1);
    let version = format!("{}.{}", info.major, info.minor);
    if supported {
        Check::pass(
            CLUSTER,
            format!(
                "Kubernetes {version} ({}) supports CSI snapshots",
                info.git_version
            ),
        )
    } else {
        Check::fail(
            CLUSTER,
            format!(
                "Kubernetes {version} is older than 1.{MIN_KUBERNETES_MINOR}: CSI volume snapshots are not GA there"
            ),
            format!("upgrade the cluster to Kubernetes 1.{MIN_KUBERNETES_MINOR} or newer"),
        )
    }
}

/// Lists every object of `api`, a page at a time, handing each page to `visit`.
async fn for_each_page<K>(
    api: &Api<K>,
    mut visit: impl FnMut(ObjectList<K>),
) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await?;
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        visit(page);
        match next {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
}

fn namespace_in_scope(scope: Option<&Scope>, namespace: &str) -> bool {
    let Some(scope) = scope else {
        return true;
    };
    let listed = match &scope.namespaces {
        Namespaces::All => true,
        Namespaces::List { names } => names.iter().any(|n| n == namespace),
    };
    listed && !scope.exclude_namespaces.iter().any(|n| n == namespace)
}

async fn check_csi_drivers(targets: &PreflightTargets, cluster: &KubeTarget) -> Check {
    let Some(disks) = &targets.disks else {
        return Check::skipped(CSI_DRIVERS, "no disk provider given (--disk-root)");
    };
    if targets.scope.as_ref().is_some_and(|s| !s.include_volumes) {
        return Check::skipped(CSI_DRIVERS, "the instance does not back up volume data");
    }
    let handled = disks.driver().to_owned();
    let mut ours = 0usize;
    let mut foreign: Vec<String> = Vec::new();
    let mut not_csi: Vec<String> = Vec::new();
    let scope = targets.scope.as_ref();
    let api: Api<PersistentVolume> = Api::all(cluster.client.clone());
    let listed = for_each_page(&api, |page| {
        for pv in page.items {
            let spec = pv.spec.unwrap_or_default();
            let claim_ns = spec
                .claim_ref
                .as_ref()
                .and_then(|c| c.namespace.clone())
                .unwrap_or_default();
            // Unbound volumes belong to no instance; with a scope, only its claims count.
            if scope.is_some() && (claim_ns.is_empty() || !namespace_in_scope(scope, &claim_ns)) {
                continue;
            }
            let name = pv.metadata.name.unwrap_or_default();
            match spec.csi {
                Some(csi) if csi.driver == handled => ours += 1,
                Some(csi) => foreign.push(format!("{name} ({})", csi.driver)),
                None => not_csi.push(name),
            }
        }
    })
    .await;
    if let Err(e) = listed {
        return Check::fail(
            CSI_DRIVERS,
            format!("cannot list persistent volumes: {}", chain(&e)),
            "let the identity running preflight list persistentvolumes",
        );
    }
    if !foreign.is_empty() {
        return Check::fail(
            CSI_DRIVERS,
            format!(
                "{} volume(s) use CSI drivers the disk provider does not handle ({handled} only): {}",
                foreign.len(),
                first_few(foreign.iter().map(String::as_str), 5)
            ),
            format!(
                "move those volumes to a storage class of {handled}, or leave their namespaces out of the instance's scope (exclude_namespaces); otherwise their data is not backed up"
            ),
        );
    }
    if !not_csi.is_empty() {
        return Check::warn(
            CSI_DRIVERS,
            format!(
                "{ours} volume(s) on {handled}; {} are not CSI volumes and will be skipped by snapshots: {}",
                not_csi.len(),
                first_few(not_csi.iter().map(String::as_str), 5)
            ),
            format!(
                "to back their data up, move them to a storage class of {handled}; the resources are still backed up"
            ),
        );
    }
    Check::pass(CSI_DRIVERS, format!("{ours} volume(s), all on {handled}"))
}

async fn check_permissions(
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
        Check::fail(
            PERMISSIONS,
            missing.join("; "),
            RBAC_FIX.replace("{ns}", ns),
        )
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

async fn check_conflicting_tools(cluster: &KubeTarget) -> Check {
    let mut found: Vec<String> = Vec::new();
    let mut fixes: BTreeSet<&str> = BTreeSet::new();
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    let mut velero_crds: Vec<String> = Vec::new();
    let listed = for_each_page(&crds, |page| {
        velero_crds.extend(
            page.items
                .into_iter()
                .filter_map(|crd| crd.metadata.name)
                .filter(|name| name.ends_with(".velero.io")),
        );
    })
    .await;
    if let Err(e) = listed {
        return Check::fail(
            CONFLICTING_TOOLS,
            format!("cannot list CustomResourceDefinitions: {}", chain(&e)),
            "let the identity running preflight list customresourcedefinitions",
        );
    }
    if !velero_crds.is_empty() {
        found.push(format!(
            "Velero's CRDs ({})",
            first_few(velero_crds.iter().map(String::as_str), 3)
        ));
        fixes.insert("uninstall Velero (`velero uninstall`)");
    }
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    for (namespace, tool, fix) in [
        ("velero", "Velero", "uninstall Velero (`velero uninstall`)"),
        (
            "kasten-io",
            "Kasten K10",
            "uninstall Kasten K10 (`helm uninstall k10 -n kasten-io`)",
        ),
    ] {
        match namespaces.get_opt(namespace).await {
            Ok(Some(_)) => {
                found.push(format!("{tool}'s namespace {namespace:?}"));
                fixes.insert(fix);
            }
            Ok(None) => {}
            Err(e) => {
                return Check::fail(
                    CONFLICTING_TOOLS,
                    format!("cannot read namespace {namespace:?}: {}", chain(&e)),
                    "let the identity running preflight get namespaces",
                );
            }
        }
    }
    if found.is_empty() {
        Check::pass(
            CONFLICTING_TOOLS,
            "no Velero CRDs or namespace, no Kasten namespace",
        )
    } else {
        Check::fail(
            CONFLICTING_TOOLS,
            format!("another backup tool is installed: {}", found.join(", ")),
            format!(
                "{}, or make sure it never backs up what Stowage does: two tools snapshotting the same volumes and running hooks at once can fail both",
                fixes.into_iter().collect::<Vec<_>>().join("; ")
            ),
        )
    }
}

async fn check_region(targets: &PreflightTargets, cluster: &KubeTarget) -> Check {
    let mut known: Vec<(&str, String)> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    match &targets.vault {
        Some(vault) => match vault_region(vault).await {
            Ok(Some(region)) => known.push(("vault", region)),
            Ok(None) => unknown.push("the vault's (no --vault-region and no vault.json)".into()),
            Err(e) => unknown.push(format!("the vault's ({e})")),
        },
        None => unknown.push("the vault's (no --vault)".into()),
    }
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let mut regions: BTreeSet<String> = BTreeSet::new();
    let mut unlabelled = 0usize;
    let listed = for_each_page(&nodes, |page| {
        for node in page.items {
            match node
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REGION_LABEL))
            {
                Some(region) => {
                    regions.insert(region.clone());
                }
                None => unlabelled += 1,
            }
        }
    })
    .await;
    if let Err(e) = listed {
        return Check::fail(
            REGION,
            format!("cannot list nodes: {}", chain(&e)),
            "let the identity running preflight list nodes",
        );
    }
    if regions.len() > 1 {
        return Check::fail(
            REGION,
            format!(
                "the cluster's nodes are in {} regions ({})",
                regions.len(),
                regions.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
            "back up a cluster whose nodes share one region, with a vault and snapshot location in that region",
        );
    }
    match regions.pop_first() {
        Some(region) => known.push(("cluster", region)),
        None if unlabelled > 0 => {
            unknown.push(format!(
                "the cluster's (no node has the {REGION_LABEL} label)"
            ));
        }
        None => unknown.push("the cluster's (no nodes)".into()),
    }
    match targets.disks.as_ref().map(|d| d.location_region()) {
        Some(Some(region)) => known.push(("snapshot location", region.to_owned())),
        Some(None) => {
            unknown.push("the snapshot location's (the disk provider does not say)".into());
        }
        None => unknown.push("the snapshot location's (no --disk-root)".into()),
    }
    let described = known
        .iter()
        .map(|(what, region)| format!("{what}: {region}"))
        .collect::<Vec<_>>()
        .join(", ");
    if known.len() < 2 {
        return Check::skipped(
            REGION,
            format!(
                "too little to compare ({}); unknown: {}",
                if described.is_empty() {
                    "nothing known"
                } else {
                    &described
                },
                unknown.join(", ")
            ),
        );
    }
    let first = &known[0].1;
    if known.iter().all(|(_, r)| r == first) {
        let mut detail = format!("all in {first} ({described})");
        if !unknown.is_empty() {
            detail.push_str(&format!("; unknown: {}", unknown.join(", ")));
        }
        Check::pass(REGION, detail)
    } else {
        let cluster_region = known
            .iter()
            .find(|(w, _)| *w == "cluster")
            .map_or(first.as_str(), |(_, r)| r.as_str());
        Check::fail(
            REGION,
            format!("not in one region: {described}"),
            format!(
                "keep the vault, the cluster and the snapshot location in one region (the cluster's is {cluster_region}): \
                 create the vault there and point --vault at it, or configure the disk provider's snapshot location there; \
                 across regions every backup and restore pays cross-region transfer and a regional outage takes both sides"
            ),
        )
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(permissions.len(), KINDS.len() * 2 + 1);
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
        assert!(FLEET_ACCOUNTS[2].permissions().is_empty());
        // Every stage with a Deployment is served by exactly one account.
        for stage in [
            Stage::Snapshot,
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
