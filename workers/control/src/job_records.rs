//! Job records kept by the workers: [`Recorded`] wraps any stage handler and keeps the job's
//! record (`jobs/<job-id>.json`, see `stowage_vault::catalog::jobs`) up to date around it.
//!
//! Around one delivery of stage `S` of job `J`:
//!
//! 1. **Start**: compare-and-swap `J`'s record (created if absent — a job published by any
//!    AMQP producer has none), marking `S` running with `attempts + 1` and `started_at`. If
//!    the record has `cancel_requested_at`, `S` is marked cancelled instead and the handler is
//!    not run: the runtime acks the message and nothing retries it.
//! 2. **While running**: a watcher task writes the handler's latest progress
//!    ([`JobContext::report_progress`]) at most every `flush_interval`, and re-reads the record
//!    every `poll_interval`; a cancellation request trips the context's
//!    [`CancellationToken`], and the handler stops at its next safe point.
//! 3. **Result**: success → `S` succeeded, with a one-line summary of the event it emits, and
//!    each stage the emitted message triggers (the runtime keeps the job id on it) marked
//!    `queued` in the same record, unless it already has a run — so the snapshot job's record
//!    shows `vault-transfer` queued the moment `rp.created` goes out. A permanent failure, or
//!    a transient one on the last attempt → failed, with the error chain. A transient failure
//!    that will be retried → still running, with the error and a `retrying` summary.
//!    Cancelled → cancelled.
//!
//! A record that cannot be read or written never fails the job: the data path matters more.
//! The failure is logged as a warning and the handler runs (or its result stands) as if the
//! record were not there. Each record operation is bounded by `record_timeout`.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use jiff::Timestamp;
use stowage_runtime::topology::triggers;
use stowage_runtime::{
    CancellationToken, ErrorKind, JobContext, Outcome, ProgressSink, StageError, StageHandler,
};
use stowage_schemas::domain::{JobProgress, JobRecord, JobStatus};
use stowage_schemas::jobs::Trigger;
use stowage_schemas::{Envelope, Message, Route, Stage};
use stowage_vault::catalog::jobs::{read_job, update_job};
use stowage_vault::store::BlobStore;

/// How [`Recorded`] keeps records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSettings {
    /// The worker's attempts per job (its retry policy's `max_attempts`): a transient failure
    /// on the last one is recorded as failed.
    pub max_attempts: u32,
    /// How often a running job's record is re-read for a cancellation request.
    pub poll_interval: Duration,
    /// How often, at most, progress is written to the record.
    pub flush_interval: Duration,
    /// Longest wait for one record read or write before giving up on it (the job goes on).
    pub record_timeout: Duration,
}

impl Default for RecordSettings {
    fn default() -> Self {
        Self {
            max_attempts: stowage_runtime::RetryPolicy::default().max_attempts,
            poll_interval: Duration::from_secs(3),
            flush_interval: Duration::from_secs(1),
            record_timeout: Duration::from_secs(10),
        }
    }
}

/// A stage handler whose runs are recorded in the job's record (see the module doc).
#[derive(Clone)]
pub struct Recorded<H> {
    inner: H,
    store: BlobStore,
    settings: RecordSettings,
}

impl<H: StageHandler> Recorded<H> {
    /// `inner`, recording its runs in `store` (the vault's primary storage).
    pub fn new(inner: H, store: BlobStore, settings: RecordSettings) -> Self {
        Self {
            inner,
            store,
            settings,
        }
    }
}

/// The latest progress a handler reported; the watcher flushes it.
#[derive(Default)]
struct Latest(Mutex<Option<JobProgress>>);

impl Latest {
    fn get(&self) -> Option<JobProgress> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ProgressSink for Latest {
    fn report(&self, progress: JobProgress) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(progress);
    }
}

