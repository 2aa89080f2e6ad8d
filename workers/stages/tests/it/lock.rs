//! The vault lock and soft delete (issue 12, item 3) on a local-folder vault with local disks:
//! retention, garbage collection and the purge of soft-deleted RPs hold back what the lock
//! holds, each until its date and no longer; a soft-deleted RP keeps all of its data, cannot be
//! restored, comes back byte-exact when undeleted, and is purged whole after its window.

use jiff::{SignedDuration, Timestamp};
use stowage_disk::{DiskProvider as _, SnapshotId};
use stowage_runtime::JobContext;
use stowage_schemas::Stage;
use stowage_schemas::domain::{CalendarPeriod, Immutability, Tier};
use stowage_schemas::jobs::{RestoreHydrationJob, RestoreOptions};
use stowage_stages::snapshot::snapshot_name;
use stowage_stages::{restore_hydration, retention, vault_transfer};
use stowage_vault::catalog::settings::{self, WriteMode};
use stowage_vault::catalog::{self, soft_delete};

use crate::retention::{DISK, Fixture, INSTANCE, fixture, local};

/// Sets the fixture vault's lock, through the validated write `stowage vault lock` uses.
async fn lock(f: &Fixture, immutability: Immutability, days: u32) {
    let mut vault = settings::read_vault(&f.ctx.primary).await.unwrap();
    vault.immutability = immutability;
    vault.minimum_retention_days = days;
    settings::write_vault(&f.ctx.primary, &vault, WriteMode::CreateOrUpdate)
        .await
        .unwrap();
}

async fn transfer(f: &Fixture, rp_id: &str) {
    let job = JobContext::detached(Stage::VaultTransfer);
    vault_transfer::transfer(&f.ctx, INSTANCE, rp_id, &job)
        .await
        .unwrap();
}

async fn snapshot_exists(f: &Fixture, rp_id: &str) -> bool {
    f.disks
        .get_snapshot(&SnapshotId(snapshot_name(INSTANCE, rp_id, DISK)))
        .await
        .is_ok()
}

async fn rp_exists(f: &Fixture, rp_id: &str) -> bool {
    match catalog::read_recovery_point(&f.ctx.primary, INSTANCE, rp_id).await {
        Ok(_) => true,
        Err(e) if e.is_not_found() => false,
        Err(e) => panic!("{e}"),
    }
}

async fn vault_tier_exists(f: &Fixture, rp_id: &str) -> bool {
    catalog::read_tier_manifest(&f.ctx.primary, INSTANCE, rp_id, Tier::Vault)
        .await
        .unwrap()
        .is_some()
}

