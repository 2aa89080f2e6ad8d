//! Jobs per second of one stage scaled out over 1, 2 and 4 worker processes on RabbitMQ, as a
//! ratio to the bare broker rate measured in the same run (issue 5 §5).
//!
//! The driver re-executes this binary in a `worker` sub-mode once per replica. Each worker
//! process runs [`stowage_runtime::Worker`] with one stage whose handler simulates a job: it
//! waits `--work-ms` (a tokio sleep, standing for blob and disk I/O) or, with `--work cpu`,
//! spins a core for that long. Per round and replica count, the driver:
//!
//! 1. declares the runtime's topology under a fresh prefix (`scale-<8 hex>`),
//! 2. starts N worker processes and waits until every one reports that it is consuming (so
//!    process start-up and connection set-up are not timed), and checks the stage queue has
//!    N consumers,
//! 3. publishes M real `job.vault-transfer` envelopes (persistent, confirmed, pipelined,
//!    through the runtime's own `RabbitBroker::publish`) while the workers consume: the clock
//!    runs from the first publish until the workers have handled the last job,
//! 4. closes the workers' stdin, which shuts them down gracefully, checks the stage queue is
//!    empty (every job acked) and deletes the topology.
//!
//! Workers report on stdout: `ready` once consuming, then `handled <count>` as jobs finish.
//! Each round also measures the bare broker rate: a bare lapin consumer (prefetch
//! `--bare-prefetch`, 64 as in `broker-throughput`) acking the same envelopes one by one,
//! doing no work.
//!
//! ```sh
//! cargo run --release -p stowage-load-tests --bin scaling-bench -- --jobs 2000 --work-ms 20
//! ```

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::StreamExt as _;
use lapin::Connection;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use stowage_runtime::{
    Broker as _, JobContext, Names, Outcome, RabbitBroker, Shutdown, StageConfig, StageError,
    StageHandler, Worker, WorkerConfig,
};
use stowage_schemas::jobs::VaultTransferJob;
use stowage_schemas::{Envelope, Message, Stage};
use tokio::io::AsyncBufReadExt as _;
use tokio::process::{Child, Command};
use tokio::sync::{Notify, mpsc};

#[path = "common.rs"]
mod common;
use common::{CONFIRM_WINDOW, bare_round, connect, drain_and_delete, median, unique_names};

/// The stage every worker runs and every job targets.
const STAGE: Stage = Stage::VaultTransfer;

#[derive(Debug, Parser)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    drive: DriveArgs,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// One worker replica (started by the driver; not meant to be run by hand).
    Worker(WorkerArgs),
}

/// Settings the driver hands on to each worker process.
#[derive(Debug, Clone, Args)]
struct JobArgs {
    /// Where RabbitMQ is.
    #[command(flatten)]
    broker: common::AmqpArgs,
    /// How long each simulated job takes, in milliseconds.
    #[arg(long, default_value_t = 20)]
    work_ms: u64,
    /// What a simulated job does for that long.
    #[arg(long, value_enum, default_value_t = Work::Io)]
    work: Work,
    /// Jobs one worker process runs at once (the stage's concurrency).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Deliveries the broker may hand one worker ahead of time.
    #[arg(long, default_value_t = 8)]
    prefetch: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Work {
    /// Wait (tokio sleep): stands for blob and disk I/O; scales with concurrency.
    Io,
    /// Spin a core (on tokio's blocking pool): bounded by the machine's cores.
    Cpu,
}

#[derive(Debug, Args)]
struct DriveArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Jobs per measurement.
    #[arg(long, default_value_t = 2000)]
    jobs: u64,
    /// Messages per bare broker measurement (more than --jobs: the bare loop is fast).
    #[arg(long, default_value_t = 20_000)]
    bare_messages: u64,
    /// Prefetch of the bare consumer. The default is broker-throughput's 64: with a small
    /// prefetch one consumer is bound by acknowledgement round trips, not by the broker.
    #[arg(long, default_value_t = 64)]
    bare_prefetch: u16,
    /// Worker process counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    replicas: Vec<usize>,
    /// Rounds; each measures the bare rate, then every replica count.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Give up on a measurement that takes longer than this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

#[derive(Debug, Args)]
struct WorkerArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Topology prefix (the driver's unique one for this measurement).
    #[arg(long)]
    prefix: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.mode {
        Some(Mode::Worker(args)) => worker(args).await,
        None => drive(cli.drive).await,
    }
}

// ---------------------------------------------------------------------------------------------
// Worker process

/// A stage handler that stands for a job: waits or spins for a fixed time, then counts.
struct Simulated {
    work: Work,
    duration: Duration,
    handled: Arc<AtomicU64>,
    changed: Arc<Notify>,
}

impl StageHandler for Simulated {
    type Input = Message;

