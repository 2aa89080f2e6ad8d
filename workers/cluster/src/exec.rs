//! Running hook commands in pods through the API server's `pods/exec` subresource.
//!
//! [`PodExec`] speaks the protocol `kubectl exec` speaks: a websocket upgrade of
//! `GET /api/v1/namespaces/{ns}/pods/{pod}/exec?command=…&container=…&stdout=true&stderr=true`
//! with the subprotocol `v5.channel.k8s.io` (or `v4.channel.k8s.io` from an older server),
//! through kube's `ws` feature ([`kube::api::AttachedProcess`]). Every binary message starts
//! with a channel byte: 1 is the command's standard output, 2 its standard error, and 3 a
//! `metav1.Status` saying how it ended (`Success`, or `Failure` with reason
//! `NonZeroExitCode` and the exit code as the `ExitCode` cause).
//!
//! - **Bounded output**: each of stdout and stderr keeps at most [`OUTPUT_LIMIT`] bytes; the
//!   rest is read and dropped (the session must keep flowing) and the output says it was
//!   truncated.
//! - **Timeout**: every request carries one; when it passes, the session is dropped, which
//!   closes the websocket (the server stops streaming), and the error names the pod, the
//!   container, the command and the timeout.
//! - **Errors sorted by whether a retry can help**: an unknown pod or container, a refused
//!   permission or a server that cannot upgrade are permanent; a connection that fails or ends
//!   before the exit status arrives, or a 5xx/429, is transient ([`ExecError::is_transient`]).
//!
//! A command that ran and failed is not an error: it is an [`ExecOutput`] with a non-zero
//! exit code.

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes of standard output, and separately of standard error, kept from one command.
pub const OUTPUT_LIMIT: usize = 64 * 1024;

/// The pod annotation naming the container `kubectl exec` picks when none is given.
const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// A command to run in a pod's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod.
    pub pod: String,
    /// Container to run in; none: the one `kubectl exec` would pick (the pod's
    /// `kubectl.kubernetes.io/default-container` annotation, else its first container).
    pub container: Option<String>,
    /// Command and arguments (exec, no shell).
    pub command: Vec<String>,
    /// How long the command may take, connecting included; then the session is closed.
    pub timeout: Duration,
}

impl ExecRequest {
    /// `command \`a b\` in pod ns/pod (container c)`, naming the container once it is known.
    fn describe(&self, container: Option<&str>) -> String {
        let container = container.or(self.container.as_deref()).map_or_else(
            || "its default container".to_owned(),
            |c| format!("container {c}"),
        );
        format!(
            "command `{}` in pod {}/{} ({container})",
            self.command.join(" "),
            self.namespace,
            self.pod
        )
    }
}

impl fmt::Display for ExecRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(None))
    }
}

/// How a command ended, with what it printed (each stream cut at [`OUTPUT_LIMIT`] bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The container the command ran in.
    pub container: String,
    /// Exit status; 0 is success.
    pub exit_code: i32,
    /// Standard output (invalid UTF-8 replaced), at most [`OUTPUT_LIMIT`] bytes of it.
    pub stdout: String,
    /// Whether the command printed more standard output than was kept.
    pub stdout_truncated: bool,
    /// Standard error (invalid UTF-8 replaced), at most [`OUTPUT_LIMIT`] bytes of it.
    pub stderr: String,
    /// Whether the command printed more standard error than was kept.
    pub stderr_truncated: bool,
}

/// Why a command could not be run, or did not say how it ended.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The API server refused the session: no such pod or container, no permission, or no
    /// websocket upgrade. Permanent.
    #[error("{target}: the API server refused to run it: {source}; {fix}")]
    Refused {
        /// The command, pod and container.
        target: String,
        /// What to change.
        fix: String,
        /// What the client reported.
        #[source]
        source: kube::Error,
    },
    /// The API server could not be reached, answered 5xx/429, or the session ended before the
    /// exit status arrived. Transient: a retry may work.
    #[error(
        "{target}: the exec session failed before the command reported how it ended ({detail}); \
         a retry may work"
    )]
    ConnectionLost {
        /// The command, pod and container.
        target: String,
        /// What went wrong.
        detail: String,
    },
    /// The server reported a failure that is not an exit code (the command could not be
    /// started, say). Permanent.
    #[error("{target} could not run: {message}")]
    Failed {
        /// The command, pod and container.
        target: String,
        /// The server's message.
        message: String,
    },
    /// The command did not finish within the request's timeout; the session was closed.
    #[error("{target} did not finish within its timeout of {}s; the exec session was closed", timeout.as_secs_f64())]
    TimedOut {
        /// The command, pod and container.
        target: String,
        /// The timeout that passed.
        timeout: Duration,
    },
}

