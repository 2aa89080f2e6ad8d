//! The broker port: what the runtime needs from a message broker, and nothing more.
//!
//! Two implementations share these semantics: [`rabbit::RabbitBroker`] (RabbitMQ through
//! lapin, for production and the integration tests) and [`in_process::InProcessBroker`]
//! (the embedded default and unit tests). The vocabulary is AMQP 0-9-1's on purpose —
//! exchanges, queues, bindings, dead-letter exchanges, per-message expiry, delivery limits —
//! so that the in-process broker is a faithful stand-in rather than a different design.
//!
//! Every publish is confirmed: [`Broker::publish`] returns only once the broker has taken
//! responsibility for the message, and a broker-side nack is an error. A [`Delivery`] is
//! settled exactly once, by [`Delivery::ack`] or [`Delivery::reject`]; a delivery that is
//! dropped unsettled (a crashed handler, a lost connection) goes back to its queue.

pub mod in_process;
pub mod rabbit;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::topology::Topology;

/// A value in a message's header table (a subset of AMQP field values, enough for Stowage).
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderValue {
    /// A UTF-8 string.
    Str(String),
    /// A signed integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A list of values, e.g. an error chain.
    List(Vec<HeaderValue>),
    /// A nested table, e.g. one `x-death` entry.
    Table(Headers),
}

impl HeaderValue {
    /// The string inside, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer inside, if this is an integer.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            HeaderValue::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl From<&str> for HeaderValue {
    fn from(s: &str) -> Self {
        HeaderValue::Str(s.to_owned())
    }
}

impl From<String> for HeaderValue {
    fn from(s: String) -> Self {
        HeaderValue::Str(s)
    }
}

impl From<i64> for HeaderValue {
    fn from(i: i64) -> Self {
        HeaderValue::Int(i)
    }
}

/// A message's header table.
pub type Headers = BTreeMap<String, HeaderValue>;

/// The properties that travel with a message body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// MIME type of the body (`application/msgpack` or `application/json`).
    pub content_type: Option<String>,
    /// Unique id of the message (the envelope's message id).
    pub message_id: Option<String>,
    /// The message kind, e.g. `job.snapshot` (AMQP's `type` property).
    pub kind: Option<String>,
    /// Application headers: trace context, job id, dead-letter reasons.
    pub headers: Headers,
    /// Per-message time-to-live in the queue; used by the retry delay queues.
    pub expiration: Option<Duration>,
    /// AMQP's `timestamp` property: when the producer sent it, in Unix seconds. Stowage sets
    /// it, and reads it for queue wait when its own header is absent (any AMQP producer).
    pub timestamp: Option<u64>,
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Exchange to publish to; `""` is the default exchange (routing key = queue name).
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// If true, a message that matches no queue is an error ([`BrokerError::Unroutable`])
    /// rather than silently dropped: jobs must reach a stage, events may have no listener.
    pub mandatory: bool,
    /// Message properties.
    pub properties: Properties,
    /// The encoded body.
    pub body: Vec<u8>,
}

/// How a delivery is settled with the broker that made it.
pub trait Settle: Send + Sync {
    /// Acknowledge: the message is done and leaves the queue.
    fn ack(&self) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Reject: requeue it, or drop it (dead-lettering it if its queue says so).
    fn reject(&self, requeue: bool) -> BoxFuture<'_, Result<(), BrokerError>>;
}

/// A message handed to a consumer. It must be settled once; dropped unsettled, it is requeued.
pub struct Delivery {
    /// The exchange it was published to.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// True if the broker delivered it before (a consumer died holding it, or it was requeued).
    pub redelivered: bool,
    /// Message properties.
    pub properties: Properties,
    /// The encoded body.
    pub body: Vec<u8>,
    /// How to settle it.
    pub settle: Box<dyn Settle>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("redelivered", &self.redelivered)
            .field("properties", &self.properties)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Delivery {
    /// Acknowledge the message.
    pub async fn ack(&self) -> Result<(), BrokerError> {
        self.settle.ack().await
    }

    /// Reject the message, requeueing it or not.
    pub async fn reject(&self, requeue: bool) -> Result<(), BrokerError> {
        self.settle.reject(requeue).await
    }

    /// The header as a string, if present.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.properties
            .headers
            .get(name)
            .and_then(HeaderValue::as_str)
    }
}

/// A live consumer on one queue.
pub struct Subscription {
    /// Deliveries, in order. The stream ends after [`Subscription::cancel`], and yields an error
    /// when the connection to the broker is lost.
    pub deliveries: BoxStream<'static, Result<Delivery, BrokerError>>,
    /// Stops the broker from sending more deliveries; those already handed out stay valid.
    pub canceller: Box<dyn Cancel>,
}

