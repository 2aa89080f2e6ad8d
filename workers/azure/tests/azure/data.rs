//! The page-blob data path against Azurite: page ranges, the diff between snapshots, bounded
//! parallel reads, hydration (with the ARM stand-in handing out Azurite SAS URLs), and
//! `endGetAccess` after a failure and a cancel.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use stowage_azure::data::{
    DataSettings, MAX_IO, PAGE_SIZE, PageBlob, PageRange, Previous, hydrate, merge, upload_size,
};
use stowage_azure::{AzureError, NewDisk, ResourceId};

use crate::arm_server::{ArmServer, SUBSCRIPTION};
use crate::azurite::{blob_url, blob_url_at, container, page_blob, snapshot};
use crate::diff_proxy::DiffProxy;
use crate::harness::client;

const MIB: u64 = 1 << 20;

fn random(len: u64) -> Vec<u8> {
    (0..len).map(|_| rand::random::<u8>() | 1).collect()
}

/// A disk image kept in memory beside the page blob, to compare with.
struct Model {
    bytes: Vec<u8>,
}

impl Model {
    fn new(size: u64) -> Self {
        Self {
            bytes: vec![0; size as usize],
        }
    }
    async fn put(&mut self, blob: &azure_storage_blob::PageBlobClient, offset: u64, data: Vec<u8>) {
        let len = data.len() as u64;
        self.bytes[offset as usize..(offset + len) as usize].copy_from_slice(&data);
        for start in (0..len).step_by(MAX_IO as usize) {
            let end = len.min(start + MAX_IO);
            let piece = Bytes::copy_from_slice(&data[start as usize..end as usize]);
            blob.upload_pages(
                <azure_core::http::RequestContent<Bytes, azure_core::http::NoFormat> as From<
                    Bytes,
                >>::from(piece),
                end - start,
                azure_storage_blob::models::HttpRange::new(offset + start, end - start),
                None,
            )
            .await
            .unwrap();
        }
    }
    async fn clear(&mut self, blob: &azure_storage_blob::PageBlobClient, offset: u64, len: u64) {
        self.bytes[offset as usize..(offset + len) as usize].fill(0);
        blob.clear_pages(
            azure_storage_blob::models::HttpRange::new(offset, len),
            None,
        )
        .await
        .unwrap();
    }
}

fn settings() -> DataSettings {
    DataSettings {
        concurrency: 4,
        retry: crate::harness::fast_retries(),
    }
}

fn r(offset: u64, len: u64) -> PageRange {
    PageRange { offset, len }
}

