//! The consume loop: turns stage handlers into a worker that is safe to kill, scale and restart.
//!
//! For each stage: consume its queue with a prefetch, run at most `concurrency` handlers at
//! once, and settle each delivery only after its effects are durable:
//!
//! | handler result | what the runtime does, in order                                          |
//! |----------------|--------------------------------------------------------------------------|
//! | success        | publish the emitted messages (confirmed), then ack                        |
//! | transient      | publish `job.failed` (`will_retry`), republish with `attempt + 1` through |
//! |                | a delay queue (confirmed), then ack; after the last attempt, dead-letter  |
//! |                | instead (`job.failed` says it will not retry)                             |
//! | permanent      | publish `job.failed`, dead-letter with the reason and error chain in      |
//! |                | headers, then ack                                                         |
//! | cancelled      | ack                                                                       |
//! | undecodable    | publish `job.failed` when the body names a job id, dead-letter with the   |
//! |                | decode error, then ack                                                    |
//!
//! While a handler runs, what it reports as progress goes out as `job.progress` events, at
//! most one per [`WorkerConfig::progress_interval`], and the last value before its outcome.
//!
//! If any of those publishes fails, the delivery is left unsettled: the broker redelivers it
//! and the (idempotent) handler runs again. A worker killed at any instant therefore loses
//! nothing; at worst a handler runs twice and reuses its own effects.
//!
//! When the broker goes away the loop resubscribes with backoff. On shutdown it cancels its
//! consumers (no new deliveries), waits for in-flight handlers up to a deadline, then closes
//! its channels, which hands back everything unsettled.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use futures::{FutureExt as _, StreamExt as _};
use stowage_schemas::{Envelope, Message, MessageId, Stage, events};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::broker::{Broker, BrokerError, Delivery, Outgoing};
use crate::envelope;
use crate::handler::{DynHandler, ErrorKind, JobContext, StageError, StageHandler};
use crate::health::Health;
use crate::limits;
use crate::metrics::{JobOutcome, metrics};
use crate::progress::ProgressEvents;
use crate::retry::{RetryDecision, RetryPolicy};
use crate::shutdown::Shutdown;
use crate::telemetry;
use crate::topology::{Names, Topology};

/// Dead-letter header: why the message was given up on.
pub const DEAD_LETTER_REASON: &str = "x-stowage-reason";
/// Dead-letter header: the error and its causes, outermost first.
pub const DEAD_LETTER_CHAIN: &str = "x-stowage-error-chain";
/// Dead-letter header: the stage that gave up.
pub const DEAD_LETTER_STAGE: &str = "x-stowage-stage";
/// Dead-letter header: how many attempts were made.
pub const DEAD_LETTER_ATTEMPTS: &str = "x-stowage-attempts";
/// Dead-letter header: when (RFC 3339).
pub const DEAD_LETTER_AT: &str = "x-stowage-dead-lettered-at";

/// Settings shared by every stage of a worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Names of exchanges and queues.
    pub names: Names,
    /// Retry policy for transient failures (also shapes the delay queues).
    pub retry: RetryPolicy,
    /// How long shutdown waits for in-flight handlers before handing their jobs back.
    pub shutdown_deadline: Duration,
    /// Longest wait between reconnection attempts.
    pub max_reconnect_delay: Duration,
    /// How often each stage's queue depth is read from the broker for the metrics.
    pub queue_poll_interval: Duration,
    /// Shortest time between two `job.progress` events of one job (the last value reported
    /// is always published when the handler returns).
    pub progress_interval: Duration,
    /// The cluster this worker's cluster-side stages (snapshot, restore) serve: they consume
    /// only its queues (`<p>.<stage>@<cluster>`). Required when such a stage is registered;
    /// the vault stages ignore it.
    pub cluster: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            names: Names::new(crate::topology::DEFAULT_PREFIX),
            retry: RetryPolicy::default(),
            shutdown_deadline: Duration::from_secs(30),
            max_reconnect_delay: Duration::from_secs(10),
            queue_poll_interval: Duration::from_secs(15),
            progress_interval: Duration::from_secs(1),
            cluster: None,
        }
    }
}

