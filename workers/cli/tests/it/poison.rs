//! Poison is told apart from a dying worker (issue 13 #10), with real `stowage worker`
//! processes on RabbitMQ. A worker that runs one job at a time and holds every other job of its
//! queue prefetched is killed with SIGKILL a dozen times in a row, each time while it runs one of
//! a few wedging jobs:
//!
//! - the jobs it merely held come back more often than the broker's old delivery limit (10)
//!   allowed, yet none is dead-lettered, and a healthy worker runs each of them exactly once;
//! - each wedging job is dead-lettered as poison after the poison limit of deaths, with the
//!   reason in its dead-letter headers and its job record;
//! - a graceful shutdown (SIGTERM) that hands a started job back at its drain deadline is not
//!   counted as a death.
//!
//! The wedging job is a retention run for an instance whose record is a FIFO nobody writes:
//! reading it blocks, so the job hangs from the moment its handling starts until its worker
//! dies, like a job that takes every worker that starts it down.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

use stowage_control::job_records::POISON_LIMIT;
use stowage_runtime::broker::HeaderValue;
use stowage_runtime::client::{list_dead_letters, submit};
use stowage_schemas::domain::{Handling, JobStatus, StageRun};
use stowage_schemas::jobs::RetentionJob;
use stowage_schemas::{Envelope, Message, Stage};
use stowage_tests::{Bus, free_port};
use stowage_vault::catalog::jobs::read_job;
use stowage_vault::store::{BlobStore, LocalDurability};

use crate::helpers::{TempDir, poll, stowage_on, terminate};

const WAIT: Duration = Duration::from_secs(30);
/// Wedging jobs, each killing [`POISON_LIMIT`] workers: twelve deaths in all.
const WEDGING: usize = 4;
/// Jobs that only ever sit in a dying worker's prefetch.
const INNOCENT: usize = 6;
/// The stage queue's delivery limit before this fix: a dozen deaths would have exceeded it.
const OLD_DELIVERY_LIMIT: i64 = 10;

fn retention(job_id: String, instance: &str) -> Envelope {
    Envelope::new(
        job_id,
        Message::Retention(RetentionJob {
            instance: instance.into(),
            as_of: None,
        }),
    )
}

/// A worker process, killed if the test ends (or fails) with it still running.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `stowage worker --stage retention` on the test's vault: one job at a time, the rest of the
/// queue prefetched, in-flight jobs handed back one second into a shutdown.
fn spawn_worker(bus: &Bus, dir: &Path, key: &str) -> Worker {
    let child = stowage_on(bus.names.prefix())
        .args(["worker", "--stage", "retention", "--concurrency", "1"])
        .args(["--prefetch", "32", "--shutdown-deadline", "1"])
        .arg("--vault")
        .arg(dir.join("vault"))
        .arg("--disk-root")
        .arg(dir.join("disks"))
        .arg("--health-addr")
        .arg(format!("127.0.0.1:{}", free_port()))
        .env("STOWAGE_VAULT_KEY", key)
        .env("STOWAGE_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn stowage worker");
    Worker(child)
}

/// The retention run of job `id`, if its record has one.
async fn run_of(store: &BlobStore, id: &str) -> Option<StageRun> {
    let (record, _) = read_job(store, id).await.ok()?;
    record.stage(Stage::Retention).cloned()
}

/// Waits until one of `jobs` has a handling under way that is not in `seen`: which job, and
/// the handling.
async fn next_start(
    bus: &Bus,
    store: &BlobStore,
    jobs: &[Envelope],
    seen: &HashSet<String>,
) -> (usize, Handling) {
    let found = poll(WAIT, Duration::from_millis(10), async || {
        for (index, job) in jobs.iter().enumerate() {
            if let Some(handling) = run_of(store, &job.job_id).await.and_then(|r| r.handling)
                && !seen.contains(&handling.id)
            {
                return Some((index, handling));
            }
        }
        None
    })
    .await;
    if let Some(found) = found {
        return found;
    }
    let dead = bus
        .depth(&bus.names.dead_letter_queue(Stage::Retention))
        .await;
    panic!(
        "no worker started a wedging job within {WAIT:?}; {} job(s) still queued, {dead} \
         dead-lettered",
        bus.depth(&bus.names.stage_queue(Stage::Retention)).await
    );
}

