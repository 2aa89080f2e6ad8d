//! `stowage demo`: the pipeline on embedded defaults, with no services to install.
//!
//! A sandbox cluster with the sample application, the in-process broker, a local-folder vault
//! with a geo secondary folder, local disks, and every stage this build has, in one process —
//! the same stage code the fleet runs, driven only by jobs and the events stages emit. It backs
//! the application up, transfers it to the vault tier, replicates it, changes some data, takes
//! an incremental backup, restores the latest recovery point from each tier into new
//! namespaces, and checks the objects and every byte of the volumes. `--amqp-url` puts
//! RabbitMQ under it instead, `--blob-url` Azure Blob (e.g. `azurite://demo`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim};
use rand::{RngExt as _, SeedableRng as _};
use stowage_control::RecordSettings;
use stowage_disk::{DiskId, DiskProvider as _, LocalDiskProvider};
use stowage_runtime::client::submit;
use stowage_runtime::{
    Broker, InProcessBroker, Names, RabbitBroker, Shutdown, StageConfig, Worker, WorkerConfig,
};
use stowage_sandbox::Sandbox;
use stowage_schemas::domain::{
    BackupInstance, CalendarPeriod, Immutability, Namespaces, Policy, Redundancy, Retention,
    Schedule, Scope, Tier, Vault, VaultRule,
};
use stowage_schemas::jobs::{
    RestoreHydrationJob, RestoreOptions, SnapshotJob, Trigger, VaultTransferJob,
};
use stowage_schemas::{Envelope, Message};
use stowage_stages::{
    ClusterContext, GeoReplication, RestoreHydration, RestoreStage, SnapshotStage, VaultContext,
    VaultTransfer,
};
use stowage_vault::catalog::settings::{self, WriteMode};
use stowage_vault::crypto::VaultKey;
use stowage_vault::store::{BlobStore, LocalDurability};

use crate::cli::DemoArgs;
use crate::output;

const MIB: u64 = 1 << 20;
const INSTANCE: &str = "shop";
const CLUSTER: &str = "sandbox";
const WAIT: Duration = Duration::from_secs(300);

/// The sample application's CSI disks: (disk, namespace, claim, size).
const VOLUMES: &[(&str, &str, &str, u64)] = &[
    ("shop-data", "shop", "data-db-0", 64 * MIB),
    ("blog-data", "blog", "data-mysql-0", 32 * MIB),
];

/// Creates the disks the sample application's volumes name (`shop-data`, `blog-data`) in
/// `disks`, their first halves filled with table-like and repetitive data from `rng`: what
/// `stowage demo` backs up, and what `stowage sandbox --disk-root` provides so that a backup
/// of the sample app finds its disks. Creating a disk that exists is a no-op (same size).
pub async fn create_sample_disks(
    disks: &LocalDiskProvider,
    rng: &mut rand::rngs::StdRng,
) -> anyhow::Result<()> {
    create_sample_disks_sized(disks, rng, VOLUMES[0].3).await
}

/// [`create_sample_disks`] with the shop's database disk (`shop-data`) `shop_bytes` long (a
/// multiple of 4 MiB; `stowage serve --sandbox --sample-disk-mib`, for bigger try-outs and
/// the benchmarks).
pub async fn create_sample_disks_sized(
    disks: &LocalDiskProvider,
    rng: &mut rand::rngs::StdRng,
    shop_bytes: u64,
) -> anyhow::Result<()> {
    for (i, (disk, _, _, size)) in VOLUMES.iter().enumerate() {
        let size = &if i == 0 { shop_bytes } else { *size };
        let info = disks
            .create_disk(disk, *size)
            .await
            .with_context(|| format!("cannot create the sample disk {disk}"))?;
        let mut block = vec![0u8; 4 * MIB as usize];
        for (i, offset) in (0..size / 2).step_by(block.len()).enumerate() {
            if i % 2 == 0 {
                rng.fill(&mut block[..]); // table data
            } else {
                block
                    .iter_mut()
                    .enumerate()
                    .for_each(|(j, b)| *b = (j % 251) as u8); // repetitive data
            }
            disks.write(&info.id, offset, &block).await?;
        }
    }
    Ok(())
}

