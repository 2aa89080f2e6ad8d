//! Messages per second through one no-op stage of the Stowage runtime on RabbitMQ, against a
//! bare lapin publish/consume loop in the same run.
//!
//! Both sides: persistent ~1 KiB messages into a durable quorum queue, published through one
//! lapin channel with publisher confirms (pipelined), consumed with the same prefetch and acked
//! one by one. The clock runs from the first publish until the consumer has handled the last
//! message. Rounds alternate (bare, runtime, bare, runtime, …) so drift on a noisy machine hits
//! both; the report gives each round and the ratio of medians.
//!
//! ```sh
//! cargo run --release -p stowage-load-tests --bin broker-throughput -- --messages 20000
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use lapin::{BasicProperties, Channel, Connection};
use stowage_runtime::{
    JobContext, Names, Outcome, RabbitBroker, Shutdown, StageConfig, StageError, StageHandler,
    Worker, WorkerConfig,
};
use stowage_schemas::jobs::{SnapshotJob, Trigger};
use stowage_schemas::{Envelope, Message, Stage, encode};

#[path = "common.rs"]
mod common;
use common::{bare_round, connect, drain_and_delete, median, persistent, publish_all};

#[derive(Debug, Parser)]
struct Args {
    /// Where RabbitMQ is.
    #[command(flatten)]
    broker: common::AmqpArgs,
    /// Messages per round.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Message size in bytes (the runtime's envelopes are padded to it).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Prefetch on both sides; also the runtime stage's concurrency.
    #[arg(long, default_value_t = 64)]
    prefetch: u16,
    /// Rounds of each (alternating).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut bare = Vec::new();
    let mut runtime = Vec::new();
    for round in 1..=args.rounds {
        // Each side of each round gets a fresh connection (see `common::connect`).
        let (connection, publisher) = connect(&args.broker.amqp_url).await?;
        let body = vec![0x5au8; args.size];
        let b = bare_round(
            &connection,
            &publisher,
            args.messages,
            args.prefetch,
            &body,
            &persistent(),
        )
        .await?;
        let _ = connection.close(200, "round done".into()).await;
        eprintln!("round {round}: bare lapin     {b:>9.0} msg/s");
        let (connection, publisher) = connect(&args.broker.amqp_url).await?;
        let r = runtime_round(&connection, &publisher, &args).await?;
        let _ = connection.close(200, "round done".into()).await;
        eprintln!(
            "round {round}: stowage runtime {r:>9.0} msg/s  ({:.0}% of bare)",
            100.0 * r / b
        );
        bare.push(b);
        runtime.push(r);
    }
    let (mb, mr) = (median(&mut bare), median(&mut runtime));
    println!(
        "| messages/round | size | prefetch | bare lapin (median msg/s) | runtime no-op stage (median msg/s) | runtime / bare |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {} B | {} | {mb:.0} | {mr:.0} | {:.0}% |",
        args.messages,
        args.size,
        args.prefetch,
        100.0 * mr / mb
    );
    println!("rounds: bare {bare:.0?}, runtime {runtime:.0?}");
    Ok(())
}

/// A stage that does nothing but count.
struct NoOp {
    handled: Arc<AtomicU64>,
}

impl StageHandler for NoOp {
    type Input = Message;

    fn stage(&self) -> Stage {
        Stage::Snapshot
    }

    async fn handle(&self, _ctx: JobContext, _message: Message) -> Result<Outcome, StageError> {
        self.handled.fetch_add(1, Ordering::Relaxed);
        Ok(Outcome::done())
    }
}

/// The cluster the benchmark's snapshot worker serves and its jobs name.
const BENCH_CLUSTER: &str = "bench";

fn padded_job(i: u64, size: usize) -> Envelope {
    let job = |instance: String| {
        Envelope::new(
            format!("bench-{i}"),
            Message::Snapshot(SnapshotJob {
                instance,
                recovery_point_id: format!("rp-{i}"),
                trigger: Trigger::OnDemand { requested_by: None },
            }),
        )
        .on_cluster(BENCH_CLUSTER)
    };
    let bare = encode(&job(String::new())).len();
    job("x".repeat(size.saturating_sub(bare)))
}

async fn runtime_round(
    connection: &Connection,
    publisher: &Channel,
    args: &Args,
) -> anyhow::Result<f64> {
    let names = common::unique_names("bench");
    let config = WorkerConfig {
        names: names.clone(),
        cluster: Some(BENCH_CLUSTER.into()),
        ..WorkerConfig::default()
    };
    let topology = config.topology();
    let handled = Arc::new(AtomicU64::new(0));
    let stage = StageConfig {
        prefetch: args.prefetch,
        concurrency: usize::from(args.prefetch),
    };
    let worker = Worker::new(
        Arc::new(RabbitBroker::new(args.broker.amqp_url.clone())),
        config,
    )
    .stage(
        NoOp {
            handled: handled.clone(),
        },
        stage,
    );
    let health = worker.health();
    let (trigger, shutdown) = Shutdown::new();
    let task = tokio::spawn(worker.run(shutdown));
    while !health.is_ready() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let n = args.messages;
    let envelopes: Vec<(Vec<u8>, BasicProperties)> = (0..n)
        .map(|i| {
            let env = padded_job(i, args.size);
            let props = persistent()
                .with_content_type("application/msgpack".into())
                .with_message_id(env.message_id.to_string().into());
            (encode(&env), props)
        })
        .collect();
    let started = Instant::now();
    publish_all(
        publisher,
        &names.jobs_exchange(),
        &Names::job_routing_key(Stage::Snapshot, Some(BENCH_CLUSTER)),
        envelopes.into_iter(),
    )
    .await?;
    while handled.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    trigger.trigger();
    task.await??;

    // Every message was acked: none came back when the worker's channels closed.
    drain_and_delete(
        &args.broker.amqp_url,
        connection,
        &topology,
        &names.cluster_queue(Stage::Snapshot, BENCH_CLUSTER),
    )
    .await?;
    Ok(n as f64 / elapsed.as_secs_f64())
}
