//! `stowage drill run|list|show`, the real binary against a sandbox with real workers on the
//! real RabbitMQ: a backup of the sample app's `shop` namespace goes through snapshot and vault
//! transfer; a drill of the operational tier and one of the vault tier each restore it into
//! `drill-shop` through the workers, verify every object and volume byte, clean up, record
//! and announce `drill.completed`; a drill after the operational snapshot's bytes were
//! tampered with is recorded as failed, naming the volume and the bytes that differ; one after
//! the recovery point's resources were damaged is recorded as failed with nothing submitted.

use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use jiff::civil::Time;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume};
use kube::Api;
use kube::api::ListParams;
use serde_json::Value;
use stowage_runtime::{RetryPolicy, Topology};
use stowage_sandbox::Sandbox;
use stowage_schemas::domain::{BackupInstance, CalendarPeriod, JobStatus, Namespaces, Scope};
use stowage_schemas::{Message, Stage, samples};
use stowage_tests::{free_port, http_get};
use stowage_vault::catalog::jobs::read_job;
use stowage_vault::catalog::settings::{WriteMode, write_instance, write_policy, write_vault};
use stowage_vault::store::{BlobStore, LocalDurability};

use crate::helpers::{TempDir, admin_kubeconfig, poll, stdout_and_stderr, stowage_at, terminate};

