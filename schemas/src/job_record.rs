//! Job records: `jobs/<job-id>.json` in a vault, one per job id.
//!
//! A record is created when a job is submitted (by the scheduler, `stowage backup now`, a restore
//! command, ...) and updated with compare-and-swap by the workers that run its stages. A pipeline
//! keeps one record: the snapshot job's id is carried by the vault-transfer and geo-replication
//! jobs its events trigger, and each of those stages appends its own [`StageRun`].
//!
//! Every field that may be absent has a serde default, so records written by an older version
//! stay readable and new fields can be added (see `schemas/EVOLUTION.md`).

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{MessageId, Stage};

/// The record of one job and the stages it ran, stored as `jobs/<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobRecord {
    /// The job id (= `Envelope::job_id` of every message of the job).
    pub id: String,
    /// The stage the job was submitted to (`snapshot`, `restore-hydration`, ...).
    pub kind: Stage,
    /// The backup instance the job works on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The recovery point the job creates or reads, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_point_id: Option<String>,
    /// The restore the job belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_id: Option<String>,
    /// Who asked for the job, e.g. `scheduler (slot 2026-01-15T02:00Z)` or `cli: ada@laptop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// When the record was created.
    pub created_at: Timestamp,
    /// When the record last changed.
    pub updated_at: Timestamp,
    /// When the job's message was published (the broker confirmed it); none: not yet, or the
    /// producer does not track it. The scheduler claims a slot by creating the record and sets
    /// this after publishing, so a claim whose producer died before publishing is recognisable
    /// and republished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<Timestamp>,
    /// When cancellation was requested; none: not requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_requested_at: Option<Timestamp>,
    /// One run per stage that ran or is queued, in pipeline order.
    #[serde(default)]
    pub stages: Vec<StageRun>,
}

/// One stage of a job: its state, attempts, timing and progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StageRun {
    /// The stage.
    pub stage: Stage,
    /// Where the stage is.
    pub status: JobStatus,
    /// Deliveries so far (1 on the first run; retries add one each).
    #[serde(default)]
    pub attempts: u32,
    /// When the stage first started running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When the stage reached a final status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Progress reported by the stage.
    #[serde(default)]
    pub progress: JobProgress,
    /// Why the stage failed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A one-line summary of what the stage did (e.g. `3 volumes, 1.2 GiB stored`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The handling of the stage's message under way, if any: set when a worker starts
    /// handling it, cleared when that handling ends, whatever its result. Found still set by a
    /// redelivery of the same message, it means the worker handling it died mid-job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handling: Option<Handling>,
    /// Handlings of this stage that started and never ended because the worker running them
    /// died (graceful shutdowns and retries do not count). At the workers' poison limit the
    /// message is dead-lettered as poison instead of being handled again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interrupted: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One handling of a stage's message, as recorded when it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Handling {
    /// Identifies this handling, so that its end clears only its own mark.
    pub id: String,
    /// The message being handled (`Envelope::message_id`).
    pub message_id: MessageId,
    /// Its attempt (`Envelope::attempt`): a retry is a new message, not a redelivery.
    #[serde(default)]
    pub attempt: u32,
    /// When the handling started.
    pub started_at: Timestamp,
    /// The worker began a graceful shutdown while this handling ran: if the handling never
    /// ends, the shutdown handed the message back, which is not a crash.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shutting_down: bool,
}

impl StageRun {
    /// A run of `stage` that has not started yet.
    pub fn queued(stage: Stage) -> Self {
        Self {
            stage,
            status: JobStatus::Queued,
            attempts: 0,
            started_at: None,
            finished_at: None,
            progress: JobProgress::default(),
            error: None,
            summary: None,
            handling: None,
            interrupted: 0,
        }
    }
}

/// Where a job or one of its stages is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Submitted, not picked up yet.
    Queued,
    /// A worker is running it (or it is between retries).
    Running,
    /// Finished successfully.
    Succeeded,
    /// Failed permanently or after its last retry.
    Failed,
    /// Cancelled on request.
    Cancelled,
}

as_str! {
    /// The lowercase name, as serialized (e.g. `succeeded`).
    JobStatus {
        Queued => "queued",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
    }
}

impl JobStatus {
    /// Whether the status is final (succeeded, failed or cancelled).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// Progress of a stage, as last reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobProgress {
    /// Bytes processed so far.
    #[serde(default)]
    pub bytes_done: u64,
    /// Bytes to process in total, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// Items (resources, volumes, objects) processed so far.
    #[serde(default)]
    pub items_done: u64,
    /// Items to process in total, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items_total: Option<u64>,
}

impl JobRecord {
    /// A new record for job `id` submitted to stage `kind`, with that stage's run queued.
    pub fn new(id: impl Into<String>, kind: Stage, now: Timestamp) -> Self {
        Self {
            id: id.into(),
            kind,
            instance: None,
            recovery_point_id: None,
            restore_id: None,
            requested_by: None,
            created_at: now,
            updated_at: now,
            submitted_at: None,
            cancel_requested_at: None,
            stages: vec![StageRun::queued(kind)],
        }
    }