/// The backup instance a message is about, if any.
pub fn instance_of(message: &Message) -> Option<&str> {
    Some(match message {
        Message::Snapshot(j) => &j.instance,
        Message::VaultTransfer(j) => &j.instance,
        Message::GeoReplication(j) => &j.instance,
        Message::RestoreHydration(j) => &j.instance,
        Message::Restore(j) => &j.instance,
        Message::Retention(j) => &j.instance,
        Message::RpCreated(e) => &e.instance,
        Message::RpVaulted(e) => &e.instance,
        Message::RpReplicated(e) => &e.instance,
        Message::RestoreHydrated(e) => &e.instance,
        Message::RestoreCompleted(e) => &e.instance,
        Message::JobProgress(_) | Message::JobFailed(_) => return None,
    })
}

/// A new record for the job `envelope` belongs to, as the stage `kind` first sees it.
pub fn new_record(envelope: &Envelope, kind: Stage, now: Timestamp) -> JobRecord {
    let mut record = JobRecord::new(envelope.job_id.clone(), kind, now);
    let (rp, restore) = envelope.message.subject();
    record.instance = instance_of(&envelope.message).map(str::to_owned);
    record.recovery_point_id = envelope
        .recovery_point_id
        .clone()
        .or_else(|| rp.map(str::to_owned));
    record.restore_id = envelope
        .restore_id
        .clone()
        .or_else(|| restore.map(str::to_owned));
    if let Message::Snapshot(job) = &envelope.message
        && let Trigger::OnDemand { requested_by } = &job.trigger
    {
        record.requested_by = requested_by.clone();
    }
    record
}

/// The stages a message starts when published: its job stage, or the stages its event
/// triggers.
pub fn downstream(message: &Message) -> Vec<Stage> {
    match message.route() {
        Route::Job(stage) => vec![stage],
        Route::Event(name) => Stage::ALL
            .into_iter()
            .filter(|s| triggers(*s).contains(&name))
            .collect(),
    }
}

/// A one-line summary of a `stage`'s result, from the event it emits (or, when it emits
/// nothing, why a stage that normally does had nothing to do).
pub fn summarize(stage: Stage, outcome: &Outcome) -> String {
    let gib = |b: u64| format_bytes(b);
    let lines: Vec<String> = outcome
        .messages()
        .iter()
        .filter_map(|m| match m {
            Message::RpCreated(e) => Some(format!(
                "recovery point {} created: {} object(s), {} volume(s), {}{}",
                e.recovery_point_id,
                e.resource_count,
                e.volume_count,
                gib(e.volume_bytes),
                if e.warnings.is_empty() {
                    String::new()
                } else {
                    format!(", {} warning(s)", e.warnings.len())
                }
            )),
            Message::RpVaulted(e) => Some(format!(
                "vaulted: {} read, {} stored, {} new chunk(s), {} reused",
                gib(e.bytes_read),
                gib(e.bytes_stored),
                e.chunks_new,
                e.chunks_reused
            )),
            Message::RpReplicated(e) => Some(format!(
                "replicated to {}: {} object(s), {}",
                e.secondary_region,
                e.objects_copied,
                gib(e.bytes_copied)
            )),
            Message::RestoreHydrated(e) => Some(format!(
                "hydrated {} volume(s) into {} staging",
                e.staging.disks.len(),
                e.staging.location
            )),
            Message::RestoreCompleted(e) => Some(format!(
                "{}restored into {}: {} created, {} patched, {} skipped, {} volume(s){}",
                if e.dry_run {
                    "dry run: would have "
                } else {
                    ""
                },
                e.target_cluster,
                e.resources_created,
                e.resources_patched,
                e.resources_skipped,
                e.volumes_restored,
                if e.warnings.is_empty() {
                    String::new()
                } else {
                    format!(", {} warning(s)", e.warnings.len())
                }
            )),
            _ => None,
        })
        .collect();
    if lines.is_empty() {
        match stage {
            Stage::VaultTransfer => {
                "nothing copied: no vault rule of the policy selects this recovery point".to_owned()
            }
            Stage::GeoReplication => {
                "nothing to replicate: the vault is not geo-redundant".to_owned()
            }
            _ => "done".to_owned(),
        }
    } else {
        lines.join("; ")
    }
}