/// Stops a subscription, then releases it.
pub trait Cancel: Send {
    /// Stop new deliveries (AMQP `basic.cancel`).
    fn cancel(&mut self) -> BoxFuture<'_, ()>;
    /// Release the subscription: deliveries handed out and not settled go back to the queue.
    fn close(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// What went wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached, or the connection was lost. Retrying later can help.
    #[error(
        "the message broker at {endpoint} is unreachable: {reason}; check that it is running and the URL is right, Stowage keeps retrying"
    )]
    Unavailable {
        /// Where the broker was expected (credentials removed).
        endpoint: String,
        /// Why the connection failed.
        reason: String,
    },
    /// The broker did not answer in time: connecting, opening a channel or confirming a
    /// publish. Retrying later can help.
    #[error(
        "{operation} {endpoint} timed out after {after:?}; check that the broker is running and reachable"
    )]
    TimedOut {
        /// What was waited for, e.g. `connecting to`.
        operation: &'static str,
        /// Where the broker was expected (credentials removed).
        endpoint: String,
        /// How long it waited.
        after: Duration,
    },
    /// The broker refused a publish (publisher nack), e.g. a queue at its length limit.
    #[error(
        "the broker refused message {message_id} for exchange {exchange:?} with key {routing_key:?} (publisher nack); the broker may be out of resources, retry later"
    )]
    Nacked {
        /// The refused message's id.
        message_id: String,
        /// Exchange it was sent to.
        exchange: String,
        /// Routing key it was sent with.
        routing_key: String,
    },
    /// A message could not be routed to any queue.
    #[error(
        "message {message_id} for exchange {exchange:?} with key {routing_key:?} matched no queue; declare the topology first (`stowage worker` does it at start)"
    )]
    Unroutable {
        /// The unroutable message's id.
        message_id: String,
        /// Exchange it was sent to.
        exchange: String,
        /// Routing key it was sent with.
        routing_key: String,
    },
    /// A cluster-side job (snapshot, restore) that names no cluster: it would reach no queue.
    #[error(
        "{kind} {job_id} names no cluster: snapshot and restore jobs go to the queue of the cluster they act on; set the envelope's cluster to the instance's cluster (a restore's options.target_cluster)"
    )]
    NoCluster {
        /// The message type.
        kind: &'static str,
        /// The job.
        job_id: String,
    },
    /// A queue or exchange the operation names does not exist.
    #[error(
        "{what} {name:?} does not exist; declare the topology first (`stowage worker` does it at start)"
    )]
    NotFound {
        /// "queue" or "exchange".
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// The broker answered with a protocol-level error.
    #[error("the broker refused {operation}: {reason}")]
    Protocol {
        /// The AMQP operation.
        operation: &'static str,
        /// The broker's reason.
        reason: String,
    },
}

impl BrokerError {
    /// Queue `name` does not exist.
    pub(crate) fn no_queue(name: &str) -> Self {
        BrokerError::NotFound {
            what: "queue",
            name: name.to_owned(),
        }
    }

    /// Whether retrying the same operation later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BrokerError::Unavailable { .. }
                | BrokerError::TimedOut { .. }
                | BrokerError::Nacked { .. }
        )
    }
}

/// A message broker with AMQP 0-9-1 semantics.
///
/// Object-safe (futures are boxed) so a worker can choose RabbitMQ or the in-process broker
/// at run time. Implementations reconnect on their own: after [`BrokerError::Unavailable`],
/// the next call tries again.
pub trait Broker: Send + Sync + 'static {
    /// Declare exchanges, queues and bindings. Idempotent: declaring twice changes nothing.
    fn declare<'a>(&'a self, topology: &'a Topology) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Publish one persistent message and wait for the broker's confirm.
    fn publish(&self, message: Outgoing) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Start consuming `queue`, with at most `prefetch` unsettled deliveries at once.
    fn consume<'a>(
        &'a self,
        queue: &'a str,
        prefetch: u16,
    ) -> BoxFuture<'a, Result<Subscription, BrokerError>>;

    /// Take one message from `queue` if there is one (AMQP `basic.get`), unsettled.
    fn get<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<Option<Delivery>, BrokerError>>;

    /// The number of messages ready in `queue`.
    fn queue_depth<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<u32, BrokerError>>;

    /// The number of consumers of `queue`: 0 means no worker takes its messages now.
    fn queue_consumers<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<u32, BrokerError>>;

    /// Whether the broker is reachable right now, as far as this client knows.
    fn is_connected(&self) -> bool;

    /// Where the broker is, for messages (no credentials).
    fn endpoint(&self) -> String;
}
