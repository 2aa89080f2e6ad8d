//! Per-cluster routing with real processes: two sandbox clusters, `A` and `B`, each served by
//! its own `stowage worker --stage snapshot,restore --cluster-name <name>` on the real
//! RabbitMQ, sharing one vault (and one local disk provider, the storage both clusters reach).
//! A's backups run on A's worker only and B's on B's; a restore of A's recovery point with
//! target cluster B runs on B's worker and writes into B's cluster only; a backup of an instance
//! of a cluster no worker serves waits in that cluster's queue, dead-lettered by no one.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use jiff::civil::Time;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Api;
use stowage_runtime::{Names, RetryPolicy, Topology};
use stowage_sandbox::{Sandbox, SandboxHandle};
use stowage_schemas::domain::{
    BackupInstance, CalendarPeriod, JobRecord, JobStatus, Namespaces, Scope,
};
use stowage_schemas::{Stage, samples};
use stowage_tests::{Bus, free_port, http_get};
use stowage_vault::catalog::jobs::read_job;
use stowage_vault::catalog::settings::{WriteMode, write_instance, write_policy, write_vault};
use stowage_vault::store::{BlobStore, LocalDurability};

use crate::helpers::{TempDir, poll, stdout_and_stderr, stowage_at, terminate};

const WAIT: Duration = Duration::from_secs(90);
const MIB: u64 = 1 << 20;
/// Backups per served cluster: enough that a shared queue would hand some to the wrong worker.
const BACKUPS: usize = 3;

/// The flags that point a `stowage` process at `cluster`'s API server. The one place the tests
/// say how: when the CLI takes kubeconfigs (`--kubeconfig`), only this changes.
fn cluster_args(cluster: &SandboxHandle) -> Vec<String> {
    vec![
        "--kubeconfig".into(),
        crate::helpers::admin_kubeconfig(cluster)
            .display()
            .to_string(),
    ]
}

/// The test's processes and folders; its worker processes are stopped when it ends.
struct Fleet {
    bus: Bus,
    prefix: String,
    amqp_url: String,
    vault_key: String,
    dir: TempDir,
    store: BlobStore,
    workers: Vec<(String, Child, u16)>,
}

impl Fleet {
    fn vault(&self) -> std::path::PathBuf {
        self.dir.path().join("vault")
    }

    /// `stowage` on the test's broker, vault and key.
    fn stowage(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = stowage_at(&self.amqp_url, &self.prefix);
        cmd.args(args)
            .arg("--vault")
            .arg(self.vault())
            .env("STOWAGE_VAULT_KEY", &self.vault_key)
            .env_remove("KUBERNETES_SERVICE_HOST");
        cmd.output().expect("run stowage")
    }

    /// Starts `stowage worker --stage snapshot,restore --cluster-name <name>` for `cluster`,
    /// logging to `<dir>/<name>.log`, and waits until it consumes.
    async fn start_cluster_worker(&mut self, name: &str, cluster: &SandboxHandle) {
        let port = free_port();
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let mut cmd: Command = stowage_at(&self.amqp_url, &self.prefix);
        cmd.args([
            "worker",
            "--stage",
            "snapshot,restore",
            "--cluster-name",
            name,
        ])
        .args(cluster_args(cluster))
        .args(["--health-addr", &format!("127.0.0.1:{port}")])
        .args(["--max-attempts", "1", "--vault"])
        .arg(self.vault())
        .arg("--disk-root")
        .arg(self.dir.path().join("disks"))
        .env("STOWAGE_VAULT_KEY", &self.vault_key)
        .env("STOWAGE_QUEUE_POLL_SECS", "1")
        .env_remove("STOWAGE_LOG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        let child = cmd.spawn().expect("start stowage worker");
        self.workers.push((name.to_owned(), child, port));
        let ready = poll(WAIT, Duration::from_millis(200), async || {
            matches!(http_get(port, "/readyz").await, Some((200, _))).then_some(())
        })
        .await;
        assert!(
            ready.is_some(),
            "worker {name} never got ready:\n{}",
            self.logs()
        );
    }

    /// What worker `name`'s /metrics says about `stage` jobs that ended with `outcome`.
    async fn jobs(&self, name: &str, stage: Stage, outcome: &str) -> u64 {
        let port = self
            .workers
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, p)| *p)
            .expect("worker");
        let (_, body) = http_get(port, "/metrics").await.expect("metrics");
        let series = format!("stowage_jobs_total{{stage=\"{stage}\",outcome=\"{outcome}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |n| n.trim().parse().expect("a count"))
    }