#[tokio::test]
async fn full_and_incremental_reads_of_page_blob_snapshots() {
    let c = container().await;
    let size = 64 * MIB;
    let disk = page_blob(&c, "disk-1");
    disk.create(size, None).await.unwrap();
    let mut model = Model::new(size);
    model.put(&disk, 0, random(MIB)).await;
    model.put(&disk, 10 * MIB, random(8192)).await;
    model.put(&disk, 20 * MIB, vec![0; MIB as usize]).await;
    model.put(&disk, 40 * MIB, random(4 * MIB + 512)).await;
    let first = model.bytes.clone();
    let s1 = snapshot(&c, "disk-1").await;

    model.put(&disk, 10 * MIB + 4096, random(4096)).await;
    model.put(&disk, 50 * MIB, random(MIB)).await;
    model.clear(&disk, 0, 64 * 1024).await;
    let s2 = snapshot(&c, "disk-1").await;
    // Writes after the snapshot must not show in it.
    model_after_snapshot_write(&disk).await;

    // A first version: the written pages of the snapshot, read in parallel, byte-exact.
    let v1 = PageBlob::new(blob_url(&c, "disk-1", Some(&s1)), &settings()).unwrap();
    let ranges = v1.page_ranges().await.unwrap();
    assert_eq!(
        ranges,
        vec![
            r(0, MIB),
            r(10 * MIB, 8192),
            r(20 * MIB, MIB),
            r(40 * MIB, 4 * MIB + 512)
        ]
    );
    let pieces: Vec<(u64, Bytes)> = v1.read_ranges(ranges.clone()).try_collect().await.unwrap();
    assert!(pieces.iter().all(|(_, b)| b.len() as u64 <= MAX_IO));
    let read: u64 = pieces.iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(read, ranges.iter().map(|r| r.len).sum::<u64>());
    for (offset, bytes) in &pieces {
        assert!(
            first[*offset as usize..*offset as usize + bytes.len()] == bytes[..],
            "bytes at {offset} differ"
        );
    }

    // Azurite ignores `prevsnapshot` (it lists every page of the newer snapshot): say so, so
    // that the proxy below is dropped when a release computes the diff itself.
    let direct = PageBlob::new(blob_url(&c, "disk-1", Some(&s2)), &settings()).unwrap();
    let azurite_diff = direct
        .changed_since(&Previous::BlobSnapshot(s1.clone()))
        .await
        .unwrap();
    assert!(
        azurite_diff.cleared.is_empty() && azurite_diff.written.len() == 5,
        "Azurite now answers the page-range diff ({azurite_diff:?}): test against it directly"
    );

    // An incremental version: only what changed between the two snapshots, through the proxy
    // that computes the diff as the service documents it.
    let proxy = DiffProxy::start().await;
    let v2 = PageBlob::new(
        blob_url_at(&proxy.endpoint, &c, "disk-1", Some(&s2)),
        &settings(),
    )
    .unwrap();
    let diff = v2
        .changed_since(&Previous::BlobSnapshot(s1.clone()))
        .await
        .unwrap();
    assert_eq!(
        diff.written,
        vec![r(10 * MIB + 4096, 4096), r(50 * MIB, MIB)],
        "{diff:?}"
    );
    assert_eq!(diff.cleared, vec![r(0, 64 * 1024)], "{diff:?}");
    // The managed-disk form: the previous snapshot named by its own SAS URL.
    let previous = blob_url_at(&proxy.endpoint, &c, "disk-1", Some(&s1));
    let by_url = v2
        .changed_since(&Previous::DiskSnapshot(previous))
        .await
        .unwrap();
    assert_eq!(by_url, diff);
    assert_eq!(proxy.diffs.load(std::sync::atomic::Ordering::SeqCst), 2);
    let changed = diff.changed();
    let pieces: Vec<(u64, Bytes)> = v2.read_ranges(changed.clone()).try_collect().await.unwrap();
    let read: u64 = pieces.iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(read, 64 * 1024 + 4096 + MIB, "read more than changed");
    for (offset, bytes) in &pieces {
        assert!(
            model.bytes[*offset as usize..*offset as usize + bytes.len()] == bytes[..],
            "bytes at {offset} differ"
        );
    }
}

async fn model_after_snapshot_write(disk: &azure_storage_blob::PageBlobClient) {
    let mut scratch = Model::new(64 * MIB);
    scratch.put(disk, 30 * MIB, random(4096)).await;
}

fn staging(server: &ArmServer, c: &str, name: &str) -> String {
    let id = ResourceId::disk(SUBSCRIPTION, "stowage-staging", name).to_string();
    server.lock().sas.insert(
        id.to_lowercase(),
        blob_url(c, name, None).expose().to_string(),
    );
    id
}

fn new_disk() -> NewDisk {
    NewDisk {
        location: "westeurope".into(),
        sku: None,
        tags: BTreeMap::new(),
    }
}

