//! Running hook commands in pods: the [`PodExec`] port.
//!
//! Real `pods/exec` is a WebSocket (or SPDY) upgrade streaming stdin/stdout/stderr channels.
//! Stages run hooks through this port; the sandbox crate implements it over its documented
//! JSON exec endpoint (`stowage_sandbox::SandboxExec`). A real-cluster implementation (kube's
//! `ws` feature) is still to come.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// A command to run in a pod's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod.
    pub pod: String,
    /// Container to run in; none: the pod's first container.
    pub container: Option<String>,
    /// Command and arguments (exec, no shell).
    pub command: Vec<String>,
}

/// What a command reported when it finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecOutput {
    /// Exit status; 0 is success.
    pub exit_code: i32,
    /// Standard output.
    #[serde(default)]
    pub stdout: String,
    /// Standard error.
    #[serde(default)]
    pub stderr: String,
}

/// Why a command could not be run (a command that ran and failed is an [`ExecOutput`] with a
/// non-zero exit code, not an error).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The API refused or failed the request (unknown pod or container, connection lost...).
    #[error("exec in pod {namespace}/{pod} failed: {source}")]
    Api {
        /// Namespace of the pod.
        namespace: String,
        /// Name of the pod.
        pod: String,
        /// What the client reported.
        #[source]
        source: kube::Error,
    },
}

/// The port hooks run through: run one command in one pod and report how it ended.
///
/// Implementations do not enforce a timeout; callers wrap the future in
/// `tokio::time::timeout`, which also works for the sandbox's scripted delays.
pub trait PodExec: Send + Sync {
    /// Runs `request` and waits for it to finish.
    fn exec<'a>(&'a self, request: &'a ExecRequest)
    -> BoxFuture<'a, Result<ExecOutput, ExecError>>;
}
