//! `stowage jobs list|show|watch|cancel`: the job records the workers keep in the vault
//! (`jobs/<job-id>.json`).

use std::collections::BinaryHeap;
use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Subcommand, ValueEnum};
use futures::StreamExt as _;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use jiff::Timestamp;
use stowage_control::job_records::format_bytes;
use stowage_schemas::domain::{JobProgress, JobRecord, JobStatus, StageRun};
use stowage_vault::catalog::jobs::{list_jobs, read_job, update_known_job};
use stowage_vault::store::BlobStore;

use crate::cli::{Format, OnVault, OutputArgs, TableOutput, VaultArgs, YamlOutput};
use crate::output::{self, truncate};
use crate::vault_config;

/// `stowage jobs` (only `--vault` is read: the records live in the vault).
pub type JobsArgs = OnVault<JobsAction>;

/// Job actions.
#[derive(Debug, Subcommand)]
pub enum JobsAction {
    /// List jobs, newest first.
    List {
        /// Only jobs of this backup instance.
        #[arg(long, value_parser = crate::cli::id_arg)]
        instance: Option<String>,
        /// Only jobs with this status.
        #[arg(long, value_enum)]
        status: Option<StatusChoice>,
        /// At most this many (the newest).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        output: TableOutput,
    },
    /// Show one job's record in full.
    Show {
        /// The job id.
        #[arg(value_parser = crate::cli::id_arg)]
        id: String,
        #[command(flatten)]
        output: YamlOutput,
    },
    /// Follow a job until it finishes: exit 0 if it succeeded, 1 if it failed or was
    /// cancelled.
    Watch {
        /// The job id.
        #[arg(value_parser = crate::cli::id_arg)]
        id: String,
        /// Seconds between reads of the record.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Give up after this many seconds (default: wait as long as it takes).
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// Ask a job to stop: a running stage stops at its next safe point, a queued one is
    /// cancelled when a worker picks it up.
    Cancel {
        /// The job id.
        #[arg(value_parser = crate::cli::id_arg)]
        id: String,
    },
}

/// A job status, for `--status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusChoice {
    /// Waiting for a worker.
    Queued,
    /// Being worked on (or waiting for a retry, or for its next stage).
    Running,
    /// Finished.
    Succeeded,
    /// Failed.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl StatusChoice {
    pub fn status(self) -> JobStatus {
        match self {
            StatusChoice::Queued => JobStatus::Queued,
            StatusChoice::Running => JobStatus::Running,
            StatusChoice::Succeeded => JobStatus::Succeeded,
            StatusChoice::Failed => JobStatus::Failed,
            StatusChoice::Cancelled => JobStatus::Cancelled,
        }
    }
}

/// Run `stowage jobs …`.
pub async fn run(args: JobsArgs) -> anyhow::Result<()> {
    let store = open_vault(&args.vault).await?;
    match args.action {
        JobsAction::List {
            instance,
            status,
            limit,
            output: OutputArgs { output: format },
        } => {
            let jobs = newest(&store, limit, |job| {
                instance
                    .as_deref()
                    .is_none_or(|i| job.instance.as_deref() == Some(i))
                    && status.is_none_or(|s| job.status() == s.status())
            })
            .await?;
            print_list(&jobs, format)
        }
        JobsAction::Show {
            id,
            output: OutputArgs { output: format },
        } => {
            let job = read(&store, &id).await?;
            show(&job, format)
        }
        JobsAction::Watch {
            id,
            interval,
            timeout,
        } => {
            watch(
                &store,
                &id,
                Duration::from_secs_f64(interval.max(0.05)),
                timeout.map(|t| Duration::from_secs_f64(t.max(0.0))),
            )
            .await
        }
        JobsAction::Cancel { id } => cancel(&store, &id).await,
    }
}

/// Prints job records as `jobs list` does.
pub fn print_list(jobs: &[JobRecord], format: Format) -> anyhow::Result<()> {
    if jobs.is_empty() && format == Format::Table {
        eprintln!("no jobs match");
        return Ok(());
    }
    let now = Timestamp::now();
    let rows: Vec<Vec<String>> = jobs.iter().map(|j| list_row(j, now)).collect();
    output::print(
        format,
        &[
            "ID", "KIND", "INSTANCE", "STATUS", "STAGES", "PROGRESS", "AGE",
        ],
        &rows,
        &jobs,
    )
}

