//! The fix preflight prints when the fleet's RBAC is missing (`stowage instance create` and
//! `stowage preflight` print it) works when pasted: its command is run as printed, by `sh`, from
//! the repository's root, with a real kubectl against a sandbox that has neither the fleet's
//! namespace nor its RBAC, and the permissions check then passes.
//!
//! kubectl is required (Debian: `apt-get install kubernetes-client`); a missing kubectl fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use stowage_control::preflight::{self, Check, KubeTarget, PreflightTargets, Status};
use stowage_sandbox::{Sandbox, SandboxHandle};

use crate::helpers::temp_dir;

/// How kubectl reaches the sandbox: the admin kubeconfig it wrote.
fn kubectl_connection(cluster: &SandboxHandle) -> Vec<String> {
    vec![format!(
        "--kubeconfig={}",
        crate::helpers::admin_kubeconfig(cluster).display()
    )]
}

/// The kubectl on `PATH`.
fn real_kubectl() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("kubectl"))
        .find(|path| path.is_file())
        .expect("kubectl is on PATH (Debian: apt-get install kubernetes-client)")
}

/// A folder holding a `kubectl` that is the real one pointed at `cluster`, to put first on `PATH`.
fn kubectl_for(cluster: &SandboxHandle, dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let args: Vec<String> = kubectl_connection(cluster)
        .into_iter()
        .chain([format!("--cache-dir={}", dir.join("cache").display())])
        .map(|a| format!("'{a}'"))
        .collect();
    let script = bin.join("kubectl");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec '{}' {} \"$@\"\n",
            real_kubectl().display(),
            args.join(" ")
        ),
    )
    .unwrap();
    let mut permissions = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&script, permissions).unwrap();
    bin
}

async fn permissions(cluster: &SandboxHandle, namespace: &str) -> Check {
    let targets = PreflightTargets {
        cluster: Some(KubeTarget {
            client: cluster.client(),
            url: cluster.url().to_owned(),
        }),
        fleet_namespace: namespace.to_owned(),
        ..PreflightTargets::default()
    };
    let report = preflight::run_all(&targets).await;
    report
        .get(preflight::PERMISSIONS)
        .unwrap_or_else(|| panic!("the permissions check ran: {report:#?}"))
        .clone()
}

/// Runs the first command quoted in `fix` as a user pasting it would, from the repository root.
async fn paste(cluster: &SandboxHandle, fix: &str) -> String {
    let command = fix
        .split('`')
        .nth(1)
        .unwrap_or_else(|| panic!("the fix quotes a command: {fix}"))
        .to_owned();
    let dir = temp_dir("rbac-fix");
    let bin = kubectl_for(cluster, &dir);
    let path = std::env::join_paths(
        std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("sh")
            .args(["-c", &command])
            .current_dir(root)
            .env("PATH", path)
            .env("KUBECONFIG", "/dev/null")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "the pasted fix failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn the_printed_rbac_fix_works_when_pasted() {
    for namespace in [preflight::DEFAULT_FLEET_NAMESPACE, "backup-fleet"] {
        let sandbox = Sandbox::new();
        sandbox.load_sample_app().unwrap();
        let cluster = sandbox.start_local().await.unwrap();

        let before = permissions(&cluster, namespace).await;
        assert_eq!(before.status, Status::Fail, "{before:#?}");
        let fix = before.fix.expect("a failed check has a fix");
        let printed = paste(&cluster, &fix).await;
        assert!(
            printed.contains(&format!("namespace/{namespace} created"))
                && printed.contains(
                    "clusterrolebinding.rbac.authorization.k8s.io/stowage-restore created"
                ),
            "{printed}"
        );

        let after = permissions(&cluster, namespace).await;
        assert_eq!(after.status, Status::Pass, "{after:#?}");

        // Pasting it again changes nothing and still succeeds.
        let again = paste(&cluster, &fix).await;
        assert!(
            again.contains("serviceaccount/stowage-snapshot unchanged"),
            "{again}"
        );
    }
}
