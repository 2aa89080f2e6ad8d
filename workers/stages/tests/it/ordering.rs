//! The restore's order end to end: realistic sets (`tests/fixtures/restore-order.json`: a
//! cert-manager-like CRD bundle with its custom resources, a StatefulSet with
//! volumeClaimTemplates and real volumes, an operator with admission webhooks) next to the
//! sample app, backed up from one sandbox and restored into an empty one. The sandbox stamps
//! every write with one global resourceVersion, so the order of the writes in the target is
//! the order the restore made them in.

use serde_json::Value;
use stowage_disk::DiskProvider;
use stowage_schemas::domain::Scope;
use stowage_stages::restore::{PlanAction, RestoreReport};

use crate::cluster_fixture::*;

const RBAC: &str = "rbac.authorization.k8s.io/v1";
const CRD: (&str, &str, &str) = (
    "apiextensions.k8s.io/v1",
    "CustomResourceDefinition",
    "customresourcedefinitions",
);

fn fixture_objects() -> Vec<Value> {
    serde_json::from_str(include_str!("../fixtures/restore-order.json")).expect("JSON")
}

/// The resourceVersion of the last write to an object in `client`'s sandbox.
async fn written_at(
    client: &kube::Client,
    t: (&str, &str, &str),
    ns: Option<&str>,
    name: &str,
) -> u64 {
    let object = existing(client, t, ns, name).await;
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or_else(|| panic!("{} {name} has a numeric resourceVersion", t.1))
}

fn entry<'a>(
    report: &'a RestoreReport,
    kind: &str,
    ns: Option<&str>,
    name: &str,
) -> &'a stowage_stages::restore::PlanEntry {
    report
        .entry(kind, ns, name)
        .unwrap_or_else(|| panic!("{kind} {ns:?}/{name} is in the plan: {:#?}", report.plan))
}

