//! What a running `stowage worker` shows operators: Prometheus metrics on its health port, logs
//! (JSON or text) that never contain a password or key, and traces: one backup is one trace
//! through every stage, exported to a real OTLP/HTTP receiver. Uses the real RabbitMQ, with a
//! user of its own whose password is a secret the logs are searched for.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use stowage_control::scheduler::scheduled_job_id;
use stowage_disk::{DiskProvider as _, LocalDiskProvider};
use stowage_runtime::{RetryPolicy, Topology};
use stowage_sandbox::Sandbox;
use stowage_schemas::domain::{
    BackupInstance, CalendarPeriod, JobRecord, JobStatus, Namespaces, Redundancy, Scope, Vault,
};
use stowage_schemas::{Stage, samples};
use stowage_tests::{Bus, free_port, http_get, rabbitmqctl};
use stowage_vault::catalog::jobs::read_job;
use stowage_vault::catalog::settings::{WriteMode, write_instance, write_policy, write_vault};
use stowage_vault::store::{BlobStore, LocalDurability};

use crate::helpers::{
    TempDir, ensure_vault_settings, poll, stdout_and_stderr, stowage_at, terminate,
};

/// A vault-transfer job for an instance the workers' vault does not have: it fails at once, and
/// is dead-lettered.
const FAILING_JOB: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../schemas/examples/vault-transfer.json"
);

/// `OTEL_BSP_SCHEDULE_DELAY` (milliseconds) for processes whose spans must wait in the batch
/// exporter until shutdown flushes them: longer than any test.
const HOLD_SPANS: &str = "600000";

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

/// What every test here starts from: the shared broker gate, a topology prefix of its own,
/// fresh secrets, the broker URL, and a folder with `vault` and `disks` for the workers.
struct Setup {
    bus: Bus,
    prefix: String,
    secrets: Secrets,
    amqp_url: String,
    dir: TempDir,
    _user: Option<BrokerUser>,
    // Dropped last: the broker-outage test (outbox) stops RabbitMQ only while no test holds it.
    _gate: tokio::sync::RwLockReadGuard<'static, ()>,
}

impl Setup {
    /// On the tests' RabbitMQ user.
    async fn new(purpose: &str) -> Self {
        Self::start(purpose, None).await
    }

    /// On a RabbitMQ user of the test's own, `<user>-<8 hex digits>`, whose password is one of
    /// the secrets.
    async fn with_own_user(purpose: &str, user: &str) -> Self {
        Self::start(purpose, Some(user)).await
    }

    async fn start(purpose: &str, user: Option<&str>) -> Self {
        let (gate, bus) = stowage_tests::shared_rabbit_bus().await;
        let prefix = bus.names.prefix().to_owned();
        let secrets = Secrets::new();
        let (amqp_url, user) = match user {
            None => (stowage_tests::amqp_url(), None),
            Some(user) => {
                let password = &secrets.amqp_password;
                let user = format!("{user}-{}", &password[2..10]);
                let url = format!("amqp://{user}:{password}@127.0.0.1:5672/%2f");
                (url, Some(BrokerUser::create(&user, password)))
            }
        };
        let dir = TempDir::new(purpose);
        for folder in ["vault", "disks"] {
            std::fs::create_dir_all(dir.path().join(folder)).unwrap();
        }
        Self {
            bus,
            prefix,
            secrets,
            amqp_url,
            dir,
            _user: user,
            _gate: gate,
        }
    }

