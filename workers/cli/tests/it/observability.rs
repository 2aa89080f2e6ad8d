//! What a running `stowage worker` shows operators: Prometheus metrics on its health port, and
//! logs (JSON or text) that never contain a password or key. Uses the real RabbitMQ, with a user
//! of its own whose password is a secret the logs are searched for.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use stowage_runtime::{RetryPolicy, Topology};
use stowage_tests::{BrokerKind, Bus, free_port, http_get, rabbitmqctl};

use crate::helpers::{
    TempDir, poll, stdout_and_stderr, stowage_at, terminate, vault_transfer_worker,
};

/// A RabbitMQ user that exists for one test.
struct BrokerUser {
    name: String,
}

impl BrokerUser {
    fn create(name: &str, password: &str) -> Self {
        for args in [
            vec!["add_user", name, password],
            vec!["set_permissions", "-p", "/", name, ".*", ".*", ".*"],
        ] {
            rabbitmqctl(&args);
        }
        Self { name: name.into() }
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .output();
    }
}

struct Secrets {
    amqp_password: String,
    vault_key: String,
    azure_key: String,
}

impl Secrets {
    fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            amqp_password: format!("pw{id}"),
            vault_key: format!("{id}{id}"),
            azure_key: format!("QUJD{id}REVG"),
        }
    }

    fn assert_absent(&self, output: &str, what: &str) {
        // The AMQP login frame, if logged, shows the password as a list of decimal bytes.
        let bytes: Vec<String> = self.amqp_password.bytes().map(|b| b.to_string()).collect();
        let as_bytes = bytes.join(", ");
        let as_bytes_tight = bytes.join(",");
        for (name, secret) in [
            ("the AMQP password", &self.amqp_password),
            ("the AMQP password as decimal bytes", &as_bytes),
            ("the AMQP password as decimal bytes", &as_bytes_tight),
            ("the vault key", &self.vault_key),
            ("the vault key (upper case)", &self.vault_key.to_uppercase()),
            ("the Azure access key", &self.azure_key),
        ] {
            assert!(
                !output.contains(secret.as_str()),
                "{name} appears in {what}:\n{output}"
            );
        }
    }
}

/// What the test's workers share: the secrets, the topology prefix and the folder.
struct Fleet<'a> {
    secrets: &'a Secrets,
    prefix: &'a str,
    dir: &'a Path,
}

impl Fleet<'_> {
    /// A vault-transfer worker on `amqp_url` with `extra` flags and `env`, logging to pipes;
    /// and the free port it serves health and metrics on.
    fn worker(&self, amqp_url: &str, extra: &[&str], env: &[(&str, &str)]) -> (Child, u16) {
        let port = free_port();
        let mut cmd = vault_transfer_worker(amqp_url, self.prefix, self.dir, port);
        cmd.args(["--max-attempts", "1"])
            .args(extra)
            .env("STOWAGE_VAULT_KEY", &self.secrets.vault_key)
            .env("STOWAGE_AZURE_ACCESS_KEY", &self.secrets.azure_key)
            .env_remove("STOWAGE_LOG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        (cmd.spawn().expect("start stowage worker"), port)
    }
}

fn stop(child: Child) -> String {
    terminate(&child);
    let (stdout, stderr) = stdout_and_stderr(&child.wait_with_output().expect("worker output"));
    format!("{stdout}{stderr}")
}

