//! Prometheus metrics of one worker process, served as text at `GET /metrics` beside the health
//! routes.
//!
//! One registry per process ([`metrics()`]); the consume loop records what every stage shares
//! (jobs by outcome, durations, retries, dead-letters, work in flight, queue depth and wait), and
//! stages add what only they know (bytes read, written and deduplicated; geo replication lag).
//!
//! The exposition is written by hand: the format is a few lines of text, the set of series is
//! fixed and small (labels are stages and fixed words, never ids), and a metrics crate would add
//! a dependency tree for what a `BTreeMap` behind a mutex does here.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `stowage_jobs_total` | counter | `stage`, `outcome` = succeeded, retried, dead_lettered, cancelled |
//! | `stowage_job_duration_seconds` | histogram | `stage`, `outcome` |
//! | `stowage_retries_total` | counter | `stage` |
//! | `stowage_dead_letters_total` | counter | `stage` |
//! | `stowage_jobs_in_flight` | gauge | `stage` |
//! | `stowage_bytes_total` | counter | `stage`, `kind` = read, written, deduplicated |
//! | `stowage_queue_depth` | gauge | `stage`, `queue` = work, dead_letter |
//! | `stowage_queue_oldest_message_age_seconds` | gauge | `stage` |
//! | `stowage_queue_wait_seconds` | histogram | `stage` |
//! | `stowage_geo_replication_lag_seconds` | histogram | — |
//!
//! Queue depth is polled from the broker. The age of the oldest message cannot be read over AMQP,
//! so it is derived: queues are FIFO, so the message a worker took last was the oldest waiting
//! when it was taken, and the message now at the head is younger than it. While the queue is not
//! empty the gauge therefore reports `now − publish time of the last delivery`: an upper bound
//! that keeps growing when no worker takes anything, which is what an alert on a stuck stage
//! needs. It is 0 when the queue is empty.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use stowage_schemas::Stage;

/// How a job's delivery ended, for `stowage_jobs_total` and the duration histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobOutcome {
    /// The handler succeeded and its events were published.
    Succeeded,
    /// It failed transiently and was scheduled for another attempt.
    Retried,
    /// It was given up on: permanent failure, last attempt, or undecodable.
    DeadLettered,
    /// It was cancelled.
    Cancelled,
}

impl JobOutcome {
    fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Succeeded => "succeeded",
            JobOutcome::Retried => "retried",
            JobOutcome::DeadLettered => "dead_lettered",
            JobOutcome::Cancelled => "cancelled",
        }
    }
}

/// Which bytes a stage moved, for `stowage_bytes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BytesKind {
    /// Read from a source: a snapshot, a vault, a cluster.
    Read,
    /// Written to a destination: packs, manifests, disks.
    Written,
    /// Not written because the destination already held them.
    Deduplicated,
}

impl BytesKind {
    fn as_str(self) -> &'static str {
        match self {
            BytesKind::Read => "read",
            BytesKind::Written => "written",
            BytesKind::Deduplicated => "deduplicated",
        }
    }
}

/// Upper bounds of the duration buckets, in seconds: jobs take from milliseconds (no-op
/// redeliveries) to hours (first full transfer of a large volume).
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Count per bucket (not cumulative), one more for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; DURATION_BUCKETS.len() + 1];
        }
        let index = DURATION_BUCKETS
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(DURATION_BUCKETS.len());
        self.counts[index] += 1;
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct State {
    jobs: BTreeMap<(Stage, JobOutcome), u64>,
    durations: BTreeMap<(Stage, JobOutcome), Histogram>,
    retries: BTreeMap<Stage, u64>,
    dead_letters: BTreeMap<Stage, u64>,
    in_flight: BTreeMap<Stage, i64>,
    bytes: BTreeMap<(Stage, BytesKind), u64>,
    queue_depth: BTreeMap<Stage, (u64, u64)>,
    /// Unix seconds at which the last delivered message of a stage was published.
    last_delivery_published: BTreeMap<Stage, f64>,
    queue_wait: BTreeMap<Stage, Histogram>,
    replication_lag: Histogram,
}

/// The metrics of one process. Cheap to update from any task.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The process's metrics registry.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

fn now_unix() -> f64 {
    jiff::Timestamp::now().as_millisecond() as f64 / 1000.0
}

