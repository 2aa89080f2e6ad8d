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
        for (name, secret) in [
            ("the AMQP password", &self.amqp_password),
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
