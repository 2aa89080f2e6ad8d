//! `stowage preflight` against a sandbox cluster, local and Azurite vaults and the real RabbitMQ:
//! every check passes on a well-prepared setup, and each fails with its fix when its
//! prerequisite is broken. The fleet's RBAC comes from `infra/k8s/base/rbac.yaml` itself, so the
//! permissions table in `stowage_control::preflight` is checked against the manifests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stowage_control::preflight::{
    self, BrokerTarget, Check, KubeTarget, PreflightTargets, Report, Status, VaultTarget,
};
use stowage_disk::{LOCAL_REGION, LocalDiskProvider};
use stowage_runtime::{Names, RabbitBroker};
use stowage_sandbox::{Sandbox, SandboxHandle};
use stowage_schemas::domain::{BackupInstance, Namespaces, Scope};
use stowage_tests::{amqp_url, free_port, shared_rabbit_bus, unique_prefix};

use crate::helpers::{stdout_and_stderr, stowage_command, temp_dir};

const FLEET_NS: &str = "stowage";

/// The fleet's RBAC objects, read from the manifests, in the fleet namespace.
fn fleet_rbac() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../infra/k8s/base/rbac.yaml"
    );
    let text = std::fs::read_to_string(path).expect("read infra/k8s/base/rbac.yaml");
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let mut object: Value =
            serde::Deserialize::deserialize(document).expect("rbac.yaml is valid YAML");
        if object.is_null() {
            continue;
        }
        if matches!(
            object["kind"].as_str(),
            Some("ServiceAccount" | "Role" | "RoleBinding")
        ) {
            object["metadata"]["namespace"] = json!(FLEET_NS);
        }
        objects.push(object);
    }
    assert!(objects.len() >= 7, "rbac.yaml holds the fleet's RBAC");
    objects
}

/// A sandbox with the sample app and the fleet's RBAC, as `edit` changes it, minus the objects
/// it rejects.
async fn sandbox_with(edit: impl Fn(&mut Value) -> bool) -> SandboxHandle {
    let sandbox = Sandbox::new();
    sandbox.load_sample_app().expect("sample app");
    sandbox
        .create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": FLEET_NS}}))
        .expect("fleet namespace");
    for mut object in fleet_rbac() {
        if edit(&mut object) {
            sandbox.create(object).expect("load RBAC");
        }
    }
    sandbox.start_local().await.expect("start sandbox")
}

/// What preflight checks: a sandbox cluster, and a fresh local vault folder and disk root, as
/// `targets` that a test may change.
struct Setup {
    cluster: SandboxHandle,
    vault: PathBuf,
    targets: PreflightTargets,
}

impl Setup {
    /// On a [`sandbox_with`] all of the fleet's RBAC.
    async fn new() -> Self {
        Self::with(|_| true).await
    }

    /// On a [`sandbox_with`] the fleet's RBAC as `edit` leaves it.
    async fn with(edit: impl Fn(&mut Value) -> bool) -> Self {
        let cluster = sandbox_with(edit).await;
        let vault = temp_dir("preflight-vault");
        let disks = LocalDiskProvider::open(temp_dir("preflight-disks")).expect("disks");
        let targets = PreflightTargets {
            vault: Some(VaultTarget {
                location: vault.display().to_string(),
                access_key: None,
                region: Some(LOCAL_REGION.to_owned()),
            }),
            broker: None,
            cluster: Some(KubeTarget {
                client: cluster.client(),
                url: cluster.url().to_owned(),
            }),
            disks: Some(Arc::new(disks)),
            ..PreflightTargets::default()
        };
        Self {
            cluster,
            vault,
            targets,
        }
    }

    /// Runs every check against the targets.
    async fn run(&self) -> Report {
        preflight::run_all(&self.targets).await
    }
}

/// The check `name` of `report`, which must have run.
fn check<'r>(report: &'r Report, name: &str) -> &'r Check {
    report
        .get(name)
        .unwrap_or_else(|| panic!("{name} ran: {report:#?}"))
}

fn status(report: &Report, name: &str) -> Status {
    check(report, name).status.clone()
}

/// Asserts `name` failed, its detail contains `detail` and its fix contains `fix`.
fn assert_fails(report: &Report, name: &str, detail: &str, fix: &str) {
    let check = check(report, name);
    assert_eq!(check.status, Status::Fail, "{name}: {check:#?}");
    assert!(
        check.detail.contains(detail),
        "{name}: detail should mention {detail:?}: {check:#?}"
    );
    let got = check.fix.as_deref().unwrap_or_default();
    assert!(
        got.contains(fix),
        "{name}: fix should mention {fix:?}: {check:#?}"
    );
}

