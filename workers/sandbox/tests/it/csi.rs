//! The sandbox's CSI snapshot controller and driver (`Sandbox::with_csi_disks`), driven only
//! through the API as the external-snapshotter's users drive a real cluster.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::core::ApiResource;
use serde_json::{Value, json};
use stowage_disk::{DiskId, DiskProvider, LocalDiskProvider, SnapshotId};
use stowage_sandbox::{LOCAL_SNAPSHOT_CLASS, Sandbox, SandboxHandle};

fn ar(api_version: &str, kind: &str, plural: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn snapshots(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &ar(
            "snapshot.storage.k8s.io/v1",
            "VolumeSnapshot",
            "volumesnapshots",
        ),
    )
}

fn contents(client: &kube::Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &ar(
            "snapshot.storage.k8s.io/v1",
            "VolumeSnapshotContent",
            "volumesnapshotcontents",
        ),
    )
}

fn object(value: Value) -> DynamicObject {
    serde_json::from_value(value).unwrap()
}

/// Polls `api` for `name` until `done` holds (the controller works in the background).
async fn eventually(
    api: &Api<DynamicObject>,
    name: &str,
    done: impl Fn(Option<&Value>) -> bool,
) -> Option<Value> {
    for _ in 0..200 {
        let current = api
            .get_opt(name)
            .await
            .unwrap()
            .map(|o| serde_json::to_value(o).unwrap());
        if done(current.as_ref()) {
            return current;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{name} never reached the expected state");
}

struct Cluster {
    dir: std::path::PathBuf,
    disks: Arc<LocalDiskProvider>,
    handle: SandboxHandle,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn cluster() -> Cluster {
    let dir = std::env::temp_dir().join(format!(
        "stowage-sandbox-csi-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let disks = Arc::new(LocalDiskProvider::open(dir.join("disks")).unwrap());
    let disk = disks.create_disk("shop-data", 1 << 20).await.unwrap();
    disks.write(&disk.id, 4096, b"orders table").await.unwrap();
    let sandbox = Sandbox::new().with_csi_disks(disks.clone());
    sandbox.load_sample_app().unwrap();
    let handle = sandbox.start_local().await.unwrap();
    Cluster { dir, disks, handle }
}

#[tokio::test]
async fn a_volume_snapshot_is_taken_bound_provisioned_from_and_deleted_with_its_data() {
    let c = cluster().await;
    let client = c.handle.client();
    let vs = snapshots(&client, "shop");
    vs.create(
        &PostParams::default(),
        &object(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": "before-upgrade", "namespace": "shop"},
            "spec": {"volumeSnapshotClassName": LOCAL_SNAPSHOT_CLASS,
                     "source": {"persistentVolumeClaimName": "data-db-0"}},
        })),
    )
    .await
    .unwrap();
    let ready = eventually(&vs, "before-upgrade", |o| {
        o.is_some_and(|o| o["status"]["readyToUse"] == true)
    })
    .await
    .unwrap();
    assert_eq!(ready["status"]["restoreSize"], (1u64 << 20).to_string());
    let content_name = ready["status"]["boundVolumeSnapshotContentName"]
        .as_str()
        .unwrap()
        .to_owned();
    let content =
        serde_json::to_value(contents(&client).get(&content_name).await.unwrap()).unwrap();
    assert_eq!(content["spec"]["driver"], "disk.stowage.local");
    assert_eq!(content["spec"]["deletionPolicy"], "Delete");
    assert_eq!(
        content["spec"]["volumeSnapshotRef"]["name"],
        "before-upgrade"
    );
    assert_eq!(content["status"]["restoreSize"], 1u64 << 20);
    let handle = SnapshotId(
        content["status"]["snapshotHandle"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    assert_eq!(
        c.disks.get_snapshot(&handle).await.unwrap().disk,
        DiskId("shop-data".into())
    );

    // Later writes do not reach the snapshot, nor a volume provisioned from it.
    c.disks
        .write(&DiskId("shop-data".into()), 4096, b"dropped table")
        .await
        .unwrap();
    let claims: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "shop",
        &ar("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    );
    claims.create(&PostParams::default(), &object(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-restored", "namespace": "shop"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-disk",
                 "resources": {"requests": {"storage": "1Mi"}},
                 "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "before-upgrade"}},
    }))).await.unwrap();
    let bound = eventually(&claims, "data-restored", |o| {
        o.is_some_and(|o| o["status"]["phase"] == "Bound")
    })
    .await
    .unwrap();
    let pvs: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ar("v1", "PersistentVolume", "persistentvolumes"),
    );
    let pv = serde_json::to_value(
        pvs.get(bound["spec"]["volumeName"].as_str().unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(pv["spec"]["claimRef"]["name"], "data-restored");
    let disk = DiskId(
        pv["spec"]["csi"]["volumeHandle"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    let mut buf = vec![0u8; 12];
    c.disks.read_disk(&disk, 4096, &mut buf).await.unwrap();
    assert_eq!(&buf, b"orders table");

    // Deleting the snapshot deletes its content and, by the class's Delete policy, the data.
    vs.delete("before-upgrade", &DeleteParams::default())
        .await
        .unwrap();
    eventually(&contents(&client), &content_name, |o| o.is_none()).await;
    assert!(c.disks.get_snapshot(&handle).await.is_err());
}

#[tokio::test]
async fn a_pre_bound_content_is_made_ready_kept_on_delete_and_a_failure_reported() {
    let c = cluster().await;
    let client = c.handle.client();
    let taken = c
        .disks
        .snapshot(&DiskId("shop-data".into()), "external-1")
        .await
        .unwrap();
    contents(&client)
        .create(
            &PostParams::default(),
            &object(json!({
                "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
                "metadata": {"name": "imported"},
                "spec": {"deletionPolicy": "Retain", "driver": "disk.stowage.local",
                         "source": {"snapshotHandle": taken.id.0},
                         "volumeSnapshotRef": {"name": "imported", "namespace": "blog"}},
            })),
        )
        .await
        .unwrap();
    let vs = snapshots(&client, "blog");
    vs.create(
        &PostParams::default(),
        &object(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": "imported", "namespace": "blog"},
            "spec": {"source": {"volumeSnapshotContentName": "imported"}},
        })),
    )
    .await
    .unwrap();
    eventually(&vs, "imported", |o| {
        o.is_some_and(|o| o["status"]["readyToUse"] == true)
    })
    .await;
    vs.delete("imported", &DeleteParams::default())
        .await
        .unwrap();
    eventually(&contents(&client), "imported", |o| {
        o.is_some_and(|o| o["status"]["orphaned"] == true)
    })
    .await;
    assert!(
        c.disks.get_snapshot(&taken.id).await.is_ok(),
        "Retain keeps the data"
    );

    // blog-data was never created: the driver's error is the snapshot's status.error.
    vs.create(
        &PostParams::default(),
        &object(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": "broken", "namespace": "blog"},
            "spec": {"volumeSnapshotClassName": LOCAL_SNAPSHOT_CLASS,
                     "source": {"persistentVolumeClaimName": "data-mysql-0"}},
        })),
    )
    .await
    .unwrap();
    let failed = eventually(&vs, "broken", |o| {
        o.is_some_and(|o| o["status"].get("error").is_some())
    })
    .await
    .unwrap();
    assert_eq!(failed["status"]["readyToUse"], false);
    let message = failed["status"]["error"]["message"].as_str().unwrap();
    assert!(message.contains("blog-data"), "{message}");
}
