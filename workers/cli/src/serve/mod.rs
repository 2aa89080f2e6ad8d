//! `stowage serve`: the scheduler, every stage and the HTTP API in one process (see
//! ARCHITECTURE.md, "stowage serve and the HTTP API").
//!
//! | module | what |
//! |---|---|
//! | [`api`] | the JSON API (`schemas/openapi.yaml`), over the existing command code |
//! | [`ui`] | the Backup center's static assets at `/` and `/ui/*` |
//! | [`client`] | `--server URL`: the CLI commands that call the API instead of the vault |

pub mod api;
pub mod client;
pub mod ui;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use jiff::Timestamp;
use stowage_control::scheduler::Scheduler;
use stowage_disk::LocalDiskProvider;
use stowage_runtime::{
    Broker, InProcessBroker, Names, RabbitBroker, RetryPolicy, Shutdown, StageConfig, Topology,
    Worker, WorkerConfig, shutdown,
};
use stowage_schemas::Stage;
use stowage_stages::{ClusterContext, VaultContext};
use stowage_vault::catalog::settings;
use stowage_vault::crypto::VaultKey;
use stowage_vault::store::{BlobStore, LocalDurability};

use crate::cli::{ClusterArgs, VaultArgs};
use crate::{stages, vault_config};

/// The address `stowage serve` listens on by default (loopback).
pub const DEFAULT_ADDR: &str = "127.0.0.1:8480";

/// `stowage serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the API (and the Backup center). Anything but loopback needs a token
    /// (--token-file or STOWAGE_API_TOKEN).
    #[arg(long, env = "STOWAGE_SERVE_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: SocketAddr,
    /// Front a RabbitMQ fleet: run the scheduler and the API only, the stages run in their own
    /// workers (`stowage worker`). Without it every stage runs here, over the in-process broker.
    #[arg(long, env = "STOWAGE_SERVE_AMQP_URL", value_name = "URL")]
    pub amqp_url: Option<stowage_runtime::AmqpUrl>,
    /// Prefix of the broker's exchanges and queues.
    #[arg(long, env = "STOWAGE_TOPOLOGY_PREFIX", default_value = stowage_runtime::topology::DEFAULT_PREFIX)]
    pub prefix: String,
    /// Where the vault is, its key, the disks.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// The cluster the snapshot and restore stages (and restore plans) work on.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Try Stowage out: start the sandbox Kubernetes API server with the sample application
    /// in this process (cluster `sandbox`), and on first start make a demo vault under --dir
    /// (vault `demo`, policy `daily`, instance `shop`), its key in <dir>/vault.key.
    #[arg(long)]
    pub sandbox: bool,
    /// With --sandbox: the folder holding the vault, its secondary, the disks and the key.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "stowage-serve",
        requires = "sandbox"
    )]
    pub dir: PathBuf,
    /// With --sandbox, on first start: the size of the shop's database disk in MiB (a
    /// multiple of 4), half of it filled with data; the default is the demo's 64.
    #[arg(long, value_name = "MIB", default_value_t = 64, requires = "sandbox")]
    pub sample_disk_mib: u64,
    /// Seconds between the scheduler's looks at the schedules.
    #[arg(long, env = "STOWAGE_SCHEDULER_TICK_SECONDS", default_value_t = 30)]
    pub tick_seconds: u64,
    /// Attempts per job before it is dead-lettered.
    #[arg(long, env = "STOWAGE_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// Handlings of one message that may die with the process before it is refused as poison
    /// (a job that crashes the process every time stops being resubmitted).
    #[arg(long, env = "STOWAGE_POISON_LIMIT", default_value_t = stowage_control::job_records::POISON_LIMIT)]
    pub poison_limit: u32,
}

/// What the API serves from: the vault, the broker, and how to reach the cluster.
#[derive(Clone)]
pub struct Served {
    /// The vault's primary storage, keyed (it reads recovery points).
    pub store: BlobStore,
    /// The secondary storage, keyed, when the vault is geo-redundant.
    pub secondary: Option<BlobStore>,
    /// The broker jobs are published to.
    pub broker: Arc<dyn Broker>,
    /// Its topology names.
    pub names: Names,
    /// A client for restore plans on the instances' cluster, with its name, when known.
    pub plan_cluster: Option<(String, kube::Client, String)>,
    /// Server facts (`GET /api/v1/info`).
    pub info: api::Info,
    /// The bearer token, if any.
    pub token: Option<String>,
}

/// The API token: `--token-file` (first line), else `STOWAGE_API_TOKEN`.
pub fn token(token_file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    if let Some(path) = token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the API token from {}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim().to_owned();
        if token.is_empty() {
            bail!("the API token file {} is empty", path.display());
        }
        return Ok(Some(token));
    }
    Ok(std::env::var("STOWAGE_API_TOKEN")
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty()))
}

