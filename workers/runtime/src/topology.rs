//! The broker topology: every exchange, queue and binding the fleet uses, in one place.
//!
//! ```text
//!  producers ──job (key = stage)──► <p>.jobs (direct) ──► <p>.<stage>        (quorum, one per stage)
//!  workers ──event (key = rp.created…)──► <p>.events (topic) ─┘ bound per trigger
//!
//!  retry:  worker ──key <level>.<stage>──► <p>.delay (topic) ──► <p>.delay.<level> (TTL)
//!          expired ──dead-letter, same key──► <p>.retry (topic, *.<stage>) ──► <p>.<stage>
//!  give up: worker ──► <p>.<stage>.dlq  (also where the broker puts messages past the
//!                                        stage queue's delivery limit)
//! ```
//!
//! Retries travel through `<p>.retry` rather than back through `stowage.jobs`/`stowage.events`
//! so a retried event reaches only the stage that failed it, never every subscriber again.
//! Delay queues are shared by all stages, one per backoff level: all messages in a level have
//! about the same TTL, so expiry order matches queue order and nothing waits behind a longer
//! delay (per-message TTLs only expire at the head of a queue).
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

    /// The work queue of a stage.
    pub fn stage_queue(&self, stage: Stage) -> String {
        format!("{}.{}", self.prefix, stage.as_str())
    }

    /// The dead-letter queue of a stage.
    pub fn dead_letter_queue(&self, stage: Stage) -> String {
        format!("{}.{}.dlq", self.prefix, stage.as_str())
    }

    /// The delay queue of one backoff level.
    pub fn delay_queue(&self, level: usize) -> String {
        format!("{}.delay.{level}", self.prefix)
    }

    /// The routing key that sends a retry of `stage` through delay `level`.
    pub fn delay_routing_key(level: usize, stage: Stage) -> String {
        format!("{level}.{}", stage.as_str())
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
            bindings.push(BindingSpec {
                exchange: names.delay_exchange(),
                queue: name,
                routing_key: format!("{level}.*"),
            });
        }

        for stage in Stage::ALL {
            let queue = names.stage_queue(stage);
            let dlq = names.dead_letter_queue(stage);
            queues.push(QueueSpec {
                name: queue.clone(),
                kind: QueueKind::Quorum,
                dead_letter: Some(DeadLetter {
                    exchange: String::new(),
                    routing_key: Some(dlq.clone()),
                }),
                delivery_limit: Some(retry.delivery_limit),
                message_ttl: None,
            });
            queues.push(QueueSpec {
                name: dlq,
                kind: QueueKind::Quorum,
                dead_letter: None,
                delivery_limit: None,
                message_ttl: None,
            });
            bindings.push(BindingSpec {
                exchange: names.jobs_exchange(),
                queue: queue.clone(),
                routing_key: stage.as_str().to_owned(),
            });
            bindings.push(BindingSpec {
                exchange: names.retry_exchange(),
                queue: queue.clone(),
                routing_key: format!("*.{}", stage.as_str()),
            });
            for event in triggers(stage) {
                bindings.push(BindingSpec {
                    exchange: names.events_exchange(),
                    queue: queue.clone(),
                    routing_key: (*event).to_owned(),
                });
            }
        }
        Self {
            names,
            exchanges,
            queues,
            bindings,
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
        let t = Topology::new(Names::new("p"), &RetryPolicy::default());
        for stage in Stage::ALL {
            let q = t.names.stage_queue(stage);
            assert!(
                t.queues
                    .iter()
                    .any(|s| s.name == q && s.kind == QueueKind::Quorum)
            );
            assert!(
                t.queues
                    .iter()
                    .any(|s| s.name == t.names.dead_letter_queue(stage))
            );
            assert!(t.bindings.iter().any(|b| b.queue == q
                && b.exchange == "p.jobs"
                && b.routing_key == stage.as_str()));
            let retry_key = Names::delay_routing_key(0, stage);
            assert!(t.bindings.iter().any(|b| b.queue == q
                && b.exchange == "p.retry"
                && topic_matches(&b.routing_key, &retry_key)));
        }
        let vt = t.names.stage_queue(Stage::VaultTransfer);
        assert!(
            t.bindings.iter().any(|b| b.queue == vt
                && b.exchange == "p.events"
                && b.routing_key == "rp.created")
        );
    }
}
