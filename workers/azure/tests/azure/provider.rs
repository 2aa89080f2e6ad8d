//! The disk port over Azure: the ARM stand-in for the control plane, handing out SAS URLs of
//! Azurite page blobs and blob snapshots (through the diff proxy) for the data.

use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, stream};
use stowage_azure::data::{DataSettings, PageBlob, upload_size};
use stowage_azure::provider::{TAG_DISK, TAG_HYDRATED};
use stowage_azure::{AZURE_DISK_DRIVER, AzureDiskProvider, AzureDiskSettings, ResourceId};
use stowage_disk::{ByteRange, DiskError, DiskId, DiskProvider, SnapshotId};

use crate::arm_server::{ArmServer, SUBSCRIPTION};
use crate::azurite::{blob_url, blob_url_at, container, page_blob, snapshot};
use crate::diff_proxy::DiffProxy;
use crate::harness::client;

const MIB: u64 = 1 << 20;

fn random(len: u64) -> Vec<u8> {
    (0..len).map(|_| rand::random::<u8>() | 1).collect()
}

async fn put(
    blob: &azure_storage_blob::PageBlobClient,
    model: &mut [u8],
    offset: u64,
    data: Vec<u8>,
) {
    model[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
    let len = data.len() as u64;
    blob.upload_pages(
        <azure_core::http::RequestContent<Bytes, azure_core::http::NoFormat> as From<Bytes>>::from(
            Bytes::from(data),
        ),
        len,
        azure_storage_blob::models::HttpRange::new(offset, len),
        None,
    )
    .await
    .unwrap();
}

fn provider(server: &ArmServer, idle_end: Duration) -> AzureDiskProvider {
    AzureDiskProvider::new(
        client(server),
        AzureDiskSettings {
            snapshot_group: "snaps".into(),
            staging_group: "staging".into(),
            region: "westeurope".into(),
            staging_sku: None,
            read_access: Duration::from_secs(3600),
            idle_end,
            max_vault_disk_bytes: None,
            data: DataSettings {
                concurrency: 4,
                retry: crate::harness::fast_retries(),
            },
        },
    )
}

/// Makes the ARM stand-in hand out `sas` for `id`.
fn serve(server: &ArmServer, id: &ResourceId, sas: &stowage_azure::SasUrl) {
    server
        .lock()
        .sas
        .insert(id.to_string().to_lowercase(), sas.expose().to_string());
}

async fn wait_for_no_grants(server: &ArmServer) {
    for _ in 0..100 {
        if server.lock().grants.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("access was never ended: {:?}", server.lock().grants);
}

#[tokio::test]
async fn snapshots_diffs_reads_hydration_and_deletes_through_the_port() {
    let server = ArmServer::start().await;
    let proxy = DiffProxy::start().await;
    let c = container().await;
    let size = 32 * MIB;
    let disk_blob = page_blob(&c, "pvc-1");
    disk_blob.create(size, None).await.unwrap();
    let mut model = vec![0u8; size as usize];
    put(&disk_blob, &mut model, 0, random(64 * 1024)).await;
    put(&disk_blob, &mut model, 8 * MIB, random(MIB)).await;
    let disk = DiskId(server.add_disk("MC_rg", "pvc-1", size, "AllowAll"));
    let disks = provider(&server, Duration::from_millis(300));
    assert_eq!(disks.driver(), AZURE_DISK_DRIVER);
    assert_eq!(disks.location_region(), Some("westeurope"));

    // First snapshot: no parent; taking it reads nothing and reports the whole disk.
    let s1 = snapshot(&c, "pvc-1").await;
    let snap1 = ResourceId::snapshot(SUBSCRIPTION, "snaps", "snap-1");
    serve(
        &server,
        &snap1,
        &blob_url_at(&proxy.endpoint, &c, "pvc-1", Some(&s1)),
    );
    let first = disks.snapshot(&disk, "snap-1").await.unwrap();
    // The port names the provider's own snapshots by name (vault keys and messages hold no
    // `/`); the ARM id is accepted too.
    assert_eq!(first.id, SnapshotId("snap-1".into()));
    assert_eq!(
        (first.parent.clone(), first.size, first.changed.clone()),
        (None, size, vec![ByteRange::new(0, size)])
    );
    assert!(
        server.seen("POST", "/beginGetAccess").is_empty(),
        "taking a snapshot read data"
    );
    // A redelivered snapshot job finds it.
    let again = disks.snapshot(&disk, "snap-1").await.unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(server.seen("PUT", "/snapshots/snap-1").len(), 1);
    assert_eq!(
        server.lock().resources[&snap1.to_string().to_lowercase()]["tags"][TAG_DISK],
        disk.as_str()
    );

    // Second snapshot: its parent is the first, and get_snapshot gives the precise diff.
    put(&disk_blob, &mut model, 8 * MIB + 4096, random(8192)).await;
    put(&disk_blob, &mut model, 20 * MIB, random(512)).await;
    let s2 = snapshot(&c, "pvc-1").await;
    let snap2 = ResourceId::snapshot(SUBSCRIPTION, "snaps", "snap-2");
    serve(
        &server,
        &snap2,
        &blob_url_at(&proxy.endpoint, &c, "pvc-1", Some(&s2)),
    );
    let second = disks.snapshot(&disk, "snap-2").await.unwrap();
    assert_eq!(second.parent, Some(first.id.clone()));
    let info = disks.get_snapshot(&second.id).await.unwrap();
    assert_eq!(info.parent, Some(first.id.clone()));
    assert_eq!(
        info.changed,
        vec![
            ByteRange::new(8 * MIB + 4096, 8192),
            ByteRange::new(20 * MIB, 4096)
        ]
    );
    let info1 = disks.get_snapshot(&first.id).await.unwrap();
    let by_arm_id = disks
        .get_snapshot(&SnapshotId(snap1.to_string()))
        .await
        .unwrap();
    assert_eq!(
        (by_arm_id.id, by_arm_id.changed),
        (first.id.clone(), info1.changed.clone())
    );
    assert_eq!(
        info1.changed,
        vec![ByteRange::new(0, 64 * 1024), ByteRange::new(8 * MIB, MIB)]
    );
    assert_eq!(
        disks.allocated_ranges(&second.id).await.unwrap(),
        vec![
            ByteRange::new(0, 64 * 1024),
            ByteRange::new(8 * MIB, MIB),
            ByteRange::new(20 * MIB, 4096)
        ]
    );

    // Reads are byte-exact, within bounds, and one SAS serves them all.
    for r in &info.changed {
        let mut buf = vec![0u8; r.len as usize];
        disks
            .read_snapshot(&second.id, r.offset, &mut buf)
            .await
            .unwrap();
        assert!(
            buf[..] == model[r.offset as usize..r.end() as usize],
            "bytes at {} differ",
            r.offset
        );
    }
    let mut big = vec![0u8; 6 * MIB as usize];
    disks
        .read_snapshot(&second.id, 6 * MIB, &mut big)
        .await
        .unwrap();
    assert!(big[..] == model[6 * MIB as usize..12 * MIB as usize]);
    let err = disks
        .read_snapshot(&second.id, size - 512, &mut [0u8; 1024])
        .await
        .unwrap_err();
    assert!(matches!(err, DiskError::OutOfBounds { .. }), "{err}");
    assert_eq!(
        server.seen("POST", "/snap-2/beginGetAccess").len(),
        1,
        "a SAS per read"
    );

    // Idle access is ended by the reaper.
    assert!(!server.lock().grants.is_empty());
    wait_for_no_grants(&server).await;
    assert!(!server.seen("POST", "/snap-2/endGetAccess").is_empty());

    // Hydration into staging, and a redelivery that finds it done.
    let data: Vec<(u64, Bytes)> = info1
        .changed
        .iter()
        .chain(&info.changed)
        .map(|r| {
            (
                r.offset,
                Bytes::copy_from_slice(&model[r.offset as usize..r.end() as usize]),
            )
        })
        .collect();
    page_blob(&c, "restored-1")
        .create(upload_size(size), None)
        .await
        .unwrap();
    let staging = ResourceId::disk(SUBSCRIPTION, "staging", "restored-1");
    serve(&server, &staging, &blob_url(&c, "restored-1", None));
    let pieces = stream::iter(data.clone().into_iter().map(Ok)).boxed();
    let restored = disks
        .create_disk_from_stream("restored-1", size, pieces)
        .await
        .unwrap();
    assert_eq!(restored.id, DiskId("restored-1".into()));
    assert_eq!(disks.volume_handle(&restored.id), staging.to_string());
    assert_eq!(
        disks.volume_handle(&disk),
        disk.as_str(),
        "an ARM id is its own handle"
    );
    let tags = server.lock().resources[&staging.to_string().to_lowercase()]["tags"].clone();
    assert_eq!(tags[TAG_HYDRATED], size.to_string());
    let copy = PageBlob::new(
        blob_url(&c, "restored-1", None),
        &DataSettings {
            concurrency: 4,
            retry: crate::harness::fast_retries(),
        },
    )
    .unwrap();
    for (offset, bytes) in &data {
        let got = copy
            .read(stowage_azure::data::PageRange {
                offset: *offset,
                len: bytes.len() as u64,
            })
            .await
            .unwrap();
        assert_eq!(got, bytes, "staging bytes at {offset}");
    }
    let pieces = stream::iter(data.into_iter().map(Ok)).boxed();
    disks
        .create_disk_from_stream("restored-1", size, pieces)
        .await
        .unwrap();
    assert_eq!(
        server.seen("POST", "/restored-1/beginGetAccess").len(),
        1,
        "a finished hydration was redone"
    );

    // Deletes end access first (a snapshot with an active SAS cannot be deleted) and repeat.
    let mut buf = [0u8; 512];
    disks.read_snapshot(&first.id, 0, &mut buf).await.unwrap();
    assert!(!server.lock().grants.is_empty());
    disks.delete_snapshot(&first.id).await.unwrap();
    disks.delete_snapshot(&first.id).await.unwrap();
    assert!(
        !server
            .lock()
            .resources
            .contains_key(&snap1.to_string().to_lowercase())
    );
    disks.delete_disk(&restored.id).await.unwrap();
    // With its parent gone, the second snapshot is read in full.
    let orphan = disks.get_snapshot(&second.id).await.unwrap();
    assert_eq!((orphan.parent, orphan.changed.len()), (None, 3));
    // A worker's shutdown ends what is open (the orphan's read access) through the port.
    assert!(!server.lock().grants.is_empty());
    let ends = server.seen("POST", "/endGetAccess").len();
    DiskProvider::shutdown(&disks).await.unwrap();
    assert!(server.lock().grants.is_empty());
    assert!(server.seen("POST", "/endGetAccess").len() > ends);

    // Not this provider's business: refused, permanently, saying why.
    let err = disks.create_disk("x", MIB).await.unwrap_err();
    assert!(
        !err.is_transient() && err.to_string().contains("CSI driver"),
        "{err}"
    );
}

#[tokio::test]
async fn private_disks_get_the_operational_tier_only() {
    let server = ArmServer::start().await;
    let disk = DiskId(server.add_disk("MC_rg", "secret", 4 * MIB, "AllowPrivate"));
    let disks = provider(&server, Duration::from_secs(60));
    let taken = disks.snapshot(&disk, "snap-p").await.unwrap();
    let err = disks.get_snapshot(&taken.id).await.unwrap_err();
    let text = err.to_string();
    assert!(!err.is_transient(), "{text}");
    assert!(
        text.contains("AllowPrivate")
            && text.contains("az snapshot update")
            && text.contains("--network-access-policy AllowAll"),
        "{text}"
    );
    let missing = disks
        .get_snapshot(&SnapshotId(
            ResourceId::snapshot(SUBSCRIPTION, "snaps", "nope").to_string(),
        ))
        .await
        .unwrap_err();
    assert!(matches!(missing, DiskError::NotFound { .. }), "{missing}");
    let bad = disks
        .snapshot(&DiskId("pvc-1".into()), "s")
        .await
        .unwrap_err();
    assert!(
        bad.to_string()
            .contains("is not a managed disk or snapshot id"),
        "{bad}"
    );
}