/// `1.5 GiB`, `12 MiB`, `512 B`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if value < 10.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

impl<H: StageHandler> Recorded<H> {
    /// Run `apply` on the record under compare-and-swap, bounded by the record timeout.
    /// `None` (logged) when the record could not be written.
    async fn update(
        &self,
        envelope: &Envelope,
        what: &str,
        apply: impl FnMut(&mut JobRecord) + Send,
    ) -> Option<JobRecord> {
        let stage = self.inner.stage();
        let init = || new_record(envelope, stage, Timestamp::now());
        let attempt = tokio::time::timeout(
            self.settings.record_timeout,
            update_job(&self.store, &envelope.job_id, init, apply),
        )
        .await;
        match attempt {
            Ok(Ok(record)) => Some(record),
            Ok(Err(err)) => {
                tracing::warn!(job_id = %envelope.job_id, %stage, error = %err, "could not record {what} in the job record; the job goes on");
                None
            }
            Err(_) => {
                tracing::warn!(job_id = %envelope.job_id, %stage, timeout = ?self.settings.record_timeout, "recording {what} in the job record timed out; the job goes on");
                None
            }
        }
    }
}

impl<H: StageHandler> StageHandler for Recorded<H> {
    type Input = H::Input;

    fn stage(&self) -> Stage {
        self.inner.stage()
    }

