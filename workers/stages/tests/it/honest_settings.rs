//! Honest settings (issue 12, item 4): the vault stages follow `vault.json`. A geo vault whose
//! secondary is missing fails geo-replication permanently with the reason, one whose secondary
//! does not answer fails it transiently and writes nothing; neither ever reports success. The
//! events carry the vault's own secondary region and the policy's expiry (or the lock's date).

use jiff::SignedDuration;
use stowage_runtime::{ErrorKind, JobContext, Outcome, StageError, StageHandler as _};
use stowage_schemas::domain::{CalendarPeriod, Immutability, Redundancy, Tier};
use stowage_schemas::events::{RpReplicated, RpVaulted};
use stowage_schemas::jobs::{GeoReplicationJob, VaultTransferJob};
use stowage_schemas::{Envelope, Message, Stage};
use stowage_stages::{GeoReplication, VaultContext, VaultTransfer};
use stowage_vault::catalog;
use stowage_vault::catalog::settings::{self, WriteMode};
use stowage_vault::store::{BlobStore, LocalDurability};

use crate::retention::{Fixture, INSTANCE, fixture, local};

const REGION: &str = "northeurope";

/// Makes the fixture's vault geo-redundant, its secondary in `<dir>/secondary` (created).
async fn make_geo(f: &Fixture) -> (BlobStore, std::path::PathBuf) {
    let folder = f._dir.join("secondary");
    let store = BlobStore::local_folder(&folder, LocalDurability::OsBuffered).unwrap();
    let mut vault = settings::read_vault(&f.ctx.primary).await.unwrap();
    vault.redundancy = Redundancy::Geo {
        secondary_location: folder.display().to_string(),
        secondary_region: REGION.into(),
    };
    settings::write_vault(&f.ctx.primary, &vault, WriteMode::CreateOrUpdate)
        .await
        .unwrap();
    (store, folder)
}

async fn replicate(ctx: &VaultContext, rp_id: &str) -> Result<Outcome, StageError> {
    let job = Message::GeoReplication(GeoReplicationJob {
        instance: INSTANCE.into(),
        recovery_point_id: rp_id.into(),
    });
    GeoReplication(ctx.clone())
        .handle_envelope(
            JobContext::detached(Stage::GeoReplication),
            Envelope::new(format!("geo-{rp_id}"), job),
        )
        .await
}

async fn vault_transfer(ctx: &VaultContext, rp_id: &str) -> RpVaulted {
    let job = Message::VaultTransfer(VaultTransferJob {
        instance: INSTANCE.into(),
        recovery_point_id: rp_id.into(),
    });
    let outcome = VaultTransfer(ctx.clone())
        .handle_envelope(
            JobContext::detached(Stage::VaultTransfer),
            Envelope::new(format!("vt-{rp_id}"), job),
        )
        .await
        .unwrap();
    match outcome.messages() {
        [Message::RpVaulted(vaulted)] => vaulted.clone(),
        other => panic!("expected one rp.vaulted, got {other:?}"),
    }
}

