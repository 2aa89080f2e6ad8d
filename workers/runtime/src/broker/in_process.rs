//! An in-process broker with RabbitMQ's semantics, for the embedded default and unit tests.
//!
//! It implements what the fleet relies on and nothing else: the default, direct and topic
//! exchanges; queues with a dead-letter target, a message TTL and a delivery limit;
//! per-message expiration; prefetch; ack, reject and requeue; and redelivery of anything a
//! consumer drops unsettled (a crashed handler behaves like a closed AMQP channel). Messages
//! live in memory: a process restart loses them, which is why production uses RabbitMQ.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use tokio::sync::Notify;

use super::{
    Broker, BrokerError, Cancel, Delivery, HeaderValue, Headers, Outgoing, Settle, Subscription,
};
use crate::topology::{BindingSpec, ExchangeKind, QueueSpec, Topology, topic_matches};

/// The in-process broker. Cheap to clone; clones share the same queues.
#[derive(Clone, Default)]
pub struct InProcessBroker {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    exchanges: HashMap<String, ExchangeKind>,
    bindings: Vec<BindingSpec>,
    queues: HashMap<String, QueueState>,
    next_id: u64,
}

struct QueueState {
    spec: QueueSpec,
    ready: VecDeque<Stored>,
    changed: Arc<Notify>,
    /// Live subscriptions (AMQP's consumer count).
    consumers: usize,
}

#[derive(Clone)]
struct Stored {
    id: u64,
    message: Outgoing,
    /// Times it went back to the queue unsettled (RabbitMQ's `x-delivery-count`).
    returns: u32,
    redelivered: bool,
}

impl InProcessBroker {
    /// An empty broker: declare a topology before use.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic mid-update of plain collections; the data is still
        // structurally valid, so keep serving rather than cascade the panic.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Route `message` from its exchange into queues. Returns how many queues took it.
    fn route(&self, state: &mut State, message: Outgoing) -> Result<usize, BrokerError> {
        let targets: Vec<String> =
            if message.exchange.is_empty() {
                state
                    .queues
                    .contains_key(&message.routing_key)
                    .then(|| message.routing_key.clone())
                    .into_iter()
                    .collect()
            } else {
                let kind = *state.exchanges.get(&message.exchange).ok_or_else(|| {
                    BrokerError::NotFound {
                        what: "exchange",
                        name: message.exchange.clone(),
                    }
                })?;
                let mut targets: Vec<String> = state
                    .bindings
                    .iter()
                    .filter(|b| b.exchange == message.exchange)
                    .filter(|b| match kind {
                        ExchangeKind::Direct => b.routing_key == message.routing_key,
                        ExchangeKind::Topic => topic_matches(&b.routing_key, &message.routing_key),
                    })
                    .map(|b| b.queue.clone())
                    .collect();
                targets.sort();
                targets.dedup();
                targets
            };
        for queue in &targets {
            state.next_id += 1;
            let stored = Stored {
                id: state.next_id,
                message: message.clone(),
                returns: 0,
                redelivered: false,
            };
            self.enqueue(state, queue, stored, false);
        }
        Ok(targets.len())
    }

    /// Put a message into a queue (at the back, or at the front when it is being returned),
    /// and arm its expiry.
    fn enqueue(&self, state: &mut State, queue: &str, stored: Stored, front: bool) {
        let Some(q) = state.queues.get_mut(queue) else {
            return;
        };
        let ttl = match (q.spec.message_ttl, stored.message.properties.expiration) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let id = stored.id;
        if front {
            q.ready.push_front(stored);
        } else {
            q.ready.push_back(stored);
        }
        q.changed.notify_waiters();
        if let Some(ttl) = ttl.filter(|_| !front) {
            self.arm_expiry(queue.to_owned(), id, ttl);
        }
    }

