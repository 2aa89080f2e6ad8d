//! The cluster stages' fixture: a vault, local disks, a source sandbox holding the sample
//! app (its CSI disks written with known bytes), a second empty sandbox `dr`, and helpers to
//! read and compare what a restore made.

use std::path::PathBuf;
use std::sync::Arc;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use serde_json::{Value, json};
use stowage_cluster::strip_server_fields;
use stowage_disk::{DiskId, DiskProvider, LocalDiskProvider};
use stowage_runtime::{JobContext, StageError};
use stowage_sandbox::{Sandbox, SandboxHandle};
use stowage_schemas::Stage;
use stowage_schemas::domain::{BackupInstance, Hook, HookErrorMode, HookPhase, Namespaces, Scope};
use stowage_schemas::events::RpCreated;
use stowage_schemas::jobs::{RestoreOptions, SnapshotJob, Trigger};
use stowage_stages::ClusterContext;
use stowage_stages::restore::{RestoreReport, RestoreRequest, RestoreSource, restore};
use stowage_stages::snapshot::take_snapshot;
use stowage_vault::crypto::VaultKey;
use stowage_vault::layout;
use stowage_vault::store::{BlobStore, LocalDurability};

pub(crate) const INSTANCE: &str = "shop-prod";
pub(crate) const DISK_SIZE: u64 = 4 << 20;

/// A vault, local disks, a source sandbox holding the sample app (its CSI disks written with
/// known bytes), and a second, empty sandbox `dr`.
pub(crate) struct Fixture {
    pub(crate) dir: PathBuf,
    /// The vault, sealing with [`Self::key`].
    pub(crate) vault: BlobStore,
    pub(crate) key: VaultKey,
    pub(crate) disks: Arc<LocalDiskProvider>,
    pub(crate) source: SandboxHandle,
    pub(crate) dr: SandboxHandle,
    pub(crate) ctx: ClusterContext,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

impl Fixture {
    pub(crate) async fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "stowage-cluster-stages-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let disks = Arc::new(LocalDiskProvider::open(dir.join("disks")).unwrap());
        let key = VaultKey::generate().unwrap();
        let vault = BlobStore::local_folder(dir.join("vault"), LocalDurability::OsBuffered)
            .unwrap()
            .with_key(&key);
        for (disk, seed) in [("shop-data", 1u8), ("blog-data", 2u8)] {
            let info = disks.create_disk(disk, DISK_SIZE).await.unwrap();
            disks
                .write(&info.id, 0, &pattern(seed, 64 << 10))
                .await
                .unwrap();
            disks
                .write(&info.id, (2 << 20) + 4096, &pattern(seed + 10, 8192))
                .await
                .unwrap();
        }
        let sandbox = Sandbox::new();
        sandbox.load_sample_app().unwrap();
        let source = sandbox.start_local().await.unwrap();
        let dr = Sandbox::new().start_local().await.unwrap();
        let ctx = ClusterContext::new(vault.clone(), disks.clone(), "source", source.target())
            .with_cluster("dr", dr.target());
        Self {
            dir,
            vault,
            key,
            disks,
            source,
            dr,
            ctx,
        }
    }

    pub(crate) async fn define_instance(&self, scope: Scope, hooks: Vec<Hook>) {
        let instance = BackupInstance {
            name: INSTANCE.into(),
            cluster: "source".into(),
            vault: "vault".into(),
            policy: "daily".into(),
            scope,
            snapshot_location: "local".into(),
            hooks,
        };
        self.vault
            .put_create_only(
                &layout::instance(INSTANCE).unwrap(),
                serde_json::to_vec(&instance).unwrap(),
            )
            .await
            .unwrap();
    }

    pub(crate) async fn snapshot(&self, rp: &str) -> RpCreated {
        self.try_snapshot(rp).await.unwrap()
    }

    /// Takes the snapshot `rp`, answering its error if it fails.
    pub(crate) async fn try_snapshot(&self, rp: &str) -> Result<RpCreated, StageError> {
        take_snapshot(
            &self.ctx,
            &snapshot_job(rp),
            &JobContext::detached(Stage::Snapshot),
        )
        .await
    }