    /// `stowage worker --stage <stage>` on `amqp_url` and the folder's vault and disks, with
    /// `extra` flags: one attempt per job, the secrets in its environment, the default log
    /// filter of a process outside a pod, queue depths read every second. Not started; with
    /// the free port it serves health and metrics on.
    fn worker_command(&self, amqp_url: &str, stage: &str, extra: &[&str]) -> (Command, u16) {
        ensure_vault_settings(&self.dir.path().join("vault"));
        let port = free_port();
        let health = format!("127.0.0.1:{port}");
        let mut cmd = stowage_at(amqp_url, &self.prefix);
        cmd.args(["worker", "--stage", stage, "--health-addr", &health])
            .args(["--max-attempts", "1", "--vault"])
            .arg(self.dir.path().join("vault"))
            .arg("--disk-root")
            .arg(self.dir.path().join("disks"))
            .args(extra)
            .env("STOWAGE_VAULT_KEY", &self.secrets.vault_key)
            .env("STOWAGE_AZURE_ACCESS_KEY", &self.secrets.azure_key)
            .env("STOWAGE_QUEUE_POLL_SECS", "1")
            .env_remove("STOWAGE_LOG")
            .env_remove("KUBERNETES_SERVICE_HOST");
        (cmd, port)
    }

    /// A vault-transfer worker on `amqp_url` (see [`Setup::worker_command`]) with `env` added,
    /// logging to pipes; and the port it serves health and metrics on.
    fn worker_at(&self, amqp_url: &str, extra: &[&str], env: &[(&str, &str)]) -> (Child, u16) {
        let (mut cmd, port) = self.worker_command(amqp_url, "vault-transfer", extra);
        cmd.envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        (cmd.spawn().expect("start stowage worker"), port)
    }

    /// [`Setup::worker_at`] on the test's broker URL.
    fn worker(&self, extra: &[&str], env: &[(&str, &str)]) -> (Child, u16) {
        self.worker_at(&self.amqp_url, extra, env)
    }

    /// Starts `cmd` with its output in `<folder>/<name>.log`: a long-running process that logs
    /// much would block on a full pipe.
    fn spawn_logged(&self, mut cmd: Command, name: &str) -> Child {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        cmd.stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"))
    }

    /// What `<folder>/<name>.log` holds.
    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// `stowage submit` of [`FAILING_JOB`] on the test's broker.
    fn submit(&self) -> Command {
        let mut cmd = stowage_at(&self.amqp_url, &self.prefix);
        cmd.args(["submit", FAILING_JOB]);
        cmd
    }

    /// Deletes the test's queues and exchanges.
    async fn teardown(self) {
        let topology = Topology::new(self.bus.names.clone(), &RetryPolicy::default());
        self.bus.teardown(&topology).await;
    }
}

fn stop(child: Child) -> String {
    terminate(&child);
    let (stdout, stderr) = stdout_and_stderr(&child.wait_with_output().expect("worker output"));
    format!("{stdout}{stderr}")
}

async fn metrics_until(port: u16, wanted: &str) -> String {
    try_metrics_until(port, wanted)
        .await
        .unwrap_or_else(|why| panic!("{why}"))
}

/// The first scrape of `port`'s /metrics that shows `wanted`, within a minute; else what the
/// last scrape and /readyz (which stages the process on that port runs) showed.
async fn try_metrics_until(port: u16, wanted: &str) -> Result<String, String> {
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
    match scrape {
        Some(body) => Ok(body),
        None => Err(format!(
            "/metrics on port {port} never showed {wanted:?}; /readyz: {:?}; last scrape:\n{last}",
            http_get(port, "/readyz").await
        )),
    }
}

/// Waits until the worker on `port` reports the depth of `stage`'s queue: it is up, and the
/// topology is declared.
async fn serving(port: u16, stage: &str) {
    metrics_until(port, &depth_of(stage)).await;
}

fn depth_of(stage: &str) -> String {
    format!("stowage_queue_depth{{stage=\"{stage}\",queue=\"work\"}}")
}

