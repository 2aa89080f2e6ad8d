//! The Stowage worker runtime: turns a stage handler into a well-behaved queue worker.
//!
//! # Layout
//!
//! - [`broker`]: the broker port, with RabbitMQ ([`broker::rabbit`]) and in-process
//!   ([`broker::in_process`]) implementations that share AMQP semantics.
//! - [`topology`]: every exchange, queue and binding, named from one prefix; also exported as a
//!   RabbitMQ definitions file.
//! - [`handler`]: the [`StageHandler`] trait a stage implements, its [`Outcome`] and the
//!   [`StageError`] that says whether a retry can help.
//! - [`worker`]: the consume loop — prefetch, concurrency, ack after durable effects and
//!   confirmed publishes, retries through delay queues, dead-letters, reconnects, draining.
//! - [`metrics`]: the Prometheus registry (`prometheus-client`) served at `/metrics`.
//! - `progress`: a handler's progress reports, published as throttled `job.progress` events.
//! - [`telemetry`]: logs (JSON in a pod, text in a terminal) and OTLP traces linked across stages.
//! - [`retry`]: the delay-queue schedule for failed jobs. [`shutdown`]: SIGTERM/Ctrl-C.
//!   [`health`]: `/livez`, `/readyz`.
//! - [`envelope`]: envelopes to broker messages and back. [`client`]: submit jobs, inspect and
//!   replay dead letters. [`limits`]: sizes of bodies, headers and log fields.

pub mod broker;
pub mod client;
pub mod envelope;
pub mod handler;
pub mod health;
pub mod input;
pub mod limits;
pub mod metrics;
mod progress;
pub mod retry;
pub mod shutdown;
pub mod telemetry;
pub mod topology;
pub mod worker;

pub use broker::in_process::InProcessBroker;
pub use broker::rabbit::{AmqpUrl, RabbitBroker};
pub use broker::{Broker, BrokerError};
pub use handler::{
    CancellationToken, ErrorKind, JobContext, Outcome, ProgressSink, StageError, StageHandler,
};
pub use health::Health;
pub use input::{JobOrEvent, StageInput};
pub use retry::RetryPolicy;
pub use shutdown::Shutdown;
pub use topology::{Names, Topology};
pub use worker::{StageConfig, Worker, WorkerConfig, WorkerError};
