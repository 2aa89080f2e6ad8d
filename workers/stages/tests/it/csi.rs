//! The CSI path (`SnapshotMode::Csi`) against a sandbox playing the external-snapshotter and
//! the CSI driver over local disks: VolumeSnapshots per PVC, waited for by watch, their
//! handles read by the vault tier, restores through a PVC `dataSource` (in place and into a
//! mapped namespace) and from the vault, a driver without a class skipped with a warning,
//! retention deleting the VolumeSnapshot, and a failing snapshot reported.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, DynamicObject};
use serde_json::{Value, json};
use stowage_cluster::csi::{volume_snapshot_contents, volume_snapshots};
use stowage_disk::{DiskId, DiskProvider, LocalDiskProvider, SnapshotId};
use stowage_runtime::{JobContext, StageError};
use stowage_sandbox::{LOCAL_SNAPSHOT_CLASS, Sandbox, SandboxHandle};
use stowage_schemas::Stage;
use stowage_schemas::domain::{BackupInstance, RecoveryPoint, Tier};
use stowage_schemas::events::RpCreated;
use stowage_schemas::jobs::{RestoreHydrationJob, RestoreOptions};
use stowage_stages::restore::{RestoreRequest, RestoreSource, restore};
use stowage_stages::snapshot::{snapshot_name, take_snapshot};
use stowage_stages::{ClusterContext, SnapshotMode, VaultContext, restore_hydration, retention};
use stowage_vault::catalog;
use stowage_vault::crypto::VaultKey;
use stowage_vault::layout;
use stowage_vault::store::{BlobStore, LocalDurability};

use crate::cluster_fixture::{
    CLAIM, DISK_SIZE, INSTANCE, get, mapping, namespaces, pattern, snapshot_job,
};

/// A vault (with a policy keeping the operational tier one day), local disks, and a source
/// sandbox holding the sample app whose CSI snapshots the sandbox takes of those disks.
struct CsiFixture {
    dir: std::path::PathBuf,
    vault: BlobStore,
    key: VaultKey,
    disks: Arc<LocalDiskProvider>,
    source: SandboxHandle,
    clock: Arc<std::sync::Mutex<Timestamp>>,
    ctx: ClusterContext,
}

impl Drop for CsiFixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl CsiFixture {
    async fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("stowage-csi-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let disks = Arc::new(LocalDiskProvider::open(dir.join("disks")).unwrap());
        let key = VaultKey::generate().unwrap();
        let vault = BlobStore::local_folder(dir.join("vault"), LocalDurability::OsBuffered)
            .unwrap()
            .with_key(&key);
        let info = disks.create_disk("shop-data", DISK_SIZE).await.unwrap();
        disks
            .write(&info.id, 0, &pattern(1, 64 << 10))
            .await
            .unwrap();
        disks
            .write(&info.id, (2 << 20) + 4096, &pattern(11, 8192))
            .await
            .unwrap();
        let sandbox = Sandbox::new().with_csi_disks(disks.clone());
        sandbox.load_sample_app().unwrap();
        let source = sandbox.start_local().await.unwrap();
        let clock = Arc::new(std::sync::Mutex::new(Timestamp::now()));
        let read = clock.clone();
        let ctx = ClusterContext::new(vault.clone(), disks.clone(), "source", source.target())
            .with_snapshot_mode(SnapshotMode::Csi)
            .with_clock(Arc::new(move || *read.lock().unwrap()));
        let f = Self {
            dir,
            vault,
            key,
            disks,
            source,
            clock,
            ctx,
        };
        let start = jiff::civil::time(2, 0, 0, 0);
        let policy = stowage_schemas::samples::policy_every("daily", 24, start, "UTC", 1, &[]);
        let instance = BackupInstance {
            name: INSTANCE.into(),
            cluster: "source".into(),
            vault: "vault".into(),
            policy: "daily".into(),
            scope: namespaces(&["shop"]),
            snapshot_location: "local".into(),
            hooks: Vec::new(),
        };
        for (key, value) in [
            (
                layout::vault_settings(),
                serde_json::to_vec(&stowage_schemas::samples::vault("vault", "/vault")).unwrap(),
            ),
            (
                layout::policy("daily").unwrap(),
                serde_json::to_vec(&policy).unwrap(),
            ),
            (
                layout::instance(INSTANCE).unwrap(),
                serde_json::to_vec(&instance).unwrap(),
            ),
        ] {
            f.vault.put_create_only(&key, value).await.unwrap();
        }
        f
    }

    fn client(&self) -> kube::Client {
        self.source.client()
    }

