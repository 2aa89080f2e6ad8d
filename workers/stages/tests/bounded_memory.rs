//! Issue 15, item 3, at CI scale: an incremental transfer of a large sparse volume in a vault
//! whose chunk index is large reads only what changed and keeps the worker's memory bounded.
//! A binary of its own, so the peak RSS it reads is this test's alone. The full-scale figures
//! (1 TiB, 1 GiB of changes, 10 M chunks) come from `load-tests` (`tib-bench`, `index-bench`).

use std::sync::Arc;

use bytes::Bytes;
use rand::{RngExt as _, SeedableRng as _};
use stowage_disk::{DiskId, DiskProvider as _, LocalDiskProvider};
use stowage_runtime::JobContext;
use stowage_schemas::Stage;
use stowage_schemas::domain::{RecoveryPoint, VolumeBackup};
use stowage_stages::VaultContext;
use stowage_vault::chunk::ChunkId;
use stowage_vault::crypto::VaultKey;
use stowage_vault::index::{DedupIndex, SegmentEncoder};
use stowage_vault::layout;
use stowage_vault::pack::{ChunkLocation, PackId};
use stowage_vault::store::{BlobStore, LocalDurability};

const MIB: u64 = 1 << 20;
/// Entries synthesised into the index: as a whole-index load this was ~60 bytes each (60 MB).
const SYNTHETIC: u64 = 1_000_000;

fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .expect("VmHWM in /proc/self/status")
        * 1024
}

fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM");
}

/// A segment of `n` sorted synthetic ids (uniform, like keyed BLAKE3 ids), streamed.
async fn synthesise(store: &BlobStore, n: u64) {
    let key = layout::index_segment("synthetic").unwrap();
    let (encoder, header) = SegmentEncoder::new(n, Vec::new());
    let slot = u64::MAX / n;
    let stream = futures::stream::unfold(
        Some((encoder, Some(header), 0u64)),
        move |state| async move {
            let (mut encoder, header, mut i) = state?;
            let mut out = header.unwrap_or_default();
            while out.len() < MIB as usize && i < n {
                let mut bytes = *blake3::hash(&i.to_le_bytes()).as_bytes();
                let within = u64::from_le_bytes(bytes[..8].try_into().unwrap()) % slot;
                bytes[..8].copy_from_slice(&(i * slot + within).to_be_bytes());
                let location = ChunkLocation {
                    pack: PackId::for_job("synthetic", i / 8),
                    offset: 0,
                    length: 1,
                };
                if let Some(block) = encoder.push(&ChunkId::from_bytes(bytes), &location) {
                    out.extend_from_slice(&block);
                }
                i += 1;
            }
            if i == n {
                out.extend_from_slice(&encoder.finish());
                return Some((Ok::<_, std::io::Error>(Bytes::from(out)), None));
            }
            Some((Ok(Bytes::from(out)), Some((encoder, None, i))))
        },
    );
    store.put_stream_create_only(&key, stream).await.unwrap();
}

async fn transfer(
    ctx: &VaultContext,
    disks: &LocalDiskProvider,
    disk: &DiskId,
    rp: &str,
    size: u64,
) -> (stowage_vault::catalog::TransferStats, u64) {
    let snap = disks.snapshot(disk, rp).await.unwrap();
    let manifest = RecoveryPoint {
        id: rp.into(),
        instance: "big".into(),
        created_at: jiff::Timestamp::now(),
        tiers: Vec::new(),
        resources: String::new(),
        volumes: vec![VolumeBackup {
            volume_id: "big".into(),
            namespace: "ns".into(),
            pvc: "big".into(),
            size_bytes: size,
            snapshot_id: snap.id.0,
            vault_version: None,
            csi: None,
        }],
    };
    stowage_vault::catalog::write_recovery_point(&ctx.primary, &manifest)
        .await
        .unwrap();
    reset_peak_rss();
    let done = stowage_stages::vault_transfer::transfer(
        ctx,
        "big",
        rp,
        &JobContext::detached(Stage::VaultTransfer),
    )
    .await
    .unwrap();
    (done.stats, peak_rss())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_of_a_large_sparse_volume_in_a_large_vault_stays_bounded() {
    let work = tempfile_dir();
    let size = 64u64 << 30; // 64 GiB, sparse
    let disks = Arc::new(LocalDiskProvider::open(work.join("disks")).unwrap());
    let disk = disks.create_disk("big", size).await.unwrap();
    let store = BlobStore::local_folder(work.join("vault"), LocalDurability::Fsync).unwrap();
    synthesise(&store, SYNTHETIC).await;
    let ctx = VaultContext::new(store.clone(), VaultKey::generate().unwrap(), disks.clone());
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..16 {
        rng.fill(&mut buf[..]);
        let at = rng.random_range(0..size / MIB) * MIB;
        disks.write(&disk.id, at, &buf).await.unwrap();
    }
    let (full, _) = transfer(&ctx, &disks, &disk.id, "rp-0", size).await;
    assert!(full.bytes_read >= 15 * MIB, "{full:?}");

    // 64 MiB of changes in scattered 256 KiB writes.
    let write = 256 * 1024u64;
    let mut places = std::collections::BTreeSet::new();
    while places.len() < 256 {
        places.insert(rng.random_range(0..size / write));
    }
    let mut buf = vec![0u8; write as usize];
    for place in &places {
        rng.fill(&mut buf[..]);
        disks.write(&disk.id, place * write, &buf).await.unwrap();
    }
    let changed = places.len() as u64 * write;
    let (incremental, peak) = transfer(&ctx, &disks, &disk.id, "rp-1", size).await;
    // Only what changed is read (time follows the change, not the 64 GiB), and stored.
    assert_eq!(incremental.bytes_read, changed, "{incremental:?}");
    assert_eq!(incremental.chunks_new, 256, "{incremental:?}");
    // The index was consulted, not loaded: the synthetic segment's filter and fences are a
    // few MB, where its entries in memory were ~60 MB.
    let index = DedupIndex::open(&store).await.unwrap();
    let resident = index.segments().resident_bytes() as u64;
    assert!(index.segments().entries() > SYNTHETIC);
    assert!(
        resident < 4 * SYNTHETIC,
        "{resident} bytes resident for {SYNTHETIC} chunks"
    );
    eprintln!(
        "incremental: read {} MiB, peak RSS {} MiB; open index keeps {resident} bytes for {} entries",
        incremental.bytes_read / MIB,
        peak / MIB,
        index.segments().entries()
    );
    assert!(
        peak <= 128 * MIB,
        "peak RSS during the incremental transfer: {} MiB",
        peak / MIB
    );
    std::fs::remove_dir_all(&work).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("stowage-bounded-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
