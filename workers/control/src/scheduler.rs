//! The scheduler: which backup slots a policy has, which one is due, and triggering it exactly
//! once however many schedulers run.
//!
//! # Slots
//!
//! A policy's schedule (`every frequency_hours from start, in time_zone`) puts slots at the same
//! wall-clock times every local day: `start + k × frequency` (mod 24 h) for
//! `k = 0 .. 24 / frequency` — e.g. 02:00, 06:00, …, 22:00 for a 4 h policy starting at 02:00.
//! Each wall-clock time becomes an instant with jiff's *compatible* disambiguation:
//!
//! * **spring forward** (a time that does not exist, e.g. 02:00 in Europe/Amsterdam on the last
//!   Sunday of March): the slot runs at the same offset past the gap, 03:00 CEST;
//! * **fall back** (a time that happens twice, e.g. 02:00 on the last Sunday of October): the
//!   slot runs once, at the first occurrence (02:00 CEST).
//!
//! So every local day has exactly `24 / frequency` slots, and the interval across a DST change
//! is one hour shorter or longer than usual.
//!
//! # Due slot, catch-up
//!
//! At `now`, the due slot is the latest slot `≤ now` whose window (`slot + window`, 2 h by
//! default) has not passed. Older slots are never triggered: after a downtime of three days the
//! scheduler triggers at most the one latest slot still in its window, not a burst of eighteen.
//!
//! # Retention
//!
//! Each tick also claims, once per UTC day and instance, a `job.retention`
//! (`retention-<instance>-<yyyymmdd>`, create-only like a slot), so expiry, garbage collection
//! and the staging sweep run daily without anyone submitting them.
//!
//! # Exactly once per slot
//!
//! The claim on a slot is the create-only job record `jobs/sched-<instance>-<slot UTC
//! yyyymmddThhmmZ>.json`, whose recovery point has the same deterministic id: it names the
//! instance, so two instances protecting one volume at the same slot never share a recovery-point
//! id, nor (the snapshot stage names snapshots after both) a snapshot. Only the
//! scheduler whose create succeeded publishes the `job.snapshot`, then records
//! `submitted_at`. A claim left without `submitted_at` for longer than
//! [`Scheduler::with_republish_after`] (the claimant died between claim and publish) is
//! republished by whichever scheduler wins a compare-and-swap on its `updated_at`. The message
//! id is derived from the job id, and the snapshot stage is idempotent per recovery-point id, so
//! even a republish that races a slow original publish only produces a recognisable duplicate.
//!
//! # An outbox that cannot strand work
//!
//! The job record is the outbox: `backup_now`, a slot and a daily retention each write the
//! record (`queued`) before publishing and set `submitted_at` after the broker confirmed. A
//! record whose publish failed (the broker was unreachable) or whose writer died in between is
//! found by the **sweep** ([`Scheduler::sweep_unpublished`]), which each scheduler runs at most
//! once per republish period: every `job.snapshot` or `job.retention` record still `queued`,
//! never submitted, not cancelled and untouched for the republish period is claimed by a
//! compare-and-swap on its `updated_at` (so of several schedulers one wins) and republished
//! with the message id derived from its job id (so a duplicate is recognisable, and the
//! snapshot stage is idempotent per recovery point). A republish that fails again leaves the
//! record for the next period. Restore records are not swept: `restore create` marks them
//! failed when its publish fails.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use stowage_runtime::client::submit;
use stowage_runtime::{Broker, BrokerError, Names, Shutdown};
use stowage_schemas::domain::{BackupInstance, JobRecord, JobStatus, Policy, Schedule};
use stowage_schemas::jobs::{RetentionJob, SnapshotJob, Trigger};
use stowage_schemas::{Envelope, Message, MessageId, Stage};
use stowage_vault::catalog::jobs::{create_job, read_job, update_job};
use stowage_vault::store::{BlobStore, CreateOutcome};

use stowage_vault::catalog::settings::{self, SettingsError};

/// How long after its slot a scheduled backup may still start.
pub const DEFAULT_WINDOW: SignedDuration = SignedDuration::from_hours(2);
/// How long a claimed, unpublished slot waits before another scheduler republishes it.
pub const DEFAULT_REPUBLISH_AFTER: SignedDuration = SignedDuration::from_secs(60);
/// With the defaults (republish after 60 s, a sweep at most every 60 s), the longest a record
/// left unpublished waits after the broker is back: its last 60 s of grace, then one sweep
/// period.
pub const REPUBLISH_BOUND_SECS: i64 = 2 * DEFAULT_REPUBLISH_AFTER.as_secs();

/// Scheduling failed.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A policy's time zone does not resolve.
    #[error(
        "time zone {zone:?} does not resolve ({reason}); fix schedule.time_zone of the policy \
         (an IANA name such as Europe/Amsterdam) — is the tz database installed?"
    )]
    TimeZone {
        /// The zone name.
        zone: String,
        /// jiff's complaint.
        reason: String,
    },
    /// Reading the catalog failed.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// A job record could not be read or written.
    #[error(transparent)]
    Jobs(#[from] stowage_vault::Error),
    /// Publishing failed.
    #[error(
        "cannot publish job {job_id}: {source}; its record stays queued, and a running \
         `stowage scheduler` for this vault republishes it within {} s of the broker being \
         reachable again (it runs once; without a scheduler, submit the backup again)",
        REPUBLISH_BOUND_SECS
    )]
    Publish {
        /// The job.
        job_id: String,
        /// The broker's error.
        #[source]
        source: BrokerError,
    },
}