    fn vault_ctx(&self) -> VaultContext {
        VaultContext::new(
            self.vault.clone(),
            VaultKey::from_hex(&self.key.expose_secret_hex()).unwrap(),
            self.disks.clone(),
        )
        .with_csi_cluster("source", self.client())
    }

    async fn try_snapshot(&self, rp: &str) -> Result<RpCreated, StageError> {
        take_snapshot(
            &self.ctx,
            &snapshot_job(rp),
            &JobContext::detached(Stage::Snapshot),
        )
        .await
    }

    async fn rp(&self, rp: &str) -> RecoveryPoint {
        catalog::read_recovery_point(&self.vault, INSTANCE, rp)
            .await
            .unwrap()
    }

    /// The first [`DISK_SIZE`] bytes of `disk` (a provisioned disk is as large as its claim
    /// asks, 1 GiB in the sample, and never smaller than the snapshot).
    async fn bytes_of_disk(&self, disk: &str) -> Vec<u8> {
        let size = std::fs::metadata(self.disks.disk_path(&DiskId(disk.into())))
            .unwrap()
            .len();
        assert!(size >= DISK_SIZE, "disk {disk} is {size} bytes");
        let mut buf = vec![0u8; DISK_SIZE as usize];
        self.disks
            .read_disk(&DiskId(disk.into()), 0, &mut buf)
            .await
            .unwrap();
        buf
    }

    /// Waits until claim `ns/name` is bound (the sandbox's provisioner), answering its disk.
    async fn bound_disk(&self, ns: &str, name: &str) -> String {
        for _ in 0..200 {
            if let Some(claim) = get(&self.client(), CLAIM, Some(ns), name).await
                && claim["status"]["phase"] == "Bound"
            {
                let pv = get(
                    &self.client(),
                    ("v1", "PersistentVolume", "persistentvolumes"),
                    None,
                    claim["spec"]["volumeName"].as_str().unwrap(),
                )
                .await
                .unwrap();
                return pv["spec"]["csi"]["volumeHandle"]
                    .as_str()
                    .unwrap()
                    .to_owned();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("PVC {ns}/{name} was never bound");
    }
}

fn operational(rp: &str, restore_id: &str, options: RestoreOptions) -> RestoreRequest {
    RestoreRequest {
        restore_id: restore_id.into(),
        instance: INSTANCE.into(),
        recovery_point_id: rp.into(),
        source: RestoreSource::Operational,
        options,
    }
}

async fn volume_snapshot(client: &kube::Client, ns: &str, name: &str) -> Option<Value> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &volume_snapshots());
    api.get_opt(name)
        .await
        .unwrap()
        .map(|o| serde_json::to_value(o).unwrap())
}