/// Run the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("stowage-demo-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let started = Instant::now();
    println!("Stowage demo — everything lives under {}\n", dir.display());

    let broker: Arc<dyn Broker> = match &args.amqp_url {
        Some(url) => Arc::new(RabbitBroker::new(url.clone())),
        None => Arc::new(InProcessBroker::new()),
    };
    let (primary, secondary, where_) = match &args.blob_url {
        Some(url) => {
            let secondary = format!("{url}-secondary");
            (
                open_store(url).await?,
                open_store(&secondary).await?,
                format!("{url} and {secondary}"),
            )
        }
        None => (
            BlobStore::local_folder(dir.join("vault"), LocalDurability::Fsync)?,
            BlobStore::local_folder(dir.join("secondary"), LocalDurability::Fsync)?,
            format!(
                "{} and {}",
                dir.join("vault").display(),
                dir.join("secondary").display()
            ),
        ),
    };
    let operator_key = VaultKey::generate()?;
    std::fs::write(dir.join("vault.key"), operator_key.expose_secret_hex())
        .context("cannot save the vault key")?;
    let location = args
        .blob_url
        .clone()
        .unwrap_or_else(|| dir.join("vault").display().to_string());
    let secondary_location = args
        .blob_url
        .as_ref()
        .map(|url| format!("{url}-secondary"))
        .unwrap_or_else(|| dir.join("secondary").display().to_string());
    let key = init_demo_vault(
        &primary,
        &secondary,
        &operator_key,
        location,
        secondary_location,
    )
    .await?;
    // Every store handle seals what a recovery point holds (stowage_vault::seal).
    let (primary, secondary) = (primary.with_key(&key), secondary.with_key(&key));
    let disks = Arc::new(LocalDiskProvider::open(dir.join("disks"))?);
    let vault =
        VaultContext::new(primary.clone(), key, disks.clone()).with_secondary(secondary.clone());

    // The cluster: a sandbox API server with the sample app, whose PVs name local disks.
    let sandbox = Sandbox::new();
    sandbox.load_sample_app()?;
    let cluster = sandbox.start_local().await?;
    let client = cluster.client();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    create_sample_disks(&disks, &mut rng).await?;
    let cluster_ctx =
        ClusterContext::new(primary.clone(), disks.clone(), CLUSTER, cluster.target())
            .with_secondary(secondary.clone());

    let names = Names::new(format!("stowage-demo-{}", std::process::id()));
    let config = WorkerConfig {
        names: names.clone(),
        cluster: Some(CLUSTER.into()),
        ..WorkerConfig::default()
    };
    let stage = StageConfig::default();
    // Every stage keeps its job's record (`jobs/<job-id>.json`), as in the fleet.
    let rec = crate::stages::Recording {
        store: primary.clone(),
        settings: RecordSettings {
            max_attempts: config.retry.max_attempts,
            ..RecordSettings::default()
        },
    };
    let worker = Worker::new(broker.clone(), config.clone())
        .stage(rec.wrap(SnapshotStage(cluster_ctx.clone())), stage)
        .stage(rec.wrap(VaultTransfer(vault.clone())), stage)
        .stage(rec.wrap(GeoReplication(vault.clone())), stage)
        .stage(rec.wrap(RestoreHydration(vault.clone())), stage)
        .stage(rec.wrap(RestoreStage(cluster_ctx)), stage);
    let health = worker.health();
    let (trigger, shutdown) = Shutdown::new();
    let fleet = tokio::spawn(worker.run(shutdown));
    wait("the fleet to start", || health.is_ready()).await?;
    let events = Events::new(broker.clone(), &names).await?;
    println!(
        "Cluster: sandbox API server at {} with the sample app (namespaces shop and blog)",
        cluster.url()
    );
    println!(
        "Fleet: snapshot, vault-transfer, geo-replication, restore-hydration and restore workers on {} (queues {}.*)",
        broker.endpoint(),
        names.prefix()
    );
    println!(
        "Vault: {where_} (geo-redundant); disks: {}\n",
        dir.join("disks").display()
    );

    let mut timings: Vec<(String, Duration)> = Vec::new();
    let mut rows = Vec::new();

    // 1-3. A backup; vault transfer and geo-replication follow from its events alone.
    let (created, vaulted, replicated) =
        backup(broker.as_ref(), &names, &events, "rp-1", true, &mut timings).await?;
    rows.push(stats_row("rp-1 (full)", &vaulted, &replicated));
    println!(
        "1. snapshot took rp-1: {} objects, {} volumes{}",
        created.resource_count,
        created.volume_count,
        warnings(&created.warnings)
    );
    println!(
        "2. rp.created triggered vault-transfer; 3. rp.vaulted triggered geo-replication to the paired region."
    );

    // 4. Change some data: 1% of the shop's database volume in scattered 4 KiB writes.
    let (db, _, _, db_size) = VOLUMES[0];
    let mut changed = std::collections::BTreeSet::new();
    while changed.len() < (db_size / 4096 / 100) as usize {
        changed.insert(rng.random_range(0..db_size / 4096));
    }
    let mut block = vec![0u8; 4096];
    for b in &changed {
        rng.fill(&mut block[..]);
        disks.write(&DiskId(db.into()), b * 4096, &block).await?;
    }
    println!(
        "4. Changed {} scattered 4 KiB blocks of {db} ({} KiB).",
        changed.len(),
        changed.len() * 4
    );

    // 5. An incremental backup, through the same stages.
    let (_, vaulted2, replicated2) = backup(
        broker.as_ref(),
        &names,
        &events,
        "rp-2",
        false,
        &mut timings,
    )
    .await?;
    rows.push(stats_row("rp-2 (incremental)", &vaulted2, &replicated2));
    println!(
        "5. Incremental rp-2: read {} KiB, stored {} KiB (policy \"daily\" vaults the first \
         backup of each day; rp-2's vault copy was requested with a job.vault-transfer).",
        vaulted2.bytes_read / 1024,
        vaulted2.bytes_stored / 1024
    );

    // 6 + 7. Restore rp-2 from each tier into new namespaces; check objects and bytes.
    for (tier, suffix) in [
        (Tier::Vault, "from-vault"),
        (Tier::Secondary, "from-secondary"),
    ] {
        let t = Instant::now();
        let restore = format!("restore-rp-2-{suffix}");
        let mapping: std::collections::BTreeMap<String, String> = ["shop", "blog"]
            .iter()
            .map(|ns| (ns.to_string(), format!("{ns}-{suffix}")))
            .collect();
        let job = RestoreHydrationJob {
            restore_id: restore.clone(),
            instance: INSTANCE.into(),
            recovery_point_id: "rp-2".into(),
            tier,
            staging_location: None,
            options: RestoreOptions {
                target_cluster: Some(CLUSTER.into()),
                namespace_mapping: mapping,
                ..RestoreOptions::default()
            },
        };
        submit(
            broker.as_ref(),
            &names,
            &Envelope::new(restore.clone(), Message::RestoreHydration(job)),
        )
        .await?;
        events.wait("restore.hydrated").await?;
        let Message::RestoreCompleted(done) = events.wait("restore.completed").await? else {
            unreachable!("filtered by kind")
        };
        timings.push((
            format!("6. restore rp-2 from {tier:?} (hydrate + apply)"),
            t.elapsed(),
        ));
        let config_maps = check_restore(&client, &disks, suffix).await?;
        println!(
            "6. Restored rp-2 from the {tier:?} tier into *-{suffix}: {} objects created, {} volumes on new disks; \
             7. checked: {config_maps} config maps equal, every byte of {} volumes equal.",
            done.resources_created,
            done.volumes_restored,
            VOLUMES.len()
        );
    }

    // Every job left a record; the same table `stowage jobs list` prints.
    let jobs = crate::jobs_cmd::newest(&primary, 10, |_| true).await?;
    let now = jiff::Timestamp::now();
    let job_rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| crate::jobs_cmd::list_row(j, now))
        .collect();
    println!("\nJob records (stowage jobs list --vault <vault>):");
    print!(
        "{}",
        output::table(
            &[
                "ID", "KIND", "INSTANCE", "STATUS", "STAGES", "PROGRESS", "AGE"
            ],
            &job_rows
        )
    );

    trigger.trigger();
    fleet.await??;
    cluster.shutdown().await;

    println!("\nStage timings:");
    let timing_rows: Vec<Vec<String>> = timings
        .iter()
        .map(|(s, d)| vec![s.clone(), format!("{:.2} s", d.as_secs_f64())])
        .collect();
    print!("{}", output::table(&["STEP", "TIME"], &timing_rows));
    println!("\nData moved:");
    print!(
        "{}",
        output::table(
            &[
                "RECOVERY POINT",
                "READ",
                "STORED (new)",
                "CHUNKS NEW/REUSED",
                "COPIED TO SECONDARY"
            ],
            &rows
        )
    );
    let logical = vaulted.bytes_read + vaulted2.bytes_read;
    let stored = vaulted.bytes_stored + vaulted2.bytes_stored;
    println!(
        "\nDedup + compression: {:.1} MiB of volume data kept as {:.1} MiB ({:.1}×).",
        logical as f64 / MIB as f64,
        stored as f64 / MIB as f64,
        logical as f64 / stored.max(1) as f64
    );
    println!(
        "Verified restores from both tiers in {:.1} s. Data lives under {} (key: vault.key).",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    println!(
        "Try: stowage rp verify rp-2 --vault {} --vault-key-file {}",
        dir.join("vault").display(),
        dir.join("vault.key").display()
    );
    Ok(())
}