    async fn handle(&self, ctx: JobContext, input: H::Input) -> Result<Outcome, StageError> {
        let Some(envelope) = ctx.envelope().cloned() else {
            // Called outside a worker, with no envelope: there is no job to record.
            return self.inner.handle(ctx, input).await;
        };
        let stage = self.inner.stage();
        let now = Timestamp::now();
        let started = self
            .update(&envelope, "the start", |r| {
                r.updated_at = now;
                let cancelled = r.cancel_requested_at.is_some();
                let run = r.stage_mut(stage);
                if cancelled {
                    run.status = JobStatus::Cancelled;
                    run.finished_at = Some(now);
                    run.summary = Some("cancelled before it started".into());
                } else {
                    run.status = JobStatus::Running;
                    run.attempts += 1;
                    run.started_at.get_or_insert(now);
                    run.finished_at = None;
                    run.progress = JobProgress::default();
                }
            })
            .await;
        if let Some(record) = &started
            && let Some(at) = record.cancel_requested_at
        {
            return Err(StageError::cancelled(format!(
                "job {} was cancelled at {at}; its {stage} stage was not started",
                envelope.job_id
            )));
        }

        let token = CancellationToken::new();
        let latest = Arc::new(Latest::default());
        let watcher = tokio::spawn(watch(
            self.store.clone(),
            envelope.clone(),
            stage,
            latest.clone(),
            token.clone(),
            self.settings,
        ));
        let run_ctx = ctx
            .clone()
            .with_cancellation(token)
            .with_progress(latest.clone());
        let result = AssertUnwindSafe(self.inner.handle(run_ctx, input))
            .catch_unwind()
            .await;
        watcher.abort();
        let progress = latest.get();
        let now = Timestamp::now();
        let last_attempt = ctx.attempt.saturating_add(1) >= self.settings.max_attempts.max(1);
        let record = |r: &mut JobRecord, status: JobStatus, error: Option<String>, summary| {
            r.updated_at = now;
            let run = r.stage_mut(stage);
            run.status = status;
            if let Some(p) = &progress {
                run.progress = *p;
            }
            if !matches!(status, JobStatus::Running | JobStatus::Queued) {
                run.finished_at = Some(now);
            }
            if error.is_some() || status == JobStatus::Succeeded {
                run.error = error.clone();
            }
            run.summary = summary;
        };
        match &result {
            Ok(Ok(outcome)) => {
                let summary = summarize(stage, outcome);
                let next: Vec<Stage> = outcome.messages().iter().flat_map(downstream).collect();
                self.update(&envelope, "success", |r| {
                    record(r, JobStatus::Succeeded, None, Some(summary.clone()));
                    for &down in &next {
                        if !r.stages.iter().any(|s| s.stage == down) {
                            r.stage_mut(down).status = JobStatus::Queued;
                        }
                    }
                })
                .await;
            }
            Ok(Err(err)) => {
                let chain = err.chain().join(": ");
                let (status, summary) = match err.kind() {
                    ErrorKind::Cancelled => (JobStatus::Cancelled, format!("cancelled: {err}")),
                    ErrorKind::Permanent => (JobStatus::Failed, "failed permanently".to_owned()),
                    ErrorKind::Transient if last_attempt => (
                        JobStatus::Failed,
                        format!("gave up after {} attempt(s)", ctx.attempt.saturating_add(1)),
                    ),
                    ErrorKind::Transient => (
                        JobStatus::Running,
                        format!(
                            "retrying: attempt {} of {} failed",
                            ctx.attempt.saturating_add(1),
                            self.settings.max_attempts
                        ),
                    ),
                };
                let error = (err.kind() != ErrorKind::Cancelled).then_some(chain);
                self.update(&envelope, "the failure", |r| {
                    record(r, status, error.clone(), Some(summary.clone()));
                })
                .await;
            }
            Err(_) => {
                let (status, summary) = if last_attempt {
                    (
                        JobStatus::Failed,
                        "the handler panicked on its last attempt",
                    )
                } else {
                    (JobStatus::Running, "retrying: the handler panicked")
                };
                self.update(&envelope, "the panic", |r| {
                    record(
                        r,
                        status,
                        Some("the handler panicked".into()),
                        Some(summary.into()),
                    );
                })
                .await;
            }
        }
        match result {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// While the handler runs: flush its progress and look for a cancellation request.
async fn watch(
    store: BlobStore,
    envelope: Envelope,
    stage: Stage,
    latest: Arc<Latest>,
    token: CancellationToken,
    settings: RecordSettings,
) {
    let tick = settings
        .flush_interval
        .min(settings.poll_interval)
        .max(Duration::from_millis(10));
    let mut flushed: Option<JobProgress> = None;
    let mut since_read = Duration::ZERO;
    loop {
        tokio::time::sleep(tick).await;
        since_read += tick;
        let current = latest.get();
        let cancel_requested = if current.is_some() && current != flushed {
            let progress = current.unwrap_or_default();
            let init = || new_record(&envelope, stage, Timestamp::now());
            let write = update_job(&store, &envelope.job_id, init, |r| {
                r.updated_at = Timestamp::now();
                r.stage_mut(stage).progress = progress;
            });
            match tokio::time::timeout(settings.record_timeout, write).await {
                Ok(Ok(record)) => {
                    flushed = current;
                    since_read = Duration::ZERO;
                    record.cancel_requested_at.is_some()
                }
                Ok(Err(err)) => {
                    tracing::debug!(job_id = %envelope.job_id, error = %err, "could not write progress");
                    false
                }
                Err(_) => false,
            }
        } else if since_read >= settings.poll_interval {
            since_read = Duration::ZERO;
            match tokio::time::timeout(settings.record_timeout, read_job(&store, &envelope.job_id))
                .await
            {
                Ok(Ok((record, _))) => record.cancel_requested_at.is_some(),
                Ok(Err(err)) => {
                    tracing::debug!(job_id = %envelope.job_id, error = %err, "could not read the job record");
                    false
                }
                Err(_) => false,
            }
        } else {
            false
        };
        if cancel_requested && !token.is_cancelled() {
            tracing::info!(job_id = %envelope.job_id, %stage, "cancellation requested; stopping at the next safe point");
            token.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use stowage_schemas::events::{RpCreated, RpVaulted};
    use stowage_schemas::jobs::VaultTransferJob;
    use stowage_vault::catalog::jobs::create_job;

    use super::*;

    /// What the test handler does.
    #[derive(Clone, Copy)]
    enum Act {
        Succeed,
        Permanent,
        Transient,
        /// Report progress, then wait for cancellation (up to 10 s).
        WaitForCancel,
    }

    type Fixture = (
        Recorded<TestHandler>,
        BlobStore,
        Arc<AtomicU32>,
        Arc<Mutex<Option<JobStatus>>>,
    );

    struct TestHandler {
        act: Act,
        calls: Arc<AtomicU32>,
        store: BlobStore,
        seen_running: Arc<Mutex<Option<JobStatus>>>,
    }

    impl StageHandler for TestHandler {
        type Input = VaultTransferJob;

        fn stage(&self) -> Stage {
            Stage::VaultTransfer
        }

        async fn handle(
            &self,
            ctx: JobContext,
            _job: VaultTransferJob,
        ) -> Result<Outcome, StageError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let job_id = &ctx.envelope().expect("a worker's context").job_id;
            let (record, _) = read_job(&self.store, job_id).await.expect("record");
            *self.seen_running.lock().unwrap() = Some(record.stages[0].status);
            match self.act {
                Act::Succeed => Ok(Outcome::done().emit(Message::RpVaulted(RpVaulted {
                    instance: "shop".into(),
                    recovery_point_id: "rp-1".into(),
                    bytes_read: 3 << 20,
                    bytes_stored: 1 << 20,
                    chunks_new: 1,
                    chunks_reused: 2,
                    expires_at: None,
                }))),
                Act::Permanent => Err(StageError::permanent("recovery point rp-1 has no manifest")),
                Act::Transient => Err(StageError::transient("storage busy")),
                Act::WaitForCancel => {
                    ctx.report_progress(JobProgress {
                        bytes_done: 4096,
                        bytes_total: Some(8192),
                        items_done: 1,
                        items_total: Some(2),
                    });
                    for _ in 0..1000 {
                        ctx.check_cancelled("the test")?;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(StageError::permanent("never cancelled"))
                }
            }
        }
    }

    fn fixture(act: Act) -> Fixture {
        let store = BlobStore::in_memory();
        let calls = Arc::new(AtomicU32::new(0));
        let seen = Arc::new(Mutex::new(None));
        let handler = TestHandler {
            act,
            calls: calls.clone(),
            store: store.clone(),
            seen_running: seen.clone(),
        };
        let settings = RecordSettings {
            max_attempts: 3,
            poll_interval: Duration::from_millis(50),
            flush_interval: Duration::from_millis(20),
            record_timeout: Duration::from_secs(5),
        };
        (
            Recorded::new(handler, store.clone(), settings),
            store,
            calls,
            seen,
        )
    }

    fn job(id: &str) -> Envelope {
        Envelope::new(
            id,
            Message::VaultTransfer(VaultTransferJob {
                instance: "shop".into(),
                recovery_point_id: "rp-1".into(),
            }),
        )
    }

    fn attempt(n: u32) -> JobContext {
        let mut ctx = JobContext::detached(Stage::VaultTransfer);
        ctx.attempt = n;
        ctx
    }

    #[tokio::test]
    async fn success_is_recorded_and_the_next_stage_queued() {
        let (recorded, store, _, seen) = fixture(Act::Succeed);
        recorded
            .handle_envelope(attempt(0), job("j1"))
            .await
            .expect("ok");
        assert_eq!(*seen.lock().unwrap(), Some(JobStatus::Running));
        let (record, _) = read_job(&store, "j1").await.unwrap();
        assert_eq!(record.instance.as_deref(), Some("shop"));
        assert_eq!(record.recovery_point_id.as_deref(), Some("rp-1"));
        let run = &record.stages[0];
        assert_eq!(
            (run.stage, run.status, run.attempts),
            (Stage::VaultTransfer, JobStatus::Succeeded, 1)
        );
        assert!(run.started_at.is_some() && run.finished_at.is_some());
        assert_eq!(
            run.summary.as_deref(),
            Some("vaulted: 3.0 MiB read, 1.0 MiB stored, 1 new chunk(s), 2 reused")
        );
        // rp.vaulted triggers geo-replication, in the same record.
        assert_eq!(record.stages.len(), 2);
        assert_eq!(
            (record.stages[1].stage, record.stages[1].status),
            (Stage::GeoReplication, JobStatus::Queued)
        );
        assert_eq!(record.status(), JobStatus::Running, "the job goes on");
    }

    #[tokio::test]
    async fn failures_are_recorded_with_their_reason() {
        let (recorded, store, _, _) = fixture(Act::Permanent);
        let err = recorded
            .handle_envelope(attempt(0), job("j2"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent);
        let (record, _) = read_job(&store, "j2").await.unwrap();
        assert_eq!(record.status(), JobStatus::Failed);
        assert_eq!(
            record.stages[0].error.as_deref(),
            Some("recovery point rp-1 has no manifest")
        );

        let (recorded, store, _, _) = fixture(Act::Transient);
        recorded
            .handle_envelope(attempt(0), job("j3"))
            .await
            .unwrap_err();
        let (record, _) = read_job(&store, "j3").await.unwrap();
        let run = &record.stages[0];
        assert_eq!(run.status, JobStatus::Running, "a retry is coming");
        assert_eq!(run.error.as_deref(), Some("storage busy"));
        assert!(run.summary.as_deref().unwrap().starts_with("retrying"));
        recorded
            .handle_envelope(attempt(2), job("j3"))
            .await
            .unwrap_err();
        let (record, _) = read_job(&store, "j3").await.unwrap();
        assert_eq!(
            record.stages[0].status,
            JobStatus::Failed,
            "the last attempt failed"
        );
        assert_eq!(record.stages[0].attempts, 2);
    }

    #[tokio::test]
    async fn a_job_cancelled_before_it_starts_is_not_run() {
        let (recorded, store, calls, _) = fixture(Act::Succeed);
        let mut record = new_record(&job("j4"), Stage::VaultTransfer, Timestamp::now());
        record.cancel_requested_at = Some(Timestamp::now());
        create_job(&store, &record).await.unwrap();
        let err = recorded
            .handle_envelope(attempt(0), job("j4"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        let (record, _) = read_job(&store, "j4").await.unwrap();
        assert_eq!(record.status(), JobStatus::Cancelled);
    }

    #[tokio::test]
    async fn a_running_job_sees_its_cancellation_and_its_progress_is_flushed() {
        let (recorded, store, _, _) = fixture(Act::WaitForCancel);
        let run =
            tokio::spawn(async move { recorded.handle_envelope(attempt(0), job("j5")).await });
        // Progress reaches the record while the handler runs.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok((record, _)) = read_job(&store, "j5").await
                && record.stages[0].progress.bytes_done == 4096
            {
                assert_eq!(record.stages[0].status, JobStatus::Running);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "progress never flushed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        update_job(
            &store,
            "j5",
            || unreachable!(),
            |r| r.cancel_requested_at = Some(Timestamp::now()),
        )
        .await
        .unwrap();
        let err = run.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
        let (record, _) = read_job(&store, "j5").await.unwrap();
        assert_eq!(record.stages[0].status, JobStatus::Cancelled);
        assert_eq!(record.stages[0].progress.items_done, 1);
    }

    #[test]
    fn bytes_are_readable() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(64 << 20), "64 MiB");
    }

    #[test]
    fn events_trigger_their_stages() {
        let created = Message::RpCreated(RpCreated {
            instance: "i".into(),
            recovery_point_id: "rp".into(),
            created_at: Timestamp::now(),
            resource_count: 3,
            volume_count: 1,
            volume_bytes: 1 << 20,
            warnings: Vec::new(),
        });
        assert_eq!(downstream(&created), vec![Stage::VaultTransfer]);
        assert_eq!(
            summarize(Stage::Snapshot, &Outcome::done().emit(created)),
            "recovery point rp created: 3 object(s), 1 volume(s), 1.0 MiB"
        );
        assert_eq!(summarize(Stage::Retention, &Outcome::done()), "done");
        assert!(summarize(Stage::VaultTransfer, &Outcome::done()).contains("no vault rule"));
    }
}
