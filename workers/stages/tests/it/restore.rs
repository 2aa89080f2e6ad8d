//! The snapshot and restore stages against sandbox clusters, local disks and a local-folder
//! vault: round trips into another namespace and another cluster, skip/patch, dry runs,
//! controller-owned objects, and restores from the vault tier through hydration. The
//! collection scope matrix is tested in the cluster crate.

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::json;
use stowage_disk::{DiskId, DiskProvider};
use stowage_runtime::{JobContext, Outcome, StageHandler};
use stowage_schemas::domain::{HookErrorMode, HookPhase, Scope, Tier};
use stowage_schemas::events::RestoreCompleted;
use stowage_schemas::jobs::{
    ExistingPolicy, RestoreHydrationJob, RestoreJob, RestoreOptions, VaultTransferJob,
};
use stowage_schemas::{Envelope, Message, Stage};
use stowage_stages::restore::{PlanAction, RestoreRequest, RestoreSource, restore};
use stowage_stages::{RestoreHydration, RestoreStage, SnapshotStage, VaultContext, VaultTransfer};
use stowage_vault::crypto::VaultKey;
use stowage_vault::layout;

use crate::cluster_fixture::*;

/// Hands `envelope` to `handler` as its stage's worker would, which must not fail.
async fn deliver(handler: &impl StageHandler, envelope: Envelope) -> Outcome {
    handler
        .handle_envelope(JobContext::detached(handler.stage()), envelope)
        .await
        .unwrap()
}

/// The restore job of `rp` from the operational tier, as the API would queue it.
fn operational_job(rp: &str, restore_id: &str, options: RestoreOptions) -> RestoreJob {
    RestoreJob {
        restore_id: restore_id.into(),
        instance: INSTANCE.into(),
        recovery_point_id: rp.into(),
        source_tier: Tier::Operational,
        staging: None,
        options,
    }
}

#[tokio::test]
async fn snapshot_and_restore_into_another_namespace() {
    let f = Fixture::new().await;
    f.define_instance(
        namespaces(&["shop"]),
        vec![
            hook("freeze", HookPhase::Pre, "fsfreeze-f", HookErrorMode::Fail),
            hook("thaw", HookPhase::Post, "fsfreeze-u", HookErrorMode::Fail),
        ],
    )
    .await;
    // Through the handler, twice: the redelivery re-emits the same event and runs nothing.
    let stage = SnapshotStage(f.ctx.clone());
    let envelope = Envelope::new("job-1", Message::Snapshot(snapshot_job("rp-1")));
    let outcome = deliver(&stage, envelope.clone()).await;
    let [Message::RpCreated(created)] = outcome.messages() else {
        panic!("expected rp.created, got {:?}", outcome.messages());
    };
    assert_eq!(created.volume_count, 1, "{created:?}");
    assert_eq!(created.volume_bytes, DISK_SIZE);
    assert!(created.resource_count > 10, "{created:?}");
    assert!(created.warnings.is_empty(), "{:?}", created.warnings);
    let hooks_ran: Vec<String> = f
        .source
        .sandbox()
        .exec_log()
        .iter()
        .map(|r| format!("{}/{} {}", r.namespace, r.pod, r.command[0]))
        .collect();
    assert_eq!(hooks_ran, ["shop/db-0 fsfreeze-f", "shop/db-0 fsfreeze-u"]);
    let again = deliver(&stage, envelope).await;
    assert_eq!(again.messages(), outcome.messages());
    assert_eq!(
        f.source.sandbox().exec_log().len(),
        2,
        "a recorded RP runs no hooks again"
    );

    // The source changes after the snapshot: the restore must bring back the snapshot's bytes.
    let expected = f.disk_bytes("shop-data").await;
    f.disks
        .write(&DiskId("shop-data".into()), 0, &[0xFF; 4096])
        .await
        .unwrap();

    let restore_stage = RestoreStage(f.ctx.clone());
    let job = operational_job("rp-1", "restore-1", mapping("shop", "shop-copy"));
    let envelope = Envelope::new("restore-1", Message::Restore(job));
    let outcome = deliver(&restore_stage, envelope.clone()).await;
    let [Message::RestoreCompleted(done)] = outcome.messages() else {
        panic!("expected restore.completed, got {:?}", outcome.messages());
    };
    assert_eq!(done.target_cluster, "source");
    assert_eq!(done.volumes_restored, 1);
    assert!(!done.dry_run);
    assert!(done.resources_created >= 15, "{done:?}");
    // Cluster-scoped objects of the backup exist already in the same cluster: skipped.
    assert!(done.resources_skipped >= 1, "{done:?}");

    let client = f.source.client();
    let compared = assert_namespace_copied(&client, "shop", &client, "shop-copy").await;
    assert!(compared >= 12, "compared {compared} objects");
    let ns = namespace(&client, "shop-copy").await;
    assert_eq!(ns["metadata"]["labels"]["team"], "commerce");
    let binding = existing(&client, ROLE_BINDING, Some("shop-copy"), "config-reader").await;
    assert_eq!(
        binding["subjects"][0]["namespace"], "shop-copy",
        "RBAC subjects follow the mapping"
    );
    let disk = restored_disk(&client, "shop-copy", "data-db-0").await;
    assert_eq!(
        f.disk_bytes(&disk).await,
        expected,
        "the restored volume holds the snapshot's bytes"
    );
    // The source claim is untouched.
    let source_claim = claim(&client, "shop", "data-db-0").await;
    assert_eq!(source_claim["spec"]["volumeName"], "pv-shop-data");

    // Redelivered after completion: the same event, nothing redone.
    let rv = f.source.sandbox().resource_version();
    let again = deliver(&restore_stage, envelope).await;
    assert_eq!(again.messages(), outcome.messages());
    assert_eq!(f.source.sandbox().resource_version(), rv);
}