fn warnings(w: &[String]) -> String {
    if w.is_empty() {
        String::new()
    } else {
        format!(" ({} warning(s): {})", w.len(), w.join("; "))
    }
}

/// Submit a snapshot job, then wait for the three events the pipeline answers with.
async fn backup(
    broker: &dyn Broker,
    names: &Names,
    events: &Events,
    rp: &str,
    first_of_day: bool,
    timings: &mut Vec<(String, Duration)>,
) -> anyhow::Result<(
    stowage_schemas::events::RpCreated,
    stowage_schemas::events::RpVaulted,
    stowage_schemas::events::RpReplicated,
)> {
    let mut t = Instant::now();
    let mut lap = |step: String| {
        timings.push((step, t.elapsed()));
        t = Instant::now();
    };
    let job = SnapshotJob {
        instance: INSTANCE.into(),
        recovery_point_id: rp.into(),
        trigger: Trigger::OnDemand {
            requested_by: Some("stowage demo".into()),
        },
    };
    submit(
        broker,
        names,
        &Envelope::new(format!("snapshot-{rp}"), Message::Snapshot(job)).on_cluster(CLUSTER),
    )
    .await?;
    let created = events.wait("rp.created").await?;
    lap(format!("1. snapshot {rp} (collect + volume snapshots)"));
    if !first_of_day {
        // The policy vaults the first backup of each day, so the pipeline keeps this one in
        // the operational tier only; the demo asks for its vault copy, as an operator can.
        let job = VaultTransferJob {
            instance: INSTANCE.into(),
            recovery_point_id: rp.into(),
        };
        submit(
            broker,
            names,
            &Envelope::new(format!("vault-transfer-{rp}"), Message::VaultTransfer(job)),
        )
        .await?;
    }
    let vaulted = events.wait("rp.vaulted").await?;
    lap(format!("2. vault-transfer {rp}"));
    let replicated = events.wait("rp.replicated").await?;
    lap(format!("3. geo-replication {rp}"));
    match (created, vaulted, replicated) {
        (Message::RpCreated(c), Message::RpVaulted(v), Message::RpReplicated(r)) => Ok((c, v, r)),
        _ => unreachable!("filtered by kind"),
    }
}