#[tokio::test]
async fn csi_snapshots_go_to_the_vault_and_restore_byte_exact_in_place_mapped_and_from_the_vault() {
    let f = CsiFixture::new().await;
    let source_bytes = f.bytes_of_disk("shop-data").await;
    let created = f.try_snapshot("rp-1").await.unwrap();
    assert_eq!(created.volume_count, 1, "{created:?}");

    // The RP records the VolumeSnapshot and its content's handle and size.
    let rp = f.rp("rp-1").await;
    let volume = &rp.volumes[0];
    let csi = volume.csi.as_ref().expect("a CSI snapshot");
    assert_eq!(csi.name, snapshot_name(INSTANCE, "rp-1", "shop-data"));
    assert_eq!(csi.class, LOCAL_SNAPSHOT_CLASS);
    assert_eq!(csi.cluster, "source");
    assert_eq!(
        (volume.namespace.as_str(), volume.pvc.as_str()),
        ("shop", "data-db-0")
    );
    assert_eq!(volume.snapshot_id, csi.handle);
    assert_eq!(
        (volume.size_bytes, csi.restore_size),
        (DISK_SIZE, DISK_SIZE)
    );
    let vs = volume_snapshot(&f.client(), "shop", &csi.name)
        .await
        .unwrap();
    assert_eq!(vs["status"]["readyToUse"], true);
    assert_eq!(
        vs["status"]["boundVolumeSnapshotContentName"],
        csi.content.as_str()
    );
    assert_eq!(vs["metadata"]["labels"]["stowage.io/instance"], INSTANCE);
    assert_eq!(
        vs["metadata"]["labels"]["stowage.io/recovery-point"],
        "rp-1"
    );
    // The handle is the local provider's snapshot: frozen, even when the disk changes later.
    f.disks
        .write(&DiskId("shop-data".into()), 0, &pattern(99, 4096))
        .await
        .unwrap();
    assert_eq!(
        f.disks
            .get_snapshot(&SnapshotId(csi.handle.clone()))
            .await
            .unwrap()
            .size,
        DISK_SIZE
    );

    // A redelivered snapshot job takes no second snapshot.
    let again = take_snapshot(
        &f.ctx,
        &snapshot_job("rp-1"),
        &JobContext::detached(Stage::Snapshot),
    )
    .await
    .unwrap();
    assert_eq!(again.volume_count, 1);

    // The vault tier reads the handle through the local provider.
    let vctx = f.vault_ctx();
    let manifest = stowage_stages::vault_transfer::transfer(
        &vctx,
        INSTANCE,
        "rp-1",
        &JobContext::detached(Stage::VaultTransfer),
    )
    .await
    .unwrap();
    assert_eq!(manifest.volumes.len(), 1);
    assert_eq!(manifest.volumes[0].version, csi.handle);

    // Operational restore into a mapped namespace: a pre-bound content and snapshot there.
    let report = restore(
        &f.ctx,
        &operational("rp-1", "r-mapped", mapping("shop", "shop-copy")),
        &JobContext::detached(Stage::Restore),
    )
    .await
    .unwrap();
    assert_eq!(report.volumes_restored, 1, "{report:?}");
    let claim = get(&f.client(), CLAIM, Some("shop-copy"), "data-db-0")
        .await
        .unwrap();
    assert_eq!(claim["spec"]["dataSource"]["kind"], "VolumeSnapshot");
    let copy_name = claim["spec"]["dataSource"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(copy_name, csi.name, "a snapshot of the target namespace");
    let copy = volume_snapshot(&f.client(), "shop-copy", &copy_name)
        .await
        .unwrap();
    assert_eq!(
        copy["spec"]["source"]["volumeSnapshotContentName"],
        copy_name.as_str()
    );
    let contents: Api<DynamicObject> = Api::all_with(f.client(), &volume_snapshot_contents());
    let content = serde_json::to_value(contents.get(&copy_name).await.unwrap()).unwrap();
    assert_eq!(
        content["spec"]["source"]["snapshotHandle"],
        csi.handle.as_str()
    );
    assert_eq!(content["spec"]["deletionPolicy"], "Retain");
    let disk = f.bound_disk("shop-copy", "data-db-0").await;
    assert_ne!(disk, "shop-data");
    assert_eq!(
        f.bytes_of_disk(&disk).await,
        source_bytes,
        "mapped restore is byte-exact"
    );

    // In place: the claim is gone from its namespace; the RP's own VolumeSnapshot is used.
    let claims: Api<DynamicObject> = Api::namespaced_with(
        f.client(),
        "shop",
        &crate::cluster_fixture::ar("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    );
    claims
        .delete("data-db-0", &DeleteParams::default())
        .await
        .unwrap();
    let report = restore(
        &f.ctx,
        &operational("rp-1", "r-in-place", RestoreOptions::default()),
        &JobContext::detached(Stage::Restore),
    )
    .await
    .unwrap();
    assert_eq!(report.volumes_restored, 1, "{report:?}");
    let claim = get(&f.client(), CLAIM, Some("shop"), "data-db-0")
        .await
        .unwrap();
    assert_eq!(claim["spec"]["dataSource"]["name"], csi.name.as_str());
    let disk = f.bound_disk("shop", "data-db-0").await;
    assert_eq!(
        f.bytes_of_disk(&disk).await,
        source_bytes,
        "in-place restore is byte-exact"
    );

    // From the vault: hydration stages a disk from the chunks, and it holds the same bytes.
    let job = RestoreHydrationJob {
        restore_id: "r-vault".into(),
        instance: INSTANCE.into(),
        recovery_point_id: "rp-1".into(),
        tier: Tier::Vault,
        staging_location: None,
        options: RestoreOptions::default(),
    };
    let staging =
        restore_hydration::hydrate(&vctx, &job, &JobContext::detached(Stage::RestoreHydration))
            .await
            .unwrap();
    assert_eq!(staging.disks.len(), 1);
    assert_eq!(
        f.bytes_of_disk(&staging.disks[0].disk_id).await,
        source_bytes,
        "vault restore is byte-exact"
    );
}

#[tokio::test]
async fn a_driver_without_a_snapshot_class_is_skipped_with_a_warning_naming_it_and_the_fix() {
    let f = CsiFixture::new().await;
    let sandbox = f.source.sandbox();
    sandbox
        .create(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "pv-shop-files"},
            "spec": {
                "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                "claimRef": {"namespace": "shop", "name": "files"},
                "csi": {"driver": "nfs.csi.k8s.io", "volumeHandle": "nfs-server#share"},
            },
        }))
        .unwrap();
    sandbox
        .create(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "files", "namespace": "shop"},
            "spec": {"accessModes": ["ReadWriteMany"], "volumeName": "pv-shop-files",
                     "resources": {"requests": {"storage": "1Gi"}}},
        }))
        .unwrap();
    let created = f.try_snapshot("rp-1").await.unwrap();
    assert_eq!(
        created.volume_count, 1,
        "the local volume is still snapshotted"
    );
    let warning = created
        .warnings
        .iter()
        .find(|w| w.contains("PVC shop/files"))
        .unwrap_or_else(|| panic!("no warning for shop/files: {:?}", created.warnings));
    assert!(warning.contains("nfs.csi.k8s.io"), "{warning}");
    assert!(
        warning.contains("create a VolumeSnapshotClass with driver: nfs.csi.k8s.io"),
        "{warning}"
    );
    let rp = f.rp("rp-1").await;
    assert!(rp.volumes.iter().all(|v| v.pvc != "files"));
}

