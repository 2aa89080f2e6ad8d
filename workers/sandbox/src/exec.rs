//! `pods/exec` the way an API server serves it: a websocket session per command.
//!
//! ```text
//! GET /api/v1/namespaces/{namespace}/pods/{pod}/exec?command=fsfreeze&command=-f&container=postgres&stdout=true&stderr=true
//! Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Protocol: v5.channel.k8s.io, v4.channel.k8s.io
//! → 101 Switching Protocols, Sec-WebSocket-Protocol: v5.channel.k8s.io
//! ```
//!
//! `POST` is accepted too (older clients upgrade with it). The subprotocol is
//! `v5.channel.k8s.io`, else `v4.channel.k8s.io`; the two differ only in what the client may
//! send (v5 adds channel 255, "this stream is closed"), so the server side is the same. Every
//! binary message starts with its channel: on opening, an empty message on the lowest channel
//! the client reads (as the kubelet does); then the standard output on 1, standard error on 2,
//! and a `metav1.Status` on 3 (`{"status":"Success"}`, or `Failure` with reason
//! `NonZeroExitCode` and the exit code as the `ExitCode` cause); then a normal close. Refusals
//! come before the upgrade, as `Status` objects: an unknown pod or namespace 404, an unknown
//! container, a multi-container pod without `container`, no command or no stream 400, a request
//! that is not a websocket upgrade (or offers neither subprotocol) 400. SPDY and terminals
//! (`tty`) are not served, and stdin is read and dropped.
//!
//! Nothing actually runs: the pod's annotations script the outcome
//! ([`EXEC_EXIT_CODE_ANNOTATION`], [`EXEC_DELAY_MS_ANNOTATION`], [`EXEC_STDOUT_ANNOTATION`],
//! [`EXEC_STDERR_ANNOTATION`], [`EXEC_HANG_UP_ANNOTATION`]) and the sandbox records every
//! command a session ran ([`crate::Sandbox::exec_log`]), so tests can assert that hooks ran,
//! in order, and exercise failures, timeouts and lost connections. A client that closes the
//! session during the scripted delay ends it at once ([`crate::Sandbox::open_exec_sessions`]).

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::Sandbox;
use crate::error::ApiError;
use crate::store::ExecScript;
pub use crate::store::{
    EXEC_DELAY_MS_ANNOTATION, EXEC_EXIT_CODE_ANNOTATION, EXEC_HANG_UP_ANNOTATION,
    EXEC_STDERR_ANNOTATION, EXEC_STDOUT_ANNOTATION,
};

/// The websocket subprotocols served, preferred first.
pub const EXEC_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDOUT_CHANNEL: u8 = 1;
const STDERR_CHANNEL: u8 = 2;
const STATUS_CHANNEL: u8 = 3;
/// Output is sent in messages of at most this many bytes.
const MESSAGE_BYTES: usize = 32 * 1024;

/// A command a session ran, as recorded in the sandbox's exec log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRecord {
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod.
    pub pod: String,
    /// The container it ran in (the pod's only container when the request named none).
    pub container: String,
    /// Command and arguments.
    pub command: Vec<String>,
}

/// The query of an exec request (`PodExecOptions`).
struct ExecOptions {
    container: Option<String>,
    command: Vec<String>,
    stdout: bool,
    stderr: bool,
}

impl ExecOptions {
    fn parse(pairs: Vec<(String, String)>) -> Result<Self, ApiError> {
        let mut options = Self {
            container: None,
            command: Vec::new(),
            stdout: false,
            stderr: false,
        };
        let mut stdin = false;
        for (key, value) in pairs {
            let flag = || match value.as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" | "" => Ok(false),
                other => Err(ApiError::bad_request(format!(
                    "invalid value {other:?} for {key}: expected true or false"
                ))),
            };
            match key.as_str() {
                "command" => options.command.push(value),
                "container" => options.container = Some(value).filter(|c| !c.is_empty()),
                "stdout" => options.stdout = flag()?,
                "stderr" => options.stderr = flag()?,
                "stdin" => stdin = flag()?,
                "tty" if flag()? => {
                    return Err(ApiError::bad_request(
                        "the sandbox does not allocate terminals: exec without tty",
                    ));
                }
                _ => {}
            }
        }
        if !(stdin || options.stdout || options.stderr) {
            return Err(ApiError::bad_request(
                "you must specify at least 1 of stdin, stdout, stderr",
            ));
        }
        Ok(options)
    }
}

