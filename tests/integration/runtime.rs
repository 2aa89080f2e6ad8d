//! The runtime's contract, on both brokers: acked once, retried with growing delays,
//! dead-lettered with a reason and replayable, undecodable input refused without stopping the
//! worker, and in-flight work drained on shutdown.

use std::time::{Duration, Instant};

use stowage_runtime::client::{list_dead_letters, replay_dead_letters, submit};
use stowage_runtime::{RetryPolicy, WorkerConfig};
use stowage_schemas::{ContentType, Message, Stage, decode, encode_as};
use stowage_tests::{
    Behavior, BrokerKind, Bus, RunningWorker, ScriptedHandler, fast_retry, shared_broker,
    snapshot_job,
};

/// Run a behaviour test against RabbitMQ and against the in-process broker.
macro_rules! on_both_brokers {
    ($name:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rabbitmq() {
                let _gate = shared_broker().await;
                super::$name(BrokerKind::Rabbit).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_process() {
                super::$name(BrokerKind::InProcess).await;
            }
        }
    };
}

on_both_brokers!(a_job_is_consumed_and_acked_once);
on_both_brokers!(a_transient_failure_is_retried_with_growing_delays);
on_both_brokers!(a_permanent_failure_is_dead_lettered_and_replayable);
on_both_brokers!(malformed_and_unknown_version_messages_are_dead_lettered);
on_both_brokers!(shutdown_drains_in_flight_work);
on_both_brokers!(every_failed_attempt_is_published_as_job_failed);
on_both_brokers!(progress_is_published_at_most_once_a_second_and_at_the_end);

const WAIT: Duration = Duration::from_secs(20);

/// A worker running `handler` with `retry`, ready.
async fn start(bus: &Bus, handler: ScriptedHandler, retry: RetryPolicy) -> RunningWorker {
    let config = WorkerConfig {
        names: bus.names.clone(),
        retry,
        shutdown_deadline: Duration::from_secs(10),
        // The test cluster's: its snapshot queue is where the tests' jobs wait.
        ..bus.worker_config()
    };
    RunningWorker::start(bus, config, handler, WAIT).await
}

async fn a_job_is_consumed_and_acked_once(kind: BrokerKind) {
    let bus = Bus::new(kind).await;
    let handler = ScriptedHandler::default();
    let running = start(&bus, handler.clone(), fast_retry()).await;
    let probe = bus.probe_events().await;

    let job = snapshot_job("job-once");
    submit(bus.broker.as_ref(), &bus.names, &job)
        .await
        .expect("submit");
    handler.wait_calls("job-once", 1, WAIT).await;
    bus.wait_depth(&probe, 1, WAIT).await;
    running.stop(WAIT).await;

    // Stopping closed the worker's channels: anything unacked would be back in the queue now.
    assert_eq!(
        bus.depth(&bus.snapshot_queue()).await,
        0,
        "the job was acked"
    );
    assert_eq!(
        bus.depth(&bus.names.dead_letter_queue(Stage::Snapshot))
            .await,
        0
    );
    let calls = handler.calls_for("job-once");
    assert_eq!(calls.len(), 1, "handled exactly once: {calls:?}");
    assert_eq!(calls[0].attempt, 0);
    let events = bus.drain(&probe).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].routing_key, "rp.created");
    assert_eq!(
        events[0].properties.kind.as_deref(),
        Some("event.rp.created")
    );
    assert_eq!(events[0].header_str("x-stowage-job-id"), Some("job-once"));
    bus.teardown_worker(fast_retry()).await;
}