/// The vault store from `--vault`.
pub async fn open_vault(args: &VaultArgs) -> anyhow::Result<BlobStore> {
    let Some(location) = &args.vault else {
        bail!(
            "say where the vault is: --vault (a folder, azurite://<container> or \
             azure://<account>/<container>); job records live in the vault"
        );
    };
    let key = vault_config::data_key(args).await?;
    vault_config::open_keyed_store(location, key.as_ref())
}

/// A job's record, or an error that says how to find the id.
pub async fn read(store: &BlobStore, id: &str) -> anyhow::Result<JobRecord> {
    match read_job(store, id).await {
        Ok((job, _)) => Ok(job),
        Err(e) if is_not_found(&e) => {
            bail!("no job {id} in the vault: `stowage jobs list` shows the jobs it has records of")
        }
        Err(e) => Err(e).with_context(|| format!("cannot read the record of job {id}")),
    }
}

fn is_not_found(e: &stowage_vault::Error) -> bool {
    e.is_not_found()
}

/// The `limit` newest records that `keep`, newest first. Streams the listing, holding at most
/// `limit` records.
pub async fn newest(
    store: &BlobStore,
    limit: usize,
    keep: impl Fn(&JobRecord) -> bool,
) -> anyhow::Result<Vec<JobRecord>> {
    // A min-heap on creation time: the oldest of the kept ones is dropped first.
    let mut heap: BinaryHeap<std::cmp::Reverse<ByAge>> = BinaryHeap::new();
    let mut listing = list_jobs(store);
    while let Some(job) = listing.next().await {
        let job = match job {
            Ok(job) => job,
            Err(e) if is_not_found(&e) => continue, // deleted while listing
            Err(e) => return Err(e).context("cannot list the job records"),
        };
        if limit == 0 || !keep(&job) {
            continue;
        }
        heap.push(std::cmp::Reverse(ByAge(job)));
        if heap.len() > limit {
            heap.pop();
        }
    }
    let mut jobs: Vec<JobRecord> = heap.into_iter().map(|r| r.0.0).collect();
    jobs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    Ok(jobs)
}

struct ByAge(JobRecord);

impl PartialEq for ByAge {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for ByAge {}
impl PartialOrd for ByAge {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByAge {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0.created_at, &other.0.id).cmp(&(other.0.created_at, &self.0.id))
    }
}

/// `queued`, `running`, …
pub fn status_name(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Queued => "queued",
        JobStatus::Running => "running",
        JobStatus::Succeeded => "succeeded",
        JobStatus::Failed => "failed",
        JobStatus::Cancelled => "cancelled",
    }
}

/// Whether a job has finished (no stage queued or running).
pub fn is_finished(job: &JobRecord) -> bool {
    !matches!(job.status(), JobStatus::Queued | JobStatus::Running)
}

/// Why a finished job did not succeed: its first failed or cancelled stage, with the error
/// (or the summary), as `<stage> <status>: <why>`; empty when no stage failed.
pub fn failure(job: &JobRecord) -> String {
    job.stages
        .iter()
        .find(|s| matches!(s.status, JobStatus::Failed | JobStatus::Cancelled))
        .map(|s| {
            format!(
                "{} {}: {}",
                s.stage,
                status_name(s.status),
                s.error
                    .clone()
                    .or_else(|| s.summary.clone())
                    .unwrap_or_default()
            )
        })
        .unwrap_or_default()
}

