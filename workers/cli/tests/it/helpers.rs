//! What the test modules share: running `stowage`, reading its output, temporary folders,
//! vault-transfer workers, the sample app to back up, and waiting for a condition.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stowage_disk::{DiskProvider, LocalDiskProvider};
use stowage_sandbox::{Sandbox, SandboxHandle};
use stowage_schemas::domain::{BackupInstance, Namespaces, Scope};
use stowage_schemas::jobs::{SnapshotJob, Trigger};
use stowage_schemas::{Envelope, Message};
use stowage_tests::amqp_url;
pub use stowage_tests::temp_dir;
use stowage_tests::vault_fixture::VaultFixture;
use stowage_vault::store::BlobStore;

const MIB: u64 = 1 << 20;

/// The `stowage` binary under test, as a command with nothing set.
pub fn stowage_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stowage"))
}

/// `stowage` on the broker at `amqp_url`, with topology names under `prefix`.
pub fn stowage_at(amqp_url: &str, prefix: &str) -> Command {
    let mut cmd = stowage_command();
    cmd.env("STOWAGE_AMQP_URL", amqp_url)
        .env("STOWAGE_TOPOLOGY_PREFIX", prefix);
    cmd
}

/// `stowage` on the tests' RabbitMQ ([`amqp_url`]), with topology names under `prefix`.
pub fn stowage_on(prefix: &str) -> Command {
    stowage_at(&amqp_url(), prefix)
}

/// Runs `cmd` to the end with `stdin` (nothing when `None`) as its input, capturing its output.
pub fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run stowage");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("wait stowage")
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A finished command's stdout and stderr, as text.
pub fn stdout_and_stderr(out: &Output) -> (String, String) {
    (text(&out.stdout), text(&out.stderr))
}

/// Sends SIGTERM to `child` (a worker or scheduler shutting down gracefully).
pub fn terminate(child: &Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
}

/// A [`temp_dir`] removed when the test ends.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new, empty folder.
    pub fn new(purpose: &str) -> Self {
        Self(temp_dir(purpose))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Gives a vault folder without settings those of a locally redundant vault (workers refuse an
/// uninitialised vault).
pub fn ensure_vault_settings(vault: &Path) {
    let settings = vault.join("vault.json");
    if !settings.exists() {
        std::fs::create_dir_all(vault).expect("vault folder");
        let sample = stowage_schemas::samples::vault("test", &vault.display().to_string());
        std::fs::write(&settings, serde_json::to_vec(&sample).expect("JSON")).expect("vault.json");
    }
}

/// `stowage worker --stage vault-transfer` on `dir`'s vault and disks (`<dir>/vault`,
/// `<dir>/disks`), on the broker at `amqp_url` under `prefix`, serving health on `port`. A
/// vault folder without settings gets those of a locally redundant vault (workers refuse an
/// uninitialised vault).
pub fn vault_transfer_worker(amqp_url: &str, prefix: &str, dir: &Path, port: u16) -> Command {
    ensure_vault_settings(&dir.join("vault"));
    let mut cmd = stowage_at(amqp_url, prefix);
    cmd.args(["worker", "--stage", "vault-transfer"])
        .arg("--health-addr")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--vault")
        .arg(dir.join("vault"))
        .arg("--disk-root")
        .arg(dir.join("disks"));
    cmd
}

/// A [`vault_transfer_worker`] on a vault fixture, with its key, on the tests' RabbitMQ under
/// `prefix`, on a free health port, logging warnings only.
pub fn fixture_worker(f: &VaultFixture, prefix: &str) -> Command {
    let mut cmd = vault_transfer_worker(&amqp_url(), prefix, &f.dir, stowage_tests::free_port());
    cmd.env("STOWAGE_VAULT_KEY", f.ctx.key.expose_secret_hex())
        .env("STOWAGE_LOG", "warn")
        // As the Deployments run workers (infra/k8s/base): glibc's per-thread arenas otherwise
        // add memory that grows with how busy the machine's other processes keep the
        // worker's threads, not with what the worker holds.
        .env("MALLOC_ARENA_MAX", "2");
    cmd
}

/// Asks `probe` every `every` until it answers, for at most `within`; `None` if it never did.
pub async fn poll<T>(
    within: Duration,
    every: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(answer) = probe().await {
            return Some(answer);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// The sample app on a sandbox cluster (`sandbox`), its two volumes' disks in `disk_root` —
/// `shop-data` (16 MiB) and `blog-data` (8 MiB), each with 2 MiB of its `fills` byte at 1 MiB —
/// and the backup instance `shop` of its namespaces shop and blog in `vault`.
pub async fn sample_app(
    disk_root: &Path,
    vault: &BlobStore,
    fills: [u8; 2],
) -> (Arc<LocalDiskProvider>, SandboxHandle) {
    let disks = Arc::new(LocalDiskProvider::open(disk_root).unwrap());
    for ((disk, size), fill) in [("shop-data", 16 * MIB), ("blog-data", 8 * MIB)]
        .into_iter()
        .zip(fills)
    {
        let info = disks.create_disk(disk, size).await.unwrap();
        disks
            .write(&info.id, MIB, &vec![fill; 2 * MIB as usize])
            .await
            .unwrap();
    }
    let sandbox = Sandbox::new();
    sandbox.load_sample_app().unwrap();
    let cluster = sandbox.start_local().await.unwrap();
    let instance = BackupInstance {
        name: "shop".into(),
        cluster: "sandbox".into(),
        vault: "v".into(),
        policy: "p".into(),
        scope: Scope {
            namespaces: Namespaces::List {
                names: vec!["shop".into(), "blog".into()],
            },
            ..Scope::default()
        },
        snapshot_location: "local".into(),
        hooks: Vec::new(),
    };
    vault
        .put_create_only(
            &stowage_vault::layout::instance("shop").unwrap(),
            serde_json::to_vec(&instance).unwrap(),
        )
        .await
        .unwrap();
    (disks, cluster)
}

/// The on-demand backup `backup-rp-1` of [`sample_app`]'s instance, as recovery point `rp-1`,
/// requested by `tests`, for the instance's cluster `sandbox`.
pub fn shop_backup() -> Envelope {
    Envelope::new(
        "backup-rp-1",
        Message::Snapshot(SnapshotJob {
            instance: "shop".into(),
            recovery_point_id: "rp-1".into(),
            trigger: Trigger::OnDemand {
                requested_by: Some("tests".into()),
            },
        }),
    )
    .on_cluster("sandbox")
}

/// The admin kubeconfig of `cluster` (CA and token of the sandbox's `admin`), written into a new
/// temporary folder: how kubectl and `stowage` processes reach a sandbox in tests.
pub fn admin_kubeconfig(cluster: &stowage_sandbox::SandboxHandle) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "stowage-kubeconfig-{}",
        uuid::Uuid::new_v4().simple()
    ));
    cluster
        .write_kubeconfigs(&dir)
        .expect("kubeconfigs written")
        .remove(stowage_sandbox::ADMIN)
        .expect("an admin kubeconfig")
}