impl WorkerConfig {
    /// The topology these settings imply: every stage's, with this worker's cluster's queues
    /// when it serves one.
    pub fn topology(&self) -> Topology {
        let mut topology = Topology::new(self.names.clone(), &self.retry);
        if let Some(cluster) = &self.cluster {
            topology.add_cluster(&self.retry, cluster);
        }
        topology
    }

    /// The queue `stage` consumes on this worker.
    pub fn queue_of(&self, stage: Stage) -> String {
        self.names.work_queue(stage, self.cluster_of(stage))
    }

    /// The cluster whose queue `stage` consumes: this worker's for a cluster-side stage.
    fn cluster_of(&self, stage: Stage) -> Option<&str> {
        self.cluster.as_deref().filter(|_| stage.is_cluster_side())
    }
}

/// Per-stage flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageConfig {
    /// Deliveries the broker may hand this worker ahead of time.
    pub prefetch: u16,
    /// Handlers of this stage running at once.
    pub concurrency: usize,
}

impl Default for StageConfig {
    fn default() -> Self {
        Self {
            prefetch: 8,
            concurrency: 4,
        }
    }
}

/// Why a worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No stage was registered.
    #[error("no stage to run: register at least one stage handler")]
    NoStages,
    /// Two handlers for one stage.
    #[error("stage {0} is registered twice; a worker runs one handler per stage")]
    DuplicateStage(Stage),
    /// A cluster-side stage without a cluster to serve.
    #[error(
        "the {0} stage runs inside one cluster and takes only that cluster's jobs: name the cluster (--cluster-name <name>, the name instances give it)"
    )]
    NoCluster(Stage),
    /// A cluster name that breaks the id rule.
    #[error("cluster name: {0}")]
    BadCluster(#[from] stowage_schemas::id::IdError),
    /// The topology could not be declared (not retryable, e.g. inequivalent queue arguments).
    #[error("cannot declare the broker topology: {0}")]
    Topology(#[source] BrokerError),
}

/// A worker: stage handlers bound to a broker.
pub struct Worker {
    broker: Arc<dyn Broker>,
    config: WorkerConfig,
    stages: Vec<(Arc<dyn DynHandler>, StageConfig)>,
    health: Health,
}

impl Worker {
    /// A worker on `broker` with no stages yet.
    pub fn new(broker: Arc<dyn Broker>, config: WorkerConfig) -> Self {
        Self {
            broker,
            config,
            stages: Vec::new(),
            health: Health::default(),
        }
    }

    /// Register the handler of one stage.
    pub fn stage(mut self, handler: impl StageHandler, config: StageConfig) -> Self {
        self.stages.push((Arc::new(handler), config));
        self
    }

    /// The worker's health, to serve over HTTP.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Run until `shutdown` fires, then drain. Declares the topology first, waiting for the
    /// broker if it is not up yet.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), WorkerError> {
        if self.stages.is_empty() {
            return Err(WorkerError::NoStages);
        }
        let mut seen = std::collections::BTreeSet::new();
        for (handler, _) in &self.stages {
            if !seen.insert(handler.stage()) {
                return Err(WorkerError::DuplicateStage(handler.stage()));
            }
        }
        if let Some(cluster) = &self.config.cluster {
            stowage_schemas::id::validate(cluster)?;
        }
        if let Some(stage) = seen
            .iter()
            .find(|s| s.is_cluster_side() && self.config.cluster.is_none())
        {
            return Err(WorkerError::NoCluster(*stage));
        }
        for (handler, _) in &self.stages {
            self.health.register(handler.stage());
        }
        // The cluster's queues are declared only when missing (as producers do), so a worker
        // never fights a producer that declared them first over their arguments.
        let topology = Topology::new(self.config.names.clone(), &self.config.retry);
        let declare = || async {
            self.broker.declare(&topology).await?;
            if let Some(cluster) = &self.config.cluster {
                crate::client::ensure_cluster_queues(
                    self.broker.as_ref(),
                    &self.config.names,
                    &self.config.retry,
                    cluster,
                )
                .await?;
            }
            Ok::<(), BrokerError>(())
        };
        let mut backoff = reconnect_backoff(&self.config);
        loop {
            match declare().await {
                Ok(()) => break,
                Err(err) if err.is_transient() => {
                    let wait = backoff.next().unwrap_or(self.config.max_reconnect_delay);
                    tracing::warn!(%err, retry_in = ?wait, "cannot declare the topology yet");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.triggered() => return Ok(()),
                    }
                }
                Err(err) => return Err(WorkerError::Topology(err)),
            }
        }
        tracing::info!(stages = ?seen, cluster = ?self.config.cluster, endpoint = %self.broker.endpoint(), "worker started");

        let mut loops = JoinSet::new();
        for (handler, stage_config) in self.stages {
            let runner = StageRunner {
                stage: handler.stage(),
                handler,
                config: stage_config,
                worker: self.config.clone(),
                broker: self.broker.clone(),
                health: self.health.clone(),
                shutdown: shutdown.clone(),
                declared: Arc::new(tokio::sync::Mutex::new(
                    self.config.cluster.iter().cloned().collect(),
                )),
            };
            loops.spawn(runner.run());
        }
        while let Some(result) = loops.join_next().await {
            if let Err(err) = result {
                tracing::error!(%err, "a stage loop panicked");
            }
        }
        tracing::info!("worker stopped");
        Ok(())
    }
}

