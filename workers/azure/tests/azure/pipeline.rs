//! The whole pipeline with the Azure disk provider: a sandbox cluster whose PVC is bound to a
//! `disk.csi.azure.com` PV (its volumeHandle the ARM id of a disk the ARM stand-in knows, its
//! data an Azurite page blob), through the real stage handlers: snapshot → vault transfer →
//! geo-replication → hydration (from the secondary tier) → restore into a second cluster,
//! compared byte for byte. Then a transfer killed mid-way and one cancelled: access ends and
//! a redelivery finishes.
//!
//! The stand-in cannot copy data itself: before each snapshot job, the test takes the Azurite
//! blob snapshot the ARM snapshot stands for and tells the stand-in to hand out its SAS (the
//! name is the snapshot stage's `snapshot_name`); before hydration it makes the page blob the
//! upload disk stands for.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use stowage_azure::data::{DataSettings, PageBlob, PageRange, upload_size};
use stowage_azure::provider::arm_disk_name;
use stowage_azure::{AZURE_DISK_DRIVER, AzureDiskProvider, AzureDiskSettings, ResourceId};
use stowage_runtime::{CancellationToken, JobContext, Outcome, StageHandler};
use stowage_sandbox::{Sandbox, SandboxHandle};
use stowage_schemas::domain::{BackupInstance, Namespaces, Redundancy, Scope, Tier};
use stowage_schemas::events::{RestoreCompleted, RpCreated, RpVaulted};
use stowage_schemas::jobs::{
    GeoReplicationJob, RestoreHydrationJob, RestoreOptions, SnapshotJob, Trigger, VaultTransferJob,
};
use stowage_schemas::{Envelope, Message, Stage};
use stowage_stages::restore_hydration::staging_disk_name;
use stowage_stages::snapshot::snapshot_name;
use stowage_stages::{
    ClusterContext, GeoReplication, RestoreHydration, RestoreStage, SnapshotStage, VaultContext,
    VaultTransfer,
};
use stowage_vault::crypto::VaultKey;
use stowage_vault::layout;
use stowage_vault::store::{BlobStore, LocalDurability};

use crate::arm_server::{ArmServer, SUBSCRIPTION};
use crate::azurite::{blob_url, blob_url_at, container, delete_container, page_blob, snapshot};
use crate::diff_proxy::DiffProxy;
use crate::harness::{client, fast_retries};

const MIB: u64 = 1 << 20;
const INSTANCE: &str = "shop-azure";
const SOURCE_BLOB: &str = "pvc-shop";
const SNAPSHOT_GROUP: &str = "snaps";
const STAGING_GROUP: &str = "staging";

fn random(len: u64) -> Vec<u8> {
    (0..len).map(|_| rand::random::<u8>() | 1).collect()
}

/// The stand-in, Azurite (behind the diff proxy), a source and a `dr` sandbox, a geo vault in
/// two local folders, and the Azure provider between them.
struct Pipeline {
    server: ArmServer,
    proxy: DiffProxy,
    container: String,
    disk_id: String,
    size: u64,
    /// What the source disk holds now.
    model: Vec<u8>,
    dir: PathBuf,
    disks: Arc<AzureDiskProvider>,
    vault: VaultContext,
    cluster: ClusterContext,
    /// The source cluster, kept running while the stages use it.
    _source: SandboxHandle,
    dr: SandboxHandle,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn settings(idle_end: Duration) -> AzureDiskSettings {
    AzureDiskSettings {
        snapshot_group: SNAPSHOT_GROUP.into(),
        staging_group: STAGING_GROUP.into(),
        region: "westeurope".into(),
        staging_sku: None,
        read_access: Duration::from_secs(3600),
        idle_end,
        max_vault_disk_bytes: None,
        data: DataSettings {
            concurrency: 4,
            retry: fast_retries(),
        },
    }
}

/// A namespace `shop` with a config map and the claim `data` bound to a PV of the Azure
/// disk driver on `disk_id`.
fn source_cluster(disk_id: &str, size: u64) -> Sandbox {
    let sandbox = Sandbox::new();
    let size = format!("{}Mi", size / MIB);
    for object in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "db-config", "namespace": "shop"}, "data": {"engine": "postgres"}}),
        json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "pv-shop-data"},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": "managed-csi",
                "volumeMode": "Filesystem",
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "shop", "name": "data"},
                "csi": {"driver": AZURE_DISK_DRIVER, "volumeHandle": disk_id, "fsType": "ext4"},
            },
            "status": {"phase": "Bound"},
        }),
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "shop"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "managed-csi",
                "resources": {"requests": {"storage": size}},
                "volumeName": "pv-shop-data",
                "volumeMode": "Filesystem",
            },
            "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": size}},
        }),
    ] {
        sandbox.create(object).unwrap();
    }
    sandbox
}

