//! Retention over simulated months on a local-folder vault with local disks: policy
//! eligibility, expiry of every tier, garbage collection, and restores of what remains.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt as _;
use jiff::civil::date;
use jiff::{SignedDuration, Timestamp, ToSpan as _};
use rand::{RngExt as _, SeedableRng as _};
use stowage_control::verify;
use stowage_disk::{DiskId, DiskProvider, LocalDiskProvider, SnapshotId};
use stowage_runtime::JobContext;
use stowage_schemas::domain::{
    BackupInstance, CalendarPeriod, Namespaces, RecoveryPoint, RpState, Scope, Tier, TierState,
    VolumeBackup,
};
use stowage_schemas::jobs::{RestoreHydrationJob, RestoreOptions};
use stowage_schemas::{Stage, samples};
use stowage_stages::VaultContext;
use stowage_stages::retention::{self, Eligibility};
use stowage_stages::snapshot::snapshot_name;
use stowage_stages::{restore_hydration, vault_transfer};
use stowage_vault::crypto::VaultKey;
use stowage_vault::store::{BlobStore, LocalDurability};
use stowage_vault::{catalog, gc, layout};

pub(crate) const INSTANCE: &str = "shop";
pub(crate) const DISK: &str = "pg";
const SIZE: u64 = 8 << 20;
const ZONE: &str = "Europe/Amsterdam";

pub(crate) struct Fixture {
    pub(crate) _dir: PathBuf,
    pub(crate) ctx: VaultContext,
    pub(crate) disks: Arc<LocalDiskProvider>,
}