const DAY: SignedDuration = SignedDuration::from_hours(24);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_holds_expired_tiers_until_their_lock_date_whatever_as_of_says() {
    let f = fixture(&[(CalendarPeriod::Day, 1)], 1).await;
    lock(&f, Immutability::Locked, 10).await;
    let t0 = local(2026, 5, 1, 2);
    let (_, hash_a) = f.backup("a", t0, 1).await;
    transfer(&f, "a").await;
    f.backup("b", t0 + 2 * DAY, 2).await;
    transfer(&f, "b").await;

    // By the policy "a" expired a day after it was taken, in both tiers; the lock keeps it ten
    // days, even for a run that evaluates years ahead.
    let lock_date = t0 + 10 * DAY;
    for as_of in [t0 + 5 * DAY, t0 + 3650 * DAY] {
        let report = retention::run_at(&f.ctx, INSTANCE, as_of, t0 + 5 * DAY)
            .await
            .unwrap();
        assert_eq!(
            report.operational_deleted + report.vault_deleted,
            0,
            "{report:?}"
        );
        assert_eq!(report.held_by_lock, 2, "{report:?}");
    }
    assert!(rp_exists(&f, "a").await && snapshot_exists(&f, "a").await);
    assert!(vault_tier_exists(&f, "a").await);
    let record = retention::read_record(&f.ctx.primary, INSTANCE, "a")
        .await
        .unwrap()
        .expect("a record");
    for tier in &record.tiers {
        assert_eq!(tier.held_until, Some(lock_date), "{record:?}");
        assert_eq!(tier.deleted_at, None, "{record:?}");
    }
    assert_eq!(f.restore_hash("a", "r-a").await, hash_a, "still restorable");

    // A second before the lock date: still held. At it: deleted, and the RP goes.
    let report = retention::run_at(
        &f.ctx,
        INSTANCE,
        lock_date,
        lock_date - SignedDuration::from_secs(1),
    )
    .await
    .unwrap();
    assert_eq!(report.held_by_lock, 2);
    let report = retention::run_at(&f.ctx, INSTANCE, lock_date, lock_date)
        .await
        .unwrap();
    assert_eq!(
        (
            report.operational_deleted,
            report.vault_deleted,
            report.rps_removed
        ),
        (1, 1, 1),
        "{report:?}"
    );
    assert!(!rp_exists(&f, "a").await && !snapshot_exists(&f, "a").await);
    assert!(rp_exists(&f, "b").await, "the newest stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_keeps_data_younger_than_the_minimum_retention() {
    let f = fixture(&[(CalendarPeriod::Day, 30)], 7).await;
    lock(&f, Immutability::Enabled, 3).await;
    let now = Timestamp::now();
    f.backup("a", now - SignedDuration::from_hours(1), 1).await;
    transfer(&f, "a").await;
    let packs = f.packs().await;
    assert!(!packs.is_empty());
    // Nothing references the packs and the map once the vault tier is gone (here by hand: the
    // lock's retention rules are the test above; this is the collector's own rule).
    f.drop_vault_tier("a").await;
    let grace = SignedDuration::from_hours(1);
    let first = retention::collect(&f.ctx, now, grace).await.unwrap();
    assert_eq!(first.primary.packs_condemned, packs.len() as u64);
    // Condemned long enough, but written less than three days ago: kept, still condemned.
    let held = retention::collect(&f.ctx, now + 2 * DAY, grace)
        .await
        .unwrap();
    assert_eq!(held.primary.packs_deleted, 0, "{held:?}");
    assert_eq!(
        held.primary.held_by_lock,
        packs.len() as u64 + 1,
        "packs and the map"
    );
    assert_eq!(f.packs().await, packs);
    // Old enough: deleted.
    let gone = retention::collect(&f.ctx, now + 3 * DAY + grace, grace)
        .await
        .unwrap();
    assert_eq!(gone.primary.packs_deleted, packs.len() as u64, "{gone:?}");
    assert_eq!(gone.primary.maps_deleted, 1);
    assert!(f.packs().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_deleted_rp_is_kept_whole_unrestorable_and_purged_after_its_window() {
    let f = fixture(&[(CalendarPeriod::Day, 30)], 7).await;
    let now = Timestamp::now();
    let (_, hash_a) = f.backup("a", now - 2 * DAY, 1).await;
    transfer(&f, "a").await;
    f.backup("b", now - DAY, 2).await;
    transfer(&f, "b").await;
    let store = &f.ctx.primary;

    let record = soft_delete::delete(store, INSTANCE, "a", now)
        .await
        .unwrap();
    assert_eq!(record.purge_after, now + 14 * DAY);
    // Within the window, a run long past every expiry of "a" deletes nothing of it.
    let report = retention::run_at(&f.ctx, INSTANCE, now + 400 * DAY, now + DAY)
        .await
        .unwrap();
    assert_eq!(report.purged, 0);
    assert_eq!(report.rps, 1, "only b is evaluated: {report:?}");
    assert!(rp_exists(&f, "a").await && snapshot_exists(&f, "a").await);
    assert!(vault_tier_exists(&f, "a").await);

    // Not restorable while deleted; the refusal says how to undelete.
    let job = RestoreHydrationJob {
        restore_id: "r-deleted".into(),
        instance: INSTANCE.into(),
        recovery_point_id: "a".into(),
        tier: Tier::Vault,
        staging_location: None,
        options: RestoreOptions::default(),
    };
    let refused =
        restore_hydration::hydrate(&f.ctx, &job, &JobContext::detached(Stage::RestoreHydration))
            .await
            .unwrap_err()
            .chain()
            .join(": ");
    assert!(
        refused.contains("was deleted at") && refused.contains("stowage rp undelete shop a"),
        "{refused}"
    );

    // Undeleted: byte-exact again.
    soft_delete::undelete(store, INSTANCE, "a", now + DAY)
        .await
        .unwrap();
    assert_eq!(f.restore_hash("a", "r-a").await, hash_a);

    // Deleted again and left past its window: the next run purges all of it.
    let record = soft_delete::delete(store, INSTANCE, "a", now + DAY)
        .await
        .unwrap();
    let report = retention::run_at(&f.ctx, INSTANCE, now + DAY, record.purge_after)
        .await
        .unwrap();
    assert_eq!(report.purged, 1, "{report:?}");
    assert!(!rp_exists(&f, "a").await && !snapshot_exists(&f, "a").await);
    assert!(!vault_tier_exists(&f, "a").await);
    assert!(
        soft_delete::read(store, INSTANCE, "a")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        retention::read_record(store, INSTANCE, "a")
            .await
            .unwrap()
            .is_none()
    );
    assert!(rp_exists(&f, "b").await && vault_tier_exists(&f, "b").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_set_after_a_soft_delete_holds_the_purge_until_its_date() {
    let f = fixture(&[(CalendarPeriod::Day, 30)], 7).await;
    let now = Timestamp::now();
    let created = now - DAY;
    f.backup("a", created, 1).await;
    f.backup("b", now - SignedDuration::from_hours(1), 2).await;
    soft_delete::delete(&f.ctx.primary, INSTANCE, "a", now)
        .await
        .unwrap();
    // Locked afterwards for 30 days: the purge waits for the later of the window's end (14
    // days) and the lock date (29 days from now).
    lock(&f, Immutability::Locked, 30).await;
    let report = retention::run_at(&f.ctx, INSTANCE, now, now + 16 * DAY)
        .await
        .unwrap();
    assert_eq!((report.purged, report.held_by_lock), (0, 1), "{report:?}");
    assert!(rp_exists(&f, "a").await);
    let report = retention::run_at(&f.ctx, INSTANCE, now, created + 30 * DAY)
        .await
        .unwrap();
    assert_eq!(report.purged, 1, "{report:?}");
    assert!(!rp_exists(&f, "a").await && !snapshot_exists(&f, "a").await);
}
