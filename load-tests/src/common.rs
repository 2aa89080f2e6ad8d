//! Helpers shared by the broker benchmarks (`broker-throughput`, `scaling-bench`): a bare lapin
//! publish/consume loop to measure the broker's own rate, pipelined confirmed publishing, and
//! cleanup of a benchmark's uniquely prefixed topology.
//!
//! Included by each binary with `#[path = "common.rs"] mod common;`, so every item here must be
//! used by every binary that includes it.

use std::time::Instant;

use anyhow::Context as _;
use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use stowage_runtime::{Broker as _, Names, RabbitBroker, Topology};

/// Where RabbitMQ is (`--amqp-url`, or `STOWAGE_AMQP_URL`).
#[derive(Debug, Clone, clap::Args)]
pub struct AmqpArgs {
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "STOWAGE_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
}

/// Confirms a publisher keeps in flight, as a real producer would bound them.
pub const CONFIRM_WINDOW: usize = 1000;

/// A fresh connection and a publisher channel on it with publisher confirms on.
///
/// Open one per side of a round, before its clock starts: channels dropped in one round close
/// asynchronously, and lapin may hand a closing channel's id to the next round, which then
/// finds its publisher channel in error.
pub async fn connect(amqp_url: &str) -> anyhow::Result<(Connection, Channel)> {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .with_context(|| {
            format!(
                "RabbitMQ is not reachable at {}: start it with infra/scripts/start-rabbitmq.sh \
                 or pass --amqp-url",
                redact(amqp_url)
            )
        })?;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, publisher))
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The median (upper median for an even count); sorts `v`.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Properties of a persistent message.
pub fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// Names under a prefix no other user of the broker has: `<tag>-<8 hex digits>`.
pub fn unique_names(tag: &str) -> Names {
    Names::new(format!(
        "{tag}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ))
}

/// Publish `bodies` to `exchange`/`key` with confirms, at most [`CONFIRM_WINDOW`] in flight,
/// and wait for every confirm.
pub async fn publish_all(
    publisher: &Channel,
    exchange: &str,
    key: &str,
    bodies: impl Iterator<Item = (Vec<u8>, BasicProperties)>,
) -> anyhow::Result<()> {
    let mut pending = futures::stream::FuturesUnordered::new();
    for (body, props) in bodies {
        let confirm = publisher
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await?;
        pending.push(confirm);
        while pending.len() >= CONFIRM_WINDOW {
            let c = pending.next().await.expect("non-empty")?;
            anyhow::ensure!(
                c.is_ack(),
                "the broker nacked a publish to {exchange:?}/{key}"
            );
        }
    }
    while let Some(c) = pending.next().await {
        anyhow::ensure!(
            c?.is_ack(),
            "the broker nacked a publish to {exchange:?}/{key}"
        );
    }
    Ok(())
}

/// The bare broker rate in messages per second: `n` copies of `body` published persistent
/// with confirms into a fresh durable quorum queue while one lapin consumer with `prefetch`
/// takes them and acks each one, doing no work. The clock runs from the first publish until
/// the consumer has acked the last message; the queue is deleted afterwards.
pub async fn bare_round(
    connection: &Connection,
    publisher: &Channel,
    n: u64,
    prefetch: u16,
    body: &[u8],
    props: &BasicProperties,
) -> anyhow::Result<f64> {
    let queue = format!("bench.bare.{}", uuid::Uuid::new_v4().simple());
    let consumer_channel = connection.create_channel().await?;
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    consumer_channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            quorum,
        )
        .await?;
    consumer_channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let consume = tokio::spawn(async move {
        let mut seen = 0u64;
        while seen < n {
            let delivery = consumer.next().await.expect("consumer open")?;
            delivery.ack(BasicAckOptions::default()).await?;
            seen += 1;
        }
        Ok::<_, lapin::Error>(Instant::now())
    });
    publish_all(
        publisher,
        "",
        &queue,
        (0..n).map(|_| (body.to_vec(), props.clone())),
    )
    .await?;
    let finished = consume.await??;
    consumer_channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    Ok(n as f64 / (finished - started).as_secs_f64())
}

/// After a round's workers have stopped (so anything unacked is back in the queue): check that
/// `queue` is empty, i.e. every message was acked, then delete every queue and exchange of
/// `topology`.
pub async fn drain_and_delete(
    amqp_url: &str,
    connection: &Connection,
    topology: &Topology,
    queue: &str,
) -> anyhow::Result<()> {
    let broker = RabbitBroker::new(amqp_url.to_owned());
    let left = broker.queue_depth(queue).await?;
    anyhow::ensure!(
        left == 0,
        "{left} messages in {queue} were not acked: a worker stopped before settling them"
    );
    let channel = connection.create_channel().await?;
    for q in &topology.queues {
        channel
            .queue_delete(q.name.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    for e in &topology.exchanges {
        channel
            .exchange_delete(e.name.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    let _ = channel.close(200, "cleaned up".into()).await;
    Ok(())
}