/// Waits until the vault-transfer worker on `port` has dead-lettered `jobs` jobs; the scrape.
async fn dead_lettered(port: u16, jobs: u32) -> String {
    let count =
        format!("stowage_jobs_total{{stage=\"vault-transfer\",outcome=\"dead_lettered\"}} {jobs}");
    metrics_until(port, &count).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_and_no_secret_reaches_the_logs() {
    let setup = Setup::with_own_user("observability", "stowage-log-test").await;
    let secrets = &setup.secrets;

    // Text logs at trace level for Stowage, and debug for every library.
    let (text_worker, port) = setup.worker(&["-vv", "--log-format", "text"], &[]);
    serving(port, "vault-transfer").await;

    // A job for an instance the vault does not have fails, and is counted.
    let submitted = setup.submit().arg("-v").output().unwrap();
    assert!(
        submitted.status.success(),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let submit_log = String::from_utf8_lossy(&submitted.stderr).into_owned();
    secrets.assert_absent(&submit_log, "`stowage submit -v` output");

    let scrape = dead_lettered(port, 1).await;
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
    let (json_worker, port) = setup.worker(
        &[],
        &[("STOWAGE_LOG_FORMAT", "json"), ("STOWAGE_LOG", "debug")],
    );
    serving(port, "vault-transfer").await;
    assert!(setup.submit().output().unwrap().status.success());
    dead_lettered(port, 1).await;
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
    let refused_url = setup
        .amqp_url
        .replace("@127.0.0.1:5672/", &format!("@127.0.0.1:{closed}/"));
    let (refused, _) = setup.worker_at(&refused_url, &["-vv"], &[("STOWAGE_LOG", "debug")]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused_log = stop(refused);
    assert!(
        refused_log.contains(&format!("127.0.0.1:{closed}")),
        "{refused_log}"
    );
    secrets.assert_absent(&refused_log, "the log of a worker whose broker is down");

    setup.teardown().await;
}

/// Everything at trace level — the worker and `stowage submit`, every library included — and
/// still no password or key: the AMQP libraries' frame-level logs (the login frame carries the
/// password) are capped whatever the filter says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_at_trace_level() {
    let setup = Setup::with_own_user("observability-trace", "stowage-trace-test").await;
    let secrets = &setup.secrets;

    // Trace level is verbose: log to a file, so a full pipe never blocks the worker.
    let (mut cmd, port) = setup.worker_command(&setup.amqp_url, "vault-transfer", &[]);
    cmd.args(["--log-format", "text"])
        .env("STOWAGE_LOG", "trace");
    let traced = setup.spawn_logged(cmd, "worker");
    serving(port, "vault-transfer").await;
    let submitted = setup
        .submit()
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
    dead_lettered(port, 1).await;
    terminate(&traced);
    let status = traced.wait_with_output().expect("worker exits").status;
    assert!(status.success(), "{status}");
    let log = setup.log("worker");
    assert!(
        log.contains("DEBUG lapin"),
        "the worker logged with every library at trace (lapin's frame-level lines capped):\n{}",
        &log[..log.len().min(4000)]
    );
    secrets.assert_absent(&log, "the worker's log at trace level");

    setup.teardown().await;
}

/// One span a receiver got, with the `service.name` of the process that sent it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    /// Its attributes, values as text.
    attributes: Vec<(String, String)>,
}

impl ReceivedSpan {
    /// The value of attribute `key`, as text.
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether it starts its trace (no parent).
    fn is_root(&self) -> bool {
        self.parent_span_id.iter().all(|b| *b == 0)
    }
}

/// An OTLP attribute value as text.
fn attribute_text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
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
                            .map(|a| attribute_text(a.value.as_ref()))
                            .unwrap_or_default();
                        for scope in resource.scope_spans {
                            for span in scope.spans {
                                let attributes = span
                                    .attributes
                                    .iter()
                                    .map(|a| (a.key.clone(), attribute_text(a.value.as_ref())))
                                    .collect();
                                sink.lock().unwrap().push(ReceivedSpan {
                                    service: service.clone(),
                                    name: span.name,
                                    trace_id: span.trace_id,
                                    span_id: span.span_id,
                                    parent_span_id: span.parent_span_id,
                                    attributes,
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
    let setup = Setup::new("otlp-down").await;
    let unreachable = format!("http://127.0.0.1:{}", free_port());

    let (traced, port) = setup.worker(
        &["--otlp-endpoint", &unreachable, "--log-format", "text"],
        &[],
    );
    serving(port, "vault-transfer").await;
    for endpoint in [unreachable.as_str(), "not a url"] {
        let submitted = setup
            .submit()
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .output()
            .unwrap();
        let (_, err) = stdout_and_stderr(&submitted);
        assert!(submitted.status.success(), "endpoint {endpoint:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    dead_lettered(port, 2).await;
    let log = stop(traced);
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("worker stopped"), "{log}");
    setup.teardown().await;
}

/// Spans reach a real OTLP/HTTP receiver: `stowage submit`'s span and the worker's job span
/// are one trace, the job a child of the submit, and the worker, which holds its spans until
/// then, flushes them on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_as_one_trace_from_the_submitter() {
    let setup = Setup::new("otlp-export").await;
    let receiver = OtlpReceiver::start().await;

    let (traced, port) = setup.worker(
        &["--otlp-endpoint", &receiver.endpoint()],
        &[("OTEL_BSP_SCHEDULE_DELAY", HOLD_SPANS)],
    );
    serving(port, "vault-transfer").await;
    let submitted = setup
        .submit()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .output()
        .unwrap();
    assert!(
        submitted.status.success(),
        "{}",
        stdout_and_stderr(&submitted).1
    );
    dead_lettered(port, 1).await;
    let early = receiver.spans();
    assert!(
        early.iter().all(|s| s.service == "stowage"),
        "only the submitter, which has exited, sent spans before SIGTERM: {early:#?}"
    );
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
    setup.teardown().await;
}

const MIB: u64 = 1 << 20;

/// The stages of a backup, in order; each runs in a worker process of its own.
const BACKUP_STAGES: [&str; 3] = ["snapshot", "vault-transfer", "geo-replication"];

/// A geo-redundant vault (copy in `secondary`) with two instances of the sample app, each
/// vaulting the first backup of its day: `shop`, whose daily slot is twelve hours after `slot`
/// (so only `backup now` backs it up), and `blog`, whose daily slot is `slot`.
async fn backup_catalog(store: &BlobStore, secondary: &Path, slot: Timestamp) {
    let vault = Vault {
        redundancy: Redundancy::Geo {
            secondary_location: secondary.display().to_string(),
            secondary_region: "paired".into(),
        },
        ..samples::vault("main", "local")
    };
    write_vault(store, &vault, WriteMode::Create).await.unwrap();
    let later = slot.checked_add(SignedDuration::from_hours(12)).unwrap();
    for (instance, policy, start) in [("shop", "later", later), ("blog", "due", slot)] {
        let start = start.to_zoned(TimeZone::UTC);
        let start = Time::constant(start.hour(), start.minute(), 0, 0);
        let policy =
            samples::policy_every(policy, 24, start, "UTC", 7, &[(CalendarPeriod::Day, 30)]);
        write_policy(store, &policy, WriteMode::Create)
            .await
            .unwrap();
        let instance = BackupInstance {
            name: instance.into(),
            cluster: "sandbox".into(),
            vault: vault.name.clone(),
            policy: policy.name,
            scope: Scope {
                namespaces: Namespaces::List {
                    names: vec![instance.into()],
                },
                ..Scope::default()
            },
            snapshot_location: "local".into(),
            hooks: Vec::new(),
        };
        write_instance(store, &instance, WriteMode::Create)
            .await
            .unwrap();
    }
}

/// Waits until job `id`'s record shows geo-replication succeeded; fails with the record and the
/// processes' logs if a stage failed or a minute passed.
async fn replicated(setup: &Setup, store: &BlobStore, id: &str) {
    let mut last: Option<JobRecord> = None;
    let settled = poll(
        Duration::from_secs(60),
        Duration::from_millis(200),
        async || {
            let record = read_job(store, id).await.ok()?.0;
            let geo = record.stage(Stage::GeoReplication).map(|run| run.status);
            let failed = record.status() == JobStatus::Failed;
            last = Some(record);
            (failed || geo == Some(JobStatus::Succeeded)).then_some(geo)
        },
    )
    .await;
    if settled != Some(Some(JobStatus::Succeeded)) {
        let logs: String = ["scheduler"]
            .iter()
            .chain(&BACKUP_STAGES)
            .map(|name| format!("--- {name}:\n{}\n", setup.log(name)))
            .collect();
        panic!("job {id} was not replicated: {last:#?}\n{logs}");
    }
}

/// The span `child` names as its parent.
fn parent_of<'a>(spans: &'a [ReceivedSpan], child: &ReceivedSpan) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|s| s.trace_id == child.trace_id && s.span_id == child.parent_span_id)
        .unwrap_or_else(|| {
            panic!(
                "the parent of {:?} ({}) never arrived: {spans:#?}",
                child.name, child.service
            )
        })
}

/// Follows backup job `job_id`'s parent links up from its geo-replication span: each hop must
/// be the job span of the stage before, sent by that stage's worker, up to the span that
/// published the `job.snapshot`, which is returned. Every span of the job is in that one trace.
fn backup_trace<'a>(spans: &'a [ReceivedSpan], job_id: &str) -> &'a ReceivedSpan {
    let of_job: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.attribute("job_id") == Some(job_id))
        .collect();
    let mut span = *of_job
        .iter()
        .find(|s| s.name == "geo-replication event.rp.vaulted")
        .unwrap_or_else(|| panic!("no geo-replication span of job {job_id}: {spans:#?}"));
    assert_eq!(span.service, "stowage-geo-replication");
    for (service, name) in [
        ("stowage-vault-transfer", "vault-transfer event.rp.created"),
        ("stowage-snapshot", "snapshot job.snapshot"),
        ("stowage", "publish job.snapshot"),
    ] {
        let parent = parent_of(spans, span);
        assert_eq!(
            (
                parent.service.as_str(),
                parent.name.as_str(),
                parent.attribute("job_id")
            ),
            (service, name, Some(job_id)),
            "the parent of {:?} ({})",
            span.name,
            span.service
        );
        span = parent;
    }
    for s in of_job {
        assert_eq!(
            s.trace_id, span.trace_id,
            "{:?} ({}) of job {job_id} is in another trace",
            s.name, s.service
        );
    }
    span
}

