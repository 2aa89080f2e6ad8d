//! Shared harness for Stowage's cross-stage tests.
//!
//! Every test gets its own topology prefix, so tests run side by side on one RabbitMQ without
//! seeing each other's messages. Tests that stop the broker take [`exclusive_broker`]; all
//! others take [`shared_broker`]. Tests that need RabbitMQ fail — never skip — when it is not
//! reachable, saying how to start it.

pub mod vault_fixture;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stowage_runtime::broker::{Broker, Delivery, Outgoing, Properties};
use stowage_runtime::shutdown::ShutdownTrigger;
use stowage_runtime::topology::{BindingSpec, QueueKind, QueueSpec, Topology};
use stowage_runtime::{
    Health, InProcessBroker, JobContext, Names, Outcome, RabbitBroker, RetryPolicy, Shutdown,
    StageConfig, StageError, StageHandler, Worker, WorkerConfig, WorkerError,
};
use stowage_schemas::events::RpCreated;
use stowage_schemas::jobs::{SnapshotJob, Trigger, VaultTransferJob};
use stowage_schemas::{Envelope, Message, Stage};
use tokio::task::JoinHandle;

/// The RabbitMQ the tests use: `STOWAGE_AMQP_URL`, or the local default.
pub fn amqp_url() -> String {
    std::env::var("STOWAGE_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// An async lock, because it is held across a whole test; it is not poisoned by a failing test.
static BROKER_GATE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Held by tests that only use the broker.
pub async fn shared_broker() -> tokio::sync::RwLockReadGuard<'static, ()> {
    BROKER_GATE.read().await
}

/// Held by tests that stop and start the broker: no other broker test runs meanwhile.
pub async fn exclusive_broker() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    BROKER_GATE.write().await
}

/// A [`Bus`] on the real RabbitMQ for a test that only uses the broker, with [`shared_broker`]
/// held: keep the guard for the whole test, so the broker-outage tests stop RabbitMQ only
/// while no such test runs.
pub async fn shared_rabbit_bus() -> (tokio::sync::RwLockReadGuard<'static, ()>, Bus) {
    let gate = shared_broker().await;
    (gate, Bus::new(BrokerKind::Rabbit).await)
}

/// Which broker a behaviour test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// The real RabbitMQ.
    Rabbit,
    /// The in-process broker.
    InProcess,
}

/// A broker and a private set of names on it.
pub struct Bus {
    /// The broker.
    pub broker: Arc<dyn Broker>,
    /// This test's names.
    pub names: Names,
    /// Which kind it is.
    pub kind: BrokerKind,
}