pub(crate) async fn fixture(rules: &[(CalendarPeriod, u32)], operational_days: u16) -> Fixture {
    let dir = std::env::temp_dir().join(format!("stowage-ret-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let disks = Arc::new(LocalDiskProvider::open(dir.join("disks")).unwrap());
    let primary = BlobStore::local_folder(dir.join("vault"), LocalDurability::OsBuffered).unwrap();
    let mut ctx = VaultContext::new(primary, VaultKey::generate().unwrap(), disks.clone());
    ctx.pack_target = 1 << 20; // small packs, so packs die independently
    let start = jiff::civil::time(2, 0, 0, 0);
    let policy = samples::policy_every("p", 12, start, ZONE, operational_days, rules);
    let instance = BackupInstance {
        name: INSTANCE.into(),
        cluster: "c".into(),
        vault: "v".into(),
        policy: "p".into(),
        scope: Scope {
            namespaces: Namespaces::All,
            exclude_namespaces: Vec::new(),
            label_selectors: Vec::new(),
            include_cluster_scoped: false,
            include_secrets: false,
            include_volumes: true,
        },
        snapshot_location: "local".into(),
        hooks: Vec::new(),
    };
    let put = |key, value: Vec<u8>| {
        let store = ctx.primary.clone();
        async move { store.put_create_only(&key, value).await.unwrap() }
    };
    put(
        layout::vault_settings(),
        serde_json::to_vec(&stowage_schemas::samples::vault("v", "/vault")).unwrap(),
    )
    .await;
    put(
        layout::policy("p").unwrap(),
        serde_json::to_vec(&policy).unwrap(),
    )
    .await;
    put(
        layout::instance(INSTANCE).unwrap(),
        serde_json::to_vec(&instance).unwrap(),
    )
    .await;
    disks.create_disk(DISK, SIZE).await.unwrap();
    Fixture {
        _dir: dir,
        ctx,
        disks,
    }
}

impl Fixture {
    /// Write 1 MiB of fresh random data somewhere, snapshot, and record the RP at `at`.
    /// Returns the RP and a hash of the whole disk at that point.
    pub(crate) async fn backup(
        &self,
        rp_id: &str,
        at: Timestamp,
        seed: u64,
    ) -> (RecoveryPoint, blake3::Hash) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut data = vec![0u8; 1 << 20];
        rng.fill(&mut data[..]);
        let offset = (seed % 8) << 20;
        self.disks
            .write(&DiskId(DISK.into()), offset, &data)
            .await
            .unwrap();
        let snap = self
            .disks
            .snapshot(&DiskId(DISK.into()), &snapshot_name(INSTANCE, rp_id, DISK))
            .await
            .unwrap();
        let resources = layout::resource(INSTANCE, rp_id, &["resources.jsonl"]).unwrap();
        self.ctx
            .primary
            .put_create_only(&resources, format!("{{\"rp\":\"{rp_id}\"}}\n").into_bytes())
            .await
            .unwrap();
        let rp = RecoveryPoint {
            id: rp_id.into(),
            instance: INSTANCE.into(),
            created_at: at,
            tiers: vec![TierState {
                tier: Tier::Operational,
                state: RpState::Available,
                expires_at: None,
            }],
            resources: resources.to_string(),
            volumes: vec![VolumeBackup {
                volume_id: DISK.into(),
                namespace: "shop".into(),
                pvc: "data".into(),
                size_bytes: SIZE,
                snapshot_id: snap.id.0.clone(),
                vault_version: None,
                csi: None,
            }],
        };
        catalog::write_recovery_point(&self.ctx.primary, &rp)
            .await
            .unwrap();
        (rp, self.disk_hash(&DiskId(DISK.into())).await)
    }

    /// Deletes the vault-tier manifest of `rp_id`, as if its vault tier had expired.
    pub(crate) async fn drop_vault_tier(&self, rp_id: &str) {
        self.ctx
            .primary
            .delete(&catalog::tier_manifest_key(INSTANCE, rp_id, Tier::Vault).unwrap())
            .await
            .unwrap();
    }

    /// Whether the record of `rp_id` is gone (not merely unreadable).
    async fn rp_gone(&self, rp_id: &str) -> bool {
        catalog::read_recovery_point(&self.ctx.primary, INSTANCE, rp_id)
            .await
            .unwrap_err()
            .is_not_found()
    }

    async fn disk_hash(&self, disk: &DiskId) -> blake3::Hash {
        let mut buf = vec![0u8; SIZE as usize];
        self.disks.read_disk(disk, 0, &mut buf).await.unwrap();
        blake3::hash(&buf)
    }

    pub(crate) async fn restore_hash(&self, rp_id: &str, restore_id: &str) -> blake3::Hash {
        let job = RestoreHydrationJob {
            restore_id: restore_id.into(),
            instance: INSTANCE.into(),
            recovery_point_id: rp_id.into(),
            tier: Tier::Vault,
            staging_location: None,
            options: RestoreOptions::default(),
        };
        restore_hydration::hydrate(
            &self.ctx,
            &job,
            &JobContext::detached(Stage::RestoreHydration),
        )
        .await
        .unwrap();
        let disk = DiskId(restore_hydration::staging_disk_name(restore_id, DISK));
        let hash = self.disk_hash(&disk).await;
        self.disks.delete_disk(&disk).await.unwrap();
        hash
    }

    async fn count(&self, prefix: layout::KeyPrefix) -> usize {
        self.ctx.primary.list(&prefix).count().await
    }

    pub(crate) async fn packs(&self) -> HashSet<String> {
        self.ctx
            .primary
            .list(&layout::packs())
            .map(|i| i.unwrap().key.to_string())
            .collect()
            .await
    }
}

pub(crate) fn local(y: i16, m: i8, d: i8, h: i8) -> Timestamp {
    date(y, m, d)
        .at(h, 0, 0, 0)
        .in_tz(ZONE)
        .unwrap()
        .timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_over_simulated_months_expires_tiers_collects_data_and_keeps_restores_exact() {
    // Two backups a day (02:00 and 14:00 local) for 75 days across the end of DST; the first of
    // each day goes to the vault for 3 days, the first of each month for 60.
    let f = fixture(&[(CalendarPeriod::Day, 3), (CalendarPeriod::Month, 60)], 4).await;
    let grace = SignedDuration::from_hours(24);
    let job = JobContext::detached(Stage::VaultTransfer);
    let mut hashes: BTreeMap<String, blake3::Hash> = BTreeMap::new();
    let mut vaulted = Vec::new();
    let mut all_packs_seen = HashSet::new();
    let start = date(2026, 9, 20);
    let mut seed = 0;
    let mut last_id = String::new();
    let mut now = Timestamp::UNIX_EPOCH;
    for day in 0..75i64 {
        let d = start.checked_add(day.days()).unwrap();
        for hour in [2, 14] {
            seed += 1;
            now = d.at(hour, 0, 0, 0).in_tz(ZONE).unwrap().timestamp();
            let id = format!("rp-{d}-{hour:02}");
            let (rp, hash) = f.backup(&id, now, seed).await;
            hashes.insert(id.clone(), hash);
            let eligibility = retention::vault_eligibility(&f.ctx.primary, &rp)
                .await
                .unwrap();
            match (hour, &eligibility) {
                (2, Eligibility::Selected(_)) | (14, Eligibility::NotSelected) => {}
                other => panic!("{id}: unexpected eligibility {other:?}"),
            }
            if hour == 2 {
                vault_transfer::transfer(&f.ctx, INSTANCE, &id, &job)
                    .await
                    .unwrap();
                vaulted.push(id.clone());
            }
            all_packs_seen.extend(f.packs().await);
            last_id = id;
        }
        // Retention runs daily at 20:00, garbage collection with it on the same clock.
        let run_at = d.at(20, 0, 0, 0).in_tz(ZONE).unwrap().timestamp();
        retention::run(&f.ctx, INSTANCE, run_at).await.unwrap();
        // A redelivered job repeats safely.
        retention::run(&f.ctx, INSTANCE, run_at).await.unwrap();
        retention::collect(&f.ctx, run_at, grace).await.unwrap();
    }
    let end = now;
    assert!(end > local(2026, 12, 1, 0));

    // Compaction after every collection keeps the chunk index to a few live segments (a size
    // tier holding 4 is merged; every segment here is in tier 0), however many transfers wrote
    // one.
    let live = stowage_vault::index::SegmentIndex::open(&f.ctx.primary)
        .await
        .unwrap();
    assert!(vaulted.len() > 20, "{} transfers", vaulted.len());
    assert!(
        live.segments().len() <= 3,
        "{} live index segments after {} transfers",
        live.segments().len(),
        vaulted.len()
    );

    // Operational: the last 4 days (8 RPs) have manifests and snapshots; older snapshots are
    // gone through the provider.
    let mut with_snapshots = 0;
    for id in hashes.keys() {
        let snap = SnapshotId(snapshot_name(INSTANCE, id, DISK));
        if f.disks.get_snapshot(&snap).await.is_ok() {
            with_snapshots += 1;
        }
    }
    assert!(
        (8..=9).contains(&with_snapshots),
        "{with_snapshots} snapshots left"
    );

    // Vault: the dailies of the last 3 days, the monthly firsts within 60 days, the newest.
    let mut in_vault = Vec::new();
    for id in &vaulted {
        if catalog::read_tier_manifest(&f.ctx.primary, INSTANCE, id, Tier::Vault)
            .await
            .unwrap()
            .is_some()
        {
            in_vault.push(id.clone());
        }
    }
    assert!(
        in_vault.contains(&"rp-2026-11-01-02".to_string()),
        "{in_vault:?}"
    );
    assert!(
        in_vault.contains(&"rp-2026-12-01-02".to_string()),
        "{in_vault:?}"
    );
    assert!(
        !in_vault.contains(&"rp-2026-10-01-02".to_string()),
        "{in_vault:?}"
    );
    assert!(
        !in_vault.contains(&"rp-2026-11-20-02".to_string()),
        "{in_vault:?}"
    );
    assert!(in_vault.len() <= 3 + 2 + 1, "{in_vault:?}");
    // The newest RP is kept (operationally: it is not vault-eligible at 14:00).
    assert!(
        catalog::read_recovery_point(&f.ctx.primary, INSTANCE, &last_id)
            .await
            .is_ok()
    );
    // RPs in no tier are gone entirely, with their resources and records.
    assert!(f.rp_gone("rp-2026-09-25-14").await);
    assert_eq!(
        f.count(layout::resources(INSTANCE, "rp-2026-09-25-14").unwrap())
            .await,
        0
    );

    // Garbage collection deleted packs along the way, and everything left restores exactly.
    let packs_now = f.packs().await;
    let deleted = all_packs_seen.difference(&packs_now).count();
    assert!(deleted > 0, "no pack was ever deleted");
    for (n, id) in in_vault.iter().enumerate() {
        let report = verify::verify(&f.ctx.primary, &f.ctx.key, INSTANCE, id, Tier::Vault, 2)
            .await
            .unwrap();
        assert!(report.is_intact(), "{id}: {:?}", report.damage);
        assert_eq!(
            f.restore_hash(id, &format!("restore-{n}")).await,
            hashes[id],
            "{id} restores byte for byte"
        );
    }
    // The record of a kept RP says what was decided.
    let record = retention::read_record(&f.ctx.primary, INSTANCE, "rp-2026-11-01-02")
        .await
        .unwrap()
        .expect("a record");
    assert_eq!(
        record.selected_by,
        vec![CalendarPeriod::Day, CalendarPeriod::Month]
    );
    let op = record
        .tiers
        .iter()
        .find(|t| t.tier == Tier::Operational)
        .unwrap();
    assert!(op.deleted_at.is_some());
    let (state, _) = gc::read_state(&f.ctx.primary).await.unwrap();
    assert!(state.deleted_packs.is_empty(), "{state:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_that_deduplicated_against_a_condemned_chunk_stays_restorable() {
    let f = fixture(&[(CalendarPeriod::Day, 1)], 1).await;
    let grace = SignedDuration::from_hours(24);
    let job = JobContext::detached(Stage::VaultTransfer);
    let t0 = local(2026, 5, 1, 2);
    // Garbage collection `hours` after t0.
    let collect_at =
        |hours| retention::collect(&f.ctx, t0 + SignedDuration::from_hours(hours), grace);
    // RP a: vaulted. Then its vault tier expires and its packs become unreferenced.
    let (_, hash_a) = f.backup("a", t0, 1).await;
    vault_transfer::transfer(&f.ctx, INSTANCE, "a", &job)
        .await
        .unwrap();
    // A concurrent transfer loads the index now (before condemnation)...
    let index_before = stowage_vault::index::DedupIndex::open(&f.ctx.primary)
        .await
        .unwrap();
    assert!(index_before.count().await.unwrap() > 0);
    // ...the vault tier of "a" goes (simulate: another RP "b" is newer and "a" expired).
    f.backup("b", t0 + SignedDuration::from_hours(1), 2).await;
    f.drop_vault_tier("a").await;
    let first = collect_at(2).await.unwrap();
    assert!(first.primary.packs_condemned > 0, "{first:?}");
    assert_eq!(first.primary.packs_deleted, 0);
    // New transfers no longer deduplicate against condemned chunks.
    let index_after = stowage_vault::index::DedupIndex::open(&f.ctx.primary)
        .await
        .unwrap();
    assert_eq!(index_after.count().await.unwrap(), 0);
    // The concurrent transfer finishes: its extent map names the condemned chunks, and its
    // tier manifest (for "b") makes them referenced again. Its end state is what we write here.
    let vaulted_a = catalog::read_tier_manifest(&f.ctx.primary, INSTANCE, "a", Tier::Vault)
        .await
        .unwrap();
    assert!(vaulted_a.is_none());
    catalog::write_tier_manifest(
        &f.ctx.primary,
        &catalog::TierManifest {
            instance: INSTANCE.into(),
            recovery_point_id: "b".into(),
            tier: Tier::Vault,
            completed_at: t0,
            resources: layout::resource(INSTANCE, "b", &["resources.jsonl"])
                .unwrap()
                .to_string(),
            volumes: vec![catalog::TieredVolume {
                volume_id: DISK.into(),
                version: snapshot_name(INSTANCE, "a", DISK),
                size_bytes: SIZE,
            }],
            stats: Default::default(),
        },
    )
    .await
    .unwrap();
    // Phase 2, a grace period later: the condemned packs are referenced again, so revived.
    let second = collect_at(30).await.unwrap();
    assert_eq!(second.primary.packs_deleted, 0, "{second:?}");
    assert!(second.primary.packs_revived > 0, "{second:?}");
    assert_eq!(f.restore_hash("b", "r-b").await, hash_a);
    let report = verify::verify(&f.ctx.primary, &f.ctx.key, INSTANCE, "b", Tier::Vault, 2)
        .await
        .unwrap();
    assert!(report.is_intact());

    // Now that data leaves the vault for good: condemned, then deleted a grace period later,
    // and the index no longer names its packs.
    f.drop_vault_tier("b").await;
    let third = collect_at(40).await.unwrap();
    assert!(third.primary.packs_condemned > 0);
    // A grace period has not passed yet: nothing deleted.
    let early = collect_at(50).await.unwrap();
    assert_eq!(early.primary.packs_deleted, 0);
    let fourth = collect_at(70).await.unwrap();
    assert!(fourth.primary.packs_deleted > 0, "{fourth:?}");
    assert!(fourth.primary.maps_deleted > 0 || third.primary.maps_condemned > 0);
    assert_eq!(f.packs().await.len(), 0);
    assert!(
        stowage_vault::index::ChunkIndex::load_only(&f.ctx.primary, &HashSet::new())
            .await
            .unwrap()
            .is_empty()
    );
    // Segments naming only deleted packs are superseded by empty ones (the old ones go a grace
    // period after that, by the real clock: see stowage_vault::index::compact).
    let live = stowage_vault::index::SegmentIndex::open(&f.ctx.primary)
        .await
        .unwrap();
    assert_eq!(
        live.entries(),
        0,
        "segments naming only deleted packs are superseded"
    );
    // A new transfer of "b" (a full: its parent's map is gone) works on the cleaned vault.
    let (_, hash_c) = f.backup("c", t0 + SignedDuration::from_hours(71), 3).await;
    vault_transfer::transfer(&f.ctx, INSTANCE, "c", &job)
        .await
        .unwrap();
    assert_eq!(f.restore_hash("c", "r-c").await, hash_c);
}

#[tokio::test]
async fn retention_refuses_an_instance_without_a_policy() {
    let ctx = VaultContext::new(
        BlobStore::in_memory(),
        VaultKey::generate().unwrap(),
        Arc::new(
            LocalDiskProvider::open(
                std::env::temp_dir().join(format!("stowage-ret-{}", uuid::Uuid::new_v4())),
            )
            .unwrap(),
        ),
    );
    let err = retention::run(&ctx, "ghost", Timestamp::now())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("ghost") && err.contains("policy"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_expires_by_policy_and_emits_nothing() {
    use stowage_runtime::StageHandler as _;
    use stowage_schemas::jobs::RetentionJob;
    use stowage_schemas::{Envelope, Message};

    let f = fixture(&[(CalendarPeriod::Day, 1)], 1).await;
    let t0 = local(2026, 5, 1, 2);
    f.backup("old", t0, 1).await;
    f.backup("new", t0 + SignedDuration::from_hours(48), 2)
        .await;
    let clock_at = t0 + SignedDuration::from_hours(50);
    let stage = retention::RetentionStage::new(f.ctx.clone())
        .with_grace(SignedDuration::from_hours(1))
        .with_clock(Arc::new(move || clock_at));
    let envelope = Envelope::new(
        "retention-1",
        Message::Retention(RetentionJob {
            instance: INSTANCE.into(),
            as_of: None,
        }),
    );
    for _ in 0..2 {
        let outcome = stage
            .handle_envelope(JobContext::detached(Stage::Retention), envelope.clone())
            .await
            .unwrap();
        assert!(outcome.messages().is_empty());
    }
    // "old" was only operational and expired a day after it was taken: gone with its snapshot.
    assert!(f.rp_gone("old").await);
    assert!(
        f.disks
            .get_snapshot(&SnapshotId(snapshot_name(INSTANCE, "old", DISK)))
            .await
            .is_err()
    );
    // "new" is the newest: kept, with a record of its decision.
    let record = retention::read_record(&f.ctx.primary, INSTANCE, "new")
        .await
        .unwrap()
        .expect("a record");
    assert_eq!(record.tiers.len(), 1);
    assert_eq!(record.tiers[0].state, RpState::Available);
    assert_eq!(record.tiers[0].expires_at, None, "protected as the newest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_run_sweeps_what_killed_writers_left_and_nothing_else() {
    use stowage_runtime::StageHandler as _;
    use stowage_schemas::jobs::RetentionJob;
    use stowage_schemas::{Envelope, Message};

    let age = |path: &std::path::Path, by: std::time::Duration| {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.set_modified(std::time::SystemTime::now() - by)
            .unwrap();
    };
    let hour = std::time::Duration::from_secs(3600);
    let f = fixture(&[(CalendarPeriod::Day, 30)], 7).await;
    let now = Timestamp::now();
    let (_, before) = f
        .backup("rp-1", now - SignedDuration::from_hours(1), 1)
        .await;
    let vault = f._dir.join("vault");
    let snapshots = f.disks.root().join("snapshots");
    // Left by killed writers: a staged record, a streamed write, a partial snapshot image.
    let staged = vault.join("jobs/j-1.json#4");
    let streamed = vault.join(".stowage-tmp/00ff00ff");
    let partial = snapshots.join(format!(
        ".rp-2-{DISK}.img.{}.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(vault.join("jobs")).unwrap();
    std::fs::create_dir_all(vault.join(".stowage-tmp")).unwrap();
    for path in [&staged, &streamed, &partial] {
        std::fs::write(path, b"partial").unwrap();
        age(path, 25 * hour);
    }
    // Written just now (live writers, as far as anyone can tell): kept.
    let fresh_staged = vault.join("jobs/j-2.json#5");
    let fresh_partial = snapshots.join(format!(
        ".rp-3-{DISK}.img.{}.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    for path in [&fresh_staged, &fresh_partial] {
        std::fs::write(path, b"partial").unwrap();
    }

    let stage = retention::RetentionStage::new(f.ctx.clone());
    let envelope = Envelope::new(
        "retention-1",
        Message::Retention(RetentionJob {
            instance: INSTANCE.into(),
            as_of: None,
        }),
    );
    stage
        .handle_envelope(JobContext::detached(Stage::Retention), envelope)
        .await
        .unwrap();
    assert!(!staged.exists() && !streamed.exists() && !partial.exists());
    assert!(fresh_staged.exists() && fresh_partial.exists());
    // Real data untouched: the disk, its snapshot, the recovery point.
    assert_eq!(f.disk_hash(&DiskId(DISK.into())).await, before);
    let mut image = vec![0u8; SIZE as usize];
    f.disks
        .read_snapshot(
            &SnapshotId(snapshot_name(INSTANCE, "rp-1", DISK)),
            0,
            &mut image,
        )
        .await
        .unwrap();
    assert_eq!(blake3::hash(&image), before);
    assert!(
        catalog::read_recovery_point(&f.ctx.primary, INSTANCE, "rp-1")
            .await
            .is_ok()
    );
}
