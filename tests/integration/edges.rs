//! Bad input never harms a worker (issue 13): oversized fields and bodies are dead-lettered once
//! with a bounded reason while the worker's connection stays up, counters from messages never
//! wrap, and a broker that is away fails a submit within the timeout, saying which step.

use std::sync::Arc;
use std::time::{Duration, Instant};

use stowage_runtime::client::{DeadLetter, list_dead_letters, submit};
use stowage_runtime::limits::{MAX_BODY_BYTES, MAX_HEADER_VALUE_BYTES};
use stowage_runtime::{BrokerError, RabbitBroker, StageConfig, Worker, WorkerConfig};
use stowage_schemas::Stage;
use stowage_tests::{
    Behavior, BrokerKind, Bus, RunningWorker, ScriptedHandler, amqp_url, exclusive_broker,
    fast_retry, shared_rabbit_bus, snapshot_job,
};

const WAIT: Duration = Duration::from_secs(30);

/// A worker with fast retries, on a connection of its own so the test can count its
/// connections.
struct Running {
    broker: Arc<RabbitBroker>,
    worker: RunningWorker,
}

async fn start(bus: &Bus, handler: ScriptedHandler) -> Running {
    let broker = Arc::new(RabbitBroker::new(amqp_url()));
    let config = WorkerConfig {
        names: bus.names.clone(),
        retry: fast_retry(),
        shutdown_deadline: Duration::from_secs(10),
        // The test cluster's: its snapshot queue is where the tests' jobs wait.
        ..bus.worker_config()
    };
    let stage = StageConfig {
        prefetch: 4,
        concurrency: 2,
    };
    let worker = Worker::new(broker.clone(), config).stage(handler, stage);
    Running {
        broker,
        worker: RunningWorker::spawn(worker, WAIT).await,
    }
}

impl Running {
    async fn stop(self, bus: &Bus) {
        self.worker.stop(WAIT).await;
        bus.teardown_worker(fast_retry()).await;
    }
}

/// The snapshot stage's dead letters, which `what` says are `count`.
async fn dead_letters(bus: &Bus, count: usize, what: &str) -> Vec<DeadLetter> {
    let letters = list_dead_letters(bus.broker.as_ref(), &bus.names, Stage::Snapshot, 10)
        .await
        .expect("list");
    assert_eq!(letters.len(), count, "{what}: {letters:#?}");
    letters
}

