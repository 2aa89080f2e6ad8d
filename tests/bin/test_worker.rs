//! A worker process for the fault-injection tests: the real runtime on RabbitMQ, running the
//! [`FileEffectHandler`] test stage, configured through environment variables:
//! `STOWAGE_AMQP_URL`, `STOWAGE_TOPOLOGY_PREFIX`, `STOWAGE_TEST_DIR`, `STOWAGE_TEST_DELAY_MS`,
//! `STOWAGE_SHUTDOWN_DEADLINE_MS`, `STOWAGE_HEALTH_ADDR`.

use std::sync::Arc;
use std::time::Duration;

use stowage_runtime::{
    Names, RabbitBroker, Shutdown, StageConfig, Worker, WorkerConfig, health, shutdown,
};
use stowage_tests::FileEffectHandler;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set"))
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let delay = Duration::from_millis(env("STOWAGE_TEST_DELAY_MS").parse().expect("delay in ms"));
    let deadline = Duration::from_millis(
        std::env::var("STOWAGE_SHUTDOWN_DEADLINE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30_000),
    );
    let config = WorkerConfig {
        names: Names::new(env("STOWAGE_TOPOLOGY_PREFIX")),
        // Its stage is the snapshot stage, whose jobs wait in one cluster's queue.
        cluster: Some(stowage_tests::TEST_CLUSTER.into()),
        shutdown_deadline: deadline,
        ..WorkerConfig::default()
    };
    let handler = FileEffectHandler {
        dir: env("STOWAGE_TEST_DIR").into(),
        delay,
    };
    let worker = Worker::new(
        Arc::new(RabbitBroker::new(stowage_tests::amqp_url())),
        config,
    )
    .stage(
        handler,
        StageConfig {
            prefetch: 4,
            concurrency: 2,
        },
    );
    let shutdown = Shutdown::from_future(shutdown::signal());
    if let Ok(addr) = std::env::var("STOWAGE_HEALTH_ADDR") {
        let listener = health::bind(addr.parse().expect("health address"))
            .await
            .expect("bind health");
        tokio::spawn(health::serve(listener, worker.health(), shutdown.clone()));
    }
    worker.run(shutdown).await.expect("worker");
}
