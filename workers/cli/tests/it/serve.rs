//! `stowage serve` (issue 17): the real binary with the sandbox cluster in-process, driven
//! through its HTTP API and through the CLI's `--server`; killed with SIGKILL mid-backup and
//! restarted; and its OpenAPI document checked against it with schemathesis.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use stowage_tests::free_port;

use crate::helpers::{TempDir, poll, run, stdout_and_stderr, stowage_command, terminate};

const START: Duration = Duration::from_secs(120);
const JOB: Duration = Duration::from_secs(600);
const TOKEN: &str = "serve-test-token-4b1d";

/// A `stowage serve --sandbox` process on `dir`, killed if the test ends with it running.
struct Serve {
    child: Child,
    url: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Serve {
    /// Starts it (on a fresh port) and waits until `/livez` answers.
    async fn start(dir: &Path, token: Option<&str>, extra: &[&str]) -> Self {
        let port = free_port();
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.join(format!("serve-{port}.log"));
        let mut cmd = stowage_command();
        cmd.args(["serve", "--sandbox", "--dir"])
            .arg(dir)
            .arg("--addr")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .env("STOWAGE_LOG", "warn,stowage=info")
            .env_remove("STOWAGE_API_TOKEN")
            .env_remove("STOWAGE_SERVER")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(t) = token {
            cmd.env("STOWAGE_API_TOKEN", t);
        }
        let child = cmd.spawn().expect("start stowage serve");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let serve = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            token: token.map(str::to_owned),
            http: reqwest::Client::new(),
        };
        let up = poll(START, Duration::from_millis(100), async || {
            let r = serve.http.get(format!("{}/livez", serve.url)).send().await;
            r.ok().filter(|r| r.status().is_success()).map(|_| ())
        })
        .await;
        assert!(
            up.is_some(),
            "stowage serve did not answer /livez within {START:?}; its log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        serve
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .auth(self.http.get(format!("{}{path}", self.url)))
            .send()
            .await
            .expect("GET");
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap_or_default();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .auth(self.http.post(format!("{}{path}", self.url)))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap_or_default();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// The job's record once it is final.
    async fn finished(&self, job: &str) -> Value {
        poll(JOB, Duration::from_millis(250), async || {
            let (status, v) = self.get(&format!("/api/v1/jobs/{job}")).await;
            (status == 200
                && matches!(
                    v["status"].as_str(),
                    Some("succeeded" | "failed" | "cancelled")
                ))
            .then_some(v)
        })
        .await
        .unwrap_or_else(|| panic!("job {job} did not finish within {JOB:?}"))
    }

    /// The CLI, pointed at this server.
    fn cli(&self) -> Command {
        let mut cmd = stowage_command();
        cmd.env("STOWAGE_SERVER", &self.url)
            .env_remove("STOWAGE_VAULT")
            .env("STOWAGE_LOG", "warn");
        match &self.token {
            Some(t) => cmd.env("STOWAGE_API_TOKEN", t),
            None => cmd.env_remove("STOWAGE_API_TOKEN"),
        };
        cmd
    }

    fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL stowage serve");
        self.child.wait().expect("reap stowage serve");
    }

    fn stop(mut self) {
        terminate(&self.child);
        let status = self.child.wait().expect("wait stowage serve");
        assert!(
            status.success(),
            "stowage serve exited with {status} on SIGTERM"
        );
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn vault_args(dir: &Path) -> Vec<PathBuf> {
    vec![
        "--vault".into(),
        dir.join("vault"),
        "--vault-key-file".into(),
        dir.join("vault.key"),
    ]
}

#[test]
fn serve_refuses_to_listen_beyond_loopback_without_a_token() {
    let dir = TempDir::new("serve-public");
    let mut cmd = stowage_command();
    cmd.args(["serve", "--sandbox", "--dir"])
        .arg(dir.path())
        .args(["--addr", "0.0.0.0:0"])
        .env_remove("STOWAGE_API_TOKEN");
    let out = run(cmd, None);
    let (_, stderr) = stdout_and_stderr(&out);
    assert!(!out.status.success(), "it started: {stderr}");
    assert!(
        stderr.contains("without a token") && stderr.contains("--token-file"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("vault").exists(),
        "nothing is made before the refusal"
    );
}

/// The API and the CLI's `--server`: a backup, its recovery point per tier, the instance's
/// protection, a dry-run plan, a restore from the vault tier, the token.
#[tokio::test(flavor = "multi_thread")]
async fn serve_backs_up_plans_and_restores_through_the_api_and_the_cli() {
    let dir = TempDir::new("serve-api");
    let serve = Serve::start(dir.path(), Some(TOKEN), &[]).await;

    let anonymous = reqwest::Client::new()
        .get(format!("{}/api/v1/instances", serve.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401, "no token, no answer");
    let (status, info) = serve.get("/api/v1/info").await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["broker"], "in-process");
    assert_eq!(info["cluster"], "sandbox");

    // A backup through the CLI, followed to the end through the API.
    let out = run(
        {
            let mut c = serve.cli();
            c.args(["backup", "now", "shop"]);
            c
        },
        None,
    );
    let (stdout, stderr) = stdout_and_stderr(&out);
    assert!(out.status.success(), "backup now --server: {stderr}");
    let job = stdout.trim().to_owned();
    let out = run(
        {
            let mut c = serve.cli();
            c.args(["jobs", "watch", &job, "--timeout", "600"]);
            c
        },
        None,
    );
    let (_, stderr) = stdout_and_stderr(&out);
    assert!(out.status.success(), "jobs watch --server: {stderr}");
    // Geo-replication follows the vault transfer; the job is final when every stage is.
    let record = serve.finished(&job).await;
    assert_eq!(record["status"], "succeeded", "{record:#}");
    let rp = record["recovery_point_id"].as_str().unwrap().to_owned();

    let out = run(
        {
            let mut c = serve.cli();
            c.args(["rp", "list", "shop", "-o", "json"]);
            c
        },
        None,
    );
    let (stdout, stderr) = stdout_and_stderr(&out);
    assert!(out.status.success(), "rp list --server: {stderr}");
    let rps: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rps[0]["recovery_point"]["id"], rp.as_str(), "{rps:#}");
    let (status, instances) = serve.get("/api/v1/instances").await;
    assert_eq!(status, 200, "{instances}");
    let protection = &instances[0]["protection"];
    for tier in ["operational", "vault", "secondary"] {
        assert_eq!(
            protection["last_good"][tier]["recovery_point_id"],
            rp.as_str(),
            "{protection:#}"
        );
    }
    assert_eq!(protection["rpo_breached"], false, "{protection:#}");
    assert_eq!(protection["last_job"]["id"], job.as_str(), "{protection:#}");

    // The dry-run plan, through the CLI (exit 0: no conflicts) and the API.
    let out = run(
        {
            let mut c = serve.cli();
            c.args([
                "restore",
                "create",
                "--instance",
                "shop",
                "--rp",
                &rp,
                "--from",
                "vault",
                "--namespaces",
                "shop",
                "--namespace-mapping",
                "shop=shop-api",
                "--restore-id",
                "api-restore",
                "--dry-run",
            ]);
            c
        },
        None,
    );
    let (stdout, stderr) = stdout_and_stderr(&out);
    assert!(out.status.success(), "restore --dry-run --server: {stderr}");
    assert!(
        stdout.contains("PersistentVolumeClaim shop-api/data-db-0")
            && stdout.contains("api-restore"),
        "{stdout}"
    );
    assert!(stderr.contains("Nothing was changed"), "{stderr}");
    let (status, again) = serve
        .get("/api/v1/jobs?instance=shop&status=succeeded&limit=5")
        .await;
    assert_eq!(status, 200);
    assert!(
        again
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["id"] != "api-restore"),
        "a plan writes no record"
    );

    // The restore itself, waited for through the CLI.
    let out = run(
        {
            let mut c = serve.cli();
            c.args([
                "restore",
                "create",
                "--instance",
                "shop",
                "--rp",
                &rp,
                "--from",
                "vault",
                "--namespaces",
                "shop",
                "--namespace-mapping",
                "shop=shop-api",
                "--restore-id",
                "api-restore",
                "--wait",
                "--timeout",
                "600",
            ]);
            c
        },
        None,
    );
    let (stdout, stderr) = stdout_and_stderr(&out);
    assert!(out.status.success(), "restore create --server: {stderr}");
    assert_eq!(stdout.lines().next(), Some("api-restore"), "{stdout}");
    let (status, restore) = serve.get("/api/v1/restores/api-restore").await;
    assert_eq!(
        (status, &restore["status"]),
        (200, &Value::from("succeeded"))
    );
    // The same id again is a conflict.
    let (status, refused) = serve
        .post(
            "/api/v1/restores",
            serde_json::json!({"instance": "shop", "recovery_point_id": rp, "restore_id": "api-restore"}),
        )
        .await;
    assert_eq!(status, 409, "{refused}");

    let (status, fleet) = serve.get("/api/v1/fleet").await;
    assert_eq!(status, 200, "{fleet}");
    assert!(fleet["queues"].as_array().unwrap().len() >= 6, "{fleet:#}");
    assert_eq!(fleet["geo_replication_lag_seconds"], 0.0, "{fleet:#}");
    let (status, letters) = serve.get("/api/v1/dead-letters").await;
    assert_eq!((status, letters), (200, Value::Array(Vec::new())));
    serve.stop();
}

/// `kill -9` mid-backup (during the vault transfer of a 1 GiB disk, 512 MiB of it data): after a restart the job
/// is resubmitted from its record and completes once; one recovery point, which verifies in
/// the vault and secondary tiers; the interrupted handling is counted as one death.
#[tokio::test(flavor = "multi_thread")]
async fn serve_survives_kill_9_mid_backup_and_loses_and_duplicates_nothing() {
    let dir = TempDir::new("serve-kill");
    let extra = ["--sample-disk-mib", "1024"];
    let mut serve = Serve::start(dir.path(), None, &extra).await;
    let (status, submitted) = serve
        .post("/api/v1/instances/shop/backups", serde_json::json!({}))
        .await;
    assert_eq!(status, 202, "{submitted}");
    let job = submitted["job_id"].as_str().unwrap().to_owned();
    let rp = submitted["recovery_point_id"].as_str().unwrap().to_owned();
    // Mid-transfer: the vault-transfer stage is running (it takes a few seconds here).
    let caught = poll(JOB, Duration::from_millis(5), async || {
        let (_, v) = serve.get(&format!("/api/v1/jobs/{job}")).await;
        assert!(
            !matches!(
                v["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ),
            "the job finished before it could be killed: {v:#}"
        );
        let stages = v["stages"].as_array()?;
        stages
            .iter()
            .any(|s| {
                s["stage"] == "vault-transfer"
                    && s["status"] == "running"
                    && s["handling"].is_object()
            })
            .then_some(())
    })
    .await;
    assert!(caught.is_some(), "the vault transfer never started");
    serve.kill_9();

    let serve = Serve::start(dir.path(), None, &extra).await;
    let (_, info) = serve.get("/api/v1/info").await;
    let recovered = format!("{job} (vault-transfer)");
    assert!(
        info["recovered_jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| *j == recovered.as_str()),
        "{info:#}"
    );
    let record = serve.finished(&job).await;
    assert_eq!(record["status"], "succeeded", "{record:#}");
    for stage in record["stages"].as_array().unwrap() {
        assert_eq!(stage["status"], "succeeded", "{record:#}");
        let expected = if stage["stage"] == "vault-transfer" {
            1
        } else {
            0
        };
        assert_eq!(
            stage["interrupted"].as_u64().unwrap_or(0),
            expected,
            "one death, of the vault transfer: {record:#}"
        );
    }
    // One backup job, one recovery point.
    let (_, jobs) = serve.get("/api/v1/jobs?instance=shop&limit=100").await;
    let backups: Vec<&Value> = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["kind"] == "snapshot")
        .collect();
    assert_eq!(backups.len(), 1, "{jobs:#}");
    let (_, rps) = serve.get("/api/v1/instances/shop/recovery-points").await;
    let ids: Vec<&str> = rps
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["recovery_point"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![rp.as_str()]);
    serve.stop();

    for tier in [
        &["--tier", "vault"][..],
        &["--tier", "secondary", "--secondary"][..],
    ] {
        let mut cmd = stowage_command();
        cmd.args(["rp", "verify", &rp, "--instance", "shop"])
            .args(vault_args(dir.path()))
            .args(tier)
            .env_remove("STOWAGE_SERVER")
            .env_remove("STOWAGE_VAULT_KEY");
        if tier.len() == 3 {
            cmd.arg(dir.path().join("secondary"));
        }
        let out = run(cmd, None);
        let (stdout, stderr) = stdout_and_stderr(&out);
        assert!(
            out.status.success(),
            "rp verify {tier:?} after the restart: {stdout}{stderr}"
        );
    }
}

/// The OpenAPI document against the running server, with schemathesis (PyPI): every response
/// is one the document allows (status, content type, schema) and none is a server error.
#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_matches_the_running_server() {
    let version = Command::new("schemathesis").arg("--version").output();
    if !version.as_ref().is_ok_and(|o| o.status.success()) {
        panic!(
            "schemathesis is not installed: `python3 -m pip install -r schemas/requirements-api.txt` \
             (scripts/test.sh does it)"
        );
    }
    let dir = TempDir::new("serve-openapi");
    let serve = Serve::start(dir.path(), Some(TOKEN), &[]).await;
    // Data to answer with: one backup, finished.
    let (status, submitted) = serve
        .post("/api/v1/instances/shop/backups", serde_json::json!({}))
        .await;
    assert_eq!(status, 202, "{submitted}");
    let record = serve.finished(submitted["job_id"].as_str().unwrap()).await;
    assert_eq!(record["status"], "succeeded", "{record:#}");
    let document = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/openapi.yaml");
    let out = Command::new("schemathesis")
        .arg("run")
        .arg(&document)
        .args(["--url", &serve.url])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "25", "--workers", "1", "--seed", "17"])
        .args(["--request-timeout", "60"])
        .env("SCHEMATHESIS_HOOKS", "")
        // Its cache (.schemathesis/) goes there, not into the source tree.
        .current_dir(dir.path())
        .output()
        .expect("run schemathesis");
    let (stdout, stderr) = stdout_and_stderr(&out);
    serve.stop();
    assert!(
        out.status.success(),
        "schemathesis found responses the OpenAPI document does not allow:\n{stdout}\n{stderr}"
    );
}

/// With `--amqp-url`, serve fronts a RabbitMQ fleet: it runs no stage, and a backup through
/// the API waits in the cluster's snapshot queue on RabbitMQ for the fleet's workers.
#[tokio::test(flavor = "multi_thread")]
async fn serve_fronts_a_rabbitmq_fleet_with_amqp_url() {
    let (_gate, bus) = stowage_tests::shared_rabbit_bus().await;
    let dir = TempDir::new("serve-amqp");
    let prefix = bus.names.prefix().to_owned();
    let url = stowage_tests::amqp_url();
    let serve = Serve::start(dir.path(), None, &["--amqp-url", &url, "--prefix", &prefix]).await;
    let (_, info) = serve.get("/api/v1/info").await;
    assert_eq!(info["stages"], serde_json::json!([]), "{info:#}");
    assert_ne!(info["broker"], "in-process", "{info:#}");
    let (status, submitted) = serve
        .post("/api/v1/instances/shop/backups", serde_json::json!({}))
        .await;
    assert_eq!(status, 202, "{submitted}");
    let queue = bus
        .names
        .cluster_queue(stowage_schemas::Stage::Snapshot, "sandbox");
    assert_eq!(
        bus.depth(&queue).await,
        1,
        "the job waits for the fleet in {queue}"
    );
    let (_, fleet) = serve.get("/api/v1/fleet").await;
    assert!(
        fleet["queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["queue"] == queue.as_str() && q["depth"] == 1),
        "{fleet:#}"
    );
    let (_, job) = serve
        .get(&format!(
            "/api/v1/jobs/{}",
            submitted["job_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(job["status"], "queued", "{job:#}");
    serve.stop();
    let mut topology =
        stowage_runtime::Topology::new(bus.names.clone(), &stowage_runtime::RetryPolicy::default());
    for stage in [
        stowage_schemas::Stage::Snapshot,
        stowage_schemas::Stage::Restore,
    ] {
        topology.queues.push(stowage_runtime::topology::QueueSpec {
            name: bus.names.cluster_queue(stage, "sandbox"),
            kind: stowage_runtime::topology::QueueKind::Classic,
            dead_letter: None,
            delivery_limit: None,
            message_ttl: None,
        });
    }
    bus.teardown(&topology).await;
}
