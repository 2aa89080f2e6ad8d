//! Prometheus metrics of one worker process, served as text at `GET /metrics` beside the health
//! routes.
//!
//! One registry per process ([`metrics()`]); the consume loop records what every stage shares
//! (jobs by outcome, durations, retries, dead-letters, work in flight, queue depth and wait), and
//! stages add what only they know (bytes read, written and deduplicated; geo replication lag).
//!
//! The series live in `prometheus-client` metrics and are encoded by its Prometheus text encoder
//! (format 0.0.4). One collector announces every family on every scrape, in the order below,
//! with its `# HELP` and `# TYPE` even before it has a series, so a dashboard or alert sees
//! the whole set from a worker's first scrape. Labels are stages and fixed words, never ids.
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
//! | `stowage_drill_rto_seconds` | gauge | `instance`, `tier` (the last drill's recovery time) |
//! | `stowage_drill_last_success_timestamp_seconds` | gauge | `instance`, `tier` |
//! | `stowage_drill_last_run_succeeded` | gauge | `instance`, `tier` (1 or 0) |
//!
//! The drill gauges are set by whatever process knows the drills (`stowage scheduler` reads the
//! vault's drill records every tick; `stowage drill run` sets them for its own run): their
//! labels are instance names, which are few and chosen by the operator.
//!
//! Queue depth is polled from the broker. The age of the oldest message cannot be read over AMQP,
//! so it is derived: queues are FIFO, so the message a worker took last was the oldest waiting
//! when it was taken, and the message now at the head is younger than it. While the queue is not
//! empty the gauge therefore reports `now − publish time of the last delivery`: an upper bound
//! that keeps growing when no worker takes anything, which is what an alert on a stuck stage
//! needs. It is 0 when the queue is empty.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use stowage_schemas::Stage;

/// The `Content-Type` of what [`Metrics::render`] returns (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

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

/// Label values are the enums' own words (`as_str`).
macro_rules! label_value_as_str {
    ($($label:ty),*) => {$(
        impl EncodeLabelValue for $label {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
                encoder.write_str(self.as_str())
            }
        }
    )*};
}

label_value_as_str!(JobOutcome, BytesKind);

/// Upper bounds of the duration buckets, in seconds: jobs take from milliseconds (no-op
/// redeliveries) to hours (first full transfer of a large volume).
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];

fn histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS.iter().copied())
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    stage: &'static str,
    outcome: JobOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    stage: &'static str,
    kind: BytesKind,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    stage: &'static str,
    queue: &'static str,
}

fn stage_labels(stage: Stage) -> StageLabels {
    StageLabels {
        stage: stage.as_str(),
    }
}

/// What the broker last said about a stage's queues, and when the last delivery taken from it
/// was published: the queue gauges are derived from it at scrape time.
#[derive(Debug, Clone, Copy, Default)]
struct QueueState {
    /// Messages in the work queue and in the dead-letter queue, once the broker was asked.
    depth: Option<(u64, u64)>,
    /// Unix seconds at which the last delivered message of the stage was published.
    last_delivery_published: Option<f64>,
}

/// Every series of the process, and the collector that encodes them.
#[derive(Debug)]
struct Series {
    jobs: Family<JobLabels, Counter>,
    durations: Family<JobLabels, Histogram>,
    retries: Family<StageLabels, Counter>,
    dead_letters: Family<StageLabels, Counter>,
    in_flight: Family<StageLabels, Gauge>,
    bytes: Family<BytesLabels, Counter>,
    queue_wait: Family<StageLabels, Histogram>,
    replication_lag: Histogram,
    queues: Mutex<BTreeMap<Stage, QueueState>>,
    drills: Mutex<BTreeMap<(String, String), DrillState>>,
}

