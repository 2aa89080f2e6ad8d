//! `pods/exec` over websockets: Stowage's own client (`stowage_cluster::PodExec`, kube's
//! `Api::exec`), a bare v4-only websocket client, and `kubectl exec`, all against the sandbox's
//! scripted pods.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use stowage_cluster::{ExecError, ExecRequest, OUTPUT_LIMIT, PodExec};
use stowage_sandbox::SandboxHandle;
use stowage_sandbox::exec::{
    EXEC_DELAY_MS_ANNOTATION, EXEC_EXIT_CODE_ANNOTATION, EXEC_HANG_UP_ANNOTATION,
    EXEC_STDERR_ANNOTATION, EXEC_STDOUT_ANNOTATION,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::harness::sample_cluster;

fn request(namespace: &str, pod: &str, container: Option<&str>, command: &[&str]) -> ExecRequest {
    ExecRequest {
        namespace: namespace.into(),
        pod: pod.into(),
        container: container.map(Into::into),
        command: command.iter().map(|c| c.to_string()).collect(),
        timeout: Duration::from_secs(10),
    }
}

async fn annotate(cluster: &SandboxHandle, namespace: &str, pod: &str, annotations: Value) {
    let pods: Api<Pod> = Api::namespaced(cluster.client(), namespace);
    pods.patch(
        pod,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_command_that_succeeds_reports_its_output_and_exit_code_zero() {
    let cluster = sample_cluster().await;
    annotate(
        &cluster,
        "shop",
        "db-0",
        json!({EXEC_STDOUT_ANNOTATION: "frozen /data\n", EXEC_STDERR_ANNOTATION: "a warning\n"}),
    )
    .await;
    let exec = PodExec::new(cluster.client());
    let output = exec
        .exec(&request("shop", "db-0", None, &["fsfreeze", "-f", "/data"]))
        .await
        .unwrap();
    assert_eq!(output.exit_code, 0);
    assert_eq!(output.container, "postgres", "the pod's only container");
    assert_eq!(output.stdout, "frozen /data\n");
    assert_eq!(output.stderr, "a warning\n");
    assert!(!output.stdout_truncated && !output.stderr_truncated);

    let log = cluster.sandbox().exec_log();
    assert_eq!(log.len(), 1);
    assert_eq!(
        (
            log[0].namespace.as_str(),
            log[0].pod.as_str(),
            log[0].container.as_str()
        ),
        ("shop", "db-0", "postgres")
    );
    assert_eq!(log[0].command, ["fsfreeze", "-f", "/data"]);
    sessions_close_within(&cluster, Duration::from_secs(3)).await;
}

/// Waits until the sandbox has no exec session open, failing after `limit`.
async fn sessions_close_within(cluster: &SandboxHandle, limit: Duration) {
    let deadline = Instant::now() + limit;
    while cluster.sandbox().open_exec_sessions() > 0 {
        assert!(
            Instant::now() < deadline,
            "the sandbox still has an exec session open after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_non_zero_exit_comes_from_the_status_channel() {
    let cluster = sample_cluster().await;
    annotate(
        &cluster,
        "shop",
        "web-7d9f",
        json!({EXEC_EXIT_CODE_ANNOTATION: "3", EXEC_STDERR_ANNOTATION: "frozen already"}),
    )
    .await;
    let output = PodExec::new(cluster.client())
        .exec(&request(
            "shop",
            "web-7d9f",
            Some("web"),
            &["fsfreeze", "-f", "/"],
        ))
        .await
        .unwrap();
    assert_eq!(
        (
            output.exit_code,
            output.stderr.as_str(),
            output.container.as_str()
        ),
        (3, "frozen already", "web")
    );
}

#[tokio::test]
async fn a_command_past_its_timeout_fails_and_closes_the_session() {
    let cluster = sample_cluster().await;
    annotate(
        &cluster,
        "shop",
        "db-0",
        json!({EXEC_DELAY_MS_ANNOTATION: "8000"}),
    )
    .await;
    let mut slow = request("shop", "db-0", Some("postgres"), &["sync"]);
    slow.timeout = Duration::from_millis(400);
    let started = Instant::now();
    let error = PodExec::new(cluster.client())
        .exec(&slow)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout cut the wait"
    );
    assert!(matches!(error, ExecError::TimedOut { .. }), "{error:?}");
    assert!(!error.is_transient());
    let text = error.to_string();
    for part in [
        "`sync`",
        "shop/db-0",
        "container postgres",
        "timeout of 0.4s",
    ] {
        assert!(text.contains(part), "{part} in: {text}");
    }
    // The session ran (it is logged) and was closed by the client long before its 8 s.
    assert_eq!(cluster.sandbox().exec_log().len(), 1);
    assert!(started.elapsed() < Duration::from_secs(3));
    sessions_close_within(&cluster, Duration::from_secs(3)).await;
}

#[tokio::test]
async fn output_past_the_limit_is_cut_and_flagged() {
    let cluster = sample_cluster().await;
    let long = "x".repeat(OUTPUT_LIMIT + 40_000);
    annotate(
        &cluster,
        "shop",
        "db-0",
        json!({EXEC_STDOUT_ANNOTATION: long, EXEC_STDERR_ANNOTATION: "short"}),
    )
    .await;
    let output = PodExec::new(cluster.client())
        .exec(&request("shop", "db-0", None, &["cat", "/var/log/big"]))
        .await
        .unwrap();
    assert_eq!(output.exit_code, 0);
    assert_eq!(output.stdout.len(), OUTPUT_LIMIT);
    assert!(output.stdout_truncated);
    assert_eq!(
        (output.stderr.as_str(), output.stderr_truncated),
        ("short", false)
    );
}

#[tokio::test]
async fn unknown_pods_and_containers_are_refused_for_good_and_a_lost_session_is_transient() {
    let cluster = sample_cluster().await;
    let exec = PodExec::new(cluster.client());
    let refused_code = |error: &ExecError| match error {
        ExecError::Refused {
            source: kube::Error::Api(status),
            ..
        } => status.code,
        other => panic!("expected a refusal, got {other:?}"),
    };

    let no_pod = exec
        .exec(&request("shop", "nope", Some("main"), &["true"]))
        .await
        .unwrap_err();
    assert_eq!(refused_code(&no_pod), 404);
    assert!(!no_pod.is_transient());
    assert!(no_pod.to_string().contains("shop/nope"), "{no_pod}");

    let no_pod_default_container = exec
        .exec(&request("shop", "nope", None, &["true"]))
        .await
        .unwrap_err();
    assert_eq!(refused_code(&no_pod_default_container), 404);

    let no_container = exec
        .exec(&request("shop", "db-0", Some("sidecar"), &["true"]))
        .await
        .unwrap_err();
    assert_eq!(refused_code(&no_container), 400);
    let text = no_container.to_string();
    assert!(
        text.contains("container sidecar") && text.contains("hook's container"),
        "names the container and the fix: {text}"
    );

    annotate(
        &cluster,
        "blog",
        "mysql-0",
        json!({EXEC_HANG_UP_ANNOTATION: "true", EXEC_STDOUT_ANNOTATION: "partial"}),
    )
    .await;
    let lost = exec
        .exec(&request(
            "blog",
            "mysql-0",
            None,
            &["mysqladmin", "flush-tables"],
        ))
        .await
        .unwrap_err();
    assert!(matches!(lost, ExecError::ConnectionLost { .. }), "{lost:?}");
    assert!(lost.is_transient());
    assert!(lost.to_string().contains("blog/mysql-0"), "{lost}");

    // Refused requests never became sessions; the lost one ran.
    assert_eq!(cluster.sandbox().exec_log().len(), 1);
}

/// An upgrade request for `pods/exec` offering `protocols`, sent through the sandbox's own
/// client (so it carries whatever credentials that client has).
async fn upgrade(
    cluster: &SandboxHandle,
    method: http::Method,
    path: &str,
    protocols: Option<&str>,
) -> http::Response<kube::client::Body> {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "websocket")
        .header(http::header::SEC_WEBSOCKET_VERSION, "13")
        .header(
            http::header::SEC_WEBSOCKET_KEY,
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        );
    if let Some(protocols) = protocols {
        builder = builder.header(http::header::SEC_WEBSOCKET_PROTOCOL, protocols);
    }
    cluster
        .client()
        .send(builder.body(kube::client::Body::empty()).unwrap())
        .await
        .unwrap()
}

fn protocol(response: &http::Response<kube::client::Body>) -> Option<&str> {
    response
        .headers()
        .get(http::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn v5_is_preferred_and_a_v4_only_client_gets_v4() {
    let cluster = sample_cluster().await;
    annotate(
        &cluster,
        "shop",
        "db-0",
        json!({EXEC_STDOUT_ANNOTATION: "hello", EXEC_EXIT_CODE_ANNOTATION: "7"}),
    )
    .await;
    let path =
        "/api/v1/namespaces/shop/pods/db-0/exec?command=echo&command=hello&stdout=1&stderr=1";

    let both = upgrade(
        &cluster,
        http::Method::GET,
        path,
        Some("v5.channel.k8s.io, v4.channel.k8s.io"),
    )
    .await;
    assert_eq!(both.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(protocol(&both), Some("v5.channel.k8s.io"));
    drop(both);

    // A v4-only client, upgrading with POST as older clients do, reads the channels itself.
    let v4 = upgrade(
        &cluster,
        http::Method::POST,
        path,
        Some("v4.channel.k8s.io"),
    )
    .await;
    assert_eq!(v4.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(protocol(&v4), Some("v4.channel.k8s.io"));
    let upgraded = hyper::upgrade::on(v4).await.unwrap();
    let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        Role::Client,
        None,
    )
    .await;
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut closed = false;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("the sandbox answers within 5 s")
    {
        let message = match message {
            Ok(message) => message,
            // Once the close handshake is done the connection may end without TLS close_notify.
            Err(_) if closed => break,
            Err(error) => panic!("the session failed before its close frame: {error}"),
        };
        match message {
            Message::Binary(data) => frames.push(data.to_vec()),
            Message::Close(frame) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(1000));
                closed = true;
            }
            other => panic!("unexpected message {other:?}"),
        }
    }
    assert!(closed, "the session ends with a normal close");
    assert_eq!(frames[0], [1], "an empty stdout message opens the session");
    assert_eq!(frames[1], b"\x01hello");
    assert_eq!(frames.len(), 3, "{frames:?}");
    assert_eq!(frames[2][0], 3, "then the status channel");
    let status: Value = serde_json::from_slice(&frames[2][1..]).unwrap();
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(
        status["details"]["causes"],
        json!([{"reason": "ExitCode", "message": "7"}])
    );

    // Neither subprotocol, or no upgrade at all: refused before any session, as 400 Status.
    let old = upgrade(&cluster, http::Method::GET, path, Some("v3.channel.k8s.io")).await;
    assert_eq!(old.status(), http::StatusCode::BAD_REQUEST);
    let plain = cluster
        .client()
        .send(
            http::Request::get(path)
                .body(kube::client::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(plain.status(), http::StatusCode::BAD_REQUEST);
    assert_eq!(cluster.sandbox().exec_log().len(), 2, "two sessions ran");
}

/// `kubectl` with the arguments that reach `cluster` (the one place that builds them).
fn kubectl(cluster: &SandboxHandle) -> Command {
    let mut command = Command::new("kubectl");
    command
        .arg(format!(
            "--kubeconfig={}",
            crate::harness::admin_kubeconfig(cluster).display()
        ))
        // No kubeconfig of the machine's user may leak in (contexts, credentials, a namespace).
        .env("KUBECONFIG", "/dev/null")
        .arg("--request-timeout=10s");
    command
}

fn run(mut command: Command) -> Output {
    command.output().unwrap_or_else(|e| {
        panic!(
            "kubectl could not be run ({e}); install it (Debian: apt-get install kubernetes-client) \
             — this test checks that a standard client can exec in the sandbox's pods"
        )
    })
}

#[tokio::test]
async fn kubectl_exec_prints_the_output_and_returns_the_exit_code() {
    let cluster = sample_cluster().await;
    annotate(
        &cluster,
        "shop",
        "db-0",
        json!({EXEC_STDOUT_ANNOTATION: "frozen /data\n"}),
    )
    .await;
    annotate(
        &cluster,
        "shop",
        "web-7d9f",
        json!({EXEC_EXIT_CODE_ANNOTATION: "3", EXEC_STDERR_ANNOTATION: "device busy\n"}),
    )
    .await;
    let mut ok = kubectl(&cluster);
    ok.args([
        "exec", "-n", "shop", "db-0", "--", "fsfreeze", "-f", "/data",
    ]);
    let mut failing = kubectl(&cluster);
    failing.args([
        "exec", "-n", "shop", "web-7d9f", "-c", "web", "--", "fsfreeze", "-f", "/",
    ]);
    // kubectl blocks; the sandbox keeps serving on the test's runtime meanwhile.
    let (ok, failing) = tokio::task::spawn_blocking(move || (run(ok), run(failing)))
        .await
        .unwrap();

    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "kubectl exec failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "frozen /data\n");

    let stderr = String::from_utf8_lossy(&failing.stderr);
    assert_eq!(
        failing.status.code(),
        Some(3),
        "kubectl's exit code; stderr: {stderr}"
    );
    assert!(stderr.contains("device busy"), "{stderr}");
    assert!(stderr.contains("exit code 3"), "{stderr}");

    // Both ran as sessions (kubectl would fall back to SPDY, which the sandbox refuses, if the
    // websocket upgrade had failed).
    let log = cluster.sandbox().exec_log();
    let ran: Vec<(&str, &str, Vec<String>)> = log
        .iter()
        .map(|r| (r.pod.as_str(), r.container.as_str(), r.command.clone()))
        .collect();
    assert_eq!(
        ran,
        [
            (
                "db-0",
                "postgres",
                vec!["fsfreeze".into(), "-f".into(), "/data".into()]
            ),
            (
                "web-7d9f",
                "web",
                vec!["fsfreeze".into(), "-f".into(), "/".into()]
            ),
        ]
    );
}
