//! A standard Kubernetes client, `kubectl --server`, pointed at the sandbox.
//!
//! kubectl is required: on Debian it is the `kubernetes-client` package (or `kubectl` from the
//! Kubernetes or Google Cloud apt repositories). A missing kubectl fails the test rather than
//! skipping it, so the check cannot silently stop running.

use std::process::Command;

use crate::harness::sample_cluster;

fn kubectl(server: &str, args: &[&str]) -> String {
    let output = Command::new("kubectl")
        .arg(format!("--server={server}"))
        // No kubeconfig of the machine's user may leak in (contexts, credentials, a namespace).
        .env("KUBECONFIG", "/dev/null")
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
    let server = cluster.url().to_owned();
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

        let missing = Command::new("kubectl")
            .args([
                &format!("--server={server}"),
                "get",
                "configmap",
                "nope",
                "-n",
                "shop",
            ])
            .env("KUBECONFIG", "/dev/null")
            .output()
            .unwrap();
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
