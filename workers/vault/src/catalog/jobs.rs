//! Job records in the vault: `jobs/<job-id>.json`, one [`JobRecord`] per job id.
//!
//! * [`create_job`] writes a record create-only. Because only one writer can create a key, it
//!   doubles as a **claim**: the scheduler claims a backup slot by creating the slot's record, and
//!   whoever got [`CreateOutcome::Created`] publishes the job.
//! * [`update_job`] is a compare-and-swap loop: read the record and its version, apply the
//!   change, write back with [`BlobStore::update_if_unchanged`]; on a conflict re-read and
//!   re-apply. The change must therefore be a function of the record it is given (e.g. "mark
//!   stage X running, attempts += 1"), not a value computed from an earlier read. A missing record
//!   is created from `init()` (create-only, so two workers racing to create it both end up
//!   applying their change to the same record).
//! * [`read_job`] and [`list_jobs`] read; the listing is a stream, one record at a time.
//!
//! Timestamps are the caller's business: `update_job` does not touch `updated_at`, so a change
//! sets it with the clock it runs on (real time in workers, simulated time in tests).

use futures::stream::BoxStream;
use stowage_schemas::domain::JobRecord;

use crate::document::{self, Decision, UpdateError};
use crate::error::{Error, ErrorKind};
use crate::layout::{self, BlobKey};
use crate::store::{BlobStore, CreateOutcome, ObjectVersion};

/// How many times [`update_job`] re-reads and re-applies after a compare-and-swap conflict
/// before giving up.
pub const UPDATE_TRIES: u32 = 64;

/// The job-record failures, with the texts operators see.
impl Error {
    /// No record with this id.
    fn job_not_found(id: &str) -> Self {
        Self::new(
            ErrorKind::NotFound,
            format!(
                "job {id} has no record in the vault (jobs/{id}.json is missing); check the id \
                 (`stowage jobs list` shows the known jobs) and that --vault names the right vault"
            ),
        )
    }

    /// Too many writers changed the record of job `id` at once, `tries` times in a row.
    pub fn job_contended(id: &str, tries: u32) -> Self {
        Self::contended(format!(
            "job {id}: gave up after {tries} compare-and-swap conflicts in a row; \
             too many writers update this record at once, retry the operation"
        ))
    }
}

fn decode(key: &BlobKey, bytes: &[u8]) -> Result<JobRecord, Error> {
    serde_json::from_slice(bytes).map_err(|e| job_corrupt(key.as_str(), &e.to_string()))
}

/// The record is not valid JSON of the expected shape.
fn job_corrupt(key: &str, reason: &str) -> Error {
    Error::new(
        ErrorKind::Damaged,
        format!(
            "job record {key} is unreadable: {reason}; it was damaged or written by an \
             incompatible version of Stowage"
        ),
    )
}

/// Writes `record` as `jobs/<record.id>.json` unless a record with that id exists.
///
/// [`CreateOutcome::AlreadyExists`] leaves the stored record untouched: the caller lost the
/// claim (or is a redelivery of the submission that won it).
pub async fn create_job(store: &BlobStore, record: &JobRecord) -> Result<CreateOutcome, Error> {
    let key = layout::job(&record.id)?;
    store.put_create_only(&key, document::encode(record)).await
}

/// The record of job `id`, with the version to name in a compare-and-swap.
pub async fn read_job(store: &BlobStore, id: &str) -> Result<(JobRecord, ObjectVersion), Error> {
    let key = layout::job(id)?;
    match store.get(&key).await {
        Ok(object) => Ok((decode(&key, &object.bytes)?, object.version)),
        Err(e) if e.is_not_found() => Err(Error::job_not_found(id)),
        Err(e) => Err(e),
    }
}

/// [`update_job`] of a job whose record the caller has already read: if it vanished since,
/// it is recreated from `known` with `apply` applied.
pub async fn update_known_job(
    store: &BlobStore,
    known: &JobRecord,
    apply: impl FnMut(&mut JobRecord),
) -> Result<JobRecord, Error> {
    update_job(store, &known.id, || known.clone(), apply).await
}

/// Applies `apply` to the record of job `id` with compare-and-swap, re-reading and re-applying
/// on a conflict (at most [`UPDATE_TRIES`] times). A missing record is created from `init()`
/// with `apply` applied. Returns the record as written. A change that leaves the record equal
/// to what was read is not written.
pub async fn update_job(
    store: &BlobStore,
    id: &str,
    init: impl Fn() -> JobRecord,
    mut apply: impl FnMut(&mut JobRecord),
) -> Result<JobRecord, Error> {
    let key = layout::job(id)?;
    document::update(store, &key, UPDATE_TRIES, |stored: Option<JobRecord>| {
        let Some(before) = stored else {
            let mut record = init();
            if record.id != id {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "update of job {id} was given an initial record for job {}; \
                         the init closure must build the record of the job being updated",
                        record.id
                    ),
                ));
            }
            apply(&mut record);
            return Ok(Decision::Write(record.clone(), record));
        };
        let mut record = before.clone();
        apply(&mut record);
        Ok(if record == before {
            Decision::Keep(record)
        } else {
            Decision::Write(record.clone(), record)
        })
    })
    .await
    .map_err(|e| match e {
        UpdateError::Corrupt { key, reason } => job_corrupt(&key, &reason),
        UpdateError::Contended { tries, .. } => Error::job_contended(id, tries),
        UpdateError::Store(e) => e,
        UpdateError::Rejected(e) => e,
    })
}