/// `12 MiB, 1/2 items`, `45% (…)` when a total is known.
pub fn progress_text(p: &JobProgress) -> String {
    let mut parts = Vec::new();
    if p.bytes_done > 0 || p.bytes_total.is_some() {
        parts.push(match p.bytes_total {
            Some(total) => format!("{} of {}", format_bytes(p.bytes_done), format_bytes(total)),
            None => format_bytes(p.bytes_done),
        });
    }
    if p.items_done > 0 || p.items_total.is_some() {
        parts.push(match p.items_total {
            Some(total) => format!("{}/{total} items", p.items_done),
            None => format!("{} items", p.items_done),
        });
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// How far a stage is, `(done, total)`, when a total is known (bytes preferred).
fn done_of_total(p: &JobProgress) -> Option<(u64, u64)> {
    match (p.bytes_total, p.items_total) {
        (Some(total), _) if total > 0 => Some((p.bytes_done, total)),
        (_, Some(total)) if total > 0 => Some((p.items_done, total)),
        _ => None,
    }
}

/// `5s`, `3m`, `2h`, `4d`.
pub fn age(since: Timestamp, now: Timestamp) -> String {
    let secs = now.duration_since(since).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The stage that is in motion, else the last one that reported progress.
fn current_stage(job: &JobRecord) -> Option<&StageRun> {
    job.stages
        .iter()
        .rev()
        .find(|s| s.status == JobStatus::Running)
        .or_else(|| {
            job.stages
                .iter()
                .rev()
                .find(|s| s.progress != JobProgress::default())
        })
        .or_else(|| job.stages.last())
}

fn stages_text(job: &JobRecord) -> String {
    job.stages
        .iter()
        .map(|s| format!("{}={}", s.stage, status_name(s.status)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One row of the `jobs list` table.
pub fn list_row(job: &JobRecord, now: Timestamp) -> Vec<String> {
    let mut status = status_name(job.status()).to_owned();
    if job.cancel_requested_at.is_some() && !is_finished(job) {
        status.push_str(" (cancelling)");
    }
    vec![
        job.id.clone(),
        job.kind.to_string(),
        job.instance.clone().unwrap_or_else(|| "-".into()),
        status,
        stages_text(job),
        current_stage(job).map_or_else(|| "-".into(), |s| progress_text(&s.progress)),
        age(job.created_at, now),
    ]
}

/// Print one record: the whole record as JSON/YAML, or a field table and a stage table.
pub fn show(job: &JobRecord, format: Format) -> anyhow::Result<()> {
    if format != Format::Table {
        return output::print(format, &[], &[], job);
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let fields = vec![
        vec!["id".into(), job.id.clone()],
        vec!["kind".into(), job.kind.to_string()],
        vec!["status".into(), status_name(job.status()).into()],
        vec!["instance".into(), opt(&job.instance)],
        vec!["recovery point".into(), opt(&job.recovery_point_id)],
        vec!["restore".into(), opt(&job.restore_id)],
        vec!["requested by".into(), opt(&job.requested_by)],
        vec!["created".into(), job.created_at.to_string()],
        vec!["updated".into(), job.updated_at.to_string()],
        vec![
            "cancel requested".into(),
            job.cancel_requested_at
                .map_or_else(|| "-".into(), |t| t.to_string()),
        ],
    ];
    output::print_fields(&fields);
    let rows: Vec<Vec<String>> = job
        .stages
        .iter()
        .map(|s| {
            vec![
                s.stage.to_string(),
                status_name(s.status).into(),
                s.attempts.to_string(),
                progress_text(&s.progress),
                s.started_at.map_or_else(|| "-".into(), |t| t.to_string()),
                s.finished_at.map_or_else(|| "-".into(), |t| t.to_string()),
                match (&s.error, &s.summary) {
                    (Some(e), Some(summary)) => truncate(&format!("{summary}: {e}"), 160),
                    (Some(e), None) => truncate(e, 160),
                    (None, Some(summary)) => summary.clone(),
                    (None, None) => "-".into(),
                },
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &[
                "STAGE", "STATUS", "ATTEMPTS", "PROGRESS", "STARTED", "FINISHED", "RESULT"
            ],
            &rows
        )
    );
    Ok(())
}

/// What a stage did, or its last error while it runs.
fn stage_detail(s: &StageRun) -> String {
    match (&s.error, &s.summary) {
        (_, Some(summary)) if s.status != JobStatus::Running => summary.clone(),
        (Some(e), _) => format!("last error: {}", truncate(e, 100)),
        _ => String::new(),
    }
}

/// `vault-transfer     running   12 MiB of 40 MiB …`: a stage as `jobs watch` prints it when
/// stdout is not a terminal.
fn stage_line(s: &StageRun) -> String {
    let progress = if s.status == JobStatus::Running {
        progress_text(&s.progress)
    } else {
        String::new()
    };
    format!(
        "{:<18} {:<9} {progress} {}",
        s.stage.as_str(),
        status_name(s.status),
        stage_detail(s)
    )
    .trim_end()
    .to_owned()
}

/// The indicatif template of a running stage's bar, `[####....]  45%` (`[~~~~~~~~]` while no
/// total is known), `width` characters between the brackets.
fn bar_template(p: &JobProgress, width: usize) -> String {
    match done_of_total(p) {
        Some(_) => format!("[{{bar:{width}}}] {{percent:>3}}%"),
        None => format!("[{{bar:{width}}}]"),
    }
}

/// A bar styled by `template` (which holds [`bar_template`]) and placed at `p`'s progress.
fn show_progress(bar: &ProgressBar, template: &str, p: &JobProgress) {
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|e| panic!("the progress template {template:?} is invalid: {e}"));
    match done_of_total(p) {
        Some((done, total)) => {
            bar.set_style(style.progress_chars("#."));
            bar.set_length(total);
            bar.set_position(done);
        }
        None => {
            bar.set_style(style.progress_chars("~~"));
            bar.unset_length();
        }
    }
}

/// `jobs watch` on a terminal: the job's status and a line per stage, redrawn in place by
/// indicatif, with a bar on each running stage. Dropping it leaves the last drawing on screen.
struct Board {
    multi: MultiProgress,
    header: ProgressBar,
    stages: Vec<ProgressBar>,
}

impl Board {
    fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let header = multi.add(Self::line());
        Self {
            multi,
            header,
            stages: Vec::new(),
        }
    }

    /// A bar that only shows its message (drawn once it is added to the board).
    fn line() -> ProgressBar {
        let bar = ProgressBar::hidden();
        bar.set_style(ProgressStyle::with_template("{msg}").expect("a valid template"));
        bar
    }

    fn draw(&mut self, id: &str, job: &JobRecord) {
        self.header
            .set_message(format!("job {id}: {}", status_name(job.status())));
        for (i, s) in job.stages.iter().enumerate() {
            if i == self.stages.len() {
                self.stages.push(self.multi.add(Self::line()));
            }
            let bar = &self.stages[i];
            if s.status == JobStatus::Running {
                let template = format!("  {{prefix}} {} {{msg}}", bar_template(&s.progress, 24));
                show_progress(bar, &template, &s.progress);
                bar.set_prefix(format!(
                    "{:<18} {:<9}",
                    s.stage.as_str(),
                    status_name(s.status)
                ));
                let text = format!("{} {}", progress_text(&s.progress), stage_detail(s));
                bar.set_message(text.trim_end().to_owned());
            } else {
                bar.set_style(ProgressStyle::with_template("  {msg}").expect("a valid template"));
                bar.set_message(stage_line(s));
            }
        }
        // Updates in a burst may fall to the rate limit; the whole board is drawn now.
        for bar in std::iter::once(&self.header).chain(&self.stages) {
            bar.force_draw();
        }
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        for bar in std::iter::once(&self.header).chain(&self.stages) {
            // `abandon`, not `finish`: finishing would fill the bar to 100%.
            bar.abandon();
        }
    }
}

/// Follow a job until it finishes (see `jobs watch`). On a terminal the stage lines are
/// redrawn in place with progress bars; otherwise a line is printed whenever a stage changes.
pub async fn watch(
    store: &BlobStore,
    id: &str,
    interval: Duration,
    timeout: Option<Duration>,
) -> anyhow::Result<()> {
    watch_with(id, interval, timeout, || async move {
        match read_job(store, id).await {
            Ok((job, _)) => Ok(Some(job)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read the record of job {id}")),
        }
    })
    .await
}

/// [`watch`], reading the record with `fetch` (`None`: no record yet): from the vault, or
/// from `stowage serve`'s API (`--server`).
pub async fn watch_with<F, Fut>(
    id: &str,
    interval: Duration,
    timeout: Option<Duration>,
    mut fetch: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<JobRecord>>>,
{
    let tty = std::io::stdout().is_terminal();
    let started = tokio::time::Instant::now();
    let mut board: Option<Board> = None;
    let mut last_lines: Vec<String> = Vec::new();
    let mut announced = false;
    loop {
        // A job submitted straight to the broker has no record until a worker takes it: wait
        // for one (up to the timeout) rather than fail on a job that is merely queued.
        let job = match fetch().await? {
            Some(job) => job,
            None => {
                let limit = timeout.unwrap_or(Duration::from_secs(60));
                if started.elapsed() >= limit {
                    bail!(
                        "no record of job {id} appeared within {:.0} s: no worker has taken it \
                         yet (is a worker for its stage running?) or the id is wrong — \
                         `stowage jobs list` shows the jobs the vault has records of",
                        limit.as_secs_f64()
                    );
                }
                if !announced {
                    eprintln!("waiting for a worker to take job {id}…");
                    announced = true;
                }
                tokio::time::sleep(interval).await;
                continue;
            }
        };
        if tty {
            board.get_or_insert_with(Board::new).draw(id, &job);
        } else {
            let lines: Vec<String> = job.stages.iter().map(stage_line).collect();
            let mut out = std::io::stdout().lock();
            for line in &lines {
                if !last_lines.contains(line) {
                    writeln!(out, "{} {id} {line}", Timestamp::now().strftime("%H:%M:%S"))?;
                }
            }
            out.flush()?;
            last_lines = lines;
        }
        if is_finished(&job) {
            drop(board.take());
            return match job.status() {
                JobStatus::Succeeded => {
                    eprintln!("job {id} succeeded");
                    Ok(())
                }
                status => {
                    bail!("job {id} {}: {}", status_name(status), failure(&job))
                }
            };
        }
        if let Some(limit) = timeout
            && started.elapsed() >= limit
        {
            bail!(
                "job {id} is still {} after {:.0} s; `stowage jobs watch {id}` follows it again",
                status_name(job.status()),
                limit.as_secs_f64()
            );
        }
        tokio::time::sleep(interval).await;
    }
}

/// Ask a job to stop (see `jobs cancel`): sets `cancel_requested_at` under compare-and-swap
/// and says what each stage will do.
pub async fn cancel(store: &BlobStore, id: &str) -> anyhow::Result<()> {
    let before = read(store, id).await?;
    if is_finished(&before) {
        println!(
            "job {id} has already finished ({}); nothing to cancel",
            status_name(before.status())
        );
        return Ok(());
    }
    let now = Timestamp::now();
    let job = update_known_job(store, &before, |job| {
        if job.cancel_requested_at.is_none() {
            job.cancel_requested_at = Some(now);
            job.updated_at = now;
        }
    })
    .await
    .with_context(|| format!("cannot record the cancellation of job {id}"))?;
    println!(
        "cancellation of job {id} requested at {}",
        job.cancel_requested_at.unwrap_or(now)
    );
    for s in &job.stages {
        let what = match s.status {
            JobStatus::Queued => "queued: cancelled when a worker picks it up (acked, not run)",
            JobStatus::Running => {
                "running: stops at its next safe point, within a few seconds; the message is \
                 acked, not retried"
            }
            _ => "finished: unaffected",
        };
        println!("  {:<18} {what}", s.stage.as_str());
    }
    println!("  later stages are not started. `stowage jobs watch {id}` follows it to the end.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A running stage's bar, `width` wide, as indicatif draws it on a terminal.
    fn bar(p: &JobProgress, width: usize) -> String {
        let term = indicatif::InMemoryTerm::new(1, 80);
        let bar = ProgressBar::with_draw_target(
            None,
            ProgressDrawTarget::term_like(Box::new(term.clone())),
        );
        show_progress(&bar, &bar_template(p, width), p);
        bar.force_draw();
        term.contents()
    }

    #[test]
    fn progress_renders() {
        let p = JobProgress {
            bytes_done: 3 << 20,
            bytes_total: None,
            items_done: 1,
            items_total: Some(2),
        };
        assert_eq!(progress_text(&p), "3.0 MiB, 1/2 items");
        assert_eq!(bar(&p, 4), "[##..]  50%");
        assert_eq!(progress_text(&JobProgress::default()), "-");
        let t = Timestamp::constant(1_000_000, 0);
        assert_eq!(age(t, Timestamp::constant(1_000_090, 0)), "90s");
        assert_eq!(age(t, Timestamp::constant(1_000_000 + 3 * 86_400, 0)), "3d");
    }

    #[test]
    fn a_stage_without_a_total_draws_a_placeholder_bar() {
        assert_eq!(bar(&JobProgress::default(), 4), "[~~~~]");
        assert_eq!(
            stage_line(&StageRun::queued(stowage_schemas::Stage::Snapshot)),
            "snapshot           queued"
        );
    }
}