impl ExecError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::ConnectionLost { .. })
    }
}

/// Runs commands in pods through a cluster's `pods/exec` websocket (see the module doc).
#[derive(Clone)]
pub struct PodExec {
    client: kube::Client,
}

impl PodExec {
    /// Runs commands through `client`'s API server, with its credentials.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    /// Runs `request` and waits for it to finish, at most `request.timeout`.
    pub async fn exec(&self, request: &ExecRequest) -> Result<ExecOutput, ExecError> {
        match tokio::time::timeout(request.timeout, self.run(request)).await {
            Ok(result) => result,
            // Dropping `run` dropped the attached process, which aborts its task and closes
            // the websocket.
            Err(_) => Err(ExecError::TimedOut {
                target: request.to_string(),
                timeout: request.timeout,
            }),
        }
    }

    async fn run(&self, request: &ExecRequest) -> Result<ExecOutput, ExecError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &request.namespace);
        let container = match &request.container {
            Some(container) => container.clone(),
            None => default_container(&pods, request).await?,
        };
        let target = request.describe(Some(&container));
        let params = AttachParams::default()
            .container(container.clone())
            .stdin(false)
            .stdout(true)
            .stderr(true);
        let mut attached = pods
            .exec(&request.pod, request.command.clone(), &params)
            .await
            .map_err(|e| classify(&target, request, e))?;
        let (Some(stdout), Some(stderr), Some(status)) =
            (attached.stdout(), attached.stderr(), attached.take_status())
        else {
            unreachable!("stdout and stderr were asked for and the status is taken once");
        };
        // Both streams are drained while waiting for the status: kube's session task blocks
        // on a full stream buffer, so an unread stream would stall it.
        let reading = futures::future::join(
            read_capped(stdout, OUTPUT_LIMIT),
            read_capped(stderr, OUTPUT_LIMIT),
        );
        tokio::pin!(reading, status);
        let mut outputs = None;
        let status = tokio::select! {
            status = &mut status => status,
            read = &mut reading => {
                outputs = Some(read);
                status.await
            }
        };
        let Some(status) = status else {
            // The session ended without a status; its streams may never see an end either.
            let detail = match attached.join().await {
                Err(error) => format!("the session broke: {error}"),
                Ok(()) => "the server closed the session without an exit status".to_owned(),
            };
            return Err(ExecError::ConnectionLost { target, detail });
        };
        // After the status the session shuts both streams, so their reads end.
        let ((stdout, stdout_truncated), (stderr, stderr_truncated)) = match outputs {
            Some(read) => read,
            None => reading.await,
        };
        let _ = attached.join().await;
        let exit_code = exit_code(&status).map_err(|message| ExecError::Failed {
            target: target.clone(),
            message,
        })?;
        Ok(ExecOutput {
            container,
            exit_code,
            stdout,
            stdout_truncated,
            stderr,
            stderr_truncated,
        })
    }
}

/// The container `kubectl exec` picks when none is named.
async fn default_container(pods: &Api<Pod>, request: &ExecRequest) -> Result<String, ExecError> {
    let pod = pods
        .get(&request.pod)
        .await
        .map_err(|e| classify(&request.to_string(), request, e))?;
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION))
        .cloned();
    let first = pod
        .spec
        .and_then(|spec| spec.containers.into_iter().next())
        .map(|c| c.name);
    annotated.or(first).ok_or_else(|| ExecError::Failed {
        target: request.to_string(),
        message: "the pod has no containers".to_owned(),
    })
}

/// Reads `reader` to its end, keeping the first `limit` bytes: `(text, truncated)`.
async fn read_capped(mut reader: impl AsyncRead + Unpin, limit: usize) -> (String, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0; 8 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    (String::from_utf8_lossy(&kept).into_owned(), truncated)
}

/// The exit code a status channel's `Status` reports, or the server's message when it reports
/// something else.
fn exit_code(status: &Status) -> Result<i32, String> {
    match status.status.as_deref() {
        Some("Success") => return Ok(0),
        Some("Failure") if status.reason.as_deref() == Some("NonZeroExitCode") => {
            let code = status
                .details
                .as_ref()
                .and_then(|d| d.causes.as_ref())
                .and_then(|causes| {
                    causes
                        .iter()
                        .find(|c| c.reason.as_deref() == Some("ExitCode"))
                })
                .and_then(|cause| cause.message.as_deref())
                .and_then(|message| message.trim().parse().ok());
            if let Some(code) = code {
                return Ok(code);
            }
        }
        _ => {}
    }
    Err(match (&status.message, &status.reason) {
        (Some(message), _) if !message.is_empty() => message.clone(),
        (_, Some(reason)) => format!("status {reason} with no exit code"),
        _ => format!("an unexpected status {status:?}"),
    })
}