#[tokio::test]
async fn retention_deletes_the_volume_snapshot_and_the_driver_its_data() {
    let f = CsiFixture::new().await;
    let t0: Timestamp = "2026-05-01T02:00:00Z".parse().unwrap();
    *f.clock.lock().unwrap() = t0;
    f.try_snapshot("old").await.unwrap();
    *f.clock.lock().unwrap() = t0 + SignedDuration::from_hours(48);
    f.try_snapshot("new").await.unwrap();
    let old = f.rp("old").await.volumes[0].csi.clone().unwrap();
    let new = f.rp("new").await.volumes[0].csi.clone().unwrap();
    assert!(
        volume_snapshot(&f.client(), "shop", &old.name)
            .await
            .is_some()
    );

    // Without the cluster, the expired tier waits: nothing is deleted, the RP stays.
    let blind = VaultContext::new(
        f.vault.clone(),
        VaultKey::from_hex(&f.key.expose_secret_hex()).unwrap(),
        f.disks.clone(),
    );
    let as_of = t0 + SignedDuration::from_hours(50);
    retention::run_at(&blind, INSTANCE, as_of, as_of)
        .await
        .unwrap();
    assert!(
        volume_snapshot(&f.client(), "shop", &old.name)
            .await
            .is_some()
    );
    assert!(
        catalog::read_recovery_point(&f.vault, INSTANCE, "old")
            .await
            .is_ok()
    );

    let report = retention::run_at(&f.vault_ctx(), INSTANCE, as_of, as_of)
        .await
        .unwrap();
    assert_eq!(report.snapshots_deleted, 1, "{report:?}");
    assert!(
        volume_snapshot(&f.client(), "shop", &old.name)
            .await
            .is_none()
    );
    assert!(
        catalog::read_recovery_point(&f.vault, INSTANCE, "old")
            .await
            .unwrap_err()
            .is_not_found()
    );
    // The class says Delete: the snapshotter removes the content and the driver the data.
    let contents: Api<DynamicObject> = Api::all_with(f.client(), &volume_snapshot_contents());
    for _ in 0..200 {
        if contents.get_opt(&old.content).await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(contents.get_opt(&old.content).await.unwrap().is_none());
    assert!(
        f.disks
            .get_snapshot(&SnapshotId(old.handle.clone()))
            .await
            .is_err()
    );
    // The newest is kept.
    assert!(
        volume_snapshot(&f.client(), "shop", &new.name)
            .await
            .is_some()
    );
}

#[tokio::test]
async fn a_failing_snapshot_is_reported_with_the_drivers_error() {
    let f = CsiFixture::new().await;
    // The blog's disk was never created: the driver cannot snapshot it.
    let mut ctx = f.ctx.clone();
    ctx.csi_ready_timeout = Duration::from_secs(20);
    let instance = BackupInstance {
        name: "blog".into(),
        cluster: "source".into(),
        vault: "vault".into(),
        policy: "daily".into(),
        scope: namespaces(&["blog"]),
        snapshot_location: "local".into(),
        hooks: Vec::new(),
    };
    f.vault
        .put_create_only(
            &layout::instance("blog").unwrap(),
            serde_json::to_vec(&instance).unwrap(),
        )
        .await
        .unwrap();
    let mut job = snapshot_job("rp-1");
    job.instance = "blog".into();
    let error = take_snapshot(&ctx, &job, &JobContext::detached(Stage::Snapshot))
        .await
        .unwrap_err()
        .to_string();
    let name = snapshot_name("blog", "rp-1", "blog-data");
    assert!(
        error.contains(&format!("VolumeSnapshot blog/{name} failed")),
        "{error}"
    );
    assert!(
        error.contains("blog-data"),
        "the driver's message names the disk: {error}"
    );
    assert!(error.contains("disk.stowage.local"), "{error}");
    assert!(
        catalog::read_recovery_point(&f.vault, "blog", "rp-1")
            .await
            .is_err()
    );
}
