//! RabbitMQ through lapin.
//!
//! One connection per process, opened lazily and reopened after it is lost: every operation
//! first checks the connection and reconnects if it is gone, so a broker restart costs the
//! operations in flight at that moment and nothing else. Publishes go through one channel in
//! confirm mode; each consumer and each `basic.get` gets a channel of its own, because acks
//! belong to the channel that delivered, and closing that channel is what hands unsettled
//! deliveries back to the queue.

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::sync::Mutex;

use super::{
    Broker, BrokerError, Cancel, Delivery, HeaderValue, Headers, Outgoing, Properties, Settle,
    Subscription,
};
use crate::topology::{self, Topology};

/// The URL of a RabbitMQ broker, whose credentials are a secret: `Debug` and `Display` show
/// it without them, and only [`AmqpUrl::expose_secret`] hands out the whole URL (to connect).
#[derive(Clone)]
pub struct AmqpUrl {
    url: SecretString,
    redacted: String,
}

impl AmqpUrl {
    /// Wrap `url`.
    pub fn new(url: impl Into<String>) -> Self {
        let url: String = url.into();
        Self {
            redacted: redact(&url),
            url: url.into(),
        }
    }

    /// The URL without its credentials, for logs and messages.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The whole URL, password included: only to connect with.
    pub fn expose_secret(&self) -> &str {
        self.url.expose_secret()
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AmqpUrl").field(&self.redacted).finish()
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl From<String> for AmqpUrl {
    fn from(url: String) -> Self {
        Self::new(url)
    }
}

impl From<&str> for AmqpUrl {
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

impl FromStr for AmqpUrl {
    type Err = Infallible;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(url))
    }
}

/// A RabbitMQ broker at an `amqp://` or `amqps://` URL.
pub struct RabbitBroker {
    url: AmqpUrl,
    live: Mutex<Option<Arc<Live>>>,
    connected: Arc<AtomicBool>,
    timeout: Duration,
    connections: AtomicU64,
}

/// How long connecting, opening a channel or waiting for a publisher confirm may take before
/// it is an error naming which ([`BrokerError::TimedOut`]).
pub const DEFAULT_BROKER_TIMEOUT: Duration = Duration::from_secs(10);

struct Live {
    connection: Connection,
    publisher: Channel,
}

impl RabbitBroker {
    /// A broker at `url`. Nothing connects until the first operation.
    pub fn new(url: impl Into<AmqpUrl>) -> Self {
        Self {
            url: url.into(),
            live: Mutex::new(None),
            connected: Arc::new(AtomicBool::new(false)),
            timeout: DEFAULT_BROKER_TIMEOUT,
            connections: AtomicU64::new(0),
        }
    }