impl Metrics {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A job of `stage` ended with `outcome` after `elapsed`.
    pub fn job_finished(&self, stage: Stage, outcome: JobOutcome, elapsed: Duration) {
        let mut s = self.lock();
        *s.jobs.entry((stage, outcome)).or_default() += 1;
        s.durations
            .entry((stage, outcome))
            .or_default()
            .observe(elapsed.as_secs_f64());
        match outcome {
            JobOutcome::Retried => *s.retries.entry(stage).or_default() += 1,
            JobOutcome::DeadLettered => *s.dead_letters.entry(stage).or_default() += 1,
            JobOutcome::Succeeded | JobOutcome::Cancelled => {}
        }
    }

    /// A handler of `stage` started (`+1`) or ended (`-1`).
    pub fn in_flight(&self, stage: Stage, delta: i64) {
        *self.lock().in_flight.entry(stage).or_default() += delta;
    }

    /// `stage` moved `bytes` bytes of `kind`.
    pub fn add_bytes(&self, stage: Stage, kind: BytesKind, bytes: u64) {
        if bytes > 0 {
            *self.lock().bytes.entry((stage, kind)).or_default() += bytes;
        }
    }

    /// A delivery of `stage` published at `published_unix` (seconds) was taken now.
    pub fn delivered(&self, stage: Stage, published_unix: f64) {
        let wait = (now_unix() - published_unix).max(0.0);
        let mut s = self.lock();
        s.queue_wait.entry(stage).or_default().observe(wait);
        s.last_delivery_published.insert(stage, published_unix);
    }

    /// The broker reported `work` messages waiting in `stage`'s queue and `dead` in its
    /// dead-letter queue.
    pub fn queue_depth(&self, stage: Stage, work: u64, dead: u64) {
        self.lock().queue_depth.insert(stage, (work, dead));
    }

    /// A recovery point reached the secondary region `lag` after it reached the vault tier.
    pub fn replication_lag(&self, lag: Duration) {
        self.lock().replication_lag.observe(lag.as_secs_f64());
    }

    /// The number of jobs of `stage` that ended with `outcome` so far (for tests and reports).
    pub fn jobs(&self, stage: Stage, outcome: JobOutcome) -> u64 {
        self.lock()
            .jobs
            .get(&(stage, outcome))
            .copied()
            .unwrap_or(0)
    }