    fn stage(&self) -> Stage {
        STAGE
    }

    async fn handle(&self, _ctx: JobContext, _message: Message) -> Result<Outcome, StageError> {
        match self.work {
            Work::Io => tokio::time::sleep(self.duration).await,
            Work::Cpu => {
                let duration = self.duration;
                tokio::task::spawn_blocking(move || {
                    let until = Instant::now() + duration;
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                })
                .await
                .map_err(StageError::transient)?;
            }
        }
        self.handled.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_one();
        Ok(Outcome::done())
    }
}

/// Run one replica until stdin closes; report on stdout.
async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let handled = Arc::new(AtomicU64::new(0));
    let changed = Arc::new(Notify::new());
    let config = WorkerConfig {
        names: Names::new(args.prefix),
        ..WorkerConfig::default()
    };
    let handler = Simulated {
        work: args.job.work,
        duration: Duration::from_millis(args.job.work_ms),
        handled: handled.clone(),
        changed: changed.clone(),
    };
    let stage = StageConfig {
        prefetch: args.job.prefetch,
        concurrency: args.job.concurrency,
    };
    let worker = Worker::new(
        Arc::new(RabbitBroker::new(args.job.broker.amqp_url)),
        config,
    )
    .stage(handler, stage);
    let health = worker.health();
    // The driver stops a replica by closing its stdin (tokio here has no async stdin).
    let shutdown = Shutdown::from_future(async {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = tx.send(());
        });
        let _ = rx.await;
    });
    let run = tokio::spawn(worker.run(shutdown.clone()));
    while !health.is_ready() {
        if run.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if !run.is_finished() {
        println!("ready");
    }
    let reporter = tokio::spawn(async move {
        let mut last = 0;
        loop {
            tokio::select! {
                () = changed.notified() => {}
                () = shutdown.triggered() => return,
            }
            let now = handled.load(Ordering::Relaxed);
            if now != last {
                println!("handled {now}");
                last = now;
            }
        }
    });
    run.await
        .context("the worker task panicked")?
        .context("the worker stopped with an error")?;
    reporter.abort();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Driver

/// What a worker process said, or that it went away.
enum Report {
    Ready(usize),
    Handled(usize, u64),
    Gone(usize),
}

/// One measurement with `replicas` worker processes; returns jobs per second.
async fn replicas_round(args: &DriveArgs, replicas: usize) -> anyhow::Result<f64> {
    let job = &args.job;
    let names = unique_names("scale");
    let config = WorkerConfig {
        names: names.clone(),
        ..WorkerConfig::default()
    };
    let topology = config.topology();
    let broker = Arc::new(RabbitBroker::new(job.broker.amqp_url.clone()));
    broker
        .declare(&topology)
        .await
        .context("cannot declare the benchmark topology")?;
    let queue = names.stage_queue(STAGE);
    let (connection, _publisher) = connect(&job.broker.amqp_url).await?;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut children = Vec::new();
    for index in 0..replicas {
        children.push(spawn_worker(job, names.prefix(), index, tx.clone())?);
    }
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut ready = 0;
    while ready < replicas {
        match next_report(&mut rx, deadline).await? {
            Report::Ready(_) => ready += 1,
            Report::Handled(i, _) => anyhow::bail!("worker {i} handled a job before any was sent"),
            Report::Gone(i) => anyhow::bail!("worker {i} exited before it was consuming"),
        }
    }
    let consumers = consumer_count(&connection, &queue).await?;
    anyhow::ensure!(
        consumers == replicas as u32,
        "{queue} has {consumers} consumers, expected one per worker ({replicas})"
    );

    let envelopes: Vec<_> = (0..args.jobs).map(|i| vault_transfer(i, &names)).collect();
    let mut handled = BTreeMap::new();
    let started = Instant::now();
    let publish = {
        let broker = broker.clone();
        tokio::spawn(async move {
            let mut confirms = futures::stream::iter(envelopes)
                .map(|outgoing| broker.publish(outgoing))
                .buffer_unordered(CONFIRM_WINDOW);
            while let Some(confirmed) = confirms.next().await {
                confirmed.context("publishing a job failed")?;
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let finished = loop {
        match next_report(&mut rx, deadline).await? {
            Report::Handled(i, n) => {
                handled.insert(i, n);
                if handled.values().sum::<u64>() >= args.jobs {
                    break Instant::now();
                }
            }
            Report::Ready(i) => anyhow::bail!("worker {i} reported ready twice"),
            Report::Gone(i) => anyhow::bail!(
                "worker {i} exited with {} of {} jobs handled",
                handled.values().sum::<u64>(),
                args.jobs
            ),
        }
    };
    publish.await.context("the publisher task panicked")??;

    for (i, mut child) in children.into_iter().enumerate() {
        drop(child.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .with_context(|| format!("worker {i} did not stop within 60 s of its stdin closing"))?
            .with_context(|| format!("cannot wait for worker {i}"))?;
        anyhow::ensure!(status.success(), "worker {i} failed: {status}");
    }
    let total: u64 = handled.values().sum();
    anyhow::ensure!(
        total == args.jobs,
        "the workers handled {total} jobs, {} were sent: some ran twice",
        args.jobs
    );
    drain_and_delete(&job.broker.amqp_url, &connection, &topology, &queue).await?;
    let _ = connection.close(200, "round done".into()).await;
    Ok(args.jobs as f64 / (finished - started).as_secs_f64())
}

/// Start worker process `index` and a task that forwards its reports.
fn spawn_worker(
    job: &JobArgs,
    prefix: &str,
    index: usize,
    reports: mpsc::UnboundedSender<Report>,
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find this benchmark's own executable")?;
    let mut child = Command::new(exe)
        .arg("worker")
        .args(["--amqp-url", &job.broker.amqp_url])
        .args(["--prefix", prefix])
        .args(["--work-ms", &job.work_ms.to_string()])
        .args([
            "--work",
            job.work
                .to_possible_value()
                .expect("no skipped variants")
                .get_name(),
        ])
        .args(["--concurrency", &job.concurrency.to_string()])
        .args(["--prefetch", &job.prefetch.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start worker process {index}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let report = match line.split_once(' ') {
                None if line == "ready" => Report::Ready(index),
                Some(("handled", n)) => match n.parse() {
                    Ok(n) => Report::Handled(index, n),
                    Err(_) => continue,
                },
                _ => continue,
            };
            if reports.send(report).is_err() {
                return;
            }
        }
        let _ = reports.send(Report::Gone(index));
    });
    Ok(child)
}

async fn next_report(
    rx: &mut mpsc::UnboundedReceiver<Report>,
    deadline: Instant,
) -> anyhow::Result<Report> {
    let wait = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(wait, rx.recv()).await {
        Ok(Some(report)) => Ok(report),
        Ok(None) => anyhow::bail!("every worker process is gone"),
        Err(_) => anyhow::bail!(
            "the measurement took longer than --timeout-secs; raise it or lower --jobs"
        ),
    }
}

/// Consumers on `queue`, by a passive declare on a throwaway channel.
async fn consumer_count(connection: &Connection, queue: &str) -> anyhow::Result<u32> {
    let channel = connection.create_channel().await?;
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("cannot inspect {queue}"))?;
    let _ = channel.close(200, "inspected".into()).await;
    Ok(q.consumer_count())
}

/// Job `i`: a real `job.vault-transfer` envelope as the runtime publishes it.
fn vault_transfer(i: u64, names: &Names) -> stowage_runtime::broker::Outgoing {
    let envelope = Envelope::new(
        format!("vault-transfer-bench-rp-{i}"),
        Message::VaultTransfer(VaultTransferJob {
            instance: "bench".into(),
            recovery_point_id: format!("rp-{i}"),
        }),
    );
    stowage_runtime::envelope::outgoing(names, &envelope)
}

/// The bare broker rate with `--bare-prefetch` and an encoded job as the body.
async fn bare(args: &DriveArgs) -> anyhow::Result<f64> {
    let job = vault_transfer(0, &Names::new("bare"));
    let props = common::persistent()
        .with_content_type(job.properties.content_type.unwrap_or_default().into())
        .with_message_id(job.properties.message_id.unwrap_or_default().into());
    let (connection, publisher) = connect(&args.job.broker.amqp_url).await?;
    let rate = bare_round(
        &connection,
        &publisher,
        args.bare_messages,
        args.bare_prefetch,
        &job.body,
        &props,
    )
    .await?;
    let _ = connection.close(200, "round done".into()).await;
    Ok(rate)
}

async fn drive(args: DriveArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.jobs > 0, "--jobs must be at least 1");
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    anyhow::ensure!(
        !args.replicas.is_empty() && args.replicas.iter().all(|&n| n > 0),
        "--replicas must list worker counts of at least 1, e.g. 1,2,4"
    );
    let job = &args.job;
    let mut bare_rates = Vec::new();
    let mut rates: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for round in 1..=args.rounds {
        let b = bare(&args).await?;
        eprintln!("round {round}: bare broker          {b:>8.0} msg/s");
        bare_rates.push(b);
        for &n in &args.replicas {
            let r = replicas_round(&args, n).await?;
            eprintln!(
                "round {round}: {n} worker process(es) {r:>8.0} jobs/s ({:.1}% of bare)",
                100.0 * r / b
            );
            rates.entry(n).or_default().push(r);
        }
    }

    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let bare_median = median(&mut bare_rates.clone());
    let first = *rates.keys().next().expect("at least one replica count");
    let base = median(&mut rates[&first].clone());
    println!(
        "{} rounds; {} jobs per measurement; work {} ms ({:?}) per job; concurrency {} and \
         prefetch {} per worker process; {cores} cores",
        args.rounds, args.jobs, job.work_ms, job.work, job.concurrency, job.prefetch
    );
    println!(
        "bare broker (median): {bare_median:.0} msg/s, one consumer with prefetch {}",
        args.bare_prefetch
    );
    println!();
    println!(
        "| worker processes | jobs/s (median) | / bare broker | speed-up vs {first} | ideal jobs/s | efficiency vs ideal |"
    );
    println!("|---|---|---|---|---|---|");
    for (&n, samples) in &rates {
        let m = median(&mut samples.clone());
        // Handlers running at once, bounded by cores when the work is CPU.
        let parallel = match job.work {
            Work::Io => n * job.concurrency,
            Work::Cpu => (n * job.concurrency).min(cores),
        };
        let (ideal, efficiency) = if job.work_ms == 0 {
            ("—".to_owned(), "—".to_owned())
        } else {
            let ideal = parallel as f64 * 1000.0 / job.work_ms as f64;
            (format!("{ideal:.0}"), format!("{:.0}%", 100.0 * m / ideal))
        };
        println!(
            "| {n} | {m:.0} | {:.1}% | {:.2}× | {ideal} | {efficiency} |",
            100.0 * m / bare_median,
            m / base
        );
    }
    println!();
    println!("rounds: bare {bare_rates:.0?}");
    for (n, samples) in &rates {
        println!("rounds: {n} worker process(es) {samples:.0?}");
    }
    Ok(())
}