/// The slots of a schedule, in its time zone.
#[derive(Debug, Clone)]
pub struct Slots {
    zone: TimeZone,
    /// Minutes after local midnight of each slot, ascending.
    minutes: Vec<i32>,
}

impl Slots {
    /// The slots of `schedule`. Fails if its time zone does not resolve.
    pub fn new(schedule: &Schedule) -> Result<Self, SchedulerError> {
        let zone = TimeZone::get(&schedule.time_zone).map_err(|e| SchedulerError::TimeZone {
            zone: schedule.time_zone.clone(),
            reason: e.to_string(),
        })?;
        let frequency = i32::from(schedule.frequency_hours.clamp(1, 24)) * 60;
        let start = i32::from(schedule.start.hour()) * 60 + i32::from(schedule.start.minute());
        let mut minutes: Vec<i32> = (0..(24 * 60 / frequency).max(1))
            .map(|k| (start + k * frequency).rem_euclid(24 * 60))
            .collect();
        minutes.sort_unstable();
        minutes.dedup();
        Ok(Self { zone, minutes })
    }

    /// The slots of local day `date`, ascending (a wall-clock time DST skips runs after the
    /// gap; one it repeats runs once, at its first occurrence).
    pub fn on(&self, date: Date) -> Vec<Timestamp> {
        let mut slots: Vec<Timestamp> = self
            .minutes
            .iter()
            .filter_map(|m| {
                let hour = i8::try_from(m / 60).ok()?;
                let minute = i8::try_from(m % 60).ok()?;
                date.at(hour, minute, 0, 0)
                    .to_zoned(self.zone.clone())
                    .ok()
                    .map(|z| z.timestamp())
            })
            .collect();
        slots.sort_unstable();
        slots.dedup();
        slots
    }

    fn local_date(&self, at: Timestamp) -> Date {
        at.to_zoned(self.zone.clone()).date()
    }

    /// The latest slot at or before `at`.
    pub fn latest_at_or_before(&self, at: Timestamp) -> Option<Timestamp> {
        let today = self.local_date(at);
        let mut days = vec![today];
        days.extend(today.yesterday().ok());
        days.into_iter()
            .flat_map(|d| self.on(d))
            .filter(|slot| *slot <= at)
            .max()
    }

    /// The first slot strictly after `at`.
    pub fn next_after(&self, at: Timestamp) -> Option<Timestamp> {
        let today = self.local_date(at);
        let mut days = vec![today];
        days.extend(today.tomorrow().ok());
        days.into_iter()
            .flat_map(|d| self.on(d))
            .filter(|slot| *slot > at)
            .min()
    }

    /// The slot due at `now`: the latest slot `≤ now` whose window has not passed.
    pub fn due(&self, now: Timestamp, window: SignedDuration) -> Option<Timestamp> {
        let slot = self.latest_at_or_before(now)?;
        let closes = slot.checked_add(window).ok()?;
        (now < closes).then_some(slot)
    }
}

fn slot_stamp(slot: Timestamp) -> String {
    slot.strftime("%Y%m%dT%H%MZ").to_string()
}

/// The job id of `instance`'s scheduled backup for `slot`: `sched-<instance>-<yyyymmddThhmmZ>`.
pub fn scheduled_job_id(instance: &str, slot: Timestamp) -> String {
    format!("sched-{instance}-{}", slot_stamp(slot))
}

/// The recovery-point id of `instance`'s scheduled backup for `slot`:
/// `sched-<instance>-<yyyymmddThhmmZ>`, the same as its job id. It names the instance, so the
/// recovery points (and the snapshots named after them) of two instances taken at the same slot
/// never share a name.
pub fn scheduled_rp_id(instance: &str, slot: Timestamp) -> String {
    format!("sched-{instance}-{}", slot_stamp(slot))
}

/// The slot a scheduled recovery point of `instance` was taken for, from its id
/// (`sched-<instance>-<stamp>`, or `sched-<stamp>` as earlier versions named them).
fn scheduled_slot(instance: &str, rp_id: &str) -> Option<Timestamp> {
    let rest = rp_id.strip_prefix("sched-")?;
    let stamp = rest
        .strip_prefix(instance)
        .and_then(|s| s.strip_prefix('-'))
        .unwrap_or(rest);
    let civil = jiff::fmt::strtime::parse("%Y%m%dT%H%MZ", stamp)
        .ok()?
        .to_datetime()
        .ok()?;
    Some(civil.to_zoned(TimeZone::UTC).ok()?.timestamp())
}

