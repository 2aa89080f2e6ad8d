//! `stowage demo`: the pipeline on embedded defaults, with no services to install.
//!
//! The in-process broker, a local-folder vault with a geo secondary folder, local disks, and
//! every stage this build has, in one process — the same stage code the fleet runs. It backs up
//! an application's volumes, transfers them to the vault tier, replicates them, changes some
//! data, takes an incremental backup, hydrates the latest recovery point from each tier and
//! checks every byte. `--amqp-url` puts RabbitMQ under it instead, `--blob-url` Azure Blob
//! (e.g. `azurite://demo`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::{RngExt as _, SeedableRng as _};
use stowage_disk::{DiskId, DiskProvider as _, LocalDiskProvider};
use stowage_runtime::client::submit;
use stowage_runtime::{
    Broker, InProcessBroker, Names, RabbitBroker, Shutdown, StageConfig, Worker, WorkerConfig,
};
use stowage_schemas::domain::{RecoveryPoint, RpState, Tier, TierState, VolumeBackup};
use stowage_schemas::jobs::{
    ExistingPolicy, RestoreHydrationJob, RestoreOptions, VaultTransferJob,
};
use stowage_schemas::{Envelope, Message};
use stowage_stages::restore_hydration::staging_disk_name;
use stowage_stages::{GeoReplication, RestoreHydration, VaultContext, VaultTransfer};
use stowage_vault::crypto::VaultKey;
use stowage_vault::store::{BlobStore, LocalDurability};

use crate::cli::DemoArgs;
use crate::output;

const MIB: u64 = 1 << 20;
const INSTANCE: &str = "shop";
const WAIT: Duration = Duration::from_secs(300);

