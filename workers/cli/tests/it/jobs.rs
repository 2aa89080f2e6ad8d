//! Job records end to end on the real RabbitMQ: a backup's record through snapshot →
//! vault-transfer → geo-replication, `stowage jobs`, `stowage rp list|describe`,
//! `stowage restore create|status` (dry run and real, with staging released), a permanent
//! failure, and cancellation of a queued and of a running job.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stowage_control::job_records::new_record;
use stowage_control::{RecordSettings, Recorded};
use stowage_disk::{
    ByteRange, DiskFuture, DiskId, DiskInfo, DiskProvider, LocalDiskProvider, PieceStream,
    SnapshotId, SnapshotInfo,
};
use stowage_runtime::client::submit;
use stowage_runtime::{StageConfig, StageHandler, Worker};
use stowage_schemas::domain::{JobRecord, JobStatus};
use stowage_schemas::{Envelope, Stage};
use stowage_stages::restore_hydration::staging_disk_name;
use stowage_stages::{
    ClusterContext, GeoReplication, RestoreHydration, RestoreStage, SnapshotStage, VaultContext,
    VaultTransfer,
};
use stowage_tests::vault_fixture::{INSTANCE, VaultBackend, VaultFixture};
use stowage_tests::{Bus, RunningWorker, shared_rabbit_bus, vault_transfer_job};
use stowage_vault::catalog::jobs::{create_job, read_job};
use stowage_vault::crypto::VaultKey;
use stowage_vault::store::{BlobStore, LocalDurability};

use crate::helpers::{
    fixture_worker, poll, sample_app, shop_backup, stdout_and_stderr as text, stowage_command,
    stowage_on, temp_dir,
};

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(120);

fn settings() -> RecordSettings {
    RecordSettings {
        poll_interval: Duration::from_millis(200),
        flush_interval: Duration::from_millis(200),
        ..RecordSettings::default()
    }
}

/// `handler`, keeping its records in `store` with quick [`settings`].
fn recorded<H: StageHandler>(handler: H, store: &BlobStore) -> Recorded<H> {
    Recorded::new(handler, store.clone(), settings())
}

/// `stowage <args> --vault <vault>` with the test's broker.
fn stowage(bus: &Bus, vault: &Path, args: &[&str]) -> Output {
    let mut cmd = stowage_on(bus.names.prefix());
    cmd.args(args)
        .arg("--vault")
        .arg(vault)
        .env("STOWAGE_LOG", "warn");
    // What a recovery point holds is sealed: commands that read it need the vault's key.
    let key = vault.with_file_name("vault.key");
    if key.exists() {
        cmd.arg("--vault-key-file").arg(key);
    }
    cmd.output().expect("run stowage")
}

/// Submit `job` over raw AMQP, then `stowage jobs watch` it for up to `timeout` seconds.
async fn submit_and_watch(bus: &Bus, vault: &Path, job: &Envelope, timeout: &str) -> Output {
    submit(bus.broker.as_ref(), &bus.names, job).await.unwrap();
    stowage(
        bus,
        vault,
        &["jobs", "watch", &job.job_id, "--timeout", timeout],
    )
}

async fn record(store: &BlobStore, id: &str) -> JobRecord {
    read_job(store, id).await.expect("job record").0
}

async fn wait_record(
    store: &BlobStore,
    id: &str,
    what: &str,
    done: impl Fn(&JobRecord) -> bool,
) -> JobRecord {
    let job = poll(WAIT, Duration::from_millis(50), async || {
        read_job(store, id)
            .await
            .ok()
            .map(|(job, _)| job)
            .filter(|job| done(job))
    })
    .await;
    job.unwrap_or_else(|| panic!("job {id}: {what} did not happen within {WAIT:?}"))
}

