//! The sandbox as an API server for authentication and authorization: HTTPS with its own CA,
//! a bearer token per identity, kubeconfigs that standard clients load, and RBAC enforced from
//! the Roles and bindings stored in it (the fleet's from `infra/k8s/base/rbac.yaml`, applied as
//! the admin, as on a real cluster).

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use stowage_cluster::csi::volume_snapshots;
use stowage_sandbox::{ADMIN, SandboxHandle, apply_fleet_rbac};

use crate::harness::{api_code, sample_cluster};

const SNAPSHOT: &str = "stowage-snapshot";
const RESTORE: &str = "stowage-restore";
const RETENTION: &str = "stowage-retention";
const VAULT: &str = "stowage-vault";

fn temp_dir(purpose: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "stowage-sandbox-{purpose}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The kubeconfig the sandbox wrote for `identity`, parsed.
fn kubeconfig(cluster: &SandboxHandle, identity: &str) -> Kubeconfig {
    let written = cluster.write_kubeconfigs(&temp_dir("kubeconfigs")).unwrap();
    Kubeconfig::read_from(&written[identity]).expect("a kubeconfig kube can read")
}

async fn client_from(kubeconfig: Kubeconfig) -> kube::Client {
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a usable kubeconfig");
    kube::Client::try_from(config).unwrap()
}

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name}, "data": {"k": "v"},
    }))
    .unwrap()
}

/// The 403 of `result`: its message, or a panic naming what came back instead.
fn forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {
            assert_eq!(status.reason, "Forbidden");
            status.message.clone()
        }
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn the_fleet_accounts_may_do_only_what_the_applied_rbac_yaml_grants() {
    let cluster = sample_cluster().await;
    let snapshot = cluster.client_as(SNAPSHOT).unwrap();
    let restore = cluster.client_as(RESTORE).unwrap();
    let vault = cluster.client_as(VAULT).unwrap();
    let user = |sa: &str| format!("system:serviceaccount:stowage:{sa}");

    // Before anyone applies rbac.yaml, the accounts authenticate but may only discover.
    snapshot
        .apiserver_version()
        .await
        .expect("discovery and /version are open to every authenticated user");
    let message = forbidden(
        Api::<ConfigMap>::namespaced(snapshot.clone(), "shop")
            .list(&ListParams::default())
            .await,
    );
    assert_eq!(
        message,
        format!(
            "configmaps is forbidden: User \"{}\" cannot list resource \"configmaps\" in API \
             group \"\" in the namespace \"shop\"",
            user(SNAPSHOT)
        )
    );

    apply_fleet_rbac(&cluster.client())
        .await
        .expect("the admin applies rbac.yaml");

    // snapshot: reads everything, creates and deletes nothing.
    let shop = |c: &kube::Client| Api::<ConfigMap>::namespaced(c.clone(), "shop");
    let listed = shop(&snapshot).list(&ListParams::default()).await.unwrap();
    assert!(
        listed
            .items
            .iter()
            .any(|c| c.metadata.name.as_deref() == Some("web-config"))
    );
    Api::<ConfigMap>::all(snapshot.clone())
        .list(&ListParams::default())
        .await
        .expect("snapshot lists across namespaces");
    let message = forbidden(
        shop(&snapshot)
            .create(&PostParams::default(), &config_map("made-by-snapshot"))
            .await,
    );
    assert_eq!(
        message,
        format!(
            "configmaps is forbidden: User \"{}\" cannot create resource \"configmaps\" in API \
             group \"\" in the namespace \"shop\"",
            user(SNAPSHOT)
        )
    );
    let message = forbidden(
        shop(&snapshot)
            .delete("web-config", &DeleteParams::default())
            .await,
    );
    assert!(
        message.contains("cannot delete resource \"configmaps\""),
        "{message}"
    );

    // restore: creates and patches, never deletes.
    shop(&restore)
        .create(&PostParams::default(), &config_map("restored"))
        .await
        .expect("restore creates");
    shop(&restore)
        .patch(
            "restored",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"k": "w"}})),
        )
        .await
        .expect("restore patches");
    let message = forbidden(
        shop(&restore)
            .delete("restored", &DeleteParams::default())
            .await,
    );
    assert_eq!(
        message,
        format!(
            "configmaps \"restored\" is forbidden: User \"{}\" cannot delete resource \
             \"configmaps\" in API group \"\" in the namespace \"shop\"",
            user(RESTORE)
        )
    );

    // vault: no Kubernetes API at all.
    let message = forbidden(shop(&vault).list(&ListParams::default()).await);
    assert!(message.contains(&user(VAULT)), "{message}");

    // VolumeSnapshots: snapshot creates them, retention deletes them and may do nothing else.
    let retention = cluster.client_as(RETENTION).unwrap();
    let snapshots = |c: &kube::Client| {
        Api::<DynamicObject>::namespaced_with(c.clone(), "shop", &volume_snapshots())
    };
    let snapshot_of_data: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": "by-snapshot", "namespace": "shop"},
        "spec": {"source": {"persistentVolumeClaimName": "data-db-0"}},
    }))
    .unwrap();
    snapshots(&snapshot)
        .create(&PostParams::default(), &snapshot_of_data)
        .await
        .expect("snapshot creates VolumeSnapshots");
    let message = forbidden(
        snapshots(&snapshot)
            .delete("by-snapshot", &DeleteParams::default())
            .await,
    );
    assert!(
        message.contains("cannot delete resource \"volumesnapshots\""),
        "{message}"
    );
    let message = forbidden(shop(&retention).list(&ListParams::default()).await);
    assert!(message.contains(&user(RETENTION)), "{message}");
    snapshots(&retention)
        .delete("by-snapshot", &DeleteParams::default())
        .await
        .expect("retention deletes VolumeSnapshots");

    // The admin may do anything.
    shop(&cluster.client())
        .delete("restored", &DeleteParams::default())
        .await
        .expect("the admin deletes");
}