    fn arm_expiry(&self, queue: String, id: u64, ttl: Duration) {
        let broker = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            let mut state = broker.lock();
            let Some(q) = state.queues.get_mut(&queue) else {
                return;
            };
            if let Some(pos) = q.ready.iter().position(|s| s.id == id) {
                let stored = q.ready.remove(pos).expect("position is in range");
                broker.dead_letter(&mut state, &queue, stored, "expired");
            }
        });
    }

    /// Send a message its queue gave up on to the queue's dead-letter target, with `x-death`.
    fn dead_letter(&self, state: &mut State, queue: &str, stored: Stored, reason: &str) {
        let Some(target) = state
            .queues
            .get(queue)
            .and_then(|q| q.spec.dead_letter.clone())
        else {
            return;
        };
        let mut message = stored.message;
        let headers = &mut message.properties.headers;
        let mut death = Headers::new();
        death.insert("reason".into(), reason.into());
        death.insert("queue".into(), queue.into());
        death.insert("exchange".into(), message.exchange.clone().into());
        death.insert(
            "routing-keys".into(),
            HeaderValue::List(vec![message.routing_key.clone().into()]),
        );
        death.insert("count".into(), HeaderValue::Int(1));
        let mut deaths = match headers.remove("x-death") {
            Some(HeaderValue::List(list)) => list,
            _ => Vec::new(),
        };
        deaths.insert(0, HeaderValue::Table(death));
        headers.insert("x-death".into(), HeaderValue::List(deaths));
        headers
            .entry("x-first-death-reason".into())
            .or_insert_with(|| reason.into());
        headers
            .entry("x-first-death-queue".into())
            .or_insert_with(|| queue.into());
        headers
            .entry("x-first-death-exchange".into())
            .or_insert_with(|| message.exchange.clone().into());
        // Expiration is per hop: the dead-lettered copy does not inherit it.
        message.properties.expiration = None;
        if let Some(key) = target.routing_key {
            message.routing_key = key;
        }
        message.exchange = target.exchange;
        if let Err(err) = self.route(state, message) {
            tracing::warn!(%err, queue, "dead-letter target missing; message dropped");
        }
    }

    /// A delivery went back unsettled: requeue it at the front, or dead-letter it past the
    /// queue's delivery limit.
    fn return_to_queue(&self, queue: &str, mut stored: Stored) {
        let mut state = self.lock();
        let Some(q) = state.queues.get(queue) else {
            return;
        };
        stored.returns += 1;
        stored.redelivered = true;
        if q.spec
            .delivery_limit
            .is_some_and(|limit| stored.returns > limit)
        {
            self.dead_letter(&mut state, queue, stored, "delivery_limit");
        } else {
            self.enqueue(&mut state, queue, stored, true);
        }
    }

    fn take(
        &self,
        queue: &str,
        budget: Option<&Arc<AtomicUsize>>,
        prefetch: usize,
    ) -> Result<Option<(Stored, Arc<Notify>)>, BrokerError> {
        let mut state = self.lock();
        let q = state
            .queues
            .get_mut(queue)
            .ok_or_else(|| BrokerError::no_queue(queue))?;
        if budget.is_some_and(|b| b.load(Ordering::SeqCst) >= prefetch) {
            return Ok(None);
        }
        let Some(stored) = q.ready.pop_front() else {
            return Ok(None);
        };
        if let Some(b) = budget {
            b.fetch_add(1, Ordering::SeqCst);
        }
        Ok(Some((stored, q.changed.clone())))
    }

    fn delivery(
        &self,
        queue: &str,
        stored: Stored,
        budget: Arc<AtomicUsize>,
        changed: Arc<Notify>,
    ) -> Delivery {
        Delivery {
            exchange: stored.message.exchange.clone(),
            routing_key: stored.message.routing_key.clone(),
            redelivered: stored.redelivered,
            properties: stored.message.properties.clone(),
            body: stored.message.body.clone(),
            settle: Box::new(InProcessSettle {
                broker: self.clone(),
                queue: queue.to_owned(),
                stored: Mutex::new(Some(stored)),
                budget,
                changed,
            }),
        }
    }

    fn changed(&self, queue: &str) -> Result<Arc<Notify>, BrokerError> {
        self.lock()
            .queues
            .get(queue)
            .map(|q| q.changed.clone())
            .ok_or_else(|| BrokerError::no_queue(queue))
    }
}

