//! The broker topology: every exchange, queue and binding the fleet uses, in one place.
//!
//! ```text
//!  vault stages (vault-transfer, geo-replication, restore-hydration, retention): one queue each
//!  producers ──job (key = stage)──► <p>.jobs (direct) ──► <p>.<stage>              (quorum)
//!  workers ──event (key = rp.created…)──► <p>.events (topic) ─┘ bound per trigger
//!
//!  cluster-side stages (snapshot, restore): one queue per cluster, declared lazily
//!  producers ──job (key = stage@cluster)──► <p>.jobs ──► <p>.<stage>@<cluster>     (quorum)
//!  workers ──event (key = restore.hydrated.<cluster>)──► <p>.events ─┘
//!
//!  retry:  worker ──key <level>.<job key>──► <p>.delay (topic, <level>.#) ──► <p>.delay.<level>
//!          expired ──dead-letter, same key──► <p>.retry (topic, *.<job key>) ──► its queue
//!  give up: worker ──► <p>.<stage>.dlq  (one per stage, shared by every cluster's queue of a
//!                                        cluster-side stage; also where the broker puts
//!                                        messages past a work queue's delivery limit)
//! ```
//!
//! Retries travel through `<p>.retry` rather than back through `stowage.jobs`/`stowage.events`
//! so a retried event reaches only the stage that failed it, never every subscriber again.
//! Delay queues are shared by all stages, one per backoff level: all messages in a level have
//! about the same TTL, so expiry order matches queue order and nothing waits behind a longer
//! delay (per-message TTLs only expire at the head of a queue).
//!
//! # Per-cluster queues
//!
//! The cluster-side stages run inside the cluster they act on, the way a backup extension is
//! installed on both the source and the target cluster of a restore. So that a cluster's workers
//! take only its jobs, each cluster has its own queue per cluster-side stage, named by the
//! message's [`Envelope::cluster`](stowage_schemas::Envelope::cluster): a job is keyed
//! `<stage>@<cluster>` (`@` is in no id, so no cluster name can make two keys meet), an event
//! that triggers a cluster-side stage is keyed `<event>.<cluster>` (observers bind
//! `restore.hydrated.#`). The cluster names are not known in advance, so these queues are not
//! in [`Topology::new`] (nor in the definitions file): [`Topology::for_cluster`] describes one
//! cluster's, declared idempotently, with the same arguments, by its workers at start and by
//! every producer before it publishes a job for it. A job for a cluster nobody serves therefore
//! waits in that cluster's queue — never taken by another cluster — and `stowage preflight`
//! reports a queue with no consumer.
//!
//! The dead-letter queue stays one per stage: `stowage dlq` and the metrics look in one place,
//! and a replay sends each letter back to the queue its envelope's cluster names.
//!
//! The same description is declared by the runtime at start, applied by the in-process broker,
//! and exported as a RabbitMQ definitions file (`infra/rabbitmq/definitions.json`).

use std::time::Duration;

use serde_json::{Value, json};
use stowage_schemas::Stage;

use crate::retry::RetryPolicy;

/// The default name prefix of every exchange and queue.
pub const DEFAULT_PREFIX: &str = "stowage";

/// Exchange types the fleet uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routes on exact routing key.
    Direct,
    /// Routes on dotted patterns with `*` (one word) and `#` (zero or more words).
    Topic,
}

impl ExchangeKind {
    /// The AMQP name of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Topic => "topic",
        }
    }
}

/// One exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeSpec {
    /// Its name.
    pub name: String,
    /// Its type.
    pub kind: ExchangeKind,
}

/// Queue types the fleet uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// Replicated, durable, with a delivery limit: stage queues and dead-letter queues.
    Quorum,
    /// Classic durable: delay queues (quorum queues on RabbitMQ 3.10 have no per-message TTL).
    Classic,
}

/// Where a queue sends messages it dead-letters (rejected, expired, or past the delivery limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Exchange to republish to (`""` = default exchange).
    pub exchange: String,
    /// Routing key to use; `None` keeps the message's own routing key.
    pub routing_key: Option<String>,
}

/// One queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// Its name.
    pub name: String,
    /// Its type.
    pub kind: QueueKind,
    /// Dead-letter target, if any.
    pub dead_letter: Option<DeadLetter>,
    /// Deliveries after which a message is dead-lettered instead of redelivered.
    pub delivery_limit: Option<u32>,
    /// How long a message may wait in the queue before it expires.
    pub message_ttl: Option<Duration>,
}