#[tokio::test]
async fn snapshot_and_restore_into_a_second_cluster() {
    let f = Fixture::new().await;
    f.define_instance(Scope::default(), Vec::new()).await;
    let created = f.snapshot("rp-1").await;
    assert_eq!(created.volume_count, 2, "{created:?}");
    let expected_shop = f.disk_bytes("shop-data").await;
    let expected_blog = f.disk_bytes("blog-data").await;

    let report = f.restore("rp-1", "to-dr", to_dr()).await;
    assert_eq!(report.target_cluster, "dr");
    assert_eq!(report.volumes_restored, 2);
    assert_eq!(report.count(PlanAction::Conflict), 0, "{:#?}", report.plan);
    // In waves (see ordering.rs for the full graph): the CRD before its custom resources, the
    // namespace before what lives in it, the claim before the StatefulSet mounting it.
    let wave = |kind: &str, ns: Option<&str>, name: &str| {
        report
            .entry(kind, ns, name)
            .unwrap_or_else(|| panic!("{kind} {name} planned"))
            .wave
    };
    assert_eq!(
        wave("CustomResourceDefinition", None, "widgets.demo.stowage.io"),
        0
    );
    assert_eq!(wave("Namespace", None, "shop"), 0);
    assert!(wave("Widget", Some("shop"), "blue") > 0);
    let claim_wave = wave("PersistentVolumeClaim", Some("shop"), "data-db-0");
    assert!(claim_wave > 0 && claim_wave < wave("StatefulSet", Some("shop"), "db"));
    let waves: Vec<u32> = report.plan.iter().map(|e| e.wave).collect();
    assert!(waves.is_sorted(), "{waves:?}");

    let (source, dr) = (f.source.client(), f.dr.client());
    for ns in ["shop", "blog"] {
        assert_namespace_copied(&source, ns, &dr, ns).await;
    }
    for (t, name) in [
        (
            ("storage.k8s.io/v1", "StorageClass", "storageclasses"),
            "local-disk",
        ),
        (
            (
                "rbac.authorization.k8s.io/v1",
                "ClusterRole",
                "clusterroles",
            ),
            "widget-reader",
        ),
        (
            (
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                "customresourcedefinitions",
            ),
            "widgets.demo.stowage.io",
        ),
    ] {
        let original = get(&source, t, None, name).await.unwrap();
        let copy = get(&dr, t, None, name)
            .await
            .unwrap_or_else(|| panic!("{name} not restored"));
        assert_eq!(comparable(copy)["spec"], comparable(original)["spec"]);
    }
    assert!(get(&dr, NAMESPACE, None, "kube-system").await.is_some());
    assert!(
        list(&dr, ("apps/v1", "Deployment", "deployments"), "kube-system")
            .await
            .is_empty(),
        "kube-system is never backed up unless asked"
    );
    let shop_disk = restored_disk(&dr, "shop", "data-db-0").await;
    let blog_disk = restored_disk(&dr, "blog", "data-mysql-0").await;
    assert_eq!(f.disk_bytes(&shop_disk).await, expected_shop);
    assert_eq!(f.disk_bytes(&blog_disk).await, expected_blog);
    // The NFS claim had no backed-up data: restored empty, for the cluster to provision.
    let uploads = claim(&dr, "blog", "uploads").await;
    assert!(uploads["spec"].get("volumeName").is_none(), "{uploads}");
    assert!(
        report.warnings.iter().any(|w| w.contains("blog/uploads")),
        "{:?}",
        report.warnings
    );
    // No source PV was applied: only the two new ones exist.
    let pvs: Api<DynamicObject> = Api::all_with(
        dr.clone(),
        &ar("v1", "PersistentVolume", "persistentvolumes"),
    );
    let names: Vec<String> = pvs
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("stowage-")), "{names:?}");
}

