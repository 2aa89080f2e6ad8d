//! What a stage is, to the runtime: an async function from a message to an outcome, and an
//! error that says whether trying again can help.
//!
//! The runtime owns everything around it — consuming, decoding, acks, retries, dead-letters,
//! publishing the events a handler emits, shutdown — so a handler only does its stage's work.
//! A handler must be idempotent: the same message may arrive twice (at-least-once delivery),
//! and the second run must reuse what the first made durable rather than redo or duplicate it.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use stowage_schemas::domain::JobProgress;
use stowage_schemas::{Envelope, Message, Retryable, Stage};

use crate::input::{self, StageInput};
use crate::shutdown::Shutdown;

/// Asks a running job to stop at its next safe point; clones share the request. tokio-util's
/// token, re-exported so stages need no dependency of their own.
pub use tokio_util::sync::CancellationToken;

/// A stage's work, plugged into the runtime: one async function from the stage's typed input
/// to its outcome. The runtime decodes the envelope, refuses (dead-letters, naming what the
/// stage takes) any message kind the stage does not take, and hands the handler its input.
pub trait StageHandler: Send + Sync + 'static {
    /// What the stage takes (a job type, or an enum of its job and the events that trigger it).
    type Input: StageInput;

    /// The stage this handler implements; it consumes that stage's queue. By default the
    /// stage whose job the input is; a handler taking any [`Message`] must say.
    fn stage(&self) -> Stage {
        Self::Input::stage().expect(
            "a handler whose input names no stage (e.g. any Message) implements stage() itself",
        )
    }

    /// Handle one input. Return only once every effect is durable: the runtime acks the
    /// message right after publishing the returned events. The envelope it came in is
    /// [`JobContext::envelope`].
    fn handle(
        &self,
        ctx: JobContext,
        input: Self::Input,
    ) -> impl Future<Output = Result<Outcome, StageError>> + Send;

    /// Handles `envelope` as a worker does: decodes the stage's input from it (refusing a kind
    /// the stage does not take) and calls [`StageHandler::handle`] with the envelope in the
    /// context.
    fn handle_envelope(
        &self,
        ctx: JobContext,
        envelope: Envelope,
    ) -> impl Future<Output = Result<Outcome, StageError>> + Send
    where
        Self: Sized,
    {
        async move {
            let input = input::decode::<Self::Input>(self.stage(), &envelope.message)?;
            self.handle(ctx.with_envelope(envelope), input).await
        }
    }
}

/// Object-safe form of [`StageHandler`], so a worker can hold handlers of different types.
pub(crate) trait DynHandler: Send + Sync + 'static {
    fn stage(&self) -> Stage;
    fn handle_boxed(
        &self,
        ctx: JobContext,
        envelope: Envelope,
    ) -> BoxFuture<'_, Result<Outcome, StageError>>;
}

impl<H: StageHandler> DynHandler for H {
    fn stage(&self) -> Stage {
        StageHandler::stage(self)
    }

    fn handle_boxed(
        &self,
        ctx: JobContext,
        envelope: Envelope,
    ) -> BoxFuture<'_, Result<Outcome, StageError>> {
        self.handle_envelope(ctx, envelope).boxed()
    }
}

/// What a handler knows about the delivery it is handling.
#[derive(Clone, Debug)]
pub struct JobContext {
    /// The stage being run.
    pub stage: Stage,
    /// 0 on the first attempt, then 1, 2… on retries after transient failures.
    pub attempt: u32,
    /// True if the broker delivered this message before (a worker died holding it): effects of
    /// the earlier run may already exist and must be reused.
    pub redelivered: bool,
    pub(crate) shutdown: Shutdown,
    envelope: Option<Arc<Envelope>>,
    cancellation: Option<CancellationToken>,
    progress: Option<Arc<dyn ProgressSink>>,
}

impl fmt::Debug for dyn ProgressSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProgressSink")
    }
}

impl JobContext {
    /// A context for calling a handler directly, outside a worker (tests, one-shot runs).
    pub fn detached(stage: Stage) -> Self {
        Self {
            stage,
            attempt: 0,
            redelivered: false,
            shutdown: Shutdown::never(),
            envelope: None,
            cancellation: None,
            progress: None,
        }
    }