fn assert_passes(report: &Report, names: &[&str]) {
    for name in names {
        assert_eq!(status(report, name), Status::Pass, "{name}: {report:#?}");
    }
}

#[tokio::test]
async fn every_check_passes_on_a_prepared_sandbox_local_vault_and_rabbitmq() {
    let (_gate, bus) = shared_rabbit_bus().await;
    let topology = bus.declare_topology().await;
    let mut setup = Setup::new().await;
    // A vault that already holds Stowage data still passes.
    std::fs::create_dir_all(setup.vault.join("catalog/shop")).unwrap();
    std::fs::write(setup.vault.join("catalog/shop/rp-1.json"), "{}").unwrap();
    setup.targets.broker = Some(BrokerTarget {
        broker: bus.broker.clone(),
        names: bus.names.clone(),
    });
    let report = setup.run().await;
    assert_passes(
        &report,
        &[
            preflight::VAULT_STORAGE,
            preflight::VAULT_CONTENTS,
            preflight::BROKER,
            preflight::TOPOLOGY,
            preflight::CLUSTER,
            preflight::PERMISSIONS,
            preflight::CONFLICTING_TOOLS,
            preflight::REGION,
        ],
    );
    // The sample app's NFS volume is not a CSI volume: a warning, not a failure.
    let drivers = report.get(preflight::CSI_DRIVERS).unwrap();
    assert_eq!(drivers.status, Status::Warn, "{drivers:#?}");
    assert!(drivers.detail.contains("pv-blog-uploads"), "{drivers:#?}");
    assert!(report.passed(), "{report:#?}");
    assert_eq!(report.refusal(), None);
    let detail = &check(&report, preflight::PERMISSIONS).detail;
    assert!(
        detail.contains("stowage-snapshot, stowage-restore, stowage-retention, stowage-vault"),
        "{report:#?}"
    );

    // The same broker without the topology (another prefix): the topology check fails.
    setup.targets.broker = Some(BrokerTarget {
        broker: bus.broker.clone(),
        names: Names::new(unique_prefix()),
    });
    let report = setup.run().await;
    assert_passes(&report, &[preflight::BROKER]);
    assert_fails(
        &report,
        preflight::TOPOLOGY,
        "10 of 10 queues are missing",
        "stowage topology declare",
    );

    // A closed port: the broker check fails at once and the topology check is skipped.
    setup.targets.broker = Some(BrokerTarget {
        broker: Arc::new(RabbitBroker::new(format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            free_port()
        ))),
        names: bus.names.clone(),
    });
    let report = setup.run().await;
    assert_fails(&report, preflight::BROKER, "unreachable", "start RabbitMQ");
    assert!(matches!(
        status(&report, preflight::TOPOLOGY),
        Status::Skipped(_)
    ));

    bus.teardown(&topology).await;
}

#[tokio::test]
async fn foreign_data_in_a_local_vault_folder_fails_the_contents_check() {
    let setup = Setup::new().await;
    std::fs::write(setup.vault.join("backup-2019.tar"), b"not a vault").unwrap();
    std::fs::create_dir_all(setup.vault.join("photos")).unwrap();
    std::fs::write(setup.vault.join("photos/cat.jpg"), b"meow").unwrap();
    let report = setup.run().await;
    assert_fails(
        &report,
        preflight::VAULT_CONTENTS,
        "2 top-level name(s) that are not Stowage data: backup-2019.tar, photos",
        "container or folder of its own",
    );
    assert_passes(&report, &[preflight::VAULT_STORAGE]);
}