/// Run `stowage serve` until SIGTERM or Ctrl-C.
pub async fn run(args: ServeArgs, token_file: Option<PathBuf>) -> anyhow::Result<()> {
    let token = token(token_file.as_deref())?;
    if token.is_none() && !args.addr.ip().is_loopback() {
        bail!(
            "refusing to serve the API on {} without a token: anyone who reaches it could run \
             and restore backups. Give a token (--token-file <file> or STOWAGE_API_TOKEN), or \
             listen on loopback (--addr 127.0.0.1:8480) and reach it through a tunnel",
            args.addr
        );
    }
    let names = Names::new(args.prefix.clone());
    let in_process = args.amqp_url.is_none();
    let broker: Arc<dyn Broker> = match &args.amqp_url {
        Some(url) => Arc::new(RabbitBroker::new(url.clone())),
        None => Arc::new(InProcessBroker::new()),
    };
    let (trigger, shutdown) = Shutdown::new();
    tokio::spawn(async move {
        shutdown::signal().await;
        trigger.trigger();
    });

    // The vault, the disks and the cluster.
    let mut sandbox_handle = None;
    let (store, secondary, vault_ctx, cluster_ctx, plan_cluster, location, secondary_location) =
        if args.sandbox {
            let s = sandbox_setup(&args).await?;
            sandbox_handle = Some(s.handle);
            (
                s.vault.primary.clone(),
                s.vault.secondary.as_ref().map(|x| x.store.clone()),
                Some(s.vault),
                Some(s.cluster),
                Some(s.plan),
                s.location,
                s.secondary_location,
            )
        } else {
            let Some(location) = args.vault.vault.clone() else {
                bail!(
                    "say where the vault is: --vault (a folder, azurite://<container> or \
                     azure://<account>/<container>), or try Stowage out with --sandbox"
                );
            };
            let (store, secondary) = crate::rp_cmd::stores(&args.vault).await?;
            let vault_ctx = if in_process {
                vault_config::vault_context(&args.vault).await?
            } else {
                None
            };
            let cluster_ctx = if in_process {
                vault_config::cluster_context(
                    &args.cluster,
                    vault_ctx.as_ref(),
                    args.vault.disk_provider,
                )
                .await?
            } else {
                None
            };
            let plan = match crate::kube_config::cluster_client(&args.cluster).await? {
                Some(found) => {
                    let name = args.cluster.cluster_name.clone().unwrap_or_default();
                    Some((
                        name,
                        found.client,
                        format!("{}, {}", found.url, found.source),
                    ))
                }
                None => None,
            };
            (
                store,
                secondary,
                vault_ctx,
                cluster_ctx,
                plan,
                location,
                args.vault.secondary.clone(),
            )
        };

    // The stages, in this process over the in-process broker.
    let mut stages_here = Vec::new();
    let mut worker_task = None;
    if in_process {
        let services = stages::Services {
            vault: vault_ctx,
            cluster: cluster_ctx.clone(),
            records: stowage_control::RecordSettings {
                max_attempts: args.max_attempts.max(1),
                poison_limit: args.poison_limit,
                ..Default::default()
            },
        };
        let config = WorkerConfig {
            names: names.clone(),
            retry: RetryPolicy {
                max_attempts: args.max_attempts.max(1),
                ..RetryPolicy::default()
            },
            cluster: cluster_ctx.as_ref().map(|c| c.default_cluster().to_owned()),
            ..WorkerConfig::default()
        };
        let mut worker = Worker::new(broker.clone(), config);
        for stage in stages::built() {
            if matches!(stage, Stage::Snapshot | Stage::Restore) && cluster_ctx.is_none() {
                tracing::warn!(
                    %stage,
                    "no cluster credentials: the {stage} stage does not run here (give \
                     --kubeconfig and --cluster-name, or --sandbox)"
                );
                continue;
            }
            worker = stages::add(worker, stage, StageConfig::default(), &services)?;
            stages_here.push(stage);
        }
        let health = worker.health();
        worker_task = Some(tokio::spawn(worker.run(shutdown.clone())));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !health.is_ready() {
            if tokio::time::Instant::now() > deadline {
                bail!("the in-process stages did not start within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    } else {
        broker
            .declare(&Topology::new(names.clone(), &RetryPolicy::default()))
            .await
            .context("cannot declare the topology on the broker")?;
    }

    // Jobs the last run of this process left unfinished: their queues died with it.
    let mut recovered = Vec::new();
    if in_process {
        let report = stowage_control::recovery::recover(&store, broker.as_ref(), &names).await;
        for line in &report.failed {
            tracing::warn!(job = %line, "a job interrupted by the restart cannot be resubmitted; marked failed");
        }
        for line in &report.errors {
            tracing::warn!(error = %line, "a job could not be resubmitted now");
        }
        if !report.resubmitted.is_empty() {
            tracing::info!(jobs = ?report.resubmitted, "resubmitted the jobs the last run left unfinished");
        }
        recovered = report.resubmitted;
    }

    // The scheduler: the same tick as `stowage scheduler`.
    let scheduler = Scheduler::new(store.clone(), broker.clone(), names.clone())
        .with_identity(format!("serve {}", hostname()));
    let scheduler_task = {
        let shutdown = shutdown.clone();
        let tick = Duration::from_secs(args.tick_seconds.max(1));
        tokio::spawn(async move { scheduler.run(Timestamp::now, tick, shutdown).await })
    };

    let served = Served {
        store,
        secondary,
        broker: broker.clone(),
        names,
        plan_cluster,
        info: api::Info {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            broker: if in_process {
                "in-process".to_owned()
            } else {
                broker.endpoint()
            },
            vault: location,
            secondary: secondary_location,
            stages: stages_here,
            cluster: cluster_ctx.as_ref().map(|c| c.default_cluster().to_owned()),
            recovered_jobs: recovered,
        },
        token,
    };
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let local = listener.local_addr()?;
    eprintln!(
        "stowage serve: API on http://{local}/api/v1 (OpenAPI: schemas/openapi.yaml), Backup \
         center on http://{local}/; broker {}; vault {}{}",
        served.info.broker,
        served.info.vault,
        if served.token.is_some() {
            "; bearer token required"
        } else {
            ""
        }
    );
    let app = api::router(served).merge(ui::router());
    axum::serve(listener, app)
        .with_graceful_shutdown({
            let shutdown = shutdown.clone();
            async move { shutdown.triggered().await }
        })
        .await?;
    scheduler_task.await.ok();
    if let Some(task) = worker_task {
        task.await??;
    }
    if let Some(handle) = sandbox_handle {
        handle.shutdown().await;
    }
    Ok(())
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

struct SandboxSetup {
    handle: stowage_sandbox::SandboxHandle,
    vault: VaultContext,
    cluster: ClusterContext,
    plan: (String, kube::Client, String),
    location: String,
    secondary_location: Option<String>,
}

/// `--sandbox`: the sandbox cluster with the sample app, and the demo vault under `--dir`
/// (made on first start, reopened after).
async fn sandbox_setup(args: &ServeArgs) -> anyhow::Result<SandboxSetup> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let location = args
        .vault
        .vault
        .clone()
        .unwrap_or_else(|| dir.join("vault").display().to_string());
    let secondary_location = args
        .vault
        .secondary
        .clone()
        .unwrap_or_else(|| dir.join("secondary").display().to_string());
    let open = |at: &str| -> anyhow::Result<BlobStore> {
        if at.contains("://") {
            vault_config::open_store(at)
        } else {
            Ok(BlobStore::local_folder(at, LocalDurability::Fsync)?)
        }
    };
    let (primary, secondary) = (open(&location)?, open(&secondary_location)?);
    let key_file = args
        .vault
        .vault_key_file
        .clone()
        .unwrap_or_else(|| dir.join("vault.key"));
    let disk_root = args
        .vault
        .disk_root
        .clone()
        .unwrap_or_else(|| dir.join("disks"));
    let disks = Arc::new(LocalDiskProvider::open(&disk_root)?);
    let fresh = match settings::read_vault(&primary).await {
        Ok(_) => false,
        Err(e) if e.is_not_found() => true,
        Err(e) => return Err(e).context("cannot read the vault's settings"),
    };
    let key = if fresh {
        let operator_key = VaultKey::generate()?;
        std::fs::write(&key_file, operator_key.expose_secret_hex())
            .with_context(|| format!("cannot save the vault key to {}", key_file.display()))?;
        let key = crate::demo::init_demo_vault(
            &primary,
            &secondary,
            &operator_key,
            location.clone(),
            secondary_location.clone(),
        )
        .await?;
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        let mib = args.sample_disk_mib.max(4).div_ceil(4) * 4;
        crate::demo::create_sample_disks_sized(&disks, &mut rng, mib << 20).await?;
        eprintln!(
            "stowage serve --sandbox: made a demo vault at {location} (key in {}), policy \
             daily, instance shop; sample disks in {}",
            key_file.display(),
            disk_root.display()
        );
        key
    } else {
        let text = std::fs::read_to_string(&key_file)
            .with_context(|| format!("cannot read the vault key from {}", key_file.display()))?;
        let operator_key = VaultKey::from_hex(text.trim())
            .with_context(|| format!("{} does not hold a vault key", key_file.display()))?;
        vault_config::unlock(&primary, &operator_key)
            .await?
            .data_key
    };
    let (primary, secondary) = (primary.with_key(&key), secondary.with_key(&key));
    let vault =
        VaultContext::new(primary.clone(), key, disks.clone()).with_secondary(secondary.clone());
    let sandbox = stowage_sandbox::Sandbox::new();
    sandbox.load_sample_app()?;
    let handle = sandbox.start_local().await?;
    let cluster =
        ClusterContext::new(primary, disks, "sandbox", handle.target()).with_secondary(secondary);
    let plan = (
        "sandbox".to_owned(),
        handle.client(),
        format!("sandbox API server {}", handle.url()),
    );
    Ok(SandboxSetup {
        handle,
        vault,
        cluster,
        plan,
        location,
        secondary_location: Some(secondary_location),
    })
}