fn reconnect_backoff(config: &WorkerConfig) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(config.max_reconnect_delay)
        .with_jitter()
        .without_max_times()
        .build()
}

/// One stage's consume loop.
struct StageRunner {
    stage: Stage,
    handler: Arc<dyn DynHandler>,
    config: StageConfig,
    worker: WorkerConfig,
    broker: Arc<dyn Broker>,
    health: Health,
    shutdown: Shutdown,
    /// Clusters whose queues this worker has declared (its own at start, then every cluster a
    /// message it emitted was addressed to).
    declared: Arc<tokio::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl StageRunner {
    /// Publish a message this stage emitted. One addressed to a cluster (a restore.hydrated
    /// for its target cluster) first makes sure that cluster's queues exist, so it waits there
    /// for that cluster's workers rather than vanish unrouted.
    async fn publish_emitted(&self, child: &Envelope) -> Result<(), BrokerError> {
        if let Some(cluster) = envelope::cluster_of(child)? {
            let mut declared = self.declared.lock().await;
            if !declared.contains(cluster) {
                crate::client::ensure_cluster_queues(
                    self.broker.as_ref(),
                    &self.worker.names,
                    &self.worker.retry,
                    cluster,
                )
                .await?;
                declared.insert(cluster.to_owned());
            }
        }
        self.broker
            .publish(envelope::outgoing(&self.worker.names, child))
            .await
    }

    async fn run(self) {
        let this = Arc::new(self);
        let queue = this.worker.queue_of(this.stage);
        let permits = Arc::new(Semaphore::new(this.config.concurrency.max(1)));
        let mut in_flight = JoinSet::new();
        let mut backoff = reconnect_backoff(&this.worker);
        let poller = tokio::spawn(poll_queue_depth(this.clone()));

        'subscribe: while !this.shutdown.is_triggered() {
            let subscription = tokio::select! {
                s = this.broker.consume(&queue, this.config.prefetch) => s,
                () = this.shutdown.triggered() => break,
            };
            let mut subscription = match subscription {
                Ok(s) => s,
                Err(err) => {
                    this.health.set_consuming(this.stage, false);
                    let wait = backoff.next().unwrap_or(this.worker.max_reconnect_delay);
                    tracing::warn!(stage = %this.stage, %err, retry_in = ?wait, "cannot consume; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => continue,
                        () = this.shutdown.triggered() => break,
                    }
                }
            };
            backoff = reconnect_backoff(&this.worker);
            this.health.set_consuming(this.stage, true);
            tracing::info!(stage = %this.stage, %queue, prefetch = this.config.prefetch, concurrency = this.config.concurrency, "consuming");

            loop {
                while let Some(done) = in_flight.try_join_next() {
                    report_task(done);
                }
                let permit = tokio::select! {
                    p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                    () = this.shutdown.triggered() => break,
                };
                let next = tokio::select! {
                    d = subscription.deliveries.next() => d,
                    () = this.shutdown.triggered() => break,
                };
                match next {
                    Some(Ok(delivery)) => {
                        let runner = this.clone();
                        in_flight.spawn(async move { runner.process(delivery, permit).await });
                    }
                    Some(Err(err)) => {
                        this.health.set_consuming(this.stage, false);
                        tracing::warn!(stage = %this.stage, %err, "lost the broker; in-flight jobs will be redelivered, resubscribing");
                        subscription.canceller.close().await;
                        continue 'subscribe;
                    }
                    None => {
                        this.health.set_consuming(this.stage, false);
                        tracing::warn!(stage = %this.stage, "the broker ended the subscription; resubscribing");
                        subscription.canceller.close().await;
                        continue 'subscribe;
                    }
                }
            }

            // Shutdown: stop new deliveries, let in-flight handlers finish, then release.
            this.health.set_consuming(this.stage, false);
            subscription.canceller.cancel().await;
            drain(this.stage, &mut in_flight, this.worker.shutdown_deadline).await;
            subscription.canceller.close().await;
            poller.abort();
            return;
        }
        this.health.set_consuming(this.stage, false);
        drain(this.stage, &mut in_flight, this.worker.shutdown_deadline).await;
        poller.abort();
    }