async fn a_transient_failure_is_retried_with_growing_delays(kind: BrokerKind) {
    let bus = Bus::new(kind).await;
    let handler = ScriptedHandler::default();
    handler.set("job-flaky", Behavior::FailTransiently(3));
    let retry = fast_retry();
    let running = start(&bus, handler.clone(), retry.clone()).await;
    let probe = bus.probe_events().await;

    submit(bus.broker.as_ref(), &bus.names, &snapshot_job("job-flaky"))
        .await
        .expect("submit");
    let calls = handler.wait_calls("job-flaky", 4, WAIT).await;
    bus.wait_depth(&probe, 1, WAIT).await;
    running.stop(WAIT).await;

    assert_eq!(
        calls.iter().map(|c| c.attempt).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].at - w[0].at).collect();
    let levels: Vec<Duration> = retry.levels().collect();
    for (i, gap) in gaps.iter().enumerate() {
        // Jitter draws each delay from [level/2, level]; it may only be late, never early.
        assert!(
            *gap >= levels[i] / 2,
            "retry {i} came after {gap:?}, before its backoff floor {:?}",
            levels[i] / 2
        );
    }
    assert!(gaps[2] > gaps[0], "delays grow: {gaps:?}");
    assert_eq!(
        bus.depth(&bus.names.dead_letter_queue(Stage::Snapshot))
            .await,
        0
    );
    assert_eq!(
        bus.drain(&probe).await.len(),
        1,
        "one event for one successful job"
    );
    bus.teardown_worker(fast_retry()).await;
}

async fn a_permanent_failure_is_dead_lettered_and_replayable(kind: BrokerKind) {
    let bus = Bus::new(kind).await;
    let handler = ScriptedHandler::default();
    let reason = "instance \"shop\" does not exist; create it with `stowage instance create` first";
    handler.set("job-bad", Behavior::FailPermanently(reason.into()));
    let running = start(&bus, handler.clone(), fast_retry()).await;
    let dlq = bus.names.dead_letter_queue(Stage::Snapshot);

    let job = snapshot_job("job-bad");
    submit(bus.broker.as_ref(), &bus.names, &job)
        .await
        .expect("submit");
    bus.wait_depth(&dlq, 1, WAIT).await;
    assert_eq!(
        handler.calls_for("job-bad").len(),
        1,
        "a permanent failure is not retried"
    );

    let letters = list_dead_letters(bus.broker.as_ref(), &bus.names, Stage::Snapshot, 10)
        .await
        .expect("list");
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        letter.message_id.as_deref(),
        Some(job.message_id.to_string().as_str())
    );
    assert_eq!(letter.job_id.as_deref(), Some("job-bad"));
    assert!(
        letter.reason.contains("permanent failure") && letter.reason.contains(reason),
        "{}",
        letter.reason
    );
    assert_eq!(letter.error_chain, vec![reason.to_owned()]);
    assert_eq!(letter.attempts, Some(1));
    // Listing leaves the dead letter in place. The broker applies the requeue of a browsed
    // message asynchronously (a quorum queue commits it through Raft), so a depth read right
    // after the listing may not count it yet: wait for it.
    bus.wait_depth(&dlq, 1, WAIT).await;

    // The operator fixes the cause, then replays.
    handler.set("job-bad", Behavior::Succeed);
    let replayed = replay_dead_letters(bus.broker.as_ref(), &bus.names, Stage::Snapshot, None)
        .await
        .expect("replay");
    assert_eq!(replayed, 1);
    let calls = handler.wait_calls("job-bad", 2, WAIT).await;
    assert_eq!(calls[1].attempt, 0, "a replay starts over");
    bus.wait_depth(&dlq, 0, WAIT).await;
    running.stop(WAIT).await;
    assert_eq!(bus.depth(&bus.snapshot_queue()).await, 0);
    bus.teardown_worker(fast_retry()).await;
}

