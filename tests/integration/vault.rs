//! The vault data plane with real bytes: snapshot → vault-transfer → geo-replication →
//! hydration from each tier, compared byte for byte, on a local folder and on Azurite; the
//! incremental's size; corruption named; redelivery that stores nothing twice.

use stowage_control::verify::verify;
use stowage_disk::DiskProvider as _;
use stowage_schemas::Stage;
use stowage_schemas::domain::Tier;
use stowage_stages::geo_replication::replicate;
use stowage_stages::restore_hydration::staging_disk_name;
use stowage_tests::vault_fixture::{
    INSTANCE, VaultBackend, VaultFixture, half_random_half_pattern, hydration, scattered_writes,
};

const MIB: u64 = 1 << 20;

/// Both tiers, both versions, every byte.
async fn round_trip(backend: VaultBackend) {
    let f = VaultFixture::new(backend).await;
    let size = 48 * MIB;
    let mut writes = vec![
        (0, half_random_half_pattern(16 * MIB as usize, 1)),
        (24 * MIB, half_random_half_pattern(8 * MIB as usize, 2)),
        (40 * MIB, vec![0u8; MIB as usize]), // written, but zeros: never stored
        (size - 4096, vec![0xab; 4096]),
    ];
    f.write("data", size, &writes).await;
    f.write("logs", 8 * MIB, &[(MIB, b"log line\n".repeat(1000))])
        .await;
    f.snapshot_rp("rp-1", &[("data", "vol-data"), ("logs", "vol-logs")])
        .await;

    let vaulted = f.transfer("rp-1").await.expect("vault transfer");
    assert_eq!(vaulted.volumes.len(), 2);
    assert!(vaulted.stats.chunks_new > 0);
    // The pattern repeats every 4 KiB and the grid is 1 MiB: the pattern halves dedupe to one chunk.
    assert!(vaulted.stats.chunks_reused > 0, "{:?}", vaulted.stats);
    let secondary = &f.ctx.secondary.as_ref().expect("geo vault").store;
    let copied = replicate(&f.ctx.primary, secondary, INSTANCE, "rp-1")
        .await
        .expect("replicate");
    assert!(copied.objects > 0);

    // An incremental: scattered 4 KiB writes.
    writes = scattered_writes(size, 64, 3);
    for (offset, data) in &writes {
        f.disks
            .write(&stowage_disk::DiskId("data".into()), *offset, data)
            .await
            .expect("write");
    }
    f.snapshot_rp("rp-2", &[("data", "vol-data"), ("logs", "vol-logs")])
        .await;
    let incremental = f.transfer("rp-2").await.expect("incremental transfer");
    assert_eq!(
        incremental.stats.bytes_read,
        64 * 4096,
        "read only what changed: {:?}",
        incremental.stats
    );
    replicate(&f.ctx.primary, secondary, INSTANCE, "rp-2")
        .await
        .expect("replicate incremental");

    for (rp, tier) in [
        ("rp-1", Tier::Vault),
        ("rp-1", Tier::Secondary),
        ("rp-2", Tier::Vault),
        ("rp-2", Tier::Secondary),
    ] {
        let restore_id = format!("r-{rp}-{tier:?}").to_lowercase();
        let staging = f
            .hydrate(&restore_id, rp, tier)
            .await
            .unwrap_or_else(|e| panic!("hydrate {rp} from {tier:?}: {e}"));
        assert_eq!(staging.disks.len(), 2);
        for volume in ["vol-data", "vol-logs"] {
            let hydrated = staging_disk_name(&restore_id, volume);
            assert!(staging.disks.iter().any(|d| d.disk_id == hydrated));
            f.assert_same_bytes(&snapshot_of(&f, rp, volume).await, &hydrated)
                .await;
        }
        let store = if tier == Tier::Vault {
            &f.ctx.primary
        } else {
            secondary
        };
        let staged = store
            .get(&stowage_vault::layout::staging(&restore_id, "resources").unwrap())
            .await
            .expect("staged resources");
        assert!(String::from_utf8_lossy(&staged.bytes).contains(&format!("cm-{rp}")));
    }
}