    /// Restores `rp` from the operational tier as `restore_id`, through the restore function.
    pub(crate) async fn restore(
        &self,
        rp: &str,
        restore_id: &str,
        options: RestoreOptions,
    ) -> RestoreReport {
        restore(
            &self.ctx,
            &operational(rp, restore_id, options),
            &JobContext::detached(Stage::Restore),
        )
        .await
        .unwrap()
    }

    pub(crate) async fn disk_bytes(&self, disk: &str) -> Vec<u8> {
        let mut buf = vec![0u8; DISK_SIZE as usize];
        self.disks
            .read_disk(&DiskId(disk.into()), 0, &mut buf)
            .await
            .unwrap();
        buf
    }

    pub(crate) fn disk_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.join("disks/disks"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

pub(crate) fn snapshot_job(rp: &str) -> SnapshotJob {
    SnapshotJob {
        instance: INSTANCE.into(),
        recovery_point_id: rp.into(),
        trigger: Trigger::OnDemand {
            requested_by: Some("test".into()),
        },
    }
}

pub(crate) fn namespaces(names: &[&str]) -> Scope {
    Scope {
        namespaces: Namespaces::List {
            names: names.iter().map(|n| n.to_string()).collect(),
        },
        ..Scope::default()
    }
}

pub(crate) fn hook(name: &str, phase: HookPhase, command: &str, on_error: HookErrorMode) -> Hook {
    Hook {
        name: name.into(),
        phase,
        namespace: "shop".into(),
        label_selector: Some("app=db".into()),
        container: None,
        command: vec![command.into(), "/data".into()],
        timeout_seconds: 5,
        on_error,
    }
}

pub(crate) fn operational(rp: &str, restore_id: &str, options: RestoreOptions) -> RestoreRequest {
    RestoreRequest {
        restore_id: restore_id.into(),
        instance: INSTANCE.into(),
        recovery_point_id: rp.into(),
        source: RestoreSource::Operational,
        options,
    }
}

pub(crate) fn mapping(from: &str, to: &str) -> RestoreOptions {
    RestoreOptions {
        namespace_mapping: [(from.to_string(), to.to_string())].into(),
        ..RestoreOptions::default()
    }
}

/// Restore options that target the second cluster `dr`.
pub(crate) fn to_dr() -> RestoreOptions {
    RestoreOptions {
        target_cluster: Some("dr".into()),
        ..RestoreOptions::default()
    }
}

pub(crate) fn ar(api_version: &str, kind: &str, plural: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// `(apiVersion, kind, plural)` of the namespaced types the sample app holds, PVCs aside.
pub(crate) const NAMESPACED: &[(&str, &str, &str)] = &[
    ("v1", "ConfigMap", "configmaps"),
    ("v1", "Secret", "secrets"),
    ("v1", "Service", "services"),
    ("v1", "ServiceAccount", "serviceaccounts"),
    ("v1", "Pod", "pods"),
    ("apps/v1", "Deployment", "deployments"),
    ("apps/v1", "StatefulSet", "statefulsets"),
    ("rbac.authorization.k8s.io/v1", "Role", "roles"),
    ("demo.stowage.io/v1", "Widget", "widgets"),
];

pub(crate) async fn get(
    client: &kube::Client,
    t: (&str, &str, &str),
    ns: Option<&str>,
    name: &str,
) -> Option<Value> {
    let resource = ar(t.0, t.1, t.2);
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    api.get_opt(name)
        .await
        .unwrap()
        .map(|o| serde_json::to_value(o).unwrap())
}

pub(crate) const CONFIG_MAP: (&str, &str, &str) = ("v1", "ConfigMap", "configmaps");
pub(crate) const CLAIM: (&str, &str, &str) =
    ("v1", "PersistentVolumeClaim", "persistentvolumeclaims");
pub(crate) const NAMESPACE: (&str, &str, &str) = ("v1", "Namespace", "namespaces");
pub(crate) const ROLE_BINDING: (&str, &str, &str) = (
    "rbac.authorization.k8s.io/v1",
    "RoleBinding",
    "rolebindings",
);
pub(crate) const CLUSTER_ROLE_BINDING: (&str, &str, &str) = (
    "rbac.authorization.k8s.io/v1",
    "ClusterRoleBinding",
    "clusterrolebindings",
);

/// The object `t` named `name` (in `ns`, when namespaced), which must exist.
pub(crate) async fn existing(
    client: &kube::Client,
    t: (&str, &str, &str),
    ns: Option<&str>,
    name: &str,
) -> Value {
    get(client, t, ns, name)
        .await
        .unwrap_or_else(|| panic!("{} {ns:?}/{name} does not exist", t.1))
}

pub(crate) async fn config_map(client: &kube::Client, ns: &str, name: &str) -> Value {
    existing(client, CONFIG_MAP, Some(ns), name).await
}

pub(crate) async fn claim(client: &kube::Client, ns: &str, name: &str) -> Value {
    existing(client, CLAIM, Some(ns), name).await
}

pub(crate) async fn namespace(client: &kube::Client, name: &str) -> Value {
    existing(client, NAMESPACE, None, name).await
}

pub(crate) async fn list(client: &kube::Client, t: (&str, &str, &str), ns: &str) -> Vec<Value> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar(t.0, t.1, t.2));
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .collect()
}

/// An object as a backup would compare it: server fields, namespace, status and node gone.
pub(crate) fn comparable(mut object: Value) -> Value {
    strip_server_fields(&mut object);
    let metadata = object["metadata"].as_object_mut().unwrap();
    metadata.remove("namespace");
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("nodeName");
        spec.remove("volumeName");
    }
    if let Some(subjects) = object.get_mut("subjects").and_then(Value::as_array_mut) {
        for s in subjects {
            s.as_object_mut().unwrap().remove("namespace");
        }
    }
    object
}

