//! `stowage restore create --dry-run` with a kubeconfig, the real binary against a sandbox:
//! the plan per object (wave, action, reason, each PVC's new disk) as a table and as JSON and
//! YAML, nothing changed anywhere, and exit code 3 once the target has a conflict.

use std::process::Output;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use stowage_runtime::JobContext;
use stowage_schemas::Stage;
use stowage_schemas::jobs::{SnapshotJob, Trigger};
use stowage_stages::ClusterContext;
use stowage_vault::crypto::VaultKey;
use stowage_vault::store::{BlobStore, LocalDurability};

use crate::helpers::{TempDir, admin_kubeconfig, sample_app, stdout_and_stderr, stowage_command};

fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else {
                found.push(entry.path().display().to_string());
            }
        }
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_prints_the_plan_and_changes_nothing() {
    let dir = TempDir::new("restore-plan");
    let key = VaultKey::generate().unwrap();
    let vault_dir = dir.path().join("vault");
    let vault = BlobStore::local_folder(&vault_dir, LocalDurability::OsBuffered)
        .unwrap()
        .with_key(&key);
    let key_file = dir.path().join("vault.key");
    std::fs::write(&key_file, key.expose_secret_hex()).unwrap();
    let (disks, cluster) = sample_app(&dir.path().join("disks"), &vault, [0x5a, 0xb1]).await;
    let ctx = ClusterContext::new(vault.clone(), disks, "sandbox", cluster.target());
    let job = SnapshotJob {
        instance: "shop".into(),
        recovery_point_id: "rp-1".into(),
        trigger: Trigger::OnDemand { requested_by: None },
    };
    stowage_stages::snapshot::take_snapshot(&ctx, &job, &JobContext::detached(Stage::Snapshot))
        .await
        .unwrap();
    let kubeconfig = admin_kubeconfig(&cluster);

    let plan = |extra: &[&str]| -> Output {
        stowage_command()
            .args([
                "restore",
                "create",
                "--instance",
                "shop",
                "--rp",
                "rp-1",
                "--namespaces",
                "shop",
                "--namespace-mapping",
                "shop=shop-copy",
                "--restore-id",
                "plan-1",
                "--dry-run",
            ])
            .args(extra)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--vault")
            .arg(&vault_dir)
            .arg("--vault-key-file")
            .arg(&key_file)
            .env("STOWAGE_LOG", "warn")
            .env_remove("KUBECONFIG")
            .output()
            .expect("run stowage")
    };
    let files_before = files_under(dir.path());
    let rv_before = cluster.sandbox().resource_version();

    // The table, as the user reads it.
    let out = plan(&[]);
    let (table, err) = stdout_and_stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{table}\n{err}");
    println!("{table}\n{err}");
    let header = table.lines().next().unwrap_or_default();
    for column in ["WAVE", "ACTION", "OBJECT", "NEW DISK", "REASON"] {
        assert!(header.contains(column), "{header}");
    }
    let line = |needle: &str| {
        table
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{table}"))
            .to_owned()
    };
    let claim = line("PersistentVolumeClaim shop-copy/data-db-0");
    assert!(claim.contains("create"), "{claim}");
    assert!(
        claim.contains("restore-plan-1-"),
        "the claim's new disk: {claim}"
    );
    assert!(claim.contains("after Namespace shop-copy"), "{claim}");
    let set = line("StatefulSet shop-copy/db");
    assert!(
        set.contains("PersistentVolumeClaim shop-copy/data-db-0"),
        "{set}"
    );
    let namespace = line("Namespace shop-copy");
    assert!(namespace.starts_with("0 "), "{namespace}");
    assert!(
        line("ClusterRole widget-reader").contains("skip"),
        "exists already"
    );
    assert!(err.contains("Nothing was changed"), "{err}");
    assert!(err.contains("0 conflict"), "{err}");

    // The same plan as data.
    let out = plan(&["-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout_and_stderr(&out).1);
    let view: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(view["restore_id"], "plan-1");
    assert_eq!(view["target_cluster"], "sandbox");
    assert_eq!(view["conflict"], 0);
    assert_eq!(view["volumes"], 1);
    let objects = view["objects"].as_array().expect("objects");
    let waves: std::collections::BTreeMap<String, u64> = objects
        .iter()
        .map(|o| {
            let name = match o["namespace"].as_str() {
                Some(ns) => format!(
                    "{} {ns}/{}",
                    o["kind"].as_str().unwrap(),
                    o["name"].as_str().unwrap()
                ),
                None => format!(
                    "{} {}",
                    o["kind"].as_str().unwrap(),
                    o["name"].as_str().unwrap()
                ),
            };
            (name, o["wave"].as_u64().unwrap())
        })
        .collect();
    for o in objects {
        for after in o["after"].as_array().unwrap() {
            let dep = waves.get(after.as_str().unwrap());
            assert!(
                dep.is_some_and(|&w| w < o["wave"].as_u64().unwrap()),
                "{o} after {after}: {dep:?}"
            );
        }
    }
    let pvc = objects
        .iter()
        .find(|o| o["kind"] == "PersistentVolumeClaim")
        .expect("the claim");
    assert_eq!(pvc["action"], "create");
    assert!(
        pvc["disk"].as_str().unwrap().starts_with("restore-plan-1-"),
        "{pvc}"
    );
    let out = plan(&["-o", "yaml"]);
    let yaml: Value = serde_yaml::from_slice(&out.stdout).expect("YAML");
    assert_eq!(yaml, view);

    assert_eq!(
        cluster.sandbox().resource_version(),
        rv_before,
        "the cluster was not touched"
    );
    assert_eq!(
        files_under(dir.path()),
        files_before,
        "no disk, record or file written"
    );

    // The target now serves only v2 of the widgets' CRD: the backed-up v1 widgets conflict.
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client());
    let v2 = json!({"spec": {"versions": [{"name": "v2", "served": true, "storage": true,
        "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}});
    crds.patch(
        "widgets.demo.stowage.io",
        &PatchParams::default(),
        &Patch::Merge(&v2),
    )
    .await
    .unwrap();
    let rv_before = cluster.sandbox().resource_version();
    let out = plan(&[]);
    let (table, err) = stdout_and_stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(3),
        "conflicts: exit 3\n{table}\n{err}"
    );
    println!("{table}\n{err}");
    let blue = table
        .lines()
        .find(|l| l.contains("Widget shop-copy/blue"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        blue.contains("conflict") && blue.contains("does not serve demo.stowage.io/v1"),
        "{blue}"
    );
    assert!(err.contains("2 conflict"), "{err}");
    assert!(err.contains("error: the plan has 2 conflict(s)"), "{err}");
    assert_eq!(cluster.sandbox().resource_version(), rv_before);

    // Without cluster credentials the request is only checked, and the output says so.
    let out = stowage_command()
        .args([
            "restore",
            "create",
            "--instance",
            "shop",
            "--rp",
            "rp-1",
            "--dry-run",
        ])
        .arg("--vault")
        .arg(&vault_dir)
        .arg("--vault-key-file")
        .arg(&key_file)
        .env("STOWAGE_LOG", "warn")
        .env_remove("KUBECONFIG")
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let (job, err) = stdout_and_stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("no plan was made"), "{err}");
    assert!(job.contains("restore_id"), "{job}");
}