async fn metrics_until(port: u16, wanted: &str) -> String {
    let mut last = String::new();
    let scrape = poll(
        Duration::from_secs(60),
        Duration::from_millis(200),
        async || match http_get(port, "/metrics").await {
            Some((200, body)) if body.contains(wanted) => Some(body),
            Some((200, body)) => {
                last = body;
                None
            }
            _ => None,
        },
    )
    .await;
    scrape.unwrap_or_else(|| panic!("/metrics never showed {wanted:?}; last scrape:\n{last}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_and_no_secret_reaches_the_logs() {
    // The broker-outage test (outbox) stops RabbitMQ only while no test holds this.
    let _gate = stowage_tests::shared_broker().await;
    let bus = Bus::new(BrokerKind::Rabbit).await;
    let prefix = bus.names.prefix().to_owned();
    let secrets = Secrets::new();
    let user = format!("stowage-log-test-{}", &secrets.amqp_password[2..10]);
    let _user = BrokerUser::create(&user, &secrets.amqp_password);
    let amqp_url = format!("amqp://{user}:{}@127.0.0.1:5672/%2f", secrets.amqp_password);
    let dir = TempDir::new("observability");
    std::fs::create_dir_all(dir.path().join("vault")).unwrap();
    std::fs::create_dir_all(dir.path().join("disks")).unwrap();

    // Text logs at trace level for Stowage, and debug for every library.
    let fleet = Fleet {
        secrets: &secrets,
        prefix: &prefix,
        dir: dir.path(),
    };
    let (text_worker, port) = fleet.worker(
        &amqp_url,
        &["-vv", "--log-format", "text"],
        &[("STOWAGE_QUEUE_POLL_SECS", "1")],
    );
    metrics_until(
        port,
        "stowage_queue_depth{stage=\"vault-transfer\",queue=\"work\"}",
    )
    .await;

    // A job for an instance the vault does not have fails, and is counted.
    let job = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../schemas/examples/vault-transfer.json"
    );
    let submitted = stowage_at(&amqp_url, &prefix)
        .args(["submit", job, "-v"])
        .output()
        .unwrap();
    assert!(
        submitted.status.success(),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let submit_log = String::from_utf8_lossy(&submitted.stderr).into_owned();
    secrets.assert_absent(&submit_log, "`stowage submit -v` output");

    let scrape = metrics_until(
        port,
        "stowage_jobs_total{stage=\"vault-transfer\",outcome=\"dead_lettered\"} 1",
    )
    .await;
    for wanted in [
        "# TYPE stowage_job_duration_seconds histogram",
        "stowage_job_duration_seconds_count{stage=\"vault-transfer\",outcome=\"dead_lettered\"} 1",
        "stowage_dead_letters_total{stage=\"vault-transfer\"} 1",
        "stowage_jobs_in_flight{stage=\"vault-transfer\"} 0",
        "stowage_queue_wait_seconds_count{stage=\"vault-transfer\"} 1",
        "# TYPE stowage_geo_replication_lag_seconds histogram",
        "# TYPE stowage_bytes_total counter",
    ] {
        assert!(scrape.contains(wanted), "missing {wanted:?} in:\n{scrape}");
    }
    let dead = metrics_until(
        port,
        "stowage_queue_depth{stage=\"vault-transfer\",queue=\"dead_letter\"} 1",
    )
    .await;
    assert!(dead.contains("stowage_queue_oldest_message_age_seconds{stage=\"vault-transfer\"} 0"));

    let text_log = stop(text_worker);
    assert!(
        text_log.contains("job failed") && text_log.contains("connected to RabbitMQ"),
        "the text log shows the connection and the failure:\n{text_log}"
    );
    assert!(
        text_log.contains("amqp://127.0.0.1:5672"),
        "the broker is named, without credentials:\n{text_log}"
    );
    secrets.assert_absent(&text_log, "the text log");

    // JSON logs, every library at debug: one JSON object per line.
    let (json_worker, port) = fleet.worker(
        &amqp_url,
        &[],
        &[("STOWAGE_LOG_FORMAT", "json"), ("STOWAGE_LOG", "debug")],
    );
    metrics_until(port, "stowage_jobs_in_flight").await;
    let submitted = stowage_at(&amqp_url, &prefix)
        .args(["submit", job])
        .output()
        .unwrap();
    assert!(submitted.status.success());
    metrics_until(
        port,
        "stowage_jobs_total{stage=\"vault-transfer\",outcome=\"dead_lettered\"} 1",
    )
    .await;
    let json_log = stop(json_worker);
    let mut lines = 0;
    for line in json_log.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            value.get("level").is_some() && value.get("timestamp").is_some(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines > 3, "the JSON log has content:\n{json_log}");
    assert!(
        json_log.contains("\"job_id\":\"vault-transfer-rp-2026-11-22-0300\""),
        "{json_log}"
    );
    secrets.assert_absent(&json_log, "the JSON log");

    // A broker that refuses the connection is named, redacted, in the error.
    let closed = free_port();
    let refused_url = format!(
        "amqp://{user}:{}@127.0.0.1:{closed}/%2f",
        secrets.amqp_password
    );
    let (refused, _) = fleet.worker(&refused_url, &["-vv"], &[("STOWAGE_LOG", "debug")]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused_log = stop(refused);
    assert!(
        refused_log.contains(&format!("127.0.0.1:{closed}")),
        "{refused_log}"
    );
    secrets.assert_absent(&refused_log, "the log of a worker whose broker is down");

    bus.teardown(&Topology::new(bus.names.clone(), &RetryPolicy::default()))
        .await;
}

/// Everything at trace level — the worker and `stowage submit`, every library included — and
/// still no password or key: the AMQP libraries' frame-level logs (the login frame carries the
/// password) are capped whatever the filter says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_at_trace_level() {
    // The outbox test stops the broker; hold the gate it waits for.
    let _gate = stowage_tests::shared_broker().await;
    let bus = Bus::new(BrokerKind::Rabbit).await;
    let prefix = bus.names.prefix().to_owned();
    let secrets = Secrets::new();
    let user = format!("stowage-trace-test-{}", &secrets.amqp_password[2..10]);
    let _user = BrokerUser::create(&user, &secrets.amqp_password);
    let amqp_url = format!("amqp://{user}:{}@127.0.0.1:5672/%2f", secrets.amqp_password);
    let dir = TempDir::new("observability-trace");
    std::fs::create_dir_all(dir.path().join("vault")).unwrap();
    std::fs::create_dir_all(dir.path().join("disks")).unwrap();

    // Trace level is verbose: log to a file, so a full pipe never blocks the worker.
    let log_path = dir.path().join("worker.log");
    let port = free_port();
    let traced = vault_transfer_worker(&amqp_url, &prefix, dir.path(), port)
        .args(["--max-attempts", "1", "--log-format", "text"])
        .env("STOWAGE_VAULT_KEY", &secrets.vault_key)
        .env("STOWAGE_LOG", "trace")
        .env("STOWAGE_QUEUE_POLL_SECS", "1")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(std::fs::File::create(dir.path().join("worker.out")).unwrap())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("start stowage worker");
    metrics_until(
        port,
        "stowage_queue_depth{stage=\"vault-transfer\",queue=\"work\"}",
    )
    .await;
    let job = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../schemas/examples/vault-transfer.json"
    );
    let submitted = stowage_at(&amqp_url, &prefix)
        .args(["submit", job])
        .env("STOWAGE_LOG", "trace")
        .env("STOWAGE_VAULT_KEY", &secrets.vault_key)
        .output()
        .unwrap();
    let (submit_out, submit_err) = stdout_and_stderr(&submitted);
    assert!(submitted.status.success(), "{submit_err}");
    assert!(
        submit_err.contains("DEBUG lapin"),
        "the submit log has lapin's own lines:\n{submit_err}"
    );
    secrets.assert_absent(
        &format!("{submit_out}{submit_err}"),
        "`stowage submit` at trace level",
    );
    metrics_until(
        port,
        "stowage_jobs_total{stage=\"vault-transfer\",outcome=\"dead_lettered\"} 1",
    )
    .await;
    terminate(&traced);
    let status = traced.wait_with_output().expect("worker exits").status;
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(&log_path).unwrap()
        + &std::fs::read_to_string(dir.path().join("worker.out")).unwrap();
    assert!(
        log.contains("DEBUG lapin"),
        "the worker logged with every library at trace (lapin's frame-level lines capped):\n{}",
        &log[..log.len().min(4000)]
    );
    secrets.assert_absent(&log, "the worker's log at trace level");

    bus.teardown(&Topology::new(bus.names.clone(), &RetryPolicy::default()))
        .await;
}

/// One span a receiver got, with the `service.name` of the process that sent it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

/// A small OTLP/HTTP receiver on 127.0.0.1: decodes every `POST /v1/traces` as an
/// `ExportTraceServiceRequest` with the official protobuf definitions.
struct OtlpReceiver {
    port: u16,
    spans: std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>,
}

impl OtlpReceiver {
    async fn start() -> Self {
        use opentelemetry_proto::tonic::collector::trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
        };
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        use prost::Message as _;

        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body)
                        .expect("an OTLP/HTTP protobuf export");
                    for resource in request.resource_spans {
                        let service = resource
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|a| a.key == "service.name")
                            .and_then(|a| a.value.as_ref()?.value.as_ref())
                            .map(|v| match v {
                                Value::StringValue(s) => s.clone(),
                                other => format!("{other:?}"),
                            })
                            .unwrap_or_default();
                        for scope in resource.scope_spans {
                            for span in scope.spans {
                                sink.lock().unwrap().push(ReceivedSpan {
                                    service: service.clone(),
                                    name: span.name,
                                    trace_id: span.trace_id,
                                    span_id: span.span_id,
                                    parent_span_id: span.parent_span_id,
                                });
                            }
                        }
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { port, spans }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }
}