/// Sorts a client error from starting a session into refused (with the fix) or lost.
fn classify(target: &str, request: &ExecRequest, source: kube::Error) -> ExecError {
    let refused = |fix: String, source| ExecError::Refused {
        target: target.to_owned(),
        fix,
        source,
    };
    match &source {
        kube::Error::Api(status) if status.code >= 500 || status.code == 429 => {
            ExecError::ConnectionLost {
                target: target.to_owned(),
                detail: source.to_string(),
            }
        }
        kube::Error::Api(status) => {
            let fix = match status.code {
                404 => format!(
                    "the pod (or namespace {}) does not exist; check the hook's namespace and \
                     label selector",
                    request.namespace
                ),
                400 => "check the hook's container: it must name one of the pod's containers"
                    .to_owned(),
                401 | 403 => format!(
                    "grant the worker's identity `create` and `get` on `pods/exec` in namespace \
                     {} (a Role like the snapshot role in infra/k8s/base/rbac.yaml)",
                    request.namespace
                ),
                _ => "check the request the message describes".to_owned(),
            };
            refused(fix, source)
        }
        kube::Error::UpgradeConnection(
            kube::client::UpgradeConnectionError::GetPendingUpgrade(_),
        ) => ExecError::ConnectionLost {
            target: target.to_owned(),
            detail: source.to_string(),
        },
        kube::Error::UpgradeConnection(_) => refused(
            "the API server (or a proxy in front of it) did not accept a websocket exec session \
             (v5.channel.k8s.io or v4.channel.k8s.io); make sure nothing between the worker and \
             the API server strips websocket upgrades"
                .to_owned(),
            source,
        ),
        kube::Error::BuildRequest(_) | kube::Error::HttpError(_) | kube::Error::SerdeError(_) => {
            refused(
                "check the hook's command, pod and container".to_owned(),
                source,
            )
        }
        _ => ExecError::ConnectionLost {
            target: target.to_owned(),
            detail: source.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(value: serde_json::Value) -> Status {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_status_channel_gives_the_exit_code() {
        assert_eq!(
            exit_code(&status(serde_json::json!({"status": "Success"}))),
            Ok(0)
        );
        let failed = status(serde_json::json!({
            "status": "Failure", "reason": "NonZeroExitCode",
            "message": "command terminated with non-zero exit code: exit status 3",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
        }));
        assert_eq!(exit_code(&failed), Ok(3));
        let internal = status(serde_json::json!({
            "status": "Failure", "reason": "InternalError",
            "message": "executable file not found in $PATH",
        }));
        assert_eq!(
            exit_code(&internal),
            Err("executable file not found in $PATH".to_owned())
        );
    }

    #[tokio::test]
    async fn output_beyond_the_limit_is_dropped_and_flagged() {
        let (text, truncated) = read_capped(&[b'a'; 10][..], 4).await;
        assert_eq!((text.as_str(), truncated), ("aaaa", true));
        let (text, truncated) = read_capped(&b"abcd"[..], 4).await;
        assert_eq!((text.as_str(), truncated), ("abcd", false));
    }

    #[test]
    fn errors_say_whether_a_retry_helps() {
        let request = ExecRequest {
            namespace: "shop".into(),
            pod: "db-0".into(),
            container: None,
            command: vec!["sync".into()],
            timeout: Duration::from_secs(1),
        };
        let api = |code: u16| {
            kube::Error::Api(Box::new(
                serde_json::from_value(serde_json::json!({
                    "status": "Failure", "code": code, "reason": "x", "message": "m",
                }))
                .unwrap(),
            ))
        };
        for (code, transient) in [
            (404, false),
            (400, false),
            (403, false),
            (503, true),
            (429, true),
        ] {
            let error = classify("t", &request, api(code));
            assert_eq!(error.is_transient(), transient, "{code}: {error}");
        }
        let timed_out = ExecError::TimedOut {
            target: request.to_string(),
            timeout: request.timeout,
        };
        assert!(!timed_out.is_transient());
        assert_eq!(
            timed_out.to_string(),
            "command `sync` in pod shop/db-0 (its default container) did not finish within its \
             timeout of 1s; the exec session was closed"
        );
    }
}