#[tokio::test]
async fn restore_without_volume_data() {
    let f = Fixture::new().await;
    f.define_instance(namespaces(&["shop"]), Vec::new()).await;
    f.snapshot("rp-1").await;
    let before = f.disk_files();
    let options = RestoreOptions {
        target_cluster: Some("dr".into()),
        include_volumes: false,
        ..RestoreOptions::default()
    };
    let report = f.restore("rp-1", "no-data", options).await;
    assert_eq!(report.volumes_restored, 0);
    assert_eq!(f.disk_files(), before, "no disk was created");
    let claim = claim(&f.dr.client(), "shop", "data-db-0").await;
    assert!(claim["spec"].get("volumeName").is_none());
    assert!(
        report.warnings.is_empty(),
        "leaving data out on purpose is no warning: {:?}",
        report.warnings
    );
}

#[tokio::test]
async fn skip_keeps_what_exists_and_patch_brings_it_back() {
    let f = Fixture::new().await;
    f.define_instance(namespaces(&["shop"]), Vec::new()).await;
    f.snapshot("rp-1").await;
    let client = f.source.client();
    let first = f.restore("rp-1", "r1", mapping("shop", "shop-copy")).await;
    assert_eq!(first.volumes_restored, 1);

    // Someone edits one config map and deletes another.
    let cms: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "shop-copy",
        &ar("v1", "ConfigMap", "configmaps"),
    );
    cms.patch(
        "db-config",
        &PatchParams::default(),
        &Patch::Merge(&json!({"data": {"max_connections": "5"}})),
    )
    .await
    .unwrap();
    cms.delete("web-config", &Default::default()).await.unwrap();

    let skip = f.restore("rp-1", "r2", mapping("shop", "shop-copy")).await;
    let action = |r: &stowage_stages::restore::RestoreReport, name: &str| {
        r.entry("ConfigMap", Some("shop-copy"), name)
            .unwrap()
            .action
    };
    assert_eq!(action(&skip, "db-config"), PlanAction::Skip);
    assert_eq!(
        action(&skip, "web-config"),
        PlanAction::Create,
        "skip recreates what is missing"
    );
    assert_eq!(skip.count(PlanAction::Create), 1, "{:#?}", skip.plan);
    assert_eq!(
        skip.volumes_restored, 0,
        "an existing claim gets no new disk"
    );
    let db = config_map(&client, "shop-copy", "db-config").await;
    assert_eq!(db["data"]["max_connections"], "5", "skip leaves the edit");

    let options = RestoreOptions {
        existing: ExistingPolicy::Patch,
        ..mapping("shop", "shop-copy")
    };
    let patch = f.restore("rp-1", "r3", options).await;
    assert_eq!(action(&patch, "db-config"), PlanAction::Patch);
    assert_eq!(
        action(&patch, "web-config"),
        PlanAction::Skip,
        "already matches"
    );
    let patched: Vec<String> = patch
        .plan
        .iter()
        .filter(|e| e.action == PlanAction::Patch)
        .map(|e| format!("{} {}", e.kind, e.name))
        .collect();
    // The cluster role binding gains the copy's service account (its original subject stays).
    assert_eq!(
        patched,
        ["ConfigMap db-config", "ClusterRoleBinding widget-reader"]
    );
    let binding = existing(&client, CLUSTER_ROLE_BINDING, None, "widget-reader").await;
    let subjects: Vec<&str> = binding["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["shop", "shop-copy"]);
    assert_eq!(patch.count(PlanAction::Conflict), 0, "{:#?}", patch.plan);
    assert_eq!(patch.volumes_restored, 0);
    let db = config_map(&client, "shop-copy", "db-config").await;
    assert_eq!(
        db["data"]["max_connections"], "100",
        "patch restores the backup's data"
    );
}

