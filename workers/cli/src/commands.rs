//! What each subcommand does.

use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use stowage_runtime::client::{list_dead_letters, replay_dead_letters, submit};
use stowage_runtime::{
    Broker, Names, RabbitBroker, RetryPolicy, Shutdown, StageConfig, Topology, Worker,
    WorkerConfig, health, shutdown,
};

use crate::cli::{
    BrokerArgs, Cli, Command, DlqAction, DlqArgs, OutputArgs, RpAction, RpArgs, StageChoice,
    SubmitArgs, TierChoice, TopologyAction, WorkerArgs,
};
use crate::output::{self, truncate};
use crate::{job_file, stages, vault_config};
use stowage_schemas::Stage;

/// Run the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.server.server.is_some() && !matches!(cli.command, Command::Serve(_)) {
        return crate::serve::client::run(&cli.server, cli.command).await;
    }
    match cli.command {
        Command::Worker(args) => worker(args).await,
        Command::Submit(args) => submit_file(args).await,
        Command::Dlq(args) => dlq(args).await,
        Command::Topology(args) => match args.action {
            TopologyAction::Export { prefix } => {
                let topology = Topology::new(Names::new(prefix), &RetryPolicy::default());
                println!(
                    "{}",
                    serde_json::to_string_pretty(&topology.rabbitmq_definitions())?
                );
                Ok(())
            }
            TopologyAction::Declare { broker } => {
                let (rabbit, names) = connect(&broker);
                rabbit
                    .declare(&Topology::new(names, &RetryPolicy::default()))
                    .await?;
                eprintln!("topology declared on {}", rabbit.endpoint());
                Ok(())
            }
        },
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Rp(args) => rp(args).await,
        Command::Sandbox(args) => sandbox(args).await,
        Command::Jobs(args) => crate::jobs_cmd::run(args).await,
        Command::Restore(args) => crate::restore_cmd::run(args).await,
        Command::Drill(args) => crate::drill_cmd::run(args).await,
        Command::Preflight(args) => crate::preflight_cmd::run(args).await,
        Command::Vault(args) => crate::catalog_cmd::vault(args).await,
        Command::Policy(args) => crate::catalog_cmd::policy(args).await,
        Command::Instance(args) => crate::catalog_cmd::instance(args).await,
        Command::Backup(args) => crate::catalog_cmd::backup(args).await,
        Command::Scheduler(args) => crate::scheduler_cmd::run(args).await,
        Command::Serve(args) => crate::serve::run(args, cli.server.token_file).await,
    }
}

fn connect(args: &BrokerArgs) -> (RabbitBroker, Names) {
    (
        RabbitBroker::new(args.amqp_url.clone()),
        Names::new(args.prefix.clone()),
    )
}