fn count_jobs(vault: &Path) -> usize {
    std::fs::read_dir(vault.join("jobs"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_and_restores_are_followed_through_their_job_records() {
    let (_gate, bus) = shared_rabbit_bus().await;
    let dir = temp_dir("jobs");
    let vault_dir = dir.join("vault");
    let primary = BlobStore::local_folder(&vault_dir, LocalDurability::OsBuffered).unwrap();
    let secondary =
        BlobStore::local_folder(dir.join("secondary"), LocalDurability::OsBuffered).unwrap();
    let (disks, cluster) = sample_app(&dir.join("disks"), &primary, [0x5a; 2]).await;
    let vault = VaultContext::new(
        primary.clone(),
        VaultKey::generate().unwrap(),
        disks.clone(),
    )
    .with_secondary(secondary.clone());
    std::fs::write(dir.join("vault.key"), vault.key.expose_secret_hex()).unwrap();
    // The settings the vault stages follow: geo, with the secondary above.
    let settings = stowage_schemas::domain::Vault {
        redundancy: stowage_schemas::domain::Redundancy::Geo {
            secondary_location: dir.join("secondary").display().to_string(),
            secondary_region: "paired".into(),
        },
        ..stowage_schemas::samples::vault("v", &vault_dir.display().to_string())
    };
    primary
        .put_create_only(
            &stowage_vault::layout::vault_settings(),
            serde_json::to_vec(&settings).unwrap(),
        )
        .await
        .unwrap();
    let cluster_ctx = ClusterContext::new(
        vault.primary.clone(),
        disks.clone(),
        "sandbox",
        cluster.target(),
    )
    .with_secondary(vault.secondary.clone().expect("geo").store);
    // The sample app's instance is of cluster `sandbox`: these workers serve it.
    let config = stowage_runtime::WorkerConfig {
        cluster: Some("sandbox".into()),
        ..bus.worker_config()
    };
    let topology = config.topology();
    let st = StageConfig::default();
    let worker = Worker::new(bus.broker.clone(), config)
        .stage(recorded(SnapshotStage(cluster_ctx.clone()), &primary), st)
        .stage(recorded(VaultTransfer(vault.clone()), &primary), st)
        .stage(recorded(GeoReplication(vault.clone()), &primary), st)
        .stage(recorded(RestoreHydration(vault.clone()), &primary), st)
        .stage(recorded(RestoreStage(cluster_ctx), &primary), st);
    let fleet = RunningWorker::spawn(worker, WAIT).await;

    // A backup submitted over raw AMQP: no record yet; the workers make it.
    let watched = submit_and_watch(&bus, &vault_dir, &shop_backup(), "120").await;
    let (out, err) = text(&watched);
    assert!(watched.status.success(), "{out}\n{err}");
    assert!(
        out.contains("vault-transfer") && out.contains("succeeded"),
        "{out}"
    );
    let job = record(&primary, "backup-rp-1").await;
    assert_eq!(job.status(), JobStatus::Succeeded, "{job:?}");
    assert_eq!(job.requested_by.as_deref(), Some("tests"));
    let stages: Vec<(Stage, JobStatus)> = job.stages.iter().map(|s| (s.stage, s.status)).collect();
    assert_eq!(
        stages,
        vec![
            (Stage::Snapshot, JobStatus::Succeeded),
            (Stage::VaultTransfer, JobStatus::Succeeded),
            (Stage::GeoReplication, JobStatus::Succeeded),
        ]
    );
    assert_eq!(
        job.stages[0].progress.items_done, 2,
        "two volumes snapshotted"
    );
    assert!(
        job.stages[1].progress.bytes_done >= 4 * MIB,
        "{:?}",
        job.stages[1].progress
    );
    assert!(
        job.stages
            .iter()
            .all(|s| s.attempts == 1 && s.summary.is_some())
    );

    // The listing and the record's views.
    let listed = stowage(&bus, &vault_dir, &["jobs", "list", "-o", "json"]);
    let jobs: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(jobs[0]["id"], "backup-rp-1");
    let table = stowage(&bus, &vault_dir, &["jobs", "list", "--instance", "shop"]);
    assert!(text(&table).0.contains("backup-rp-1"), "{}", text(&table).0);
    let failed = stowage(&bus, &vault_dir, &["jobs", "list", "--status", "failed"]);
    assert!(!text(&failed).0.contains("backup-rp-1"));
    let shown = stowage(
        &bus,
        &vault_dir,
        &["jobs", "show", "backup-rp-1", "-o", "table"],
    );
    assert!(text(&shown).0.contains("vaulted:"), "{}", text(&shown).0);

    // Recovery points.
    let mut rp = stowage_command();
    rp.args(["rp", "list", "shop", "--vault"])
        .arg(&vault_dir)
        .arg("--vault-key-file")
        .arg(dir.join("vault.key"))
        .arg("--secondary")
        .arg(dir.join("secondary"));
    let (out, err) = text(&rp.output().unwrap());
    let tiers = [
        "operational:available",
        "vault:available",
        "secondary:available",
    ];
    assert!(
        out.contains("rp-1") && tiers.iter().all(|tier| out.contains(tier)),
        "{out}\n{err}"
    );
    let described = stowage(
        &bus,
        &vault_dir,
        &["rp", "describe", "shop", "rp-1", "-o", "json"],
    );
    let view: serde_json::Value = serde_json::from_slice(&described.stdout).expect("json");
    assert_eq!(
        view["recovery_point"]["volumes"].as_array().map(Vec::len),
        Some(2)
    );
    assert!(view["resource_count"].as_u64().unwrap() > 0);
    assert!(
        view["tiers"][1]["manifest"]["stats"]["bytes_read"]
            .as_u64()
            .unwrap()
            > 0
    );

    // A dry run checks and changes nothing.
    let before = count_jobs(&vault_dir);
    let create = [
        "restore",
        "create",
        "--instance",
        "shop",
        "--rp",
        "rp-1",
        "--from",
        "vault",
        "--namespaces",
        "shop",
        "--namespace-mapping",
        "shop=shop-restored",
        "--target-cluster",
        "sandbox",
    ];
    // With the target's kubeconfig, the plan: from the vault tier, each claim's data lands on
    // the staging disk hydration would make.
    let kubeconfig = crate::helpers::admin_kubeconfig(&cluster);
    let dry = stowage(
        &bus,
        &vault_dir,
        &[
            &create[..],
            &["--dry-run", "-o", "json", "--kubeconfig"],
            &[kubeconfig.to_str().unwrap()],
        ]
        .concat(),
    );
    let (out, err) = text(&dry);
    assert!(dry.status.success(), "{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).expect("a JSON plan");
    assert_eq!(plan["tier"], "vault");
    assert_eq!(plan["conflict"], 0, "{out}");
    let claim = plan["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "PersistentVolumeClaim" && o["namespace"] == "shop-restored")
        .expect("the claim is planned");
    assert_eq!(claim["action"], "create");
    assert_eq!(
        claim["disk"],
        staging_disk_name(plan["restore_id"].as_str().unwrap(), "shop-data"),
        "{claim}"
    );
    assert_eq!(count_jobs(&vault_dir), before, "a dry run writes no record");
    assert_eq!(
        bus.depth(&bus.names.stage_queue(Stage::RestoreHydration))
            .await,
        0
    );
    let refused = stowage(
        &bus,
        &vault_dir,
        &["restore", "create", "--instance", "shop", "--rp", "rp-9"],
    );
    assert!(
        text(&refused)
            .1
            .contains("no recovery point rp-9 of instance shop"),
        "{}",
        text(&refused).1
    );

    // A real restore from the vault tier, followed to the end.
    let restored = stowage(
        &bus,
        &vault_dir,
        &[
            &create[..],
            &["--restore-id", "r-1", "--wait", "--timeout", "120"],
        ]
        .concat(),
    );
    let (out, err) = text(&restored);
    assert!(restored.status.success(), "{out}\n{err}");
    assert!(out.starts_with("r-1\n"), "{out}");
    let status = stowage(&bus, &vault_dir, &["restore", "status", "r-1"]);
    let (out, _) = text(&status);
    assert!(
        out.contains("restore-hydration") && out.contains("succeeded") && out.contains("created"),
        "{out}"
    );
    let job = record(&primary, "r-1").await;
    assert_eq!(job.kind, Stage::RestoreHydration);
    assert_eq!(
        job.stages.iter().map(|s| s.stage).collect::<Vec<_>>(),
        vec![Stage::RestoreHydration, Stage::Restore]
    );
    // Staging released: resources gone, the adopted disk kept, the unused one (blog) gone.
    assert!(!vault_dir.join("staging/r-1/resources").exists());
    assert!(
        disks
            .disk_path(&DiskId(staging_disk_name("r-1", "shop-data")))
            .exists()
    );
    assert!(
        !disks
            .disk_path(&DiskId(staging_disk_name("r-1", "blog-data")))
            .exists()
    );

    // A permanent failure is recorded with its reason, and `jobs watch` says so.
    let broken = vault_transfer_job("vt-missing", "shop", "rp-missing");
    let watched = submit_and_watch(&bus, &vault_dir, &broken, "60").await;
    let (_, err) = text(&watched);
    assert!(!watched.status.success());
    assert!(
        err.contains("failed") && err.contains("has no manifest"),
        "{err}"
    );

    fleet.stop(WAIT).await;
    cluster.shutdown().await;
    bus.teardown(&topology).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads of snapshots take a while: a transfer long enough to cancel half-way.
struct SlowReads(Arc<LocalDiskProvider>);

impl DiskProvider for SlowReads {
    fn driver(&self) -> &str {
        self.0.driver()
    }
    fn create_disk<'a>(&'a self, name: &'a str, size: u64) -> DiskFuture<'a, DiskInfo> {
        self.0.create_disk(name, size)
    }
    fn write<'a>(&'a self, disk: &'a DiskId, offset: u64, data: &'a [u8]) -> DiskFuture<'a> {
        self.0.write(disk, offset, data)
    }
    fn read_disk<'a>(&'a self, disk: &'a DiskId, offset: u64, buf: &'a mut [u8]) -> DiskFuture<'a> {
        self.0.read_disk(disk, offset, buf)
    }
    fn snapshot<'a>(&'a self, disk: &'a DiskId, name: &'a str) -> DiskFuture<'a, SnapshotInfo> {
        self.0.snapshot(disk, name)
    }
    fn get_snapshot<'a>(&'a self, id: &'a SnapshotId) -> DiskFuture<'a, SnapshotInfo> {
        self.0.get_snapshot(id)
    }
    fn read_snapshot<'a>(
        &'a self,
        id: &'a SnapshotId,
        offset: u64,
        buf: &'a mut [u8],
    ) -> DiskFuture<'a> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(60)).await;
            self.0.read_snapshot(id, offset, buf).await
        })
    }
    fn allocated_ranges<'a>(&'a self, id: &'a SnapshotId) -> DiskFuture<'a, Vec<ByteRange>> {
        self.0.allocated_ranges(id)
    }
    fn create_disk_from_stream<'a>(
        &'a self,
        name: &'a str,
        size: u64,
        pieces: PieceStream<'a>,
    ) -> DiskFuture<'a, DiskInfo> {
        self.0.create_disk_from_stream(name, size, pieces)
    }
    fn delete_disk<'a>(&'a self, disk: &'a DiskId) -> DiskFuture<'a> {
        self.0.delete_disk(disk)
    }
    fn delete_snapshot<'a>(&'a self, id: &'a SnapshotId) -> DiskFuture<'a> {
        self.0.delete_snapshot(id)
    }
}