/// One binding of a queue to an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingSpec {
    /// Source exchange.
    pub exchange: String,
    /// Destination queue.
    pub queue: String,
    /// Routing key or pattern.
    pub routing_key: String,
}

/// Names of everything, derived from one prefix so that tests can run side by side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix` (`stowage` in production).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The direct exchange jobs are submitted to, keyed by stage.
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    /// The topic exchange stages publish events to.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// The topic exchange retries are published to, keyed `<level>.<stage>`.
    pub fn delay_exchange(&self) -> String {
        format!("{}.delay", self.prefix)
    }

    /// The topic exchange expired retries come back through, bound `*.<stage>`.
    pub fn retry_exchange(&self) -> String {
        format!("{}.retry", self.prefix)
    }

    /// The work queue of a vault stage. A cluster-side stage has one per cluster instead
    /// ([`Names::cluster_queue`]); this name is not declared for it.
    pub fn stage_queue(&self, stage: Stage) -> String {
        format!("{}.{}", self.prefix, stage.as_str())
    }

    /// The work queue of a cluster-side stage for one cluster: `<p>.<stage>@<cluster>`.
    pub fn cluster_queue(&self, stage: Stage, cluster: &str) -> String {
        format!(
            "{}.{}",
            self.prefix,
            Self::job_routing_key(stage, Some(cluster))
        )
    }

    /// The queue a job of `stage` for `cluster` waits in: the cluster's queue for a
    /// cluster-side stage, the stage's queue otherwise (the cluster does not matter there).
    pub fn work_queue(&self, stage: Stage, cluster: Option<&str>) -> String {
        match cluster {
            Some(cluster) if stage.is_cluster_side() => self.cluster_queue(stage, cluster),
            _ => self.stage_queue(stage),
        }
    }

    /// The key a job is published with on the jobs exchange: `<stage>`, or `<stage>@<cluster>`
    /// for a cluster-side stage.
    pub fn job_routing_key(stage: Stage, cluster: Option<&str>) -> String {
        match cluster {
            Some(cluster) if stage.is_cluster_side() => format!("{}@{cluster}", stage.as_str()),
            _ => stage.as_str().to_owned(),
        }
    }

    /// The key an event is published with: its name, followed by the cluster's words when it
    /// is addressed to one cluster (`restore.hydrated.<cluster>`).
    pub fn event_routing_key(event: &str, cluster: Option<&str>) -> String {
        match cluster {
            Some(cluster) => format!("{event}.{cluster}"),
            None => event.to_owned(),
        }
    }

    /// The dead-letter queue of a stage.
    pub fn dead_letter_queue(&self, stage: Stage) -> String {
        format!("{}.{}.dlq", self.prefix, stage.as_str())
    }

    /// The delay queue of one backoff level.
    pub fn delay_queue(&self, level: usize) -> String {
        format!("{}.delay.{level}", self.prefix)
    }

    /// The routing key that sends a retry of `stage` (for `cluster`, when cluster-side)
    /// through delay `level`: `<level>.<job key>`.
    pub fn delay_routing_key(level: usize, stage: Stage, cluster: Option<&str>) -> String {
        format!("{level}.{}", Self::job_routing_key(stage, cluster))
    }
}

/// The upstream events whose arrival triggers a stage.
pub fn triggers(stage: Stage) -> &'static [&'static str] {
    match stage {
        Stage::VaultTransfer => &["rp.created"],
        Stage::GeoReplication => &["rp.vaulted"],
        Stage::Restore => &["restore.hydrated"],
        Stage::Snapshot | Stage::RestoreHydration | Stage::Retention => &[],
    }
}

/// The whole topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// How things are named.
    pub names: Names,
    /// Exchanges, declared first.
    pub exchanges: Vec<ExchangeSpec>,
    /// Queues.
    pub queues: Vec<QueueSpec>,
    /// Bindings, declared last.
    pub bindings: Vec<BindingSpec>,
}

