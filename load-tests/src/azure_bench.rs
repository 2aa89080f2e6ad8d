//! The vault transfer from Azure managed disks, stood in for by Azurite page blobs, against
//! Azurite's raw read throughput measured in the same run:
//!
//! (a) a full transfer of a fully allocated disk of random bytes (the vault stage reads it
//!     through the Azure disk provider: the ARM stand-in of stowage-azure's tests hands out
//!     SAS URLs of Azurite blob snapshots), against reading the same snapshot straight from
//!     Azurite, 8 reads of 4 MiB in flight (`--raw-read-mib 1`: 1 MiB ranges), and discarding
//!     it (target ≥ 80%); the transfers read the very blob snapshot the raw reads read, into a
//!     local-folder vault with fsync'd writes, or (`--vault memory`) an in-memory one, which
//!     leaves the vault medium's cost out; the CPU seconds this process and Azurite spend a
//!     GiB in each phase say what the transfer takes from Azurite on shared cores;
//! (b) an incremental after scattered 64 KiB writes: the bytes the transfer read against the
//!     bytes changed (target ≤ 1.1×), the diff answered by the diff proxy of those tests
//!     (Azurite ignores `prevsnapshot`).
//!
//! ```sh
//! infra/scripts/start-azurite.sh
//! cargo build --release --locked -p stowage-load-tests --bin azure-bench
//! target/release/azure-bench --size-mib 256 --rounds 3 [--vault memory]
//! ```

#[path = "../../workers/azure/tests/azure/arm_server.rs"]
#[allow(dead_code)]
mod arm_server;
#[path = "../../workers/azure/tests/azure/azurite.rs"]
#[allow(dead_code)]
mod azurite;
#[path = "../../workers/azure/tests/azure/diff_proxy.rs"]
#[allow(dead_code)]
mod diff_proxy;
#[path = "rss.rs"]
mod rss;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use bytes::Bytes;
use clap::Parser;
use futures::{StreamExt as _, TryStreamExt as _};
use rand::{RngExt as _, SeedableRng as _};
use stowage_azure::data::{DataSettings, MAX_IO, PageBlob, PageRange};
use stowage_azure::{ArmClient, ArmSettings, AzureDiskProvider, AzureDiskSettings};
use stowage_disk::{DiskId, DiskProvider as _};
use stowage_runtime::{JobContext, StageHandler as _};
use stowage_schemas::domain::{RecoveryPoint, VolumeBackup};
use stowage_schemas::jobs::VaultTransferJob;
use stowage_schemas::{Envelope, Message, Stage};
use stowage_stages::{VaultContext, VaultTransfer};
use stowage_vault::crypto::VaultKey;
use stowage_vault::store::{BlobStore, LocalDurability};

use arm_server::{ArmServer, SUBSCRIPTION, TOKEN};
use azurite::{blob_url, blob_url_at, container, page_blob, snapshot};
use diff_proxy::DiffProxy;

const MIB: u64 = 1 << 20;

