//! Shared helpers: a running sandbox, with or without the sample application.

use stowage_sandbox::{Sandbox, SandboxHandle};

/// A sandbox holding the sample application, served on 127.0.0.1 and a free port.
pub async fn sample_cluster() -> SandboxHandle {
    Sandbox::sample_local()
        .await
        .expect("the sandbox starts with the sample app")
}

/// An empty sandbox (only the built-in namespaces), served on a free port.
pub async fn empty_cluster() -> SandboxHandle {
    Sandbox::new()
        .start_local()
        .await
        .expect("the sandbox starts")
}

/// The code of a `kube::Error::Api`, or a panic naming what came back instead.
pub fn api_code<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The admin kubeconfig of `cluster` (CA and token of the sandbox's `admin`), written into a new
/// temporary folder: how kubectl and `stowage` processes reach a sandbox in tests.
pub fn admin_kubeconfig(cluster: &SandboxHandle) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "stowage-kubeconfig-{}",
        uuid::Uuid::new_v4().simple()
    ));
    cluster
        .write_kubeconfigs(&dir)
        .expect("kubeconfigs written")
        .remove(stowage_sandbox::ADMIN)
        .expect("an admin kubeconfig")
}