#[tokio::test]
async fn a_dry_run_changes_nothing() {
    let f = Fixture::new().await;
    f.define_instance(Scope::default(), Vec::new()).await;
    f.snapshot("rp-1").await;
    let disks_before = f.disk_files();
    let rv_dr = f.dr.sandbox().resource_version();
    let rv_source = f.source.sandbox().resource_version();

    // Into the empty cluster: everything would be created, custom resources after their CRD.
    let options = RestoreOptions {
        dry_run: true,
        ..to_dr()
    };
    let stage = RestoreStage(f.ctx.clone());
    let job = operational_job("rp-1", "dry", options);
    let outcome = deliver(&stage, Envelope::new("dry", Message::Restore(job.clone()))).await;
    let [Message::RestoreCompleted(done)] = outcome.messages() else {
        panic!()
    };
    assert!(done.dry_run);
    assert_eq!(done.volumes_restored, 2, "planned");
    assert!(done.resources_created > 20, "{done:?}");
    let plan = restore(
        &f.ctx,
        &RestoreRequest::from_job(&job).unwrap(),
        &JobContext::detached(Stage::Restore),
    )
    .await
    .unwrap();
    assert_eq!(plan.count(PlanAction::Conflict), 0, "{:#?}", plan.plan);
    assert_eq!(
        plan.entry("Widget", Some("shop"), "blue").unwrap().action,
        PlanAction::Create
    );

    // Into the source cluster, patching: existing objects would be skipped, nothing changes.
    let options = RestoreOptions {
        existing: ExistingPolicy::Patch,
        dry_run: true,
        ..RestoreOptions::default()
    };
    let plan = f.restore("rp-1", "dry-2", options).await;
    assert_eq!(
        plan.entry("ConfigMap", Some("shop"), "db-config")
            .unwrap()
            .action,
        PlanAction::Skip
    );
    assert_eq!(
        plan.entry("PersistentVolumeClaim", Some("shop"), "data-db-0")
            .unwrap()
            .action,
        PlanAction::Skip
    );
    assert_eq!(plan.volumes_restored, 0);

    assert_eq!(
        f.dr.sandbox().resource_version(),
        rv_dr,
        "the target cluster was not touched"
    );
    assert_eq!(f.source.sandbox().resource_version(), rv_source);
    assert_eq!(f.disk_files(), disks_before, "no disk was created");
    assert!(
        f.vault
            .get(&stowage_stages::restore::completed_key("dry").unwrap())
            .await
            .is_err(),
        "nothing written"
    );
}

#[tokio::test]
async fn controller_owned_pods_are_left_to_their_controller() {
    let f = Fixture::new().await;
    f.source.sandbox().create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-5c9b-abcde", "namespace": "shop", "labels": {"app": "web"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5c9b", "uid": "u-1", "controller": true}]},
        "spec": {"containers": [{"name": "web", "image": "nginx"}], "nodeName": "node-1"},
    })).unwrap();
    f.source.sandbox().create(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "owned-config", "namespace": "shop",
                     "ownerReferences": [{"apiVersion": "demo.stowage.io/v1", "kind": "Widget", "name": "blue", "uid": "u-2"}]},
        "data": {"k": "v"},
    })).unwrap();
    f.define_instance(namespaces(&["shop"]), Vec::new()).await;
    f.snapshot("rp-1").await;
    let report = f.restore("rp-1", "owned", to_dr()).await;
    let entry = report.entry("Pod", Some("shop"), "web-5c9b-abcde").unwrap();
    assert_eq!(entry.action, PlanAction::Skip);
    assert!(
        entry
            .note
            .as_deref()
            .unwrap()
            .contains("ReplicaSet web-5c9b")
    );
    let dr = f.dr.client();
    assert!(
        get(&dr, ("v1", "Pod", "pods"), Some("shop"), "web-5c9b-abcde")
            .await
            .is_none()
    );
    let cm = config_map(&dr, "shop", "owned-config").await;
    assert!(
        cm["metadata"].get("ownerReferences").is_none(),
        "source uids are dropped: {cm}"
    );
}

