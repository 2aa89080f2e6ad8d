//! Staging of vault and secondary restores: what hydration leaves for the restore stage, and
//! when it goes away.
//!
//! A hydration writes, in the store of the tier it read (the vault, or its secondary location):
//!
//! - `staging/<restore-id>/hydration.json` ([`StagingRecord`]) **first**, create-only: when it
//!   started and the staging disks it makes, so whatever it leaves behind can be found even if
//!   it dies half-way;
//! - one staging disk per volume, `staging-<restore-id>-<volume-id>`;
//! - `staging/<restore-id>/resources`, the copied resources object (sealed for that key, see
//!   `stowage_vault::seal`: hydration opens the recovery point's copy and seals it again).
//!
//! Then:
//!
//! - **After a successful restore** ([`release`], called by the restore stage), the staged
//!   resources object is deleted and every staging disk the restore did not adopt (filtered
//!   namespaces, `include_volumes: false`, a dry run) is deleted. Adopted disks are the
//!   restored volumes now and stay. `completed.json` (the completion record that makes a
//!   redelivered restore re-emit rather than re-apply) and `hydration.json` stay, a few hundred
//!   bytes, until [`sweep`] removes them after the keep time.
//! - **After a failed restore** everything is kept so the failure can be inspected (the disks
//!   can be attached, the resources read), then [`sweep`] removes it `keep_failed_for` after
//!   the hydration started: the disks listed in `hydration.json`, then every object under
//!   `staging/<restore-id>/`. A restore is counted as failed when it has not completed that
//!   long after it started — whether it failed permanently, was cancelled, or was
//!   dead-lettered after its last attempt, which the stage cannot tell apart from the inside.
//!   Disks of a failed restore that had already been adopted by restored volumes are deleted
//!   too: a failed restore is not a restore to keep.
//!
//! # Ownership
//!
//! A restore deletes (or adopts as a restored volume) only staging disks its own hydration
//! record lists ([`owns_disk`]): the record is written create-only by the hydration before it
//! makes any disk, so it is the vault's own account of what the restore made. The `staging`
//! section of a message (a `job.restore` anyone can publish, dry run or not) only *names*
//! disks; a disk it names that the record does not give this restore — an application's live
//! disk, another restore's disk — is refused: not used, not deleted, and reported in the
//! restore's warnings and log. Without a record, nothing is deleted, the staged resources
//! included. The sweep follows the same rule.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt as _;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use stowage_disk::{DiskError, DiskId, DiskProvider};
use stowage_runtime::StageError;
use stowage_schemas::domain::Tier;
use stowage_schemas::jobs::Staging;
use stowage_vault::layout::{self, BlobKey, LayoutError};
use stowage_vault::store::BlobStore;

/// File name of the hydration record under `staging/<restore-id>/`.
pub const HYDRATION_FILE: &str = "hydration.json";
/// File name of the staged resources object under `staging/<restore-id>/` (sealed like the
/// resources object it copies).
pub const RESOURCES_FILE: &str = layout::STAGED_RESOURCES;

/// What a hydration records before it makes anything, so its leftovers can be found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingRecord {
    /// The restore.
    pub restore_id: String,
    /// The backup instance restored.
    pub instance: String,
    /// The recovery point restored.
    pub recovery_point_id: String,
    /// The tier hydrated from.
    pub tier: Tier,
    /// When the first hydration attempt started.
    pub started_at: Timestamp,
    /// The staging disks the hydration makes (provider ids).
    pub disks: Vec<String>,
}

/// Key of the hydration record of a restore.
pub fn record_key(restore_id: &str) -> Result<BlobKey, LayoutError> {
    layout::staging(restore_id, HYDRATION_FILE)
}

/// Write the hydration record, create-only (a redelivered hydration keeps the first one).
pub async fn write_record(store: &BlobStore, record: &StagingRecord) -> Result<(), StageError> {
    let key = record_key(&record.restore_id).map_err(StageError::permanent)?;
    let bytes = serde_json::to_vec_pretty(record).expect("a staging record serializes");
    store.put_create_only(&key, bytes).await?;
    Ok(())
}

