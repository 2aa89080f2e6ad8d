//! The `stowage` binary end to end: submit, dead-letter tools, worker refusal, and the
//! checked-in RabbitMQ definitions. Uses the real RabbitMQ (`scripts/test.sh` starts it).

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use stowage_runtime::{Names, RetryPolicy, Topology};
use stowage_schemas::{ContentType, Stage, decode};
use stowage_tests::{Behavior, RunningWorker, ScriptedHandler, amqp_url, shared_rabbit_bus};

use crate::helpers::{run, stowage_command, stowage_on, text};

/// How long the dead-letter test waits for the worker.
const WAIT: Duration = Duration::from_secs(20);

fn stowage(args: &[&str], prefix: &str, stdin: Option<&str>) -> Output {
    let mut cmd = stowage_on(prefix);
    cmd.args(args);
    run(cmd, stdin)
}

#[test]
fn the_checked_in_rabbitmq_definitions_match_the_topology() {
    let out = stowage(&["topology", "export"], "stowage", None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The broker's copy, and the one the Kubernetes base generates its ConfigMap from (kustomize
    // reads no file outside the base's folder).
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut checked_in = String::new();
    for path in [
        "infra/rabbitmq/definitions.json",
        "infra/k8s/base/rabbitmq-definitions.json",
    ] {
        let file = format!("{root}/{path}");
        if std::env::var_os("STOWAGE_BLESS").is_some() {
            std::fs::write(&file, &out.stdout).expect("write definitions");
        }
        checked_in = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            checked_in == text(&out.stdout),
            "{path} is stale: run STOWAGE_BLESS=1 cargo test -p stowage-cli \
             the_checked_in_rabbitmq_definitions"
        );
    }
    let defs: serde_json::Value = serde_json::from_str(&checked_in).expect("valid JSON");
    let expected = Topology::new(Names::new("stowage"), &RetryPolicy::default());
    assert_eq!(
        defs["queues"].as_array().map(Vec::len),
        Some(expected.queues.len())
    );
}