fn worker_process(bus: &Bus, f: &VaultFixture) -> std::process::Child {
    fixture_worker(f, bus.names.prefix())
        .args(["--job-poll-interval", "0.2"])
        .spawn()
        .expect("spawn stowage worker")
}

fn vault_dir(f: &VaultFixture) -> PathBuf {
    f.dir.join("vault")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_jobs_stop_and_are_acked_not_retried() {
    let (_gate, bus) = shared_rabbit_bus().await;
    let topology = bus.declare_topology().await;
    let f = VaultFixture::new(VaultBackend::LocalFolder).await;
    f.disks_create("d", 96 * MIB).await;
    for i in 0..12 {
        f.write_random("d", i * 8 * MIB, 8 * MIB as usize, i).await;
    }
    f.snapshot_rp("rp-1", &[("d", "vol-d")]).await;
    let store = f.ctx.primary.clone();
    let queue = bus.names.stage_queue(Stage::VaultTransfer);
    let dlq = bus.names.dead_letter_queue(Stage::VaultTransfer);
    let job = |id: &str| vault_transfer_job(id, INSTANCE, "rp-1");

    // Queued: cancelled before any worker runs; the worker that picks it acks it unrun.
    let queued = job("vt-queued");
    create_job(
        &store,
        &new_record(&queued, Stage::VaultTransfer, jiff::Timestamp::now()),
    )
    .await
    .unwrap();
    submit(bus.broker.as_ref(), &bus.names, &queued)
        .await
        .unwrap();
    let cancel = stowage(&bus, &vault_dir(&f), &["jobs", "cancel", "vt-queued"]);
    let (out, err) = text(&cancel);
    assert!(cancel.status.success(), "{err}");
    assert!(
        out.contains("queued: cancelled when a worker picks it up"),
        "{out}"
    );
    let mut worker = worker_process(&bus, &f);
    let done = wait_record(&store, "vt-queued", "cancellation", |j| {
        j.status() == JobStatus::Cancelled
    })
    .await;
    assert_eq!(done.stages[0].attempts, 0, "never started");
    let deadline = Instant::now() + WAIT;
    while bus.depth(&queue).await > 0 {
        assert!(Instant::now() < deadline, "the cancelled job was not acked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(
        stowage_vault::catalog::read_tier_manifest(
            &store,
            INSTANCE,
            "rp-1",
            stowage_schemas::domain::Tier::Vault
        )
        .await
        .unwrap()
        .is_none(),
        "nothing was transferred"
    );

    // Running: an in-process worker whose snapshot reads are slow, cancelled half-way.
    let mut ctx = f.ctx.clone();
    ctx.disks = Arc::new(SlowReads(f.disks.clone()));
    ctx.parallelism = 1;
    let worker = Worker::new(bus.broker.clone(), bus.worker_config())
        .stage(recorded(VaultTransfer(ctx), &store), StageConfig::default());
    let fleet = RunningWorker::spawn(worker, WAIT).await;
    submit(bus.broker.as_ref(), &bus.names, &job("vt-running"))
        .await
        .unwrap();
    wait_record(&store, "vt-running", "progress", |j| {
        j.stages[0].status == JobStatus::Running && j.stages[0].progress.bytes_done > 0
    })
    .await;
    let cancel = stowage(&bus, &vault_dir(&f), &["jobs", "cancel", "vt-running"]);
    let (out, _) = text(&cancel);
    assert!(
        out.contains("running: stops at its next safe point"),
        "{out}"
    );
    let done = wait_record(&store, "vt-running", "cancellation", |j| {
        j.status() == JobStatus::Cancelled
    })
    .await;
    let run = &done.stages[0];
    assert_eq!(run.attempts, 1, "not retried");
    assert!(
        run.progress.bytes_done > 0 && run.progress.bytes_done < 96 * MIB,
        "{:?}",
        run.progress
    );
    let watched = stowage(&bus, &vault_dir(&f), &["jobs", "watch", "vt-running"]);
    assert!(
        !watched.status.success(),
        "a cancelled job does not watch as a success"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bus.depth(&queue).await, 0, "acked");
    assert_eq!(bus.depth(&dlq).await, 0, "not dead-lettered");
    assert_eq!(
        record(&store, "vt-running").await.stages[0].attempts,
        1,
        "no retry ran"
    );
    fleet.stop(WAIT).await;
    bus.teardown(&topology).await;
}