/// The snapshot id of `volume` in `rp`.
async fn snapshot_of(f: &VaultFixture, rp: &str, volume: &str) -> String {
    let manifest = stowage_vault::catalog::read_recovery_point(&f.ctx.primary, INSTANCE, rp)
        .await
        .expect("rp");
    manifest
        .volumes
        .iter()
        .find(|v| v.volume_id == volume)
        .expect("volume")
        .snapshot_id
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_on_a_local_folder_is_byte_exact() {
    round_trip(VaultBackend::LocalFolder).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_on_azurite_is_byte_exact() {
    round_trip(VaultBackend::Azurite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_stores_about_the_changed_bytes() {
    let f = VaultFixture::new(VaultBackend::LocalFolder).await;
    let size = 64 * MIB;
    let mut data = half_random_half_pattern(size as usize, 7);
    data[..size as usize / 2]
        .iter_mut()
        .step_by(97)
        .for_each(|b| *b = b.wrapping_add(1));
    f.write("disk", size, &[(0, data)]).await;
    f.snapshot_rp("rp-full", &[("disk", "vol")]).await;
    f.transfer("rp-full").await.expect("full");
    let before = VaultFixture::folder_bytes(&f.dir.join("vault"));

    // 1% of the volume, in scattered 4 KiB writes of random bytes.
    let writes = scattered_writes(size, (size / 4096 / 100) as usize, 8);
    let changed: u64 = writes.iter().map(|(_, d)| d.len() as u64).sum();
    for (offset, d) in &writes {
        f.disks
            .write(&stowage_disk::DiskId("disk".into()), *offset, d)
            .await
            .expect("write");
    }
    f.snapshot_rp("rp-incr", &[("disk", "vol")]).await;
    let m = f.transfer("rp-incr").await.expect("incremental");
    let added = VaultFixture::folder_bytes(&f.dir.join("vault")) - before;
    assert_eq!(
        m.stats.bytes_read, changed,
        "the incremental reads the changed ranges only"
    );
    // Everything the vault grew by: packs, index segment, extent map, manifests, resources.
    assert!(
        added as f64 <= 1.5 * changed as f64,
        "vault grew by {added} bytes for {changed} changed bytes"
    );
    assert!(
        added >= changed,
        "random data cannot shrink: {added} < {changed}"
    );

    let staging = f
        .hydrate("r-incr", "rp-incr", Tier::Vault)
        .await
        .expect("hydrate");
    f.assert_same_bytes("rp-incr-disk", &staging.disks[0].disk_id)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_pack_is_detected_and_named() {
    let f = VaultFixture::new(VaultBackend::LocalFolder).await;
    f.write_patterned("disk", 8 * MIB, 0, 4 * MIB, 11).await;
    f.snapshot_rp("rp-x", &[("disk", "vol")]).await;
    f.transfer("rp-x").await.expect("transfer");
    let report = verify(&f.ctx.primary, &f.ctx.key, INSTANCE, "rp-x", Tier::Vault, 4)
        .await
        .expect("verify");
    assert!(
        report.is_intact() && report.chunks_checked > 0,
        "{report:?}"
    );

    // Flip one byte in the middle of the first pack's data.
    let packs = f.dir.join("vault").join("packs");
    let pack = walk(&packs).into_iter().next().expect("a pack file");
    let mut bytes = std::fs::read(&pack).expect("read pack");
    bytes[100] ^= 0x01;
    std::fs::write(&pack, bytes).expect("write pack");
    let pack_id = pack.file_name().unwrap().to_string_lossy().into_owned();

    let report = verify(&f.ctx.primary, &f.ctx.key, INSTANCE, "rp-x", Tier::Vault, 4)
        .await
        .expect("verify");
    assert_eq!(report.damage.len(), 1, "{report:?}");
    assert!(report.damage[0].object.contains(&pack_id), "{report:?}");
    let err = f
        .hydrate("r-x", "rp-x", Tier::Vault)
        .await
        .expect_err("corrupt data must not restore");
    let text = err.to_string();
    assert_eq!(err.kind(), stowage_runtime::ErrorKind::Permanent);
    assert!(
        text.contains(&report.damage[0].chunk) && text.contains(&pack_id) && text.contains("rp-x"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_transfer_stores_nothing_twice() {
    let f = VaultFixture::new(VaultBackend::LocalFolder).await;
    f.write_patterned("disk", 16 * MIB, 0, 12 * MIB, 5).await;
    f.snapshot_rp("rp-r", &[("disk", "vol")]).await;
    let first = f.transfer("rp-r").await.expect("transfer");
    let after_first = VaultFixture::folder_bytes(&f.dir.join("vault"));
    let again = f.transfer("rp-r").await.expect("again");
    assert_eq!(first, again, "the stored manifest is the answer");
    assert_eq!(
        VaultFixture::folder_bytes(&f.dir.join("vault")),
        after_first
    );
}

/// Bytes of chunks the vault's index segments list more than once: what overlapping transfers
/// stored twice.
async fn duplicate_bytes(f: &VaultFixture) -> (u64, u64) {
    use futures::StreamExt as _;
    let store = &f.ctx.primary;
    let mut seen = std::collections::HashSet::new();
    let (mut total, mut duplicate) = (0u64, 0u64);
    let mut listing = store.list(&stowage_vault::layout::index_segments());
    while let Some(info) = listing.next().await {
        let key = info.expect("list").key;
        let bytes = store.get(&key).await.expect("segment").bytes;
        for (id, location) in
            stowage_vault::index::decode_segment(&bytes, &key).expect("a readable segment")
        {
            total += u64::from(location.length);
            if !seen.insert(id) {
                duplicate += u64::from(location.length);
            }
        }
    }
    (duplicate, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_transfers_of_one_volume_store_each_chunk_once() {
    let f = VaultFixture::new(VaultBackend::LocalFolder).await;
    let size = 32 * MIB;
    f.write(
        "disk",
        size,
        &[(0, half_random_half_pattern(size as usize, 21))],
    )
    .await;
    f.snapshot_rp("rp-1", &[("disk", "vol")]).await;
    for (offset, d) in scattered_writes(size, 40, 22) {
        f.disks
            .write(&stowage_disk::DiskId("disk".into()), offset, &d)
            .await
            .expect("write");
    }
    f.snapshot_rp("rp-2", &[("disk", "vol")]).await;

    // Both transfers at once, as when the second backup's transfer starts before the first's ends.
    let (one, two) = tokio::join!(f.transfer("rp-1"), f.transfer("rp-2"));
    let (one, two) = (one.expect("rp-1"), two.expect("rp-2"));
    let (duplicate, total) = duplicate_bytes(&f).await;
    println!(
        "overlapping transfers: {duplicate} of {total} stored chunk bytes are duplicates ({:.1}%); \
         read {} + {} bytes",
        100.0 * duplicate as f64 / total.max(1) as f64,
        one.stats.bytes_read,
        two.stats.bytes_read
    );
    assert_eq!(
        duplicate, 0,
        "no chunk is stored twice ({duplicate} of {total} bytes were)"
    );
    // Which one waits is a race: when it is rp-2, it reads only what changed since rp-1; when it
    // is rp-1 (older than what is vaulted), it reads in full but stores only what rp-2 lacks.
    for rp in ["rp-1", "rp-2"] {
        let staging = f
            .hydrate(&format!("r-{rp}"), rp, Tier::Vault)
            .await
            .expect("hydrate");
        f.assert_same_bytes(&format!("{rp}-disk"), &staging.disks[0].disk_id)
            .await;
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            out.extend(walk(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out.sort();
    out
}

/// The event-driven chain on the real broker: a vault-transfer job's `rp.vaulted` triggers
/// geo-replication with no one calling it; restore-hydration jobs bring both tiers back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stages_chain_through_events_on_rabbitmq() {
    use std::time::Duration;
    use stowage_runtime::client::submit;
    use stowage_runtime::{Shutdown, StageConfig, Worker};
    use stowage_schemas::{Envelope, Message};
    use stowage_stages::{GeoReplication, RestoreHydration, VaultTransfer};
    use stowage_tests::{BrokerKind, Bus, shared_broker, vault_transfer_job, wait_until};

    let _gate = shared_broker().await;
    let bus = Bus::new(BrokerKind::Rabbit).await;
    let f = VaultFixture::new(VaultBackend::LocalFolder).await;
    f.write_patterned("data", 32 * MIB, MIB, 10 * MIB, 21).await;
    f.snapshot_rp("rp-e2e", &[("data", "vol-e2e")]).await;

    let config = bus.worker_config();
    let topology = config.topology();
    let stage = StageConfig::default();
    let worker = Worker::new(bus.broker.clone(), config)
        .stage(VaultTransfer(f.ctx.clone()), stage)
        .stage(GeoReplication(f.ctx.clone()), stage)
        .stage(RestoreHydration(f.ctx.clone()), stage);
    let health = worker.health();
    let (trigger, shutdown) = Shutdown::new();
    let task = tokio::spawn(worker.run(shutdown));
    wait_until("the worker is ready", Duration::from_secs(30), || {
        health.is_ready()
    })
    .await;
    let probe = bus.probe_events().await;

    let job = vault_transfer_job("vault-transfer-rp-e2e", INSTANCE, "rp-e2e");
    submit(bus.broker.as_ref(), &bus.names, &job)
        .await
        .expect("submit");
    let mut seen = Vec::new();
    for tier in [Tier::Vault, Tier::Secondary] {
        let restore = format!("r-e2e-{tier:?}").to_lowercase();
        // Submitted before the data is there: hydration from a tier that is not complete yet
        // fails permanently, so wait for the tier's event first.
        let wanted = if tier == Tier::Vault {
            "rp.vaulted"
        } else {
            "rp.replicated"
        };
        wait_for_event(&bus, &probe, wanted, &mut seen).await;
        let job = Envelope::new(
            restore.clone(),
            Message::RestoreHydration(hydration(&restore, "rp-e2e", tier)),
        );
        submit(bus.broker.as_ref(), &bus.names, &job)
            .await
            .expect("submit hydration");
        wait_for_event(&bus, &probe, "restore.hydrated", &mut seen).await;
        f.assert_same_bytes("rp-e2e-data", &staging_disk_name(&restore, "vol-e2e"))
            .await;
    }
    trigger.trigger();
    task.await.expect("join").expect("worker");
    assert_eq!(
        bus.depth(&bus.names.dead_letter_queue(Stage::GeoReplication))
            .await,
        0
    );
    bus.teardown(&topology).await;
}

/// Wait until an event with `routing_key` has arrived in `probe`; `seen` keeps the routing keys
/// of events taken from the probe but not yet waited for.
async fn wait_for_event(
    bus: &stowage_tests::Bus,
    probe: &str,
    routing_key: &str,
    seen: &mut Vec<String>,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        seen.extend(bus.drain(probe).await.into_iter().map(|e| e.routing_key));
        // An event addressed to one cluster (restore.hydrated) has the cluster's words after
        // its name: match them the way an observer binds, `<event>.#`.
        let pattern = format!("{routing_key}.#");
        if let Some(at) = seen
            .iter()
            .position(|k| stowage_runtime::topology::topic_matches(&pattern, k))
        {
            seen.remove(at);
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {routing_key} event within a minute"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The local provider, recording every snapshot read, and asking (as the Azure provider does)
/// for reads of up to 4 MiB.
struct LargeReads {
    disks: std::sync::Arc<stowage_disk::LocalDiskProvider>,
    reads: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl LargeReads {
    const READ_SIZE: u64 = 4 * MIB;

    fn reads(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut *self.reads.lock().unwrap())
    }
}

impl stowage_disk::DiskProvider for LargeReads {
    fn driver(&self) -> &str {
        self.disks.driver()
    }
    fn create_disk<'a>(
        &'a self,
        name: &'a str,
        size: u64,
    ) -> stowage_disk::DiskFuture<'a, stowage_disk::DiskInfo> {
        self.disks.create_disk(name, size)
    }
    fn write<'a>(
        &'a self,
        disk: &'a stowage_disk::DiskId,
        offset: u64,
        data: &'a [u8],
    ) -> stowage_disk::DiskFuture<'a> {
        self.disks.write(disk, offset, data)
    }
    fn read_disk<'a>(
        &'a self,
        disk: &'a stowage_disk::DiskId,
        offset: u64,
        buf: &'a mut [u8],
    ) -> stowage_disk::DiskFuture<'a> {
        self.disks.read_disk(disk, offset, buf)
    }
    fn snapshot<'a>(
        &'a self,
        disk: &'a stowage_disk::DiskId,
        name: &'a str,
    ) -> stowage_disk::DiskFuture<'a, stowage_disk::SnapshotInfo> {
        self.disks.snapshot(disk, name)
    }
    fn get_snapshot<'a>(
        &'a self,
        id: &'a stowage_disk::SnapshotId,
    ) -> stowage_disk::DiskFuture<'a, stowage_disk::SnapshotInfo> {
        self.disks.get_snapshot(id)
    }
    fn read_snapshot<'a>(
        &'a self,
        id: &'a stowage_disk::SnapshotId,
        offset: u64,
        buf: &'a mut [u8],
    ) -> stowage_disk::DiskFuture<'a> {
        self.reads.lock().unwrap().push((offset, buf.len() as u64));
        self.disks.read_snapshot(id, offset, buf)
    }
    fn read_size_hint(&self) -> Option<u64> {
        Some(Self::READ_SIZE)
    }
    fn allocated_ranges<'a>(
        &'a self,
        id: &'a stowage_disk::SnapshotId,
    ) -> stowage_disk::DiskFuture<'a, Vec<stowage_disk::ByteRange>> {
        self.disks.allocated_ranges(id)
    }
    fn create_disk_from_stream<'a>(
        &'a self,
        name: &'a str,
        size: u64,
        pieces: stowage_disk::PieceStream<'a>,
    ) -> stowage_disk::DiskFuture<'a, stowage_disk::DiskInfo> {
        self.disks.create_disk_from_stream(name, size, pieces)
    }
    fn delete_disk<'a>(&'a self, disk: &'a stowage_disk::DiskId) -> stowage_disk::DiskFuture<'a> {
        self.disks.delete_disk(disk)
    }
    fn delete_snapshot<'a>(
        &'a self,
        id: &'a stowage_disk::SnapshotId,
    ) -> stowage_disk::DiskFuture<'a> {
        self.disks.delete_snapshot(id)
    }
}