async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let mut wanted = Vec::new();
    for choice in &args.stage {
        let add = match choice {
            StageChoice::One(stage) => vec![*stage],
            StageChoice::All => stages::built(),
        };
        for stage in add {
            if wanted.contains(&stage) {
                anyhow::bail!("--stage names {stage} twice; name each stage once");
            }
            wanted.push(stage);
        }
    }
    if args.vault.disk_provider == crate::cli::DiskProviderChoice::Azure {
        // Missing Azure settings are named before anything is opened.
        args.vault.azure.config().check()?;
    }
    let mut vault = vault_config::vault_context(&args.vault).await?;
    // Only the cluster stages need a cluster (and its name); retention uses one when named, to
    // delete CSI VolumeSnapshots. A vault-stage worker in a shell with KUBECONFIG set, or in a
    // pod with a token, neither needs nor asks for one.
    let wants_cluster = wanted
        .iter()
        .any(|s| matches!(s, Stage::Snapshot | Stage::Restore))
        || (wanted.contains(&Stage::Retention) && args.cluster.cluster_name.is_some());
    let cluster = if wants_cluster {
        vault_config::cluster_context(&args.cluster, vault.as_ref(), args.vault.disk_provider)
            .await?
    } else {
        None
    };
    // Retention deletes CSI VolumeSnapshots in the clusters this worker reaches.
    if let (Some(v), Some(c)) = (&mut vault, &cluster)
        && let Ok((name, target)) = c.cluster(c.default_cluster())
    {
        v.csi_clusters
            .insert(name.to_owned(), target.client.clone());
    }
    let disks = vault.as_ref().map(|v| v.disks.clone());
    let services = stages::Services {
        vault,
        cluster,
        records: stowage_control::RecordSettings {
            max_attempts: args.max_attempts.max(1),
            poll_interval: Duration::from_secs_f64(args.job_poll_interval.clamp(0.05, 3600.0)),
            poison_limit: args.poison_limit,
            ..Default::default()
        },
    };
    let config = WorkerConfig {
        names: Names::new(args.broker.prefix.clone()),
        retry: RetryPolicy {
            max_attempts: args.max_attempts.max(1),
            ..RetryPolicy::default()
        },
        shutdown_deadline: Duration::from_secs(args.shutdown_deadline),
        queue_poll_interval: Duration::from_secs(args.queue_poll_secs.max(1)),
        cluster: args.cluster.cluster_name.clone(),
        ..WorkerConfig::default()
    };
    let stage_config = StageConfig {
        prefetch: args.prefetch,
        concurrency: args.concurrency,
    };
    let mut worker = Worker::new(
        Arc::new(RabbitBroker::new(args.broker.amqp_url.clone())),
        config,
    );
    for stage in wanted {
        worker = stages::add(worker, stage, stage_config, &services)?;
    }
    let shutdown = Shutdown::from_future(shutdown::signal());
    let listener = health::bind(args.health_addr).await?;
    tokio::spawn(health::serve(listener, worker.health(), shutdown.clone()));
    let ran = worker.run(shutdown).await;
    // What the disk provider holds open (Azure: read SAS of snapshots) ends with the worker,
    // whether it stopped cleanly or not.
    if let Some(disks) = disks
        && let Err(e) = disks.shutdown().await
    {
        tracing::warn!(error = %e, "could not end the disk provider's open access at shutdown; it expires on its own");
    }
    ran?;
    Ok(())
}

async fn submit_file(args: SubmitArgs) -> anyhow::Result<()> {
    // Read at most one byte more than a job file may have: enough to refuse a larger one
    // without reading (or parsing) all of it.
    let limit = job_file::MAX_JOB_FILE_BYTES as u64 + 1;
    let (origin, text) = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .take(limit)
            .read_to_string(&mut text)
            .context("cannot read the job from standard input")?;
        ("<stdin>".to_owned(), text)
    } else {
        let mut text = String::new();
        std::fs::File::open(&args.file)
            .and_then(|file| file.take(limit).read_to_string(&mut text))
            .with_context(|| format!("cannot read job file {}", args.file.display()))?;
        (args.file.display().to_string(), text)
    };
    let envelope = job_file::parse(&origin, &text)?;
    let (broker, names) = connect(&args.broker);
    // The submitter's span starts the job's trace (submit stamps it on the envelope).
    let span = tracing::info_span!(
        "submit",
        otel.name = %format_args!("submit {}", envelope.kind()),
        job_id = %stowage_runtime::limits::log_field(&envelope.job_id),
    );
    tracing::Instrument::instrument(submit(&broker, &names, &envelope), span)
        .await
        .with_context(|| format!("cannot submit {origin}"))?;
    eprintln!(
        "submitted {} (message {}) to {}",
        envelope.kind(),
        envelope.message_id,
        broker.endpoint()
    );
    println!("{}", envelope.job_id);
    Ok(())
}

