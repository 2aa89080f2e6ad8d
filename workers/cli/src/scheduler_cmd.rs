//! `stowage scheduler`: triggers the scheduled backups of every instance of a vault until
//! SIGTERM or Ctrl-C (see [`stowage_control::scheduler`] for slots, windows and why running
//! several at once is safe).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use jiff::{SignedDuration, Timestamp};
use stowage_control::scheduler::Scheduler;
use stowage_runtime::{
    Broker, Health, Names, RabbitBroker, RetryPolicy, Shutdown, Topology, health, shutdown,
};

use crate::catalog_cmd::vault_store;
use crate::cli::{BrokerArgs, VaultArgs};

/// `stowage scheduler`.
#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// Broker settings.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Where the vault is.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Minutes after its slot a scheduled backup may still start.
    #[arg(long, env = "STOWAGE_SCHEDULER_WINDOW_MINUTES", default_value_t = 120)]
    pub window_minutes: u32,
    /// Seconds between looks at the schedules.
    #[arg(long, env = "STOWAGE_SCHEDULER_TICK_SECONDS", default_value_t = 30)]
    pub tick_seconds: u64,
    /// Who this scheduler is, for job records (default: the host name).
    #[arg(long, env = "STOWAGE_SCHEDULER_ID")]
    pub identity: Option<String>,
    /// Address of the /livez endpoint: loopback (127.0.0.1:8080) by default, all interfaces
    /// (0.0.0.0:8080) inside Kubernetes (KUBERNETES_SERVICE_HOST set).
    #[arg(long, env = "STOWAGE_HEALTH_ADDR", default_value_t = crate::cli::default_health_addr())]
    pub health_addr: SocketAddr,
}

/// Run the scheduler until a shutdown signal.
pub async fn run(args: SchedulerArgs) -> anyhow::Result<()> {
    if args.window_minutes == 0 || args.tick_seconds == 0 {
        bail!(
            "--window-minutes and --tick-seconds must be at least 1 (the window should be \
             several ticks long, e.g. 120 minutes with 30-second ticks)"
        );
    }
    if u64::from(args.window_minutes) * 60 < args.tick_seconds * 2 {
        bail!(
            "--window-minutes {} is shorter than two ticks of {} s: slots could be missed; \
             lengthen the window or tick more often",
            args.window_minutes,
            args.tick_seconds
        );
    }
    let store = vault_store(&args.vault)?;
    let names = Names::new(args.broker.prefix.clone());
    let broker: Arc<dyn Broker> = Arc::new(RabbitBroker::new(args.broker.amqp_url.clone()));
    broker
        .declare(&Topology::new(names.clone(), &RetryPolicy::default()))
        .await?;
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "scheduler".into());
    let scheduler = Scheduler::new(store.clone(), broker, names)
        .with_window(SignedDuration::from_mins(i64::from(args.window_minutes)))
        .with_identity(format!("scheduler {identity}"));
    let shutdown = Shutdown::from_future(shutdown::signal());
    // Liveness only: the scheduler serves no traffic, so /readyz (which reports consuming
    // stages) is not meaningful for it.
    let listener = health::bind(args.health_addr).await?;
    tokio::spawn(health::serve(listener, Health::default(), shutdown.clone()));
    tracing::info!(
        vault = %store,
        window_minutes = args.window_minutes,
        tick_seconds = args.tick_seconds,
        "scheduler started"
    );
    scheduler
        .run(
            Timestamp::now,
            Duration::from_secs(args.tick_seconds),
            shutdown,
        )
        .await;
    Ok(())
}