fn letter<'a>(letters: &'a [DeadLetter], id: &str) -> &'a DeadLetter {
    letters
        .iter()
        .find(|l| l.message_id.as_deref() == Some(id))
        .unwrap_or_else(|| panic!("no dead letter {id} in {letters:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_fields_are_dead_lettered_once_and_the_worker_stays_connected() {
    let (_gate, bus) = shared_rabbit_bus().await;
    let handler = ScriptedHandler::default();
    let running = start(&bus, handler.clone()).await;
    let dlq = bus.names.dead_letter_queue(Stage::Snapshot);
    let probe = bus.probe_events().await;

    let kb70 = "k".repeat(70_000);
    let mb10 = "m".repeat(10_000_000);
    bus.publish_json("type-70k", |j| j["message"]["type"] = kb70.clone().into())
        .await;
    bus.publish_json("type-10m", |j| j["message"]["type"] = mb10.clone().into())
        .await;
    bus.publish_json("instance-10m", |j| {
        j["message"]["payload"]["instance"] = mb10.clone().into();
    })
    .await;
    // A 70 KB instance name breaks the id rule: refused at decode, quoting only a bounded part.
    bus.publish_json("instance-70k", |j| {
        j["message"]["payload"]["instance"] = kb70.clone().into();
    })
    .await;
    // A stage that quotes a 70 KB text in its error: the reason header is cut with a note.
    handler.set(
        "quotes-70k",
        Behavior::FailPermanently(format!("instance {kb70:?} does not exist")),
    );
    bus.publish_json("quotes-70k", |_| {}).await;
    // A 70 KB job id breaks the id rule too.
    let long_job = snapshot_job(&"j".repeat(70_000));
    submit(bus.broker.as_ref(), &bus.names, &long_job)
        .await
        .expect("submit");

    bus.wait_depth(&dlq, 6, WAIT).await;
    // Other jobs keep flowing on the same connection.
    submit(bus.broker.as_ref(), &bus.names, &snapshot_job("job-after"))
        .await
        .expect("submit");
    handler.wait_calls("job-after", 1, WAIT).await;
    bus.wait_depth(&probe, 1, WAIT).await;

    let letters = dead_letters(&bus, 6, "each dead-lettered once").await;
    for l in &letters {
        assert!(
            l.reason.len() <= MAX_HEADER_VALUE_BYTES,
            "{:?}: reason of {} bytes",
            l.message_id,
            l.reason.len()
        );
        assert!(
            !l.reason.contains("delivered too many times"),
            "dead-lettered by the worker, not the delivery limit: {}",
            l.reason
        );
        for cause in &l.error_chain {
            assert!(cause.len() <= MAX_HEADER_VALUE_BYTES);
        }
    }
    let type70k = letter(&letters, "type-70k");
    assert!(
        type70k.reason.starts_with("unknown message type `kkkk")
            && type70k.reason.ends_with("bytes in all)"),
        "{}",
        type70k.reason
    );
    assert_eq!(type70k.attempts, Some(1));
    for id in ["type-10m", "instance-10m"] {
        let l = letter(&letters, id);
        assert!(
            l.reason
                .contains(&format!("the limit is {MAX_BODY_BYTES} bytes")),
            "{id}: {}",
            l.reason
        );
        assert!(l.body_bytes > 10_000_000, "the body is kept for inspection");
    }
    let instance70k = letter(&letters, "instance-70k");
    assert!(
        instance70k.reason.contains("payload.instance") && instance70k.reason.contains("id"),
        "{}",
        instance70k.reason
    );
    assert!(
        handler.calls_for("instance-70k").is_empty(),
        "refused before the stage"
    );
    let quotes70k = letter(&letters, "quotes-70k");
    assert!(
        quotes70k
            .reason
            .starts_with("permanent failure: instance \"kkkk")
            && quotes70k.reason.ends_with("bytes in all)"),
        "{}",
        quotes70k.reason
    );
    assert_eq!(quotes70k.attempts, Some(1));
    assert_eq!(
        handler.calls_for("quotes-70k").len(),
        1,
        "handled once, never redelivered"
    );
    let named = [
        "type-70k",
        "type-10m",
        "instance-10m",
        "instance-70k",
        "quotes-70k",
    ];
    let long = letters
        .iter()
        .find(|l| !named.contains(&l.message_id.as_deref().unwrap_or_default()))
        .expect("the long job id's dead letter");
    assert!(long.reason.contains("job_id"), "{}", long.reason);
    let events = bus.drain(&probe).await;
    assert_eq!(events.len(), 1, "only job-after emitted an event");

    assert_eq!(
        running.broker.connections_opened(),
        1,
        "the worker never lost its connection"
    );
    running.stop(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_counter_at_its_maximum_does_not_wrap() {
    let (_gate, bus) = shared_rabbit_bus().await;
    let handler = ScriptedHandler::default();
    handler.set("max-permanent", Behavior::FailPermanently("no".into()));
    handler.set("max-transient", Behavior::FailTransiently(1));
    handler.set("almost-max-transient", Behavior::FailTransiently(1));
    let running = start(&bus, handler.clone()).await;
    let dlq = bus.names.dead_letter_queue(Stage::Snapshot);

    for (id, attempt) in [
        ("max-permanent", u32::MAX),
        ("max-transient", u32::MAX),
        ("almost-max-transient", u32::MAX - 1),
    ] {
        let mut job = snapshot_job(id);
        job.attempt = attempt;
        job.message_id = stowage_schemas::MessageId(uuid::Uuid::new_v4());
        submit(bus.broker.as_ref(), &bus.names, &job)
            .await
            .expect("submit");
    }
    bus.wait_depth(&dlq, 3, WAIT).await;
    let letters = dead_letters(&bus, 3, "one for each job").await;
    for l in &letters {
        assert_eq!(
            l.attempts,
            Some(i64::from(u32::MAX)),
            "{:?}: {}",
            l.job_id,
            l.reason
        );
    }
    for id in ["max-permanent", "max-transient", "almost-max-transient"] {
        assert_eq!(handler.calls_for(id).len(), 1, "{id} handled once");
    }
    running.stop(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_while_the_broker_is_stopped_fails_within_the_timeout() {
    let _gate = exclusive_broker().await;
    let bus = Bus::new(BrokerKind::Rabbit).await;
    let _restart = crate::faults::RestartOnDrop;
    stowage_tests::rabbitmqctl(&["stop_app"]);
    let broker = RabbitBroker::new(amqp_url()).with_timeout(Duration::from_secs(3));
    let started = Instant::now();
    let err = submit(&broker, &bus.names, &snapshot_job("while-stopped"))
        .await
        .expect_err("no broker, no submit");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "took {took:?}: {err}");
    assert!(err.is_transient(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("127.0.0.1:5672") && !text.contains("guest:guest"),
        "{text}"
    );
    drop(_restart);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_never_answers_times_out_naming_the_step() {
    // A TCP listener that accepts and never speaks AMQP: connecting hangs without a timeout.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    let broker = RabbitBroker::new(format!("amqp://user:sekret@127.0.0.1:{port}/%2f"))
        .with_timeout(Duration::from_secs(2));
    let names = stowage_runtime::Names::new(stowage_tests::unique_prefix());
    let started = Instant::now();
    let err = submit(&broker, &names, &snapshot_job("never"))
        .await
        .expect_err("times out");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, BrokerError::TimedOut { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "connecting to amqp://127.0.0.1:{port}/%2f timed out after 2s; check that the broker is running and reachable"
        )
    );
    held.abort();
}