    /// Bytes of `kind` moved by `stage` so far.
    pub fn bytes(&self, stage: Stage, kind: BytesKind) -> u64 {
        self.lock().bytes.get(&(stage, kind)).copied().unwrap_or(0)
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn render(&self) -> String {
        let s = self.lock();
        let now = now_unix();
        let mut out = String::with_capacity(4096);
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };

        family(
            &mut out,
            "stowage_jobs_total",
            "counter",
            "Deliveries handled, by stage and how they ended.",
        );
        for ((stage, outcome), n) in &s.jobs {
            let _ = writeln!(
                out,
                "stowage_jobs_total{{stage=\"{stage}\",outcome=\"{}\"}} {n}",
                outcome.as_str()
            );
        }
        family(
            &mut out,
            "stowage_job_duration_seconds",
            "histogram",
            "Time a handler ran, including publishing its events.",
        );
        for ((stage, outcome), h) in &s.durations {
            let labels = format!("stage=\"{stage}\",outcome=\"{}\"", outcome.as_str());
            h.render(&mut out, "stowage_job_duration_seconds", &labels);
        }
        family(
            &mut out,
            "stowage_retries_total",
            "counter",
            "Transient failures sent back through a delay queue.",
        );
        for (stage, n) in &s.retries {
            let _ = writeln!(out, "stowage_retries_total{{stage=\"{stage}\"}} {n}");
        }
        family(
            &mut out,
            "stowage_dead_letters_total",
            "counter",
            "Messages given up on and moved to the stage's dead-letter queue.",
        );
        for (stage, n) in &s.dead_letters {
            let _ = writeln!(out, "stowage_dead_letters_total{{stage=\"{stage}\"}} {n}");
        }
        family(
            &mut out,
            "stowage_jobs_in_flight",
            "gauge",
            "Handlers running now.",
        );
        for (stage, n) in &s.in_flight {
            let _ = writeln!(out, "stowage_jobs_in_flight{{stage=\"{stage}\"}} {n}");
        }
        family(
            &mut out,
            "stowage_bytes_total",
            "counter",
            "Bytes read, written, and not written because the destination already held them.",
        );
        for ((stage, kind), n) in &s.bytes {
            let _ = writeln!(
                out,
                "stowage_bytes_total{{stage=\"{stage}\",kind=\"{}\"}} {n}",
                kind.as_str()
            );
        }
        family(
            &mut out,
            "stowage_queue_depth",
            "gauge",
            "Messages waiting in the stage's queue (work) and dead-letter queue (dead_letter).",
        );
        for (stage, (work, dead)) in &s.queue_depth {
            let _ = writeln!(
                out,
                "stowage_queue_depth{{stage=\"{stage}\",queue=\"work\"}} {work}"
            );
            let _ = writeln!(
                out,
                "stowage_queue_depth{{stage=\"{stage}\",queue=\"dead_letter\"}} {dead}"
            );
        }
        family(
            &mut out,
            "stowage_queue_oldest_message_age_seconds",
            "gauge",
            "Upper bound on the age of the message at the head of the stage's queue; 0 when empty.",
        );
        for (stage, (work, _)) in &s.queue_depth {
            let age = match (work, s.last_delivery_published.get(stage)) {
                (0, _) => 0.0,
                (_, Some(published)) => (now - published).max(0.0),
                // Messages wait and none was ever taken: no bound is known yet.
                (_, None) => continue,
            };
            let _ = writeln!(
                out,
                "stowage_queue_oldest_message_age_seconds{{stage=\"{stage}\"}} {age:.3}"
            );
        }
        family(
            &mut out,
            "stowage_queue_wait_seconds",
            "histogram",
            "Time from publish (or the end of a retry delay) to delivery.",
        );
        for (stage, h) in &s.queue_wait {
            h.render(
                &mut out,
                "stowage_queue_wait_seconds",
                &format!("stage=\"{stage}\""),
            );
        }
        family(
            &mut out,
            "stowage_geo_replication_lag_seconds",
            "histogram",
            "Time from rp.vaulted to rp.replicated.",
        );
        s.replication_lag
            .render(&mut out, "stowage_geo_replication_lag_seconds", "");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_the_oldest_age() {
        let m = Metrics::default();
        m.job_finished(
            Stage::VaultTransfer,
            JobOutcome::Succeeded,
            Duration::from_millis(300),
        );
        m.job_finished(
            Stage::VaultTransfer,
            JobOutcome::Retried,
            Duration::from_secs(2),
        );
        m.add_bytes(Stage::VaultTransfer, BytesKind::Written, 4096);
        m.add_bytes(Stage::VaultTransfer, BytesKind::Deduplicated, 0);
        m.queue_depth(Stage::VaultTransfer, 3, 1);
        m.delivered(Stage::VaultTransfer, now_unix() - 10.0);
        m.queue_depth(Stage::Snapshot, 0, 0);
        let text = m.render();
        assert!(
            text.contains("stowage_jobs_total{stage=\"vault-transfer\",outcome=\"succeeded\"} 1\n")
        );
        assert!(text.contains("stowage_retries_total{stage=\"vault-transfer\"} 1\n"));
        assert!(text.contains(
            "stowage_job_duration_seconds_bucket{stage=\"vault-transfer\",outcome=\"succeeded\",le=\"0.5\"} 1\n"
        ));
        assert!(text.contains(
            "stowage_job_duration_seconds_bucket{stage=\"vault-transfer\",outcome=\"succeeded\",le=\"0.1\"} 0\n"
        ));
        assert!(
            text.contains("stowage_bytes_total{stage=\"vault-transfer\",kind=\"written\"} 4096\n")
        );
        assert!(
            !text.contains("kind=\"deduplicated\""),
            "zero adds are not series"
        );
        assert!(
            text.contains(
                "stowage_queue_depth{stage=\"vault-transfer\",queue=\"dead_letter\"} 1\n"
            )
        );
        assert!(
            text.contains("stowage_queue_oldest_message_age_seconds{stage=\"snapshot\"} 0.000\n")
        );
        let age_line = text
            .lines()
            .find(|l| {
                l.starts_with("stowage_queue_oldest_message_age_seconds{stage=\"vault-transfer\"}")
            })
            .expect("an age for a non-empty queue with a delivery");
        let age: f64 = age_line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((9.0..60.0).contains(&age), "{age_line}");
        assert!(text.contains("stowage_geo_replication_lag_seconds_count 0\n"));
    }
}