impl Pipeline {
    async fn new(size: u64, idle_end: Duration) -> Self {
        let server = ArmServer::start().await;
        let proxy = DiffProxy::start().await;
        let container = container().await;
        page_blob(&container, SOURCE_BLOB)
            .create(size, None)
            .await
            .unwrap();
        let disk_id = server.add_disk("MC_rg_aks_westeurope", SOURCE_BLOB, size, "AllowAll");
        let dir =
            std::env::temp_dir().join(format!("stowage-azure-pipeline-{}", rand::random::<u64>()));
        let primary =
            BlobStore::local_folder(dir.join("vault"), LocalDurability::OsBuffered).unwrap();
        let secondary =
            BlobStore::local_folder(dir.join("secondary"), LocalDurability::OsBuffered).unwrap();
        let settings_json = stowage_schemas::domain::Vault {
            redundancy: Redundancy::Geo {
                secondary_location: dir.join("secondary").display().to_string(),
                secondary_region: "northeurope".into(),
            },
            ..stowage_schemas::samples::vault("v", &dir.join("vault").display().to_string())
        };
        primary
            .put_create_only(
                &layout::vault_settings(),
                serde_json::to_vec(&settings_json).unwrap(),
            )
            .await
            .unwrap();
        let instance = BackupInstance {
            name: INSTANCE.into(),
            cluster: "source".into(),
            vault: "v".into(),
            policy: "daily".into(),
            scope: Scope {
                namespaces: Namespaces::List {
                    names: vec!["shop".into()],
                },
                ..Scope::default()
            },
            snapshot_location: "westeurope".into(),
            hooks: Vec::new(),
        };
        let disks = Arc::new(AzureDiskProvider::new(client(&server), settings(idle_end)));
        let key = VaultKey::generate().unwrap();
        let vault = VaultContext::new(primary.clone(), key, disks.clone())
            .with_secondary(secondary.clone());
        vault
            .primary
            .put_create_only(
                &layout::instance(INSTANCE).unwrap(),
                serde_json::to_vec(&instance).unwrap(),
            )
            .await
            .unwrap();
        let source = source_cluster(&disk_id, size).start_local().await.unwrap();
        let dr = Sandbox::new().start_local().await.unwrap();
        let cluster = ClusterContext::new(
            vault.primary.clone(),
            disks.clone(),
            "source",
            source.target(),
        )
        .with_cluster("dr", dr.target())
        .with_secondary(vault.secondary.clone().expect("geo").store);
        Self {
            server,
            proxy,
            container,
            disk_id,
            size,
            model: vec![0u8; size as usize],
            dir,
            disks,
            vault,
            cluster,
            _source: source,
            dr,
        }
    }