#[tokio::test]
async fn azurite_containers_missing_empty_and_holding_stowage_data() {
    let mut setup = Setup::new().await;
    let azurite = |container: &str| {
        Some(VaultTarget {
            location: format!("azurite://{container}"),
            access_key: None,
            region: Some(LOCAL_REGION.to_owned()),
        })
    };
    let container = format!(
        "preflight-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );

    setup.targets.vault = azurite(&container);
    let report = setup.run().await;
    assert_fails(
        &report,
        preflight::VAULT_STORAGE,
        &format!("the container {container:?} does not exist"),
        "create it",
    );

    stowage_vault::store::create_azurite_container(&container)
        .await
        .unwrap_or_else(|e| {
            panic!("Azurite must run (infra/scripts/start-azurite.sh starts it): {e}")
        });
    let report = setup.run().await;
    assert_passes(
        &report,
        &[preflight::VAULT_STORAGE, preflight::VAULT_CONTENTS],
    );
    let detail = &check(&report, preflight::VAULT_CONTENTS).detail;
    assert!(detail.starts_with("empty"), "{report:#?}");

    // Stowage's own data passes (foreign names are refused by the same listing code, tested
    // on a local folder: layout cannot even spell a foreign key).
    let store = stowage_vault::store::BlobStore::open(&format!("azurite://{container}"), None)
        .expect("open azurite");
    let settings = json!({"name": "v", "region": "local", "location": "x", "key_id": "k"});
    store
        .put_create_only(
            &stowage_vault::layout::vault_settings(),
            settings.to_string().into_bytes(),
        )
        .await
        .unwrap();
    let key = stowage_vault::layout::recovery_point("shop", "rp-1").unwrap();
    let vault_key = stowage_vault::crypto::VaultKey::generate().unwrap();
    let sealing = store.with_key(&vault_key);
    sealing.put_create_only(&key, b"{}".to_vec()).await.unwrap();
    setup.targets.vault.as_mut().unwrap().region = None;
    let report = setup.run().await;
    assert_passes(&report, &[preflight::VAULT_CONTENTS, preflight::REGION]);
    let detail = &check(&report, preflight::VAULT_CONTENTS).detail;
    assert!(detail.contains("catalog, vault.json"), "{report:#?}");
}

#[tokio::test]
async fn an_unreachable_cluster_fails_and_skips_what_depends_on_it() {
    let mut setup = Setup::new().await;
    let url = format!("http://127.0.0.1:{}", free_port());
    setup.targets.cluster = Some(KubeTarget {
        client: kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap(),
        url: url.clone(),
    });
    let report = setup.run().await;
    assert_fails(&report, preflight::CLUSTER, "cannot be reached", &url);
    for name in [
        preflight::CSI_DRIVERS,
        preflight::PERMISSIONS,
        preflight::CONFLICTING_TOOLS,
        preflight::REGION,
    ] {
        assert!(
            matches!(status(&report, name), Status::Skipped(_)),
            "{name}: {report:#?}"
        );
    }
    assert_passes(&report, &[preflight::VAULT_STORAGE]);
}

#[tokio::test]
async fn a_silent_endpoint_times_out_instead_of_hanging() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut setup = Setup::new().await;
    let url = format!("http://{addr}");
    setup.targets.cluster = Some(KubeTarget {
        client: kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap(),
        url,
    });
    setup.targets.broker = Some(BrokerTarget {
        broker: Arc::new(RabbitBroker::new(format!("amqp://guest:guest@{addr}/%2f"))),
        names: Names::new(unique_prefix()),
    });
    setup.targets.timeout = Duration::from_millis(800);
    let started = Instant::now();
    let report = setup.run().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "checks run concurrently with deadlines: {took:?}"
    );
    assert_fails(
        &report,
        preflight::CLUSTER,
        "did not answer within 0.8 s",
        "--kubeconfig",
    );
    assert_fails(
        &report,
        preflight::BROKER,
        "did not answer within 0.8 s",
        "start RabbitMQ",
    );
}

#[tokio::test]
async fn a_cluster_older_than_1_20_fails_the_version_check() {
    let setup = Setup::new().await;
    setup.cluster.sandbox().set_version("1", "19");
    let report = setup.run().await;
    assert_fails(
        &report,
        preflight::CLUSTER,
        "1.19 is older than 1.20",
        "upgrade",
    );
    setup.cluster.sandbox().set_version("1", "20+");
    let report = setup.run().await;
    assert_passes(&report, &[preflight::CLUSTER]);
}

fn foreign_volume() -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "pv-ebs"},
        "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "blog", "name": "media"},
            "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-0abc"},
        },
    })
}

fn instance(scope: Scope) -> BackupInstance {
    BackupInstance {
        name: "shop-prod".into(),
        cluster: "default".into(),
        vault: "vault".into(),
        policy: "daily".into(),
        scope,
        snapshot_location: "local".into(),
        hooks: Vec::new(),
    }
}