async fn exit_of(worker: &mut Worker) -> ExitStatus {
    poll(WAIT, Duration::from_millis(50), async || {
        worker.0.try_wait().expect("wait for the worker")
    })
    .await
    .unwrap_or_else(|| panic!("the worker did not exit within {WAIT:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_dead_letters_only_the_jobs_it_died_running() {
    let (_gate, bus) = stowage_tests::shared_rabbit_bus().await;
    let topology = bus.declare_topology().await;
    let queue = bus.names.stage_queue(Stage::Retention);
    let dir = TempDir::new("poison");
    // Instance `shop` and its policy: retention of it succeeds at once (no recovery points).
    crate::outbox::catalog(&dir.path().join("vault"));
    let store = BlobStore::local_folder(dir.path().join("vault"), LocalDurability::OsBuffered)
        .expect("vault folder");
    let fifo = dir.path().join("vault/instances/wedged.json");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo {}", fifo.display());
    // The key `vault init` wrapped the vault's data key under (see `outbox::catalog`).
    let key = crate::catalog::TEST_VAULT_KEY.to_owned();

    // The wedging jobs first, so a worker taking one job at a time starts one of them while it
    // holds every innocent job prefetched.
    let wedging: Vec<Envelope> = (0..WEDGING)
        .map(|n| retention(format!("wedged-{n}"), "wedged"))
        .collect();
    let innocent: Vec<Envelope> = (0..INNOCENT)
        .map(|n| retention(format!("innocent-{n}"), "shop"))
        .collect();
    for job in wedging.iter().chain(&innocent) {
        submit(bus.broker.as_ref(), &bus.names, job)
            .await
            .expect("submit");
    }
    let mut seen = HashSet::new();

    // A graceful shutdown while a wedging job runs: its handling is flagged at once, and at the
    // drain deadline everything goes back to the queue. Not a death.
    let mut worker = spawn_worker(&bus, dir.path(), &key);
    let (first, handling) = next_start(&bus, &store, &wedging, &seen).await;
    seen.insert(handling.id.clone());
    terminate(&worker.0);
    let flagged = poll(WAIT, Duration::from_millis(10), async || {
        run_of(&store, &wedging[first].job_id)
            .await
            .and_then(|r| r.handling)
            .filter(|h| h.id == handling.id && h.shutting_down)
    })
    .await;
    assert!(flagged.is_some(), "the shutdown never flagged the handling");
    bus.wait_depth(&queue, (WEDGING + INNOCENT) as u32, WAIT)
        .await;
    // The aborted job's thread still blocks opening the FIFO, which keeps the process from
    // exiting: give it a writer (opening read-write never blocks), so the read ends.
    drop(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .expect("open the FIFO"),
    );
    let status = exit_of(&mut worker).await;
    assert!(status.success(), "a drained worker exits cleanly: {status}");

    // The crash loop: every worker is killed as soon as it starts a wedging job.
    let mut deaths = [0u32; WEDGING];
    for _ in 0..WEDGING as u32 * POISON_LIMIT {
        let mut worker = spawn_worker(&bus, dir.path(), &key);
        let (index, handling) = next_start(&bus, &store, &wedging, &seen).await;
        worker.0.kill().expect("SIGKILL");
        worker.0.wait().expect("reap");
        seen.insert(handling.id);
        deaths[index] += 1;
    }
    assert_eq!(
        deaths, [POISON_LIMIT; WEDGING],
        "each wedging job killed its workers"
    );
    for job in &innocent {
        assert!(
            run_of(&store, &job.job_id).await.is_none(),
            "{} was never started by a dying worker",
            job.job_id
        );
    }
    // Every innocent job sat in the prefetch of all thirteen workers: the broker has delivered
    // each more often than its old delivery limit allowed. (Back in the queue: the innocent
    // jobs and the last wedging job, refused by the next worker.)
    bus.wait_depth(&queue, (INNOCENT + 1) as u32, WAIT).await;
    let mut held = Vec::new();
    while let Some(delivery) = bus.broker.get(&queue).await.expect("basic.get") {
        held.push(delivery);
    }
    for job in &innocent {
        let id = job.message_id.to_string();
        let delivery = held
            .iter()
            .find(|d| d.properties.message_id.as_deref() == Some(id.as_str()))
            .unwrap_or_else(|| panic!("{} is still queued", job.job_id));
        let count = delivery
            .properties
            .headers
            .get("x-delivery-count")
            .and_then(HeaderValue::as_int)
            .unwrap_or(0);
        assert!(
            count > OLD_DELIVERY_LIMIT,
            "{} was delivered {count} times; the crash loop should have returned it more than \
             {OLD_DELIVERY_LIMIT} times",
            job.job_id
        );
    }
    for delivery in held.iter().rev() {
        delivery.reject(true).await.expect("requeue");
    }

    // A healthy worker refuses the last wedging job and runs every innocent one.
    let mut worker = spawn_worker(&bus, dir.path(), &key);
    let dlq = bus.names.dead_letter_queue(Stage::Retention);
    bus.wait_depth(&dlq, WEDGING as u32, WAIT).await;
    for job in &innocent {
        let done = poll(WAIT, Duration::from_millis(20), async || {
            run_of(&store, &job.job_id)
                .await
                .filter(|r| r.status.is_final())
        })
        .await
        .unwrap_or_else(|| panic!("{} did not finish within {WAIT:?}", job.job_id));
        assert_eq!(
            (done.status, done.attempts, done.interrupted, &done.handling),
            (JobStatus::Succeeded, 1, 0, &None),
            "{}: {done:?}",
            job.job_id
        );
    }
    bus.wait_depth(&queue, 0, WAIT).await;

    // Exactly the wedging jobs are dead-lettered, as poison, saying why.
    let letters = list_dead_letters(bus.broker.as_ref(), &bus.names, Stage::Retention, 50)
        .await
        .expect("list dead letters");
    let mut lettered: Vec<&str> = letters.iter().filter_map(|l| l.job_id.as_deref()).collect();
    lettered.sort_unstable();
    let expected: Vec<&str> = wedging.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(lettered, expected, "{letters:#?}");
    for (n, job) in wedging.iter().enumerate() {
        let reason = format!(
            "poison: job {}'s retention stage was started {POISON_LIMIT} times and the worker \
             handling it died each time",
            job.job_id
        );
        let letter = letters
            .iter()
            .find(|l| l.job_id.as_deref() == Some(job.job_id.as_str()))
            .expect("a dead letter");
        assert!(
            letter
                .reason
                .starts_with(&format!("permanent failure: {reason}")),
            "{letter:#?}"
        );
        let run = run_of(&store, &job.job_id).await.expect("a run");
        assert!(
            run.error.as_deref().is_some_and(|e| e.starts_with(&reason)),
            "{run:?}"
        );
        // The first one was also started once by the worker that shut down gracefully.
        let started = POISON_LIMIT + u32::from(n == first);
        assert_eq!(
            (run.status, run.interrupted, run.attempts, &run.handling),
            (JobStatus::Failed, POISON_LIMIT, started, &None),
            "{}: {run:?}",
            job.job_id
        );
    }

    terminate(&worker.0);
    let status = exit_of(&mut worker).await;
    assert!(status.success(), "{status}");
    bus.teardown(&topology).await;
}