impl Topology {
    /// The topology for every stage, with one delay queue per retry level of `retry`.
    pub fn new(names: Names, retry: &RetryPolicy) -> Self {
        let mut exchanges = vec![
            ExchangeSpec {
                name: names.jobs_exchange(),
                kind: ExchangeKind::Direct,
            },
            ExchangeSpec {
                name: names.events_exchange(),
                kind: ExchangeKind::Topic,
            },
            ExchangeSpec {
                name: names.delay_exchange(),
                kind: ExchangeKind::Topic,
            },
            ExchangeSpec {
                name: names.retry_exchange(),
                kind: ExchangeKind::Topic,
            },
        ];
        exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        let mut queues = Vec::new();
        let mut bindings = Vec::new();

        for (level, delay) in retry.levels().enumerate() {
            let name = names.delay_queue(level);
            queues.push(QueueSpec {
                name: name.clone(),
                kind: QueueKind::Classic,
                dead_letter: Some(DeadLetter {
                    exchange: names.retry_exchange(),
                    routing_key: None,
                }),
                delivery_limit: None,
                message_ttl: Some(delay),
            });
            // `#`, not `*`: a cluster-side job's key has the cluster's words after the stage.
            bindings.push(BindingSpec {
                exchange: names.delay_exchange(),
                queue: name,
                routing_key: format!("{level}.#"),
            });
        }

        for stage in Stage::ALL {
            queues.push(QueueSpec {
                name: names.dead_letter_queue(stage),
                kind: QueueKind::Quorum,
                dead_letter: None,
                delivery_limit: None,
                message_ttl: None,
            });
            if !stage.is_cluster_side() {
                work_queue(&names, retry, stage, None, &mut queues, &mut bindings);
            }
        }
        Self {
            names,
            exchanges,
            queues,
            bindings,
        }
    }

    /// What one cluster adds: the queues of the cluster-side stages for `cluster` and their
    /// bindings, with the exchanges and dead-letter queues they need (declaring those again
    /// changes nothing; the delay queues, whose arguments depend on each worker's retry policy,
    /// are left out). A producer declares it before it publishes a job for that cluster, and
    /// that cluster's workers at start, all with the same arguments.
    pub fn for_cluster(names: Names, retry: &RetryPolicy, cluster: &str) -> Self {
        let mut topology = Self::new(names, retry);
        topology.queues.retain(|q| {
            Stage::ALL
                .into_iter()
                .any(|s| s.is_cluster_side() && q.name == topology.names.dead_letter_queue(s))
        });
        topology.bindings.clear();
        topology.add_cluster(retry, cluster);
        topology
    }

    /// Add the cluster-side stages' queues of `cluster` (see [`Topology::for_cluster`]).
    pub fn add_cluster(&mut self, retry: &RetryPolicy, cluster: &str) {
        for stage in Stage::ALL.into_iter().filter(|s| s.is_cluster_side()) {
            let queue = self.names.cluster_queue(stage, cluster);
            if self.queues.iter().any(|q| q.name == queue) {
                continue;
            }
            work_queue(
                &self.names,
                retry,
                stage,
                Some(cluster),
                &mut self.queues,
                &mut self.bindings,
            );
        }
    }