#[tokio::test]
async fn a_volume_of_another_csi_driver_fails_unless_the_scope_leaves_it_out() {
    let setup = Setup::new().await;
    setup.cluster.sandbox().create(foreign_volume()).unwrap();
    let report = setup.run().await;
    assert_fails(
        &report,
        preflight::CSI_DRIVERS,
        "ebs.csi.aws.com: pv-ebs",
        "create a VolumeSnapshotClass with driver: ebs.csi.aws.com and run the snapshot workers \
         with --disk-provider csi (operational tier only)",
    );
    assert!(
        check(&report, preflight::CSI_DRIVERS)
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("exclude_namespaces")),
        "{report:#?}"
    );

    // Creating an instance: only the volumes its scope covers count.
    let refused = preflight::for_instance(&setup.targets, &instance(Scope::default())).await;
    let why = refused.refusal().expect("the blog volume is in scope");
    assert!(
        why.contains("csi-drivers") && why.contains("ebs.csi.aws.com"),
        "{why}"
    );
    let shop_only = Scope {
        namespaces: Namespaces::List {
            names: vec!["shop".into()],
        },
        ..Scope::default()
    };
    let accepted = preflight::for_instance(&setup.targets, &instance(shop_only)).await;
    assert_eq!(accepted.refusal(), None, "{accepted:#?}");
    assert_passes(&accepted, &[preflight::CSI_DRIVERS]);
    assert!(
        accepted.get(preflight::BROKER).is_none(),
        "instance creation does not check the broker"
    );
}

#[tokio::test]
async fn a_csi_driver_with_a_snapshot_class_gets_the_operational_tier_only_and_says_so() {
    let setup = Setup::new().await;
    setup.cluster.sandbox().create(foreign_volume()).unwrap();
    setup
        .cluster
        .sandbox()
        .create(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
            "metadata": {"name": "ebs-snapshots"},
            "driver": "ebs.csi.aws.com", "deletionPolicy": "Delete",
        }))
        .unwrap();
    let report = setup.run().await;
    let drivers = check(&report, preflight::CSI_DRIVERS);
    assert_eq!(drivers.status, Status::Warn, "{drivers:#?}");
    for part in [
        "operational tier only",
        "ebs.csi.aws.com: pv-ebs",
        "--disk-provider csi",
    ] {
        assert!(drivers.detail.contains(part), "{part}: {drivers:#?}");
    }
    assert!(
        drivers
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("move them to a storage class of disk.stowage.local")),
        "{drivers:#?}"
    );
    // An instance over that volume is accepted, with the warning in its report.
    let accepted = preflight::for_instance(&setup.targets, &instance(Scope::default())).await;
    assert_eq!(accepted.refusal(), None, "{accepted:#?}");
    assert_eq!(status(&accepted, preflight::CSI_DRIVERS), Status::Warn);
}

#[tokio::test]
async fn a_service_account_missing_a_permission_is_named_with_the_rbac_fix() {
    // The manifests without the snapshot role's pods/exec rule.
    let setup = Setup::with(|object| {
        if object["kind"] == "ClusterRole" && object["metadata"]["name"] == "stowage-snapshot" {
            let rules = object["rules"].as_array_mut().unwrap();
            let before = rules.len();
            rules.retain(|r| r["resources"] != json!(["pods/exec"]));
            assert_eq!(rules.len(), before - 1, "rbac.yaml grants pods/exec");
        }
        true
    })
    .await;
    let report = setup.run().await;
    assert_fails(
        &report,
        preflight::PERMISSIONS,
        "stowage-snapshot (snapshot) cannot create pods/exec (core)",
        "infra/k8s/base/rbac.yaml",
    );
    let detail = &check(&report, preflight::PERMISSIONS).detail;
    assert!(!detail.contains("stowage-restore"), "{report:#?}");

    // Without the restore binding, every restore permission is missing.
    let setup = Setup::with(|object| {
        !(object["kind"] == "ClusterRoleBinding" && object["metadata"]["name"] == "stowage-restore")
    })
    .await;
    assert_fails(
        &setup.run().await,
        preflight::PERMISSIONS,
        "stowage-restore (restore) cannot create * (*)",
        "kubectl apply",
    );
}