/// The hydration record of a restore, if there is one (and it is readable).
pub async fn read_record(
    store: &BlobStore,
    restore_id: &str,
) -> Result<Option<StagingRecord>, stowage_vault::Error> {
    let Ok(key) = record_key(restore_id) else {
        return Ok(None);
    };
    match store.get(&key).await {
        Ok(object) => Ok(serde_json::from_slice(&object.bytes).ok()),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the hydration record `record` says restore `restore_id` made staging disk `disk`.
///
/// This is the one ownership rule for staging disks (see "Ownership" in the module doc): the
/// record must be this restore's (written create-only by its hydration before any disk), list
/// the disk, and the disk must carry the name hydration gives this restore's disks
/// (`staging-<restore-id>-…`). Anything a message says about disks counts for nothing.
pub fn owns_disk(record: &StagingRecord, restore_id: &str, disk: &str) -> bool {
    record.restore_id == restore_id
        && record.disks.iter().any(|d| d == disk)
        && disk.starts_with(&crate::restore_hydration::staging_disk_prefix(restore_id))
}

/// Why a staging disk named by a restore's message is not this restore's: `None` when the
/// hydration record says the restore made it, else the reason, for the restore's warnings.
pub fn disk_refusal(
    record: Option<&StagingRecord>,
    restore_id: &str,
    disk: &str,
) -> Option<String> {
    match record {
        Some(record) if owns_disk(record, restore_id, disk) => None,
        Some(_) => Some(format!(
            "disk {disk} is named in the staging of restore {restore_id}, but the restore's \
             hydration record (staging/{restore_id}/{HYDRATION_FILE}) does not list it as a disk \
             it made: refused — it is neither used nor deleted"
        )),
        None => Some(format!(
            "disk {disk} is named in the staging of restore {restore_id}, but the vault holds no \
             hydration record for that restore (staging/{restore_id}/{HYDRATION_FILE}), so \
             nothing says the restore made it: refused — it is neither used nor deleted"
        )),
    }
}

/// After a successful restore from `staging` (held in `store`): delete the staged resources
/// object and every staging disk not in `adopted` — but only what the restore's hydration
/// record says the restore made ([`owns_disk`]); anything else named in `staging` is refused,
/// counted and logged, never deleted. Failures are logged, not returned: the restore is done,
/// and [`sweep`] does not touch a completed restore's disks, so a disk left here is reported in
/// the log by name for an operator to delete.
pub async fn release(
    store: &BlobStore,
    disks: &dyn DiskProvider,
    restore_id: &str,
    staging: &Staging,
    adopted: &[String],
) -> ReleaseReport {
    let mut report = ReleaseReport::default();
    let record = match read_record(store, restore_id).await {
        Ok(record) => record,
        Err(e) => {
            tracing::warn!(restore_id, error = %e, "could not read the hydration record; releasing nothing (`stowage restore cleanup` removes the staging after the keep time)");
            report.disks_refused = staging.disks.len() as u64;
            return report;
        }
    };
    // The staged resources are hydration's too: without its record nothing here is ours.
    if record.is_some()
        && let Ok(key) = layout::staging(restore_id, RESOURCES_FILE)
        && staging.resources == key.as_str()
    {
        match store.delete(&key).await {
            Ok(()) => report.objects_deleted += 1,
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                tracing::warn!(%key, error = %e, "could not delete the staged resources; `stowage restore cleanup` removes them after the keep time");
            }
        }
    }
    for disk in &staging.disks {
        if adopted.iter().any(|a| a == &disk.disk_id) {
            report.disks_kept += 1;
            continue;
        }
        if let Some(reason) = disk_refusal(record.as_ref(), restore_id, &disk.disk_id) {
            report.disks_refused += 1;
            tracing::warn!(disk = %disk.disk_id, restore_id, "{reason}");
            continue;
        }
        match disks.delete_disk(&DiskId(disk.disk_id.clone())).await {
            Ok(()) | Err(DiskError::NotFound { .. }) => report.disks_deleted += 1,
            Err(e) => {
                tracing::warn!(disk = %disk.disk_id, restore_id, error = %e, "could not delete an unused staging disk; delete it by hand");
            }
        }
    }
    report
}

/// What [`release`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReleaseReport {
    /// Staging objects deleted.
    pub objects_deleted: u64,
    /// Staging disks deleted (not adopted by the restore).
    pub disks_deleted: u64,
    /// Staging disks the restore adopted as restored volumes.
    pub disks_kept: u64,
    /// Disks named in the staging that the hydration record does not give this restore: left
    /// alone.
    pub disks_refused: u64,
}

/// Why a sweep stopped.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The store failed.
    #[error("sweeping staging areas failed: {0}; run the sweep again, it resumes where it stopped")]
    Store(#[from] stowage_vault::Error),
    /// The disk provider failed.
    #[error(
        "deleting staging disk {disk} of restore {restore_id} failed: {source}; run the sweep \
         again, or delete the disk by hand"
    )]
    Disk {
        /// The restore.
        restore_id: String,
        /// The disk.
        disk: String,
        /// The provider's error.
        #[source]
        source: DiskError,
    },
}