async fn dlq(args: DlqArgs) -> anyhow::Result<()> {
    let (broker, names) = connect(&args.broker);
    match args.action {
        DlqAction::List {
            stage,
            limit,
            output: OutputArgs { output },
        } => {
            let letters = list_dead_letters(&broker, &names, stage, limit).await?;
            if letters.is_empty() && output == crate::cli::Format::Table {
                eprintln!("no dead letters for {stage}");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = letters
                .iter()
                .map(|l| {
                    vec![
                        l.message_id.clone().unwrap_or_else(|| "-".into()),
                        l.kind.clone().unwrap_or_else(|| "-".into()),
                        l.job_id.clone().unwrap_or_else(|| "-".into()),
                        l.attempts.map_or_else(|| "-".into(), |a| a.to_string()),
                        l.dead_lettered_at.clone().unwrap_or_else(|| "-".into()),
                        truncate(&l.reason, 80),
                    ]
                })
                .collect();
            output::print(
                output,
                &[
                    "MESSAGE ID",
                    "KIND",
                    "JOB",
                    "ATTEMPTS",
                    "DEAD-LETTERED",
                    "REASON",
                ],
                &rows,
                &letters,
            )
        }
        DlqAction::Show {
            stage,
            message_id,
            output: OutputArgs { output },
        } => {
            let letters = list_dead_letters(&broker, &names, stage, usize::MAX).await?;
            let Some(letter) = letters
                .into_iter()
                .find(|l| l.message_id.as_deref() == Some(message_id.as_str()))
            else {
                bail!(
                    "no dead letter with message id {message_id} for {stage}; `stowage dlq list {stage}` shows the ids"
                );
            };
            let rows = vec![
                vec!["reason".into(), letter.reason.clone()],
                vec!["error chain".into(), letter.error_chain.join(" ← ")],
                vec!["job".into(), letter.job_id.clone().unwrap_or_default()],
            ];
            output::print(output, &["FIELD", "VALUE"], &rows, &letter)
        }
        DlqAction::Replay { stage, message_id } => {
            let n = replay_dead_letters(&broker, &names, stage, message_id.as_deref()).await?;
            if n == 0 && message_id.is_some() {
                bail!(
                    "no dead letter with that message id for {stage}; `stowage dlq list {stage}` shows the ids"
                );
            }
            eprintln!("replayed {n} message(s) to the {stage} queue");
            Ok(())
        }
    }
}

async fn rp(args: RpArgs) -> anyhow::Result<()> {
    match args.action {
        RpAction::List {
            instance,
            output: OutputArgs { output },
        } => crate::rp_cmd::list(&args.vault, &instance, output).await,
        RpAction::Describe {
            instance,
            rp,
            output: OutputArgs { output },
        } => crate::rp_cmd::describe(&args.vault, &instance, &rp, output).await,
        RpAction::Delete { instance, rp } => {
            crate::rp_cmd::delete(&args.vault, &instance, &rp).await
        }
        RpAction::Undelete { instance, rp } => {
            crate::rp_cmd::undelete(&args.vault, &instance, &rp).await
        }
        RpAction::Verify {
            rp,
            instance,
            tier,
            output: OutputArgs { output },
        } => {
            let (location, tier) = match tier {
                TierChoice::Vault => (
                    args.vault.vault.as_deref(),
                    stowage_schemas::domain::Tier::Vault,
                ),
                TierChoice::Secondary => (
                    args.vault.secondary.as_deref(),
                    stowage_schemas::domain::Tier::Secondary,
                ),
            };
            let Some(location) = location else {
                bail!(
                    "say where the {tier:?} copy is: --vault for the vault tier, --secondary for the secondary tier"
                );
            };
            // The data key, unwrapped from the keyring with the operator's key (a wrong key
            // is refused here, naming the key id the vault expects).
            vault_config::vault_key(&args.vault)?;
            let key = vault_config::data_key(&args.vault)
                .await?
                .context("the vault key is missing")?;
            let store = vault_config::open_store(location)?.with_key(&key);
            let instance = match instance {
                Some(i) => i,
                None => find_instance(&store, &rp).await?,
            };
            let report =
                stowage_control::verify::verify(&store, &key, &instance, &rp, tier, 8).await?;
            let rows: Vec<Vec<String>> = if report.damage.is_empty() {
                vec![vec!["intact".into(), "-".into(), "-".into(), "-".into()]]
            } else {
                report
                    .damage
                    .iter()
                    .map(|d| {
                        vec![
                            d.object.clone(),
                            d.volume_id.clone(),
                            d.chunk.clone(),
                            d.reason.clone(),
                        ]
                    })
                    .collect()
            };
            if output == crate::cli::Format::Table {
                eprintln!(
                    "recovery point {} of {} ({:?} tier): {} volume(s), {} object(s), {} chunk(s), {} bytes checked",
                    report.recovery_point_id,
                    report.instance,
                    report.tier,
                    report.volumes,
                    report.objects_checked,
                    report.chunks_checked,
                    report.bytes_checked
                );
            }
            output::print(
                output,
                &["OBJECT", "VOLUME", "CHUNK", "PROBLEM"],
                &rows,
                &report,
            )?;
            if !report.is_intact() {
                let mut found = Vec::new();
                if report.damaged_objects() > 0 {
                    found.push(format!(
                        "{} damaged or missing object(s)",
                        report.damaged_objects()
                    ));
                }
                if report.damaged_chunks() > 0 {
                    found.push(format!("{} damaged chunk(s)", report.damaged_chunks()));
                }
                bail!(
                    "{} in recovery point {rp}; restore it from the other tier",
                    found.join(" and ")
                );
            }
            Ok(())
        }
    }
}

/// The instance a recovery point belongs to, from the catalog: the instance folder holding its
/// manifest, or any of its tier manifests or retention record (so a recovery point whose own
/// manifest is gone can still be verified).
async fn find_instance(
    store: &stowage_vault::store::BlobStore,
    rp: &str,
) -> anyhow::Result<String> {
    use futures::StreamExt as _;
    use stowage_vault::layout::{self, CatalogEntry};
    let mut listing = store.list(&layout::catalog());
    while let Some(info) = listing.next().await {
        let key = info?.key;
        let Some(instance) = layout::instance_from_catalog_key(&key) else {
            continue;
        };
        let named = match layout::parse_catalog_key(instance, &key) {
            Some(CatalogEntry::Manifest(id) | CatalogEntry::Tier(id, _)) => id,
            Some(CatalogEntry::Retention(id) | CatalogEntry::SoftDeleted(id)) => id,
            None => continue,
        };
        if named == rp {
            return Ok(instance.to_owned());
        }
    }
    bail!("no recovery point {rp} in the vault's catalog; check the id, or pass --instance")
}

async fn sandbox(args: crate::cli::SandboxArgs) -> anyhow::Result<()> {
    use rand::SeedableRng as _;
    let mut sandbox = stowage_sandbox::Sandbox::new();
    if !args.empty {
        sandbox.load_sample_app()?;
    }
    if let Some(root) = &args.disk_root {
        let disks = stowage_disk::LocalDiskProvider::open(root)
            .with_context(|| format!("cannot open the disk root {}", root.display()))?;
        if !args.empty {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            crate::demo::create_sample_disks(&disks, &mut rng).await?;
        }
        // The external-snapshotter and CSI driver of the local disks, so workers run with
        // `--disk-provider csi` take VolumeSnapshots here as they would in a real cluster.
        sandbox = sandbox.with_csi_disks(Arc::new(disks));
    }
    let handle = sandbox.start(args.addr).await?;
    let written = handle.write_kubeconfigs(&args.kubeconfig_dir)?;
    let dir = std::path::absolute(&args.kubeconfig_dir).unwrap_or(args.kubeconfig_dir.clone());
    println!(
        "{}",
        sandbox_banner(handle.url(), &dir, &written, args.disk_root.as_deref())
    );
    shutdown::signal().await;
    handle.shutdown().await;
    Ok(())
}

/// What `stowage sandbox` prints: where it serves, the kubeconfigs and how to use them.
fn sandbox_banner(
    url: &str,
    dir: &std::path::Path,
    written: &std::collections::BTreeMap<String, std::path::PathBuf>,
    disk_root: Option<&std::path::Path>,
) -> String {
    let mut out = format!(
        "sandbox cluster at {url} (HTTPS, its own CA; RBAC enforced); Ctrl-C stops it\n\
         kubeconfigs in {} (valid while this sandbox runs):\n",
        dir.display()
    );
    for (identity, path) in written {
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default();
        out.push_str(&format!("  {identity:<18} {file}\n"));
    }
    out.push_str(&format!(
        "  {:<18} sandbox.kubeconfig (every context; current: sandbox-admin)\n\n\
         use it:\n  export KUBECONFIG={}\n  kubectl get namespaces\n\
         workers take the service account's own: stowage worker --stage snapshot --kubeconfig {} ...\n\
         the fleet's roles apply as on any cluster: kubectl create namespace stowage && \
         kubectl apply -n stowage -f infra/k8s/base/rbac.yaml\n",
        "(all)",
        dir.join("admin.kubeconfig").display(),
        dir.join("stowage-snapshot.kubeconfig").display(),
    ));
    if let Some(root) = disk_root {
        out.push_str(&format!(
            "the sample app's disks are in {} (pass the same --disk-root to the workers); \
             VolumeSnapshots of them are taken by the sandbox's CSI driver (--disk-provider csi)\n",
            root.display()
        ));
    }
    out
}