impl Broker for InProcessBroker {
    fn declare<'a>(&'a self, topology: &'a Topology) -> BoxFuture<'a, Result<(), BrokerError>> {
        async move {
            let mut state = self.lock();
            for exchange in &topology.exchanges {
                match state.exchanges.get(&exchange.name) {
                    Some(kind) if *kind != exchange.kind => {
                        return Err(BrokerError::Protocol {
                            operation: "exchange.declare",
                            reason: format!(
                                "exchange {:?} exists with type {}",
                                exchange.name,
                                kind.as_str()
                            ),
                        });
                    }
                    _ => {
                        state.exchanges.insert(exchange.name.clone(), exchange.kind);
                    }
                }
            }
            for spec in &topology.queues {
                match state.queues.get(&spec.name) {
                    Some(q) if q.spec != *spec => {
                        return Err(BrokerError::Protocol {
                            operation: "queue.declare",
                            reason: format!(
                                "queue {:?} exists with different arguments",
                                spec.name
                            ),
                        });
                    }
                    Some(_) => {}
                    None => {
                        state.queues.insert(
                            spec.name.clone(),
                            QueueState {
                                spec: spec.clone(),
                                ready: VecDeque::new(),
                                changed: Arc::new(Notify::new()),
                                consumers: 0,
                            },
                        );
                    }
                }
            }
            for binding in &topology.bindings {
                if !state.bindings.contains(binding) {
                    state.bindings.push(binding.clone());
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn publish(&self, message: Outgoing) -> BoxFuture<'_, Result<(), BrokerError>> {
        async move {
            let mut state = self.lock();
            let id = message.properties.message_id.clone().unwrap_or_default();
            let (exchange, routing_key, mandatory) = (
                message.exchange.clone(),
                message.routing_key.clone(),
                message.mandatory,
            );
            let routed = self.route(&mut state, message)?;
            if routed == 0 && mandatory {
                return Err(BrokerError::Unroutable {
                    message_id: id,
                    exchange,
                    routing_key,
                });
            }
            Ok(())
        }
        .boxed()
    }

    fn consume<'a>(
        &'a self,
        queue: &'a str,
        prefetch: u16,
    ) -> BoxFuture<'a, Result<Subscription, BrokerError>> {
        async move {
            let changed = self.changed(queue)?;
            if let Some(q) = self.lock().queues.get_mut(queue) {
                q.consumers += 1;
            }
            let cancelled = Arc::new(AtomicBool::new(false));
            let budget = Arc::new(AtomicUsize::new(0));
            let prefetch = usize::from(prefetch.max(1));
            let broker = self.clone();
            let queue_name = queue.to_owned();
            let stop = cancelled.clone();
            let wake = changed.clone();
            let deliveries = futures::stream::unfold((), move |()| {
                let (broker, queue, stop, budget, changed) = (
                    broker.clone(),
                    queue_name.clone(),
                    stop.clone(),
                    budget.clone(),
                    changed.clone(),
                );
                async move {
                    loop {
                        let notified = changed.notified();
                        tokio::pin!(notified);
                        notified.as_mut().enable();
                        if stop.load(Ordering::SeqCst) {
                            return None;
                        }
                        match broker.take(&queue, Some(&budget), prefetch) {
                            Ok(Some((stored, changed))) => {
                                return Some((
                                    Ok(broker.delivery(&queue, stored, budget.clone(), changed)),
                                    (),
                                ));
                            }
                            Ok(None) => notified.await,
                            Err(err) => return Some((Err(err), ())),
                        }
                    }
                }
            })
            .boxed();
            Ok(Subscription {
                deliveries,
                canceller: Box::new(InProcessCancel {
                    cancelled,
                    changed: wake,
                    broker: self.clone(),
                    queue: queue.to_owned(),
                }),
            })
        }
        .boxed()
    }

    fn get<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<Option<Delivery>, BrokerError>> {
        async move {
            // Counts this one delivery, so settling it brings the count back to zero.
            let budget = Arc::new(AtomicUsize::new(1));
            Ok(self
                .take(queue, None, usize::MAX)?
                .map(|(stored, changed)| self.delivery(queue, stored, budget, changed)))
        }
        .boxed()
    }

    fn queue_depth<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<u32, BrokerError>> {
        async move {
            let state = self.lock();
            let q = state
                .queues
                .get(queue)
                .ok_or_else(|| BrokerError::no_queue(queue))?;
            Ok(u32::try_from(q.ready.len()).unwrap_or(u32::MAX))
        }
        .boxed()
    }

    fn queue_consumers<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<u32, BrokerError>> {
        async move {
            let state = self.lock();
            let q = state
                .queues
                .get(queue)
                .ok_or_else(|| BrokerError::no_queue(queue))?;
            Ok(u32::try_from(q.consumers).unwrap_or(u32::MAX))
        }
        .boxed()
    }

    fn is_connected(&self) -> bool {
        true
    }

    fn endpoint(&self) -> String {
        "in-process".to_owned()
    }
}

struct InProcessCancel {
    cancelled: Arc<AtomicBool>,
    changed: Arc<Notify>,
    broker: InProcessBroker,
    queue: String,
}

impl InProcessCancel {
    /// Ends the delivery stream; deliveries handed out stay valid (in memory there is no
    /// channel to close, so cancelling and closing are the same).
    fn stop(&self) -> BoxFuture<'static, ()> {
        if !self.cancelled.swap(true, Ordering::SeqCst)
            && let Some(q) = self.broker.lock().queues.get_mut(&self.queue)
        {
            q.consumers = q.consumers.saturating_sub(1);
        }
        self.changed.notify_waiters();
        futures::future::ready(()).boxed()
    }
}