#[derive(Parser)]
struct Args {
    /// Size of the disk, MiB (a multiple of 4).
    #[arg(long, default_value_t = 512)]
    size_mib: u64,
    /// Reads (and Put Page calls) in flight, for the transfer and the raw read alike.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Share of the disk the incremental changes, percent.
    #[arg(long, default_value_t = 1.0)]
    changed_percent: f64,
    /// Pieces (1 MiB) the vault transfer reads and seals at once (`VaultContext::parallelism`):
    /// by default 32, what `stowage worker --disk-provider azure` sets (8 reads of 4 MiB in
    /// flight); 0 keeps the context's default (twice the cores, 4 to 16).
    #[arg(long, default_value_t = 32)]
    transfer_parallelism: usize,
    /// Raw reads and transfers timed (the best of each is reported, with all of them).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Size of each raw read, MiB (1 to 4): 1 asks for the transfer's piece size, to tell
    /// Azurite's per-request cost from the transfer's own.
    #[arg(long, default_value_t = 4)]
    raw_read_mib: u64,
    /// Where the vault the transfers fill lives: `folder`, a local folder with fsync'd writes
    /// (as a worker's local-folder vault), or `memory`, an in-memory store, which leaves out
    /// the vault medium's own cost (on this machine's disk, buffered writes and fsync cost
    /// seconds of system CPU a GiB, taken from Azurite on the same cores).
    #[arg(long, value_enum, default_value_t = VaultMedium::Folder)]
    vault: VaultMedium,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum VaultMedium {
    Folder,
    Memory,
}

#[derive(Debug)]
struct StaticToken;

#[async_trait::async_trait]
impl TokenCredential for StaticToken {
    async fn get_token(
        &self,
        _: &[&str],
        _: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            Secret::new(TOKEN),
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}

fn data_settings(concurrency: usize) -> DataSettings {
    DataSettings {
        concurrency,
        ..DataSettings::default()
    }
}

/// Reads all of `blob` (`size` bytes) in pieces of `piece` bytes (at most `MAX_IO`),
/// `concurrency` at once, discarding them; answers MiB/s.
async fn raw_read(
    blob: &PageBlob,
    size: u64,
    piece: u64,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let pieces = (0..size.div_ceil(piece)).map(|i| PageRange {
        offset: i * piece,
        len: piece.min(size - i * piece),
    });
    let read: u64 = futures::stream::iter(pieces)
        .map(|r| async move { blob.read(r).await.map(|b| b.len() as u64) })
        .buffer_unordered(concurrency)
        .try_fold(0u64, |n, len| async move { Ok(n + len) })
        .await?;
    anyhow::ensure!(read == size, "read {read} of {size} bytes");
    Ok(size as f64 / MIB as f64 / started.elapsed().as_secs_f64())
}

/// Writes `data` at `offset` of the page blob `name`.
async fn put(container: &str, name: &str, offset: u64, data: &[u8]) -> anyhow::Result<()> {
    let len = data.len() as u64;
    page_blob(container, name)
        .upload_pages(
            <azure_core::http::RequestContent<Bytes, azure_core::http::NoFormat> as From<Bytes>>::from(
                Bytes::copy_from_slice(data),
            ),
            len,
            azure_storage_blob::models::HttpRange::new(offset, len),
            None,
        )
        .await?;
    Ok(())
}

struct Bench {
    server: ArmServer,
    proxy: DiffProxy,
    container: String,
    disk: DiskId,
    size: u64,
    disks: Arc<AzureDiskProvider>,
}

impl Bench {
    /// Snapshots the disk as `rp` (its SAS through the diff proxy when `diff` is set, else
    /// straight to Azurite), writes the recovery point, and times its vault transfer; answers
    /// (seconds, bytes the transfer read). With `blob_snapshot`, the ARM snapshot stands for
    /// that existing Azurite blob snapshot instead of a new one: the full rounds read the very
    /// snapshot the raw reads read, and Azurite does not copy the disk (in memory) just before
    /// a timed transfer, which it does not before a raw read.
    async fn backup(
        &self,
        ctx: &VaultContext,
        rp: &str,
        diff: bool,
        blob_snapshot: Option<&str>,
    ) -> anyhow::Result<(f64, u64)> {
        let taken = match blob_snapshot {
            Some(taken) => taken.to_owned(),
            None => snapshot(&self.container, "disk").await,
        };
        let endpoint = if diff {
            self.proxy.endpoint.clone()
        } else {
            "http://127.0.0.1:10000/devstoreaccount1".to_owned()
        };
        let name = format!("bench-{rp}");
        let id = stowage_azure::ResourceId::snapshot(SUBSCRIPTION, "snaps", &name);
        self.server.lock().sas.insert(
            id.to_string().to_lowercase(),
            blob_url_at(&endpoint, &self.container, "disk", Some(&taken))
                .expose()
                .to_string(),
        );
        let snap = self.disks.snapshot(&self.disk, &name).await?;
        let manifest = RecoveryPoint {
            id: rp.into(),
            instance: "bench".into(),
            created_at: jiff::Timestamp::now(),
            tiers: Vec::new(),
            resources: String::new(),
            volumes: vec![VolumeBackup {
                volume_id: "disk".into(),
                namespace: "bench".into(),
                pvc: "disk".into(),
                size_bytes: self.size,
                snapshot_id: snap.id.0,
                vault_version: None,
                csi: None,
            }],
        };
        stowage_vault::catalog::write_recovery_point(&ctx.primary, &manifest).await?;
        let started = Instant::now();
        let outcome = VaultTransfer(ctx.clone())
            .handle_envelope(
                JobContext::detached(Stage::VaultTransfer),
                Envelope::new(
                    format!("vt-{rp}"),
                    Message::VaultTransfer(VaultTransferJob {
                        instance: "bench".into(),
                        recovery_point_id: rp.into(),
                    }),
                ),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let seconds = started.elapsed().as_secs_f64();
        let [Message::RpVaulted(vaulted)] = outcome.messages() else {
            anyhow::bail!("no rp.vaulted: {:?}", outcome.messages());
        };
        Ok((seconds, vaulted.bytes_read))
    }
}

/// The process id of Azurite's blob service on this machine, if it runs here.
fn azurite_pid() -> Option<String> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().into_string().ok()?;
            pid.parse::<u32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains("azurite-blob")
                .then_some(pid)
        })
}

