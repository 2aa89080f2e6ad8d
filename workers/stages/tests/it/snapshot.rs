//! The snapshot stage against a sandbox cluster: hooks (fail, continue, timeout) and volumes
//! it cannot snapshot.

use serde_json::json;
use stowage_schemas::domain::{HookErrorMode, HookPhase};
use stowage_schemas::events::RpCreated;

use crate::cluster_fixture::*;

#[tokio::test]
async fn a_failing_hook_fails_the_backup_or_warns() {
    let f = Fixture::new().await;
    annotate_db_pod(&f, json!({"sandbox.stowage.io/exec-exit-code": "3", "sandbox.stowage.io/exec-stderr": "device busy"})).await;

    // onError: fail — the backup fails, names the hook and the pod, and still thaws.
    f.define_instance(
        namespaces(&["shop"]),
        vec![
            hook("freeze", HookPhase::Pre, "fsfreeze-f", HookErrorMode::Fail),
            hook(
                "thaw",
                HookPhase::Post,
                "fsfreeze-u",
                HookErrorMode::Continue,
            ),
        ],
    )
    .await;
    let error = f.try_snapshot("rp-fail").await.unwrap_err();
    assert_eq!(error.kind(), stowage_runtime::ErrorKind::Permanent);
    let text = error.to_string();
    assert!(
        text.contains("\"freeze\"")
            && text.contains("shop/db-0")
            && text.contains("code 3")
            && text.contains("device busy"),
        "{text}"
    );
    assert!(text.contains("on_error"), "says what to do: {text}");
    let ran: Vec<String> = f
        .source
        .sandbox()
        .exec_log()
        .iter()
        .map(|r| r.command[0].clone())
        .collect();
    assert_eq!(
        ran,
        ["fsfreeze-f", "fsfreeze-u"],
        "post-hooks run after a failure"
    );
    assert!(
        stowage_vault::catalog::read_recovery_point(&f.vault, INSTANCE, "rp-fail")
            .await
            .is_err(),
        "no RP"
    );

    // onError: continue — the backup succeeds with a warning.
    let f = Fixture::new().await;
    annotate_db_pod(&f, json!({"sandbox.stowage.io/exec-exit-code": "3"})).await;
    f.define_instance(
        namespaces(&["shop"]),
        vec![hook(
            "freeze",
            HookPhase::Pre,
            "fsfreeze-f",
            HookErrorMode::Continue,
        )],
    )
    .await;
    let created = f.snapshot("rp-continue").await;
    assert_eq!(created.volume_count, 1);
    assert!(
        created
            .warnings
            .iter()
            .any(|w| w.contains("\"freeze\"") && w.contains("code 3")),
        "{:?}",
        created.warnings
    );
}

#[tokio::test]
async fn a_hook_that_times_out_fails_the_backup() {
    let f = Fixture::new().await;
    annotate_db_pod(&f, json!({"sandbox.stowage.io/exec-delay-ms": "3000"})).await;
    let mut slow = hook("flush", HookPhase::Pre, "sync", HookErrorMode::Fail);
    slow.timeout_seconds = 1;
    f.define_instance(namespaces(&["shop"]), vec![slow.clone()])
        .await;
    let started = std::time::Instant::now();
    let error = f.try_snapshot("rp-slow").await.unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_millis(2900),
        "the timeout cut the wait"
    );
    assert!(error.to_string().contains("timeout of 1s"), "{error}");

    // The same with onError: continue is a warning.
    let f = Fixture::new().await;
    annotate_db_pod(&f, json!({"sandbox.stowage.io/exec-delay-ms": "3000"})).await;
    slow.on_error = HookErrorMode::Continue;
    f.define_instance(namespaces(&["shop"]), vec![slow]).await;
    let created = f.snapshot("rp-slow").await;
    assert!(
        created.warnings.iter().any(|w| w.contains("timeout of 1s")),
        "{:?}",
        created.warnings
    );
}

#[tokio::test]
async fn unsupported_volumes_are_skipped_with_a_warning() {
    let f = Fixture::new().await;
    // A CSI volume of a driver the local provider does not handle, beside blog's NFS volume.
    f.source.sandbox().create(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "pv-blog-azure"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "claimRef": {"namespace": "blog", "name": "media"},
                 "csi": {"driver": "disk.csi.azure.com", "volumeHandle": "/subscriptions/x/disks/media"}},
    })).unwrap();
    f.source.sandbox().create(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "media", "namespace": "blog"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "volumeName": "pv-blog-azure"},
    })).unwrap();
    f.define_instance(namespaces(&["blog"]), Vec::new()).await;
    let created = f.snapshot("rp-1").await;
    assert_eq!(
        created.volume_count, 1,
        "only blog-data is snapshotted: {created:?}"
    );
    let nfs = warning_about(&created, "blog/uploads").expect("a warning for the NFS volume");
    assert!(
        nfs.contains("nfs") && nfs.contains("not backed up"),
        "{nfs}"
    );
    let azure = warning_about(&created, "blog/media").expect("a warning for the other driver");
    assert!(azure.contains("disk.csi.azure.com"), "{azure}");
    // Recorded with the RP.
    let report = stowage_stages::snapshot::read_report(&f.ctx, INSTANCE, "rp-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.warnings, created.warnings);
    let rp = stowage_vault::catalog::read_recovery_point(&f.vault, INSTANCE, "rp-1")
        .await
        .unwrap();
    assert_eq!(rp.volumes.len(), 1);
    assert_eq!(
        (rp.volumes[0].namespace.as_str(), rp.volumes[0].pvc.as_str()),
        ("blog", "data-mysql-0")
    );
    assert_eq!(rp.volumes[0].volume_id, "blog-data");
}

/// The first warning of `created` that names `needle`.
fn warning_about<'a>(created: &'a RpCreated, needle: &str) -> Option<&'a String> {
    created.warnings.iter().find(|w| w.contains(needle))
}