/// Every object of the sample app's namespaced types in `from_ns` of `from` has an equal copy
/// in `to_ns` of `to`.
pub(crate) async fn assert_namespace_copied(
    from: &kube::Client,
    from_ns: &str,
    to: &kube::Client,
    to_ns: &str,
) -> usize {
    let mut compared = 0;
    for t in NAMESPACED {
        for object in list(from, *t, from_ns).await {
            let name = object["metadata"]["name"].as_str().unwrap().to_owned();
            let copy = get(to, *t, Some(to_ns), &name)
                .await
                .unwrap_or_else(|| panic!("{} {to_ns}/{name} was not restored", t.1));
            assert_eq!(
                comparable(copy),
                comparable(object),
                "{} {name} differs",
                t.1
            );
            compared += 1;
        }
    }
    compared
}

/// The restored claim `ns/pvc` in `client`: bound to a new PV on a new disk. Answers the disk.
pub(crate) async fn restored_disk(client: &kube::Client, ns: &str, pvc: &str) -> String {
    let claim = get(client, CLAIM, Some(ns), pvc)
        .await
        .unwrap_or_else(|| panic!("PVC {ns}/{pvc} was not restored"));
    let pv_name = claim["spec"]["volumeName"]
        .as_str()
        .expect("the claim names its new PV");
    assert!(pv_name.starts_with("stowage-"), "a new PV, not {pv_name}");
    let pv = get(
        client,
        ("v1", "PersistentVolume", "persistentvolumes"),
        None,
        pv_name,
    )
    .await
    .expect("the new PV exists");
    assert_eq!(pv["spec"]["claimRef"]["namespace"], ns);
    assert_eq!(pv["spec"]["claimRef"]["name"], pvc);
    assert_eq!(pv["spec"]["csi"]["driver"], stowage_disk::LOCAL_DRIVER);
    let disk = pv["spec"]["csi"]["volumeHandle"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !["shop-data", "blog-data"].contains(&disk.as_str()),
        "never the source disk"
    );
    disk
}

pub(crate) async fn annotate_db_pod(f: &Fixture, annotations: Value) {
    let pods: Api<DynamicObject> =
        Api::namespaced_with(f.source.client(), "shop", &ar("v1", "Pod", "pods"));
    pods.patch(
        "db-0",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": annotations}})),
    )
    .await
    .unwrap();
}