/// Setting an OTLP endpoint — unreachable or not even a URL — costs spans, never the process:
/// the worker and `stowage submit` start, work and stop cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otlp_endpoint_never_takes_a_process_down() {
    // The outbox test stops the broker; hold the gate it waits for.
    let _gate = stowage_tests::shared_broker().await;
    let bus = Bus::new(BrokerKind::Rabbit).await;
    let prefix = bus.names.prefix().to_owned();
    let secrets = Secrets::new();
    let amqp_url = stowage_tests::amqp_url();
    let dir = TempDir::new("otlp-down");
    std::fs::create_dir_all(dir.path().join("vault")).unwrap();
    std::fs::create_dir_all(dir.path().join("disks")).unwrap();
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let job = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../schemas/examples/vault-transfer.json"
    );

    let fleet = Fleet {
        secrets: &secrets,
        prefix: &prefix,
        dir: dir.path(),
    };
    let (traced, port) = fleet.worker(
        &amqp_url,
        &["--otlp-endpoint", &unreachable, "--log-format", "text"],
        &[("STOWAGE_QUEUE_POLL_SECS", "1")],
    );
    metrics_until(
        port,
        "stowage_queue_depth{stage=\"vault-transfer\",queue=\"work\"}",
    )
    .await;
    for endpoint in [unreachable.as_str(), "not a url"] {
        let submitted = stowage_at(&amqp_url, &prefix)
            .args(["submit", job])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .output()
            .unwrap();
        let (_, err) = stdout_and_stderr(&submitted);
        assert!(submitted.status.success(), "endpoint {endpoint:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    metrics_until(
        port,
        "stowage_jobs_total{stage=\"vault-transfer\",outcome=\"dead_lettered\"} 2",
    )
    .await;
    let log = stop(traced);
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("worker stopped"), "{log}");
    bus.teardown(&Topology::new(bus.names.clone(), &RetryPolicy::default()))
        .await;
}