/// The restored namespaces hold the source's config maps, and each restored claim's new
/// volume holds exactly the bytes of the rp-2 snapshot. Returns how many config maps matched.
async fn check_restore(
    client: &kube::Client,
    disks: &LocalDiskProvider,
    suffix: &str,
) -> anyhow::Result<usize> {
    let mut compared = 0;
    for ns in ["shop", "blog"] {
        let target = format!("{ns}-{suffix}");
        let source: Vec<ConfigMap> = kube::Api::namespaced(client.clone(), ns)
            .list(&Default::default())
            .await?
            .items;
        let restored: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), &target);
        for cm in &source {
            let name = cm.metadata.name.clone().unwrap_or_default();
            let copy = restored
                .get(&name)
                .await
                .with_context(|| format!("config map {ns}/{name} was not restored to {target}"))?;
            if copy.data != cm.data {
                bail!("config map {target}/{name} differs from {ns}/{name}");
            }
            compared += 1;
        }
    }
    for (disk, ns, claim, size) in VOLUMES {
        let target = format!("{ns}-{suffix}");
        let pvc = kube::Api::<PersistentVolumeClaim>::namespaced(client.clone(), &target)
            .get(claim)
            .await
            .with_context(|| format!("claim {ns}/{claim} was not restored to {target}"))?;
        let pv_name = pvc.spec.and_then(|s| s.volume_name).with_context(|| {
            format!("restored claim {target}/{claim} is not bound to a new volume")
        })?;
        let pv = kube::Api::<PersistentVolume>::all(client.clone())
            .get(&pv_name)
            .await?;
        let handle = pv
            .spec
            .and_then(|s| s.csi)
            .map(|c| c.volume_handle)
            .with_context(|| format!("volume {pv_name} has no CSI handle"))?;
        if handle == *disk {
            bail!("restored claim {target}/{claim} points at the source disk {disk}");
        }
        let snapshot = stowage_stages::snapshot::snapshot_name(INSTANCE, "rp-2", disk);
        compare(disks, &snapshot, &handle, *size).await?;
    }
    Ok(compared)
}