    /// Handle one delivery and settle it.
    async fn process(&self, mut delivery: Delivery, _permit: OwnedSemaphorePermit) {
        let decoded = envelope::decode_delivery(&delivery);
        let ids = match &decoded {
            Ok(_) => None,
            Err(_) => Some(envelope::probe_delivery(&delivery)),
        };
        let created_at = match (&decoded, &ids) {
            (Ok(envelope), _) => Some(envelope.created_at),
            (Err(_), Some(ids)) => ids.created_at,
            (Err(_), None) => None,
        };
        if let Some(published) = envelope::published_at(&delivery, created_at) {
            metrics().delivered(self.stage, published);
        }
        let envelope = match decoded {
            Ok(e) => e,
            Err(reason) => {
                let ids = ids.unwrap_or_default();
                tracing::warn!(
                    stage = %self.stage,
                    reason = %limits::log_field(&reason),
                    message_id = ?ids.message_id.as_deref().map(limits::log_field),
                    "undecodable message; dead-lettering"
                );
                if let Some(job_id) = ids
                    .job_id
                    .filter(|id| stowage_schemas::id::validate(id).is_ok())
                {
                    let failed = events::JobFailed {
                        job_id: job_id.clone(),
                        stage: self.stage,
                        reason: reason.clone(),
                        error_chain: vec![reason.clone()],
                        permanent: true,
                        attempt: 0,
                        will_retry: false,
                    };
                    let mut event = Envelope::new(job_id, Message::JobFailed(failed));
                    // Stable across redeliveries of the same body, so consumers can deduplicate.
                    let mut name = format!("stowage/undecodable/{}/", self.stage).into_bytes();
                    match &ids.message_id {
                        Some(id) => name.extend_from_slice(id.as_bytes()),
                        None => name.extend_from_slice(&delivery.body),
                    }
                    event.message_id =
                        MessageId(uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &name));
                    if let Err(err) = self.publish_emitted(&event).await {
                        tracing::warn!(%err, "could not publish job.failed; the broker will redeliver the message");
                        return;
                    }
                }
                // The body goes to the dead-letter queue as it came, without a copy.
                let body = std::mem::take(&mut delivery.body);
                self.dead_letter(&delivery, body, &reason, std::slice::from_ref(&reason), 1)
                    .await;
                metrics().job_finished(self.stage, JobOutcome::DeadLettered, Duration::ZERO);
                return;
            }
        };
        let span = tracing::info_span!(
            "job",
            otel.name = %format_args!("{} {}", self.stage, envelope.kind()),
            stage = %self.stage,
            job_id = %limits::log_field(&envelope.job_id),
            message_id = %envelope.message_id,
            kind = envelope.kind(),
            attempt = envelope.attempt,
            recovery_point_id = %limits::log_field(envelope.recovery_point_id.as_deref().unwrap_or("")),
        );
        // The job continues the trace its message carries (one trace per recovery point).
        telemetry::set_parent(&span, envelope.trace.as_ref());
        self.handle(delivery, envelope).instrument(span).await;
    }

    async fn handle(&self, delivery: Delivery, envelope: Envelope) {
        let ctx = JobContext::for_delivery(
            self.stage,
            envelope.attempt,
            // A message resubmitted after its queue was lost counts as redelivered too.
            delivery.redelivered
                || matches!(
                    delivery
                        .properties
                        .headers
                        .get(crate::client::RECOVERED_HEADER),
                    Some(crate::broker::HeaderValue::Bool(true))
                ),
            self.shutdown.clone(),
        );
        let started = tokio::time::Instant::now();
        metrics().in_flight(self.stage, 1);
        // What this job emits continues the trace from this job's span.
        let trace = telemetry::current_trace_context();
        let progress = ProgressEvents::start(
            self.broker.clone(),
            self.worker.names.clone(),
            &envelope,
            self.stage,
            trace.clone(),
            self.worker.progress_interval,
        );
        let ctx = ctx.with_progress(progress.sink());
        let result = AssertUnwindSafe(self.handler.handle_boxed(ctx, envelope.clone()))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                Err(StageError::transient(format!(
                    "the handler panicked: {what}"
                )))
            });
        let elapsed = started.elapsed();
        metrics().in_flight(self.stage, -1);
        progress.finish().await;

        let settled = match result {
            Ok(outcome) => {
                let mut published = Ok(());
                for (index, message) in outcome.emit.into_iter().enumerate() {
                    let mut child = envelope::child(&envelope, index, message);
                    if trace.is_some() {
                        child.trace.clone_from(&trace);
                    }
                    published = self.publish_emitted(&child).await;
                    if published.is_err() {
                        break;
                    }
                }
                match published {
                    Ok(()) => {
                        tracing::info!(?elapsed, "job done");
                        metrics().job_finished(self.stage, JobOutcome::Succeeded, elapsed);
                        delivery.ack().await
                    }
                    Err(err) => {
                        tracing::warn!(%err, "could not publish the job's events; retrying the job");
                        let failure = StageError::transient(err);
                        self.after_transient(&delivery, envelope, &failure, elapsed)
                            .await
                    }
                }
            }
            Err(err) => match err.kind() {
                ErrorKind::Permanent => {
                    let chain = err.chain();
                    tracing::warn!(
                        error = %limits::log_field(&err.to_string()),
                        chain = ?chain.iter().map(|c| limits::log_field(c)).collect::<Vec<_>>(),
                        "job failed permanently; dead-lettering"
                    );
                    let published = self
                        .publish_failed(&envelope, &err, &err.to_string(), false)
                        .await;
                    if let Err(broker) = published {
                        tracing::warn!(err = %broker, "could not publish job.failed; the broker will redeliver the message");
                        return;
                    }
                    let reason = format!("permanent failure: {err}");
                    // An attempt counter from the message may be anything: saturate, never wrap.
                    let attempts = envelope.attempt.saturating_add(1);
                    let body = delivery.body.clone();
                    self.dead_letter(&delivery, body, &reason, &chain, attempts)
                        .await;
                    metrics().job_finished(self.stage, JobOutcome::DeadLettered, elapsed);
                    return;
                }
                ErrorKind::Transient => {
                    self.after_transient(&delivery, envelope, &err, elapsed)
                        .await
                }
                ErrorKind::Cancelled => {
                    tracing::info!(reason = %err, "job cancelled");
                    metrics().job_finished(self.stage, JobOutcome::Cancelled, elapsed);
                    delivery.ack().await
                }
            },
        };
        if let Err(err) = settled {
            tracing::warn!(%err, "could not settle the delivery; the broker will redeliver it");
        }
    }

    /// Retry through a delay queue, or dead-letter after the last attempt.
    async fn after_transient(
        &self,
        delivery: &Delivery,
        mut envelope: Envelope,
        err: &StageError,
        elapsed: Duration,
    ) -> Result<(), BrokerError> {
        match self.worker.retry.after_failure(envelope.attempt) {
            RetryDecision::RetryAfter { level, delay } => {
                tracing::warn!(error = %limits::log_field(&err.to_string()), retry_in = ?delay, "job failed; will retry");
                let reason = format!("{err}; retrying in {delay:?}");
                self.publish_failed(&envelope, err, &reason, true).await?;
                envelope.attempt = envelope.attempt.saturating_add(1);
                let mut message = envelope::outgoing(&self.worker.names, &envelope);
                message.exchange = self.worker.names.delay_exchange();
                message.routing_key =
                    Names::delay_routing_key(level, self.stage, self.worker.cluster_of(self.stage));
                message.mandatory = true;
                message.properties.expiration = Some(delay);
                let eligible_at = jiff::Timestamp::now().as_millisecond()
                    + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
                message
                    .properties
                    .headers
                    .insert(envelope::PUBLISHED_AT.into(), eligible_at.into());
                self.broker.publish(message).await?;
                metrics().job_finished(self.stage, JobOutcome::Retried, elapsed);
                delivery.ack().await
            }
            RetryDecision::GiveUp { attempts } => {
                tracing::warn!(error = %limits::log_field(&err.to_string()), attempts, "job failed on its last attempt; dead-lettering");
                let reason = format!("gave up after {attempts} attempts: {err}");
                self.publish_failed(&envelope, err, &reason, false).await?;
                self.dead_letter(
                    delivery,
                    delivery.body.clone(),
                    &reason,
                    &err.chain(),
                    attempts,
                )
                .await;
                metrics().job_finished(self.stage, JobOutcome::DeadLettered, elapsed);
                Ok(())
            }
        }
    }

    /// Publish `job.failed` for this attempt of the job `envelope` carries, before the delivery
    /// is settled (a failure to publish leaves it unsettled, to be redelivered). Its message id
    /// is derived from the job message's id and attempt, so a redelivery repeats the same id.
    async fn publish_failed(
        &self,
        envelope: &Envelope,
        err: &StageError,
        reason: &str,
        will_retry: bool,
    ) -> Result<(), BrokerError> {
        let failed = events::JobFailed {
            job_id: envelope.job_id.clone(),
            stage: self.stage,
            reason: reason.to_owned(),
            error_chain: err.chain(),
            permanent: err.kind() == ErrorKind::Permanent,
            attempt: envelope.attempt,
            will_retry,
        };
        let mut event = envelope::child(envelope, 0, Message::JobFailed(failed));
        event.message_id = MessageId(uuid::Uuid::new_v5(
            &envelope.message_id.0,
            format!("event.job.failed@{}", envelope.attempt).as_bytes(),
        ));
        if let Some(trace) = telemetry::current_trace_context() {
            event.trace = Some(trace);
        }
        self.publish_emitted(&event).await
    }

    /// Publish the original message (`body`) to the stage's dead-letter queue with the reason in
    /// its headers, then ack it. Leaves it unsettled (to be redelivered) if the publish fails.
    /// Every header is bounded ([`limits`]): a reason that quotes an oversized field must not
    /// make the frame exceed the broker's limit, which would close the whole connection.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        body: Vec<u8>,
        reason: &str,
        chain: &[String],
        attempts: u32,
    ) {
        let mut properties = delivery.properties.clone();
        properties.expiration = None;
        let dropped = limits::bound_headers(&mut properties.headers);
        let h = &mut properties.headers;
        if dropped > 0 {
            h.insert(
                "x-stowage-headers-dropped".into(),
                i64::try_from(dropped).unwrap_or(i64::MAX).into(),
            );
        }
        h.insert(DEAD_LETTER_REASON.into(), limits::header_str(reason));
        h.insert(DEAD_LETTER_CHAIN.into(), limits::chain_header(chain));
        h.insert(DEAD_LETTER_STAGE.into(), self.stage.as_str().into());
        h.insert(DEAD_LETTER_ATTEMPTS.into(), i64::from(attempts).into());
        h.insert(
            DEAD_LETTER_AT.into(),
            jiff::Timestamp::now().to_string().into(),
        );
        h.insert(
            "x-stowage-original-exchange".into(),
            limits::header_str(&delivery.exchange),
        );
        h.insert(
            "x-stowage-original-routing-key".into(),
            limits::header_str(&delivery.routing_key),
        );
        let message = Outgoing {
            exchange: String::new(),
            routing_key: self.worker.names.dead_letter_queue(self.stage),
            mandatory: true,
            properties,
            body,
        };
        let result = match self.broker.publish(message).await {
            Ok(()) => delivery.ack().await,
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            tracing::warn!(%err, "could not dead-letter the message; the broker will redeliver it");
        }
    }
}