    /// Writes `data` at `offset` of the source disk (the page blob) and the model.
    async fn write(&mut self, offset: u64, data: Vec<u8>) {
        self.model[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
        let len = data.len() as u64;
        let blob = page_blob(&self.container, SOURCE_BLOB);
        for (i, piece) in data.chunks(4 * MIB as usize).enumerate() {
            let at = offset + i as u64 * 4 * MIB;
            let n = piece.len() as u64;
            blob.upload_pages(
                <azure_core::http::RequestContent<Bytes, azure_core::http::NoFormat> as From<
                    Bytes,
                >>::from(Bytes::copy_from_slice(piece)),
                n,
                azure_storage_blob::models::HttpRange::new(at, n),
                None,
            )
            .await
            .unwrap();
        }
        assert!(len > 0);
    }

    /// What the ARM snapshot of `rp` stands for: a blob snapshot of the source blob now, its
    /// SAS (through the diff proxy) handed out for the snapshot the stage will name.
    async fn prepare_snapshot(&self, rp: &str) -> ResourceId {
        let taken = snapshot(&self.container, SOURCE_BLOB).await;
        let id = ResourceId::snapshot(
            SUBSCRIPTION,
            SNAPSHOT_GROUP,
            &snapshot_name(INSTANCE, rp, &self.disk_id),
        );
        self.serve(
            &id,
            blob_url_at(
                &self.proxy.endpoint,
                &self.container,
                SOURCE_BLOB,
                Some(&taken),
            ),
        );
        id
    }

    fn serve(&self, id: &ResourceId, sas: stowage_azure::SasUrl) {
        self.server
            .lock()
            .sas
            .insert(id.to_string().to_lowercase(), sas.expose().to_string());
    }

    async fn snapshot(&self, rp: &str) -> RpCreated {
        self.prepare_snapshot(rp).await;
        let job = Message::Snapshot(SnapshotJob {
            instance: INSTANCE.into(),
            recovery_point_id: rp.into(),
            trigger: Trigger::OnDemand {
                requested_by: Some("test".into()),
            },
        });
        let outcome = deliver(
            &SnapshotStage(self.cluster.clone()),
            &format!("snap-{rp}"),
            job,
        )
        .await;
        let [Message::RpCreated(created)] = outcome.messages() else {
            panic!("expected rp.created, got {:?}", outcome.messages());
        };
        created.clone()
    }

    fn transfer_job(rp: &str) -> Message {
        Message::VaultTransfer(VaultTransferJob {
            instance: INSTANCE.into(),
            recovery_point_id: rp.into(),
        })
    }

    async fn transfer(&self, rp: &str) -> RpVaulted {
        let outcome = deliver(
            &VaultTransfer(self.vault.clone()),
            &format!("vt-{rp}"),
            Self::transfer_job(rp),
        )
        .await;
        let [Message::RpVaulted(vaulted)] = outcome.messages() else {
            panic!("expected rp.vaulted, got {:?}", outcome.messages());
        };
        vaulted.clone()
    }

    /// Hydrates `rp` from `tier` into staging for `restore_id` (its page blob made first), and
    /// restores it into `dr`; answers the staging disk's blob name.
    async fn hydrate_and_restore(&self, rp: &str, tier: Tier, restore_id: &str) -> String {
        let volume_id = layout::escape_component(&self.disk_id);
        let name = staging_disk_name(restore_id, &volume_id);
        page_blob(&self.container, &name)
            .create(upload_size(self.size), None)
            .await
            .unwrap();
        // ARM names a disk in at most 80 characters: the provider maps the port's name.
        let staging = ResourceId::disk(SUBSCRIPTION, STAGING_GROUP, &arm_disk_name(&name));
        assert!(arm_disk_name(&name).len() <= 80);
        self.serve(&staging, blob_url(&self.container, &name, None));
        let options = RestoreOptions {
            target_cluster: Some("dr".into()),
            ..RestoreOptions::default()
        };
        let outcome = deliver(
            &RestoreHydration(self.vault.clone()),
            &format!("hy-{restore_id}"),
            Message::RestoreHydration(RestoreHydrationJob {
                restore_id: restore_id.into(),
                instance: INSTANCE.into(),
                recovery_point_id: rp.into(),
                tier,
                staging_location: None,
                options,
            }),
        )
        .await;
        let [Message::RestoreHydrated(hydrated)] = outcome.messages() else {
            panic!("expected restore.hydrated, got {:?}", outcome.messages());
        };
        assert_eq!(
            hydrated.staging.disks[0].disk_id, name,
            "staging disks travel by name"
        );
        let outcome = deliver(
            &RestoreStage(self.cluster.clone()),
            &format!("rs-{restore_id}"),
            Message::RestoreHydrated(hydrated.clone()),
        )
        .await;
        let [
            Message::RestoreCompleted(RestoreCompleted {
                volumes_restored, ..
            }),
        ] = outcome.messages()
        else {
            panic!("expected restore.completed, got {:?}", outcome.messages());
        };
        assert_eq!(*volumes_restored, 1);
        name
    }

    /// The bytes of blob `name`, read in 4 MiB pieces.
    async fn blob_bytes(&self, name: &str) -> Vec<u8> {
        let blob = PageBlob::new(
            blob_url(&self.container, name, None),
            &DataSettings {
                concurrency: 4,
                retry: fast_retries(),
            },
        )
        .unwrap();
        let mut out = Vec::with_capacity(self.size as usize);
        let mut at = 0;
        while at < self.size {
            let len = (4 * MIB).min(self.size - at);
            out.extend_from_slice(&blob.read(PageRange { offset: at, len }).await.unwrap());
            at += len;
        }
        out
    }

    async fn wait_for_no_grants(&self) {
        for _ in 0..200 {
            if self.server.lock().grants.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("access was never ended: {:?}", self.server.lock().grants);
    }

    /// `(beginGetAccess, endGetAccess)` calls the stand-in saw on resources named `name`.
    fn access_calls(&self, name: &str) -> (usize, usize) {
        (
            self.server
                .seen("POST", &format!("/{name}/beginGetAccess"))
                .len(),
            self.server
                .seen("POST", &format!("/{name}/endGetAccess"))
                .len(),
        )
    }
}

async fn deliver(handler: &impl StageHandler, id: &str, message: Message) -> Outcome {
    handler
        .handle_envelope(
            JobContext::detached(handler.stage()),
            Envelope::new(id, message),
        )
        .await
        .unwrap_or_else(|e| panic!("{id}: {e}"))
}

/// The restored claim `shop/data` in `dr`: bound to a new PV of the Azure disk driver whose
/// volumeHandle is the ARM id of staging disk `name`.
async fn assert_restored_claim(p: &Pipeline, name: &str) {
    let client = p.dr.client();
    let claims: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        client.clone(),
        "shop",
        &kube::core::ApiResource {
            group: "".into(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: "PersistentVolumeClaim".into(),
            plural: "persistentvolumeclaims".into(),
        },
    );
    let claim: Value = serde_json::to_value(claims.get("data").await.unwrap()).unwrap();
    let pv_name = claim["spec"]["volumeName"].as_str().unwrap().to_owned();
    let pvs: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(
        client,
        &kube::core::ApiResource {
            group: "".into(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: "PersistentVolume".into(),
            plural: "persistentvolumes".into(),
        },
    );
    let pv: Value = serde_json::to_value(pvs.get(&pv_name).await.unwrap()).unwrap();
    assert_eq!(pv["spec"]["csi"]["driver"], AZURE_DISK_DRIVER, "{pv}");
    assert_eq!(
        pv["spec"]["csi"]["volumeHandle"],
        ResourceId::disk(SUBSCRIPTION, STAGING_GROUP, &arm_disk_name(name)).to_string(),
        "{pv}"
    );
    assert_eq!(pv["spec"]["claimRef"]["name"], "data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_vault_geo_hydrate_and_restore_byte_exact() {
    let mut p = Pipeline::new(32 * MIB, Duration::from_millis(300)).await;
    p.write(0, random(256 * 1024)).await;
    p.write(5 * MIB, random(2 * MIB)).await;
    p.write(15 * MIB + 512, random(4096)).await;

    // rp-1: a full version.
    let created = p.snapshot("rp-1").await;
    assert_eq!((created.volume_count, created.volume_bytes), (1, 32 * MIB));
    assert!(created.warnings.is_empty(), "{:?}", created.warnings);
    let tags = p.server.lock().resources[&ResourceId::snapshot(
        SUBSCRIPTION,
        SNAPSHOT_GROUP,
        &snapshot_name(INSTANCE, "rp-1", &p.disk_id),
    )
    .to_string()
    .to_lowercase()]["tags"]
        .clone();
    assert_eq!(tags[stowage_azure::provider::TAG_DISK], p.disk_id.as_str());
    assert_eq!(tags[stowage_azure::provider::TAG_INSTANCE], INSTANCE);
    assert_eq!(tags[stowage_azure::provider::TAG_RECOVERY_POINT], "rp-1");
    let first = p.transfer("rp-1").await;
    let written = 256 * 1024 + 2 * MIB + 8192;
    assert!(
        first.bytes_read >= 256 * 1024 + 2 * MIB && first.bytes_read <= written + MIB,
        "a full version reads the allocated pages only: {first:?}"
    );
    let rp1_model = p.model.clone();

    // rp-2: an incremental, which reads only what changed since rp-1.
    p.write(5 * MIB + 64 * 1024, random(128 * 1024)).await;
    p.write(12 * MIB, random(64 * 1024)).await;
    let changed = 192 * 1024;
    p.snapshot("rp-2").await;
    let diffs_before = p.proxy.diffs.load(std::sync::atomic::Ordering::SeqCst);
    let second = p.transfer("rp-2").await;
    assert!(
        p.proxy.diffs.load(std::sync::atomic::Ordering::SeqCst) > diffs_before,
        "the incremental asked for the page-range diff"
    );
    assert!(
        second.bytes_read >= changed && second.bytes_read * 10 <= changed * 11,
        "an incremental reads the changed pages only ({changed} bytes changed): {second:?}"
    );
    // Access ends once the transfers are idle.
    p.wait_for_no_grants().await;

    // Geo-replication, then hydration from the secondary tier and a restore into dr.
    let outcome = deliver(
        &GeoReplication(p.vault.clone()),
        "geo-rp-2",
        Message::GeoReplication(GeoReplicationJob {
            instance: INSTANCE.into(),
            recovery_point_id: "rp-2".into(),
        }),
    )
    .await;
    assert!(
        matches!(outcome.messages(), [Message::RpReplicated(_)]),
        "{:?}",
        outcome.messages()
    );
    let name = p
        .hydrate_and_restore("rp-2", Tier::Secondary, "from-secondary")
        .await;
    assert_restored_claim(&p, &name).await;
    let restored = p.blob_bytes(&name).await;
    assert!(
        restored == p.model,
        "the restored disk differs from rp-2's source"
    );
    let (begin, end) = p.access_calls(&arm_disk_name(&name));
    assert!(
        begin == 1 && end >= 1,
        "hydration ended its write access: {begin} {end}"
    );
    let staging_id = ResourceId::disk(SUBSCRIPTION, STAGING_GROUP, &arm_disk_name(&name))
        .to_string()
        .to_lowercase();
    let hydrated_tag = p.server.lock().resources[&staging_id]["tags"]
        [stowage_azure::provider::TAG_HYDRATED]
        .clone();
    assert_eq!(hydrated_tag, p.size.to_string(), "hydration marked done");

    // rp-1 from the vault tier: the older version, byte for byte.
    let older = p.hydrate_only("rp-1").await;
    assert!(
        older == rp1_model,
        "rp-1 restored from the vault tier differs"
    );
    p.disks.end_all_access().await.unwrap();
    assert!(p.server.lock().grants.is_empty());
    delete_container(&p.container).await;
}

impl Pipeline {
    /// Hydrates `rp` from the vault tier into staging only (no restore), answering its bytes.
    async fn hydrate_only(&self, rp: &str) -> Vec<u8> {
        let restore_id = format!("vault-{rp}");
        let volume_id = layout::escape_component(&self.disk_id);
        let name = staging_disk_name(&restore_id, &volume_id);
        page_blob(&self.container, &name)
            .create(upload_size(self.size), None)
            .await
            .unwrap();
        self.serve(
            &ResourceId::disk(SUBSCRIPTION, STAGING_GROUP, &arm_disk_name(&name)),
            blob_url(&self.container, &name, None),
        );
        let outcome = deliver(
            &RestoreHydration(self.vault.clone()),
            &format!("hy-{restore_id}"),
            Message::RestoreHydration(RestoreHydrationJob {
                restore_id: restore_id.clone(),
                instance: INSTANCE.into(),
                recovery_point_id: rp.into(),
                tier: Tier::Vault,
                staging_location: None,
                options: RestoreOptions {
                    target_cluster: Some("dr".into()),
                    namespace_mapping: [("shop".to_string(), format!("shop-{rp}"))].into(),
                    ..RestoreOptions::default()
                },
            }),
        )
        .await;
        assert!(
            matches!(outcome.messages(), [Message::RestoreHydrated(_)]),
            "{:?}",
            outcome.messages()
        );
        self.blob_bytes(&name).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_transfer_ends_access_and_its_redelivery_finishes() {
    let mut p = Pipeline::new(32 * MIB, Duration::from_millis(300)).await;
    p.write(0, random(24 * MIB)).await;
    p.snapshot("rp-1").await;
    let name = snapshot_name(INSTANCE, "rp-1", &p.disk_id);

    // Killed: the handler's task is aborted once it holds the snapshot's read access, as a
    // worker dying mid-transfer leaves it.
    let vault = p.vault.clone();
    let running = tokio::spawn(async move {
        VaultTransfer(vault)
            .handle_envelope(
                JobContext::detached(Stage::VaultTransfer),
                Envelope::new("vt-rp-1", Pipeline::transfer_job("rp-1")),
            )
            .await
    });
    wait_for(
        || p.access_calls(&name).0 >= 1,
        "the transfer to begin access",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !running.is_finished(),
        "the transfer ended before it was killed"
    );
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());
    assert!(
        p.vault
            .primary
            .head(&layout::volume_version(&layout::escape_component(&p.disk_id), &name).unwrap())
            .await
            .is_err(),
        "a killed transfer saved no volume version"
    );
    // Its access is ended (after the idle time), not left open until the SAS expires.
    p.wait_for_no_grants().await;
    let (begin, end) = p.access_calls(&name);
    assert!(end >= 1 && end >= begin, "{begin} begin, {end} end");

    // The redelivery takes its own access, finishes, and ends it too.
    let vaulted = p.transfer("rp-1").await;
    assert!(vaulted.bytes_read >= 24 * MIB, "{vaulted:?}");
    p.wait_for_no_grants().await;
    let (begin_after, end_after) = p.access_calls(&name);
    assert!(
        begin_after > begin && end_after > end,
        "{begin_after} {end_after}"
    );
    let restored = p.hydrate_only("rp-1").await;
    assert!(
        restored == p.model,
        "the redelivered transfer's version differs"
    );
    p.disks.end_all_access().await.unwrap();
    delete_container(&p.container).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_transfer_ends_access() {
    let mut p = Pipeline::new(32 * MIB, Duration::from_millis(300)).await;
    p.write(0, random(24 * MIB)).await;
    p.snapshot("rp-1").await;
    let name = snapshot_name(INSTANCE, "rp-1", &p.disk_id);
    let token = CancellationToken::new();
    let vault = p.vault.clone();
    let ctx = JobContext::detached(Stage::VaultTransfer).with_cancellation(token.clone());
    let running = tokio::spawn(async move {
        VaultTransfer(vault)
            .handle_envelope(
                ctx,
                Envelope::new("vt-rp-1", Pipeline::transfer_job("rp-1")),
            )
            .await
    });
    wait_for(
        || p.access_calls(&name).0 >= 1,
        "the transfer to begin access",
    )
    .await;
    token.cancel();
    let err = running
        .await
        .unwrap()
        .expect_err("a cancelled transfer fails");
    assert_eq!(err.kind(), stowage_runtime::ErrorKind::Cancelled, "{err}");
    p.wait_for_no_grants().await;
    let (begin, end) = p.access_calls(&name);
    assert!(begin >= 1 && end >= begin, "{begin} begin, {end} end");
    delete_container(&p.container).await;
}

async fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}