/// The last drill of one instance and tier.
#[derive(Debug, Clone, Copy, Default)]
struct DrillState {
    /// Recovery time of the last drill, in seconds.
    rto_seconds: Option<f64>,
    /// Whether the last drill succeeded.
    succeeded: Option<bool>,
    /// Unix seconds at which the last successful drill finished.
    last_success: Option<f64>,
    /// Unix seconds at which the last drill (of any outcome) finished.
    last_run: Option<f64>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DrillLabels {
    instance: String,
    tier: String,
}

impl Default for Series {
    fn default() -> Self {
        Self {
            jobs: Family::default(),
            durations: Family::new_with_constructor(histogram),
            retries: Family::default(),
            dead_letters: Family::default(),
            in_flight: Family::default(),
            bytes: Family::default(),
            queue_wait: Family::new_with_constructor(histogram),
            replication_lag: histogram(),
            queues: Mutex::default(),
            drills: Mutex::default(),
        }
    }
}

/// Encode one family under its name and help (counter names without `_total`: the encoder adds
/// it).
fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> std::fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Series {
    fn queues(&self) -> MutexGuard<'_, BTreeMap<Stage, QueueState>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Collector for Series {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut encoder;
        family(
            e,
            "stowage_jobs",
            "Deliveries handled, by stage and how they ended.",
            &self.jobs,
        )?;
        family(
            e,
            "stowage_job_duration_seconds",
            "Time a handler ran, including publishing its events.",
            &self.durations,
        )?;
        family(
            e,
            "stowage_retries",
            "Transient failures sent back through a delay queue.",
            &self.retries,
        )?;
        family(
            e,
            "stowage_dead_letters",
            "Messages given up on and moved to the stage's dead-letter queue.",
            &self.dead_letters,
        )?;
        family(
            e,
            "stowage_jobs_in_flight",
            "Handlers running now.",
            &self.in_flight,
        )?;
        family(
            e,
            "stowage_bytes",
            "Bytes read, written, and not written because the destination already held them.",
            &self.bytes,
        )?;

        let queues = self.queues().clone();
        let now = now_unix();
        let mut depth = e.encode_descriptor(
            "stowage_queue_depth",
            "Messages waiting in the stage's queue (work) and dead-letter queue (dead_letter).",
            None,
            MetricType::Gauge,
        )?;
        for (stage, q) in &queues {
            let Some((work, dead)) = q.depth else {
                continue;
            };
            for (queue, n) in [("work", work), ("dead_letter", dead)] {
                let labels = QueueLabels {
                    stage: stage.as_str(),
                    queue,
                };
                ConstGauge::new(saturating_i64(n)).encode(depth.encode_family(&labels)?)?;
            }
        }
        let mut age = e.encode_descriptor(
            "stowage_queue_oldest_message_age_seconds",
            "Upper bound on the age of the message at the head of the stage's queue; 0 when empty.",
            None,
            MetricType::Gauge,
        )?;
        for (stage, q) in &queues {
            let oldest = match (q.depth, q.last_delivery_published) {
                (None, _) => continue,
                (Some((0, _)), _) => 0.0,
                (Some(_), Some(published)) => (now - published).max(0.0),
                // Messages wait and none was ever taken: no bound is known yet.
                (Some(_), None) => continue,
            };
            // Milliseconds are precision enough for an age.
            let oldest = (oldest * 1000.0).round() / 1000.0;
            ConstGauge::new(oldest).encode(age.encode_family(&stage_labels(*stage))?)?;
        }
        family(
            e,
            "stowage_queue_wait_seconds",
            "Time from publish (or the end of a retry delay) to delivery.",
            &self.queue_wait,
        )?;
        family(
            e,
            "stowage_geo_replication_lag_seconds",
            "Time from rp.vaulted to rp.replicated.",
            &self.replication_lag,
        )?;
        let drills = self
            .drills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let labels = |(instance, tier): &(String, String)| DrillLabels {
            instance: instance.clone(),
            tier: tier.clone(),
        };
        let mut rto = e.encode_descriptor(
            "stowage_drill_rto_seconds",
            "Recovery time of the last restore drill: request to restored and verified.",
            None,
            MetricType::Gauge,
        )?;
        for (key, d) in &drills {
            if let Some(seconds) = d.rto_seconds {
                ConstGauge::new(seconds).encode(rto.encode_family(&labels(key))?)?;
            }
        }
        let mut success = e.encode_descriptor(
            "stowage_drill_last_success_timestamp_seconds",
            "When the last successful restore drill finished (Unix seconds).",
            None,
            MetricType::Gauge,
        )?;
        for (key, d) in &drills {
            if let Some(at) = d.last_success {
                ConstGauge::new(at).encode(success.encode_family(&labels(key))?)?;
            }
        }
        let mut last = e.encode_descriptor(
            "stowage_drill_last_run_succeeded",
            "1 when the last restore drill succeeded, 0 when it failed.",
            None,
            MetricType::Gauge,
        )?;
        for (key, d) in &drills {
            if let Some(ok) = d.succeeded {
                ConstGauge::new(i64::from(ok)).encode(last.encode_family(&labels(key))?)?;
            }
        }
        Ok(())
    }
}

