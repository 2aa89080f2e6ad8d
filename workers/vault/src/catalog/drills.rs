//! Restore-drill records in the vault: `drills/<drill-id>.json`, one [`DrillRecord`] per run,
//! written once (create-only) when the drill ends, beside the job record of the restore it
//! drove (`jobs/<restore-id>.json`); and each instance's drill schedule,
//! `drill-schedules/<instance>.json` ([`DrillSchedule`]), which `stowage scheduler` follows.

use std::collections::BTreeMap;

use futures::stream::BoxStream;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use stowage_schemas::domain::Tier;

use crate::document;
use crate::error::{Error, ErrorKind};
use crate::layout::{self, BlobKey};
use crate::store::{BlobStore, CreateOutcome};

/// How a drill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrillStatus {
    /// Restored, every object and volume verified.
    Succeeded,
    /// The restore failed, or something restored differs from the recovery point.
    Failed,
}

/// One restored volume, checked byte for byte against the recovery point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeCheck {
    /// Namespace of the claim in the target (after mapping).
    pub namespace: String,
    /// The claim.
    pub pvc: String,
    /// The disk the claim's volume is on in the target, when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// Size of the volume in the recovery point.
    pub size_bytes: u64,
    /// Bytes compared.
    pub bytes_verified: u64,
    /// What the bytes were compared with: `vault extent map <version>` or `operational snapshot <id>`.
    pub checked_against: String,
    /// Whether every byte matched.
    pub matches: bool,
    /// The first difference, or why the volume could not be checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The record of one restore drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    /// The drill id.
    pub id: String,
    /// The backup instance drilled.
    pub instance: String,
    /// The tier restored from.
    pub tier: Tier,
    /// The recovery point restored: the tier's latest when the drill started.
    pub recovery_point_id: String,
    /// The restore the drill submitted (its job record is `jobs/<restore-id>.json`).
    pub restore_id: String,
    /// The cluster restored into.
    pub target_cluster: String,
    /// Backed-up namespace → the isolated namespace it was restored into.
    #[serde(default)]
    pub namespace_mapping: BTreeMap<String, String>,
    /// Who ran it (user, or `scheduler <id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// How it ended.
    pub status: DrillStatus,
    /// Why it failed, in one sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the restore was requested.
    pub started_at: Timestamp,
    /// When the restore job finished (succeeded or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_at: Option<Timestamp>,
    /// When verification ended: the end of the recovery time.
    pub verified_at: Timestamp,
    /// When cleanup ended.
    pub finished_at: Timestamp,
    /// Recovery time: request → restored and verified, in seconds.
    pub rto_seconds: f64,
    /// Seconds of that spent restoring (request → restore job finished).
    #[serde(default)]
    pub restore_seconds: f64,
    /// Bytes the restore pipeline moved, as its stages' progress in the restore's job record
    /// says (hydration reports the bytes it wrote to staging disks; 0 when no stage reports).
    #[serde(default)]
    pub bytes_moved: u64,
    /// Objects found in the target exactly as the recovery point has them.
    #[serde(default)]
    pub objects_verified: u64,
    /// Objects missing or different in the target, each with its reason.
    #[serde(default)]
    pub object_findings: Vec<String>,
    /// Each volume's byte comparison.
    #[serde(default)]
    pub volumes: Vec<VolumeCheck>,
    /// Volume bytes compared.
    #[serde(default)]
    pub bytes_verified: u64,
    /// What cleanup deleted (`namespace x`, `pv y`, `disk z`).
    #[serde(default)]
    pub cleaned_up: Vec<String>,
    /// What cleanup could not delete, with the reason; these are left for the operator.
    #[serde(default)]
    pub cleanup_errors: Vec<String>,
}

fn decode(key: &BlobKey, bytes: &[u8]) -> Result<DrillRecord, Error> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::new(
            ErrorKind::Damaged,
            format!(
                "drill record {key} is unreadable: {e}; it was damaged or written by an \
                 incompatible version of Stowage"
            ),
        )
    })
}

/// Writes `record` as `drills/<id>.json` unless one with that id exists.
pub async fn create_drill(store: &BlobStore, record: &DrillRecord) -> Result<CreateOutcome, Error> {
    let key = layout::drill(&record.id)?;
    let bytes = serde_json::to_vec_pretty(record).expect("a drill record serialises");
    store.put_create_only(&key, bytes).await
}

/// The record of drill `id`.
pub async fn read_drill(store: &BlobStore, id: &str) -> Result<DrillRecord, Error> {
    let key = layout::drill(id)?;
    match store.get(&key).await {
        Ok(object) => decode(&key, &object.bytes),
        Err(e) if e.is_not_found() => Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "drill {id} has no record in the vault ({key} is missing); `stowage drill list` \
                 shows the drills the vault has records of"
            ),
        )),
        Err(e) => Err(e),
    }
}

/// Streams every drill record, in no particular order, a few at a time.
pub fn list_drills(store: &BlobStore) -> BoxStream<'static, Result<DrillRecord, Error>> {
    document::list(
        store,
        &layout::drills(),
        |key| layout::drill_id_from_key(key).is_some(),
        decode,
    )
}

/// When and how an instance is drilled: `stowage scheduler` runs a drill once the last one of
/// the instance's tier started `every_hours` ago (or there was none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillSchedule {
    /// The backup instance.
    pub instance: String,
    /// Hours between drills (at least 1).
    pub every_hours: u32,
    /// The tier drilled.
    pub tier: Tier,
    /// Each backed-up namespace is restored into `<prefix><namespace>`.
    pub namespace_prefix: String,
    /// The cluster restored into; none: the instance's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cluster: Option<String>,
}

fn decode_schedule(key: &BlobKey, bytes: &[u8]) -> Result<DrillSchedule, Error> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::new(
            ErrorKind::Damaged,
            format!(
                "drill schedule {key} is unreadable: {e}; set it again with `stowage drill \
                 schedule`"
            ),
        )
    })
}

/// Writes (or replaces) `schedule` as `drill-schedules/<instance>.json`.
pub async fn write_schedule(store: &BlobStore, schedule: &DrillSchedule) -> Result<(), Error> {
    let key = layout::drill_schedule(&schedule.instance)?;
    let bytes = serde_json::to_vec_pretty(schedule).expect("a drill schedule serialises");
    match store.get(&key).await {
        Ok(old) => store
            .update_if_unchanged(&key, bytes, &old.version)
            .await
            .map(|_| ()),
        Err(e) if e.is_not_found() => match store.put_create_only(&key, bytes).await? {
            CreateOutcome::Created(_) => Ok(()),
            CreateOutcome::AlreadyExists => Err(Error::contended(format!(
                "drill schedule of {}: written by someone else meanwhile; set it again",
                schedule.instance
            ))),
        },
        Err(e) => Err(e),
    }
}

/// Removes `instance`'s drill schedule; false when it had none.
pub async fn delete_schedule(store: &BlobStore, instance: &str) -> Result<bool, Error> {
    let key = layout::drill_schedule(instance)?;
    match store.get(&key).await {
        Ok(_) => {}
        Err(e) if e.is_not_found() => return Ok(false),
        Err(e) => return Err(e),
    }
    store.delete(&key).await.map(|_| true)
}

/// Streams every drill schedule.
pub fn list_schedules(store: &BlobStore) -> BoxStream<'static, Result<DrillSchedule, Error>> {
    document::list(
        store,
        &layout::drill_schedules(),
        |key| layout::drill_schedule_from_key(key).is_some(),
        decode_schedule,
    )
}