/// Spans reach a real OTLP/HTTP receiver: `stowage submit`'s span and the worker's job span
/// are one trace, the job a child of the submit, and the worker flushes on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_as_one_trace_from_the_submitter() {
    // The outbox test stops the broker; hold the gate it waits for.
    let _gate = stowage_tests::shared_broker().await;
    let bus = Bus::new(BrokerKind::Rabbit).await;
    let prefix = bus.names.prefix().to_owned();
    let secrets = Secrets::new();
    let amqp_url = stowage_tests::amqp_url();
    let dir = TempDir::new("otlp-export");
    std::fs::create_dir_all(dir.path().join("vault")).unwrap();
    std::fs::create_dir_all(dir.path().join("disks")).unwrap();
    let receiver = OtlpReceiver::start().await;
    let job = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../schemas/examples/vault-transfer.json"
    );

    let fleet = Fleet {
        secrets: &secrets,
        prefix: &prefix,
        dir: dir.path(),
    };
    let (traced, port) = fleet.worker(
        &amqp_url,
        &["--otlp-endpoint", &receiver.endpoint()],
        &[("STOWAGE_QUEUE_POLL_SECS", "1")],
    );
    metrics_until(
        port,
        "stowage_queue_depth{stage=\"vault-transfer\",queue=\"work\"}",
    )
    .await;
    let submitted = stowage_at(&amqp_url, &prefix)
        .args(["submit", job])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .output()
        .unwrap();
    assert!(
        submitted.status.success(),
        "{}",
        stdout_and_stderr(&submitted).1
    );
    metrics_until(
        port,
        "stowage_jobs_total{stage=\"vault-transfer\",outcome=\"dead_lettered\"} 1",
    )
    .await;
    // The batch exporter holds the job span; SIGTERM must flush it.
    let log = stop(traced);
    assert!(!log.contains("panicked"), "{log}");

    let spans = receiver.spans();
    let submit = spans
        .iter()
        .find(|s| s.service == "stowage" && s.name == "submit job.vault-transfer")
        .unwrap_or_else(|| panic!("no submit span in {spans:#?}"));
    let job_span = spans
        .iter()
        .find(|s| {
            s.service == "stowage-vault-transfer" && s.name == "vault-transfer job.vault-transfer"
        })
        .unwrap_or_else(|| panic!("no job span in {spans:#?}"));
    assert_eq!(submit.trace_id.len(), 16);
    assert_eq!(job_span.trace_id, submit.trace_id, "one trace");
    assert_eq!(
        job_span.parent_span_id, submit.span_id,
        "the job is a child of the submit"
    );
    bus.teardown(&Topology::new(bus.names.clone(), &RetryPolicy::default()))
        .await;
}