fn failure(result: Result<Outcome, StageError>) -> (ErrorKind, String) {
    match result {
        Ok(outcome) => panic!("succeeded, emitting {:?}", outcome.messages()),
        Err(e) => (e.kind(), e.chain().join(": ")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_geo_vault_without_its_secondary_never_reports_replication() {
    let f = fixture(&[(CalendarPeriod::Day, 30)], 7).await;
    f.backup("a", local(2026, 5, 1, 2), 1).await;
    vault_transfer(&f.ctx, "a").await;

    // Locally redundant: nothing to replicate, and nothing announced.
    let outcome = replicate(&f.ctx, "a").await.unwrap();
    assert!(outcome.messages().is_empty());

    let (secondary, folder) = make_geo(&f).await;
    // Geo, and this worker has no secondary: permanent, naming the vault's secondary and the fix.
    let (kind, message) = failure(replicate(&f.ctx, "a").await);
    assert_eq!(kind, ErrorKind::Permanent, "{message}");
    assert!(
        message.contains("is geo-redundant")
            && message.contains(REGION)
            && message.contains(&folder.display().to_string())
            && message.contains("--secondary"),
        "{message}"
    );
    // What opening it at start said is the reason given.
    let unopened = f
        .ctx
        .clone()
        .without_secondary("cannot open /mnt/paired: the folder does not exist");
    let (kind, message) = failure(replicate(&unopened, "a").await);
    assert_eq!(kind, ErrorKind::Permanent);
    assert!(message.contains("cannot open /mnt/paired"), "{message}");

    // Configured, but its volume is gone (unmounted): transient, and nothing is written — the
    // folder is not made again on the worker's disk.
    let geo = f.ctx.clone().with_secondary(secondary);
    let unmounted = f._dir.join("unmounted");
    std::fs::rename(&folder, &unmounted).unwrap();
    let (kind, message) = failure(replicate(&geo, "a").await);
    assert_eq!(kind, ErrorKind::Transient, "{message}");
    assert!(message.contains("unreachable"), "{message}");
    assert!(!folder.exists(), "nothing written in its place");

    // Back: replicated, announced with the region vault.json records.
    std::fs::rename(&unmounted, &folder).unwrap();
    let outcome = replicate(&geo, "a").await.unwrap();
    match outcome.messages() {
        [
            Message::RpReplicated(RpReplicated {
                secondary_region,
                objects_copied,
                ..
            }),
        ] => {
            assert_eq!(secondary_region, REGION);
            assert!(*objects_copied > 0);
        }
        other => panic!("expected one rp.replicated, got {other:?}"),
    }
    let store = BlobStore::local_folder(&folder, LocalDurability::OsBuffered)
        .unwrap()
        .with_key(&f.ctx.key);
    assert!(
        catalog::read_tier_manifest(&store, INSTANCE, "a", Tier::Secondary)
            .await
            .unwrap()
            .is_some()
    );

    // Retention of a geo vault without its secondary refuses too.
    let (kind, message) =
        match stowage_stages::retention::run(&f.ctx, INSTANCE, jiff::Timestamp::now()).await {
            Ok(report) => panic!("retention ran without the secondary: {report:?}"),
            Err(e) => (e.kind(), e.chain().join(": ")),
        };
    assert_eq!(kind, ErrorKind::Permanent);
    assert!(message.contains("is geo-redundant"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp_vaulted_carries_the_policy_expiry_or_the_lock_date() {
    let day = SignedDuration::from_hours(24);
    let f = fixture(&[(CalendarPeriod::Day, 30)], 7).await;
    // May has no DST change in the policy's zone: 30 calendar days are 30 × 24 h.
    let t0 = local(2026, 5, 1, 2);
    f.backup("a", t0, 1).await;
    let vaulted = vault_transfer(&f.ctx, "a").await;
    assert_eq!(vaulted.expires_at, Some(t0 + 30 * day));
    // A second RP of the same day: no rule selects it, so the policy lets it go at once.
    f.backup("a2", t0 + SignedDuration::from_hours(4), 2).await;
    let vaulted = vault_transfer(&f.ctx, "a2").await;
    assert_eq!(vaulted.expires_at, Some(t0 + SignedDuration::from_hours(4)));

    // Under a 60-day lock the lock's date is later than the policy's.
    let mut vault = settings::read_vault(&f.ctx.primary).await.unwrap();
    vault.immutability = Immutability::Locked;
    vault.minimum_retention_days = 60;
    settings::write_vault(&f.ctx.primary, &vault, WriteMode::CreateOrUpdate)
        .await
        .unwrap();
    let t1 = t0 + day;
    f.backup("b", t1, 3).await;
    let vaulted = vault_transfer(&f.ctx, "b").await;
    assert_eq!(vaulted.expires_at, Some(t1 + 60 * day));
}