#[tokio::test]
async fn restore_from_the_vault_tier_through_hydration() {
    let f = Fixture::new().await;
    f.define_instance(namespaces(&["shop"]), Vec::new()).await;
    let created = f.snapshot("rp-1").await;
    let expected = f.disk_bytes("shop-data").await;
    let vault_ctx = VaultContext::new(
        f.vault.clone(),
        VaultKey::from_hex(&f.key.expose_secret_hex()).unwrap(),
        f.disks.clone(),
    );

    let transfer = VaultTransfer(vault_ctx.clone());
    deliver(
        &transfer,
        Envelope::new(
            "vt",
            Message::VaultTransfer(VaultTransferJob {
                instance: INSTANCE.into(),
                recovery_point_id: created.recovery_point_id.clone(),
            }),
        ),
    )
    .await;
    // The plan of this restore before anything is staged (`restore create --dry-run`): the
    // claim's data would land on the staging disk hydration is about to make.
    let planned = |dry_run| RestoreRequest {
        restore_id: "from-vault".into(),
        instance: INSTANCE.into(),
        recovery_point_id: "rp-1".into(),
        source: RestoreSource::Planned { tier: Tier::Vault },
        options: RestoreOptions { dry_run, ..to_dr() },
    };
    let detached = JobContext::detached(Stage::Restore);
    let plan = restore(&f.ctx, &planned(true), &detached).await.unwrap();
    assert_eq!(plan.count(PlanAction::Conflict), 0, "{:#?}", plan.plan);
    let planned_disk = plan
        .entry("PersistentVolumeClaim", Some("shop"), "data-db-0")
        .and_then(|e| e.disk.clone())
        .expect("the claim's disk is planned");
    let refused = restore(&f.ctx, &planned(false), &detached)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("not a dry run"), "{refused}");
    let hydration = RestoreHydration(vault_ctx);
    let outcome = deliver(
        &hydration,
        Envelope::new(
            "hy",
            Message::RestoreHydration(RestoreHydrationJob {
                restore_id: "from-vault".into(),
                instance: INSTANCE.into(),
                recovery_point_id: "rp-1".into(),
                tier: Tier::Vault,
                staging_location: None,
                options: to_dr(),
            }),
        ),
    )
    .await;
    let [Message::RestoreHydrated(hydrated)] = outcome.messages() else {
        panic!("{:?}", outcome.messages())
    };
    let staged = hydrated.staging.resources.clone();
    assert_eq!(
        planned_disk, hydrated.staging.disks[0].disk_id,
        "the plan named it"
    );

    let stage = RestoreStage(f.ctx.clone());
    let outcome = deliver(
        &stage,
        Envelope::new("rs", Message::RestoreHydrated(hydrated.clone())),
    )
    .await;
    let [
        Message::RestoreCompleted(RestoreCompleted {
            volumes_restored,
            target_cluster,
            ..
        }),
    ] = outcome.messages()
    else {
        panic!()
    };
    assert_eq!((*volumes_restored, target_cluster.as_str()), (1, "dr"));
    assert_namespace_copied(&f.source.client(), "shop", &f.dr.client(), "shop").await;
    let disk = restored_disk(&f.dr.client(), "shop", "data-db-0").await;
    assert_eq!(
        disk, hydrated.staging.disks[0].disk_id,
        "the staging disk is adopted"
    );
    assert_eq!(f.disk_bytes(&disk).await, expected);
    let staged_key = layout::staging("from-vault", "resources").unwrap();
    assert_eq!(staged, staged_key.to_string());
    assert!(
        f.vault.get(&staged_key).await.is_err(),
        "staged resources cleaned up"
    );
}