/// Streams every job record in the vault, in no particular order, reading a few at a time
/// (memory stays bounded however many jobs the vault holds). A record deleted between the
/// listing and its read is skipped; objects under `jobs/` that are not `<id>.json` are ignored.
pub fn list_jobs(store: &BlobStore) -> BoxStream<'static, Result<JobRecord, Error>> {
    document::list(
        store,
        &layout::jobs(),
        |key| layout::job_id_from_key(key).is_some(),
        decode,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use futures::TryStreamExt;
    use jiff::Timestamp;
    use stowage_schemas::Stage;
    use stowage_schemas::domain::JobStatus;

    use super::*;
    use crate::store::LocalDurability;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    struct TempFolder(std::path::PathBuf);

    impl TempFolder {
        fn new(tag: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("stowage-jobs-{tag}-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFolder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn create_is_a_claim_and_read_returns_the_winner() {
        let store = BlobStore::in_memory();
        let mut first = JobRecord::new("sched-a", Stage::Snapshot, at(10));
        first.requested_by = Some("scheduler 1".into());
        let mut second = first.clone();
        second.requested_by = Some("scheduler 2".into());
        assert!(matches!(
            create_job(&store, &first).await.unwrap(),
            CreateOutcome::Created(_)
        ));
        assert_eq!(
            create_job(&store, &second).await.unwrap(),
            CreateOutcome::AlreadyExists
        );
        let (read, _) = read_job(&store, "sched-a").await.unwrap();
        assert_eq!(read, first);
    }

    #[tokio::test]
    async fn concurrent_claims_have_exactly_one_winner() {
        let store = BlobStore::in_memory();
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut record = JobRecord::new("slot", Stage::Snapshot, at(i));
                    record.requested_by = Some(format!("claimant {i}"));
                    create_job(&store, &record).await.unwrap()
                })
            })
            .collect();
        let mut created = 0;
        for task in tasks {
            if matches!(task.await.unwrap(), CreateOutcome::Created(_)) {
                created += 1;
            }
        }
        assert_eq!(created, 1);
    }

    #[tokio::test]
    async fn missing_and_bad_ids_are_named() {
        let store = BlobStore::in_memory();
        let err = read_job(&store, "nope").await.unwrap_err();
        assert!(err.is_not_found());
        assert!(err.to_string().contains("job nope has no record"), "{err}");
        let err = read_job(&store, "a/b").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        let key = layout::job("broken").unwrap();
        store.put_create_only(&key, &b"{"[..]).await.unwrap();
        let err = read_job(&store, "broken").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Damaged, "{err}");
    }

    #[tokio::test]
    async fn update_creates_a_missing_record_and_refuses_a_foreign_init() {
        let store = BlobStore::in_memory();
        let record = update_job(
            &store,
            "job-1",
            || JobRecord::new("job-1", Stage::Snapshot, at(1)),
            |r| r.stage_mut(Stage::Snapshot).status = JobStatus::Running,
        )
        .await
        .unwrap();
        assert_eq!(record.status(), JobStatus::Running);
        assert_eq!(read_job(&store, "job-1").await.unwrap().0, record);
        let err = update_job(
            &store,
            "job-2",
            || JobRecord::new("other", Stage::Snapshot, at(1)),
            |_| {},
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(
            err.to_string().contains("initial record for job other"),
            "{err}"
        );
    }

    async fn concurrent_updates_all_land(store: BlobStore) {
        const TASKS: u64 = 12;
        const EACH: u64 = 5;
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let store = store.clone();
                tokio::spawn(async move {
                    for step in 0..EACH {
                        update_job(
                            &store,
                            "busy",
                            || JobRecord::new("busy", Stage::Snapshot, at(0)),
                            |r| {
                                let run = r.stage_mut(Stage::VaultTransfer);
                                run.attempts += 1;
                                run.progress.items_done += 1;
                                run.progress.bytes_done += task * 100 + step;
                            },
                        )
                        .await
                        .unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let (record, _) = read_job(&store, "busy").await.unwrap();
        let run = record.stage(Stage::VaultTransfer).unwrap();
        assert_eq!(u64::from(run.attempts), TASKS * EACH);
        assert_eq!(run.progress.items_done, TASKS * EACH);
        let expected: u64 = (0..TASKS)
            .flat_map(|t| (0..EACH).map(move |s| t * 100 + s))
            .sum();
        assert_eq!(run.progress.bytes_done, expected);
        assert_eq!(record.stages.len(), 2, "one snapshot and one vault run");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_updates_all_land_in_memory() {
        concurrent_updates_all_land(BlobStore::in_memory()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_updates_all_land_in_a_local_folder() {
        let folder = TempFolder::new("cas");
        let store = BlobStore::local_folder(&folder.0, LocalDurability::OsBuffered).unwrap();
        concurrent_updates_all_land(store).await;
    }

    #[tokio::test]
    async fn unchanged_records_are_not_rewritten() {
        let store = BlobStore::in_memory();
        let record = JobRecord::new("still", Stage::Retention, at(5));
        create_job(&store, &record).await.unwrap();
        let (_, before) = read_job(&store, "still").await.unwrap();
        update_job(&store, "still", || record.clone(), |_| {})
            .await
            .unwrap();
        let (_, after) = read_job(&store, "still").await.unwrap();
        assert_eq!(before, after);
    }

    #[tokio::test]
    async fn list_streams_every_record() {
        let store = BlobStore::in_memory();
        for i in 0..30 {
            let record = JobRecord::new(format!("job-{i}"), Stage::Snapshot, at(i));
            create_job(&store, &record).await.unwrap();
        }
        let ids: BTreeSet<String> = list_jobs(&store)
            .map_ok(|r| r.id)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(ids.len(), 30);
        assert!(ids.contains("job-0") && ids.contains("job-29"));
    }
}