/// Initialises a demo vault in `primary` (its keyring, wrapped by `operator_key`, copied to
/// `secondary`) with the catalog the demo and `stowage serve --sandbox` use: vault `demo`
/// (geo-redundant), policy `daily`, instance `shop` protecting the sample app's namespaces on
/// the cluster `sandbox` — through the same validated writes as `stowage vault init`, `policy
/// create` and `instance create`. Returns the vault's data key.
pub async fn init_demo_vault(
    primary: &BlobStore,
    secondary: &BlobStore,
    operator_key: &VaultKey,
    location: String,
    secondary_location: String,
) -> anyhow::Result<VaultKey> {
    // The operator's key (a key-encryption key) wraps the vault's data key in its keyring, as
    // `stowage vault init` does; the keyring is copied to the secondary.
    let (keyring, _) = stowage_vault::keyring::init(primary, operator_key).await?;
    stowage_vault::keyring::replicate(secondary, &keyring).await?;
    let key = keyring.open(operator_key)?;
    let demo_vault = Vault {
        name: "demo".into(),
        region: "local".into(),
        location,
        redundancy: Redundancy::Geo {
            secondary_location,
            secondary_region: "paired-region".into(),
        },
        key_id: operator_key.key_id().to_string(),
        immutability: Immutability::Disabled,
        minimum_retention_days: 0,
        soft_delete_days: stowage_schemas::domain::DEFAULT_SOFT_DELETE_DAYS,
    };
    settings::write_vault(primary, &demo_vault, WriteMode::Create).await?;
    let policy = Policy {
        name: "daily".into(),
        schedule: Schedule {
            frequency_hours: 24,
            start: jiff::civil::Time::constant(2, 0, 0, 0),
            time_zone: "UTC".into(),
        },
        retention: Retention {
            operational_days: 7,
            vault: vec![VaultRule {
                first_of: CalendarPeriod::Day,
                keep_days: 30,
            }],
        },
    };
    settings::write_policy(primary, &policy, WriteMode::Create).await?;
    let instance = BackupInstance {
        name: INSTANCE.into(),
        cluster: CLUSTER.into(),
        vault: demo_vault.name.clone(),
        policy: policy.name.clone(),
        scope: Scope {
            namespaces: Namespaces::List {
                names: vec!["shop".into(), "blog".into()],
            },
            exclude_namespaces: Vec::new(),
            label_selectors: Vec::new(),
            include_cluster_scoped: true,
            include_secrets: true,
            include_volumes: true,
        },
        snapshot_location: "local".into(),
        hooks: Vec::new(),
    };
    settings::write_instance(primary, &instance, WriteMode::Create).await?;
    Ok(key)
}

