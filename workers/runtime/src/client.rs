//! What operators and producers do with the fleet from outside a worker: submit jobs, and
//! inspect and replay dead letters.

use stowage_schemas::{ContentType, Envelope, Stage, encode_as};

use crate::broker::{Broker, BrokerError, Delivery, HeaderValue, Outgoing};
use crate::envelope;
use crate::retry::RetryPolicy;
use crate::topology::{Names, Topology};
use crate::worker::{
    DEAD_LETTER_AT, DEAD_LETTER_ATTEMPTS, DEAD_LETTER_CHAIN, DEAD_LETTER_REASON, DEAD_LETTER_STAGE,
};

/// Publish a job (or event) and wait for the broker's confirm.
///
/// A job for a cluster-side stage goes to the queue of the cluster its envelope names, which is
/// declared first if it does not exist yet ([`ensure_cluster_queues`]): a job for a cluster no
/// worker serves waits there, never taken by another cluster's workers. One that names no
/// cluster is refused ([`BrokerError::NoCluster`]).
///
/// An envelope without trace context gets the current span's, so the jobs it starts join the
/// submitter's trace (the scheduler's tick, a CLI command) when traces are exported.
pub async fn submit(
    broker: &dyn Broker,
    names: &Names,
    envelope: &Envelope,
) -> Result<(), BrokerError> {
    if envelope.trace.is_none()
        && let Some(trace) = crate::telemetry::current_trace_context()
    {
        let mut traced = envelope.clone();
        traced.trace = Some(trace);
        return broker.publish(routed(broker, names, &traced).await?).await;
    }
    broker.publish(routed(broker, names, envelope).await?).await
}

/// `envelope` as the message to publish, its cluster's queues declared first when it names a
/// cluster ([`ensure_cluster_queues`]).
async fn routed(
    broker: &dyn Broker,
    names: &Names,
    envelope: &Envelope,
) -> Result<Outgoing, BrokerError> {
    if let Some(cluster) = envelope::cluster_of(envelope)? {
        ensure_cluster_queues(broker, names, &RetryPolicy::default(), cluster).await?;
    }
    Ok(envelope::outgoing(names, envelope))
}

/// The header a message resubmitted after a crash carries (`stowage serve` recovering its
/// jobs from their records when its in-process queues died with it): the consuming worker
/// treats it as a broker redelivery, so a handling still marked under way in the job record
/// counts as a death (see `stowage_control::job_records`), exactly as under RabbitMQ.
pub const RECOVERED_HEADER: &str = "x-stowage-recovered";

/// [`submit`], marked as a redelivery of a message whose queue was lost ([`RECOVERED_HEADER`]).
pub async fn resubmit(
    broker: &dyn Broker,
    names: &Names,
    envelope: &Envelope,
) -> Result<(), BrokerError> {
    let mut outgoing = routed(broker, names, envelope).await?;
    outgoing
        .properties
        .headers
        .insert(RECOVERED_HEADER.to_owned(), HeaderValue::Bool(true));
    broker.publish(outgoing).await
}

/// Make sure the cluster-side stages' queues of `cluster` exist, declaring them (with `retry`'s
/// delivery limit) when one is missing. A queue that exists is left as it is, whoever declared
/// it and with whatever arguments, so a producer never fights a worker over them.
pub async fn ensure_cluster_queues(
    broker: &dyn Broker,
    names: &Names,
    retry: &RetryPolicy,
    cluster: &str,
) -> Result<(), BrokerError> {
    stowage_schemas::id::validate(cluster).map_err(|e| BrokerError::Protocol {
        operation: "declaring a cluster's queues",
        reason: format!("cluster name: {e}"),
    })?;
    let topology = Topology::for_cluster(names.clone(), retry, cluster);
    for queue in topology.queues.iter().filter(|q| q.dead_letter.is_some()) {
        match broker.queue_depth(&queue.name).await {
            Ok(_) => {}
            Err(BrokerError::NotFound { .. }) => return broker.declare(&topology).await,
            Err(other) => return Err(other),
        }
    }
    Ok(())
}

/// One cluster-side queue and who serves it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClusterQueue {
    /// The stage.
    pub stage: Stage,
    /// The queue's name.
    pub queue: String,
    /// Jobs waiting in it (0 when it does not exist yet).
    pub waiting: u32,
    /// Workers consuming it: 0 means its jobs wait until a worker of that cluster starts.
    pub consumers: u32,
}