    /// How many connections this broker has opened so far (1 while the first one holds).
    pub fn connections_opened(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// The same broker with another limit on connecting, opening a channel and publisher
    /// confirms.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Run `step` within the broker timeout: a timeout is [`BrokerError::TimedOut`] naming
    /// `operation`, any other error goes through `map`.
    async fn within<T, E>(
        &self,
        operation: &'static str,
        step: impl std::future::Future<Output = Result<T, E>>,
        map: impl FnOnce(E) -> BrokerError,
    ) -> Result<T, BrokerError> {
        match tokio::time::timeout(self.timeout, step).await {
            Ok(result) => result.map_err(map),
            Err(_) => {
                self.connected.store(false, Ordering::SeqCst);
                Err(BrokerError::TimedOut {
                    operation,
                    endpoint: self.endpoint(),
                    after: self.timeout,
                })
            }
        }
    }

    fn unavailable(&self, err: impl std::fmt::Display) -> BrokerError {
        self.connected.store(false, Ordering::SeqCst);
        BrokerError::Unavailable {
            endpoint: self.endpoint(),
            reason: err.to_string(),
        }
    }

    /// The current connection, reconnecting first if it was lost.
    async fn live(&self) -> Result<Arc<Live>, BrokerError> {
        let mut live = self.live.lock().await;
        if let Some(l) = live
            .as_ref()
            .filter(|l| l.connection.status().connected() && l.publisher.status().connected())
        {
            return Ok(l.clone());
        }
        if let Some(old) = live.take() {
            // Best effort: the connection is already broken or about to be replaced.
            let _ = old.connection.close(200, "reconnecting".into()).await;
        }
        let props = ConnectionProperties::default().with_connection_name("stowage".into());
        let connection = self
            .within(
                "connecting to",
                Connection::connect(self.url.expose_secret(), props),
                |e| self.unavailable(e),
            )
            .await?;
        let publisher = self
            .within("opening a channel on", connection.create_channel(), |e| {
                self.unavailable(e)
            })
            .await?;
        self.within(
            "opening a channel on",
            publisher.confirm_select(ConfirmSelectOptions::default()),
            |e| self.unavailable(e),
        )
        .await?;
        self.connections.fetch_add(1, Ordering::SeqCst);
        tracing::info!(endpoint = %self.url, "connected to RabbitMQ");
        let fresh = Arc::new(Live {
            connection,
            publisher,
        });
        *live = Some(fresh.clone());
        self.connected.store(true, Ordering::SeqCst);
        Ok(fresh)
    }

    /// Map a lapin error: a protocol refusal is reported as such, anything else means the
    /// connection is unusable.
    fn classify(&self, operation: &'static str, err: lapin::Error) -> BrokerError {
        let text = err.to_string();
        if text.contains("NOT_FOUND") {
            BrokerError::NotFound {
                what: "queue or exchange",
                name: text,
            }
        } else if text.contains("PRECONDITION_FAILED") || text.contains("ACCESS_REFUSED") {
            BrokerError::Protocol {
                operation,
                reason: text,
            }
        } else {
            self.unavailable(err)
        }
    }

    /// A passive `queue.declare`: the queue's message and consumer counts, or
    /// [`BrokerError::NotFound`] naming it.
    async fn passive_declare(&self, queue: &str) -> Result<lapin::Queue, BrokerError> {
        // A passive declare of a missing queue closes its channel: use a throwaway one.
        let channel = self.channel().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let q = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .map_err(|e| match self.classify("queue.declare", e) {
                BrokerError::NotFound { .. } => BrokerError::no_queue(queue),
                other => other,
            })?;
        let _ = channel.close(200, "done".into()).await;
        Ok(q)
    }

    async fn channel(&self) -> Result<Channel, BrokerError> {
        let live = self.live().await?;
        self.within(
            "opening a channel on",
            live.connection.create_channel(),
            |e| self.unavailable(e),
        )
        .await
    }
}

impl Broker for RabbitBroker {
    fn declare<'a>(&'a self, topology: &'a Topology) -> BoxFuture<'a, Result<(), BrokerError>> {
        async move {
            let channel = self.channel().await?;
            let durable = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            for exchange in &topology.exchanges {
                let kind = match exchange.kind {
                    topology::ExchangeKind::Direct => ExchangeKind::Direct,
                    topology::ExchangeKind::Topic => ExchangeKind::Topic,
                };
                channel
                    .exchange_declare(
                        exchange.name.as_str().into(),
                        kind,
                        durable,
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| self.classify("exchange.declare", e))?;
            }
            for queue in &topology.queues {
                let mut args = FieldTable::default();
                for (key, value) in Topology::queue_arguments(queue) {
                    let value = match value {
                        serde_json::Value::String(s) => AMQPValue::LongString(s.into()),
                        serde_json::Value::Number(n) => {
                            AMQPValue::LongLongInt(n.as_i64().unwrap_or(i64::MAX))
                        }
                        other => AMQPValue::LongString(other.to_string().into()),
                    };
                    args.insert(key.into(), value);
                }
                let options = QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                };
                channel
                    .queue_declare(queue.name.as_str().into(), options, args)
                    .await
                    .map_err(|e| self.classify("queue.declare", e))?;
            }
            for b in &topology.bindings {
                channel
                    .queue_bind(
                        b.queue.as_str().into(),
                        b.exchange.as_str().into(),
                        b.routing_key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| self.classify("queue.bind", e))?;
            }
            let _ = channel.close(200, "declared".into()).await;
            Ok(())
        }
        .boxed()
    }