#[tokio::test]
async fn a_missing_or_unknown_token_is_401_unauthorized() {
    let cluster = sample_cluster().await;
    for token in [Some("not-a-token-the-sandbox-issued"), None] {
        let mut config = kubeconfig(&cluster, ADMIN);
        let user = config.auth_infos[0]
            .auth_info
            .as_mut()
            .expect("the user has credentials");
        user.token = token.map(|t| t.to_owned().into());
        let client = client_from(config).await;
        let (code, reason) = api_code(client.apiserver_version().await);
        assert_eq!(
            (code, reason.as_str()),
            (401, "Unauthorized"),
            "token {token:?}"
        );
        let (code, _) = api_code(
            Api::<ConfigMap>::namespaced(client, "shop")
                .list(&ListParams::default())
                .await,
        );
        assert_eq!(code, 401);
    }
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_sandbox_ca_is_refused() {
    let cluster = sample_cluster().await;
    let other = sample_cluster().await;
    // The right token and URL, but another sandbox's CA: the handshake fails.
    let mut config = kubeconfig(&cluster, ADMIN);
    let foreign = kubeconfig(&other, ADMIN);
    config.clusters[0]
        .cluster
        .as_mut()
        .unwrap()
        .certificate_authority_data = foreign.clusters[0]
        .cluster
        .as_ref()
        .unwrap()
        .certificate_authority_data
        .clone();
    let result = client_from(config).await.apiserver_version().await;
    assert!(
        matches!(&result, Err(e) if !matches!(e, kube::Error::Api(_))),
        "a TLS failure, not an answer: {result:?}"
    );
    // No CA at all: the system's roots do not know the sandbox's either.
    let mut config = kubeconfig(&cluster, ADMIN);
    config.clusters[0]
        .cluster
        .as_mut()
        .unwrap()
        .certificate_authority_data = None;
    let result = client_from(config).await.apiserver_version().await;
    assert!(
        matches!(&result, Err(e) if !matches!(e, kube::Error::Api(_))),
        "a TLS failure, not an answer: {result:?}"
    );
    // The sandbox still serves clients that trust it.
    client_from(kubeconfig(&cluster, ADMIN))
        .await
        .apiserver_version()
        .await
        .expect("the right CA works");
}

#[tokio::test]
async fn kubeconfigs_hold_a_context_per_identity_and_client_as_refuses_unknown_names() {
    let cluster = sample_cluster().await;
    let dir = temp_dir("all-contexts");
    let written = cluster.write_kubeconfigs(&dir).unwrap();
    assert_eq!(
        written.keys().map(String::as_str).collect::<Vec<_>>(),
        [ADMIN, SNAPSHOT, RESTORE, RETENTION, VAULT]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    let all = Kubeconfig::read_from(dir.join("sandbox.kubeconfig")).unwrap();
    assert_eq!(all.current_context.as_deref(), Some("sandbox-admin"));
    let options = KubeConfigOptions {
        context: Some(format!("sandbox-{SNAPSHOT}")),
        ..KubeConfigOptions::default()
    };
    let config = kube::Config::from_custom_kubeconfig(all, &options)
        .await
        .unwrap();
    assert!(
        config
            .cluster_url
            .to_string()
            .starts_with("https://127.0.0.1:")
    );
    let as_snapshot = kube::Client::try_from(config).unwrap();
    let message = forbidden(
        Api::<ConfigMap>::namespaced(as_snapshot, "shop")
            .list(&ListParams::default())
            .await,
    );
    assert!(message.contains("stowage-snapshot"), "{message}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&written[ADMIN])
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "a kubeconfig holding a token is the owner's only"
        );
    }
    let Err(error) = cluster.client_as("nobody") else {
        panic!("an unknown identity must be refused");
    };
    let error = error.to_string();
    assert!(
        error.contains("no identity \"nobody\"") && error.contains(SNAPSHOT),
        "{error}"
    );
}
