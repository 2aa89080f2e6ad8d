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
    /// Run the instances' scheduled restore drills (`stowage drill schedule`) with this
    /// kubeconfig: the identity that reads what a drill restored and deletes it afterwards (it
    /// needs delete rights on namespaces and PVs; the restore workers' account has none).
    /// Drills also need the vault key and --disk-root. Without it no drill runs; the drill
    /// gauges at /metrics are kept either way.
    #[arg(long, env = "STOWAGE_DRILL_KUBECONFIG", value_name = "PATH")]
    pub drill_kubeconfig: Option<std::path::PathBuf>,
    /// Address of the /livez and /metrics endpoints: loopback (127.0.0.1:8080) by default, all interfaces
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
    // Drills: the gauges from the vault's drill records every tick, and the due drills run
    // one after the other, beside the backup schedule (a long drill delays no backup).
    {
        let (vault, broker) = (args.vault.clone(), args.broker.clone());
        let (kubeconfig, tick) = (args.drill_kubeconfig.clone(), args.tick_seconds);
        let (store, shutdown) = (store.clone(), shutdown.clone());
        let who = format!("scheduler {identity}");
        tokio::spawn(async move {
            loop {
                if let Err(e) = crate::drill_cmd::refresh_metrics(&store).await {
                    tracing::warn!(error = format!("{e:#}"), "cannot read the drill records");
                }
                if let Some(kubeconfig) = &kubeconfig
                    && let Err(e) = crate::drill_cmd::run_due(
                        &vault,
                        &broker,
                        kubeconfig,
                        &who,
                        Timestamp::now(),
                    )
                    .await
                {
                    tracing::warn!(error = format!("{e:#}"), "cannot run the scheduled drills");
                }
                tokio::select! {
                    () = shutdown.triggered() => return,
                    () = tokio::time::sleep(Duration::from_secs(tick)) => {}
                }
            }
        });
    }
    scheduler
        .run(
            Timestamp::now,
            Duration::from_secs(args.tick_seconds),
            shutdown,
        )
        .await;
    Ok(())
}