/// The cluster-side queues of `cluster`, with their depth and consumer count; a queue that
/// does not exist yet is reported empty and unserved.
pub async fn cluster_queues(
    broker: &dyn Broker,
    names: &Names,
    cluster: &str,
) -> Result<Vec<ClusterQueue>, BrokerError> {
    let mut out = Vec::new();
    for stage in Stage::ALL.into_iter().filter(|s| s.is_cluster_side()) {
        let queue = names.cluster_queue(stage, cluster);
        let (waiting, consumers) = match broker.queue_depth(&queue).await {
            Ok(waiting) => (waiting, broker.queue_consumers(&queue).await?),
            Err(BrokerError::NotFound { .. }) => (0, 0),
            Err(other) => return Err(other),
        };
        out.push(ClusterQueue {
            stage,
            queue,
            waiting,
            consumers,
        });
    }
    Ok(out)
}

/// One dead-lettered message, as an operator sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetter {
    /// The message id: the AMQP `message_id` property, else the body's `message_id`.
    pub message_id: Option<String>,
    /// Its kind (`job.snapshot`…): the AMQP `type` property, else the body's `message.type`.
    pub kind: Option<String>,
    /// The job id the body names, even when the rest of it does not decode.
    pub job_id: Option<String>,
    /// The cluster whose queue it came from (cluster-side stages), as the body names it.
    pub cluster: Option<String>,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The error chain, outermost first.
    pub error_chain: Vec<String>,
    /// Attempts made before giving up.
    pub attempts: Option<i64>,
    /// When it was dead-lettered.
    pub dead_lettered_at: Option<String>,
    /// The decoded envelope, as JSON, when the body is a valid envelope.
    pub envelope: Option<serde_json::Value>,
    /// Body size in bytes.
    pub body_bytes: usize,
}