/// CPU seconds (user + system) used so far by this process and by process `other`.
fn cpu_seconds(other: Option<&str>) -> (f64, f64) {
    let of = |pid: &str| {
        // Fields after the command name (in parentheses): utime and stime are the 12th and
        // 13th, in clock ticks (100 a second on Linux).
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
                let ticks =
                    fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
                Some(ticks as f64 / 100.0)
            })
            .unwrap_or(0.0)
    };
    (of("self"), other.map_or(0.0, of))
}

/// Runs under `MALLOC_ARENA_MAX=2`, as a worker does (see `rss::with_two_malloc_arenas`), so
/// the peak RSS reported is a worker's.
fn main() -> anyhow::Result<()> {
    rss::with_two_malloc_arenas()?;
    tokio::runtime::Runtime::new()?.block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    let args = Args::parse();
    // The transfer's own account of what it waited for (sealed pieces or pack uploads), on
    // stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "warn,stowage_stages::vault_transfer=info",
        ))
        .init();
    anyhow::ensure!(
        args.size_mib % 4 == 0 && args.size_mib > 0,
        "--size-mib: a multiple of 4"
    );
    let size = args.size_mib * MIB;
    let started_load = rss::load_average();
    let server = ArmServer::start().await;
    let proxy = DiffProxy::start().await;
    let container = container().await;
    page_blob(&container, "disk").create(size, None).await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut buf = vec![0u8; 4 * MIB as usize];
    let mut at = 0;
    while at < size {
        rng.fill(&mut buf[..]);
        put(&container, "disk", at, &buf).await?;
        at += buf.len() as u64;
    }
    let disk = DiskId(server.add_disk("MC_bench", "disk", size, "AllowAll"));
    let mut settings = ArmSettings::public_cloud(SUBSCRIPTION);
    settings.endpoint = azure_core::http::Url::parse(&server.url)?;
    settings.poll_interval = Duration::from_millis(10);
    let arm = ArmClient::new(settings, Arc::new(StaticToken))?;
    let disks = Arc::new(AzureDiskProvider::new(
        arm,
        AzureDiskSettings {
            snapshot_group: "snaps".into(),
            staging_group: "staging".into(),
            region: "westeurope".into(),
            staging_sku: None,
            read_access: Duration::from_secs(3600),
            idle_end: Duration::from_secs(60),
            max_vault_disk_bytes: None,
            data: data_settings(args.concurrency),
        },
    ));
    let vault_dir =
        std::env::temp_dir().join(format!("stowage-azure-bench-{}", std::process::id()));
    let vault_at = |name: &str| -> anyhow::Result<VaultContext> {
        let store = match args.vault {
            VaultMedium::Folder => {
                BlobStore::local_folder(vault_dir.join(name), LocalDurability::Fsync)?
            }
            VaultMedium::Memory => BlobStore::in_memory(),
        };
        let mut ctx = VaultContext::new(store, VaultKey::generate()?, disks.clone());
        if args.transfer_parallelism > 0 {
            ctx.parallelism = args.transfer_parallelism;
        }
        Ok(ctx)
    };
    let parallelism = vault_at("probe")?.parallelism;
    let bench = Bench {
        server,
        proxy,
        container: container.clone(),
        disk,
        size,
        disks: disks.clone(),
    };

    // (a) Raw reads of the first snapshot, straight from Azurite, and full transfers (each of
    // a new recovery point of the same data: a fresh vault each round, so none dedups).
    let raw_snapshot = snapshot(&container, "disk").await;
    let raw_blob = PageBlob::new(
        blob_url(&container, "disk", Some(&raw_snapshot)),
        &data_settings(args.concurrency),
    )?;
    let raw_piece = args.raw_read_mib * MIB;
    anyhow::ensure!(
        (1..=MAX_IO / MIB).contains(&args.raw_read_mib),
        "--raw-read-mib must be 1 to {}",
        MAX_IO / MIB
    );
    let mut raws = Vec::new();
    let mut fulls = Vec::new();
    // The benchmark's own peak resident set during the full transfers (the vault stage's
    // buffers; Azurite is a process of its own).
    let mut peak_rss = 0u64;
    // CPU seconds (this process, Azurite) spent in the raw reads and in the transfers: on a
    // machine where both share the cores, what the transfer spends is taken from Azurite.
    let azurite = azurite_pid();
    let (mut raw_cpu, mut transfer_cpu) = ((0.0, 0.0), (0.0, 0.0));
    for round in 0..args.rounds {
        let before = cpu_seconds(azurite.as_deref());
        raws.push(raw_read(&raw_blob, size, raw_piece, args.concurrency).await?);
        let between = cpu_seconds(azurite.as_deref());
        let name = format!("vault-{round}");
        let ctx = vault_at(&name)?;
        rss::reset_peak_rss()?;
        let (seconds, read) = bench
            .backup(&ctx, &format!("full-{round}"), false, Some(&raw_snapshot))
            .await?;
        peak_rss = peak_rss.max(rss::peak_rss());
        let after = cpu_seconds(azurite.as_deref());
        raw_cpu.0 += between.0 - before.0;
        raw_cpu.1 += between.1 - before.1;
        transfer_cpu.0 += after.0 - between.0;
        transfer_cpu.1 += after.1 - between.1;
        anyhow::ensure!(
            read == size,
            "the full transfer read {read} of {size} bytes"
        );
        fulls.push(size as f64 / MIB as f64 / seconds);
        std::fs::remove_dir_all(vault_dir.join(&name)).ok();
        eprintln!(
            "round {round}: raw read {:.0} MiB/s, full transfer {:.0} MiB/s (load {})",
            raws[round],
            fulls[round],
            rss::load_average()
        );
        // Not a parent of the next round's snapshot, nor of (b)'s first.
        bench
            .disks
            .delete_snapshot(&stowage_disk::SnapshotId(format!("bench-full-{round}")))
            .await?;
    }
    raws.push(raw_read(&raw_blob, size, raw_piece, args.concurrency).await?);

    // (b) A full version in the bench's vault, scattered 64 KiB writes, and the incremental.
    let ctx = vault_at("vault")?;
    bench.backup(&ctx, "rp-1", true, None).await?;
    let piece = 64 * 1024u64;
    let pieces = ((size as f64 * args.changed_percent / 100.0) / piece as f64).ceil() as u64;
    let mut offsets = BTreeSet::new();
    while (offsets.len() as u64) < pieces {
        offsets.insert(rng.random_range(0..size / piece) * piece);
    }
    let mut small = vec![0u8; piece as usize];
    for offset in &offsets {
        rng.fill(&mut small[..]);
        put(&container, "disk", *offset, &small).await?;
    }
    let changed = offsets.len() as u64 * piece;
    let diffs_before = bench.proxy.diffs.load(std::sync::atomic::Ordering::SeqCst);
    let (incr_seconds, incr_read) = bench.backup(&ctx, "rp-2", true, None).await?;
    let diffs = bench.proxy.diffs.load(std::sync::atomic::Ordering::SeqCst) - diffs_before;
    disks.end_all_access().await?;
    let ended_load = rss::load_average();

    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (raw_best, full_best) = (best(&raws), best(&fulls));
    println!(
        "disk {} MiB of random bytes; raw read: {} reads of {} MiB in flight; transfer: {parallelism} pieces of 1 MiB read and sealed at once, into a vault {}; {} rounds",
        args.size_mib,
        args.concurrency,
        args.raw_read_mib,
        match args.vault {
            VaultMedium::Folder => "in a local folder (fsync'd writes)",
            VaultMedium::Memory => "in memory",
        },
        args.rounds
    );
    println!("load average at start: {started_load}; at end: {ended_load}");
    println!(
        "(a) Azurite raw read, MiB/s: {} (best {raw_best:.0})",
        fmt(&raws)
    );
    println!(
        "(a) full vault transfer, MiB/s: {} (best {full_best:.0})",
        fmt(&fulls)
    );
    println!(
        "(a) best transfer / best raw read: {:.0}% (target ≥ 80%: {})",
        100.0 * full_best / raw_best,
        if full_best >= 0.8 * raw_best {
            "met"
        } else {
            "missed"
        }
    );
    // Each round's transfer against the raw read just before it: one outlier of either
    // cannot decide the figure, as it can best against best.
    let mut per_round: Vec<f64> = fulls.iter().zip(&raws).map(|(f, r)| f / r).collect();
    per_round.sort_by(f64::total_cmp);
    let median = per_round[per_round.len() / 2];
    println!(
        "(a) per round, transfer / the raw read before it: {} (median {:.0}%; target ≥ 80%: {})",
        per_round
            .iter()
            .map(|x| format!("{:.0}%", 100.0 * x))
            .collect::<Vec<_>>()
            .join(", "),
        100.0 * median,
        if median >= 0.8 { "met" } else { "missed" }
    );
    let per_gib = |cpu: f64| cpu / (args.rounds as f64 * size as f64 / (1u64 << 30) as f64);
    println!(
        "(a) CPU seconds a GiB, this process + Azurite: raw read {:.2} + {:.2}, full transfer {:.2} + {:.2}{}",
        per_gib(raw_cpu.0),
        per_gib(raw_cpu.1),
        per_gib(transfer_cpu.0),
        per_gib(transfer_cpu.1),
        if azurite.is_none() {
            " (Azurite's process not found: its share reads 0)"
        } else {
            ""
        }
    );
    if args.vault == VaultMedium::Folder {
        println!(
            "(a) peak RSS of this process during a full transfer: {} MiB (a worker's budget: 128 MiB)",
            peak_rss / MIB
        );
    } else {
        println!("(a) peak RSS: not measured (the in-memory vault lives in this process)");
    }
    println!(
        "(b) incremental: {} bytes changed in {} writes of 64 KiB, {} bytes read ({:.3}×; target ≤ 1.1×: {}), {} diff request(s), {:.2} s",
        changed,
        offsets.len(),
        incr_read,
        incr_read as f64 / changed as f64,
        if incr_read * 10 <= changed * 11 {
            "met"
        } else {
            "missed"
        },
        diffs,
        incr_seconds
    );
    std::fs::remove_dir_all(&vault_dir).ok();
    azurite::delete_container(&container).await;
    Ok(())
}