#[test]
fn the_worker_refuses_stages_it_cannot_run() {
    let refuse = |stage: &str| {
        stowage(
            &["worker", "--stage", stage, "--health-addr", "127.0.0.1:0"],
            "stowage-test-refuse",
            None,
        )
    };
    let out = refuse("retention");
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("the retention stage needs a vault: pass --vault"),
        "{err}"
    );
    let out = refuse("snapshot");
    let err = text(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("the snapshot stage needs a cluster and a vault: give the cluster's credentials (--kubeconfig"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_validates_publishes_and_prints_the_job_id() {
    let (_gate, bus) = shared_rabbit_bus().await;
    let prefix = bus.names.prefix().to_owned();
    let declared = stowage(&["topology", "declare"], &prefix, None);
    assert!(declared.status.success(), "{}", text(&declared.stderr));

    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../schemas/examples/vault-transfer.json"
    );
    let out = stowage(&["submit", file], &prefix, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        "vault-transfer-rp-2026-11-22-0300"
    );

    let queue = bus.names.stage_queue(Stage::VaultTransfer);
    let got = bus
        .take(&queue, "the job is in the vault-transfer queue")
        .await;
    let envelope = decode(&got.body, ContentType::MessagePack).expect("a valid envelope");
    assert_eq!(envelope.job_id, "vault-transfer-rp-2026-11-22-0300");

    let typo = "type: job.retention\npayload:\n  instance: shop\n  keep_forever: true\n";
    let refused = stowage(&["submit", "-"], &prefix, Some(typo));
    assert_eq!(refused.status.code(), Some(1));
    let err = text(&refused.stderr);
    assert!(
        err.contains("`keep_forever` is not a field of job.retention"),
        "{err}"
    );
    assert_eq!(
        bus.depth(&bus.names.stage_queue(Stage::Retention)).await,
        0,
        "nothing published"
    );
    bus.teardown(&Topology::new(bus.names.clone(), &RetryPolicy::default()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_listed_shown_and_replayed_from_the_cli() {
    let (_gate, bus) = shared_rabbit_bus().await;
    let prefix = bus.names.prefix().to_owned();
    let handler = ScriptedHandler::default();
    let config = bus.worker_config();
    let topology = config.topology();
    let running = RunningWorker::start(&bus, config, handler.clone(), WAIT).await;

    let job = "type: job.snapshot\njob_id: job-cli-dlq\ncluster: test-cluster\npayload: {instance: shop, recovery_point_id: rp-9, trigger: {kind: on_demand}}\n";
    handler.set(
        "job-cli-dlq",
        Behavior::FailPermanently(
            "volume pvc-data uses driver nfs.csi.k8s.io, which Stowage cannot snapshot".into(),
        ),
    );
    let out = stowage(&["submit", "-"], &prefix, Some(job));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dlq = bus.names.dead_letter_queue(Stage::Snapshot);
    let deadline = Instant::now() + WAIT;
    while bus.depth(&dlq).await < 1 {
        assert!(
            Instant::now() < deadline,
            "the job never reached the dead-letter queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let table = stowage(&["dlq", "list", "snapshot"], &prefix, None);
    let table = text(&table.stdout);
    assert!(table.starts_with("MESSAGE ID"), "{table}");
    assert!(
        table.contains("job-cli-dlq") && table.contains("nfs.csi.k8s.io"),
        "{table}"
    );

    let listed = stowage(&["dlq", "list", "snapshot", "-o", "json"], &prefix, None);
    let letters: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON output");
    let id = letters[0]["message_id"]
        .as_str()
        .expect("message id")
        .to_owned();
    assert_eq!(letters[0]["attempts"], 1);

    let shown = stowage(
        &["dlq", "show", "snapshot", &id, "-o", "json"],
        &prefix,
        None,
    );
    let letter: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("JSON output");
    assert_eq!(
        letter["envelope"]["message"]["payload"]["recovery_point_id"],
        "rp-9"
    );
    assert_eq!(
        letter["error_chain"][0],
        "volume pvc-data uses driver nfs.csi.k8s.io, which Stowage cannot snapshot"
    );

    let missing = stowage(&["dlq", "show", "snapshot", "no-such-id"], &prefix, None);
    assert!(text(&missing.stderr).contains("no dead letter with message id no-such-id"));

    handler.set("job-cli-dlq", Behavior::Succeed);
    let replayed = stowage(
        &["dlq", "replay", "snapshot", "--message-id", &id],
        &prefix,
        None,
    );
    assert!(
        text(&replayed.stderr).contains("replayed 1 message(s)"),
        "{}",
        text(&replayed.stderr)
    );
    handler.wait_calls("job-cli-dlq", 2, WAIT).await;
    assert_eq!(bus.depth(&dlq).await, 0);

    running.stop(WAIT).await;
    bus.teardown(&topology).await;
}

/// The README's promise: any AMQP client plus MessagePack (or JSON) can submit a job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_producer_can_submit_jobs_in_msgpack_and_json() {
    let (_gate, bus) = shared_rabbit_bus().await;
    let topology = bus.declare_topology().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../schemas/examples/submit.py"
    );
    let queue = bus.names.stage_queue(Stage::VaultTransfer);
    for (flag, content_type) in [
        (None, "application/msgpack"),
        (Some("--json"), "application/json"),
    ] {
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .args(["shop-prod", "rp-from-python"])
            .args(flag);
        let out = cmd
            .env("STOWAGE_AMQP_URL", amqp_url())
            .env("STOWAGE_TOPOLOGY_PREFIX", bus.names.prefix())
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "the Python example failed: {}\nIts packages install with `pip install -r schemas/examples/requirements.txt` (scripts/test.sh does it).",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout).trim(), "vault-transfer-rp-from-python");
        let got = bus.take(&queue, "the job arrived").await;
        assert_eq!(got.properties.content_type.as_deref(), Some(content_type));
        let ct: ContentType = content_type.parse().expect("content type");
        let envelope = decode(&got.body, ct).unwrap_or_else(|e| panic!("{content_type}: {e}"));
        assert_eq!(envelope.job_id, "vault-transfer-rp-from-python");
        assert_eq!(envelope.kind(), "job.vault-transfer");
    }
    bus.teardown(&topology).await;
}

/// The README's main command: the demo runs to a verified restore on embedded defaults.
#[test]
fn the_demo_runs_to_a_verified_restore() {
    let dir = std::env::temp_dir().join(format!("stowage-demo-test-{}", std::process::id()));
    let out = stowage_command()
        .args(["demo", "--dir"])
        .arg(&dir)
        .env_remove("STOWAGE_DEMO_AMQP_URL")
        .env_remove("STOWAGE_DEMO_BLOB_URL")
        .output()
        .expect("run the demo");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert_eq!(
        stdout.matches("every byte of 2 volumes equal").count(),
        2,
        "{stdout}"
    );
    assert!(
        stdout.contains("rp.created triggered vault-transfer"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Dedup + compression") && stdout.contains(&dir.display().to_string()),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 13, items 3, 5 and 7: `submit` refuses bad ids, oversized or deeply nested files and
/// wrongly typed fields before connecting anywhere, naming the field and the rule or form.
#[test]
fn submit_refuses_bad_ids_deep_input_and_wrong_types_naming_the_field() {
    let refused = |job: &str| {
        let out = stowage(&["submit", "-"], "stowage-test-edges", Some(job));
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    let rule = stowage_schemas::id::RULE;
    let err = refused("type: job.retention\njob_id: ../../x\npayload: {instance: shop}\n");
    assert!(
        err.contains("job_id: \"../../x\" is not a valid id"),
        "{err}"
    );
    assert!(err.contains(rule), "{err}");
    let err = refused("type: job.retention\npayload: {instance: ../shop}\n");
    assert!(
        err.contains("payload.instance: \"../shop\" is not a valid id"),
        "{err}"
    );
    assert!(err.contains(rule), "{err}");
    let err = refused("type: job.retention\npayload: {instance: [1]}\n");
    assert!(
        err.contains("payload.instance: expected an id string") && err.contains("got a sequence"),
        "{err}"
    );
    // 200 KB of nested YAML lists took 30–45 s to refuse; now the size bound refuses it
    // unread, and a smaller one the depth bound.
    let nested = |depth: usize| {
        let (open, close) = ("[".repeat(depth), "]".repeat(depth));
        format!("type: job.retention\npayload: {{instance: shop, x: {open}1{close}}}\n")
    };
    let deep = nested(100_000);
    // From a file: standard input would stop being read after the bound.
    let path = std::env::temp_dir().join(format!("stowage-deep-{}.yaml", std::process::id()));
    std::fs::write(&path, &deep).expect("write the deep job file");
    let out = stowage(
        &["submit", path.to_str().expect("a UTF-8 path")],
        "stowage-test-edges",
        None,
    );
    let _ = std::fs::remove_file(&path);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refused before parsing") && err.contains("at most 65536 bytes"),
        "{err}"
    );
    let err = refused(&nested(30_000));
    assert!(err.contains("more than 32 levels deep"), "{err}");
}

/// Issue 13, item 8: the unauthenticated health and metrics port listens on loopback unless the
/// process runs in Kubernetes (where the manifests set it explicitly anyway).
#[test]
fn the_health_address_defaults_to_loopback_outside_kubernetes() {
    let help = |command: &str, kubernetes: Option<&str>| {
        let mut cmd = stowage_command();
        cmd.args([command, "--help"])
            .env_remove("STOWAGE_HEALTH_ADDR")
            .env_remove("KUBERNETES_SERVICE_HOST");
        if let Some(host) = kubernetes {
            cmd.env("KUBERNETES_SERVICE_HOST", host);
        }
        let out = run(cmd, None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    for command in ["worker", "scheduler"] {
        let outside = help(command, None);
        assert!(
            outside.contains("[default: 127.0.0.1:8080]"),
            "{command}: {outside}"
        );
        assert!(
            !outside.contains("[default: 0.0.0.0"),
            "{command}: {outside}"
        );
        let inside = help(command, Some("10.96.0.1"));
        assert!(
            inside.contains("[default: 0.0.0.0:8080]"),
            "{command}: {inside}"
        );
    }
}

/// Issue 13, item 3: id flags and arguments are checked by the id rule when parsed, naming the
/// argument.
#[test]
fn id_arguments_are_refused_by_the_id_rule() {
    let rule = stowage_schemas::id::RULE;
    for args in [
        "jobs show ../../x",
        "backup now ../shop",
        "rp list shop/..",
        "restore create --instance shop --rp rp-1 --restore-id ../r",
    ] {
        let mut cmd = stowage_command();
        cmd.args(args.split(' '));
        let out = run(cmd, None);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("invalid value"), "{args:?}: {err}");
        assert!(
            err.contains("is not a valid id") && err.contains(rule),
            "{args:?}: {err}"
        );
    }
}

/// A `stowage` started without `MALLOC_ARENA_MAX` (not from the manifests, which set it) runs
/// with two glibc arenas all the same: it runs itself again with the variable set, in the same
/// process (same pid), so its pipeline threads cannot grow it past the worker's memory budget.
/// One that was given a value keeps it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn stowage_runs_with_two_malloc_arenas_unless_told_otherwise() {
    use crate::helpers::{TempDir, terminate};

    fn arena_setting_of_a_running_stowage(given: Option<&str>) -> Option<String> {
        let dir = TempDir::new("arenas");
        let mut cmd = stowage_command();
        cmd.args(["sandbox", "--kubeconfig-dir"])
            .arg(dir.path())
            .env_remove("MALLOC_ARENA_MAX")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(value) = given {
            cmd.env("MALLOC_ARENA_MAX", value);
        }
        let child = cmd.spawn().expect("start stowage sandbox");
        let environ = format!("/proc/{}/environ", child.id());
        // The sandbox writes its kubeconfig once it serves: by then any re-exec has happened.
        let deadline = Instant::now() + WAIT;
        while std::fs::read_dir(dir.path()).map_or(0, |d| d.count()) == 0 {
            assert!(
                Instant::now() < deadline,
                "stowage sandbox wrote no kubeconfig in {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let env = std::fs::read(&environ).expect("read the process's environment");
        let mut child = child;
        terminate(&child);
        let _ = child.wait();
        env.split(|b| *b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok())
            .find_map(|kv| kv.strip_prefix("MALLOC_ARENA_MAX=").map(str::to_owned))
    }

    assert_eq!(
        arena_setting_of_a_running_stowage(None).as_deref(),
        Some("2")
    );
    assert_eq!(
        arena_setting_of_a_running_stowage(Some("4")).as_deref(),
        Some("4")
    );
}
