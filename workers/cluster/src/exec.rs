//! Running hook commands in pods.
//!
//! Real `pods/exec` is a WebSocket (or SPDY) upgrade streaming stdin/stdout/stderr channels.
//! The sandbox does not implement that protocol. It serves a documented alternative instead:
//!
//! ```text
//! POST /apis/sandbox.stowage.io/v1/namespaces/{namespace}/pods/{pod}/exec
//! {"container": "postgres", "command": ["fsfreeze", "-f", "/data"]}
//! → 200 {"exitCode": 0, "stdout": "", "stderr": ""}
//! ```
//!
//! Nothing actually runs: the pod's annotations script the outcome
//! ([`EXEC_EXIT_CODE_ANNOTATION`], [`EXEC_DELAY_MS_ANNOTATION`], [`EXEC_STDOUT_ANNOTATION`],
//! [`EXEC_STDERR_ANNOTATION`]) and the sandbox records every command it was asked to run
//! ([`crate::Sandbox::exec_log`]), so tests can assert that hooks ran, in order, and exercise
//! failures and timeouts. An unknown pod answers 404 and an unknown container 400, as a real
//! server does.
//!
//! Stages run hooks through the [`PodExec`] port; [`SandboxExec`] is its sandbox
//! implementation. A real-cluster implementation (kube's `ws` feature) is still to come.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use crate::sandbox::store::{
    EXEC_DELAY_MS_ANNOTATION, EXEC_EXIT_CODE_ANNOTATION, EXEC_STDERR_ANNOTATION,
    EXEC_STDOUT_ANNOTATION,
};

/// The API group of the sandbox's exec endpoint. It is not listed in discovery, so collection
/// never sees it.
pub const SANDBOX_EXEC_GROUP: &str = "sandbox.stowage.io";

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

/// A command the sandbox was asked to run, as recorded in its exec log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRecord {
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod.
    pub pod: String,
    /// Container it ran in (the first container when the request named none).
    pub container: Option<String>,
    /// Command and arguments.
    pub command: Vec<String>,
}

/// The body of a sandbox exec request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ExecBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub command: Vec<String>,
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

/// [`PodExec`] against a sandbox cluster, through its exec endpoint.
#[derive(Clone)]
pub struct SandboxExec {
    client: kube::Client,
}

impl SandboxExec {
    /// Runs commands through `client`, which must point at a sandbox.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl PodExec for SandboxExec {
    fn exec<'a>(
        &'a self,
        request: &'a ExecRequest,
    ) -> BoxFuture<'a, Result<ExecOutput, ExecError>> {
        Box::pin(async move {
            let error = |source| ExecError::Api {
                namespace: request.namespace.clone(),
                pod: request.pod.clone(),
                source,
            };
            let body = ExecBody {
                container: request.container.clone(),
                command: request.command.clone(),
            };
            let http_request = http::Request::post(format!(
                "/apis/{SANDBOX_EXEC_GROUP}/v1/namespaces/{}/pods/{}/exec",
                request.namespace, request.pod
            ))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body).expect("plain data serializes"))
            .map_err(|e| error(kube::Error::HttpError(e)))?;
            self.client.request(http_request).await.map_err(error)
        })
    }
}