/// What one restore's staging area is, for [`sweep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StagingState {
    /// The restore completed: only its small records are left.
    Completed,
    /// The restore has not completed (failed, cancelled, dead-lettered, or still running).
    Unfinished,
}

/// One restore's staging area, as a sweep saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SweptRestore {
    /// The restore.
    pub restore_id: String,
    /// Completed or not.
    pub state: StagingState,
    /// When its hydration started (none: no hydration record; its age is unknown).
    pub started_at: Option<Timestamp>,
    /// Whether it was removed (false: kept, too recent or of unknown age).
    pub removed: bool,
    /// Staging disks deleted.
    pub disks_deleted: u64,
    /// Objects deleted under `staging/<restore-id>/`.
    pub objects_deleted: u64,
}

/// Remove staging areas older than `keep_failed_for` (counted from the hydration's start):
/// an unfinished restore's disks and objects, a completed restore's leftover records. Areas
/// without a hydration record (operational restores keep only `completed.json` there) have no
/// known age and are kept. Idempotent; a sweep that stops half-way resumes on the next
/// run. Holds one restore id per staging area in memory, never the listing of a whole area.
pub async fn sweep(
    store: &BlobStore,
    disks: &dyn DiskProvider,
    now: Timestamp,
    keep_failed_for: Duration,
) -> Result<Vec<SweptRestore>, SweepError> {
    let mut restores = BTreeSet::new();
    let mut listing = store.list(&layout::staging_areas());
    while let Some(info) = listing.next().await {
        let info = info?;
        if let [layout::STAGING, restore_id, ..] =
            info.key.as_str().split('/').collect::<Vec<_>>().as_slice()
        {
            restores.insert((*restore_id).to_owned());
        }
    }
    let keep = jiff::SignedDuration::try_from(keep_failed_for).unwrap_or(jiff::SignedDuration::MAX);
    let cutoff = now.checked_sub(keep).unwrap_or(Timestamp::MIN);
    let mut swept = Vec::new();
    for restore_id in restores {
        let Ok(completed_key) = layout::staging(&restore_id, crate::restore::COMPLETED_FILE) else {
            continue;
        };
        let completed = match store.head(&completed_key).await {
            Ok(_) => true,
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(e.into()),
        };
        let record = read_record(store, &restore_id).await?;
        let started_at = record.as_ref().map(|r| r.started_at);
        let state = if completed {
            StagingState::Completed
        } else {
            StagingState::Unfinished
        };
        let old = started_at.is_some_and(|t| t < cutoff);
        let mut entry = SweptRestore {
            restore_id: restore_id.clone(),
            state,
            started_at,
            removed: false,
            disks_deleted: 0,
            objects_deleted: 0,
        };
        // Without a hydration record (an operational restore's completion record) the age is
        // unknown: kept. It is a few hundred bytes and holds no disk.
        if !old {
            swept.push(entry);
            continue;
        }
        if state == StagingState::Unfinished
            && let Some(record) = &record
        {
            for disk in &record.disks {
                if !owns_disk(record, &restore_id, disk) {
                    tracing::warn!(%restore_id, %disk, "the hydration record lists a disk not named like this restore's staging disks; left alone");
                    continue;
                }
                match disks.delete_disk(&DiskId(disk.clone())).await {
                    Ok(()) | Err(DiskError::NotFound { .. }) => entry.disks_deleted += 1,
                    Err(source) => {
                        return Err(SweepError::Disk {
                            restore_id,
                            disk: disk.clone(),
                            source,
                        });
                    }
                }
            }
        }
        // The hydration record goes last, so an interrupted sweep still finds the disks.
        let Ok(area) = layout::staging_prefix(&restore_id) else {
            continue;
        };
        let mut keys = store.list(&area);
        let record_key = record_key(&restore_id).ok();
        while let Some(info) = keys.next().await {
            let key = info?.key;
            if Some(&key) == record_key.as_ref() {
                continue;
            }
            delete_if_present(store, &key).await?;
            entry.objects_deleted += 1;
        }
        if let Some(key) = record_key
            && delete_if_present(store, &key).await?
        {
            entry.objects_deleted += 1;
        }
        entry.removed = true;
        tracing::info!(restore_id = %entry.restore_id, state = ?entry.state, disks = entry.disks_deleted, objects = entry.objects_deleted, "staging area removed");
        swept.push(entry);
    }
    Ok(swept)
}

async fn delete_if_present(store: &BlobStore, key: &BlobKey) -> Result<bool, stowage_vault::Error> {
    match store.delete(key).await {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}
