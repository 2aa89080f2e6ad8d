//! A standard Kubernetes client, `kubectl --kubeconfig <file the sandbox wrote>`, against the
//! sandbox over HTTPS, verifying its CA and authenticating with the identity's token.
//!
//! kubectl is required: on Debian it is the `kubernetes-client` package (or `kubectl` from the
//! Kubernetes or Google Cloud apt repositories). A missing kubectl fails the test rather than
//! skipping it, so the check cannot silently stop running.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::sample_cluster;

/// kubectl with the kubeconfig at `kubeconfig` only (none of the machine user's may leak in).
fn kubectl_command(kubeconfig: &Path) -> Command {
    let mut command = Command::new("kubectl");
    command
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .env_remove("KUBECONFIG");
    command
}

/// The kubeconfigs of a sandbox, in a new folder: identity → file.
fn kubeconfigs(
    cluster: &stowage_sandbox::SandboxHandle,
) -> std::collections::BTreeMap<String, PathBuf> {
    let dir =
        std::env::temp_dir().join(format!("stowage-kubectl-{}", uuid::Uuid::new_v4().simple()));
    cluster
        .write_kubeconfigs(&dir)
        .expect("kubeconfigs written")
}

fn run_kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    kubectl_command(kubeconfig)
        .args(["--request-timeout=10s"])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "kubectl could not be run ({e}); install it (Debian: apt-get install kubernetes-client) \
                 — this test checks that a standard client can use the sandbox"
            )
        })
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let output = kubectl_command(kubeconfig)
        .args(["--request-timeout=10s"])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "kubectl could not be run ({e}); install it (Debian: apt-get install kubernetes-client) \
                 — this test checks that a standard client can use the sandbox"
            )
        });
    assert!(
        output.status.success(),
        "kubectl {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stdout).expect("kubectl prints UTF-8")
}

#[tokio::test]
async fn kubectl_lists_and_gets_what_the_sandbox_holds() {
    let cluster = sample_cluster().await;
    let server = kubeconfigs(&cluster)[stowage_sandbox::ADMIN].clone();
    // kubectl blocks; the sandbox keeps serving on the test's runtime meanwhile.
    tokio::task::spawn_blocking(move || {
        let namespaces = kubectl(&server, &["get", "namespaces"]);
        for ns in ["shop", "blog", "kube-system", "default"] {
            assert!(namespaces.contains(ns), "{ns} listed in:\n{namespaces}");
        }

        let configmaps = kubectl(&server, &["get", "configmaps", "-n", "shop"]);
        assert!(
            configmaps.contains("web-config") && configmaps.contains("db-config"),
            "{configmaps}"
        );

        let selected = kubectl(
            &server,
            &[
                "get",
                "deployments",
                "-A",
                "-l",
                "tier=frontend",
                "-o",
                "name",
            ],
        );
        let mut selected: Vec<&str> = selected.lines().collect();
        selected.sort();
        assert_eq!(
            selected,
            ["deployment.apps/web", "deployment.apps/wordpress"]
        );

        let all = kubectl(&server, &["get", "all", "-n", "blog", "-o", "name"]);
        for object in [
            "pod/mysql-0",
            "service/mysql",
            "deployment.apps/wordpress",
            "statefulset.apps/mysql",
        ] {
            assert!(
                all.lines().any(|l| l == object),
                "{object} in `get all`:\n{all}"
            );
        }

        let pv = kubectl(
            &server,
            &[
                "get",
                "pv",
                "pv-shop-data",
                "-o",
                "jsonpath={.spec.csi.volumeHandle}",
            ],
        );
        assert_eq!(pv, "shop-data");

        let widget = kubectl(
            &server,
            &[
                "get",
                "widgets.demo.stowage.io",
                "blue",
                "-n",
                "shop",
                "-o",
                "json",
            ],
        );
        let widget: serde_json::Value = serde_json::from_str(&widget).unwrap();
        assert_eq!(widget["spec"]["color"], "blue");

        let missing = run_kubectl(&server, &["get", "configmap", "nope", "-n", "shop"]);
        assert!(!missing.status.success());
        let stderr = String::from_utf8_lossy(&missing.stderr);
        assert!(
            stderr.contains("NotFound") && stderr.contains("\"nope\" not found"),
            "{stderr}"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn kubectl_with_a_service_accounts_kubeconfig_is_refused_what_rbac_does_not_grant() {
    let cluster = sample_cluster().await;
    let written = kubeconfigs(&cluster);
    tokio::task::spawn_blocking(move || {
        let snapshot = &written["stowage-snapshot"];
        let refused = run_kubectl(snapshot, &["get", "configmaps", "-n", "shop"]);
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains(
                "configmaps is forbidden: User \"system:serviceaccount:stowage:stowage-snapshot\" \
                 cannot list resource \"configmaps\" in API group \"\" in the namespace \"shop\""
            ),
            "{stderr}"
        );
        // The combined file's contexts: the admin's is current.
        let all = written["admin"].with_file_name("sandbox.kubeconfig");
        let namespaces = kubectl(&all, &["get", "namespaces", "-o", "name"]);
        assert!(
            namespaces.lines().any(|l| l == "namespace/shop"),
            "{namespaces}"
        );
    })
    .await
    .unwrap();
}