/// Read the depth of a stage's queue and dead-letter queue into the metrics, until the loop ends
/// (the caller aborts this task).
async fn poll_queue_depth(runner: Arc<StageRunner>) {
    let queue = runner.worker.queue_of(runner.stage);
    let dead = runner.worker.names.dead_letter_queue(runner.stage);
    // A read the broker never answers must not freeze the gauge for good: it is given up and
    // asked again at the next tick.
    let patience = runner
        .worker
        .queue_poll_interval
        .max(Duration::from_secs(5));
    loop {
        if runner.broker.is_connected() {
            let read = tokio::time::timeout(patience, async {
                (
                    runner.broker.queue_depth(&queue).await,
                    runner.broker.queue_depth(&dead).await,
                )
            });
            match read.await {
                Ok((Ok(work), Ok(dead))) => {
                    metrics().queue_depth(runner.stage, u64::from(work), u64::from(dead));
                }
                Ok((Err(err), _) | (_, Err(err))) => {
                    tracing::debug!(stage = %runner.stage, %err, "cannot read the queue depth");
                }
                Err(_) => {
                    tracing::debug!(stage = %runner.stage, ?patience, "the broker did not say the queue depth in time");
                }
            }
        }
        tokio::time::sleep(runner.worker.queue_poll_interval).await;
    }
}

async fn drain(stage: Stage, in_flight: &mut JoinSet<()>, deadline: Duration) {
    while let Some(done) = in_flight.try_join_next() {
        report_task(done);
    }
    if in_flight.is_empty() {
        return;
    }
    tracing::info!(%stage, jobs = in_flight.len(), ?deadline, "draining in-flight jobs");
    let finished = tokio::time::timeout(deadline, async {
        while let Some(done) = in_flight.join_next().await {
            report_task(done);
        }
    })
    .await;
    if finished.is_err() {
        tracing::warn!(%stage, jobs = in_flight.len(), "jobs did not finish within the shutdown deadline; handing them back to the queue");
        in_flight.abort_all();
        while in_flight.join_next().await.is_some() {}
    }
}

fn report_task(done: Result<(), tokio::task::JoinError>) {
    if let Err(err) = done
        && err.is_panic()
    {
        tracing::error!(%err, "a job task panicked outside its handler");
    }
}