#[tokio::test]
async fn hydration_writes_the_pages_and_the_vhd_footer_and_ends_access() {
    let server = ArmServer::start().await;
    let arm = client(&server);
    let c = container().await;
    let data_size = 24 * MIB;
    let upload = upload_size(data_size);
    // ARM would create the upload disk's blob; Azurite needs it made by hand.
    page_blob(&c, "staging-1")
        .create(upload, None)
        .await
        .unwrap();
    let id = staging(&server, &c, "staging-1");

    let mut expected = vec![0u8; data_size as usize];
    let pieces: Vec<(u64, Vec<u8>)> = vec![
        (0, random(64 * 1024)),
        (2 * MIB, random(6 * MIB)), // split into 4 MiB Put Page calls
        (8 * MIB + 512 * 1024, vec![0; MIB as usize]), // all zero: skipped
        (data_size - 4096, random(4096)),
    ];
    for (offset, data) in &pieces {
        expected[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
    }
    let stream = stream::iter(pieces.into_iter().map(|(o, d)| Ok((o, Bytes::from(d)))));
    let disk = hydrate(
        &arm,
        "stowage-staging",
        "staging-1",
        data_size,
        &new_disk(),
        stream,
        &settings(),
    )
    .await
    .unwrap();
    assert_eq!(
        disk.properties.disk_state.as_deref(),
        Some("Unattached"),
        "endGetAccess did not run"
    );
    assert!(server.lock().grants.is_empty());
    assert_eq!(
        server.seen("PUT", "/disks/staging-1")[0].body["properties"]["creationData"]["uploadSizeBytes"],
        upload
    );

    let blob = PageBlob::new(blob_url(&c, "staging-1", None), &settings()).unwrap();
    let ranges = blob.page_ranges().await.unwrap();
    assert_eq!(
        ranges,
        merge(vec![
            r(0, 64 * 1024),
            r(2 * MIB, 6 * MIB),
            r(data_size - 4096, 4096 + PAGE_SIZE)
        ]),
        "the zero piece was written, or a piece is missing"
    );
    let whole: Vec<(u64, Bytes)> = blob
        .read_ranges(vec![r(0, upload)])
        .try_collect()
        .await
        .unwrap();
    let whole: Vec<u8> = whole.into_iter().flat_map(|(_, b)| b.to_vec()).collect();
    assert!(
        whole[..data_size as usize] == expected[..],
        "hydrated bytes differ"
    );
    assert_eq!(
        &whole[data_size as usize..data_size as usize + 8],
        b"conectix"
    );
    let _ = id;
}

async fn wait_for_no_grants(server: &ArmServer, what: &str) {
    for _ in 0..100 {
        if server.lock().grants.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: access was never ended: {:?}", server.lock().grants);
}

#[tokio::test]
async fn access_is_ended_after_a_failure_and_after_a_cancel() {
    let server = ArmServer::start().await;
    let arm = client(&server);
    let c = container().await;
    let data_size = 24 * MIB;
    for name in ["failing", "cancelled"] {
        page_blob(&c, name)
            .create(upload_size(data_size), None)
            .await
            .unwrap();
        staging(&server, &c, name);
    }

    // The source fails after one piece: the error comes back and access is ended.
    let failing = stream::iter(vec![
        Ok((0, Bytes::from(random(4096)))),
        Err(AzureError::Config("the vault went away".into())),
    ]);
    let err = hydrate(
        &arm,
        "stowage-staging",
        "failing",
        data_size,
        &new_disk(),
        failing,
        &settings(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("the vault went away"), "{err}");
    wait_for_no_grants(&server, "after a failure").await;

    // The source stalls and the job is cancelled (its future dropped): access is ended too.
    let stalled = stream::iter(vec![Ok((0, Bytes::from(random(4096))))]).chain(stream::pending());
    let cancelled = tokio::time::timeout(
        Duration::from_millis(500),
        hydrate(
            &arm,
            "stowage-staging",
            "cancelled",
            data_size,
            &new_disk(),
            stalled,
            &settings(),
        ),
    )
    .await;
    assert!(cancelled.is_err(), "the stalled hydration finished");
    assert_eq!(
        server.seen("POST", "/cancelled/beginGetAccess").len(),
        1,
        "access was never granted"
    );
    wait_for_no_grants(&server, "after a cancel").await;
    assert_eq!(server.seen("POST", "/cancelled/endGetAccess").len(), 1);
}