async fn open_store(url: &str) -> anyhow::Result<BlobStore> {
    if let Some(container) = url.strip_prefix("azurite://") {
        stowage_vault::store::create_azurite_container(container).await?;
    }
    crate::vault_config::open_store(url)
}

fn stats_row(
    label: &str,
    v: &stowage_schemas::events::RpVaulted,
    r: &stowage_schemas::events::RpReplicated,
) -> Vec<String> {
    vec![
        label.into(),
        format!("{:.1} MiB", v.bytes_read as f64 / MIB as f64),
        format!("{:.1} MiB", v.bytes_stored as f64 / MIB as f64),
        format!("{}/{}", v.chunks_new, v.chunks_reused),
        format!(
            "{} objects, {:.1} MiB",
            r.objects_copied,
            r.bytes_copied as f64 / MIB as f64
        ),
    ]
}

async fn compare(
    disks: &LocalDiskProvider,
    snapshot: &str,
    disk: &str,
    size: u64,
) -> anyhow::Result<()> {
    let (mut a, mut b) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut offset = 0;
    while offset < size {
        let len = (size - offset).min(MIB) as usize;
        disks
            .read_snapshot(
                &stowage_disk::SnapshotId(snapshot.into()),
                offset,
                &mut a[..len],
            )
            .await?;
        disks
            .read_disk(&DiskId(disk.into()), offset, &mut b[..len])
            .await?;
        if a[..len] != b[..len] {
            bail!("restored disk {disk} differs from snapshot {snapshot} near byte {offset}");
        }
        offset += len as u64;
    }
    Ok(())
}

async fn wait(what: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    while !ready() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A queue bound to every event, like a dashboard or audit log would bind one.
struct Events {
    broker: Arc<dyn Broker>,
    queue: String,
    pending: std::sync::Mutex<Vec<Message>>,
}

impl Events {
    async fn new(broker: Arc<dyn Broker>, names: &Names) -> anyhow::Result<Self> {
        use stowage_runtime::topology::{
            BindingSpec, ExchangeKind, ExchangeSpec, QueueKind, QueueSpec, Topology,
        };
        let queue = format!("{}.demo-events", names.prefix());
        let topology = Topology {
            names: names.clone(),
            exchanges: vec![ExchangeSpec {
                name: names.events_exchange(),
                kind: ExchangeKind::Topic,
            }],
            queues: vec![QueueSpec {
                name: queue.clone(),
                kind: QueueKind::Classic,
                dead_letter: None,
                delivery_limit: None,
                message_ttl: None,
            }],
            bindings: vec![BindingSpec {
                exchange: names.events_exchange(),
                queue: queue.clone(),
                routing_key: "#".into(),
            }],
        };
        broker.declare(&topology).await?;
        Ok(Self {
            broker,
            queue,
            pending: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The next event with `routing_key` (e.g. `rp.vaulted`), keeping others for later waits.
    async fn wait(&self, routing_key: &str) -> anyhow::Result<Message> {
        let kind = format!("event.{routing_key}");
        let deadline = Instant::now() + WAIT;
        loop {
            while let Some(d) = self.broker.get(&self.queue).await? {
                d.ack().await?;
                let ct = d
                    .properties
                    .content_type
                    .as_deref()
                    .unwrap_or("application/msgpack")
                    .parse()
                    .unwrap_or_default();
                let envelope = stowage_schemas::decode(&d.body, ct)?;
                self.pending
                    .lock()
                    .expect("events lock")
                    .push(envelope.message);
            }
            {
                let mut pending = self.pending.lock().expect("events lock");
                if let Some(at) = pending.iter().position(|m| m.kind() == kind) {
                    return Ok(pending.remove(at));
                }
                // A failed attempt that will be retried is not the end; one that will not is.
                if let Some(failed) = pending
                    .iter()
                    .find(|m| matches!(m, Message::JobFailed(f) if !f.will_retry))
                {
                    bail!("a stage failed: {failed:?}");
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no {routing_key} event within {WAIT:?}; see the log above for the stage's error"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