    fn publish(&self, message: Outgoing) -> BoxFuture<'_, Result<(), BrokerError>> {
        async move {
            let live = self.live().await?;
            let options = BasicPublishOptions {
                mandatory: message.mandatory,
                ..BasicPublishOptions::default()
            };
            let publishing = live.publisher.basic_publish(
                message.exchange.as_str().into(),
                message.routing_key.as_str().into(),
                options,
                &message.body,
                to_amqp_properties(&message.properties),
            );
            let confirm = self
                .within("publishing to", publishing, |e| {
                    self.classify("basic.publish", e)
                })
                .await?;
            let confirmation = self
                .within("waiting for the publisher confirm from", confirm, |e| {
                    self.classify("basic.publish", e)
                })
                .await;
            if matches!(confirmation, Err(BrokerError::TimedOut { .. })) {
                // The publisher channel's state is unknown now: start over on the next call,
                // closing the old connection in the background (it may not answer either).
                if let Some(old) = self.live.lock().await.take() {
                    let timeout = self.timeout;
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            timeout,
                            old.connection.close(200, "confirm timed out".into()),
                        )
                        .await;
                    });
                }
            }
            let confirmation = confirmation?;
            let id = message.properties.message_id.clone().unwrap_or_default();
            match confirmation {
                Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
                Confirmation::Ack(Some(_returned)) => Err(BrokerError::Unroutable {
                    message_id: id,
                    exchange: message.exchange,
                    routing_key: message.routing_key,
                }),
                Confirmation::Nack(_) => Err(BrokerError::Nacked {
                    message_id: id,
                    exchange: message.exchange,
                    routing_key: message.routing_key,
                }),
            }
        }
        .boxed()
    }

    fn consume<'a>(
        &'a self,
        queue: &'a str,
        prefetch: u16,
    ) -> BoxFuture<'a, Result<Subscription, BrokerError>> {
        async move {
            let channel = self.channel().await?;
            channel
                .basic_qos(prefetch.max(1), BasicQosOptions::default())
                .await
                .map_err(|e| self.classify("basic.qos", e))?;
            let consumer = channel
                .basic_consume(
                    queue.into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| self.classify("basic.consume", e))?;
            let tag = consumer.tag();
            let endpoint = self.endpoint();
            let connected = self.connected.clone();
            let delivery_channel = channel.clone();
            let deliveries = consumer
                .map(move |item| match item {
                    Ok(d) => Ok(from_lapin(d, delivery_channel.clone(), false)),
                    Err(err) => {
                        connected.store(false, Ordering::SeqCst);
                        Err(BrokerError::Unavailable {
                            endpoint: endpoint.clone(),
                            reason: err.to_string(),
                        })
                    }
                })
                .boxed();
            Ok(Subscription {
                deliveries,
                canceller: Box::new(RabbitCancel {
                    channel,
                    tag,
                    cancelled: false,
                }),
            })
        }
        .boxed()
    }

    fn get<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<Option<Delivery>, BrokerError>> {
        async move {
            let channel = self.channel().await?;
            let got = channel
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .map_err(|e| self.classify("basic.get", e))?;
            Ok(got.map(|m| from_lapin(m.delivery, channel, true)))
        }
        .boxed()
    }

    fn queue_depth<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<u32, BrokerError>> {
        async move { self.passive_declare(queue).await.map(|q| q.message_count()) }.boxed()
    }

    fn queue_consumers<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<u32, BrokerError>> {
        async move {
            self.passive_declare(queue)
                .await
                .map(|q| q.consumer_count())
        }
        .boxed()
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    fn endpoint(&self) -> String {
        self.url.redacted().to_owned()
    }
}

struct RabbitCancel {
    channel: Channel,
    tag: ShortString,
    cancelled: bool,
}

impl Cancel for RabbitCancel {
    fn cancel(&mut self) -> BoxFuture<'_, ()> {
        async move {
            if !self.cancelled {
                self.cancelled = true;
                if let Err(err) = self
                    .channel
                    .basic_cancel(self.tag.clone(), BasicCancelOptions::default())
                    .await
                {
                    tracing::debug!(%err, "basic.cancel failed; the channel is already gone");
                }
            }
        }
        .boxed()
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        async move {
            // Unsettled deliveries on this channel go back to the queue.
            let _ = self.channel.close(200, "consumer closed".into()).await;
        }
        .boxed()
    }
}

/// Settles a lapin delivery. Holds its channel so the channel lives until every delivery on it
/// is settled or dropped; when the last one goes, the channel closes and the broker requeues
/// whatever was not settled.
struct RabbitSettle {
    acker: lapin::Acker,
    channel: Channel,
    /// The channel is this delivery's alone (`basic.get`): settling also closes it and waits for
    /// the broker's close-ok. AMQP acks and rejects have no reply, and the broker handles a
    /// channel's frames in order, so that is how a caller knows the settlement took effect
    /// (e.g. that a browsed dead letter is back in its queue before anyone counts it).
    owns_channel: bool,
}

impl RabbitSettle {
    /// Report how an ack or reject (`operation`) went, after closing the channel if it is this
    /// delivery's own.
    async fn finish(
        &self,
        operation: &str,
        result: Result<(), lapin::Error>,
    ) -> Result<(), BrokerError> {
        if self.owns_channel {
            let _ = self.channel.close(200, "settled".into()).await;
        }
        result.map_err(|e| BrokerError::Unavailable {
            endpoint: "rabbitmq".into(),
            reason: format!("{operation} failed ({e}); the broker will redeliver the message"),
        })
    }
}

impl Settle for RabbitSettle {
    fn ack(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        async move {
            let result = self.acker.ack(BasicAckOptions::default()).await.map(drop);
            self.finish("ack", result).await
        }
        .boxed()
    }