impl DeadLetter {
    fn from_delivery(d: &Delivery) -> Self {
        let envelope = envelope::decode_delivery(d).ok();
        // A producer other than Stowage may not set the AMQP message_id and type properties,
        // and a body that does not decode still names itself: fall back to the body's ids.
        let ids = envelope::probe_delivery(d);
        // Messages the broker dead-lettered itself (delivery limit) carry x-death, not ours.
        let reason = d
            .header_str(DEAD_LETTER_REASON)
            .map(str::to_owned)
            .or_else(|| {
                d.header_str("x-first-death-reason")
                    .map(|r| format!("the broker dead-lettered it ({r}): it was delivered too many times without being settled, e.g. it crashed every worker that took it"))
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let error_chain = match d.properties.headers.get(DEAD_LETTER_CHAIN) {
            Some(HeaderValue::List(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        Self {
            message_id: ids.message_id,
            kind: ids.kind,
            job_id: envelope.as_ref().map(|e| e.job_id.clone()).or(ids.job_id),
            cluster: envelope.as_ref().map_or(ids.cluster, |e| e.cluster.clone()),
            reason,
            error_chain,
            attempts: d
                .properties
                .headers
                .get(DEAD_LETTER_ATTEMPTS)
                .and_then(HeaderValue::as_int),
            dead_lettered_at: d.header_str(DEAD_LETTER_AT).map(str::to_owned),
            envelope: envelope.and_then(|e| serde_json::to_value(&e).ok()),
            body_bytes: d.body.len(),
        }
    }
}

/// Up to `limit` dead letters of `stage`, oldest first, left in place.
pub async fn list_dead_letters(
    broker: &dyn Broker,
    names: &Names,
    stage: Stage,
    limit: usize,
) -> Result<Vec<DeadLetter>, BrokerError> {
    let queue = names.dead_letter_queue(stage);
    let held = browse(broker, &queue, limit).await?;
    let letters: Vec<DeadLetter> = held.iter().map(DeadLetter::from_delivery).collect();
    release(held).await;
    settle_requeues(broker, &queue, letters.len()).await;
    Ok(letters)
}

/// Wait (briefly) until `queue` counts at least `returned` messages again. The broker applies
/// requeues asynchronously — a quorum queue commits them through Raft — so without this a
/// listing followed at once by a replay or a depth read could miss the messages it just
/// browsed. Other consumers may take them meanwhile, so this gives up after a few seconds.
async fn settle_requeues(broker: &dyn Broker, queue: &str, returned: usize) {
    if returned == 0 {
        return;
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        match broker.queue_depth(queue).await {
            Ok(depth) if depth as usize >= returned => return,
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Err(_) => return,
        }
    }
}

/// Replay dead letters of `stage` back to its queue (all of them, or the one whose message id
/// is `only`: its AMQP property, else the body's `message_id`), with the attempt counter reset. Returns how many were replayed. A cluster-side
/// stage's letter goes back to the queue of the cluster its envelope names (declared if
/// missing); one that names none, or cannot be decoded, stays in the dead-letter queue.
pub async fn replay_dead_letters(
    broker: &dyn Broker,
    names: &Names,
    stage: Stage,
    only: Option<&str>,
) -> Result<usize, BrokerError> {
    let dlq = names.dead_letter_queue(stage);
    let mut kept = Vec::new();
    let mut replayed = 0;
    let total = broker.queue_depth(&dlq).await? as usize;
    for _ in 0..total {
        let Some(d) = broker.get(&dlq).await? else {
            break;
        };
        if only.is_some_and(|id| envelope::probe_delivery(&d).message_id.as_deref() != Some(id)) {
            kept.push(d);
            continue;
        }
        let decoded = envelope::decode_delivery(&d);
        let queue = match &decoded {
            Ok(env) if stage.is_cluster_side() => match env.cluster.as_deref() {
                Some(cluster) => {
                    ensure_cluster_queues(broker, names, &RetryPolicy::default(), cluster).await?;
                    names.cluster_queue(stage, cluster)
                }
                None => {
                    tracing::warn!(message_id = ?d.properties.message_id, "a dead letter names no cluster; left in the dead-letter queue");
                    kept.push(d);
                    continue;
                }
            },
            Err(_) if stage.is_cluster_side() => {
                tracing::warn!(message_id = ?d.properties.message_id, "an undecodable dead letter of a cluster-side stage has no cluster to go back to; left in the dead-letter queue");
                kept.push(d);
                continue;
            }
            _ => names.stage_queue(stage),
        };
        let (mut properties, body) = match decoded {
            Ok(mut env) => {
                env.attempt = 0;
                (
                    envelope::properties(&env, ContentType::MessagePack),
                    encode_as(&env, ContentType::MessagePack),
                )
            }
            // Not an envelope: send the bytes back as they were; the operator asked for it.
            Err(_) => (d.properties.clone(), d.body.clone()),
        };
        properties.headers.retain(|k, _| {
            ![
                DEAD_LETTER_REASON,
                DEAD_LETTER_CHAIN,
                DEAD_LETTER_STAGE,
                DEAD_LETTER_ATTEMPTS,
                DEAD_LETTER_AT,
            ]
            .contains(&k.as_str())
                && !k.starts_with("x-death")
                && !k.starts_with("x-first-death")
                && !k.starts_with("x-last-death")
                && !k.starts_with("x-stowage-original")
        });
        properties.expiration = None;
        // Straight to the stage's queue through the default exchange: a replayed event must
        // reach this stage only, not every subscriber of the events exchange again.
        let message = Outgoing {
            exchange: String::new(),
            routing_key: queue,
            mandatory: true,
            properties,
            body,
        };
        broker.publish(message).await?;
        d.ack().await?;
        replayed += 1;
        if only.is_some() {
            break;
        }
    }
    release(kept).await;
    Ok(replayed)
}

/// Take up to `limit` messages from `queue` without settling them.
async fn browse(
    broker: &dyn Broker,
    queue: &str,
    limit: usize,
) -> Result<Vec<Delivery>, BrokerError> {
    let depth = broker.queue_depth(queue).await? as usize;
    let mut held = Vec::new();
    for _ in 0..depth.min(limit) {
        match broker.get(queue).await? {
            Some(d) => held.push(d),
            None => break,
        }
    }
    Ok(held)
}

/// Hand held deliveries back, newest first so the queue keeps its order, and wait until the
/// broker has them (dropping them would also requeue, but only once their channel closes).
async fn release(mut held: Vec<Delivery>) {
    while let Some(d) = held.pop() {
        if let Err(err) = d.reject(true).await {
            tracing::debug!(%err, "requeue failed; the broker requeues it when the channel closes");
        }
    }
}
