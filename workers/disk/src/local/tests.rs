use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};

use super::*;
use crate::merge_ranges;
use crate::ranges::BLOCK_SIZE;

const MIB: u64 = 1 << 20;

/// A provider over a fresh folder, removed on drop.
struct Fixture {
    provider: LocalDiskProvider,
    root: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

impl std::ops::Deref for Fixture {
    type Target = LocalDiskProvider;

    fn deref(&self) -> &LocalDiskProvider {
        &self.provider
    }
}

fn fixture() -> Fixture {
    let root = std::env::temp_dir().join(format!("stowage-disk-test-{}", uuid::Uuid::new_v4()));
    let provider = LocalDiskProvider::open(&root).unwrap();
    Fixture { provider, root }
}

/// A [`fixture`] holding one empty disk, `name`, of `size` bytes.
async fn fixture_with_disk(name: &str, size: u64) -> Fixture {
    let f = fixture();
    f.create_disk(name, size).await.unwrap();
    f
}

fn d(name: &str) -> DiskId {
    DiskId(name.to_owned())
}

fn s(name: &str) -> SnapshotId {
    SnapshotId(name.to_owned())
}

fn random(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    rng.fill_bytes(&mut v);
    v
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// Write through the provider and into the in-memory model.
async fn write(p: &LocalDiskProvider, model: &mut [u8], disk: &str, offset: u64, data: &[u8]) {
    p.write(&d(disk), offset, data).await.unwrap();
    model[offset as usize..offset as usize + data.len()].copy_from_slice(data);
}

async fn read_snapshot_all(p: &LocalDiskProvider, id: &str, size: u64) -> Vec<u8> {
    let mut out = vec![0; size as usize];
    for (i, chunk) in out.chunks_mut(MIB as usize).enumerate() {
        p.read_snapshot(&s(id), i as u64 * MIB, chunk)
            .await
            .unwrap();
    }
    out
}

async fn read_disk_all(p: &LocalDiskProvider, id: &str, size: u64) -> Vec<u8> {
    let mut out = vec![0; size as usize];
    for (i, chunk) in out.chunks_mut(MIB as usize).enumerate() {
        p.read_disk(&d(id), i as u64 * MIB, chunk).await.unwrap();
    }
    out
}

fn aligned(writes: &[(u64, usize)], size: u64) -> Vec<ByteRange> {
    merge_ranges(
        writes
            .iter()
            .map(|&(o, l)| ByteRange::new(o, l as u64).align_out(size)),
    )
}

fn covers(outer: &[ByteRange], inner: &[ByteRange]) -> bool {
    inner.iter().all(|r| {
        outer
            .iter()
            .any(|o| o.offset <= r.offset && r.end() <= o.end())
    })
}

#[tokio::test]
async fn snapshots_round_trip_and_track_changes() {
    let p = &fixture();
    let size = 8 * MIB;
    let mut rng = StdRng::seed_from_u64(7);
    let mut model = vec![0u8; size as usize];
    assert_eq!(
        p.create_disk("vol-1", size).await.unwrap(),
        DiskInfo {
            id: d("vol-1"),
            size
        }
    );

    // Patterned and random data, some of it unaligned.
    let first: Vec<(u64, Vec<u8>)> = vec![
        (0, pattern(MIB as usize, 3)),
        (3 * MIB + 100, random(&mut rng, 300_000)),
        (6 * MIB - 5, pattern(10, 9)),
        (size - 4096, random(&mut rng, 4096)),
    ];
    for (offset, data) in &first {
        write(p, &mut model, "vol-1", *offset, data).await;
    }
    let s1 = p.snapshot(&d("vol-1"), "snap-1").await.unwrap();
    assert_eq!(s1.parent, None);
    assert_eq!(s1.size, size);
    let first_ranges: Vec<(u64, usize)> = first.iter().map(|(o, v)| (*o, v.len())).collect();
    assert_eq!(s1.changed, aligned(&first_ranges, size));
    assert_eq!(read_snapshot_all(p, "snap-1", size).await, model);
    assert_eq!(read_disk_all(p, "vol-1", size).await, model);
    let allocated = p.allocated_ranges(&s("snap-1")).await.unwrap();
    assert!(
        covers(&allocated, &s1.changed),
        "allocated {allocated:?} must cover {:?}",
        s1.changed
    );
    assert!(
        allocated.iter().map(|r| r.len).sum::<u64>() < 2 * MIB,
        "holes are not allocated: {allocated:?}"
    );
    let snap1_model = model.clone();

    // Scattered small writes: the next snapshot lists exactly their aligned ranges.
    let mut second = Vec::new();
    for _ in 0..40 {
        let len = rng.random_range(1..6000usize);
        let offset = rng.random_range(0..size - len as u64);
        let data = random(&mut rng, len);
        write(p, &mut model, "vol-1", offset, &data).await;
        second.push((offset, len));
    }
    let s2 = p.snapshot(&d("vol-1"), "snap-2").await.unwrap();
    assert_eq!(s2.parent, Some(s("snap-1")));
    assert_eq!(s2.changed, aligned(&second, size));
    assert!(
        s2.changed
            .iter()
            .all(|r| r.offset % BLOCK_SIZE == 0 && r.len % BLOCK_SIZE == 0)
    );
    assert_eq!(read_snapshot_all(p, "snap-2", size).await, model);
    // The first snapshot is unaffected.
    assert_eq!(read_snapshot_all(p, "snap-1", size).await, snap1_model);
    assert_eq!(p.get_snapshot(&s("snap-2")).await.unwrap(), s2);

    // Nothing written: an empty change list.
    let s3 = p.snapshot(&d("vol-1"), "snap-3").await.unwrap();
    assert_eq!(s3.parent, Some(s("snap-2")));
    assert!(s3.changed.is_empty());
}

#[tokio::test]
async fn snapshot_is_point_in_time_and_idempotent() {
    let size = 2 * MIB;
    let p = &fixture_with_disk("a", size).await;
    let mut model = vec![0u8; size as usize];
    write(p, &mut model, "a", 4096, &pattern(8192, 1)).await;
    let s1 = p.snapshot(&d("a"), "a-1").await.unwrap();
    let frozen = model.clone();

    write(p, &mut model, "a", 0, &pattern(100_000, 2)).await;
    assert_eq!(read_snapshot_all(p, "a-1", size).await, frozen);
    assert_eq!(read_disk_all(p, "a", size).await, model);

    // A redelivered snapshot job gets the same snapshot, and the change log is untouched.
    let again = p.snapshot(&d("a"), "a-1").await.unwrap();
    assert_eq!(again, s1);
    assert_eq!(read_snapshot_all(p, "a-1", size).await, frozen);
    let s2 = p.snapshot(&d("a"), "a-2").await.unwrap();
    assert_eq!(s2.parent, Some(s("a-1")));
    assert_eq!(s2.changed, vec![ByteRange::new(0, 102_400)]);

    // Snapshot names are unique across disks.
    p.create_disk("b", size).await.unwrap();
    let err = p.snapshot(&d("b"), "a-1").await.unwrap_err();
    assert!(
        matches!(err, DiskError::Conflict { what, .. } if what == "snapshot"),
        "{err}"
    );
    assert!(
        err.to_string().contains("\"a-1\"") && err.to_string().contains("\"a\""),
        "{err}"
    );
}

#[tokio::test]
async fn hydration_from_a_stream_keeps_holes_and_is_idempotent() {
    let size = 32 * MIB;
    let p = &fixture_with_disk("src", size).await;
    let mut rng = StdRng::seed_from_u64(11);
    let mut model = vec![0u8; size as usize];
    write(p, &mut model, "src", 0, &random(&mut rng, 3 * MIB as usize)).await;
    write(
        p,
        &mut model,
        "src",
        9 * MIB + 17,
        &pattern(12 * MIB as usize, 5),
    )
    .await;
    write(p, &mut model, "src", 30 * MIB, &random(&mut rng, 5000)).await;
    p.snapshot(&d("src"), "src-1").await.unwrap();
    let ranges = p.allocated_ranges(&s("src-1")).await.unwrap();

    // Stream the allocated ranges in 256 KiB pieces, the way restore-hydration will.
    let mut pieces = Vec::new();
    for r in &ranges {
        let mut pos = r.offset;
        while pos < r.end() {
            let n = (r.end() - pos).min(256 * 1024) as usize;
            let mut buf = vec![0; n];
            p.read_snapshot(&s("src-1"), pos, &mut buf).await.unwrap();
            pieces.push((pos, Bytes::from(buf)));
            pos += n as u64;
        }
    }
    for _ in 0..2 {
        let stream = futures::stream::iter(pieces.clone().into_iter().map(Ok)).boxed();
        let info = p
            .create_disk_from_stream("restored", size, stream)
            .await
            .unwrap();
        assert_eq!(
            info,
            DiskInfo {
                id: d("restored"),
                size
            }
        );
        assert_eq!(read_disk_all(p, "restored", size).await, model);
    }
    let written: u64 = ranges.iter().map(|r| r.len).sum();
    let blocks = fs::metadata(p.disk_path(&d("restored"))).unwrap().blocks() * 512;
    assert!(
        blocks <= written + 4 * MIB,
        "holes stay holes: {blocks} bytes allocated for {written} written"
    );

    // The hydrated disk tracks its writes: its first snapshot lists what the stream wrote.
    let r1 = p.snapshot(&d("restored"), "restored-1").await.unwrap();
    assert!(covers(&r1.changed, &ranges));
    assert_eq!(read_snapshot_all(p, "restored-1", size).await, model);

    // A stream error fails the call; a piece out of bounds is refused.
    let failing = futures::stream::iter(vec![Err(DiskError::NotFound {
        what: "chunk",
        id: "c1".into(),
    })])
    .boxed();
    assert!(p.create_disk_from_stream("x", size, failing).await.is_err());
    let oob = futures::stream::iter(vec![Ok((size - 1, Bytes::from_static(b"ab")))]).boxed();
    let err = p.create_disk_from_stream("y", size, oob).await.unwrap_err();
    assert!(matches!(err, DiskError::OutOfBounds { .. }), "{err}");
}

#[tokio::test]
async fn sparse_64_gib_disk_never_reads_holes() {
    let size: u64 = 64 << 30;
    let p = &fixture_with_disk("big", size).await;
    let mut rng = StdRng::seed_from_u64(64);

    // A few MiB in all: large writes in distinct GiB slots, then scattered 4 KiB ones.
    let mut writes: Vec<(u64, Vec<u8>)> = vec![
        (0, random(&mut rng, MIB as usize)),
        ((17 << 30) + 12_345, pattern(MIB as usize, 7)),
        (size - 512 * 1024, random(&mut rng, 512 * 1024)),
    ];
    for slot in 20..60u64 {
        let offset = (slot << 30) + rng.random_range(0..1u64 << 29);
        writes.push((offset, random(&mut rng, 4096)));
    }
    for (offset, data) in &writes {
        p.write(&d("big"), *offset, data).await.unwrap();
    }

    let start = Instant::now();
    let snap = p.snapshot(&d("big"), "big-1").await.unwrap();
    let allocated = p.allocated_ranges(&s("big-1")).await.unwrap();
    for r in &snap.changed {
        let mut pos = r.offset;
        while pos < r.end() {
            let mut buf = vec![0; (r.end() - pos).min(MIB) as usize];
            p.read_snapshot(&s("big-1"), pos, &mut buf).await.unwrap();
            pos += buf.len() as u64;
        }
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(10),
        "snapshot + ranges + reads took {elapsed:?}"
    );

    let list: Vec<(u64, usize)> = writes.iter().map(|(o, v)| (*o, v.len())).collect();
    assert_eq!(snap.changed, aligned(&list, size));
    assert!(covers(&allocated, &snap.changed));
    let allocated_bytes: u64 = allocated.iter().map(|r| r.len).sum();
    assert!(
        allocated_bytes < 16 * MIB,
        "{allocated_bytes} bytes listed as allocated"
    );
    let snap_meta = fs::metadata(p.snapshot_path(&s("big-1"))).unwrap();
    assert_eq!(snap_meta.len(), size);
    assert!(
        snap_meta.blocks() * 512 < 16 * MIB,
        "snapshot image holds {} bytes",
        snap_meta.blocks() * 512
    );
    for (offset, data) in &writes {
        let mut buf = vec![0; data.len()];
        p.read_snapshot(&s("big-1"), *offset, &mut buf)
            .await
            .unwrap();
        assert!(buf == *data, "snapshot bytes at {offset}");
    }
    // A hole reads as zeros.
    let mut hole = vec![1u8; 4096];
    p.read_snapshot(&s("big-1"), (10 << 30) + 8192, &mut hole)
        .await
        .unwrap();
    assert!(hole.iter().all(|&b| b == 0));

    // An incremental snapshot of the big disk is as cheap.
    p.write(&d("big"), 5 << 30, &[7; 100]).await.unwrap();
    let start = Instant::now();
    let snap2 = p.snapshot(&d("big"), "big-2").await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(snap2.changed, vec![ByteRange::new(5 << 30, 4096)]);
    assert_eq!(snap2.parent, Some(s("big-1")));
}

#[tokio::test]
async fn deletes_are_idempotent_and_snapshots_outlive_disks() {
    let p = &fixture();
    p.create_disk("gone", MIB).await.unwrap();
    p.write(&d("gone"), 0, b"hello").await.unwrap();
    p.snapshot(&d("gone"), "gone-1").await.unwrap();
    p.delete_disk(&d("gone")).await.unwrap();
    p.delete_disk(&d("gone")).await.unwrap();
    assert!(matches!(
        p.write(&d("gone"), 0, b"x").await,
        Err(DiskError::NotFound { what: "disk", .. })
    ));

    let mut buf = [0u8; 5];
    p.read_snapshot(&s("gone-1"), 0, &mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
    p.delete_snapshot(&s("gone-1")).await.unwrap();
    p.delete_snapshot(&s("gone-1")).await.unwrap();
    assert!(matches!(
        p.get_snapshot(&s("gone-1")).await,
        Err(DiskError::NotFound {
            what: "snapshot",
            ..
        })
    ));
    assert!(!p.snapshot_path(&s("gone-1")).exists());

    // A re-created disk starts afresh: no parent, only its own writes.
    p.create_disk("gone", MIB).await.unwrap();
    p.write(&d("gone"), 8192, b"x").await.unwrap();
    let again = p.snapshot(&d("gone"), "gone-2").await.unwrap();
    assert_eq!(again.parent, None);
    assert_eq!(again.changed, vec![ByteRange::new(8192, 4096)]);
}

#[tokio::test]
async fn errors_name_the_thing_and_the_fix() {
    let p = &fixture();
    p.create_disk("e", 10_000).await.unwrap();
    assert_eq!(p.create_disk("e", 10_000).await.unwrap().size, 10_000);
    let err = p.create_disk("e", 20_000).await.unwrap_err();
    assert!(
        matches!(err, DiskError::Conflict { what: "disk", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("10000 bytes"), "{err}");

    let err = p.write(&d("e"), 9_999, b"ab").await.unwrap_err();
    assert!(
        matches!(
            err,
            DiskError::OutOfBounds {
                offset: 9_999,
                len: 2,
                size: 10_000,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("disk \"e\""), "{err}");
    assert!(!err.is_transient());
    let mut buf = [0u8; 2];
    let err = p.read_disk(&d("e"), u64::MAX, &mut buf).await.unwrap_err();
    assert!(matches!(err, DiskError::OutOfBounds { .. }), "{err}");

    let err = p.write(&d("nope"), 0, b"x").await.unwrap_err();
    assert!(err.to_string().contains("disk \"nope\" not found"), "{err}");
    let err = p.snapshot(&d("nope"), "n-1").await.unwrap_err();
    assert!(
        matches!(err, DiskError::NotFound { what: "disk", .. }),
        "{err}"
    );
    let err = p.get_snapshot(&s("missing")).await.unwrap_err();
    assert!(
        err.to_string().contains("snapshot \"missing\" not found"),
        "{err}"
    );
    assert!(matches!(
        p.read_snapshot(&s("missing"), 0, &mut buf).await,
        Err(DiskError::NotFound { .. })
    ));
    assert!(matches!(
        p.allocated_ranges(&s("missing")).await,
        Err(DiskError::NotFound { .. })
    ));

    for bad in [
        "",
        "a/b",
        "..",
        "../x",
        ".hidden",
        "with space",
        "é",
        "a..b",
    ] {
        let err = p.create_disk(bad, 4096).await.unwrap_err();
        assert!(
            matches!(err, DiskError::InvalidName { what: "disk", .. }),
            "{bad:?}: {err}"
        );
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    let err = p.snapshot(&d("e"), "x/y").await.unwrap_err();
    assert!(
        matches!(err, DiskError::InvalidName { what, .. } if what == "snapshot"),
        "{err}"
    );
    let err = p.get_snapshot(&s("../../etc/passwd")).await.unwrap_err();
    assert!(matches!(err, DiskError::InvalidName { .. }), "{err}");
    assert_eq!(p.driver(), LOCAL_DRIVER);
}

#[tokio::test]
async fn crash_after_commit_is_finished_by_the_next_snapshot() {
    let p = &fixture_with_disk("c", MIB).await;
    let inner = &p.inner;
    p.write(&d("c"), 0, &[1; 10]).await.unwrap();
    let log_before = fs::read(inner.disk_file("c", "cbt")).unwrap();
    p.snapshot(&d("c"), "c-1").await.unwrap();

    // Simulate a crash between the metadata commit and the change-log reset.
    fs::write(inner.disk_file("c", "cbt"), &log_before).unwrap();
    let intent = Intent {
        snapshot: "c-1".into(),
        cbt_len: log_before.len() as u64,
    };
    fs::write(
        inner.disk_file("c", "pending"),
        serde_json::to_vec(&intent).unwrap(),
    )
    .unwrap();
    // A torn record, then a write made after the "restart".
    OpenOptions::new()
        .append(true)
        .open(inner.disk_file("c", "cbt"))
        .unwrap()
        .write_all(&[9; 11])
        .unwrap();
    p.write(&d("c"), 64 * 1024, &[2; 10]).await.unwrap();

    // The redelivered job gets the committed snapshot back.
    assert_eq!(
        p.snapshot(&d("c"), "c-1").await.unwrap().changed,
        vec![ByteRange::new(0, 4096)]
    );
    let s2 = p.snapshot(&d("c"), "c-2").await.unwrap();
    assert_eq!(s2.parent, Some(s("c-1")));
    assert_eq!(s2.changed, vec![ByteRange::new(64 * 1024, 4096)]);
    assert!(!inner.disk_file("c", "pending").exists());
}

#[tokio::test]
async fn crash_before_commit_leaves_nothing_visible() {
    let p = &fixture_with_disk("k", MIB).await;
    let inner = &p.inner;
    p.write(&d("k"), 4096, &[3; 4096]).await.unwrap();

    // A snapshot killed after renaming its image but before writing its metadata.
    let intent = Intent {
        snapshot: "k-ghost".into(),
        cbt_len: 0,
    };
    fs::write(
        inner.disk_file("k", "pending"),
        serde_json::to_vec(&intent).unwrap(),
    )
    .unwrap();
    fs::write(inner.snap_file("k-ghost", "img"), b"partial").unwrap();
    assert!(matches!(
        p.read_snapshot(&s("k-ghost"), 0, &mut [0; 1]).await,
        Err(DiskError::NotFound { .. })
    ));

    let k1 = p.snapshot(&d("k"), "k-1").await.unwrap();
    assert_eq!(k1.parent, None);
    assert_eq!(k1.changed, vec![ByteRange::new(4096, 4096)]);
    assert!(!inner.snap_file("k-ghost", "img").exists());
    assert!(!inner.disk_file("k", "pending").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_and_snapshots_stay_consistent() {
    let f = fixture();
    let p = Arc::new(f.provider.clone());
    let size = 4 * MIB;
    p.create_disk("w", size).await.unwrap();
    let writers: Vec<_> = (0..4u64)
        .map(|t| {
            let p = Arc::clone(&p);
            tokio::spawn(async move {
                for i in 0..25u64 {
                    let offset = (t * 25 + i) * 4096 * 4;
                    p.write(&d("w"), offset, &[t as u8 + 1; 4096])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut snaps = Vec::new();
    for i in 0..5 {
        snaps.push(p.snapshot(&d("w"), &format!("w-{i}")).await.unwrap());
    }
    for w in writers {
        w.await.unwrap();
    }
    snaps.push(p.snapshot(&d("w"), "w-final").await.unwrap());
    // Every write lands in exactly one snapshot's change list, and the chain links up.
    let all: Vec<ByteRange> = merge_ranges(snaps.iter().flat_map(|s| s.changed.clone()));
    let expected = merge_ranges((0..100u64).map(|k| ByteRange::new(k * 4096 * 4, 4096)));
    assert_eq!(all, expected);
    let total: u64 = snaps.iter().map(SnapshotInfo::changed_bytes).sum();
    assert_eq!(total, 100 * 4096);
    for pair in snaps.windows(2) {
        assert_eq!(pair[1].parent.as_ref(), Some(&pair[0].id));
    }
    // Each snapshot's image holds exactly what its chain of changes says was written by then.
    for snap in &snaps {
        let data = read_snapshot_all(&p, snap.id.as_str(), size).await;
        let upto = merge_ranges(
            snaps
                .iter()
                .take_while(|x| x.id != snap.id)
                .chain([snap])
                .flat_map(|s| s.changed.clone()),
        );
        for k in 0..100u64 {
            let offset = (k * 4096 * 4) as usize;
            let in_snapshot = upto
                .iter()
                .any(|r| r.offset <= offset as u64 && (offset as u64) < r.end());
            assert_eq!(data[offset] != 0, in_snapshot, "{} at {offset}", snap.id);
        }
    }
}

/// Sets a file's modification time `age` into the past.
fn age_file(path: &std::path::Path, age: Duration) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.set_modified(std::time::SystemTime::now() - age)
        .unwrap();
}

#[tokio::test]
async fn leftovers_of_killed_writers_are_swept_but_never_under_a_live_writer() {
    use super::files::temp_path;
    let p = &fixture_with_disk("k", MIB).await;
    let inner = &p.inner;
    p.write(&d("k"), 4096, &[7; 4096]).await.unwrap();
    p.snapshot(&d("k"), "k-1").await.unwrap();
    let old = TEMP_MIN_AGE + Duration::from_secs(60);

    // A partial snapshot image of a killed writer: old, nobody holds its lock.
    let dead = temp_path(&inner.snap_file("k-2", "img"));
    fs::write(&dead, b"partial").unwrap();
    age_file(&dead, old);
    // A snapshot still being copied by a live writer: old, but its lock is held.
    let live = temp_path(&inner.snap_file("k-3", "img"));
    let writer = std::fs::File::create_new(&live).unwrap();
    writer.lock().unwrap();
    age_file(&live, old);
    // A fresh one nobody holds (the instant between create and lock): kept too.
    let fresh = temp_path(&inner.disk_file("k4", "img"));
    fs::write(&fresh, b"new").unwrap();

    let removed = p.remove_leftovers().await.unwrap();
    assert_eq!(removed, 1);
    assert!(
        !dead.exists(),
        "the killed writer's partial image is removed"
    );
    assert!(live.exists(), "a live writer's file is never removed");
    assert!(fresh.exists(), "a fresh temporary file is kept");
    // Real data untouched.
    assert_eq!(read_disk_all(p, "k", MIB).await[4096..8192], [7; 4096]);
    assert_eq!(
        read_snapshot_all(p, "k-1", MIB).await[4096..8192],
        [7; 4096]
    );

    // Once the writer is gone (its lock released), the same file goes; so does it at `open`.
    drop(writer);
    age_file(&fresh, old);
    let reopened = LocalDiskProvider::open(&p.root).unwrap();
    assert!(!live.exists() && !fresh.exists());
    assert!(reopened.remove_stale_temporaries(TEMP_MIN_AGE).is_empty());
    assert_eq!(
        read_disk_all(&reopened, "k", MIB).await[4096..8192],
        [7; 4096]
    );
}
