//! Cluster credentials the standard way, end to end: a real `stowage worker --stage snapshot`
//! process given the snapshot service account's kubeconfig (written by the TLS sandbox) fails a
//! backup for good, naming the verb, the resource and the RBAC fix, while `rbac.yaml` is not
//! applied; once the admin applies it, the same worker takes the backup.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use stowage_runtime::client::submit;
use stowage_schemas::domain::{JobStatus, StageRun};
use stowage_schemas::jobs::{SnapshotJob, Trigger};
use stowage_schemas::{Envelope, Message, Stage};
use stowage_tests::shared_rabbit_bus;
use stowage_vault::catalog;
use stowage_vault::catalog::jobs::read_job;
use stowage_vault::crypto::VaultKey;
use stowage_vault::store::{BlobStore, LocalDurability};

use crate::helpers::{TempDir, ensure_vault_settings, poll, sample_app, stowage_at, terminate};

const WAIT: Duration = Duration::from_secs(120);

/// The cluster flags of a worker: the kubeconfig at `path`, and the cluster's name.
fn cluster_args(kubeconfig: &Path) -> Vec<String> {
    vec![
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--cluster-name".into(),
        "sandbox".into(),
    ]
}

fn backup(rp: &str) -> Envelope {
    Envelope::new(
        format!("backup-{rp}"),
        Message::Snapshot(SnapshotJob {
            instance: "shop".into(),
            recovery_point_id: rp.into(),
            trigger: Trigger::OnDemand {
                requested_by: Some("tests".into()),
            },
        }),
    )
    // The instance's cluster, whose workers alone take its snapshots.
    .on_cluster("sandbox")
}

/// The snapshot stage's run of `job` once it has finished (succeeded or failed).
async fn finished(vault: &BlobStore, job: &str) -> StageRun {
    poll(WAIT, Duration::from_millis(200), async || {
        let (record, _) = read_job(vault, job).await.ok()?;
        record
            .stages
            .into_iter()
            .find(|s| s.stage == Stage::Snapshot)
            .filter(|s| matches!(s.status, JobStatus::Succeeded | JobStatus::Failed))
    })
    .await
    .unwrap_or_else(|| panic!("the snapshot stage of {job} did not finish within {WAIT:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_worker_with_the_service_accounts_kubeconfig_needs_rbac_yaml_and_says_so() {
    let (_gate, bus) = shared_rabbit_bus().await;
    bus.declare_topology().await;
    let dir = TempDir::new("kubeconfig-worker");
    let key = VaultKey::generate().unwrap();
    ensure_vault_settings(&dir.path().join("vault"));
    let vault = BlobStore::local_folder(dir.path().join("vault"), LocalDurability::OsBuffered)
        .unwrap()
        .with_key(&key);
    let (_disks, cluster) = sample_app(&dir.path().join("disks"), &vault, [0x5a, 0xb1]).await;
    let kubeconfigs = cluster
        .write_kubeconfigs(&dir.path().join("kubeconfigs"))
        .unwrap();

    let log = dir.path().join("worker.log");
    let mut worker: Child = stowage_at(&stowage_tests::amqp_url(), bus.names.prefix())
        .args([
            "worker",
            "--stage",
            "snapshot",
            "--health-addr",
            "127.0.0.1:0",
        ])
        .args(["--max-attempts", "3"])
        .arg("--vault")
        .arg(dir.path().join("vault"))
        .arg("--disk-root")
        .arg(dir.path().join("disks"))
        .args(cluster_args(&kubeconfigs["stowage-snapshot"]))
        .env("STOWAGE_VAULT_KEY", key.expose_secret_hex())
        .env_remove("KUBECONFIG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("run stowage worker");

    // rbac.yaml not applied: the account may discover, not list. Permanent at once.
    submit(bus.broker.as_ref(), &bus.names, &backup("rp-1"))
        .await
        .unwrap();
    let run = finished(&vault, "backup-rp-1").await;
    let error = run.error.clone().unwrap_or_default();
    assert_eq!(
        (run.status, run.attempts),
        (JobStatus::Failed, 1),
        "a permanent failure, not retried: {run:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    for expected in [
        "access denied (403 Forbidden): system:serviceaccount:stowage:stowage-snapshot may not list",
        "the ClusterRole \"stowage-snapshot\" in infra/k8s/base/rbac.yaml",
        "kubectl apply -n stowage -f infra/k8s/base/rbac.yaml",
    ] {
        assert!(error.contains(expected), "{expected:?} in:\n{error}");
    }

    // The admin applies the fleet's RBAC; the same worker, same credentials, backs up.
    stowage_sandbox::apply_fleet_rbac(&cluster.client())
        .await
        .unwrap();
    submit(bus.broker.as_ref(), &bus.names, &backup("rp-2"))
        .await
        .unwrap();
    let run = finished(&vault, "backup-rp-2").await;
    assert_eq!(
        run.status,
        JobStatus::Succeeded,
        "{run:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let rp = catalog::read_recovery_point(&vault, "shop", "rp-2")
        .await
        .unwrap();
    assert_eq!(rp.volumes.len(), 2, "{rp:?}");
    assert!(!rp.resources.is_empty(), "{rp:?}");

    terminate(&worker);
    let status = worker.wait().unwrap();
    assert!(status.success(), "the worker stops cleanly: {status}");
}

#[tokio::test]
async fn explicit_credentials_that_cannot_be_used_are_an_error_naming_them() {
    let dir = TempDir::new("kubeconfig-missing");
    let missing = dir.path().join("nope.kubeconfig");
    let out = crate::helpers::stowage_command()
        .args(["preflight", "--no-broker"])
        .arg("--kubeconfig")
        .arg(&missing)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let err = crate::helpers::text(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(&format!("cannot read the kubeconfig {}", missing.display())),
        "{err}"
    );

    let cluster = stowage_sandbox::Sandbox::sample_local().await.unwrap();
    let written = cluster.write_kubeconfigs(&dir.path().join("k")).unwrap();
    let out = crate::helpers::stowage_command()
        .args(["preflight", "--no-broker", "--context", "sandbox-nobody"])
        .arg("--kubeconfig")
        .arg(&written["admin"])
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let err = crate::helpers::text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("sandbox-nobody"),
        "an unknown context is named: {err}"
    );
}