    fn logs(&self) -> String {
        self.workers
            .iter()
            .map(|(name, _, _)| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                    .unwrap_or_default();
                format!("--- worker {name}:\n{log}\n")
            })
            .collect()
    }

    /// `stowage backup now <instance>`: the job id it prints.
    fn backup_now(&self, instance: &str) -> String {
        let out = self.stowage(&["backup", "now", instance]);
        let (stdout, stderr) = stdout_and_stderr(&out);
        assert!(out.status.success(), "backup now {instance}: {stderr}");
        stdout.trim().to_owned()
    }

    /// Waits until `stage` of job `id` has ended (a backup goes on to vault-transfer, which no
    /// worker here runs); its record.
    async fn finished(&self, id: &str, stage: Stage) -> JobRecord {
        let mut last = None;
        let done = poll(WAIT, Duration::from_millis(200), async || {
            let record = read_job(&self.store, id).await.ok()?.0;
            let status = record.stage(stage).map(|run| run.status);
            last = Some(record.clone());
            matches!(status, Some(JobStatus::Succeeded | JobStatus::Failed)).then_some(record)
        })
        .await;
        done.unwrap_or_else(|| panic!("job {id} did not end: {last:#?}\n{}", self.logs()))
    }

    async fn stop(mut self) {
        for (_, child, _) in &self.workers {
            terminate(child);
        }
        for (name, child, _) in &mut self.workers {
            let status = child.wait().unwrap();
            assert!(status.success(), "worker {name} exited with {status}");
        }
        self.workers.clear();
        let mut topology = Topology::new(self.bus.names.clone(), &RetryPolicy::default());
        for cluster in ["A", "B", "C"] {
            topology.add_cluster(&RetryPolicy::default(), cluster);
        }
        self.bus.teardown(&topology).await;
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // A failed test still stops the processes it started.
        for (_, child, _) in &mut self.workers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The vault: its settings, a daily policy and the instances `shop-a` (cluster A), `shop-b`
/// (cluster B) and `shop-c` (cluster C, which no worker serves), each of namespace `shop`.
async fn catalog(store: &BlobStore) {
    let vault = samples::vault("main", "local");
    write_vault(store, &vault, WriteMode::Create).await.unwrap();
    let policy = samples::policy_every(
        "daily",
        24,
        Time::constant(3, 0, 0, 0),
        "UTC",
        7,
        &[(CalendarPeriod::Day, 30)],
    );
    write_policy(store, &policy, WriteMode::Create)
        .await
        .unwrap();
    for (name, cluster) in [("shop-a", "A"), ("shop-b", "B"), ("shop-c", "C")] {
        let instance = BackupInstance {
            name: name.into(),
            cluster: cluster.into(),
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
        write_instance(store, &instance, WriteMode::Create)
            .await
            .unwrap();
    }
}

/// The sample app's disks, in the disk provider both clusters reach.
async fn disks(root: &Path) {
    use stowage_disk::DiskProvider as _;
    let disks = stowage_disk::LocalDiskProvider::open(root).unwrap();
    for disk in ["shop-data", "blog-data"] {
        let info = disks.create_disk(disk, 4 * MIB).await.unwrap();
        disks
            .write(&info.id, MIB, &vec![0x5a; MIB as usize])
            .await
            .unwrap();
    }
}

/// Whether `cluster` has config map `name` in `namespace`.
async fn has_config_map(cluster: &SandboxHandle, namespace: &str, name: &str) -> bool {
    Api::<ConfigMap>::namespaced(cluster.client(), namespace)
        .get_opt(name)
        .await
        .expect("read config map")
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cluster_takes_only_its_own_jobs_and_an_unserved_clusters_wait() {
    let (_gate, bus) = stowage_tests::shared_rabbit_bus().await;
    let dir = TempDir::new("clusters");
    let store =
        BlobStore::local_folder(dir.path().join("vault"), LocalDurability::OsBuffered).unwrap();
    catalog(&store).await;
    disks(&dir.path().join("disks")).await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut fleet = Fleet {
        prefix: bus.names.prefix().to_owned(),
        bus,
        amqp_url: stowage_tests::amqp_url(),
        vault_key: format!("{id}{id}"),
        dir,
        store,
        workers: Vec::new(),
    };
    let a = Sandbox::sample_local().await.unwrap();
    let b = Sandbox::sample_local().await.unwrap();
    fleet.start_cluster_worker("A", &a).await;
    fleet.start_cluster_worker("B", &b).await;

    // Backups of A's and B's instances, interleaved: each runs on its own cluster's worker.
    let mut jobs = Vec::new();
    for _ in 0..BACKUPS {
        jobs.push(("A", fleet.backup_now("shop-a")));
        jobs.push(("B", fleet.backup_now("shop-b")));
    }
    let mut rp_of_a = None;
    for (cluster, job) in &jobs {
        let record = fleet.finished(job, Stage::Snapshot).await;
        let snapshot = record.stage(Stage::Snapshot).expect("a snapshot stage");
        assert_eq!(
            snapshot.status,
            JobStatus::Succeeded,
            "backup {job} of cluster {cluster}: {record:#?}\n{}",
            fleet.logs()
        );
        if *cluster == "A" {
            rp_of_a = record.recovery_point_id.clone();
        }
    }
    for (worker, other) in [("A", "B"), ("B", "A")] {
        assert_eq!(
            fleet.jobs(worker, Stage::Snapshot, "succeeded").await,
            BACKUPS as u64,
            "worker {worker} took exactly its cluster's {BACKUPS} backups, none of {other}'s"
        );
        assert_eq!(
            fleet.jobs(worker, Stage::Snapshot, "dead_lettered").await,
            0,
            "worker {worker} refused nothing (it was handed no instance of another cluster)"
        );
    }

    // A restore of A's recovery point into cluster B: B's restore worker runs it, into B.
    let rp = rp_of_a.expect("a recovery point of shop-a");
    let out = fleet.stowage(&[
        "restore",
        "create",
        "--instance",
        "shop-a",
        "--rp",
        &rp,
        "--from",
        "operational",
        "--namespaces",
        "shop",
        "--namespace-mapping",
        "shop=shop-moved",
        "--target-cluster",
        "B",
        "--restore-id",
        "move-to-b",
        "--wait",
        "--timeout",
        "90",
    ]);
    let (stdout, stderr) = stdout_and_stderr(&out);
    assert!(
        out.status.success(),
        "restore into B: {stdout}\n{stderr}\n{}",
        fleet.logs()
    );
    let record = fleet.finished("move-to-b", Stage::Restore).await;
    assert_eq!(record.status(), JobStatus::Succeeded, "{record:#?}");
    assert_eq!(fleet.jobs("B", Stage::Restore, "succeeded").await, 1);
    assert_eq!(fleet.jobs("A", Stage::Restore, "succeeded").await, 0);
    assert_eq!(fleet.jobs("A", Stage::Restore, "dead_lettered").await, 0);
    assert!(
        has_config_map(&b, "shop-moved", "web-config").await,
        "the restore wrote into cluster B"
    );
    assert!(
        Api::<Namespace>::all(a.client())
            .get_opt("shop-moved")
            .await
            .unwrap()
            .is_none(),
        "and nothing into cluster A"
    );

    // A backup of an instance of cluster C, which no worker serves: it waits in C's queue.
    let waiting = fleet.backup_now("shop-c");
    let names = Names::new(fleet.prefix.clone());
    let queue_c = names.cluster_queue(Stage::Snapshot, "C");
    let queued = poll(WAIT, Duration::from_millis(200), async || {
        (fleet.bus.depth(&queue_c).await == 1).then_some(())
    })
    .await;
    assert!(queued.is_some(), "the job for cluster C waits in {queue_c}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fleet.bus.depth(&queue_c).await,
        1,
        "still waiting, taken by no one"
    );
    assert_eq!(
        fleet
            .bus
            .depth(&names.dead_letter_queue(Stage::Snapshot))
            .await,
        0,
        "no dead letter"
    );
    let record = read_job(&fleet.store, &waiting).await.unwrap().0;
    assert_eq!(record.status(), JobStatus::Queued, "{record:#?}");
    for worker in ["A", "B"] {
        assert_eq!(
            fleet.jobs(worker, Stage::Snapshot, "succeeded").await,
            BACKUPS as u64,
            "worker {worker} did not take C's backup"
        );
    }
    fleet.stop().await;
}