    /// The job's overall status: failed if any stage failed, else cancelled if any stage was
    /// cancelled, else running if any stage is running or queued (queued if every stage is
    /// still queued), else succeeded. A record without stages counts as queued.
    pub fn status(&self) -> JobStatus {
        let any = |status| self.stages.iter().any(|run| run.status == status);
        if any(JobStatus::Failed) {
            JobStatus::Failed
        } else if any(JobStatus::Cancelled) {
            JobStatus::Cancelled
        } else if self
            .stages
            .iter()
            .all(|run| run.status == JobStatus::Queued)
        {
            JobStatus::Queued
        } else if any(JobStatus::Running) || any(JobStatus::Queued) {
            JobStatus::Running
        } else {
            JobStatus::Succeeded
        }
    }

    /// The run of `stage`, appended as queued if the record has none yet (the record keeps
    /// stages in pipeline order, [`Stage::ALL`]).
    pub fn stage_mut(&mut self, stage: Stage) -> &mut StageRun {
        let index = match self.stages.iter().position(|run| run.stage == stage) {
            Some(index) => index,
            None => {
                let order = |s: Stage| Stage::ALL.iter().position(|&x| x == s);
                let at = self
                    .stages
                    .iter()
                    .position(|run| order(run.stage) > order(stage))
                    .unwrap_or(self.stages.len());
                self.stages.insert(at, StageRun::queued(stage));
                at
            }
        };
        &mut self.stages[index]
    }

    /// The run of `stage`, if the record has one.
    pub fn stage(&self, stage: Stage) -> Option<&StageRun> {
        self.stages.iter().find(|run| run.stage == stage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    #[test]
    fn new_record_has_its_stage_queued() {
        let record = JobRecord::new("job-1", Stage::Snapshot, at(100));
        assert_eq!(record.stages, vec![StageRun::queued(Stage::Snapshot)]);
        assert_eq!(record.status(), JobStatus::Queued);
        assert_eq!(record.created_at, record.updated_at);
    }

    #[test]
    fn status_follows_the_stages() {
        let mut record = JobRecord::new("job-1", Stage::Snapshot, at(100));
        record.stage_mut(Stage::Snapshot).status = JobStatus::Running;
        assert_eq!(record.status(), JobStatus::Running);
        record.stage_mut(Stage::Snapshot).status = JobStatus::Succeeded;
        assert_eq!(record.status(), JobStatus::Succeeded);
        // A queued follow-up stage keeps the pipeline running.
        record.stage_mut(Stage::VaultTransfer);
        assert_eq!(record.status(), JobStatus::Running);
        record.stage_mut(Stage::VaultTransfer).status = JobStatus::Cancelled;
        assert_eq!(record.status(), JobStatus::Cancelled);
        record.stage_mut(Stage::GeoReplication).status = JobStatus::Failed;
        assert_eq!(record.status(), JobStatus::Failed);
        record.stages.clear();
        assert_eq!(record.status(), JobStatus::Queued);
    }

    #[test]
    fn stage_mut_keeps_pipeline_order_and_does_not_duplicate() {
        let mut record = JobRecord::new("job-1", Stage::Snapshot, at(100));
        record.stage_mut(Stage::GeoReplication);
        record.stage_mut(Stage::VaultTransfer).attempts = 2;
        record.stage_mut(Stage::VaultTransfer).attempts += 1;
        let order: Vec<_> = record.stages.iter().map(|run| run.stage).collect();
        assert_eq!(
            order,
            [Stage::Snapshot, Stage::VaultTransfer, Stage::GeoReplication]
        );
        assert_eq!(record.stage(Stage::VaultTransfer).unwrap().attempts, 3);
    }

    #[test]
    fn minimal_json_reads_with_defaults_and_round_trips() {
        let json = r#"{"id":"j","kind":"restore-hydration",
            "created_at":"2026-01-15T02:00:00Z","updated_at":"2026-01-15T02:00:00Z",
            "stages":[{"stage":"restore-hydration","status":"running"}],
            "field_from_the_future":1}"#;
        let record: JobRecord = serde_json::from_str(json).unwrap();
        assert_eq!(record.kind, Stage::RestoreHydration);
        assert_eq!(record.stages[0].attempts, 0);
        assert_eq!(record.stages[0].progress, JobProgress::default());
        // Records written before handlings were tracked: none under way, none interrupted.
        assert_eq!(
            (&record.stages[0].handling, record.stages[0].interrupted),
            (&None, 0)
        );
        assert_eq!(record.status(), JobStatus::Running);
        let again: JobRecord =
            serde_json::from_slice(&serde_json::to_vec(&record).unwrap()).unwrap();
        assert_eq!(again, record);
        let text = serde_json::to_string(&JobStatus::Cancelled).unwrap();
        assert_eq!(text, "\"cancelled\"");
    }
}