async fn malformed_and_unknown_version_messages_are_dead_lettered(kind: BrokerKind) {
    let bus = Bus::new(kind).await;
    let handler = ScriptedHandler::default();
    let running = start(&bus, handler.clone(), fast_retry()).await;
    let dlq = bus.names.dead_letter_queue(Stage::Snapshot);

    bus.publish_raw(
        b"\xc1 definitely not msgpack".to_vec(),
        "application/msgpack",
        "garbage",
    )
    .await;
    bus.publish_json("future", |job| job["schema_version"] = 99.into())
        .await;
    let xml = encode_as(&snapshot_job("xml"), ContentType::MessagePack);
    bus.publish_raw(xml, "text/xml", "xml").await;
    // Issue 13, items 3 and 7: a `../` id and a timestamp without an offset are refused at
    // decode, the reason naming the field and the rule or expected form.
    bus.publish_json("escape", |job| {
        job["message"]["payload"]["instance"] = "../../etc".into();
    })
    .await;
    bus.publish_json("naive", |job| {
        job["created_at"] = "2026-11-29T10:00:00".into();
    })
    .await;
    submit(bus.broker.as_ref(), &bus.names, &snapshot_job("job-fine"))
        .await
        .expect("submit");

    handler.wait_calls("job-fine", 1, WAIT).await;
    bus.wait_depth(&dlq, 5, WAIT).await;
    assert!(running.health.is_ready(), "the worker keeps running");
    let letters = list_dead_letters(bus.broker.as_ref(), &bus.names, Stage::Snapshot, 10)
        .await
        .expect("list");
    let reason_of = |id: &str| {
        letters
            .iter()
            .find(|l| l.message_id.as_deref() == Some(id))
            .map(|l| l.reason.clone())
            .unwrap_or_default()
    };
    assert!(
        reason_of("garbage").contains("not a valid Stowage envelope"),
        "{}",
        reason_of("garbage")
    );
    assert!(
        reason_of("future").contains("unsupported schema_version 99"),
        "{}",
        reason_of("future")
    );
    assert!(
        reason_of("xml").contains("unsupported content type"),
        "{}",
        reason_of("xml")
    );
    let escape = reason_of("escape");
    assert!(
        escape.contains("message.payload.instance: \"../../etc\" is not a valid id")
            && escape.contains(stowage_schemas::id::RULE),
        "{escape}"
    );
    let naive = reason_of("naive");
    assert!(
        naive.contains("created_at: expected an RFC 3339 timestamp with an offset")
            && naive.contains("got \"2026-11-29T10:00:00\""),
        "{naive}"
    );
    assert!(
        handler.calls_for("job-escape").is_empty() && handler.calls_for("job-naive").is_empty(),
        "a refused id or timestamp never reaches the handler"
    );
    assert!(
        handler.calls_for("job-future").is_empty(),
        "an unknown version never reaches the handler"
    );

    // The worker is still consuming after all that.
    submit(bus.broker.as_ref(), &bus.names, &snapshot_job("job-after"))
        .await
        .expect("submit");
    handler.wait_calls("job-after", 1, WAIT).await;
    running.stop(WAIT).await;
    bus.teardown_worker(fast_retry()).await;
}

async fn shutdown_drains_in_flight_work(kind: BrokerKind) {
    let bus = Bus::new(kind).await;
    let handler = ScriptedHandler::default();
    handler.set("job-slow", Behavior::Slow(Duration::from_millis(1500)));
    let running = start(&bus, handler.clone(), fast_retry()).await;
    let probe = bus.probe_events().await;

    submit(bus.broker.as_ref(), &bus.names, &snapshot_job("job-slow"))
        .await
        .expect("submit");
    handler.wait_calls("job-slow", 1, WAIT).await;
    let asked = Instant::now();
    running.stop(WAIT).await;
    assert!(
        asked.elapsed() >= Duration::from_millis(1000),
        "stop waited for the in-flight job"
    );

    assert_eq!(
        bus.depth(&probe).await,
        1,
        "the in-flight job finished and published its event"
    );
    assert_eq!(bus.depth(&bus.snapshot_queue()).await, 0, "and was acked");
    assert_eq!(handler.calls_for("job-slow").len(), 1);
    bus.teardown_worker(fast_retry()).await;
}

/// The `job.failed` events in `queue`, as (job id, attempt, permanent, will_retry), sorted.
async fn failures(bus: &Bus, queue: &str) -> Vec<(String, u32, bool, bool)> {
    let mut out = Vec::new();
    for delivery in bus.drain(queue).await {
        assert_eq!(delivery.routing_key, "job.failed");
        let envelope = decode(&delivery.body, ContentType::MessagePack).expect("event");
        let Message::JobFailed(failed) = envelope.message else {
            panic!("not job.failed: {}", envelope.kind());
        };
        assert_eq!(failed.stage, Stage::Snapshot);
        assert_eq!(failed.job_id, envelope.job_id);
        assert!(!failed.reason.is_empty() && !failed.error_chain.is_empty());
        out.push((
            failed.job_id,
            failed.attempt,
            failed.permanent,
            failed.will_retry,
        ));
    }
    out.sort();
    out
}

