//! Faults on the real RabbitMQ: a worker process killed with SIGKILL mid-job, a worker process
//! stopped with SIGTERM mid-job, and the broker itself stopped and started under a worker.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stowage_runtime::client::submit;
use stowage_runtime::{RetryPolicy, WorkerConfig};
use stowage_tests::{
    Behavior, BrokerKind, Bus, FileEffectHandler, RunningWorker, ScriptedHandler, exclusive_broker,
    fast_retry, free_port, http_get, rabbitmqctl, shared_broker, snapshot_job, temp_dir,
    wait_until,
};

const WAIT: Duration = Duration::from_secs(30);

/// A `stowage-test-worker` process; killed if the test ends without stopping it.
struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    fn spawn(bus: &Bus, dir: &Path, delay: Duration, health_port: u16) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_stowage-test-worker"))
            .env("STOWAGE_HEALTH_ADDR", format!("127.0.0.1:{health_port}"))
            .env("STOWAGE_TOPOLOGY_PREFIX", bus.names.prefix())
            .env("STOWAGE_TEST_DIR", dir)
            .env("STOWAGE_TEST_DELAY_MS", delay.as_millis().to_string())
            .env("STOWAGE_SHUTDOWN_DEADLINE_MS", "15000")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn stowage-test-worker");
        Self { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    fn sigterm(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker process did not exit within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines of the call log, split into words.
fn call_log(dir: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(FileEffectHandler::log_path(dir))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

async fn wait_log(dir: &Path, what: &str, job: &str, count: usize) -> Vec<Vec<String>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = call_log(dir);
        if log.iter().filter(|l| l[0] == what && l[1] == job).count() >= count {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {count}× `{what} {job}` in the call log within {WAIT:?}: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_loses_nothing_and_duplicates_nothing() {
    let _gate = shared_broker().await;
    let bus = Bus::new(BrokerKind::Rabbit).await;
    let dir = temp_dir("sigkill");
    let stage_queue = bus.snapshot_queue();
    declare(&bus).await;
    let probe = bus.probe_events().await;
    let mut first = WorkerProcess::spawn(&bus, &dir, Duration::from_secs(3), free_port());

    submit(bus.broker.as_ref(), &bus.names, &snapshot_job("job-killed"))
        .await
        .expect("submit");
    wait_log(&dir, "start", "job-killed", 1).await;
    first.sigkill();

    let mut second = WorkerProcess::spawn(&bus, &dir, Duration::from_millis(100), free_port());
    let log = wait_log(&dir, "done", "job-killed", 1).await;
    bus.wait_depth(&probe, 1, WAIT).await;
    second.sigterm();
    assert!(second.wait_exit().await.success());

    let starts: Vec<_> = log.iter().filter(|l| l[0] == "start").collect();
    assert_eq!(
        starts.len(),
        2,
        "started by the killed worker, then once more: {log:?}"
    );
    assert_eq!(starts[0][3], first.pid().to_string());
    assert_eq!(starts[1][3], second.pid().to_string());
    assert_eq!(
        starts[1][4], "true",
        "the broker flags the second delivery as a redelivery"
    );
    assert_eq!(
        log.iter().filter(|l| l[0] == "done").count(),
        1,
        "finished once: {log:?}"
    );
    let effect = std::fs::read_to_string(FileEffectHandler::effect_path(&dir, "job-killed"))
        .expect("effect exists");
    assert_eq!(effect.lines().count(), 1, "one effect, not two");
    assert_eq!(bus.depth(&stage_queue).await, 0, "acked");
    assert_eq!(bus.drain(&probe).await.len(), 1, "one event");
    bus.teardown_worker(RetryPolicy::default()).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work_then_exits() {
    let _gate = shared_broker().await;
    let bus = Bus::new(BrokerKind::Rabbit).await;
    let dir = temp_dir("sigterm");
    let port = free_port();
    let mut worker = WorkerProcess::spawn(&bus, &dir, Duration::from_secs(2), port);
    let stage_queue = bus.snapshot_queue();
    let deadline = Instant::now() + WAIT;
    loop {
        match http_get(port, "/readyz").await {
            Some((200, body)) => {
                assert!(body.contains("\"snapshot\":\"consuming\""), "{body}");
                break;
            }
            Some((503, _)) | None => {}
            Some(other) => panic!("unexpected /readyz answer {other:?}"),
        }
        assert!(Instant::now() < deadline, "the worker never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http_get(port, "/livez").await.map(|r| r.0), Some(200));
    let probe = bus.probe_events().await;

    submit(
        bus.broker.as_ref(),
        &bus.names,
        &snapshot_job("job-draining"),
    )
    .await
    .expect("submit");
    wait_log(&dir, "start", "job-draining", 1).await;
    worker.sigterm();
    let status = worker.wait_exit().await;
    assert!(status.success(), "clean exit after draining: {status}");

    let log = call_log(&dir);
    assert_eq!(
        log.iter()
            .filter(|l| l[0] == "done" && l[1] == "job-draining")
            .count(),
        1,
        "finished before exit: {log:?}"
    );
    assert!(FileEffectHandler::effect_path(&dir, "job-draining").exists());
    assert_eq!(
        bus.depth(&stage_queue).await,
        0,
        "acked before exit, not handed back"
    );
    assert_eq!(
        bus.depth(&probe).await,
        1,
        "its event was published before exit"
    );
    bus.teardown_worker(RetryPolicy::default()).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Declare the topology the worker processes use, so jobs can be submitted before they start.
async fn declare(bus: &Bus) {
    let config = bus.worker_config();
    bus.broker
        .declare(&config.topology())
        .await
        .expect("declare topology");
}

pub(crate) struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_reconnects_after_the_broker_restarts() {
    let _gate = exclusive_broker().await;
    let bus = Bus::new(BrokerKind::Rabbit).await;
    let handler = ScriptedHandler::default();
    let retry = fast_retry();
    let config = WorkerConfig {
        names: bus.names.clone(),
        retry: retry.clone(),
        max_reconnect_delay: Duration::from_secs(1),
        // The test cluster's: its snapshot queue is where the tests' jobs wait.
        ..bus.worker_config()
    };
    let running = RunningWorker::start(&bus, config, handler.clone(), WAIT).await;
    let health = &running.health;
    let probe = bus.probe_events().await;

    submit(bus.broker.as_ref(), &bus.names, &snapshot_job("job-before"))
        .await
        .expect("submit");
    handler.wait_calls("job-before", 1, WAIT).await;

    // A job in flight when the broker goes away: its ack is lost with the connection.
    handler.set("job-during", Behavior::Slow(Duration::from_secs(2)));
    submit(bus.broker.as_ref(), &bus.names, &snapshot_job("job-during"))
        .await
        .expect("submit");
    handler.wait_calls("job-during", 1, WAIT).await;
    // If anything below fails, still bring the broker back for the tests that follow.
    let _restart = RestartOnDrop;
    rabbitmqctl(&["stop_app"]);
    wait_until("the worker notices the broker is gone", WAIT, || {
        !health.is_ready()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    wait_until("the worker is consuming again", WAIT, || health.is_ready()).await;

    submit(bus.broker.as_ref(), &bus.names, &snapshot_job("job-after"))
        .await
        .expect("submit after restart");
    handler.wait_calls("job-after", 1, WAIT).await;
    // The interrupted job comes back and completes; its event is published once, not lost.
    handler.wait_calls("job-during", 2, WAIT).await;
    bus.wait_depth(&probe, 3, WAIT).await;
    running.stop(WAIT).await;

    let events = bus.drain(&probe).await;
    let jobs: Vec<_> = events
        .iter()
        .filter_map(|e| e.header_str("x-stowage-job-id"))
        .collect();
    assert_eq!(
        jobs.iter().filter(|j| **j == "job-during").count(),
        1,
        "one event for the interrupted job: {jobs:?}"
    );
    assert_eq!(handler.calls_for("job-after").len(), 1);
    assert_eq!(bus.depth(&bus.snapshot_queue()).await, 0);
    bus.teardown_worker(retry).await;
}