#[tokio::test]
async fn a_restore_follows_the_dependency_graph_in_waves() {
    let f = Fixture::new().await;
    for (i, disk) in ["pg-data-0", "pg-data-1"].into_iter().enumerate() {
        let info = f.disks.create_disk(disk, DISK_SIZE).await.unwrap();
        f.disks
            .write(&info.id, 4096, &pattern(40 + i as u8, 32 << 10))
            .await
            .unwrap();
    }
    for object in fixture_objects() {
        f.source.sandbox().create(object).unwrap();
    }
    let source = f.source.client();
    assert_eq!(
        claim(&source, "db", "data-pg-0").await["status"]["phase"],
        "Bound",
        "the sandbox binds a claim to the volume it names"
    );
    f.define_instance(Scope::default(), Vec::new()).await;
    let created = f.snapshot("rp-1").await;
    assert_eq!(
        created.volume_count, 4,
        "the sample app's two and the set's two"
    );

    // The plan first: every decision, in waves, nothing written.
    let rv_dr = f.dr.sandbox().resource_version();
    let dry = stowage_schemas::jobs::RestoreOptions {
        dry_run: true,
        ..to_dr()
    };
    let plan = f.restore("rp-1", "order", dry).await;
    assert_eq!(
        f.dr.sandbox().resource_version(),
        rv_dr,
        "a plan writes nothing"
    );
    assert_eq!(plan.count(PlanAction::Conflict), 0, "{:#?}", plan.plan);
    let claim_entry = entry(&plan, "PersistentVolumeClaim", Some("db"), "data-pg-0");
    assert_eq!(claim_entry.action, PlanAction::Create);
    let disk = claim_entry
        .disk
        .as_deref()
        .expect("a claim's new disk is planned");
    assert!(disk.starts_with("restore-order-"), "{disk}");
    let sts = entry(&plan, "StatefulSet", Some("db"), "pg");
    assert!(sts.wave > claim_entry.wave, "{sts:?} {claim_entry:?}");
    assert!(
        sts.after
            .contains(&"PersistentVolumeClaim db/data-pg-0".to_owned()),
        "{:?}",
        sts.after
    );
    let webhook = entry(&plan, "ValidatingWebhookConfiguration", None, "operator");
    assert_eq!(webhook.wave + 1, plan.waves, "webhooks come last");
    assert!(plan.plan.iter().all(|e| e.wave <= webhook.wave));

    // The restore: the same order, with the waits.
    let report = f.restore("rp-1", "order", to_dr()).await;
    assert_eq!(report.count(PlanAction::Conflict), 0, "{:#?}", report.plan);
    // The only warning: the sample app's NFS claim, which no snapshot covers.
    assert!(
        report
            .warnings
            .iter()
            .all(|w| w.contains("PVC blog/uploads")),
        "{:?}",
        report.warnings
    );
    assert_eq!(report.waves, plan.waves);
    let waves: Vec<u32> = report.plan.iter().map(|e| e.wave).collect();
    assert!(waves.is_sorted(), "applied wave by wave: {waves:?}");
    assert_eq!(
        report
            .plan
            .iter()
            .map(|e| (&e.kind, &e.name, e.wave, e.action))
            .collect::<Vec<_>>(),
        plan.plan
            .iter()
            .map(|e| (&e.kind, &e.name, e.wave, e.action))
            .collect::<Vec<_>>(),
        "the restore does what its plan said"
    );

    let dr = f.dr.client();
    let at = |t, ns, name| written_at(&dr, t, ns, name);
    // cert-manager: CRD → Certificate → the Secret it owns → the Deployment mounting it.
    let crd = at(CRD, None, "certificates.cert-manager.io").await;
    let certificate = at(
        ("cert-manager.io/v1", "Certificate", "certificates"),
        Some("payments"),
        "api-tls",
    )
    .await;
    let issuer = at(
        ("cert-manager.io/v1", "ClusterIssuer", "clusterissuers"),
        None,
        "selfsigned",
    )
    .await;
    let secret = at(("v1", "Secret", "secrets"), Some("payments"), "api-tls").await;
    let api = at(
        ("apps/v1", "Deployment", "deployments"),
        Some("payments"),
        "api",
    )
    .await;
    assert!(crd < certificate && crd < issuer && certificate < secret && secret < api);
    // The StatefulSet after its claims are Bound (the binding is a write too) to their new
    // volumes holding the backed-up bytes; after its account, config and secret.
    let set = at(("apps/v1", "StatefulSet", "statefulsets"), Some("db"), "pg").await;
    for (i, name) in ["data-pg-0", "data-pg-1"].into_iter().enumerate() {
        let restored = claim(&dr, "db", name).await;
        assert_eq!(restored["status"]["phase"], "Bound");
        assert!(
            at(CLAIM, Some("db"), name).await < set,
            "{name} bound before the set"
        );
        let disk = restored_disk(&dr, "db", name).await;
        assert_eq!(
            f.disk_bytes(&disk).await[4096..4096 + (32 << 10)],
            pattern(40 + i as u8, 32 << 10)[..],
            "{name} holds the snapshot's bytes"
        );
    }
    for (t, name) in [
        (("v1", "ServiceAccount", "serviceaccounts"), "pg"),
        (CONFIG_MAP, "pg-config"),
        (("v1", "Secret", "secrets"), "pg-auth"),
    ] {
        assert!(
            at(t, Some("db"), name).await < set,
            "{} {name} before the set",
            t.1
        );
    }
    // The operator: roles before bindings, account and certificate before the Deployment,
    // the custom resource after its CRD, the webhooks after everything else.
    let op = Some("operator-system");
    let cluster_role = at((RBAC, "ClusterRole", "clusterroles"), None, "operator").await;
    let cluster_binding = at(CLUSTER_ROLE_BINDING, None, "operator").await;
    let role = at((RBAC, "Role", "roles"), op, "leader-election").await;
    let binding = at(ROLE_BINDING, op, "leader-election").await;
    assert!(cluster_role < cluster_binding && role < binding);
    let operator = at(("apps/v1", "Deployment", "deployments"), op, "operator").await;
    let account = at(("v1", "ServiceAccount", "serviceaccounts"), op, "operator").await;
    let cert = at(("v1", "Secret", "secrets"), op, "webhook-cert").await;
    assert!(account < operator && cert < operator);
    let widget_crd = at(CRD, None, "widgets.ops.example.com").await;
    let widget = at(("ops.example.com/v1", "Widget", "widgets"), op, "sample").await;
    assert!(widget_crd < widget);
    let admission = "admissionregistration.k8s.io/v1";
    let validating = at(
        (
            admission,
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
        ),
        None,
        "operator",
    )
    .await;
    let mutating = at(
        (
            admission,
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
        ),
        None,
        "operator",
    )
    .await;
    let everything_else = [
        crd,
        certificate,
        issuer,
        secret,
        api,
        set,
        cluster_binding,
        binding,
        operator,
        widget,
    ];
    let last_other = everything_else.into_iter().max().unwrap();
    assert!(validating > last_other && mutating > last_other);
    // The sample app came along, in the same waves.
    assert_eq!(
        claim(&dr, "shop", "data-db-0").await["status"]["phase"],
        "Bound"
    );
}

#[tokio::test]
async fn a_claim_that_does_not_bind_is_a_warning_not_a_hang() {
    let mut f = Fixture::new().await;
    f.define_instance(namespaces(&["shop"]), Vec::new()).await;
    f.snapshot("rp-1").await;
    // The PV this restore would make for shop/data-db-0 exists in the target already, claimed
    // by another claim: the restored claim names it and can never bind to it.
    let taken = stowage_stages::restore::restored_pv_name("late", "shop", "data-db-0");
    f.dr.sandbox()
        .create(serde_json::json!({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": taken},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                "claimRef": {"namespace": "elsewhere", "name": "theirs"},
                "csi": {"driver": "disk.stowage.local", "volumeHandle": "theirs"}},
        }))
        .unwrap();
    f.ctx.pvc_bound_timeout = std::time::Duration::from_secs(1);
    let started = std::time::Instant::now();
    let report = f.restore("rp-1", "late", to_dr()).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let late: Vec<&String> = report
        .warnings
        .iter()
        .filter(|w| w.contains("PVC shop/data-db-0 was not Bound to its restored volume within 1s"))
        .collect();
    assert_eq!(late.len(), 1, "{:?}", report.warnings);
    // What mounts it was restored anyway, after the wait.
    assert_eq!(
        entry(&report, "StatefulSet", Some("shop"), "db").action,
        PlanAction::Create
    );
    let dr = f.dr.client();
    assert_eq!(
        claim(&dr, "shop", "data-db-0").await["spec"]["volumeName"],
        taken.as_str()
    );
    assert!(claim(&dr, "shop", "data-db-0").await["status"]["phase"] != "Bound");
}
