//! Staging after restores: released once a restore completes, kept after a failure for the
//! keep time, then swept (time injected).

use std::time::Duration;

use stowage_disk::DiskId;
use stowage_schemas::domain::Tier;
use stowage_stages::restore::completed_key;
use stowage_stages::restore_hydration::staging_disk_name;
use stowage_stages::staging::{self, StagingState, read_record, release, sweep};
use stowage_tests::vault_fixture::{VaultBackend, VaultFixture};
use stowage_vault::layout;

const MIB: u64 = 1 << 20;
const KEEP: Duration = Duration::from_secs(72 * 3600);

fn later(hours: i64) -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_hours(hours)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_is_released_after_success_and_swept_after_a_failure() {
    let f = VaultFixture::new(VaultBackend::LocalFolder).await;
    f.write_patterned("a", 8 * MIB, 0, 2 * MIB, 1).await;
    f.write_patterned("b", 8 * MIB, MIB, MIB, 2).await;
    f.snapshot_rp("rp-1", &[("a", "vol-a"), ("b", "vol-b")])
        .await;
    f.transfer("rp-1").await.expect("transfer");
    let store = &f.ctx.primary;
    let disk_exists = |restore: &str, volume: &str| {
        f.disks
            .disk_path(&DiskId(staging_disk_name(restore, volume)))
            .exists()
    };
    let resources_exist = |restore: &str| {
        let key = layout::staging(restore, staging::RESOURCES_FILE).unwrap();
        async move { store.head(&key).await.is_ok() }
    };

    // A restore that fails after hydration (nothing applies its staging).
    let failed = f
        .hydrate("r-failed", "rp-1", Tier::Vault)
        .await
        .expect("hydrate");
    let record = read_record(store, "r-failed")
        .await
        .unwrap()
        .expect("record");
    assert_eq!(record.disks.len(), 2);
    assert_eq!(failed.disks.len(), 2);

    // A restore that completes, adopting only vol-a's staging disk.
    let ok = f
        .hydrate("r-ok", "rp-1", Tier::Vault)
        .await
        .expect("hydrate");
    let adopted = vec![staging_disk_name("r-ok", "vol-a")];
    let released = release(store, f.disks.as_ref(), "r-ok", &ok, &adopted).await;
    assert_eq!(
        (
            released.objects_deleted,
            released.disks_deleted,
            released.disks_kept
        ),
        (1, 1, 1)
    );
    store
        .put_create_only(&completed_key("r-ok").unwrap(), b"{}".to_vec())
        .await
        .unwrap();
    assert!(!resources_exist("r-ok").await, "staged resources removed");
    assert!(
        disk_exists("r-ok", "vol-a"),
        "the adopted disk is a restored volume now"
    );
    assert!(
        !disk_exists("r-ok", "vol-b"),
        "the unused staging disk is gone"
    );

    // Within the keep time, everything of the failed restore stays for inspection.
    let swept = sweep(store, f.disks.as_ref(), later(1), KEEP)
        .await
        .expect("sweep");
    assert!(swept.iter().all(|s| !s.removed), "{swept:?}");
    assert!(disk_exists("r-failed", "vol-a") && disk_exists("r-failed", "vol-b"));
    assert!(resources_exist("r-failed").await);

    // After it, the failed restore's disks and objects go; the completed one loses only its
    // records, never the disk it adopted.
    let swept = sweep(store, f.disks.as_ref(), later(73), KEEP)
        .await
        .expect("sweep");
    let by_id = |id: &str| {
        swept
            .iter()
            .find(|s| s.restore_id == id)
            .expect("swept")
            .clone()
    };
    let (failed_entry, ok_entry) = (by_id("r-failed"), by_id("r-ok"));
    assert!(failed_entry.removed && failed_entry.state == StagingState::Unfinished);
    assert_eq!(
        (failed_entry.disks_deleted, failed_entry.objects_deleted),
        (2, 2)
    );
    assert!(ok_entry.removed && ok_entry.state == StagingState::Completed);
    assert_eq!(ok_entry.disks_deleted, 0);
    assert!(!disk_exists("r-failed", "vol-a") && !disk_exists("r-failed", "vol-b"));
    assert!(!resources_exist("r-failed").await);
    assert!(disk_exists("r-ok", "vol-a"));
    assert!(read_record(store, "r-ok").await.unwrap().is_none());

    // Nothing is left to sweep.
    let again = sweep(store, f.disks.as_ref(), later(74), KEEP)
        .await
        .expect("sweep");
    assert!(again.is_empty(), "{again:?}");
}