#[tokio::test]
async fn velero_and_kasten_are_reported_as_conflicting_tools() {
    let setup = Setup::new().await;
    setup
        .cluster
        .sandbox()
        .create(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "backups.velero.io"},
            "spec": {"group": "velero.io", "scope": "Namespaced",
                "names": {"plural": "backups", "singular": "backup", "kind": "Backup"},
                "versions": [{"name": "v1", "served": true, "storage": true}]},
        }))
        .unwrap();
    let report = setup.run().await;
    assert_fails(
        &report,
        preflight::CONFLICTING_TOOLS,
        "Velero's CRDs (backups.velero.io)",
        "velero uninstall",
    );

    let setup = Setup::new().await;
    for ns in ["velero", "kasten-io"] {
        setup
            .cluster
            .sandbox()
            .create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .unwrap();
    }
    let report = setup.run().await;
    assert_fails(
        &report,
        preflight::CONFLICTING_TOOLS,
        "Velero's namespace \"velero\", Kasten K10's namespace \"kasten-io\"",
        "helm uninstall k10",
    );
}

#[tokio::test]
async fn a_vault_in_another_region_fails_the_region_check() {
    let mut setup = Setup::new().await;
    setup.targets.vault.as_mut().unwrap().region = Some("westeurope".into());
    let report = setup.run().await;
    assert_fails(
        &report,
        preflight::REGION,
        "vault: westeurope, cluster: local, snapshot location: local",
        "one region",
    );

    // Without a region given, vault.json's is used.
    setup.targets.vault.as_mut().unwrap().region = None;
    let settings = json!({"name": "v", "region": "local", "location": "x", "key_id": "k"});
    std::fs::write(setup.vault.join("vault.json"), settings.to_string()).unwrap();
    let report = setup.run().await;
    assert_passes(&report, &[preflight::REGION, preflight::VAULT_CONTENTS]);

    // A snapshot location elsewhere fails too.
    let disks = LocalDiskProvider::open(temp_dir("preflight-disks"))
        .unwrap()
        .with_region("eastus");
    setup.targets.disks = Some(Arc::new(disks));
    let report = setup.run().await;
    assert_fails(
        &report,
        preflight::REGION,
        "snapshot location: eastus",
        "one region",
    );
}

fn run_cli(args: &[&str]) -> (bool, String, String) {
    let out = stowage_command()
        .arg("preflight")
        .args(args)
        .env_remove("STOWAGE_VAULT_REGION")
        .output()
        .expect("run stowage preflight");
    let (stdout, stderr) = stdout_and_stderr(&out);
    (out.status.success(), stdout, stderr)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn the_command_prints_a_table_or_json_and_exits_non_zero_on_failure() {
    let (_gate, bus) = shared_rabbit_bus().await;
    let topology = bus.declare_topology().await;
    let prefix = bus.names.prefix().to_owned();
    let setup = Setup::new().await;
    let disk_root = temp_dir("preflight-cli-disks");
    let kubeconfigs = setup
        .cluster
        .write_kubeconfigs(&temp_dir("preflight-cli-kubeconfigs"))
        .expect("kubeconfigs written");
    let kubeconfig = kubeconfigs[stowage_sandbox::ADMIN].display().to_string();
    let amqp = amqp_url();
    let base = [
        "--vault",
        path(&setup.vault),
        "--disk-root",
        path(&disk_root),
        "--kubeconfig",
        &kubeconfig,
        "--amqp-url",
        &amqp,
        "--prefix",
        &prefix,
        "--vault-region",
        LOCAL_REGION,
    ];
    let (ok, stdout, stderr) = tokio::task::spawn_blocking({
        let base: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        move || run_cli(&base.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("✓ vault-storage"), "{stdout}");
    assert!(stdout.contains("✓ topology"), "{stdout}");
    assert!(stdout.contains("! csi-drivers"), "{stdout}");
    assert!(stdout.contains("0 failed"), "{stdout}");

    // A region mismatch: exit code 1, the fix under the failure, and JSON on request.
    let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    *args.last_mut().unwrap() = "westeurope".into();
    let table_args = args.clone();
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run_cli(&table_args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert!(!ok, "a failed check exits non-zero: {stdout}");
    assert!(stdout.contains("✗ region"), "{stdout}");
    assert!(stdout.contains("fix: keep the vault"), "{stdout}");
    assert!(
        stderr.contains("1 preflight check(s) failed: region"),
        "{stderr}"
    );
    args.extend(["-o".to_owned(), "json".to_owned()]);
    let (ok, stdout, _) = tokio::task::spawn_blocking(move || {
        run_cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert!(!ok);
    let json: Value = serde_json::from_str(&stdout).expect("JSON output");
    let checks = json["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 9, "{json:#}");
    let region = checks.iter().find(|c| c["name"] == "region").unwrap();
    assert_eq!(region["status"], "fail");
    assert!(region["fix"].as_str().unwrap().contains("one region"));

    bus.teardown(&topology).await;
}