/// Reads `reads` sorted and checked: none longer than the provider asked for, none
/// overlapping another; their total.
fn checked_reads(mut reads: Vec<(u64, u64)>) -> u64 {
    reads.sort_unstable();
    for pair in reads.windows(2) {
        assert!(
            pair[0].0 + pair[0].1 <= pair[1].0,
            "reads overlap: {pair:?}"
        );
    }
    assert!(
        reads.iter().all(|&(_, len)| len <= LargeReads::READ_SIZE),
        "a read is longer than the provider asked for: {reads:?}"
    );
    reads.iter().map(|&(_, len)| len).sum()
}

/// Issue 14: a provider whose reads each cost a request (Azure) gets adjacent pieces in one
/// read of up to its read size, and never a byte the transfer did not need: a full reads the
/// allocated ranges, an incremental the changed ones; both restore byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_asks_for_large_reads_gets_adjacent_pieces_together() {
    let f = VaultFixture::new(VaultBackend::LocalFolder).await;
    let size = 32 * MIB;
    // 10 MiB from 1 MiB on: ten pieces read in three reads (4 + 4 + 2 MiB); a lone 512 KiB at
    // 20.25 MiB: one read of its own.
    f.disks_create("disk", size).await;
    f.write_random("disk", MIB, 10 * MIB as usize, 1).await;
    f.write_random("disk", 20 * MIB + MIB / 4, MIB as usize / 2, 2)
        .await;
    let provider = std::sync::Arc::new(LargeReads {
        disks: f.disks.clone(),
        reads: std::sync::Mutex::default(),
    });
    let mut ctx = f.ctx.clone();
    ctx.disks = provider.clone();
    ctx.parallelism = 8;
    let transfer = |rp: &'static str| {
        let ctx = ctx.clone();
        async move {
            let job = stowage_runtime::JobContext::detached(Stage::VaultTransfer);
            stowage_stages::vault_transfer::transfer(&ctx, INSTANCE, rp, &job).await
        }
    };

    f.snapshot_rp("rp-full", &[("disk", "vol")]).await;
    let allocated: u64 = f
        .disks
        .allocated_ranges(&stowage_disk::SnapshotId("rp-full-disk".into()))
        .await
        .expect("allocated ranges")
        .iter()
        .map(|r| r.len)
        .sum();
    let full = transfer("rp-full").await.expect("full");
    let reads = provider.reads();
    assert_eq!(
        reads.len(),
        4,
        "three reads of the 10 MiB run, one of the lone piece: {reads:?}"
    );
    assert_eq!(
        checked_reads(reads),
        allocated,
        "a full reads the allocated bytes once"
    );
    assert_eq!(full.stats.bytes_read, allocated);

    // Scattered 64 KiB writes, two of them side by side: each gap splits a read.
    let writes = [3 * MIB, 7 * MIB, 7 * MIB + 64 * 1024, 25 * MIB];
    for (i, offset) in writes.iter().enumerate() {
        f.write_random("disk", *offset, 64 * 1024, 10 + i as u64)
            .await;
    }
    f.snapshot_rp("rp-incr", &[("disk", "vol")]).await;
    let changed = f
        .disks
        .get_snapshot(&stowage_disk::SnapshotId("rp-incr-disk".into()))
        .await
        .expect("snapshot")
        .changed_bytes();
    let incremental = transfer("rp-incr").await.expect("incremental");
    let reads = provider.reads();
    assert!(reads.len() <= writes.len(), "{reads:?}");
    assert_eq!(
        checked_reads(reads),
        changed,
        "an incremental reads the changed bytes only"
    );
    assert_eq!(incremental.stats.bytes_read, changed);

    for (restore, rp) in [("r-full", "rp-full"), ("r-incr", "rp-incr")] {
        let staging = f.hydrate(restore, rp, Tier::Vault).await.expect("hydrate");
        f.assert_same_bytes(&format!("{rp}-disk"), &staging.disks[0].disk_id)
            .await;
    }
}
