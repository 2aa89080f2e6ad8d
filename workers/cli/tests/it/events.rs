//! Issue 16, items 4 and 5, with a real `stowage worker` on the real RabbitMQ:
//!
//! - every outcome on the bus, followed by the README's consumers (`schemas/examples/consume.py`
//!   with pika, `schemas/examples/consume.mjs` with amqplib): a succeeding transfer's
//!   `job.progress` and `rp.vaulted`, a failing one's `job.failed`, a policy-skipped one's
//!   `rp.vault-skipped`;
//! - any producer is first-class: messages published by pika without any AMQP property are
//!   measured (queue wait from the AMQP timestamp or the envelope's `created_at`), listed and
//!   shown by `stowage dlq` under the envelope's own ids, and refused naming the field and form.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use jiff::civil::Time;
use serde_json::{Value, json};
use stowage_runtime::client::submit;
use stowage_schemas::domain::{BackupInstance, Namespaces, Scope};
use stowage_schemas::events::RpCreated;
use stowage_schemas::{Envelope, Message, samples};
use stowage_tests::vault_fixture::{INSTANCE, VaultBackend, VaultFixture};
use stowage_tests::{Bus, amqp_url, free_port, http_get, shared_rabbit_bus, vault_transfer_job};
use stowage_vault::catalog::settings::{WriteMode, write_instance, write_policy};

use crate::helpers::{poll, stowage_on, text, vault_transfer_worker};

const WAIT: Duration = Duration::from_secs(90);
const MIB: u64 = 1 << 20;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/examples")
}

/// Fails, never skips, when Node.js or the example's packages are missing, saying how to fix it.
fn require_node() {
    let version = Command::new("node").arg("--version").output();
    match version {
        Ok(out) if out.status.success() => {}
        _ => panic!(
            "node is not installed or does not run: the Node.js event consumer \
             (schemas/examples/consume.mjs) is tested in CI. Install Node.js 18 or later \
             (e.g. `apt-get install nodejs npm`), then run `npm ci --prefix schemas/examples` \
             (scripts/test.sh does)."
        ),
    }
    assert!(
        examples().join("node_modules/amqplib").is_dir()
            && examples().join("node_modules/@msgpack/msgpack").is_dir(),
        "the Node.js consumer's packages are not installed: run `npm ci --prefix schemas/examples` \
         (scripts/test.sh does)"
    );
}

/// A consumer example running as a child process, its stdout collected as JSON lines.
struct Consumer {
    name: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Consumer {
    /// Starts `program script --until …` on `prefix` and waits until it is bound.
    fn start(
        name: &'static str,
        program: &str,
        script: &str,
        prefix: &str,
        until: &[&str],
    ) -> Self {
        let mut cmd = Command::new(program);
        cmd.arg(examples().join(script));
        for u in until {
            cmd.args(["--until", u]);
        }
        cmd.args(["--timeout", &WAIT.as_secs().to_string()])
            .env("STOWAGE_AMQP_URL", amqp_url())
            .env("STOWAGE_TOPOLOGY_PREFIX", prefix)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot run {program}: {e}"));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (ready_tx, ready) = mpsc::channel();
        let pipe = child.stderr.take().expect("stderr");
        let collected = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if line.starts_with("listening on ") {
                    let _ = ready_tx.send(());
                }
                let mut all = collected.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        if ready.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            panic!(
                "the {name} consumer never bound its queue:\n{}\n(Python: `pip install -r \
                 schemas/examples/requirements.txt`; Node: `npm ci --prefix schemas/examples`)",
                stderr.lock().unwrap()
            );
        }
        Self {
            name,
            child,
            lines,
            stderr,
        }
    }

    /// Waits for the consumer to exit having seen every `--until` event; its events.
    fn finish(mut self) -> Vec<Value> {
        let deadline = Instant::now() + WAIT + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the {} consumer did not exit", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader thread ends with the pipe.
        std::thread::sleep(Duration::from_millis(100));
        let lines: Vec<String> = self.lines.try_iter().collect();
        assert!(
            status.success(),
            "the {} consumer failed ({status}):\n{}\nevents so far:\n{}",
            self.name,
            self.stderr.lock().unwrap(),
            lines.join("\n")
        );
        lines
            .iter()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{}: not a JSON line ({e}): {l}", self.name))
            })
            .collect()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `stowage worker --stage vault-transfer` on the fixture's vault, health and metrics on `port`.
struct Worker(Child);