/// The handler of `/api/v1/namespaces/{namespace}/pods/{pod}/exec`.
pub(crate) async fn serve(
    State(sandbox): State<Sandbox>,
    Path((namespace, pod)): Path<(String, String)>,
    request: Request,
) -> Response {
    match start(sandbox, namespace, pod, request).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(
                code = error.code.as_u16(),
                message = error.message,
                "sandbox exec refused"
            );
            error.into_response()
        }
    }
}

/// Checks the request as an API server does before upgrading, then upgrades.
async fn start(
    sandbox: Sandbox,
    namespace: String,
    pod: String,
    request: Request,
) -> Result<Response, ApiError> {
    let (mut parts, _body) = request.into_parts();
    if parts.method != Method::GET && parts.method != Method::POST {
        return Err(ApiError::method_not_allowed(format!(
            "exec is served on GET and POST, not {}",
            parts.method
        )));
    }
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
        .map_err(|e| ApiError::bad_request(format!("invalid exec query: {e}")))?;
    let options = ExecOptions::parse(pairs)?;
    let (container, script) = sandbox.with_store(|store| {
        store.exec_script(
            &namespace,
            &pod,
            options.container.as_deref(),
            &options.command,
        )
    })?;
    if !is_websocket_upgrade(&parts.headers) {
        return Err(ApiError::bad_request(
            "Upgrade request required: the sandbox serves exec over websockets only \
             (subprotocols v5.channel.k8s.io and v4.channel.k8s.io), not SPDY",
        ));
    }
    // axum's extractor follows RFC 6455 and wants GET; API servers upgrade POST as well.
    parts.method = Method::GET;
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &sandbox)
        .await
        .map_err(|rejection| ApiError::bad_request(rejection.body_text()))?
        .protocols(EXEC_PROTOCOLS);
    if upgrade.selected_protocol().is_none() {
        let offered: Vec<String> = upgrade
            .requested_protocols()
            .map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned())
            .collect();
        return Err(ApiError::bad_request(format!(
            "the sandbox serves exec over the websocket subprotocols {}; the client offered {offered:?}",
            EXEC_PROTOCOLS.join(" and ")
        )));
    }
    let record = ExecRecord {
        namespace,
        pod,
        container,
        command: options.command.clone(),
    };
    Ok(upgrade.on_upgrade(move |socket| session(socket, sandbox, record, script, options)))
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// One command's session: the scripted delay, output, status and close.
async fn session(
    mut socket: WebSocket,
    sandbox: Sandbox,
    record: ExecRecord,
    script: ExecScript,
    options: ExecOptions,
) {
    let _open = sandbox.exec_session_opened();
    sandbox.with_store_mut(|store| store.record_exec(record));
    let first = if options.stdout {
        STDOUT_CHANNEL
    } else if options.stderr {
        STDERR_CHANNEL
    } else {
        STATUS_CHANNEL
    };
    if socket.send(binary(first, b"")).await.is_err() {
        return;
    }
    // The command "runs" for the scripted delay; a client that leaves meanwhile ends it.
    let delay = tokio::time::sleep(Duration::from_millis(script.delay_ms));
    tokio::pin!(delay);
    loop {
        tokio::select! {
            () = &mut delay => break,
            message = socket.recv() => match message {
                None | Some(Err(_) | Ok(Message::Close(_))) => {
                    tracing::debug!("exec session closed by the client before the command ended");
                    return;
                }
                // Stdin data and the v5 "stdin closed" signal: nothing reads them.
                Some(Ok(_)) => {}
            },
        }
    }
    let streams = [
        (options.stdout, STDOUT_CHANNEL, script.stdout.as_bytes()),
        (options.stderr, STDERR_CHANNEL, script.stderr.as_bytes()),
    ];
    for (wanted, channel, output) in streams {
        if !wanted {
            continue;
        }
        for chunk in output.chunks(MESSAGE_BYTES) {
            if socket.send(binary(channel, chunk)).await.is_err() {
                return;
            }
        }
    }
    if script.hang_up {
        // Dropped without a status or a close frame: a lost connection, as the client sees it.
        return;
    }
    let status = exit_status(script.exit_code);
    if socket
        .send(binary(STATUS_CHANNEL, status.to_string().as_bytes()))
        .await
        .is_err()
    {
        return;
    }
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
    // Wait (briefly) for the client's close, so closing the socket does not reset the
    // connection under unread data.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = socket.recv().await {}
    })
    .await;
}

fn binary(channel: u8, data: &[u8]) -> Message {
    let mut message = Vec::with_capacity(data.len() + 1);
    message.push(channel);
    message.extend_from_slice(data);
    Message::Binary(message.into())
}

/// The `Status` the status channel carries for an exit code.
fn exit_status(exit_code: i32) -> serde_json::Value {
    if exit_code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {exit_code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": exit_code.to_string()}]},
        })
    }
}
