//! A 1 TiB sparse volume, incrementally (issue 15, item 3): an incremental transfer after 1 GiB
//! of scattered changes takes time in proportion to the change, not to the volume or the vault,
//! and stays within a worker's 128 MiB.
//!
//! A 1 TiB sparse disk on the local disk provider (sparse image files, `SEEK_DATA` snapshots)
//! gets a base of `--base-mib` in scattered 1 MiB writes, a full transfer, then two rounds of
//! scattered changes (`--change-mib`, and a quarter of it) each followed by an incremental
//! transfer, timed, with this process's peak RSS reset before each transfer. With
//! `--synthetic-chunks N` the vault's chunk index first gets N synthesised entries (as
//! `index-bench` writes them), so the transfer consults the index of a large vault — the one
//! whole-index load this replaced would need ~60 bytes each (600 MB at 10 M).
//!
//! ```sh
//! cargo run --release -p stowage-load-tests --bin tib-bench -- --change-mib 1024 --synthetic-chunks 10000000
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use rand::{RngExt as _, SeedableRng as _};
use stowage_disk::{DiskId, DiskProvider as _, LocalDiskProvider};
use stowage_runtime::JobContext;
use stowage_schemas::Stage;
use stowage_schemas::domain::{RecoveryPoint, VolumeBackup};
use stowage_stages::VaultContext;
use stowage_vault::catalog::TransferStats;
use stowage_vault::crypto::VaultKey;
use stowage_vault::store::{BlobStore, LocalDurability};

#[path = "index_synth.rs"]
mod index_synth;
#[path = "rss.rs"]
mod rss;
use index_synth::{MIB, write_segments};
use rss::{peak_rss, reset_peak_rss};

#[derive(Debug, Parser)]
struct Args {
    /// Volume size in GiB (sparse).
    #[arg(long, default_value_t = 1024)]
    size_gib: u64,
    /// Data written before the full transfer, MiB (scattered 1 MiB writes).
    #[arg(long, default_value_t = 256)]
    base_mib: u64,
    /// Changed bytes for the first incremental, MiB (scattered 256 KiB writes); the second
    /// changes a quarter of it.
    #[arg(long, default_value_t = 1024)]
    change_mib: u64,
    /// Synthesised entries put in the vault's chunk index first.
    #[arg(long, default_value_t = 0)]
    synthetic_chunks: u64,
    /// Where to put the disk and the vault.
    #[arg(long)]
    workdir: Option<PathBuf>,
}

struct Run {
    seconds: f64,
    rss_before: u64,
    peak_rss: u64,
    stats: TransferStats,
}

const WRITE: u64 = 256 * 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let size = args.size_gib << 30;
    let work = args.workdir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("stowage-tib-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work)?;
    eprintln!("workdir {}", work.display());
    let disks = Arc::new(LocalDiskProvider::open(work.join("disks"))?);
    let disk = disks.create_disk("tib", size).await?;
    let store = BlobStore::local_folder(work.join("vault"), LocalDurability::Fsync)?;
    if args.synthetic_chunks > 0 {
        write_segments(&store, args.synthetic_chunks).await?;
    }
    let ctx = VaultContext::new(store, VaultKey::generate()?, disks.clone());
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);

    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..args.base_mib {
        rng.fill(&mut buf[..]);
        let at = rng.random_range(0..size >> 20) << 20;
        disks.write(&disk.id, at, &buf).await?;
    }
    let full = transfer(&ctx, &disks, &disk.id, "rp-0", size).await?;
    let mut rounds = Vec::new();
    for (n, change) in [args.change_mib << 20, (args.change_mib << 20) / 4]
        .into_iter()
        .enumerate()
    {
        let written = scatter(&disks, &disk.id, size, change, &mut rng).await?;
        let run = transfer(&ctx, &disks, &disk.id, &format!("rp-{}", n + 1), size).await?;
        rounds.push((written, run));
    }

    println!(
        "Volume {} GiB sparse; base {} MiB; vault index with {} synthesised chunks beside the real ones.\n",
        args.size_gib, args.base_mib, args.synthetic_chunks
    );
    println!(
        "| transfer | changed, MiB | read, MiB | stored, MiB | seconds | MiB/s of change | RSS before, MiB | peak RSS, MiB | ≤ 128 MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let row = |name: &str, changed: u64, run: &Run| {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} | {} |",
            changed as f64 / MIB,
            run.stats.bytes_read as f64 / MIB,
            run.stats.bytes_stored as f64 / MIB,
            run.seconds,
            changed as f64 / MIB / run.seconds,
            run.rss_before as f64 / MIB,
            run.peak_rss as f64 / MIB,
            if run.peak_rss <= 128 << 20 {
                "met"
            } else {
                "missed"
            }
        )
    };
    row("full (base)", args.base_mib << 20, &full);
    for (i, (changed, run)) in rounds.iter().enumerate() {
        row(&format!("incremental {}", i + 1), *changed, run);
    }
    let (a, b) = (&rounds[0], &rounds[1]);
    println!(
        "\nTime ratio of the two incrementals {:.2} for a change ratio of {:.2}.",
        a.1.seconds / b.1.seconds,
        a.0 as f64 / b.0 as f64
    );
    if args.workdir.is_none() {
        std::fs::remove_dir_all(&work)?;
    }
    Ok(())
}

/// `bytes` of random data in scattered 256 KiB writes at random 256 KiB-aligned places.
async fn scatter(
    disks: &LocalDiskProvider,
    disk: &DiskId,
    size: u64,
    bytes: u64,
    rng: &mut rand::rngs::StdRng,
) -> anyhow::Result<u64> {
    let mut places = std::collections::BTreeSet::new();
    while (places.len() as u64) < bytes / WRITE {
        places.insert(rng.random_range(0..size / WRITE));
    }
    let mut buf = vec![0u8; WRITE as usize];
    for place in &places {
        rng.fill(&mut buf[..]);
        disks.write(disk, place * WRITE, &buf).await?;
    }
    Ok(places.len() as u64 * WRITE)
}

async fn transfer(
    ctx: &VaultContext,
    disks: &LocalDiskProvider,
    disk: &DiskId,
    rp: &str,
    size: u64,
) -> anyhow::Result<Run> {
    let snap = disks.snapshot(disk, rp).await?;
    let manifest = RecoveryPoint {
        id: rp.into(),
        instance: "tib".into(),
        created_at: jiff::Timestamp::now(),
        tiers: Vec::new(),
        resources: String::new(),
        volumes: vec![VolumeBackup {
            volume_id: "tib".into(),
            namespace: "bench".into(),
            pvc: "tib".into(),
            size_bytes: size,
            snapshot_id: snap.id.0,
            vault_version: None,
            csi: None,
        }],
    };
    stowage_vault::catalog::write_recovery_point(&ctx.primary, &manifest).await?;
    reset_peak_rss()?;
    let rss_before = rss::rss_now();
    let started = Instant::now();
    let done = stowage_stages::vault_transfer::transfer(
        ctx,
        "tib",
        rp,
        &JobContext::detached(Stage::VaultTransfer),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Run {
        seconds: started.elapsed().as_secs_f64(),
        rss_before,
        peak_rss: peak_rss(),
        stats: done.stats,
    })
}