/// One backup is one trace, however it starts: `stowage backup now`, and `stowage scheduler`
/// with a slot due, each start a backup that runs through snapshot, vault-transfer and
/// geo-replication workers (a process per stage), all exporting to a real OTLP/HTTP receiver.
/// Following the parent links: each stage's job span is a child of the job span that emitted
/// its event, the snapshot's a child of the span that published the job, and that one a child
/// of `backup now`, or the root of the scheduler's trace. The workers and the scheduler hold
/// their spans until SIGTERM flushes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_is_one_trace_through_every_stage_from_backup_now_or_the_scheduler() {
    let setup = Setup::new("otlp-backup").await;
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let dir = setup.dir.path();
    let vault = dir.join("vault");
    let secondary = dir.join("secondary");
    let store = BlobStore::local_folder(&vault, LocalDurability::OsBuffered).unwrap();
    // `blog`'s slot is this minute, so the scheduler backs it up at its first tick.
    let slot = Timestamp::from_second(Timestamp::now().as_second() / 60 * 60).unwrap();
    backup_catalog(&store, &secondary, slot).await;
    // Workers never create a secondary folder (an unmounted volume must not be replaced).
    std::fs::create_dir_all(&secondary).unwrap();
    let disks = LocalDiskProvider::open(dir.join("disks")).unwrap();
    for disk in ["shop-data", "blog-data"] {
        let info = disks.create_disk(disk, 4 * MIB).await.unwrap();
        disks
            .write(&info.id, MIB, &vec![0x5a; MIB as usize])
            .await
            .unwrap();
    }
    let cluster = Sandbox::sample_local().await.unwrap();

    let secondary_flag = secondary.display().to_string();
    let kubeconfigs = cluster
        .write_kubeconfigs(&dir.join("kubeconfigs"))
        .expect("kubeconfigs written");
    let kubeconfig = kubeconfigs[stowage_sandbox::ADMIN].display().to_string();
    let flags = [
        "--secondary",
        &secondary_flag,
        "--kubeconfig",
        &kubeconfig,
        "--cluster-name",
        "sandbox",
        "--otlp-endpoint",
        &endpoint,
    ];
    let mut processes = Vec::new();
    let mut ports = Vec::new();
    for stage in BACKUP_STAGES {
        let (mut cmd, port) = setup.worker_command(&setup.amqp_url, stage, &flags);
        cmd.env("OTEL_BSP_SCHEDULE_DELAY", HOLD_SPANS);
        processes.push((stage, setup.spawn_logged(cmd, stage)));
        ports.push(port);
    }
    for (stage, port) in BACKUP_STAGES.into_iter().zip(ports) {
        if let Err(why) = try_metrics_until(port, &depth_of(stage)).await {
            panic!(
                "the {stage} worker is not serving: {why}\nits log:\n{}",
                setup.log(stage)
            );
        }
    }
    let mut scheduler = stowage_at(&setup.amqp_url, &setup.prefix);
    scheduler
        .args(["scheduler", "--tick-seconds", "1", "--identity", "traced"])
        .args(["--health-addr", "127.0.0.1:0", "--otlp-endpoint", &endpoint])
        .arg("--vault")
        .arg(&vault)
        .env("OTEL_BSP_SCHEDULE_DELAY", HOLD_SPANS)
        .env_remove("STOWAGE_LOG");
    processes.push(("scheduler", setup.spawn_logged(scheduler, "scheduler")));

    let out = stowage_at(&setup.amqp_url, &setup.prefix)
        .args(["backup", "now", "shop", "--otlp-endpoint", &endpoint])
        .arg("--vault")
        .arg(&vault)
        .output()
        .unwrap();
    let (stdout, stderr) = stdout_and_stderr(&out);
    assert!(out.status.success(), "{stderr}");
    let on_demand = stdout.trim().to_owned();
    let scheduled = scheduled_job_id("blog", slot);
    for job in [&on_demand, &scheduled] {
        replicated(&setup, &store, job).await;
    }

    // Only `backup now`, which has exited, has sent its spans yet.
    let early = receiver.spans();
    assert!(
        early.iter().all(|s| s.service == "stowage"
            && (s.name == "backup now" || s.attribute("job_id") == Some(on_demand.as_str()))),
        "the workers and the scheduler hold their spans until SIGTERM, yet these arrived: {early:#?}"
    );
    for (_, process) in &processes {
        terminate(process);
    }
    for (name, mut process) in processes {
        let status = process.wait().unwrap();
        assert!(
            status.success(),
            "{name} exited with {status}:\n{}",
            setup.log(name)
        );
    }

    let spans = receiver.spans();
    let published = backup_trace(&spans, &on_demand);
    let backup_now = parent_of(&spans, published);
    assert_eq!(
        (
            backup_now.service.as_str(),
            backup_now.name.as_str(),
            backup_now.attribute("instance")
        ),
        ("stowage", "backup now", Some("shop")),
        "the on-demand job is published inside `backup now`"
    );
    assert!(
        backup_now.is_root(),
        "`backup now` starts the trace: {backup_now:#?}"
    );
    let published = backup_trace(&spans, &scheduled);
    assert!(
        published.is_root(),
        "the scheduler's publish starts the trace of its backup: {published:#?}"
    );
    assert_ne!(
        published.trace_id, backup_now.trace_id,
        "two backups, two traces"
    );
    setup.teardown().await;
}
