//! Progress on the bus: what a handler reports ([`JobContext::report_progress`]) goes out as
//! `job.progress` events, at most one per `interval` per job, plus the last value when the
//! handler returns, so a client watching the events exchange sees a job move without being
//! flooded by a handler that reports per chunk.
//!
//! Progress events are best effort: one that cannot be published is logged and dropped (the
//! next report, or the final one, carries the newer value); the job's own events and its
//! settlement do not wait on them beyond the final publish.
//!
//! [`JobContext::report_progress`]: crate::JobContext::report_progress

use std::sync::{Arc, Mutex};
use std::time::Duration;

use stowage_schemas::domain::JobProgress;
use stowage_schemas::events;
use stowage_schemas::{Envelope, Message, MessageId, Stage, TraceContext};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::handler::ProgressSink;
use crate::topology::Names;

/// Where one delivery's progress goes: the sink the handler reports to, and the task that
/// publishes it.
pub(crate) struct ProgressEvents {
    state: Arc<State>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    publisher: Publisher,
}

/// The latest value reported and the last one published.
#[derive(Default)]
struct State {
    values: Mutex<Values>,
    reported: Notify,
}

#[derive(Default)]
struct Values {
    latest: Option<JobProgress>,
    published: Option<JobProgress>,
}

impl State {
    fn values(&self) -> std::sync::MutexGuard<'_, Values> {
        self.values.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest value, if it has not been published yet.
    fn unpublished(&self) -> Option<JobProgress> {
        let values = self.values();
        values
            .latest
            .filter(|latest| values.published != Some(*latest))
    }

    fn mark_published(&self, progress: JobProgress) {
        self.values().published = Some(progress);
    }
}

impl ProgressSink for State {
    fn report(&self, progress: JobProgress) {
        self.values().latest = Some(progress);
        self.reported.notify_one();
    }
}

/// Publishes `job.progress` events of one delivery.
#[derive(Clone)]
struct Publisher {
    broker: Arc<dyn Broker>,
    names: Names,
    parent: Arc<Envelope>,
    stage: Stage,
    trace: Option<TraceContext>,
}

impl Publisher {
    async fn publish(&self, state: &State, progress: JobProgress) {
        let event = Message::JobProgress(events::JobProgress {
            job_id: self.parent.job_id.clone(),
            stage: self.stage,
            progress,
        });
        let mut child = crate::envelope::child(&self.parent, 0, event);
        // Every progress event is a new fact: a fresh id, never one a consumer deduplicates.
        child.message_id = MessageId::new_v7();
        if self.trace.is_some() {
            child.trace.clone_from(&self.trace);
        }
        match self
            .broker
            .publish(crate::envelope::outgoing(&self.names, &child))
            .await
        {
            Ok(()) => state.mark_published(progress),
            Err(err) => {
                tracing::debug!(%err, "could not publish a job.progress event; the next one carries newer progress");
            }
        }
    }
}

impl ProgressEvents {
    /// Start publishing the progress of the job `parent` carries, handled by `stage`, at most
    /// once per `interval`, continuing `trace`.
    pub(crate) fn start(
        broker: Arc<dyn Broker>,
        names: Names,
        parent: &Envelope,
        stage: Stage,
        trace: Option<TraceContext>,
        interval: Duration,
    ) -> Self {
        let state = Arc::new(State::default());
        let stop = CancellationToken::new();
        let publisher = Publisher {
            broker,
            names,
            parent: Arc::new(parent.clone()),
            stage,
            trace,
        };
        let task = tokio::spawn({
            let (state, stop, publisher) = (state.clone(), stop.clone(), publisher.clone());
            async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = state.reported.notified() => {}
                    }
                    if let Some(progress) = state.unpublished() {
                        publisher.publish(&state, progress).await;
                    }
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(interval) => {}
                    }
                }
            }
        });
        Self {
            state,
            stop,
            task: Some(task),
            publisher,
        }
    }

    /// The sink to hand the handler.
    pub(crate) fn sink(&self) -> Arc<dyn ProgressSink> {
        self.state.clone()
    }

    /// The handler returned: stop the throttled publishing (after a publish under way) and
    /// publish the last value reported, unless it went out already.
    pub(crate) async fn finish(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take()
            && let Err(err) = task.await
            && err.is_panic()
        {
            tracing::warn!(%err, "the progress publisher panicked");
        }
        if let Some(progress) = self.state.unpublished() {
            self.publisher.publish(&self.state, progress).await;
        }
    }
}

impl Drop for ProgressEvents {
    fn drop(&mut self) {
        // A handling dropped midway (a drain deadline) takes its publisher with it.
        self.stop.cancel();
    }
}