impl Worker {
    fn spawn(f: &VaultFixture, prefix: &str, port: u16) -> Self {
        let child = vault_transfer_worker(&amqp_url(), prefix, &f.dir, port)
            .env("STOWAGE_VAULT_KEY", f.ctx.key.expose_secret_hex())
            .env("STOWAGE_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn stowage worker");
        Self(child)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Gives the fixture's instance a policy with no vault-tier rule: the pipeline leaves every
/// recovery point of it in the operational tier.
async fn operational_only_policy(f: &VaultFixture) {
    let policy = samples::policy_every(
        "operational-only",
        24,
        Time::constant(2, 0, 0, 0),
        "UTC",
        7,
        &[],
    );
    write_policy(&f.ctx.primary, &policy, WriteMode::Create)
        .await
        .expect("policy");
    let instance = BackupInstance {
        name: INSTANCE.into(),
        cluster: "sandbox".into(),
        vault: "fixture".into(),
        policy: policy.name,
        scope: Scope {
            namespaces: Namespaces::List {
                names: vec!["shop".into()],
            },
            ..Scope::default()
        },
        snapshot_location: "local".into(),
        hooks: Vec::new(),
    };
    write_instance(&f.ctx.primary, &instance, WriteMode::Create)
        .await
        .expect("instance");
}

fn of<'a>(events: &'a [Value], kind: &str, job: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == kind && e["job_id"] == job)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_node_consumers_follow_progress_failure_and_skip_events_of_real_workers() {
    require_node();
    let (_gate, bus) = shared_rabbit_bus().await;
    let topology = bus.declare_topology().await;
    let prefix = bus.names.prefix().to_owned();
    let f = VaultFixture::new(VaultBackend::LocalFolder).await;
    operational_only_policy(&f).await;
    f.write_patterned("disk-a", 64 * MIB, 0, 32 * MIB, 7).await;
    f.snapshot_rp("rp-ok", &[("disk-a", "vol-a")]).await;
    f.snapshot_rp("rp-skip", &[("disk-a", "vol-a")]).await;

    let until = [
        "job.progress:vt-ok",
        "rp.vaulted:vt-ok",
        "job.failed:vt-missing",
        "rp.vault-skipped:snapshot-rp-skip",
    ];
    let python = Consumer::start("Python", "python3", "consume.py", &prefix, &until);
    let node = Consumer::start("Node", "node", "consume.mjs", &prefix, &until);
    let worker = Worker::spawn(&f, &prefix, free_port());

    // A transfer that succeeds, one whose recovery point does not exist (a permanent failure),
    // and the pipeline's own trigger for a recovery point the policy leaves operational.
    for job in [
        vault_transfer_job("vt-ok", INSTANCE, "rp-ok"),
        vault_transfer_job("vt-missing", INSTANCE, "rp-missing"),
        Envelope::new(
            "snapshot-rp-skip",
            Message::RpCreated(RpCreated {
                instance: INSTANCE.into(),
                recovery_point_id: "rp-skip".into(),
                created_at: jiff::Timestamp::now(),
                resource_count: 1,
                volume_count: 1,
                volume_bytes: 64 * MIB,
                warnings: Vec::new(),
            }),
        ),
    ] {
        submit(bus.broker.as_ref(), &bus.names, &job)
            .await
            .expect("submit");
    }

    for consumer in [python, node] {
        let name = consumer.name;
        let events = tokio::task::spawn_blocking(move || consumer.finish())
            .await
            .expect("join");

        let failed = of(&events, "event.job.failed", "vt-missing");
        assert_eq!(failed.len(), 1, "{name}: {events:#?}");
        let failed = failed[0];
        assert_eq!(failed["routing_key"], "job.failed", "{name}");
        let payload = &failed["payload"];
        assert_eq!(payload["stage"], "vault-transfer", "{name}: {payload}");
        assert_eq!(payload["attempt"], 0, "{name}: {payload}");
        assert_eq!(payload["permanent"], true, "{name}: {payload}");
        assert_eq!(payload["will_retry"], false, "{name}: {payload}");
        assert!(
            payload["reason"]
                .as_str()
                .unwrap()
                .contains("recovery point rp-missing of instance shop-prod has no manifest"),
            "{name}: {payload}"
        );
        assert_eq!(failed["recovery_point_id"], "rp-missing", "{name}");

        let progress = of(&events, "event.job.progress", "vt-ok");
        let vaulted = of(&events, "event.rp.vaulted", "vt-ok");
        assert_eq!(vaulted.len(), 1, "{name}: {events:#?}");
        let last = progress.last().expect("progress");
        assert_eq!(last["routing_key"], "job.progress", "{name}");
        assert_eq!(last["payload"]["stage"], "vault-transfer", "{name}");
        assert_eq!(last["payload"]["job_id"], "vt-ok", "{name}");
        assert!(
            last["payload"]["bytes_done"].as_u64().unwrap() > 0,
            "{name}: the final progress counts the bytes read: {last}"
        );
        let position = |e: &Value| events.iter().position(|x| x == e).unwrap();
        assert!(
            position(last) < position(vaulted[0]),
            "{name}: the final progress comes before the outcome"
        );
        assert!(
            of(&events, "event.job.failed", "vt-ok").is_empty(),
            "{name}: the succeeding job reports no failure"
        );

        let skipped = of(&events, "event.rp.vault-skipped", "snapshot-rp-skip");
        assert_eq!(skipped.len(), 1, "{name}: {events:#?}");
        assert_eq!(skipped[0]["routing_key"], "rp.vault-skipped", "{name}");
        assert_eq!(
            skipped[0]["payload"]["policy"], "operational-only",
            "{name}"
        );
        assert_eq!(skipped[0]["payload"]["recovery_point_id"], "rp-skip");
        assert!(
            skipped[0]["payload"]["reason"]
                .as_str()
                .unwrap()
                .contains("policy `operational-only` has no vault-tier rule"),
            "{name}: {}",
            skipped[0]
        );
        for e in &events {
            assert!(
                e["message_id"].as_str().is_some_and(|id| id.len() == 36),
                "{name}: every event names its message id: {e}"
            );
        }
    }
    drop(worker);
    bus.teardown(&topology).await;
}

/// Publishes `envelope` with pika as MessagePack and no AMQP property at all (no content type,
/// message id, type or headers), or with only the AMQP `timestamp` when given.
fn pika_publish(bus: &Bus, envelope: &Value, timestamp: Option<i64>) {
    const SCRIPT: &str = r#"
import json, os, sys
import msgpack, pika
envelope = json.load(sys.stdin)
stamp = os.environ.get("STAMP")
props = pika.BasicProperties(timestamp=int(stamp)) if stamp else None
connection = pika.BlockingConnection(pika.URLParameters(os.environ["STOWAGE_AMQP_URL"]))
channel = connection.channel()
channel.confirm_delivery()
channel.basic_publish(exchange=os.environ["EXCHANGE"], routing_key="vault-transfer",
                      body=msgpack.packb(envelope), properties=props, mandatory=True)
connection.close()
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", SCRIPT])
        .env("STOWAGE_AMQP_URL", amqp_url())
        .env("EXCHANGE", bus.names.jobs_exchange())
        .stdin(Stdio::piped());
    if let Some(stamp) = timestamp {
        cmd.env("STAMP", stamp.to_string());
    }
    let mut child = cmd.spawn().expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(envelope.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("python3");
    assert!(
        out.status.success(),
        "pika publish failed: {}\n(`pip install -r schemas/examples/requirements.txt`)",
        text(&out.stderr)
    );
}

/// A vault-transfer job as a foreign producer writes it: a plain map, `created_at` `ago` in the
/// past, for a recovery point the vault does not have (so it fails and is dead-lettered).
fn foreign_job(message_id: &str, job_id: &str, created_at: &str) -> Value {
    json!({
        "message_id": message_id,
        "schema_version": 1,
        "job_id": job_id,
        "created_at": created_at,
        "message": {
            "type": "job.vault-transfer",
            "payload": {"instance": INSTANCE, "recovery_point_id": format!("rp-{job_id}")}
        }
    })
}

/// The queue-wait histogram of vault-transfer on the worker at `port`: (count, sum).
async fn queue_wait(port: u16) -> Option<(u64, f64)> {
    let (_, body) = http_get(port, "/metrics").await?;
    let value = |name: &str| -> Option<f64> {
        body.lines()
            .find(|l| l.starts_with(&format!("{name}{{stage=\"vault-transfer\"}}")))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    };
    Some((
        value("stowage_queue_wait_seconds_count")? as u64,
        value("stowage_queue_wait_seconds_sum")?,
    ))
}

async fn wait_queue_wait(port: u16, count: u64) -> f64 {
    poll(WAIT, Duration::from_millis(100), async || {
        queue_wait(port).await.filter(|(c, _)| *c == count)
    })
    .await
    .unwrap_or_else(|| panic!("the worker never measured {count} queue wait(s)"))
    .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_from_a_producer_without_amqp_properties_are_measured_listed_and_refused_by_field() {
    let (_gate, bus) = shared_rabbit_bus().await;
    let topology = bus.declare_topology().await;
    let prefix = bus.names.prefix().to_owned();
    let failures = bus.probe_job_events().await;
    let f = VaultFixture::new(VaultBackend::LocalFolder).await;
    let port = free_port();
    let worker = Worker::spawn(&f, &prefix, port);
    let now = jiff::Timestamp::now();
    let ago = |s: i64| (now - jiff::SignedDuration::from_secs(s)).to_string();

    // No header, no AMQP timestamp: the queue wait comes from the envelope's created_at.
    let first = "0193f3c0-0000-7000-8000-00000000f001";
    pika_publish(&bus, &foreign_job(first, "foreign-1", &ago(120)), None);
    let sum = wait_queue_wait(port, 1).await;
    assert!(
        (120.0..600.0).contains(&sum),
        "queue wait from created_at: {sum}"
    );
    // Only the AMQP timestamp (300 s ago) beside a created_at of now: the timestamp counts.
    let second = "0193f3c0-0000-7000-8000-00000000f002";
    pika_publish(
        &bus,
        &foreign_job(second, "foreign-2", &ago(0)),
        Some(now.as_second() - 300),
    );
    let sum = wait_queue_wait(port, 2).await;
    assert!(
        sum >= 420.0,
        "queue wait from the AMQP timestamp adds 300 s: {sum}"
    );
    // A timestamp without an offset: refused naming the field and the form expected.
    let third = "0193f3c0-0000-7000-8000-00000000f003";
    pika_publish(
        &bus,
        &foreign_job(third, "foreign-3", "2026-11-29T10:00:00"),
        None,
    );
    let dlq = bus
        .names
        .dead_letter_queue(stowage_schemas::Stage::VaultTransfer);
    bus.wait_depth(&dlq, 3, WAIT).await;

    // Each failure went out as job.failed under the job id the body names, the undecodable
    // one's too.
    let mut failed = Vec::new();
    for delivery in bus.drain(&failures).await {
        let envelope = stowage_schemas::decode(&delivery.body, Default::default()).expect("event");
        if let Message::JobFailed(event) = envelope.message {
            failed.push((event.job_id, event.permanent, event.will_retry));
        }
    }
    failed.sort();
    assert_eq!(
        failed,
        ["foreign-1", "foreign-2", "foreign-3"].map(|j| (j.to_owned(), true, false)),
        "job.failed per foreign job"
    );

    let listed = stowage_on(&prefix)
        .args(["dlq", "list", "vault-transfer", "-o", "json"])
        .output()
        .expect("stowage dlq list");
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let letters: Vec<Value> = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert_eq!(letters.len(), 3, "{letters:#?}");
    for (id, job) in [
        (first, "foreign-1"),
        (second, "foreign-2"),
        (third, "foreign-3"),
    ] {
        let letter = letters
            .iter()
            .find(|l| l["message_id"] == id)
            .unwrap_or_else(|| panic!("dlq list names {id} from the envelope: {letters:#?}"));
        assert_eq!(letter["kind"], "job.vault-transfer", "{letter}");
        assert_eq!(letter["job_id"], job, "{letter}");
    }
    let table = stowage_on(&prefix)
        .args(["dlq", "list", "vault-transfer"])
        .output()
        .expect("stowage dlq list");
    let table = text(&table.stdout);
    assert!(
        table.contains(third) && table.contains("job.vault-transfer"),
        "{table}"
    );

    let shown = stowage_on(&prefix)
        .args(["dlq", "show", "vault-transfer", third, "-o", "json"])
        .output()
        .expect("stowage dlq show");
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let letter: Value = serde_json::from_slice(&shown.stdout).expect("JSON");
    let reason = letter["reason"].as_str().unwrap();
    assert!(
        reason.contains(
            "created_at: expected an RFC 3339 timestamp with an offset (e.g. \
             2025-01-15T02:00:00Z), got \"2026-11-29T10:00:00\""
        ),
        "{reason}"
    );
    for internal in ["Probe", "newtype", "offset component", "invalid type"] {
        assert!(!reason.contains(internal), "{internal} in: {reason}");
    }

    // Replay picks a letter by the envelope's id too.
    let replayed = stowage_on(&prefix)
        .args(["dlq", "replay", "vault-transfer", "--message-id", first])
        .output()
        .expect("stowage dlq replay");
    assert!(
        text(&replayed.stderr).contains("replayed 1 message(s)"),
        "{}",
        text(&replayed.stderr)
    );
    drop(worker);
    bus.teardown(&topology).await;
}