    /// The queue-declare arguments of a queue, in RabbitMQ's terms.
    pub fn queue_arguments(queue: &QueueSpec) -> Vec<(&'static str, Value)> {
        let mut args = Vec::new();
        match queue.kind {
            QueueKind::Quorum => {
                args.push(("x-queue-type", json!("quorum")));
                if queue.dead_letter.is_some() {
                    // At-least-once dead-lettering needs reject-publish overflow; without it a
                    // message could vanish between the stage queue and its DLQ.
                    args.push(("x-dead-letter-strategy", json!("at-least-once")));
                    args.push(("x-overflow", json!("reject-publish")));
                }
            }
            QueueKind::Classic => args.push(("x-queue-type", json!("classic"))),
        }
        if let Some(dl) = &queue.dead_letter {
            args.push(("x-dead-letter-exchange", json!(dl.exchange)));
            if let Some(key) = &dl.routing_key {
                args.push(("x-dead-letter-routing-key", json!(key)));
            }
        }
        if let Some(limit) = queue.delivery_limit {
            args.push(("x-delivery-limit", json!(limit)));
        }
        if let Some(ttl) = queue.message_ttl {
            args.push((
                "x-message-ttl",
                json!(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            ));
        }
        args
    }

    /// The topology as a RabbitMQ definitions document (`rabbitmqctl import_definitions`, or
    /// the management plugin's `load_definitions`), for the default vhost `/`.
    pub fn rabbitmq_definitions(&self) -> Value {
        let exchanges: Vec<Value> = self
            .exchanges
            .iter()
            .map(|e| {
                json!({
                    "name": e.name, "vhost": "/", "type": e.kind.as_str(),
                    "durable": true, "auto_delete": false, "internal": false, "arguments": {}
                })
            })
            .collect();
        let queues: Vec<Value> = self
            .queues
            .iter()
            .map(|q| {
                let arguments: serde_json::Map<String, Value> = Self::queue_arguments(q)
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect();
                json!({
                    "name": q.name, "vhost": "/", "durable": true, "auto_delete": false,
                    "arguments": arguments
                })
            })
            .collect();
        let bindings: Vec<Value> = self
            .bindings
            .iter()
            .map(|b| {
                json!({
                    "source": b.exchange, "vhost": "/", "destination": b.queue,
                    "destination_type": "queue", "routing_key": b.routing_key, "arguments": {}
                })
            })
            .collect();
        json!({ "vhosts": [{ "name": "/" }], "exchanges": exchanges, "queues": queues, "bindings": bindings })
    }
}

/// The work queue of `stage` (for `cluster`, when cluster-side) and its bindings: jobs, retries
/// and the events that trigger it. It dead-letters to the stage's one dead-letter queue.
fn work_queue(
    names: &Names,
    retry: &RetryPolicy,
    stage: Stage,
    cluster: Option<&str>,
    queues: &mut Vec<QueueSpec>,
    bindings: &mut Vec<BindingSpec>,
) {
    let queue = names.work_queue(stage, cluster);
    queues.push(QueueSpec {
        name: queue.clone(),
        kind: QueueKind::Quorum,
        dead_letter: Some(DeadLetter {
            exchange: String::new(),
            routing_key: Some(names.dead_letter_queue(stage)),
        }),
        delivery_limit: Some(retry.delivery_limit),
        message_ttl: None,
    });
    let key = Names::job_routing_key(stage, cluster);
    bindings.push(BindingSpec {
        exchange: names.jobs_exchange(),
        queue: queue.clone(),
        routing_key: key.clone(),
    });
    bindings.push(BindingSpec {
        exchange: names.retry_exchange(),
        queue: queue.clone(),
        routing_key: format!("*.{key}"),
    });
    for event in triggers(stage) {
        bindings.push(BindingSpec {
            exchange: names.events_exchange(),
            queue: queue.clone(),
            routing_key: Names::event_routing_key(
                event,
                cluster.filter(|_| stage.is_cluster_side()),
            ),
        });
    }
}

/// Whether a topic `pattern` (`*` = one word, `#` = zero or more words) matches `key`.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|skip| go(rest, &k[skip..])),
            Some((&word, rest)) => match k.split_first() {
                Some((first, k_rest)) => (word == "*" || word == *first) && go(rest, k_rest),
                None => false,
            },
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    };
    go(&p, &k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns() {
        assert!(topic_matches("rp.created", "rp.created"));
        assert!(!topic_matches("rp.created", "rp.vaulted"));
        assert!(topic_matches("*.snapshot", "3.snapshot"));
        assert!(!topic_matches("*.snapshot", "3.vault-transfer"));
        assert!(topic_matches("2.*", "2.vault-transfer"));
        assert!(!topic_matches("2.*", "12.vault-transfer"));
        assert!(topic_matches("#", "a.b.c"));
        assert!(topic_matches("rp.#", "rp"));
        assert!(topic_matches("a.#.z", "a.b.c.z"));
        assert!(!topic_matches("a.*", "a.b.c"));
    }

    #[test]
    fn every_stage_has_a_queue_a_dlq_and_a_retry_route() {
        let mut t = Topology::new(Names::new("p"), &RetryPolicy::default());
        t.add_cluster(&RetryPolicy::default(), "aks.west");
        for stage in Stage::ALL {
            let cluster = stage.is_cluster_side().then_some("aks.west");
            let q = t.names.work_queue(stage, cluster);
            let spec = t.queues.iter().find(|s| s.name == q).expect("work queue");
            assert_eq!(spec.kind, QueueKind::Quorum);
            let dlq = t.names.dead_letter_queue(stage);
            assert_eq!(
                spec.dead_letter
                    .as_ref()
                    .and_then(|d| d.routing_key.clone()),
                Some(dlq.clone())
            );
            assert!(t.queues.iter().any(|s| s.name == dlq));
            let key = Names::job_routing_key(stage, cluster);
            assert!(
                t.bindings
                    .iter()
                    .any(|b| b.queue == q && b.exchange == "p.jobs" && b.routing_key == key)
            );
            // A retry leaves through every delay level and comes back to this queue only.
            let retry_key = Names::delay_routing_key(0, stage, cluster);
            assert!(t.bindings.iter().any(|b| b.exchange == "p.delay"
                && b.queue == "p.delay.0"
                && topic_matches(&b.routing_key, &retry_key)));
            let back: Vec<_> = t
                .bindings
                .iter()
                .filter(|b| b.exchange == "p.retry" && topic_matches(&b.routing_key, &retry_key))
                .map(|b| b.queue.as_str())
                .collect();
            assert_eq!(back, [q.as_str()], "{retry_key}");
        }
        let vt = t.names.stage_queue(Stage::VaultTransfer);
        assert!(
            t.bindings.iter().any(|b| b.queue == vt
                && b.exchange == "p.events"
                && b.routing_key == "rp.created")
        );
    }

    #[test]
    fn cluster_side_queues_are_per_cluster_and_not_in_the_static_topology() {
        let names = Names::new("p");
        let retry = RetryPolicy::default();
        let base = Topology::new(names.clone(), &retry);
        for stage in [Stage::Snapshot, Stage::Restore] {
            assert!(
                !base
                    .queues
                    .iter()
                    .any(|q| q.name == names.stage_queue(stage)
                        || q.name
                            .starts_with(&format!("{}@", names.stage_queue(stage)))),
                "{stage}: no cluster-agnostic work queue"
            );
        }
        let mut two = Topology::new(names.clone(), &retry);
        two.add_cluster(&retry, "a");
        two.add_cluster(&retry, "a.b");
        two.add_cluster(&retry, "a");
        let restore_a = names.cluster_queue(Stage::Restore, "a");
        assert_eq!(restore_a, "p.restore@a");
        assert_eq!(
            two.queues.iter().filter(|q| q.name == restore_a).count(),
            1,
            "adding a cluster twice declares it once"
        );
        // Who receives what: a job, a retry and a hydrated event for "a.b" reach a.b's queue
        // only, and one for "a" reaches a's only (cluster names may have dots).
        let routed = |exchange: &str, key: &str| -> Vec<String> {
            let direct = exchange == "p.jobs";
            two.bindings
                .iter()
                .filter(|b| {
                    b.exchange == exchange
                        && if direct {
                            b.routing_key == key
                        } else {
                            topic_matches(&b.routing_key, key)
                        }
                })
                .map(|b| b.queue.clone())
                .collect()
        };
        for cluster in ["a", "a.b"] {
            let snap = names.cluster_queue(Stage::Snapshot, cluster);
            let restore = names.cluster_queue(Stage::Restore, cluster);
            assert_eq!(
                routed(
                    "p.jobs",
                    &Names::job_routing_key(Stage::Snapshot, Some(cluster))
                ),
                std::slice::from_ref(&snap)
            );
            assert_eq!(
                routed(
                    "p.retry",
                    &Names::delay_routing_key(3, Stage::Snapshot, Some(cluster))
                ),
                [snap]
            );
            assert_eq!(
                routed(
                    "p.events",
                    &Names::event_routing_key("restore.hydrated", Some(cluster))
                ),
                [restore]
            );
        }
        assert!(
            routed("p.jobs", "snapshot").is_empty(),
            "no cluster, no queue"
        );
        assert_eq!(
            routed("p.events", "rp.created"),
            [names.stage_queue(Stage::VaultTransfer)]
        );

        // What a producer declares for one cluster: no delay queue (their TTLs are each
        // worker's), every queue the cluster's bindings name, every exchange they use.
        let part = Topology::for_cluster(names.clone(), &retry, "a");
        assert!(!part.queues.iter().any(|q| q.name.starts_with("p.delay")));
        for b in &part.bindings {
            assert!(part.queues.iter().any(|q| q.name == b.queue), "{b:?}");
            assert!(part.exchanges.iter().any(|e| e.name == b.exchange), "{b:?}");
        }
        for q in &part.queues {
            if let Some(dl) = &q.dead_letter {
                let target = dl.routing_key.as_deref().unwrap_or_default();
                assert!(part.queues.iter().any(|q| q.name == target), "{target}");
            }
        }
    }
}