impl Cancel for InProcessCancel {
    fn cancel(&mut self) -> BoxFuture<'_, ()> {
        self.stop()
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        self.stop()
    }
}

struct InProcessSettle {
    broker: InProcessBroker,
    queue: String,
    stored: Mutex<Option<Stored>>,
    budget: Arc<AtomicUsize>,
    changed: Arc<Notify>,
}

impl InProcessSettle {
    fn settle(&self, how: impl FnOnce(&InProcessBroker, &str, Stored)) -> Result<(), BrokerError> {
        let stored = self.stored.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(stored) = stored else {
            return Err(BrokerError::Protocol {
                operation: "basic.ack",
                reason: "delivery already settled".into(),
            });
        };
        how(&self.broker, &self.queue, stored);
        self.free_prefetch_slot();
        Ok(())
    }

    /// The delivery no longer counts against its consumer's prefetch: wake the consumer.
    fn free_prefetch_slot(&self) {
        self.budget.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

impl Settle for InProcessSettle {
    fn ack(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        futures::future::ready(self.settle(|_, _, _| {})).boxed()
    }

    fn reject(&self, requeue: bool) -> BoxFuture<'_, Result<(), BrokerError>> {
        let result = self.settle(|broker, queue, stored| {
            if requeue {
                broker.return_to_queue(queue, stored);
            } else {
                let mut state = broker.lock();
                broker.dead_letter(&mut state, queue, stored, "rejected");
            }
        });
        futures::future::ready(result).boxed()
    }
}

impl Drop for InProcessSettle {
    fn drop(&mut self) {
        let stored = self
            .stored
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(stored) = stored {
            self.broker.return_to_queue(&self.queue, stored);
            self.free_prefetch_slot();
        }
    }
}