    /// A context for a delivery the worker took (used by the consume loop).
    pub(crate) fn for_delivery(
        stage: Stage,
        attempt: u32,
        redelivered: bool,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            stage,
            attempt,
            redelivered,
            shutdown,
            envelope: None,
            cancellation: None,
            progress: None,
        }
    }

    /// The same context, for a delivery of `envelope` (the runtime sets it; tests that call a
    /// handler directly may too).
    pub fn with_envelope(mut self, envelope: Envelope) -> Self {
        self.envelope = Some(Arc::new(envelope));
        self
    }

    /// The envelope the input came in (job id, ids, attempt, creation time, trace); `None` for a
    /// [`JobContext::detached`] context.
    pub fn envelope(&self) -> Option<&Envelope> {
        self.envelope.as_deref()
    }

    /// The same context, cancelled when `token` is.
    pub fn with_cancellation(mut self, token: CancellationToken) -> Self {
        self.cancellation = Some(token);
        self
    }

    /// The same context, reporting progress to `sink` too: a sink installed before (the
    /// runtime's, which publishes `job.progress` events) keeps receiving every report.
    pub fn with_progress(mut self, sink: Arc<dyn ProgressSink>) -> Self {
        self.progress = Some(match self.progress.take() {
            Some(earlier) => Arc::new(Both(earlier, sink)),
            None => sink,
        });
        self
    }

    /// True once a user cancelled the job. Long handlers check it at safe points (between
    /// volumes, packs, resource groups) and return [`StageError::cancelled`]; the runtime then
    /// acks the message without retrying it.
    pub fn is_cancelled(&self) -> bool {
        self.cancellation
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
    }

    /// `Err(StageError::cancelled)` naming `what` was stopped once the job is cancelled, so a
    /// safe point is one line: `ctx.check_cancelled("the transfer")?`.
    pub fn check_cancelled(&self, what: &str) -> Result<(), StageError> {
        if self.is_cancelled() {
            return Err(StageError::cancelled(format!(
                "the job was cancelled; {what} stopped at a safe point"
            )));
        }
        Ok(())
    }

    /// Report how far the job is (cumulative for this attempt). Cheap and non-blocking: the
    /// sink keeps the latest value and whoever installed it flushes it on its own schedule. A
    /// no-op when nobody listens.
    pub fn report_progress(&self, progress: JobProgress) {
        if let Some(sink) = &self.progress {
            sink.report(progress);
        }
    }

    /// True once the worker has been asked to stop. Long handlers may check it at safe points
    /// and return [`StageError::transient`] to hand the job back early; otherwise the runtime
    /// waits for them until the shutdown deadline.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_triggered()
    }

    /// Completes once the worker has been asked to stop (never, for a context with no worker):
    /// what a task watching a running job awaits, where [`JobContext::is_shutting_down`] is what
    /// a handler checks at a safe point.
    pub async fn shutting_down(&self) {
        self.shutdown.triggered().await;
    }

    /// The same context, shutting down when `shutdown` fires (the runtime sets the worker's;
    /// tests and one-shot runs that call a handler directly may pass their own).
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }
}

/// Where a handler's progress reports go. Implementations must not block: keep the latest
/// value and publish it elsewhere (the job-record decorator writes it at most every second or
/// so).
pub trait ProgressSink: Send + Sync + 'static {
    /// The job's progress so far in this attempt.
    fn report(&self, progress: JobProgress);
}

/// Two sinks that each receive every report.
struct Both(Arc<dyn ProgressSink>, Arc<dyn ProgressSink>);

impl ProgressSink for Both {
    fn report(&self, progress: JobProgress) {
        self.0.report(progress);
        self.1.report(progress);
    }
}

/// The result of a successful run: events (or follow-up jobs) to publish before the ack.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub(crate) emit: Vec<Message>,
}

impl Outcome {
    /// Nothing to publish.
    pub fn done() -> Self {
        Self::default()
    }

    /// Publish `message` (an event, or a job for another stage) once the work is done.
    pub fn emit(mut self, message: Message) -> Self {
        self.emit.push(message);
        self
    }

    /// The messages to publish.
    pub fn messages(&self) -> &[Message] {
        &self.emit
    }
}

/// Whether a failure is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input or a broken invariant: retrying gives the same answer. Dead-lettered at once.
    Permanent,
    /// A dependency was unavailable or busy: retried with backoff, then dead-lettered.
    Transient,
    /// The job was cancelled by a user; it is acknowledged and not retried.
    Cancelled,
}

/// A handler's failure, with its kind and cause chain.
pub struct StageError {
    kind: ErrorKind,
    error: Box<dyn StdError + Send + Sync + 'static>,
}

impl StageError {
    /// A failure that retrying cannot fix.
    pub fn permanent(error: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            error: error.into(),
        }
    }

    /// A failure that may go away if retried later.
    pub fn transient(error: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> Self {
        Self {
            kind: ErrorKind::Transient,
            error: error.into(),
        }
    }

    /// The job was cancelled.
    pub fn cancelled(reason: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> Self {
        Self {
            kind: ErrorKind::Cancelled,
            error: reason.into(),
        }
    }

    /// Its kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The error and each of its causes, outermost first.
    pub fn chain(&self) -> Vec<String> {
        let mut chain = vec![self.error.to_string()];
        let mut source = self.error.source();
        while let Some(err) = source {
            chain.push(err.to_string());
            source = err.source();
        }
        chain
    }
}

/// Any error that answers [`Retryable`] becomes a stage failure with `?`: transient when a
/// retry may help, permanent otherwise. `StageError` itself deliberately does not implement
/// `std::error::Error`, which is what keeps this blanket conversion coherent.
impl<E: Retryable> From<E> for StageError {
    fn from(error: E) -> Self {
        if error.is_transient() {
            Self::transient(error)
        } else {
            Self::permanent(error)
        }
    }
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)
    }
}

impl fmt::Debug for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageError")
            .field("kind", &self.kind)
            .field("chain", &self.chain())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("blob put failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_lists_every_cause() {
        let err = StageError::transient(Outer(std::io::Error::other("connection reset")));
        assert_eq!(err.kind(), ErrorKind::Transient);
        assert_eq!(err.chain(), vec!["blob put failed", "connection reset"]);
        assert_eq!(
            StageError::permanent("bad input").chain(),
            vec!["bad input"]
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("storage said {0}")]
    struct Flaky(bool);

    impl Retryable for Flaky {
        fn is_transient(&self) -> bool {
            self.0
        }
    }

    #[test]
    fn question_mark_classifies_a_retryable_error_by_its_own_policy() {
        fn fail(transient: bool) -> Result<(), StageError> {
            Err(Flaky(transient))?;
            Ok(())
        }
        let transient = fail(true).unwrap_err();
        assert_eq!(transient.kind(), ErrorKind::Transient);
        assert_eq!(transient.chain(), vec!["storage said true"]);
        assert_eq!(fail(false).unwrap_err().kind(), ErrorKind::Permanent);
    }
}