const WAIT: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_restore_verify_time_clean_up_and_record_and_a_tampered_one_fails() {
    let (_gate, bus) = stowage_tests::shared_rabbit_bus().await;
    let probe = bus.probe_events().await;
    let dir = TempDir::new("drill");
    let vault_dir = dir.path().join("vault");
    let disk_root = dir.path().join("disks");
    let store = BlobStore::local_folder(&vault_dir, LocalDurability::OsBuffered).unwrap();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let vault_key = format!("{id}{id}");

    // The catalog: a vault, a policy, and instance `shop` of the sandbox's namespace shop.
    let vault = samples::vault("main", "local");
    write_vault(&store, &vault, WriteMode::Create)
        .await
        .unwrap();
    let policy = samples::policy_every(
        "daily",
        24,
        Time::constant(3, 0, 0, 0),
        "UTC",
        7,
        &[(CalendarPeriod::Day, 30)],
    );
    write_policy(&store, &policy, WriteMode::Create)
        .await
        .unwrap();
    let instance = BackupInstance {
        name: "shop".into(),
        cluster: "sandbox".into(),
        vault: vault.name.clone(),
        policy: policy.name.clone(),
        scope: Scope {
            namespaces: Namespaces::List {
                names: vec!["shop".into()],
            },
            ..Scope::default()
        },
        snapshot_location: "local".into(),
        hooks: Vec::new(),
    };
    write_instance(&store, &instance, WriteMode::Create)
        .await
        .unwrap();
    {
        use stowage_disk::DiskProvider as _;
        let disks = stowage_disk::LocalDiskProvider::open(&disk_root).unwrap();
        for (disk, size, fill) in [
            ("shop-data", 16 * MIB, 0x5au8),
            ("blog-data", 8 * MIB, 0xb1),
        ] {
            let info = disks.create_disk(disk, size).await.unwrap();
            let data: Vec<u8> = (0..2 * MIB).map(|i| fill ^ (i % 251) as u8).collect();
            disks.write(&info.id, MIB, &data).await.unwrap();
        }
    }
    let sandbox = Sandbox::new();
    sandbox.load_sample_app().unwrap();
    let cluster = sandbox.start_local().await.unwrap();
    let kubeconfig = admin_kubeconfig(&cluster);

    let stowage = |args: &[&str]| -> Command {
        let mut cmd = stowage_at(&stowage_tests::amqp_url(), bus.names.prefix());
        cmd.args(args)
            .arg("--vault")
            .arg(&vault_dir)
            .arg("--disk-root")
            .arg(&disk_root)
            .env("STOWAGE_VAULT_KEY", &vault_key)
            .env("STOWAGE_LOG", "warn")
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST");
        cmd
    };
    let run = |args: &[&str]| -> Output { stowage(args).output().expect("run stowage") };

    // The fleet: one worker of the cluster and vault stages, with the restore's own identity
    // (the admin one here: the sandbox's restore account has no rights on new namespaces).
    let port = free_port();
    let log_path = dir.path().join("worker.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let worker = Worker(
        stowage(&[
            "worker",
            "--stage",
            "snapshot,restore,vault-transfer,restore-hydration",
            "--cluster-name",
            "sandbox",
            "--max-attempts",
            "1",
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--health-addr", &format!("127.0.0.1:{port}")])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start the worker"),
    );
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let ready = poll(WAIT, Duration::from_millis(200), async || {
        matches!(http_get(port, "/readyz").await, Some((200, _))).then_some(())
    })
    .await;
    assert!(ready.is_some(), "the worker never got ready:\n{}", logs());

    // A backup, through snapshot and vault transfer.
    let out = run(&["backup", "now", "shop"]);
    let (job_id, err) = stdout_and_stderr(&out);
    assert!(out.status.success(), "backup now: {err}");
    let job_id = job_id.trim().to_owned();
    let vaulted = poll(WAIT, Duration::from_millis(200), async || {
        let record = read_job(&store, &job_id).await.ok()?.0;
        let run = record.stage(Stage::VaultTransfer)?;
        matches!(run.status, JobStatus::Succeeded | JobStatus::Failed).then(|| run.status)
    })
    .await;
    assert_eq!(vaulted, Some(JobStatus::Succeeded), "{}", logs());

    // A schedule: `stowage scheduler` runs the due drill and exposes its gauges.
    let out = run(&[
        "drill",
        "schedule",
        "--instance",
        "shop",
        "--every-hours",
        "24",
        "--tier",
        "vault",
    ]);
    assert!(out.status.success(), "{}", stdout_and_stderr(&out).1);
    let out = run(&["drill", "schedules"]);
    let (table, _) = stdout_and_stderr(&out);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("shop") && l.contains("vault") && l.contains("24 h")),
        "{table}"
    );
    let scheduler_port = free_port();
    let scheduler_log_path = dir.path().join("scheduler.log");
    let scheduler_log = std::fs::File::create(&scheduler_log_path).unwrap();
    let scheduler = Worker(
        stowage(&["scheduler", "--tick-seconds", "1", "--identity", "test"])
            .arg("--drill-kubeconfig")
            .arg(&kubeconfig)
            .args(["--health-addr", &format!("127.0.0.1:{scheduler_port}")])
            .stdout(scheduler_log.try_clone().unwrap())
            .stderr(scheduler_log)
            .spawn()
            .expect("start the scheduler"),
    );
    let scheduled = poll(WAIT, Duration::from_millis(500), async || {
        let mut listing = stowage_vault::catalog::drills::list_drills(&store);
        while let Some(d) = futures::StreamExt::next(&mut listing).await {
            let d = d.ok()?;
            if d.requested_by.as_deref() == Some("scheduler test") {
                return Some(d);
            }
        }
        None
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the scheduler ran no drill:\n{}\n{}",
            std::fs::read_to_string(&scheduler_log_path).unwrap_or_default(),
            logs()
        )
    });
    assert_eq!(
        scheduled.status,
        stowage_vault::catalog::drills::DrillStatus::Succeeded,
        "{scheduled:#?}"
    );
    let metrics = poll(WAIT, Duration::from_millis(500), async || {
        let (_, body) = http_get(scheduler_port, "/metrics").await?;
        body.contains(
            "stowage_drill_last_success_timestamp_seconds{instance=\"shop\",tier=\"vault\"}",
        )
        .then_some(body)
    })
    .await
    .expect("the scheduler's /metrics shows the drill");
    let rto_line = metrics
        .lines()
        .find(|l| l.starts_with("stowage_drill_rto_seconds{instance=\"shop\",tier=\"vault\"} "))
        .unwrap_or_else(|| panic!("{metrics}"));
    let rto: f64 = rto_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(rto > 0.0, "{rto_line}");
    terminate(&scheduler.0);

    let drill = |tier: &str, drill_id: &str| -> (Output, Value) {
        let out = run(&[
            "drill",
            "run",
            "--instance",
            "shop",
            "--tier",
            tier,
            "--drill-id",
            drill_id,
            "--timeout",
            "120",
            "-o",
            "json",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ]);
        let (stdout, stderr) = stdout_and_stderr(&out);
        let record: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}\n{}", logs()));
        (out, record)
    };
    let namespaces: Api<Namespace> = Api::all(cluster.client());
    let pvs: Api<PersistentVolume> = Api::all(cluster.client());
    let pv_count = || async { pvs.list(&ListParams::default()).await.unwrap().items.len() };
    let pvs_before = pv_count().await;

    for (tier, drill_id) in [("operational", "drill-op-1"), ("vault", "drill-vault-1")] {
        let (out, record) = drill(tier, drill_id);
        let (_, stderr) = stdout_and_stderr(&out);
        assert!(out.status.success(), "{tier} drill: {record:#}\n{stderr}");
        assert_eq!(record["status"], "succeeded", "{record:#}");
        assert_eq!(record["tier"], tier);
        assert_eq!(record["namespace_mapping"]["shop"], "drill-shop");
        assert!(
            record["objects_verified"].as_u64().unwrap() > 3,
            "{record:#}"
        );
        assert_eq!(record["object_findings"].as_array().unwrap().len(), 0);
        let volumes = record["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), 1, "{record:#}");
        assert_eq!(volumes[0]["matches"], true, "{record:#}");
        assert_eq!(volumes[0]["bytes_verified"], 16 * MIB, "{record:#}");
        assert!(
            volumes[0]["checked_against"]
                .as_str()
                .unwrap()
                .starts_with("vault extent map"),
            "{record:#}"
        );
        let rto = record["rto_seconds"].as_f64().unwrap();
        assert!(rto > 0.0 && rto >= record["restore_seconds"].as_f64().unwrap());
        println!(
            "{tier} drill: rto {rto} s, bytes moved {}",
            record["bytes_moved"]
        );
        // Cleaned up: the namespace, the PV and the restored disk.
        assert!(
            namespaces.get_opt("drill-shop").await.unwrap().is_none(),
            "{record:#}"
        );
        assert_eq!(pv_count().await, pvs_before, "{record:#}");
        assert_eq!(record["cleanup_errors"].as_array().unwrap().len(), 0);
        let disk = volumes[0]["disk"].as_str().unwrap();
        assert!(
            !disk_root.join("disks").join(format!("{disk}.img")).exists(),
            "disk {disk} deleted"
        );
    }

    // The source tampered with: one byte of the operational snapshot of shop-data flipped.
    // The restore copies it faithfully; verification against the vault copy catches it.
    let snapshots = disk_root.join("snapshots");
    let image = std::fs::read_dir(&snapshots)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "img")
                && p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .contains("shop-data")
        })
        .unwrap_or_else(|| panic!("no snapshot image of shop-data in {}", snapshots.display()));
    {
        use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&image)
            .unwrap();
        let at = MIB + 12345;
        let mut byte = [0u8];
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut byte).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[!byte[0]]).unwrap();
    }
    let (out, record) = drill("operational", "drill-op-tampered");
    assert_eq!(out.status.code(), Some(1), "{record:#}");
    assert_eq!(record["status"], "failed");
    let reason = record["reason"].as_str().unwrap();
    assert!(
        reason.contains("verification failed") && reason.contains("drill-shop/data-db-0"),
        "{reason}"
    );
    assert_eq!(record["volumes"][0]["matches"], false);
    assert!(
        namespaces.get_opt("drill-shop").await.unwrap().is_none(),
        "a failed drill cleans up too"
    );

    // The source damaged: a byte of each resources object of the vault flipped. No plan can be
    // made, nothing is submitted, and the drill is recorded as failed, saying why.
    let mut stack = vec![vault_dir.join("resources")];
    let mut flipped = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let mut bytes = std::fs::read(&path).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x01;
            std::fs::write(&path, bytes).unwrap();
            flipped += 1;
        }
    }
    assert!(flipped > 0, "no resources object in the vault");
    let (out, record) = drill("vault", "drill-vault-damaged");
    assert_eq!(out.status.code(), Some(1), "{record:#}");
    assert_eq!(record["status"], "failed");
    let reason = record["reason"].as_str().unwrap();
    assert!(
        reason.contains("no plan could be made") && reason.contains("nothing was restored"),
        "{reason}"
    );
    assert!(
        read_job(&store, "drill-vault-damaged").await.is_err(),
        "no restore was submitted"
    );

    // Recorded in the vault, listed and shown.
    let out = run(&["drill", "list", "--instance", "shop"]);
    let (table, err) = stdout_and_stderr(&out);
    assert!(out.status.success(), "{err}");
    for (id, status) in [
        ("drill-op-1", "succeeded"),
        ("drill-vault-1", "succeeded"),
        ("drill-op-tampered", "failed"),
        ("drill-vault-damaged", "failed"),
    ] {
        let line = table
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} in\n{table}"));
        assert!(line.contains(status), "{line}");
    }
    let out = run(&["drill", "show", "drill-vault-1", "-o", "table"]);
    let (shown, err) = stdout_and_stderr(&out);
    assert!(out.status.success(), "{err}");
    println!("{shown}");
    assert!(shown.contains("succeeded") && shown.contains("drill-shop/data-db-0"));
    let out = run(&["drill", "show", "drill-op-tampered", "-o", "table"]);
    let (shown, err) = stdout_and_stderr(&out);
    assert!(out.status.success(), "{err}");
    println!("{shown}");
    assert!(
        shown.contains("failed") && shown.contains("MISMATCH") && shown.contains("differ"),
        "{shown}"
    );
    let out = run(&["drill", "show", "drill-op-tampered", "-o", "yaml"]);
    let yaml: Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(yaml["status"], "failed");

    // Announced: one drill.completed per run.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while seen.len() < 5 && Instant::now() < deadline {
        for delivery in bus.drain(&probe).await {
            if delivery.routing_key != "drill.completed" {
                continue;
            }
            let envelope = stowage_runtime::envelope::decode_delivery(&delivery)
                .expect("a drill.completed event");
            let Message::DrillCompleted(done) = envelope.message else {
                panic!("drill.completed carried {}", envelope.message.kind());
            };
            if done.drill_id != scheduled.id {
                seen.push((done.drill_id, done.succeeded));
            } else {
                assert!(done.succeeded);
                seen.push(("scheduled".into(), true));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("drill-op-1".to_owned(), true),
            ("drill-op-tampered".to_owned(), false),
            ("drill-vault-1".to_owned(), true),
            ("drill-vault-damaged".to_owned(), false),
            ("scheduled".to_owned(), true),
        ]
    );

    terminate(&worker.0);
    let mut topology = Topology::new(bus.names.clone(), &RetryPolicy::default());
    topology.add_cluster(&RetryPolicy::default(), "sandbox");
    bus.teardown(&topology).await;
    cluster.shutdown().await;
}