/// Issue 16, item 4: a retried attempt, the last attempt and a permanent failure each publish
/// `job.failed`, saying the attempt and whether another follows.
async fn every_failed_attempt_is_published_as_job_failed(kind: BrokerKind) {
    let bus = Bus::new(kind).await;
    let handler = ScriptedHandler::default();
    handler.set("job-flaky", Behavior::FailTransiently(2));
    handler.set("job-doomed", Behavior::FailTransiently(100));
    handler.set("job-bad", Behavior::FailPermanently("bad input".into()));
    let retry = fast_retry();
    let running = start(&bus, handler.clone(), retry.clone()).await;
    let failed = bus.probe_job_events().await;
    for job in ["job-flaky", "job-doomed", "job-bad"] {
        submit(bus.broker.as_ref(), &bus.names, &snapshot_job(job))
            .await
            .expect("submit");
    }
    handler.wait_calls("job-flaky", 3, WAIT).await;
    handler
        .wait_calls("job-doomed", retry.max_attempts as usize, WAIT)
        .await;
    let dlq = bus.names.dead_letter_queue(Stage::Snapshot);
    bus.wait_depth(&dlq, 2, WAIT).await;
    // 2 + 5 + 1 failed attempts.
    bus.wait_depth(&failed, 8, WAIT).await;
    running.stop(WAIT).await;

    let s = |j: &str| j.to_owned();
    assert_eq!(
        failures(&bus, &failed).await,
        vec![
            (s("job-bad"), 0, true, false),
            (s("job-doomed"), 0, false, true),
            (s("job-doomed"), 1, false, true),
            (s("job-doomed"), 2, false, true),
            (s("job-doomed"), 3, false, true),
            (s("job-doomed"), 4, false, false),
            (s("job-flaky"), 0, false, true),
            (s("job-flaky"), 1, false, true),
        ]
    );
    bus.teardown_worker(fast_retry()).await;
}

/// Issue 16, item 4: a handler reporting progress 60 times over 3 s publishes a handful of
/// `job.progress` events (at most one a second, plus the last), the last one its final value.
async fn progress_is_published_at_most_once_a_second_and_at_the_end(kind: BrokerKind) {
    let bus = Bus::new(kind).await;
    let handler = ScriptedHandler::default();
    handler.set(
        "job-busy",
        Behavior::Progress {
            reports: 60,
            every: Duration::from_millis(50),
        },
    );
    let running = start(&bus, handler.clone(), fast_retry()).await;
    let progress = bus.probe_job_events().await;
    let done = bus.probe_events().await;
    let started = Instant::now();
    submit(bus.broker.as_ref(), &bus.names, &snapshot_job("job-busy"))
        .await
        .expect("submit");
    bus.wait_depth(&done, 1, WAIT).await;
    let elapsed = started.elapsed();
    running.stop(WAIT).await;

    let mut values = Vec::new();
    for delivery in bus.drain(&progress).await {
        assert_eq!(delivery.routing_key, "job.progress");
        let envelope = decode(&delivery.body, ContentType::MessagePack).expect("event");
        let Message::JobProgress(event) = envelope.message else {
            panic!("not job.progress: {}", envelope.kind());
        };
        assert_eq!(
            (event.job_id.as_str(), event.stage),
            ("job-busy", Stage::Snapshot)
        );
        values.push(event.progress.bytes_done);
    }
    let most = elapsed.as_secs() + 2;
    assert!(
        (2..=most as usize).contains(&values.len()),
        "{} progress events in {elapsed:?} (at most one a second plus the last): {values:?}",
        values.len()
    );
    assert_eq!(
        values.first(),
        Some(&1),
        "the first report goes out at once"
    );
    assert_eq!(
        values.last(),
        Some(&60),
        "the final value goes out: {values:?}"
    );
    assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
    bus.teardown_worker(fast_retry()).await;
}
