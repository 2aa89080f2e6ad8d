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
//!
//! **Poison, told apart from a dying worker.** The start also marks the run's `handling` (which
//! message, which attempt, a fresh id), and every end of that handling — success, failure,
//! retry, cancellation, panic — clears it. A *redelivery* of the same message and attempt that
//! finds the mark still there proves a worker started handling it and died before it ended: the
//! run's `interrupted` count goes up. At `poison_limit` such deaths the start refuses the message
//! instead: the run is marked failed and the handler returns a permanent error saying so, which
//! the runtime dead-letters with that reason. Messages a dying worker merely held (prefetched)
//! were never started, so they carry no mark and count nothing; a retry is a new attempt and
//! does not match; a handling under way when the worker began a graceful shutdown has its mark
//! flagged `shutting_down` at once by the watcher, so the hand-back at the drain deadline is
//! not a death either. The broker's own delivery limit stays only as a last resort for a
//! message that kills workers before its start can be recorded.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use jiff::Timestamp;
use stowage_runtime::topology::triggers;
use stowage_runtime::{
    CancellationToken, ErrorKind, JobContext, Outcome, ProgressSink, StageError, StageHandler,
};
use stowage_schemas::domain::{Handling, JobProgress, JobRecord, JobStatus, StageRun};
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
    /// Handlings of one stage of a job that may start and die with their worker (killed, out
    /// of memory, crashed) before the next delivery is refused as poison and dead-lettered; 0
    /// never refuses. Deaths of workers that merely held the message do not count, nor do
    /// graceful shutdowns or retries (see the module doc).
    pub poison_limit: u32,
}

/// The default [`RecordSettings::poison_limit`].
pub const POISON_LIMIT: u32 = 3;

