//! Hook commands in the sandbox: a documented JSON endpoint instead of the WebSocket protocol.
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
//! server does. [`SandboxExec`] is the [`PodExec`] implementation that calls it.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use stowage_cluster::{ExecError, ExecOutput, ExecRequest, PodExec};

pub use crate::store::{
    EXEC_DELAY_MS_ANNOTATION, EXEC_EXIT_CODE_ANNOTATION, EXEC_STDERR_ANNOTATION,
    EXEC_STDOUT_ANNOTATION,
};

/// The API group of the sandbox's exec endpoint. It is not listed in discovery, so collection
/// never sees it.
pub const SANDBOX_EXEC_GROUP: &str = "sandbox.stowage.io";

/// A command the sandbox was asked to run, as recorded in its exec log: the request, with the
/// container it ran in (the pod's first container when the request named none).
pub type ExecRecord = ExecRequest;

/// The body of a sandbox exec request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ExecBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub command: Vec<String>,
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