/// A unique topology prefix for one test.
pub fn unique_prefix() -> String {
    format!(
        "stowage-test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

impl Bus {
    /// A bus of `kind`. For RabbitMQ, fails the test with instructions if it is unreachable.
    pub async fn new(kind: BrokerKind) -> Self {
        let names = Names::new(unique_prefix());
        let broker: Arc<dyn Broker> = match kind {
            BrokerKind::InProcess => Arc::new(InProcessBroker::new()),
            BrokerKind::Rabbit => {
                let broker = RabbitBroker::new(amqp_url());
                if let Err(err) = broker.queue_depth("stowage-test-probe-nonexistent").await
                    && err.is_transient()
                {
                    panic!(
                        "RabbitMQ is not reachable ({err}).\nThese tests need a real broker: run `scripts/test.sh`, \
                         which installs and starts it, or start it with `rabbitmq-server -detached` \
                         (or point STOWAGE_AMQP_URL at one)."
                    );
                }
                Arc::new(broker)
            }
        };
        Self {
            broker,
            names,
            kind,
        }
    }

    /// Declare a queue bound to the pipeline's events (`rp.*`, `restore.*`, `drill.*`), to observe what
    /// stages emit; the runtime's `job.progress` and `job.failed` go to [`Bus::probe_job_events`].
    pub async fn probe_events(&self) -> String {
        self.probe(
            &format!("{}.probe", self.names.prefix()),
            &["rp.#", "restore.#", "drill.#"],
        )
        .await
    }

    /// Declare a queue bound to the runtime's job events (`job.progress`, `job.failed`).
    pub async fn probe_job_events(&self) -> String {
        self.probe(&format!("{}.probe-jobs", self.names.prefix()), &["job.#"])
            .await
    }

    /// Declare classic queue `queue` bound to the events exchange with `keys`.
    async fn probe(&self, queue: &str, keys: &[&str]) -> String {
        let queue = queue.to_owned();
        let mut topology = Topology {
            names: self.names.clone(),
            exchanges: Vec::new(),
            queues: Vec::new(),
            bindings: Vec::new(),
        };
        topology
            .exchanges
            .push(stowage_runtime::topology::ExchangeSpec {
                name: self.names.events_exchange(),
                kind: stowage_runtime::topology::ExchangeKind::Topic,
            });
        topology.queues.push(QueueSpec {
            name: queue.clone(),
            kind: QueueKind::Classic,
            dead_letter: None,
            delivery_limit: None,
            message_ttl: None,
        });
        for key in keys {
            topology.bindings.push(BindingSpec {
                exchange: self.names.events_exchange(),
                queue: queue.clone(),
                routing_key: (*key).into(),
            });
        }
        self.broker
            .declare(&topology)
            .await
            .expect("declare the probe queue");
        queue
    }

    /// Take everything currently in `queue`, acking it.
    pub async fn drain(&self, queue: &str) -> Vec<Delivery> {
        let mut out = Vec::new();
        while let Some(d) = self.broker.get(queue).await.expect("basic.get") {
            d.ack().await.expect("ack");
            out.push(d);
        }
        out
    }

    /// Publish `body` as is to the snapshot stage, as `content_type` with message id `id`: what
    /// a producer that bypasses Stowage's client might send.
    pub async fn publish_raw(&self, body: Vec<u8>, content_type: &str, id: &str) {
        let message = Outgoing {
            exchange: self.names.jobs_exchange(),
            routing_key: Names::job_routing_key(Stage::Snapshot, Some(TEST_CLUSTER)),
            mandatory: true,
            properties: Properties {
                content_type: Some(content_type.into()),
                message_id: Some(id.into()),
                ..Properties::default()
            },
            body,
        };
        self.broker.publish(message).await.expect("publish");
    }

    /// [`snapshot_job`] `id` as JSON, changed by `edit`, published raw (message id `id`).
    pub async fn publish_json(&self, id: &str, edit: impl FnOnce(&mut serde_json::Value)) {
        let mut job = serde_json::to_value(snapshot_job(id)).expect("json");
        edit(&mut job);
        let body = serde_json::to_vec(&job).expect("json");
        self.publish_raw(body, "application/json", id).await;
    }

    /// The snapshot queue of [`TEST_CLUSTER`], where the tests' snapshot jobs wait.
    pub fn snapshot_queue(&self) -> String {
        self.names.cluster_queue(Stage::Snapshot, TEST_CLUSTER)
    }

    /// Depth of a queue.
    pub async fn depth(&self, queue: &str) -> u32 {
        self.broker.queue_depth(queue).await.expect("queue depth")
    }

    /// Declare the topology of the default retry policy on this bus's names; returns it for
    /// [`Bus::teardown`].
    pub async fn declare_topology(&self) -> Topology {
        let mut topology = Topology::new(self.names.clone(), &RetryPolicy::default());
        topology.add_cluster(&RetryPolicy::default(), TEST_CLUSTER);
        self.broker.declare(&topology).await.expect("declare");
        topology
    }

    /// The default worker configuration, on this bus's names.
    pub fn worker_config(&self) -> WorkerConfig {
        WorkerConfig {
            names: self.names.clone(),
            cluster: Some(TEST_CLUSTER.into()),
            ..WorkerConfig::default()
        }
    }

    /// Take the next message from `queue` and ack it; `what` says what the test expected there.
    pub async fn take(&self, queue: &str, what: &str) -> Delivery {
        let got = self
            .broker
            .get(queue)
            .await
            .expect("get")
            .unwrap_or_else(|| panic!("{what}: nothing in {queue}"));
        got.ack().await.expect("ack");
        got
    }

    /// Wait until `queue` holds exactly `depth` messages, or panic after `within`.
    pub async fn wait_depth(&self, queue: &str, depth: u32, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let now = self.depth(queue).await;
            if now == depth {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "queue {queue} has {now} messages, expected {depth}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Delete the topology a worker with `retry` declares on this bus (see [`Bus::teardown`]).
    pub async fn teardown_worker(&self, retry: RetryPolicy) {
        let config = WorkerConfig {
            retry,
            ..self.worker_config()
        };
        self.teardown(&config.topology()).await;
    }

    /// Delete this test's queues and exchanges from RabbitMQ (nothing to do in-process).
    pub async fn teardown(&self, topology: &Topology) {
        if self.kind != BrokerKind::Rabbit {
            return;
        }
        let Ok(conn) =
            lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await
        else {
            return;
        };
        let Ok(channel) = conn.create_channel().await else {
            return;
        };
        let probe = format!("{}.probe", self.names.prefix());
        let probe_jobs = format!("{}.probe-jobs", self.names.prefix());
        for q in topology
            .queues
            .iter()
            .map(|q| q.name.as_str())
            .chain([probe.as_str(), probe_jobs.as_str()])
        {
            let _ = channel
                .queue_delete(q.into(), lapin::options::QueueDeleteOptions::default())
                .await;
        }
        for e in &topology.exchanges {
            let _ = channel
                .exchange_delete(
                    e.name.as_str().into(),
                    lapin::options::ExchangeDeleteOptions::default(),
                )
                .await;
        }
        let _ = conn.close(200, "bye".into()).await;
    }
}

/// A fresh folder under the system temp dir, `stowage-<name>-<uuid>`.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("stowage-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Poll `cond` every 20 ms until it holds, or panic after `within`.
pub async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Quick retries (200 ms growing to 5 s, five attempts), so retry tests finish in seconds.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(5),
        delivery_limit: 10,
    }
}

/// A worker running as a task: one scripted snapshot stage (prefetch 4, concurrency 2) from
/// [`RunningWorker::start`], or any stages from [`RunningWorker::spawn`].
pub struct RunningWorker {
    trigger: ShutdownTrigger,
    task: JoinHandle<Result<(), WorkerError>>,
    /// The worker's health.
    pub health: Health,
}

impl RunningWorker {
    /// Start a worker with `config` on `bus` and wait (up to `within`) until it is ready.
    pub async fn start(
        bus: &Bus,
        config: WorkerConfig,
        handler: ScriptedHandler,
        within: Duration,
    ) -> Self {
        let stage = StageConfig {
            prefetch: 4,
            concurrency: 2,
        };
        Self::spawn(
            Worker::new(bus.broker.clone(), config).stage(handler, stage),
            within,
        )
        .await
    }

    /// Run `worker` as a task and wait (up to `within`) until it is ready.
    pub async fn spawn(worker: Worker, within: Duration) -> Self {
        let health = worker.health();
        let (trigger, shutdown) = Shutdown::new();
        let task = tokio::spawn(worker.run(shutdown));
        wait_until("the worker is ready", within, || health.is_ready()).await;
        Self {
            trigger,
            task,
            health,
        }
    }

    /// Trigger shutdown and wait (up to `within`) for the worker to stop cleanly.
    pub async fn stop(self, within: Duration) {
        self.trigger.trigger();
        tokio::time::timeout(within, self.task)
            .await
            .expect("worker stops in time")
            .expect("join")
            .expect("worker result");
    }
}

/// The cluster the tests' snapshot workers serve and their snapshot jobs name.
pub const TEST_CLUSTER: &str = "test-cluster";

/// A snapshot job for `job_id`, with a recovery point named after it, for [`TEST_CLUSTER`].
pub fn snapshot_job(job_id: &str) -> Envelope {
    Envelope::new(
        job_id,
        Message::Snapshot(SnapshotJob {
            instance: "test-instance".into(),
            recovery_point_id: format!("rp-{job_id}"),
            trigger: Trigger::OnDemand {
                requested_by: Some("tests".into()),
            },
        }),
    )
    .on_cluster(TEST_CLUSTER)
}

/// `StageHandler` for a snapshot-stage test handler with an inherent
/// `run(&self, &JobContext, &Envelope) -> Result<(), StageError>`: on success it emits `rp.created`
/// for the job's recovery point.
macro_rules! snapshot_handler {
    ($handler:ty) => {
        impl StageHandler for $handler {
            type Input = Message;

            fn stage(&self) -> Stage {
                Stage::Snapshot
            }

            async fn handle(&self, ctx: JobContext, _: Message) -> Result<Outcome, StageError> {
                let envelope = ctx.envelope().expect("a worker's context").clone();
                self.run(&ctx, &envelope).await?;
                Ok(Outcome::done().emit(rp_created(&envelope)))
            }
        }
    };
}

/// A vault-transfer job `job_id` for recovery point `rp_id` of `instance`.
pub fn vault_transfer_job(job_id: &str, instance: &str, rp_id: &str) -> Envelope {
    Envelope::new(
        job_id,
        Message::VaultTransfer(VaultTransferJob {
            instance: instance.into(),
            recovery_point_id: rp_id.into(),
        }),
    )
}

/// What the scripted handler does with a job.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Succeed at once.
    Succeed,
    /// Fail transiently this many times, then succeed.
    FailTransiently(u32),
    /// Fail permanently with this reason.
    FailPermanently(String),
    /// Sleep, then succeed.
    Slow(Duration),
    /// Report progress `reports` times (`bytes_done` = 1, 2, … of `reports`), `every` apart,
    /// then succeed.
    Progress {
        /// How many reports.
        reports: u64,
        /// The pause after each.
        every: Duration,
    },
}

/// One call of the scripted handler.
#[derive(Debug, Clone)]
pub struct Call {
    /// The job.
    pub job_id: String,
    /// The envelope's attempt number.
    pub attempt: u32,
    /// When the call started.
    pub at: Instant,
    /// Whether the broker flagged it redelivered.
    pub redelivered: bool,
}

/// A snapshot-stage handler whose behaviour per job the test scripts, and which records every
/// call. On success it emits `rp.created` for the job's recovery point.
#[derive(Clone, Default)]
pub struct ScriptedHandler {
    script: Arc<Mutex<HashMap<String, Behavior>>>,
    calls: Arc<Mutex<Vec<Call>>>,
    failures: Arc<Mutex<HashMap<String, u32>>>,
}

impl ScriptedHandler {
    /// Script a job.
    pub fn set(&self, job_id: &str, behavior: Behavior) {
        self.script
            .lock()
            .unwrap()
            .insert(job_id.to_owned(), behavior);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Calls for one job.
    pub fn calls_for(&self, job_id: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.job_id == job_id)
            .collect()
    }

    /// Wait until `job_id` has been called `n` times, or panic after `timeout`.
    pub async fn wait_calls(&self, job_id: &str, n: usize, timeout: Duration) -> Vec<Call> {
        let deadline = Instant::now() + timeout;
        loop {
            let calls = self.calls_for(job_id);
            if calls.len() >= n {
                return calls;
            }
            assert!(
                Instant::now() < deadline,
                "job {job_id}: {} calls after {timeout:?}, expected {n}",
                calls.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The scripted effect of one call.
    async fn run(&self, ctx: &JobContext, envelope: &Envelope) -> Result<(), StageError> {
        let job_id = envelope.job_id.as_str();
        self.calls.lock().unwrap().push(Call {
            job_id: job_id.to_owned(),
            attempt: ctx.attempt,
            at: Instant::now(),
            redelivered: ctx.redelivered,
        });
        let behavior = self
            .script
            .lock()
            .unwrap()
            .get(job_id)
            .cloned()
            .unwrap_or(Behavior::Succeed);
        match behavior {
            Behavior::Succeed => {}
            Behavior::Slow(d) => tokio::time::sleep(d).await,
            Behavior::Progress { reports, every } => {
                for done in 1..=reports {
                    ctx.report_progress(stowage_schemas::domain::JobProgress {
                        bytes_done: done,
                        bytes_total: Some(reports),
                        items_done: 0,
                        items_total: None,
                    });
                    tokio::time::sleep(every).await;
                }
            }
            Behavior::FailPermanently(reason) => return Err(StageError::permanent(reason)),
            Behavior::FailTransiently(n) => {
                let mut failures = self.failures.lock().unwrap();
                let count = failures.entry(job_id.to_owned()).or_default();
                if *count < n {
                    *count += 1;
                    return Err(StageError::transient(format!(
                        "simulated outage {count} of {n}"
                    )));
                }
            }
        }
        Ok(())
    }
}

snapshot_handler!(ScriptedHandler);

/// The `rp.created` event a snapshot of `envelope`'s job emits.
pub fn rp_created(envelope: &Envelope) -> Message {
    let Message::Snapshot(job) = &envelope.message else {
        panic!("expected a snapshot job, got {}", envelope.kind());
    };
    Message::RpCreated(RpCreated {
        instance: job.instance.clone(),
        recovery_point_id: job.recovery_point_id.clone(),
        created_at: envelope.created_at,
        resource_count: 0,
        volume_count: 0,
        volume_bytes: 0,
        warnings: Vec::new(),
    })
}

/// A snapshot-stage handler for the process-level fault tests: its effect is a file per job,
/// created once and reused on redelivery, and it logs every call to a file.
pub struct FileEffectHandler {
    /// Where effects and the call log live.
    pub dir: PathBuf,
    /// How long each job takes (so a test can kill or stop the worker mid-job).
    pub delay: Duration,
}

impl FileEffectHandler {
    /// The file recording `job_id`'s effect.
    pub fn effect_path(dir: &Path, job_id: &str) -> PathBuf {
        dir.join("effects").join(job_id)
    }

    /// The call log: one line per event, `start|reuse|done <job> <attempt> <pid> <redelivered>`.
    pub fn log_path(dir: &Path) -> PathBuf {
        dir.join("calls.log")
    }

    fn log(&self, what: &str, job_id: &str, ctx: &JobContext) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(Self::log_path(&self.dir))
            .expect("open call log");
        writeln!(
            f,
            "{what} {job_id} {} {} {}",
            ctx.attempt,
            std::process::id(),
            ctx.redelivered
        )
        .expect("write call log");
        f.sync_all().expect("sync call log");
    }

    /// The effect of one call: the job's file, created once.
    async fn run(&self, ctx: &JobContext, envelope: &Envelope) -> Result<(), StageError> {
        let job_id = envelope.job_id.as_str();
        self.log("start", job_id, ctx);
        tokio::time::sleep(self.delay).await;
        let path = Self::effect_path(&self.dir, job_id);
        std::fs::create_dir_all(path.parent().expect("effects dir"))
            .map_err(StageError::transient)?;
        // Create-only, like a vault manifest: a redelivered job finds the effect and reuses it.
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                writeln!(f, "{}", envelope.message_id).map_err(StageError::transient)?;
                f.sync_all().map_err(StageError::transient)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                self.log("reuse", job_id, ctx)
            }
            Err(e) => return Err(StageError::transient(e)),
        }
        self.log("done", job_id, ctx);
        Ok(())
    }
}

snapshot_handler!(FileEffectHandler);

/// Run `rabbitmqctl <args>` against the local RabbitMQ node, failing the test if it fails.
pub fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run rabbitmqctl ({e}); these tests need RabbitMQ's CLI on PATH (scripts/test.sh installs it)")
        });
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}{}; run the tests as a user that may manage RabbitMQ (scripts/test.sh)",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A free loopback port (bound, then released for a child process to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind port 0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// `GET path` over plain HTTP/1.1; the status code and body, or `None` if nothing listens.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}