impl Default for RecordSettings {
    fn default() -> Self {
        Self {
            max_attempts: stowage_runtime::RetryPolicy::default().max_attempts,
            poll_interval: Duration::from_secs(3),
            flush_interval: Duration::from_secs(1),
            record_timeout: Duration::from_secs(10),
            poison_limit: POISON_LIMIT,
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
        Message::RpVaultSkipped(e) => &e.instance,
        Message::DrillCompleted(e) => &e.instance,
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
            Message::RpVaultSkipped(e) => Some(format!("nothing copied: {}", e.reason)),
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

/// What the start of a delivery found in the stage's run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    /// Nothing in the way: run the handler.
    Run,
    /// Run the handler; the previous handling of this message started at the given time and
    /// its worker died before it ended (counted in `interrupted`).
    AfterDeath(Timestamp),
    /// Run the handler; the previous handling of this message was handed back by a worker
    /// shutting down gracefully (not counted).
    AfterShutdown,
    /// The job was cancelled: do not run the handler.
    Cancelled,
    /// Refused as poison, for this reason: do not run the handler, dead-letter the message.
    Poison(String),
}

/// Marks `run` started for `handling` (a delivery of a message, `redelivered` or not), or
/// refuses it as poison once `limit` handlings of it died with their workers (see the module
/// doc). Pure, so the compare-and-swap loop can re-apply it to whatever record it re-read.
fn start_run(
    run: &mut StageRun,
    handling: &Handling,
    redelivered: bool,
    limit: u32,
    job_id: &str,
) -> Start {
    let now = handling.started_at;
    if run.status.is_final() && !redelivered {
        // A fresh message for a stage that had finished (a replay from the dead-letter queue,
        // a duplicate): deaths of earlier messages are history. A *redelivery* keeps them, so a
        // refused message that comes back (its dead-lettering failed) is refused again.
        run.interrupted = 0;
    }
    let mut start = Start::Run;
    if let Some(previous) = run.handling.take()
        && redelivered
        && previous.message_id == handling.message_id
        && previous.attempt == handling.attempt
    {
        if previous.shutting_down {
            start = Start::AfterShutdown;
        } else {
            run.interrupted = run.interrupted.saturating_add(1);
            start = Start::AfterDeath(previous.started_at);
        }
    }
    if limit > 0 && run.interrupted >= limit {
        let stage = run.stage;
        let times = run.interrupted;
        let reason = format!(
            "poison: job {job_id}'s {stage} stage was started {times} times and the worker \
             handling it died each time before it finished; refusing it so that it takes no \
             more workers down (poison limit {limit}). Find out why from those workers' logs \
             and exit reasons, then `stowage dlq replay {stage}` it"
        );
        run.status = JobStatus::Failed;
        run.finished_at = Some(now);
        run.error = Some(reason.clone());
        run.summary = Some(format!(
            "dead-lettered as poison: {times} handlings died with their worker"
        ));
        return Start::Poison(reason);
    }
    run.status = JobStatus::Running;
    run.attempts += 1;
    run.started_at.get_or_insert(now);
    run.finished_at = None;
    run.progress = JobProgress::default();
    run.handling = Some(handling.clone());
    start
}

/// A fresh id for one handling.
fn handling_id() -> String {
    format!("{:016x}", rand::random::<u64>())
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
        let handling = Handling {
            id: handling_id(),
            message_id: envelope.message_id,
            attempt: envelope.attempt,
            started_at: now,
            shutting_down: false,
        };
        let mut start = Start::Run;
        let started = self
            .update(&envelope, "the start", |r| {
                r.updated_at = now;
                let cancelled = r.cancel_requested_at.is_some();
                let run = r.stage_mut(stage);
                if cancelled {
                    run.status = JobStatus::Cancelled;
                    run.finished_at = Some(now);
                    run.summary = Some("cancelled before it started".into());
                    run.handling = None;
                    start = Start::Cancelled;
                } else {
                    start = start_run(
                        run,
                        &handling,
                        ctx.redelivered,
                        self.settings.poison_limit,
                        &envelope.job_id,
                    );
                }
            })
            .await;
        // What the start found counts only if it was written; otherwise the job goes on as if
        // there were no record.
        if let Some(record) = &started {
            let job_id = &envelope.job_id;
            match start {
                Start::Cancelled => {
                    let at = record.cancel_requested_at.unwrap_or(now);
                    return Err(StageError::cancelled(format!(
                        "job {} was cancelled at {at}; its {stage} stage was not started",
                        envelope.job_id
                    )));
                }
                Start::Poison(reason) => {
                    tracing::error!(%job_id, %stage, poison_limit = self.settings.poison_limit, "refusing a poison job: every worker that started it died");
                    return Err(StageError::permanent(reason));
                }
                Start::AfterDeath(at) => {
                    let interrupted = record.stage(stage).map_or(0, |run| run.interrupted);
                    tracing::warn!(%job_id, %stage, previous_start = %at, interrupted, poison_limit = self.settings.poison_limit, "the previous handling of this message never ended: the worker running it died");
                }
                Start::AfterShutdown => {
                    tracing::info!(%job_id, %stage, "the previous handling of this message was handed back by a worker shutting down");
                }
                Start::Run => {}
            }
        }

        let token = CancellationToken::new();
        let latest = Arc::new(Latest::default());
        // The watcher is stopped below when the handler returns, and by this guard if the
        // handling is dropped instead (a drain deadline aborting it): it then ends after what it
        // is writing, rather than outliving the handling.
        let ended = CancellationToken::new();
        let _stop_watcher = ended.clone().drop_guard();
        let watcher = tokio::spawn(watch(
            self.store.clone(),
            envelope.clone(),
            Watched {
                stage,
                handling: handling.id.clone(),
                ctx: ctx.clone(),
                ended,
            },
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
            // This handling ended; another one's mark (a duplicate running alongside) stays.
            if run.handling.as_ref().is_some_and(|h| h.id == handling.id) {
                run.handling = None;
            }
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

/// The handling a watcher watches.
struct Watched {
    stage: Stage,
    /// Its [`Handling::id`].
    handling: String,
    /// Its context, which says when the worker begins shutting down.
    ctx: JobContext,
    /// Cancelled when the handling was dropped without ending.
    ended: CancellationToken,
}

/// While the handler runs: flush its progress, look for a cancellation request, and flag the
/// handling `shutting_down` the moment the worker begins a graceful shutdown (a drain that
/// ends by handing the message back is then not mistaken for a death). The watcher runs as a
/// task of its own, so the flag is written even if the drain deadline aborts the handler.
/// It ends when the handler returns (aborted) or when the handling is dropped (`ended`).
async fn watch(
    store: BlobStore,
    envelope: Envelope,
    watched: Watched,
    latest: Arc<Latest>,
    token: CancellationToken,
    settings: RecordSettings,
) {
    let stage = watched.stage;
    let tick = settings
        .flush_interval
        .min(settings.poll_interval)
        .max(Duration::from_millis(10));
    let mut flushed: Option<JobProgress> = None;
    let mut since_read = Duration::ZERO;
    let mut flagged = false;
    loop {
        tokio::select! {
            // A shutdown first: if the drain deadline is so short that the handling is already
            // dropped, its flag is still written.
            biased;
            () = watched.ctx.shutting_down(), if !flagged => {
                flagged = true;
                let init = || new_record(&envelope, stage, Timestamp::now());
                let write = update_job(&store, &envelope.job_id, init, |r| {
                    if let Some(h) = r.stage_mut(stage).handling.as_mut()
                        && h.id == watched.handling
                    {
                        h.shutting_down = true;
                    }
                });
                if let Err(err) = tokio::time::timeout(settings.record_timeout, write)
                    .await
                    .map_err(|_| "timed out".to_owned())
                    .and_then(|r| r.map_err(|e| e.to_string()))
                {
                    tracing::warn!(job_id = %envelope.job_id, %stage, error = %err, "could not flag the job's handling as handed back by a shutdown; if the drain deadline stops it, it counts as a death");
                }
                continue;
            }
            () = watched.ended.cancelled() => return,
            () = tokio::time::sleep(tick) => {}
        }
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
        /// Never finish (until the test kills it, standing in for a worker that dies).
        Hang,
    }

    type Fixture = (
        Recorded<TestHandler>,
        BlobStore,
        Arc<AtomicU32>,
        Arc<Mutex<Option<JobStatus>>>,
    );

    #[derive(Clone)]
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
                Act::Hang => {
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    Err(StageError::permanent("never killed"))
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
            poison_limit: 3,
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

    /// A context for a delivery of attempt `n` the broker made before (`redelivered`).
    fn delivery(n: u32, redelivered: bool) -> JobContext {
        let mut ctx = attempt(n);
        ctx.redelivered = redelivered;
        ctx
    }

    /// The vault-transfer run of job `id`.
    async fn run_of(store: &BlobStore, id: &str) -> StageRun {
        let (record, _) = read_job(store, id).await.expect("record");
        record.stage(Stage::VaultTransfer).expect("a run").clone()
    }

    /// Starts `envelope` on `recorded` in a task and waits until its handling is marked, then
    /// returns the task (abort it to stand in for the worker dying).
    async fn start_hanging(
        recorded: &Recorded<TestHandler>,
        store: &BlobStore,
        ctx: JobContext,
        envelope: &Envelope,
    ) -> tokio::task::JoinHandle<Result<Outcome, StageError>> {
        let before = read_job(store, &envelope.job_id)
            .await
            .ok()
            .and_then(|(r, _)| {
                r.stage(Stage::VaultTransfer)
                    .and_then(|s| s.handling.clone())
            });
        let recorded = recorded.clone();
        let envelope_for_task = envelope.clone();
        let task =
            tokio::spawn(async move { recorded.handle_envelope(ctx, envelope_for_task).await });
        for _ in 0..500 {
            if let Ok((record, _)) = read_job(store, &envelope.job_id).await
                && let Some(h) = record
                    .stage(Stage::VaultTransfer)
                    .and_then(|s| s.handling.clone())
                && Some(&h) != before.as_ref()
            {
                return task;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the handling of {} was never marked", envelope.job_id);
    }

    #[tokio::test]
    async fn handlings_that_die_with_their_worker_count_and_poison_is_refused_at_the_limit() {
        let (recorded, store, calls, _) = fixture(Act::Hang);
        let envelope = job("p1");
        // Started three times; each time the worker dies (the task is aborted mid-handling) and
        // the broker redelivers the same message.
        for n in 0..3 {
            let task = start_hanging(&recorded, &store, delivery(0, n > 0), &envelope).await;
            task.abort();
            let _ = task.await;
            let run = run_of(&store, "p1").await;
            assert_eq!(
                (run.status, run.attempts, run.interrupted),
                (JobStatus::Running, n + 1, n),
                "{run:?}"
            );
            assert!(run.handling.is_some(), "a dead handling leaves its mark");
        }
        let err = recorded
            .handle_envelope(delivery(0, true), envelope.clone())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert!(
            err.to_string().starts_with("poison: job p1's vault-transfer stage was started 3 times and the worker handling it died each time"),
            "{err}"
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "the poison is not run again"
        );
        let run = run_of(&store, "p1").await;
        assert_eq!(
            (
                run.status,
                run.attempts,
                run.interrupted,
                run.handling.is_none()
            ),
            (JobStatus::Failed, 3, 3, true)
        );
        assert_eq!(run.error.as_deref(), Some(err.to_string().as_str()));
        assert!(run.summary.unwrap().starts_with("dead-lettered as poison"));

        // Redelivered again (its dead-lettering failed): refused again, not run.
        let again = recorded
            .handle_envelope(delivery(0, true), envelope.clone())
            .await
            .unwrap_err();
        assert_eq!(again.kind(), ErrorKind::Permanent);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // Replayed from the dead-letter queue (a fresh publish): it runs again, counting anew.
        let task = start_hanging(&recorded, &store, delivery(0, false), &envelope).await;
        task.abort();
        let _ = task.await;
        let run = run_of(&store, "p1").await;
        assert_eq!((run.status, run.interrupted), (JobStatus::Running, 0));
    }

    #[tokio::test]
    async fn retries_duplicates_and_graceful_shutdowns_are_not_deaths() {
        let (recorded, store, _, _) = fixture(Act::Hang);
        let envelope = job("p2");
        let dead = start_hanging(&recorded, &store, delivery(0, false), &envelope).await;
        dead.abort();
        let _ = dead.await;
        // A retry is a new attempt: the dead handling's mark (attempt 0) does not match.
        let retry = Envelope {
            attempt: 1,
            ..envelope.clone()
        };
        let task = start_hanging(&recorded, &store, delivery(1, false), &retry).await;
        task.abort();
        let _ = task.await;
        assert_eq!(run_of(&store, "p2").await.interrupted, 0);
        // The same message published again (not a redelivery): never started, so not a death.
        let task = start_hanging(&recorded, &store, delivery(1, false), &retry).await;
        task.abort();
        let _ = task.await;
        assert_eq!(run_of(&store, "p2").await.interrupted, 0);

        // A handling under way when the worker begins a graceful shutdown is flagged at once;
        // the drain deadline then stops it, and its redelivery does not count it.
        let (trigger, shutdown) = stowage_runtime::Shutdown::new();
        let task = start_hanging(
            &recorded,
            &store,
            delivery(1, true).with_shutdown(shutdown),
            &retry,
        )
        .await;
        assert_eq!(run_of(&store, "p2").await.interrupted, 1, "that one died");
        trigger.trigger();
        for _ in 0..500 {
            if run_of(&store, "p2")
                .await
                .handling
                .is_some_and(|h| h.shutting_down)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
        let _ = task.await;
        let task = start_hanging(&recorded, &store, delivery(1, true), &retry).await;
        task.abort();
        let _ = task.await;
        let run = run_of(&store, "p2").await;
        assert_eq!((run.interrupted, run.attempts), (1, 5), "{run:?}");

        // A handling that ends, however it ends, clears its mark.
        let (recorded, store, _, _) = fixture(Act::Transient);
        recorded
            .handle_envelope(delivery(0, false), job("p3"))
            .await
            .unwrap_err();
        let run = run_of(&store, "p3").await;
        assert_eq!((run.handling, run.interrupted), (None, 0));
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