/// The metrics of one process. Cheap to update from any task.
#[derive(Debug)]
pub struct Metrics {
    series: Arc<Series>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let series = Arc::new(Series::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(series.clone()));
        Self { series, registry }
    }
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
    /// A job of `stage` ended with `outcome` after `elapsed`.
    pub fn job_finished(&self, stage: Stage, outcome: JobOutcome, elapsed: Duration) {
        let s = &self.series;
        let labels = JobLabels {
            stage: stage.as_str(),
            outcome,
        };
        s.jobs.get_or_create(&labels).inc();
        s.durations
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        let also = match outcome {
            JobOutcome::Retried => Some(&s.retries),
            JobOutcome::DeadLettered => Some(&s.dead_letters),
            JobOutcome::Succeeded | JobOutcome::Cancelled => None,
        };
        if let Some(counter) = also {
            counter.get_or_create(&stage_labels(stage)).inc();
        }
    }

    /// A handler of `stage` started (`+1`) or ended (`-1`).
    pub fn in_flight(&self, stage: Stage, delta: i64) {
        self.series
            .in_flight
            .get_or_create(&stage_labels(stage))
            .inc_by(delta);
    }

    /// `stage` moved `bytes` bytes of `kind`.
    pub fn add_bytes(&self, stage: Stage, kind: BytesKind, bytes: u64) {
        if bytes > 0 {
            self.series
                .bytes
                .get_or_create(&BytesLabels {
                    stage: stage.as_str(),
                    kind,
                })
                .inc_by(bytes);
        }
    }

    /// A delivery of `stage` published at `published_unix` (seconds) was taken now.
    pub fn delivered(&self, stage: Stage, published_unix: f64) {
        let wait = (now_unix() - published_unix).max(0.0);
        self.series
            .queue_wait
            .get_or_create(&stage_labels(stage))
            .observe(wait);
        self.series
            .queues()
            .entry(stage)
            .or_default()
            .last_delivery_published = Some(published_unix);
    }

    /// The broker reported `work` messages waiting in `stage`'s queue and `dead` in its
    /// dead-letter queue.
    pub fn queue_depth(&self, stage: Stage, work: u64, dead: u64) {
        self.series.queues().entry(stage).or_default().depth = Some((work, dead));
    }

    /// A recovery point reached the secondary region `lag` after it reached the vault tier.
    pub fn replication_lag(&self, lag: Duration) {
        self.series.replication_lag.observe(lag.as_secs_f64());
    }

    /// A restore drill of `instance`'s `tier` finished at `finished_unix` (seconds) after a
    /// recovery time of `rto`, succeeding or not. Drills reported out of order keep the newest
    /// run's values; the last success is the newest successful run.
    pub fn drill_finished(
        &self,
        instance: &str,
        tier: &str,
        rto: Duration,
        succeeded: bool,
        finished_unix: f64,
    ) {
        let mut drills = self.series.drills.lock().unwrap_or_else(|p| p.into_inner());
        let state = drills
            .entry((instance.to_owned(), tier.to_owned()))
            .or_default();
        let newest = state
            .last_run
            .is_none_or(|previous| finished_unix >= previous);
        if newest {
            state.rto_seconds = Some((rto.as_secs_f64() * 1000.0).round() / 1000.0);
            state.succeeded = Some(succeeded);
            state.last_run = Some(finished_unix);
        }
        if succeeded && state.last_success.is_none_or(|at| finished_unix > at) {
            state.last_success = Some(finished_unix);
        }
    }

    /// The number of jobs of `stage` that ended with `outcome` so far (for tests and reports).
    pub fn jobs(&self, stage: Stage, outcome: JobOutcome) -> u64 {
        self.series
            .jobs
            .get(&JobLabels {
                stage: stage.as_str(),
                outcome,
            })
            .map_or(0, |c| c.get())
    }

    /// Bytes of `kind` moved by `stage` so far.
    pub fn bytes(&self, stage: Stage, kind: BytesKind) -> u64 {
        self.series
            .bytes
            .get(&BytesLabels {
                stage: stage.as_str(),
                kind,
            })
            .map_or(0, |c| c.get())
    }

    /// The Prometheus text exposition (format 0.0.4, [`CONTENT_TYPE`]) of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        if let Err(err) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!(%err, "cannot encode the metrics");
        }
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
            text.contains("stowage_queue_oldest_message_age_seconds{stage=\"snapshot\"} 0.0\n")
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
        assert!(text.contains("# TYPE stowage_drill_rto_seconds gauge\n"));
    }

    #[test]
    fn drills_keep_the_newest_run_and_the_last_success() {
        let m = Metrics::default();
        m.drill_finished("shop", "vault", Duration::from_millis(42_500), true, 1000.0);
        m.drill_finished("shop", "vault", Duration::from_secs(90), false, 2000.0);
        // An older run reported late changes nothing but could not be a newer success.
        m.drill_finished("shop", "vault", Duration::from_secs(7), true, 500.0);
        let text = m.render();
        assert!(
            text.contains("stowage_drill_rto_seconds{instance=\"shop\",tier=\"vault\"} 90.0\n"),
            "{text}"
        );
        assert!(text.contains(
            "stowage_drill_last_success_timestamp_seconds{instance=\"shop\",tier=\"vault\"} 1000.0\n"
        ));
        assert!(
            text.contains("stowage_drill_last_run_succeeded{instance=\"shop\",tier=\"vault\"} 0\n")
        );
    }
}