/// The message id every publish of job `job_id` uses, so duplicates are recognisable: a
/// UUID (version 8, custom) made of the first bytes of a BLAKE3 hash of the job id.
pub fn job_message_id(job_id: &str) -> MessageId {
    let hash = blake3::hash(format!("stowage job message\0{job_id}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&hash.as_bytes()[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let text = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    text.parse()
        .expect("32 hex digits in 8-4-4-4-12 form are a UUID")
}

/// The `job.snapshot` of a scheduled or on-demand backup record.
fn snapshot_job(record: &JobRecord, trigger: Trigger) -> Message {
    Message::Snapshot(SnapshotJob {
        instance: record.instance.clone().unwrap_or_default(),
        recovery_point_id: record.recovery_point_id.clone().unwrap_or_default(),
        trigger,
    })
}

/// The message a queued record stands for, if the scheduler can rebuild it: the snapshot of a
/// scheduled (`sched-<instance>-<slot>` recovery point) or on-demand backup, or a daily
/// retention.
pub(crate) fn republished_message(record: &JobRecord) -> Option<Message> {
    let instance = record.instance.clone()?;
    match record.kind {
        Stage::Snapshot => {
            let rp = record.recovery_point_id.as_deref()?;
            let trigger = match scheduled_slot(&instance, rp) {
                Some(slot) if record.id.starts_with("sched-") => Trigger::Scheduled { slot },
                _ => Trigger::OnDemand {
                    requested_by: record.requested_by.clone(),
                },
            };
            Some(snapshot_job(record, trigger))
        }
        Stage::Retention => Some(Message::Retention(RetentionJob {
            instance,
            as_of: None,
        })),
        _ => None,
    }
}

/// Publishes `message` as the job of `record` (message id derived from the job id, so a
/// republish is a recognisable duplicate) and records `submitted_at`. A snapshot goes to the
/// queue of `cluster`, its instance's cluster, whose workers alone take it.
async fn publish_and_mark(
    store: &BlobStore,
    broker: &dyn Broker,
    names: &Names,
    record: &JobRecord,
    message: Message,
    cluster: Option<&str>,
    now: Timestamp,
) -> Result<(), SchedulerError> {
    let mut envelope = Envelope::new(record.id.clone(), message);
    if let Some(cluster) = cluster {
        envelope = envelope.on_cluster(cluster);
    }
    envelope.message_id = job_message_id(&record.id);
    envelope.created_at = now;
    // A job the scheduler (or `backup now`) publishes starts its trace here, or continues the
    // caller's: submit stamps the current span on the envelope.
    let span = tracing::info_span!(
        "publish job",
        otel.name = %format_args!("publish {}", envelope.kind()),
        job_id = %record.id,
    );
    tracing::Instrument::instrument(submit(broker, names, &envelope), span)
        .await
        .map_err(|source| SchedulerError::Publish {
            job_id: record.id.clone(),
            source,
        })?;
    let init = || record.clone();
    update_job(store, &record.id, init, |r| {
        if r.submitted_at.is_none() {
            r.submitted_at = Some(now);
            r.updated_at = r.updated_at.max(now);
        }
    })
    .await?;
    Ok(())
}

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Instances looked at.
    pub instances: usize,
    /// Jobs this scheduler claimed and published.
    pub triggered: Vec<String>,
    /// Claimed-but-unpublished jobs this scheduler republished.
    pub republished: Vec<String>,
    /// Daily retention jobs this scheduler claimed and published.
    pub retention_triggered: Vec<String>,
    /// What went wrong, one line per instance (the other instances are still scheduled).
    pub failures: Vec<String>,
}

impl TickReport {
    fn fail(&mut self, what: String) {
        self.failures.push(what);
    }
}

/// Triggers scheduled snapshot jobs for every backup instance of a vault.
#[derive(Clone)]
pub struct Scheduler {
    store: BlobStore,
    broker: Arc<dyn Broker>,
    names: Names,
    window: SignedDuration,
    republish_after: SignedDuration,
    identity: String,
    /// When this scheduler last swept for unpublished records.
    last_sweep: Arc<std::sync::Mutex<Option<Timestamp>>>,
    /// Ids of records a sweep found settled (see [`Scheduler::sweep_unpublished`]).
    settled: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Scheduler {
    /// A scheduler for the vault in `store`, publishing through `broker`.
    pub fn new(store: BlobStore, broker: Arc<dyn Broker>, names: Names) -> Self {
        Self {
            store,
            broker,
            names,
            window: DEFAULT_WINDOW,
            republish_after: DEFAULT_REPUBLISH_AFTER,
            identity: "scheduler".into(),
            last_sweep: Arc::default(),
            settled: Arc::default(),
        }
    }

    /// How long after its slot a backup may still start (default [`DEFAULT_WINDOW`]).
    pub fn with_window(mut self, window: SignedDuration) -> Self {
        self.window = window;
        self
    }

    /// How long a claimed, unpublished slot waits before it is republished (default
    /// [`DEFAULT_REPUBLISH_AFTER`]).
    pub fn with_republish_after(mut self, after: SignedDuration) -> Self {
        self.republish_after = after;
        self
    }

    /// Who this scheduler is, for `requested_by` in job records (e.g. the pod name).
    pub fn with_identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = identity.into();
        self
    }

    /// The window.
    pub fn window(&self) -> SignedDuration {
        self.window
    }

    /// Looks at every instance once, at time `now`, and triggers what is due.
    pub async fn tick(&self, now: Timestamp) -> TickReport {
        let mut report = TickReport::default();
        let mut policies: HashMap<String, Result<Slots, String>> = HashMap::new();
        let mut instances = settings::list_instances(&self.store);
        while let Some(instance) = instances.next().await {
            let instance = match instance {
                Ok(instance) => instance,
                Err(e) => {
                    report.fail(format!("cannot read an instance: {e}"));
                    continue;
                }
            };
            report.instances += 1;
            if !policies.contains_key(&instance.policy) {
                let slots = match settings::read_policy(&self.store, &instance.policy).await {
                    Ok(policy) => Slots::new(&policy.schedule).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                policies.insert(instance.policy.clone(), slots);
            }
            let slots = match &policies[&instance.policy] {
                Ok(slots) => slots,
                Err(e) => {
                    report.fail(format!(
                        "instance {}: policy {}: {e}",
                        instance.name, instance.policy
                    ));
                    continue;
                }
            };
            if let Err(e) = self.trigger_retention(&instance, now, &mut report).await {
                report
                    .failures
                    .push(format!("instance {}: daily retention: {e}", instance.name));
            }
            let Some(slot) = slots.due(now, self.window) else {
                continue;
            };
            if let Err(e) = self.trigger(&instance, slot, now, &mut report).await {
                report
                    .failures
                    .push(format!("instance {}, slot {slot}: {e}", instance.name));
            }
        }
        let sweep_due = {
            let mut last = self.last_sweep.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|t| {
                t.checked_add(self.republish_after)
                    .is_ok_and(|next| next <= now)
            });
            if due {
                *last = Some(now);
            }
            due
        };
        if sweep_due && let Err(e) = self.sweep_unpublished(now, &mut report).await {
            report.fail(format!("sweeping unpublished job records: {e}"));
        }
        for failure in &report.failures {
            tracing::warn!(failure = %failure, "scheduler tick");
        }
        report
    }

    /// Republishes every job record left unpublished (see "An outbox that cannot strand work"
    /// in the module doc): `job.snapshot` and `job.retention` records still queued, never
    /// submitted, not cancelled, and untouched for the republish period. Each is claimed by a
    /// compare-and-swap first, so one scheduler of several publishes it.
    pub async fn sweep_unpublished(
        &self,
        now: Timestamp,
        report: &mut TickReport,
    ) -> Result<(), SchedulerError> {
        // Records found settled (published, or past queued) never become stale again: their
        // ids are remembered so later sweeps list them without reading them.
        let mut keys = self.store.list(&stowage_vault::layout::jobs());
        while let Some(info) = keys.next().await {
            let info = match info {
                Ok(info) => info,
                Err(e) => {
                    report.fail(format!("cannot list job records: {e}"));
                    return Ok(());
                }
            };
            let Some(id) = info
                .key
                .as_str()
                .strip_prefix("jobs/")
                .and_then(|name| name.strip_suffix(".json"))
            else {
                continue;
            };
            if self
                .settled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(id)
            {
                continue;
            }
            let record = match read_job(&self.store, id).await {
                Ok((record, _)) => record,
                Err(e) if e.is_not_found() => continue,
                Err(e) => {
                    report.fail(format!("cannot read job record {id}: {e}"));
                    continue;
                }
            };
            if record.submitted_at.is_some()
                || record.cancel_requested_at.is_some()
                || record.status() != JobStatus::Queued
                || republished_message(&record).is_none()
            {
                self.settled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(record.id);
                continue;
            }
            if !self.stale(&record, now) {
                continue;
            }
            match self.claim_and_republish(&record, now).await {
                Ok(true) => report.republished.push(record.id.clone()),
                Ok(false) => {}
                Err(e) => report.fail(format!("job {}: {e}", record.id)),
            }
        }
        Ok(())
    }

    /// Whether `record` is queued, never published, not cancelled, and older than the
    /// republish period.
    fn stale(&self, r: &JobRecord, now: Timestamp) -> bool {
        r.submitted_at.is_none()
            && r.cancel_requested_at.is_none()
            && r.status() == JobStatus::Queued
            && r.updated_at
                .checked_add(self.republish_after)
                .is_ok_and(|t| t <= now)
    }

    /// Claims the republish of `record` (a compare-and-swap moving `updated_at` to `now` while
    /// it is still stale) and, if this scheduler won, publishes its message. `Ok(false)`: someone
    /// else did, or it is no longer stale.
    async fn claim_and_republish(
        &self,
        record: &JobRecord,
        now: Timestamp,
    ) -> Result<bool, SchedulerError> {
        let mut mine = false;
        let claimed = update_job(
            &self.store,
            &record.id,
            || record.clone(),
            |r| {
                mine = self.stale(r, now);
                if mine {
                    r.updated_at = now;
                }
            },
        )
        .await?;
        let Some(message) = mine.then(|| republished_message(&claimed)).flatten() else {
            return Ok(false);
        };
        tracing::warn!(job = %claimed.id, "republishing a job record that was never published");
        // A snapshot goes to its instance's cluster, read again: the instance may have moved.
        let cluster = match (&message, claimed.instance.as_deref()) {
            (Message::Snapshot(_), Some(instance)) => Some(
                settings::read_instance(&self.store, instance)
                    .await?
                    .cluster,
            ),
            _ => None,
        };
        publish_and_mark(
            &self.store,
            self.broker.as_ref(),
            &self.names,
            &claimed,
            message,
            cluster.as_deref(),
            now,
        )
        .await?;
        Ok(true)
    }

    /// Once per UTC day and instance, a `job.retention` (expire what the policy no longer
    /// keeps, collect unreferenced vault data, sweep failed restores' staging). The claim is
    /// the create-only record `retention-<instance>-<yyyymmdd>`; if its claimant dies before
    /// publishing, that day's run is skipped and the next day's covers it (retention looks at
    /// everything each time).
    async fn trigger_retention(
        &self,
        instance: &BackupInstance,
        now: Timestamp,
        report: &mut TickReport,
    ) -> Result<(), SchedulerError> {
        let day = now.strftime("%Y%m%d").to_string();
        let job_id = format!("retention-{}-{day}", instance.name);
        let mut record = JobRecord::new(job_id.clone(), Stage::Retention, now);
        record.instance = Some(instance.name.clone());
        record.requested_by = Some(format!("{} (daily retention)", self.identity));
        if let CreateOutcome::AlreadyExists = create_job(&self.store, &record).await? {
            return Ok(());
        }
        let job = RetentionJob {
            instance: instance.name.clone(),
            as_of: None,
        };
        publish_and_mark(
            &self.store,
            self.broker.as_ref(),
            &self.names,
            &record,
            Message::Retention(job),
            None,
            now,
        )
        .await?;
        tracing::info!(job = %job_id, instance = %instance.name, "triggering daily retention");
        report.retention_triggered.push(job_id);
        Ok(())
    }

    async fn trigger(
        &self,
        instance: &BackupInstance,
        slot: Timestamp,
        now: Timestamp,
        report: &mut TickReport,
    ) -> Result<(), SchedulerError> {
        let job_id = scheduled_job_id(&instance.name, slot);
        let mut record = JobRecord::new(job_id.clone(), Stage::Snapshot, now);
        record.instance = Some(instance.name.clone());
        record.recovery_point_id = Some(scheduled_rp_id(&instance.name, slot));
        record.requested_by = Some(format!("{} (slot {slot})", self.identity));
        let trigger = Trigger::Scheduled { slot };
        match create_job(&self.store, &record).await? {
            CreateOutcome::Created(_) => {
                tracing::info!(job = %job_id, instance = %instance.name, %slot, "triggering scheduled backup");
                publish_and_mark(
                    &self.store,
                    self.broker.as_ref(),
                    &self.names,
                    &record,
                    snapshot_job(&record, trigger),
                    Some(&instance.cluster),
                    now,
                )
                .await?;
                report.triggered.push(job_id);
            }
            CreateOutcome::AlreadyExists => {
                // Claimed by someone: republished only if its claimant never published it.
                let (stored, _) = read_job(&self.store, &job_id).await?;
                if self.stale(&stored, now) && self.claim_and_republish(&stored, now).await? {
                    report.republished.push(job_id);
                }
            }
        }
        Ok(())
    }

    /// Ticks every `interval` (on `clock`'s time) until `shutdown` triggers; a tick in
    /// progress finishes first.
    pub async fn run(&self, clock: impl Fn() -> Timestamp, interval: Duration, shutdown: Shutdown) {
        loop {
            if shutdown.is_triggered() {
                break;
            }
            let report = self.tick(clock()).await;
            if !report.triggered.is_empty() || !report.republished.is_empty() {
                tracing::info!(
                    instances = report.instances,
                    triggered = ?report.triggered,
                    republished = ?report.republished,
                    "scheduler tick"
                );
            }
            tokio::select! {
                _ = shutdown.triggered() => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
        tracing::info!("scheduler stopped");
    }
}

/// Triggers an on-demand backup of `instance` now: checks the instance exists, creates its job
/// record (`backup-<instance>-<yyyymmddThhmmssZ>-<6 hex>`, recovery point
/// `ondemand-<instance>-<yyyymmddThhmmssZ>-<6 hex>`: it names the instance, like a scheduled
/// one) and publishes the `job.snapshot`. Returns the record.
pub async fn backup_now(
    store: &BlobStore,
    broker: &dyn Broker,
    names: &Names,
    instance: &str,
    requested_by: Option<String>,
    now: Timestamp,
) -> Result<JobRecord, SchedulerError> {
    let instance = settings::read_instance(store, instance).await?;
    // The policy must exist too: a backup of an instance whose policy is gone could not be
    // retained.
    let _: Policy = settings::read_policy(store, &instance.policy).await?;
    let stamp = now.strftime("%Y%m%dT%H%M%SZ").to_string();
    let nonce = blake3::hash(
        format!(
            "{}:{}:{}:{:?}",
            instance.name,
            now.as_nanosecond(),
            std::process::id(),
            std::time::SystemTime::now()
        )
        .as_bytes(),
    )
    .to_hex();
    let suffix = &nonce.as_str()[..6];
    let mut record = JobRecord::new(
        format!("backup-{}-{stamp}-{suffix}", instance.name),
        Stage::Snapshot,
        now,
    );
    record.instance = Some(instance.name.clone());
    record.recovery_point_id = Some(format!("ondemand-{}-{stamp}-{suffix}", instance.name));
    record.requested_by = requested_by.clone();
    match create_job(store, &record).await? {
        CreateOutcome::Created(_) => {}
        CreateOutcome::AlreadyExists => {
            // A 24-bit nonce collided within one second: vanishingly rare; say so plainly.
            return Err(SchedulerError::Jobs(stowage_vault::Error::job_contended(
                &record.id, 1,
            )));
        }
    }
    publish_and_mark(
        store,
        broker,
        names,
        &record,
        snapshot_job(&record, Trigger::OnDemand { requested_by }),
        Some(&instance.cluster),
        now,
    )
    .await?;
    let (stored, _) = read_job(store, &record.id).await?;
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use jiff::civil::{Time, date};
    use stowage_runtime::{RetryPolicy, Topology};
    use stowage_schemas::domain::Scope;
    use stowage_schemas::{ContentType, decode, samples};

    use super::*;
    use stowage_vault::catalog::settings::{WriteMode, write_instance, write_policy, write_vault};

    fn schedule(frequency_hours: u8, start: Time, zone: &str) -> Schedule {
        Schedule {
            frequency_hours,
            start,
            time_zone: zone.into(),
        }
    }

    fn texts(slots: Vec<Timestamp>) -> Vec<String> {
        slots.iter().map(ToString::to_string).collect()
    }

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn slots_follow_the_wall_clock_across_dst() {
        let slots =
            Slots::new(&schedule(4, Time::constant(2, 0, 0, 0), "Europe/Amsterdam")).unwrap();
        // An ordinary winter day: 02:00 CET = 01:00 UTC, then every 4 h.
        let normal: Vec<String> = texts(slots.on(date(2026, 3, 1)));
        assert_eq!(
            normal,
            [
                "2026-03-01T01:00:00Z",
                "2026-03-01T05:00:00Z",
                "2026-03-01T09:00:00Z",
                "2026-03-01T13:00:00Z",
                "2026-03-01T17:00:00Z",
                "2026-03-01T21:00:00Z"
            ]
        );
        // Spring forward (29 March 2026, 02:00 → 03:00): 02:00 does not exist, runs at 03:00 CEST.
        let spring = slots.on(date(2026, 3, 29));
        assert_eq!(spring.len(), 6);
        assert_eq!(spring[0], ts("2026-03-29T01:00:00Z"));
        assert_eq!(spring[1], ts("2026-03-29T04:00:00Z"), "06:00 CEST");
        // Fall back (25 October 2026, 03:00 → 02:00): 02:00 happens twice, runs once (CEST).
        let autumn = slots.on(date(2026, 10, 25));
        assert_eq!(autumn.len(), 6);
        assert_eq!(autumn[0], ts("2026-10-25T00:00:00Z"));
        assert_eq!(autumn[1], ts("2026-10-25T05:00:00Z"), "06:00 CET");
    }

    #[test]
    fn slots_wrap_past_midnight_and_due_respects_the_window() {
        let slots = Slots::new(&schedule(8, Time::constant(22, 30, 0, 0), "UTC")).unwrap();
        let day: Vec<String> = texts(slots.on(date(2026, 1, 1)));
        assert_eq!(
            day,
            [
                "2026-01-01T06:30:00Z",
                "2026-01-01T14:30:00Z",
                "2026-01-01T22:30:00Z"
            ]
        );
        let window = SignedDuration::from_hours(2);
        assert_eq!(
            slots.due(ts("2026-01-02T00:29:00Z"), window),
            Some(ts("2026-01-01T22:30:00Z"))
        );
        assert_eq!(slots.due(ts("2026-01-02T00:30:00Z"), window), None);
        assert_eq!(
            slots.due(ts("2026-01-02T06:30:00Z"), window),
            Some(ts("2026-01-02T06:30:00Z"))
        );
        assert_eq!(
            slots.next_after(ts("2026-01-01T22:30:00Z")),
            Some(ts("2026-01-02T06:30:00Z"))
        );
        assert_eq!(
            scheduled_job_id("shop", ts("2026-01-02T06:30:00Z")),
            "sched-shop-20260102T0630Z"
        );
        assert_eq!(job_message_id("a"), job_message_id("a"));
        assert_ne!(job_message_id("a"), job_message_id("b"));
    }

    struct Fixture {
        store: BlobStore,
        broker: Arc<dyn Broker>,
        names: Names,
    }

    async fn fixture(zone: &str, instances: &[&str]) -> Fixture {
        let store = BlobStore::in_memory();
        write_vault(&store, &samples::vault("main", "memory"), WriteMode::Create)
            .await
            .unwrap();
        write_policy(
            &store,
            &samples::policy_every("every-4h", 4, Time::constant(2, 0, 0, 0), zone, 7, &[]),
            WriteMode::Create,
        )
        .await
        .unwrap();
        for name in instances {
            write_instance(
                &store,
                &BackupInstance {
                    name: (*name).into(),
                    cluster: "c".into(),
                    vault: "main".into(),
                    policy: "every-4h".into(),
                    scope: Scope::default(),
                    snapshot_location: "local".into(),
                    hooks: Vec::new(),
                },
                WriteMode::Create,
            )
            .await
            .unwrap();
        }
        let names = Names::new(format!(
            "sched-test-{}",
            blake3::hash(zone.as_bytes()).to_hex()
        ));
        let broker: Arc<dyn Broker> = Arc::new(stowage_runtime::InProcessBroker::new());
        broker
            .declare(&Topology::new(names.clone(), &RetryPolicy::default()))
            .await
            .unwrap();
        Fixture {
            store,
            broker,
            names,
        }
    }

    /// Drains the snapshot queue: (instance, rp id) → messages.
    async fn drain(f: &Fixture) -> BTreeMap<(String, String), usize> {
        let queue = f.names.cluster_queue(Stage::Snapshot, "c");
        let mut seen = BTreeMap::new();
        while let Some(delivery) = f.broker.get(&queue).await.unwrap() {
            let envelope = decode(&delivery.body, ContentType::MessagePack).unwrap();
            let Message::Snapshot(job) = envelope.message else {
                panic!("not a snapshot job");
            };
            *seen
                .entry((job.instance, job.recovery_point_id))
                .or_default() += 1;
            delivery.ack().await.unwrap();
        }
        seen
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_month_across_dst_with_two_schedulers_triggers_every_slot_once() {
        let f = fixture("Europe/Amsterdam", &["shop"]).await;
        let a =
            Scheduler::new(f.store.clone(), f.broker.clone(), f.names.clone()).with_identity("a");
        let b =
            Scheduler::new(f.store.clone(), f.broker.clone(), f.names.clone()).with_identity("b");
        // 15 March to 15 April 2026 (spring forward on 29 March), ticking every 7 minutes.
        let start = ts("2026-03-15T00:00:00Z");
        let end = ts("2026-04-15T00:00:00Z");
        let mut now = start;
        let mut triggered = 0;
        let mut retention = Vec::new();
        while now < end {
            let (ra, rb) = tokio::join!(a.tick(now), b.tick(now));
            assert!(
                ra.failures.is_empty() && rb.failures.is_empty(),
                "{ra:?} {rb:?}"
            );
            triggered += ra.triggered.len() + rb.triggered.len();
            retention.extend(ra.retention_triggered.iter().cloned());
            retention.extend(rb.retention_triggered.iter().cloned());
            now = now.checked_add(SignedDuration::from_mins(7)).unwrap();
        }
        let seen = drain(&f).await;
        // 31 local days × 6 slots (15 March 02:00 local is after 00:00Z start: all of them).
        let slots =
            Slots::new(&schedule(4, Time::constant(2, 0, 0, 0), "Europe/Amsterdam")).unwrap();
        let mut expected = 0;
        let mut day = date(2026, 3, 15);
        while day < date(2026, 4, 15) {
            expected += slots
                .on(day)
                .iter()
                .filter(|s| **s >= start && **s < end)
                .count();
            day = day.tomorrow().unwrap();
        }
        assert_eq!(expected, 31 * 6);
        assert_eq!(triggered, expected);
        assert_eq!(seen.len(), expected, "one recovery point per slot");
        assert!(seen.values().all(|n| *n == 1), "no slot published twice");
        // And one retention job per UTC day, whichever scheduler claimed it.
        assert_eq!(retention.len(), 31, "{retention:?}");
        retention.sort();
        retention.dedup();
        assert_eq!(retention.len(), 31);
        assert_eq!(retention[0], "retention-shop-20260315");
        let queued = f
            .broker
            .queue_depth(&f.names.stage_queue(Stage::Retention))
            .await
            .unwrap();
        assert_eq!(queued, 31, "one job.retention published per day");
    }

    #[tokio::test]
    async fn three_days_of_downtime_trigger_one_catch_up_not_eighteen() {
        let f = fixture("UTC", &["shop", "blog"]).await;
        let s = Scheduler::new(f.store.clone(), f.broker.clone(), f.names.clone());
        let report = s.tick(ts("2026-05-01T02:10:00Z")).await;
        assert_eq!(report.triggered.len(), 2);
        // Down from 02:10 on 1 May until 07:00 on 4 May: 3 days later, 1 h after the 06:00 slot.
        let report = s.tick(ts("2026-05-04T07:00:00Z")).await;
        let mut triggered = report.triggered.clone();
        triggered.sort();
        assert_eq!(
            triggered,
            ["sched-blog-20260504T0600Z", "sched-shop-20260504T0600Z"],
            "one catch-up job per instance, for the latest slot only"
        );
        assert_eq!(report.triggered.len(), 2, "one catch-up job per instance");
        // Back outside any window: nothing.
        assert!(
            s.tick(ts("2026-05-04T09:00:00Z"))
                .await
                .triggered
                .is_empty()
        );
        assert_eq!(drain(&f).await.len(), 4);
    }

    #[tokio::test]
    async fn a_claim_without_a_publish_is_republished_once() {
        let f = fixture("UTC", &["shop"]).await;
        let slot = ts("2026-05-01T02:00:00Z");
        // A scheduler claimed the slot and died before publishing.
        let mut record = JobRecord::new(scheduled_job_id("shop", slot), Stage::Snapshot, slot);
        record.instance = Some("shop".into());
        record.recovery_point_id = Some(scheduled_rp_id("shop", slot));
        create_job(&f.store, &record).await.unwrap();
        let s = Scheduler::new(f.store.clone(), f.broker.clone(), f.names.clone());
        // Within the grace period: left alone (its claimant may be publishing right now).
        let report = s.tick(ts("2026-05-01T02:00:30Z")).await;
        assert!(report.triggered.is_empty() && report.republished.is_empty());
        let (a, b) = tokio::join!(
            s.tick(ts("2026-05-01T02:05:00Z")),
            s.tick(ts("2026-05-01T02:05:00Z"))
        );
        assert_eq!(a.republished.len() + b.republished.len(), 1);
        assert!(
            s.tick(ts("2026-05-01T02:20:00Z"))
                .await
                .republished
                .is_empty()
        );
        assert_eq!(drain(&f).await.values().sum::<usize>(), 1);
        let (stored, _) = read_job(&f.store, &record.id).await.unwrap();
        assert_eq!(stored.submitted_at, Some(ts("2026-05-01T02:05:00Z")));
    }

    #[tokio::test]
    async fn an_unpublished_backup_record_is_republished_once_by_the_sweep() {
        let f = fixture("UTC", &["shop"]).await;
        // `backup now` wrote its record, then the publish failed (the broker was away).
        let created = ts("2026-05-01T10:11:12Z");
        let mut record = JobRecord::new(
            "backup-shop-20260501T101112Z-abc123",
            Stage::Snapshot,
            created,
        );
        record.instance = Some("shop".into());
        record.recovery_point_id = Some("ondemand-shop-20260501T101112Z-abc123".into());
        record.requested_by = Some("alice".into());
        create_job(&f.store, &record).await.unwrap();
        // A restore record is never swept (restore create marks a failed publish failed).
        let mut restore = JobRecord::new("r-1", Stage::RestoreHydration, created);
        restore.instance = Some("shop".into());
        create_job(&f.store, &restore).await.unwrap();
        let a = Scheduler::new(f.store.clone(), f.broker.clone(), f.names.clone());
        let b = Scheduler::new(f.store.clone(), f.broker.clone(), f.names.clone());
        let soon = ts("2026-05-01T10:11:40Z");
        assert!(
            a.tick(soon).await.republished.is_empty(),
            "within the grace"
        );
        let later = ts("2026-05-01T10:13:00Z");
        let (ra, rb) = tokio::join!(a.tick(later), b.tick(later));
        assert_eq!(
            [ra.republished.clone(), rb.republished.clone()].concat(),
            vec![record.id.clone()]
        );
        assert!(
            a.tick(ts("2026-05-01T10:20:00Z"))
                .await
                .republished
                .is_empty()
        );
        let queue = f.names.cluster_queue(Stage::Snapshot, "c");
        let mut messages = Vec::new();
        while let Some(d) = f.broker.get(&queue).await.unwrap() {
            d.ack().await.unwrap();
            let ct = d
                .properties
                .content_type
                .as_deref()
                .unwrap_or("application/msgpack");
            messages.push(decode(&d.body, ct.parse::<ContentType>().unwrap()).unwrap());
        }
        let snapshots: Vec<_> = messages.iter().filter(|m| m.job_id == record.id).collect();
        assert_eq!(snapshots.len(), 1, "{messages:?}");
        assert_eq!(snapshots[0].message_id, job_message_id(&record.id));
        let Message::Snapshot(job) = &snapshots[0].message else {
            panic!("{:?}", snapshots[0]);
        };
        assert_eq!(
            job.recovery_point_id,
            "ondemand-shop-20260501T101112Z-abc123"
        );
        assert_eq!(
            job.trigger,
            Trigger::OnDemand {
                requested_by: Some("alice".into())
            }
        );
        let (stored, _) = read_job(&f.store, &record.id).await.unwrap();
        assert_eq!(stored.submitted_at, Some(later));
        let (restore, _) = read_job(&f.store, "r-1").await.unwrap();
        assert_eq!((restore.submitted_at, restore.updated_at), (None, created));
    }

    #[tokio::test]
    async fn backup_now_checks_the_instance_and_publishes() {
        let f = fixture("UTC", &["shop"]).await;
        let now = ts("2026-05-01T10:11:12Z");
        let err = backup_now(&f.store, f.broker.as_ref(), &f.names, "nope", None, now)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("stowage instance create"), "{err}");
        let record = backup_now(
            &f.store,
            f.broker.as_ref(),
            &f.names,
            "shop",
            Some("cli: test".into()),
            now,
        )
        .await
        .unwrap();
        assert!(
            record.id.starts_with("backup-shop-20260501T101112Z-"),
            "{}",
            record.id
        );
        assert_eq!(record.submitted_at, Some(now));
        assert_eq!(record.status(), JobStatus::Queued);
        let seen = drain(&f).await;
        assert_eq!(seen.len(), 1);
        let ((instance, rp), _) = seen.into_iter().next().unwrap();
        assert_eq!(instance, "shop");
        assert_eq!(Some(rp), record.recovery_point_id);
        assert!(
            record
                .recovery_point_id
                .as_deref()
                .is_some_and(|rp| rp.starts_with("ondemand-shop-20260501T101112Z-")),
            "the recovery point names its instance: {record:?}"
        );
    }

    #[test]
    fn six_hourly_slots_are_four_a_day() {
        let slots = Slots::new(&schedule(6, Time::constant(1, 30, 0, 0), "UTC")).unwrap();
        let first = ts("2026-01-01T01:30:00Z");
        let every_six: Vec<Timestamp> = (0..4)
            .map(|k| first + SignedDuration::from_hours(6 * k))
            .collect();
        assert_eq!(slots.on(date(2026, 1, 1)), every_six);
        // Four a local day across both DST changes too.
        let zoned =
            Slots::new(&schedule(6, Time::constant(2, 0, 0, 0), "Europe/Amsterdam")).unwrap();
        for day in [date(2026, 3, 29), date(2026, 10, 25)] {
            assert_eq!(zoned.on(day).len(), 4, "{day}");
        }
    }

    #[test]
    fn scheduled_recovery_points_name_their_instance() {
        let slot = ts("2026-01-02T06:30:00Z");
        assert_eq!(scheduled_rp_id("shop", slot), "sched-shop-20260102T0630Z");
        assert_ne!(scheduled_rp_id("shop", slot), scheduled_rp_id("blog", slot));
        // The slot is read back from the id, whatever the instance's name looks like, and from
        // ids of the earlier form.
        for instance in ["shop", "shop-20260102T0630Z", "a.b_c"] {
            assert_eq!(
                scheduled_slot(instance, &scheduled_rp_id(instance, slot)),
                Some(slot)
            );
        }
        assert_eq!(scheduled_slot("shop", "sched-20260102T0630Z"), Some(slot));
        assert_eq!(scheduled_slot("shop", "ondemand-shop-20260102T0630Z"), None);
        // A republished claim is the scheduled job it was.
        let mut record = JobRecord::new(scheduled_job_id("shop", slot), Stage::Snapshot, slot);
        record.instance = Some("shop".into());
        record.recovery_point_id = Some(scheduled_rp_id("shop", slot));
        let Some(Message::Snapshot(job)) = republished_message(&record) else {
            panic!("a snapshot job");
        };
        assert_eq!(job.trigger, Trigger::Scheduled { slot });
        assert_eq!(job.recovery_point_id, "sched-shop-20260102T0630Z");
        // The longest instance name still makes an id within the id rule.
        let long = "a".repeat(stowage_schemas::id::MAX_INSTANCE_NAME_LEN);
        stowage_vault::layout::validate_id("recovery point", &scheduled_rp_id(&long, slot))
            .unwrap();
    }

    #[tokio::test]
    async fn two_instances_at_one_slot_get_their_own_recovery_points() {
        let f = fixture("UTC", &["shop", "blog"]).await;
        let s = Scheduler::new(f.store.clone(), f.broker.clone(), f.names.clone());
        assert_eq!(s.tick(ts("2026-05-01T02:10:00Z")).await.triggered.len(), 2);
        let mut rps: Vec<(String, String)> = drain(&f).await.into_keys().collect();
        rps.sort();
        assert_eq!(
            rps,
            [
                ("blog".to_owned(), "sched-blog-20260501T0200Z".to_owned()),
                ("shop".to_owned(), "sched-shop-20260501T0200Z".to_owned())
            ]
        );
    }
}