    fn reject(&self, requeue: bool) -> BoxFuture<'_, Result<(), BrokerError>> {
        async move {
            let result = self
                .acker
                .reject(BasicRejectOptions { requeue })
                .await
                .map(drop);
            self.finish("reject", result).await
        }
        .boxed()
    }
}

fn from_lapin(d: lapin::message::Delivery, channel: Channel, owns_channel: bool) -> Delivery {
    let p = &d.properties;
    let properties = Properties {
        content_type: p.content_type().as_ref().map(|s| s.as_str().to_owned()),
        message_id: p.message_id().as_ref().map(|s| s.as_str().to_owned()),
        kind: p.kind().as_ref().map(|s| s.as_str().to_owned()),
        headers: p
            .headers()
            .as_ref()
            .map(from_field_table)
            .unwrap_or_default(),
        expiration: p
            .expiration()
            .as_ref()
            .and_then(|s| s.as_str().parse::<u64>().ok())
            .map(std::time::Duration::from_millis),
        timestamp: *p.timestamp(),
    };
    Delivery {
        exchange: d.exchange.as_str().to_owned(),
        routing_key: d.routing_key.as_str().to_owned(),
        redelivered: d.redelivered,
        properties,
        body: d.data,
        settle: Box::new(RabbitSettle {
            acker: d.acker,
            channel,
            owns_channel,
        }),
    }
}

fn to_amqp_properties(p: &Properties) -> BasicProperties {
    let mut props = BasicProperties::default().with_delivery_mode(2);
    if let Some(ct) = &p.content_type {
        props = props.with_content_type(ct.as_str().into());
    }
    if let Some(id) = &p.message_id {
        props = props.with_message_id(id.as_str().into());
    }
    if let Some(kind) = &p.kind {
        props = props.with_type(kind.as_str().into());
    }
    if let Some(at) = p.timestamp {
        props = props.with_timestamp(at);
    }
    if let Some(exp) = p.expiration {
        props = props.with_expiration(exp.as_millis().to_string().into());
    }
    if !p.headers.is_empty() {
        props = props.with_headers(to_field_table(&p.headers));
    }
    props
}

fn to_field_table(headers: &Headers) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(k.as_str().into(), to_amqp_value(v));
    }
    table
}

fn to_amqp_value(v: &HeaderValue) -> AMQPValue {
    match v {
        HeaderValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        HeaderValue::Int(i) => AMQPValue::LongLongInt(*i),
        HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
        HeaderValue::List(l) => AMQPValue::FieldArray(FieldArray::from(
            l.iter().map(to_amqp_value).collect::<Vec<_>>(),
        )),
        HeaderValue::Table(t) => AMQPValue::FieldTable(to_field_table(t)),
    }
}

fn from_field_table(table: &FieldTable) -> Headers {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), from_amqp_value(v)))
        .collect()
}

fn from_amqp_value(v: &AMQPValue) -> HeaderValue {
    match v {
        AMQPValue::LongString(s) => {
            HeaderValue::Str(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(s) => HeaderValue::Str(s.as_str().to_owned()),
        AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
        AMQPValue::ShortShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
        AMQPValue::Timestamp(t) => HeaderValue::Int(i64::try_from(*t).unwrap_or(i64::MAX)),
        AMQPValue::FieldArray(a) => {
            HeaderValue::List(a.as_slice().iter().map(from_amqp_value).collect())
        }
        AMQPValue::FieldTable(t) => HeaderValue::Table(from_field_table(t)),
        other => HeaderValue::Str(format!("{other:?}")),
    }
}

/// The URL without its credentials, for logs and error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_not_shown() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
    }

    #[test]
    fn an_amqp_url_never_prints_its_password() {
        let url = AmqpUrl::from("amqp://guest:secret@127.0.0.1:5672/%2f");
        for shown in [format!("{url}"), format!("{url:?}"), format!("{url:#?}")] {
            assert!(!shown.contains("secret"), "{shown}");
            assert!(shown.contains("127.0.0.1:5672"), "{shown}");
        }
        assert_eq!(
            url.expose_secret(),
            "amqp://guest:secret@127.0.0.1:5672/%2f"
        );
        let broker = RabbitBroker::new(url);
        assert_eq!(broker.endpoint(), "amqp://127.0.0.1:5672/%2f");
    }

    #[test]
    fn headers_survive_the_amqp_round_trip() {
        let mut h = Headers::new();
        h.insert("reason".into(), "boom".into());
        h.insert("count".into(), HeaderValue::Int(3));
        h.insert(
            "chain".into(),
            HeaderValue::List(vec!["a".into(), "b".into()]),
        );
        assert_eq!(from_field_table(&to_field_table(&h)), h);
    }
}