/// The application's volumes: (disk, size).
const VOLUMES: &[(&str, u64)] = &[("shop-db", 64 * MIB), ("shop-media", 32 * MIB)];

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
    let key = VaultKey::generate()?;
    std::fs::write(dir.join("vault.key"), key.expose_secret_hex())
        .context("cannot save the vault key")?;
    let disks = Arc::new(LocalDiskProvider::open(dir.join("disks"))?);
    let ctx =
        VaultContext::new(primary, key, disks.clone()).with_secondary(secondary, "paired-region");

    let names = Names::new(format!("stowage-demo-{}", std::process::id()));
    let config = WorkerConfig {
        names: names.clone(),
        ..WorkerConfig::default()
    };
    let stage = StageConfig::default();
    let worker = Worker::new(broker.clone(), config.clone())
        .stage(VaultTransfer::new(ctx.clone()), stage)
        .stage(GeoReplication::new(ctx.clone()), stage)
        .stage(RestoreHydration::new(ctx.clone()), stage);
    let health = worker.health();
    let (trigger, shutdown) = Shutdown::new();
    let fleet = tokio::spawn(worker.run(shutdown));
    wait("the fleet to start", || health.is_ready()).await?;
    let events = Events::new(broker.clone(), &names).await?;
    println!(
        "Fleet: vault-transfer, geo-replication and restore-hydration workers on {} (queues {}.*)",
        broker.endpoint(),
        names.prefix()
    );
    println!(
        "Vault: {where_} (geo-redundant); disks: {}\n",
        dir.join("disks").display()
    );

    let mut timings: Vec<(String, Duration)> = Vec::new();
    let mut rows = Vec::new();

    // 1. A backup: the volumes' data, snapshots, the recovery point's manifest.
    let t = Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for (disk, size) in VOLUMES {
        let info = disks.create_disk(disk, *size).await?;
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
    backup(&ctx, &disks, "rp-1").await?;
    timings.push(("1. write app data + backup (snapshots)".into(), t.elapsed()));
    println!(
        "1. Backed up {} volumes as recovery point rp-1 (operational tier: snapshots).",
        VOLUMES.len()
    );

    // 2 + 3. Vault transfer, and geo-replication triggered by its event.
    let (vaulted, replicated) =
        vault_and_replicate(broker.as_ref(), &names, &events, "rp-1", &mut timings).await?;
    rows.push(stats_row("rp-1 (full)", &vaulted, &replicated));
    println!(
        "2. vault-transfer stored rp-1 in the vault tier; 3. geo-replication copied it to the paired region."
    );

    // 4. Change some data: 1% of the database volume in scattered 4 KiB writes.
    let t = Instant::now();
    let (db, db_size) = VOLUMES[0];
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
    backup(&ctx, &disks, "rp-2").await?;
    timings.push(("4-5. change + incremental backup".into(), t.elapsed()));
    let (vaulted2, replicated2) =
        vault_and_replicate(broker.as_ref(), &names, &events, "rp-2", &mut timings).await?;
    rows.push(stats_row("rp-2 (incremental)", &vaulted2, &replicated2));
    println!(
        "5. Incremental rp-2: read {} KiB, stored {} KiB.",
        vaulted2.bytes_read / 1024,
        vaulted2.bytes_stored / 1024
    );

    // 6 + 7. Restore rp-2 from each tier through staging, and check every byte.
    for tier in [Tier::Vault, Tier::Secondary] {
        let t = Instant::now();
        let restore = format!(
            "restore-rp-2-{}",
            if tier == Tier::Vault {
                "vault"
            } else {
                "secondary"
            }
        );
        let job = RestoreHydrationJob {
            restore_id: restore.clone(),
            instance: INSTANCE.into(),
            recovery_point_id: "rp-2".into(),
            tier,
            staging_location: None,
            options: RestoreOptions {
                target_cluster: None,
                namespaces: Vec::new(),
                namespace_mapping: [("shop".to_owned(), "shop-restored".to_owned())].into(),
                existing: ExistingPolicy::Skip,
                include_volumes: true,
                dry_run: false,
            },
        };
        submit(
            broker.as_ref(),
            &names,
            &Envelope::new(restore.clone(), Message::RestoreHydration(job)),
        )
        .await?;
        events.wait("restore.hydrated").await?;
        timings.push((format!("6. restore-hydration from {tier:?}"), t.elapsed()));
        for (disk, size) in VOLUMES {
            let snapshot = format!("rp-2-{disk}");
            compare(&disks, &snapshot, &staging_disk_name(&restore, disk), *size).await?;
        }
        println!(
            "6. Hydrated rp-2 from the {tier:?} tier into staging disks; 7. every byte matches the rp-2 snapshots."
        );
    }

    trigger.trigger();
    fleet.await??;

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
    let logical: u64 = VOLUMES.iter().map(|(_, s)| s / 2).sum::<u64>() + vaulted2.bytes_read;
    let stored = vaulted.bytes_stored + vaulted2.bytes_stored;
    println!(
        "\nDedup + compression: {:.1} MiB of volume data kept as {:.1} MiB ({:.1}×).",
        logical as f64 / MIB as f64,
        stored as f64 / MIB as f64,
        logical as f64 / stored.max(1) as f64
    );
    println!(
        "Verified restore of both tiers in {:.1} s. Data lives under {} (key: vault.key).",
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

async fn open_store(url: &str) -> anyhow::Result<BlobStore> {
    if let Some(container) = url.strip_prefix("azurite://") {
        stowage_vault::store::create_azurite_container(container).await?;
    }
    crate::vault_config::open_store(url)
}

/// Snapshot every volume as `<rp>-<disk>` and write the recovery point's manifest. (The
/// snapshot stage does this, plus hooks and resource collection, when a cluster is attached.)
async fn backup(ctx: &VaultContext, disks: &LocalDiskProvider, rp: &str) -> anyhow::Result<()> {
    let mut volumes = Vec::new();
    for (disk, _) in VOLUMES {
        let snap = disks
            .snapshot(&DiskId((*disk).into()), &format!("{rp}-{disk}"))
            .await?;
        volumes.push(VolumeBackup {
            volume_id: (*disk).into(),
            namespace: "shop".into(),
            pvc: format!("{disk}-data"),
            size_bytes: snap.size,
            snapshot_id: snap.id.0,
            vault_version: None,
        });
    }
    let manifest = RecoveryPoint {
        id: rp.into(),
        instance: INSTANCE.into(),
        created_at: jiff::Timestamp::now(),
        tiers: vec![TierState {
            tier: Tier::Operational,
            state: RpState::Available,
            expires_at: None,
        }],
        resources: String::new(),
        volumes,
    };
    stowage_vault::catalog::write_recovery_point(&ctx.primary, &manifest).await?;
    Ok(())
}

async fn vault_and_replicate(
    broker: &dyn Broker,
    names: &Names,
    events: &Events,
    rp: &str,
    timings: &mut Vec<(String, Duration)>,
) -> anyhow::Result<(
    stowage_schemas::events::RpVaulted,
    stowage_schemas::events::RpReplicated,
)> {
    let t = Instant::now();
    let job = Envelope::new(
        format!("vault-transfer-{rp}"),
        Message::VaultTransfer(VaultTransferJob {
            instance: INSTANCE.into(),
            recovery_point_id: rp.into(),
        }),
    );
    submit(broker, names, &job).await?;
    let Message::RpVaulted(vaulted) = events.wait("rp.vaulted").await? else {
        unreachable!("filtered by kind")
    };
    timings.push((format!("2. vault-transfer {rp}"), t.elapsed()));
    let t = Instant::now();
    let Message::RpReplicated(replicated) = events.wait("rp.replicated").await? else {
        unreachable!("filtered by kind")
    };
    timings.push((format!("3. geo-replication {rp}"), t.elapsed()));
    Ok((vaulted, replicated))
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
                if let Some(failed) = pending.iter().find(|m| m.kind() == "event.job.failed") {
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
