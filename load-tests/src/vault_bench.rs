//! The vault data plane against restic and borg, and against what the machine can do, on the
//! same data, in the same run, with every repository on the same filesystem.
//!
//! Each of `--runs` rounds (default 3) measures, in this order:
//!
//! (l) the raw limit of each step on the image's bytes: sequential read of the snapshot image;
//!     keyed BLAKE3 of every piece; zstd-1 (a full attempt) and AES-256-GCM of each distinct
//!     chunk (what a full transfer must compress and encrypt); a sequential write of the image
//!     size, fsync'd (the fastest of: all then one fsync; each 16 MiB block's writeback started
//!     at once, then the fsync; that in two files by two threads). The full transfer's limit is the 2-core pipeline bound
//!     `max(read, (hash + zstd + aes) / cores, write of the stored bytes)`; the restore's is the
//!     fsync'd write of the image;
//! (a) full transfer of an image, half random and half a repeated pattern, into a fresh vault
//!     and fresh restic and borg repositories;
//! (b) incremental after 1% of the image changed in scattered 4 KiB writes: bytes added and time;
//! (c) restore (hydration) throughput;
//! (d) peak RSS: this process for Stowage (it runs the same code a worker runs, under the
//!     workers' `MALLOC_ARENA_MAX=2`), GNU time's maximum resident set for the peers.
//!
//! The report gives the median of the rounds and the spread (min–max), and the load average at
//! the start of each round (the machine may be shared).
//!
//! ```sh
//! cargo run --release -p stowage-load-tests --bin vault-bench -- --size-mib 1024
//! ```
//! Needs `restic`, `borg` and GNU `time` (`apt-get install restic borgbackup time`).

#[path = "rss.rs"]
mod rss;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Parser;
use rand::{RngExt as _, SeedableRng as _};
use stowage_disk::{DiskId, DiskProvider as _, LocalDiskProvider, SnapshotId};
use stowage_runtime::JobContext;
use stowage_schemas::Stage;
use stowage_schemas::domain::{RecoveryPoint, Tier, VolumeBackup};
use stowage_schemas::jobs::{RestoreHydrationJob, RestoreOptions};
use stowage_stages::VaultContext;
use stowage_vault::crypto::VaultKey;
use stowage_vault::store::{BlobStore, LocalDurability};

const MIB: u64 = 1 << 20;

#[derive(Debug, Parser)]
struct Args {
    /// Image size in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Rounds; the report gives their median and spread.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where to put the disks and the three repositories (one filesystem).
    #[arg(long)]
    workdir: Option<PathBuf>,
}

struct Measure {
    seconds: f64,
    bytes_added: u64,
    peak_rss: u64,
}

/// Seconds each step takes on this machine for the image of one round (see the module doc).
#[derive(Debug, Clone, Copy)]
struct Limits {
    read: f64,
    hash: f64,
    zstd: f64,
    aes: f64,
    /// Sequential write of the whole image, fsync'd.
    write_image: f64,
    /// Bytes a full transfer must store (distinct non-zero chunks).
    stored: u64,
    cores: f64,
}

impl Limits {
    /// The fsync'd write of the bytes a full transfer stores, at the measured rate.
    fn write_stored(&self, size: u64) -> f64 {
        self.write_image * self.stored as f64 / size as f64
    }

    /// The 2-core pipeline bound for the full transfer, and the step that sets it.
    fn full(&self, size: u64) -> (f64, &'static str) {
        let cpu = (self.hash + self.zstd + self.aes) / self.cores;
        let write = self.write_stored(size);
        let mut bound = (self.read, "read");
        if cpu > bound.0 {
            bound = (cpu, "CPU (hash + zstd + AES) / cores");
        }
        if write > bound.0 {
            bound = (write, "fsync'd write");
        }
        bound
    }
}

/// One round's figures.
struct Round {
    load: String,
    limits: Limits,
    ours_full: Measure,
    restic_full: Measure,
    borg_full: Measure,
    ours_incr: Measure,
    restic_incr: Measure,
    borg_incr: Measure,
    ours_restore: f64,
    restic_restore: f64,
    restic_sync: f64,
    borg_restore: f64,
    borg_sync: f64,
    changed_bytes: u64,
}

/// Runs the benchmark under `MALLOC_ARENA_MAX=2`, as every worker deployment runs
/// (infra/k8s): glibc reads it when the process starts, so without it the bench runs itself
/// again with it set. The peers run with their default environment.
fn main() -> anyhow::Result<()> {
    rss::with_two_malloc_arenas()?;
    tokio::runtime::Runtime::new()?.block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    let args = Args::parse();
    // The transfer's and the hydration's own accounts of what they waited for, on stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "warn,stowage_stages::vault_transfer=info,stowage_stages::restore_hydration=info",
        ))
        .init();
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    let size = args.size_mib * MIB;
    let work = args.workdir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("stowage-vault-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work)?;
    eprintln!("workdir {}", work.display());
    for tool in ["restic", "borg", "/usr/bin/time"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} is missing: apt-get install restic borgbackup time");
        }
    }

    // The image: the same bytes on a Stowage disk and in a plain file for the peers.
    let disks = Arc::new(LocalDiskProvider::open(work.join("disks"))?);
    let disk = disks.create_disk("image", size).await?;
    let raw = work.join("image.raw");
    let file = std::fs::File::create(&raw)?;
    file.set_len(size)?;
    let pattern: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut buf = vec![0u8; 4 * MIB as usize];
    let mut offset = 0;
    while offset < size {
        if offset < size / 2 {
            rng.fill(&mut buf[..]);
        } else {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = pattern[i % pattern.len()];
            }
        }
        disks.write(&disk.id, offset, &buf).await?;
        std::os::unix::fs::FileExt::write_all_at(&file, &buf, offset)?;
        offset += buf.len() as u64;
    }
    file.sync_all()?;
    drop(file);
    drop(buf);
    eprintln!(
        "peak RSS after writing the image: {} MiB",
        rss::peak_rss() / MIB
    );

    let mut rounds = Vec::new();
    for round in 0..args.runs {
        let load = rss::load_average();
        eprintln!("round {} of {} (load {load})", round + 1, args.runs);
        let figures = one_round(&work, &disks, &raw, size, round, load).await?;
        eprintln!(
            "  full {:.2} s (limit {:.2} s), restore {:.2} s (limit {:.2} s), restic full {:.2} s",
            figures.ours_full.seconds,
            figures.limits.full(size).0,
            figures.ours_restore,
            figures.limits.write_image,
            figures.restic_full.seconds
        );
        rounds.push(figures);
    }
    let peak = rss::peak_rss();
    report(&args, size, &rounds, peak);
    std::fs::remove_dir_all(&work).ok();
    Ok(())
}

/// One round: raw limits, then Stowage, restic and borg into fresh repositories: full,
/// incremental, restore.
async fn one_round(
    work: &Path,
    disks: &Arc<LocalDiskProvider>,
    raw: &Path,
    size: u64,
    round: usize,
    load: String,
) -> anyhow::Result<Round> {
    let dir = work.join(format!("round-{round}"));
    std::fs::create_dir_all(&dir)?;
    let vault = dir.join("vault");
    let ctx = VaultContext::new(
        BlobStore::local_folder(&vault, LocalDurability::Fsync)?,
        VaultKey::generate()?,
        disks.clone(),
    );
    let (full_rp, incr_rp) = (format!("r{round}-full"), format!("r{round}-incr"));

    // (l) the snapshot the full transfer reads, then the raw limits on its bytes.
    let snap = disks.snapshot(&DiskId("image".into()), &full_rp).await?;
    sync()?;
    let limits = raw_limits(
        &disks.snapshot_path(&snap.id),
        &dir.join("write-limit"),
        size,
        &ctx.key,
        &ctx.grid,
    )?;

    eprintln!("  peak RSS after the limits: {} MiB", rss::peak_rss() / MIB);
    // (a) full
    let ours_full = stowage_backup(&ctx, disks, &full_rp, size, &vault).await?;
    eprintln!(
        "  peak RSS after the full transfer: {} MiB",
        rss::peak_rss() / MIB
    );
    let peers = Peers {
        restic_repo: dir.join("restic"),
        borg_repo: dir.join("borg"),
        raw: raw.to_owned(),
    };
    run(&mut peers.restic(&["init"]))?;
    run(peers
        .borg(&["init", "--encryption=repokey-blake2"])
        .arg(&peers.borg_repo))?;
    let restic_full = peers.restic_backup()?;
    let borg_full = peers.borg_create("full")?;

    // (b) 1% changed, in scattered 4 KiB writes, identical on both copies.
    let writes = (size / 100 / 4096) as usize;
    let mut changed = std::collections::BTreeSet::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(2 + round as u64);
    while changed.len() < writes {
        changed.insert(rng.random_range(0..size / 4096));
    }
    let file = std::fs::OpenOptions::new().write(true).open(raw)?;
    let mut block = vec![0u8; 4096];
    for b in &changed {
        rng.fill(&mut block[..]);
        disks
            .write(&DiskId("image".into()), b * 4096, &block)
            .await?;
        std::os::unix::fs::FileExt::write_all_at(&file, &block, b * 4096)?;
    }
    file.sync_all()?;
    drop(file);
    let changed_bytes = writes as u64 * 4096;
    let ours_incr = stowage_backup(&ctx, disks, &incr_rp, size, &vault).await?;
    eprintln!(
        "  peak RSS after the incremental: {} MiB",
        rss::peak_rss() / MIB
    );
    let restic_incr = peers.restic_backup()?;
    let borg_incr = peers.borg_create("incr")?;

    // (c) restore of the latest version. Each restore starts with nothing dirty in the page
    // cache; Stowage's hydration fsyncs its disk before reporting done (the restore stage acts
    // on that), the peers do not, so their restores are also timed with the `sync` that makes
    // them durable.
    sync()?;
    let restore_id = format!("bench-{round}");
    let started = Instant::now();
    let staging = stowage_stages::restore_hydration::hydrate(
        &ctx,
        &hydration(&restore_id, &incr_rp),
        &JobContext::detached(Stage::RestoreHydration),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ours_restore = started.elapsed().as_secs_f64();
    eprintln!(
        "  peak RSS after the restore: {} MiB",
        rss::peak_rss() / MIB
    );
    anyhow::ensure!(staging.disks.len() == 1);
    let restore_dir = dir.join("restic-restore");
    sync()?;
    let restic_restore = peer(
        &restore_dir,
        peers
            .restic(&["restore", "latest"])
            .arg("--target")
            .arg(&restore_dir),
    )?;
    let restic_sync = timed_sync()?;
    let borg_dir = dir.join("borg-restore");
    std::fs::create_dir_all(&borg_dir)?;
    sync()?;
    let borg_restore = peer(
        &borg_dir,
        peers
            .borg(&["extract"])
            .arg(peers.borg_archive("incr"))
            .current_dir(&borg_dir),
    )?;
    let borg_sync = timed_sync()?;

    // Leave the next round the image and nothing else.
    for staged in &staging.disks {
        disks.delete_disk(&DiskId(staged.disk_id.clone())).await?;
    }
    for rp in [&full_rp, &incr_rp] {
        disks.delete_snapshot(&SnapshotId(rp.clone())).await?;
    }
    std::fs::remove_dir_all(&dir)?;
    sync()?;
    Ok(Round {
        load,
        limits,
        ours_full,
        restic_full,
        borg_full,
        ours_incr,
        restic_incr,
        borg_incr,
        ours_restore,
        restic_restore: restic_restore.seconds,
        restic_sync,
        borg_restore: borg_restore.seconds,
        borg_sync,
        changed_bytes,
    })
}

/// The raw limit of each step on the snapshot image's bytes (see the module doc). Memory: one
/// 16 MiB block of the image at a time.
fn raw_limits(
    image: &Path,
    scratch: &Path,
    size: u64,
    key: &VaultKey,
    grid: &stowage_vault::chunk::ChunkGrid,
) -> anyhow::Result<Limits> {
    use std::io::Read as _;
    let piece = grid.chunk_size() as usize;
    let block_len = 16 * MIB as usize;
    let keys = key.chunk_keys();
    let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &[7u8; 32])
        .map_err(|_| anyhow::anyhow!("AES-256-GCM key setup failed"))?;
    let aes = ring::aead::LessSafeKey::new(unbound);

    // Sequential read, alone.
    let mut block = vec![0u8; block_len];
    let started = Instant::now();
    let mut file = std::fs::File::open(image)?;
    let mut total = 0u64;
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let read = started.elapsed().as_secs_f64();
    anyhow::ensure!(total == size, "read {total} of {size} image bytes");

    // Per piece: keyed BLAKE3 of every non-zero piece; zstd-1 and AES-256-GCM of each distinct one.
    let (mut hash, mut zstd, mut aes_secs) = (0f64, 0f64, 0f64);
    let mut seen = std::collections::HashSet::new();
    let mut stored = 0u64;
    let mut scratch_buf = Vec::with_capacity(piece + 16);
    let mut compressor = zstd::bulk::Compressor::new(1)?;
    let mut file = std::fs::File::open(image)?;
    let mut offset = 0u64;
    while offset < size {
        let len = (size - offset).min(block_len as u64) as usize;
        file.read_exact(&mut block[..len])?;
        for data in block[..len].chunks(piece) {
            if stowage_vault::chunk::is_all_zero(data) {
                continue;
            }
            let t = Instant::now();
            let id = keys.chunk_id(data);
            hash += t.elapsed().as_secs_f64();
            if !seen.insert(id) {
                continue;
            }
            stored += data.len() as u64;
            let t = Instant::now();
            let compressed = compressor.compress(data)?;
            zstd += t.elapsed().as_secs_f64();
            let _ = std::hint::black_box(compressed);
            scratch_buf.clear();
            scratch_buf.extend_from_slice(data);
            let t = Instant::now();
            let tag = aes
                .seal_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key([0u8; 12]),
                    ring::aead::Aad::from(id.as_bytes()),
                    &mut scratch_buf,
                )
                .map_err(|_| anyhow::anyhow!("AES-256-GCM sealing failed"))?;
            aes_secs += t.elapsed().as_secs_f64();
            let _ = std::hint::black_box(tag);
        }
        offset += len as u64;
    }

    // Sequential write of the image size, fsync'd (the restore's whole job; the full transfer
    // writes `stored` of it): the fastest of three ways, since which one a (virtualised) disk
    // prefers varies: everything to the page cache then one fsync; each 16 MiB block's
    // writeback started as soon as it is written, then the fsync; and that in two files by two
    // threads at once, half the bytes each.
    drop(block);
    let mut write_image = f64::INFINITY;
    for (streams, start_writeback) in [(1u64, false), (1, true), (2, true)] {
        sync()?;
        let started = Instant::now();
        std::thread::scope(|scope| -> anyhow::Result<()> {
            let writers: Vec<_> = (0..streams)
                .map(|i| {
                    let path = scratch.with_extension(format!("{i}"));
                    let bytes = size / streams;
                    scope.spawn(move || write_fsynced(&path, bytes, block_len, start_writeback))
                })
                .collect();
            for writer in writers {
                writer
                    .join()
                    .map_err(|_| anyhow::anyhow!("a writer thread panicked"))??;
            }
            Ok(())
        })?;
        write_image = write_image.min(started.elapsed().as_secs_f64());
        for i in 0..streams {
            std::fs::remove_file(scratch.with_extension(format!("{i}")))?;
        }
    }
    Ok(Limits {
        read,
        hash,
        zstd,
        aes: aes_secs,
        write_image,
        stored,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
    })
}

/// Writes `bytes` to a new file at `path` in blocks of `block_len` (starting each block's
/// writeback at once when `start_writeback`), then fsyncs it.
fn write_fsynced(
    path: &Path,
    bytes: u64,
    block_len: usize,
    start_writeback: bool,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut block = vec![0u8; block_len];
    rand::rngs::StdRng::seed_from_u64(bytes).fill(&mut block[..]);
    let mut out = std::fs::File::create(path)?;
    let mut written = 0u64;
    while written < bytes {
        let len = (bytes - written).min(block_len as u64) as usize;
        out.write_all(&block[..len])?;
        if start_writeback {
            nix::fcntl::posix_fadvise(
                &out,
                written.try_into()?,
                len.try_into()?,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            )?;
        }
        written += len as u64;
    }
    out.sync_all()?;
    Ok(())
}

/// Median (upper for an even count), min and max.
fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

/// "median (min–max)" with `digits` decimals.
fn fmt_spread(values: Vec<f64>, digits: usize) -> String {
    let (m, lo, hi) = spread(values);
    format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
}

/// One round's seconds for a step.
type Seconds<'a> = dyn Fn(&Round) -> f64 + 'a;

fn report(args: &Args, size: u64, rounds: &[Round], peak: u64) {
    let mbps = |secs: f64| size as f64 / MIB as f64 / secs;
    let of = |f: &dyn Fn(&Round) -> f64| rounds.iter().map(f).collect::<Vec<f64>>();
    let changed = rounds[0].changed_bytes;
    println!(
        "Image: {} MiB, half random, half a repeated 4 KiB pattern; 1% changed = {} scattered 4 KiB writes ({} bytes) per round.",
        args.size_mib,
        changed / 4096,
        changed
    );
    println!(
        "{} rounds; every figure is the median (min–max); load average (1, 5, 15 min) at each round's start: {}.\n",
        rounds.len(),
        rounds
            .iter()
            .map(|r| r.load.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    );
    println!(
        "Raw limits on the same bytes (seconds for the image; MiB/s of the bytes each step handles):\n"
    );
    println!("| step | bytes | seconds | MiB/s |");
    println!("|---|---|---|---|");
    let stored = rounds[0].limits.stored;
    let rows: [(&str, u64, &Seconds<'_>); 6] = [
        ("sequential read of the snapshot image", size, &|r| {
            r.limits.read
        }),
        ("keyed BLAKE3 of every piece", size, &|r| r.limits.hash),
        ("zstd-1, full attempt, distinct chunks", stored, &|r| {
            r.limits.zstd
        }),
        ("AES-256-GCM, distinct chunks", stored, &|r| r.limits.aes),
        (
            "sequential write of the stored bytes, fsync'd",
            stored,
            &|r| r.limits.write_stored(size),
        ),
        ("sequential write of the image, fsync'd", size, &|r| {
            r.limits.write_image
        }),
    ];
    for (name, bytes, secs) in rows {
        let rate = |s: f64| bytes as f64 / MIB as f64 / s;
        println!(
            "| {name} | {} MiB | {} | {} |",
            bytes / MIB,
            fmt_spread(of(secs), 2),
            fmt_spread(of(&|r| rate(secs(r))), 0)
        );
    }
    let bounds: Vec<&str> = rounds.iter().map(|r| r.limits.full(size).1).collect();
    println!(
        "\nFull-transfer limit = max(read, (hash + zstd + AES) / {} cores, write of the stored bytes): {} MiB/s, bound by {}.",
        rounds[0].limits.cores,
        fmt_spread(of(&|r| mbps(r.limits.full(size).0)), 0),
        bounds.join(", ")
    );
    println!(
        "Restore limit = sequential write of the image, fsync'd: {} MiB/s.\n",
        fmt_spread(of(&|r| mbps(r.limits.write_image)), 0)
    );

    println!(
        "| case | Stowage | restic {} | borg {} | target | result |",
        version("restic"),
        version("borg")
    );
    println!("|---|---|---|---|---|---|");
    let full_share = of(&|r| r.limits.full(size).0 / r.ours_full.seconds);
    let full_vs_restic = of(&|r| r.restic_full.seconds / r.ours_full.seconds);
    println!(
        "| (a) full transfer, MiB/s | {} | {} | {} | ≥ 70% of limit, ≥ 2.5× restic | {}% of limit, {}× restic |",
        fmt_spread(of(&|r| mbps(r.ours_full.seconds)), 0),
        fmt_spread(of(&|r| mbps(r.restic_full.seconds)), 0),
        fmt_spread(of(&|r| mbps(r.borg_full.seconds)), 0),
        fmt_spread(full_share.iter().map(|s| s * 100.0).collect(), 0),
        fmt_spread(full_vs_restic, 1),
    );
    println!(
        "| (a) repository size after full, MiB | {} | {} | {} | | |",
        fmt_spread(of(&|r| r.ours_full.bytes_added as f64 / MIB as f64), 0),
        fmt_spread(of(&|r| r.restic_full.bytes_added as f64 / MIB as f64), 0),
        fmt_spread(of(&|r| r.borg_full.bytes_added as f64 / MIB as f64), 0),
    );
    let incr_ratio = of(&|r| r.ours_incr.bytes_added as f64 / r.changed_bytes as f64);
    let incr_met = incr_ratio.iter().all(|x| *x <= 1.5);
    println!(
        "| (b) bytes added by the incremental, × changed | {} | {} | {} | ≤ 1.5× | {} |",
        fmt_spread(incr_ratio, 2),
        fmt_spread(
            of(&|r| r.restic_incr.bytes_added as f64 / r.changed_bytes as f64),
            1
        ),
        fmt_spread(
            of(&|r| r.borg_incr.bytes_added as f64 / r.changed_bytes as f64),
            1
        ),
        if incr_met { "met" } else { "missed" }
    );
    let incr_time = of(&|r| 100.0 * r.ours_incr.seconds / r.ours_full.seconds);
    let time_met = spread(incr_time.clone()).0 <= 10.0;
    println!(
        "| (b) incremental time, % of full | {} | {} | {} | ≤ 10% | {} |",
        fmt_spread(incr_time, 1),
        fmt_spread(
            of(&|r| 100.0 * r.restic_incr.seconds / r.restic_full.seconds),
            1
        ),
        fmt_spread(
            of(&|r| 100.0 * r.borg_incr.seconds / r.borg_full.seconds),
            1
        ),
        if time_met {
            "met (median)"
        } else {
            "missed (median)"
        }
    );
    let restore_share = of(&|r| r.limits.write_image / r.ours_restore);
    println!(
        "| (c) restore to durable storage (peers: + sync), MiB/s | {} | {} | {} | ≥ 70% of limit, ≥ 2× restic | {}% of limit, {}× restic |",
        fmt_spread(of(&|r| mbps(r.ours_restore)), 0),
        fmt_spread(of(&|r| mbps(r.restic_restore + r.restic_sync)), 0),
        fmt_spread(of(&|r| mbps(r.borg_restore + r.borg_sync)), 0),
        fmt_spread(restore_share.iter().map(|s| s * 100.0).collect(), 0),
        fmt_spread(
            of(&|r| (r.restic_restore + r.restic_sync) / r.ours_restore),
            1
        ),
    );
    println!(
        "| (c) restore, peers without sync, MiB/s | {} (fsync'd) | {} | {} | | {}× restic |",
        fmt_spread(of(&|r| mbps(r.ours_restore)), 0),
        fmt_spread(of(&|r| mbps(r.restic_restore)), 0),
        fmt_spread(of(&|r| mbps(r.borg_restore)), 0),
        fmt_spread(of(&|r| r.restic_restore / r.ours_restore), 1),
    );
    let peer_peak =
        |f: &dyn Fn(&Round) -> u64| rounds.iter().map(f).max().unwrap_or(0) as f64 / MIB as f64;
    println!(
        "| (d) peak RSS, MiB (max of the rounds) | {:.0} | {:.0} (backup) | {:.0} (backup) | ≤ 128 MiB | {} |",
        peak as f64 / MIB as f64,
        peer_peak(&|r| r.restic_full.peak_rss.max(r.restic_incr.peak_rss)),
        peer_peak(&|r| r.borg_full.peak_rss.max(r.borg_incr.peak_rss)),
        if peak <= 128 * MIB { "met" } else { "missed" }
    );
    println!(
        "\nStowage seconds per round: full {}, incremental {}, restore {}; full-transfer limit {}; restore limit {}.",
        list(of(&|r| r.ours_full.seconds)),
        list(of(&|r| r.ours_incr.seconds)),
        list(of(&|r| r.ours_restore)),
        list(of(&|r| r.limits.full(size).0)),
        list(of(&|r| r.limits.write_image)),
    );
}

fn list(values: Vec<f64>) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Snapshot the image as `rp`, write its manifest, and time the vault transfer alone.
async fn stowage_backup(
    ctx: &VaultContext,
    disks: &LocalDiskProvider,
    rp: &str,
    size: u64,
    vault: &Path,
) -> anyhow::Result<Measure> {
    let snap = disks.snapshot(&DiskId("image".into()), rp).await?;
    let manifest = RecoveryPoint {
        id: rp.into(),
        instance: "bench".into(),
        created_at: jiff::Timestamp::now(),
        tiers: Vec::new(),
        resources: String::new(),
        volumes: vec![VolumeBackup {
            volume_id: "image".into(),
            namespace: "bench".into(),
            pvc: "image".into(),
            size_bytes: size,
            snapshot_id: snap.id.0,
            vault_version: None,
            csi: None,
        }],
    };
    stowage_vault::catalog::write_recovery_point(&ctx.primary, &manifest).await?;
    let before = dir_bytes(vault);
    let started = Instant::now();
    stowage_stages::vault_transfer::transfer(
        ctx,
        "bench",
        rp,
        &JobContext::detached(Stage::VaultTransfer),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Measure {
        seconds: started.elapsed().as_secs_f64(),
        bytes_added: dir_bytes(vault) - before,
        peak_rss: rss::peak_rss(),
    })
}

fn hydration(restore_id: &str, rp: &str) -> RestoreHydrationJob {
    RestoreHydrationJob {
        restore_id: restore_id.into(),
        instance: "bench".into(),
        recovery_point_id: rp.into(),
        tier: Tier::Vault,
        staging_location: None,
        options: RestoreOptions::default(),
    }
}

/// Run a peer command under GNU time; its duration, how much `dir` grew, and its peak RSS.
/// restic and borg, each with its repository, backing up the same raw image.
struct Peers {
    restic_repo: PathBuf,
    borg_repo: PathBuf,
    raw: PathBuf,
}

impl Peers {
    /// `restic <args> --repo <repo>`, with the repository's password.
    fn restic(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("restic");
        cmd.args(args)
            .arg("--repo")
            .arg(&self.restic_repo)
            .env("RESTIC_PASSWORD", "bench");
        cmd
    }

    /// `borg <args>`, with the repository's passphrase.
    fn borg(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("borg");
        cmd.args(args).env("BORG_PASSPHRASE", "bench");
        cmd
    }

    /// `<repo>::<name>`.
    fn borg_archive(&self, name: &str) -> String {
        format!("{}::{name}", self.borg_repo.display())
    }

    /// A restic backup of the image, measured.
    fn restic_backup(&self) -> anyhow::Result<Measure> {
        peer(&self.restic_repo, self.restic(&["backup"]).arg(&self.raw))
    }

    /// A borg archive `name` of the image, measured.
    fn borg_create(&self, name: &str) -> anyhow::Result<Measure> {
        let mut cmd = self.borg(&["create"]);
        cmd.arg(self.borg_archive(name)).arg(&self.raw);
        peer(&self.borg_repo, &mut cmd)
    }
}

fn peer(dir: &Path, cmd: &mut Command) -> anyhow::Result<Measure> {
    let before = dir_bytes(dir);
    let program = cmd.get_program().to_owned();
    let mut timed = Command::new("/usr/bin/time");
    timed
        .args(["-f", "%M"])
        .arg(&program)
        .args(cmd.get_args())
        .env_remove("MALLOC_ARENA_MAX");
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            timed.env(k, v);
        }
    }
    if let Some(dir) = cmd.get_current_dir() {
        timed.current_dir(dir);
    }
    let started = Instant::now();
    let out = timed.output().with_context(|| format!("run {program:?}"))?;
    let seconds = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{program:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let kb: u64 = stderr
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    Ok(Measure {
        seconds,
        bytes_added: dir_bytes(dir).saturating_sub(before),
        peak_rss: kb * 1024,
    })
}

/// Flush every dirty page to disk (`sync`).
fn sync() -> anyhow::Result<()> {
    anyhow::ensure!(Command::new("sync").status()?.success(), "sync failed");
    Ok(())
}

/// Seconds a `sync` takes.
fn timed_sync() -> anyhow::Result<f64> {
    let started = Instant::now();
    sync()?;
    Ok(started.elapsed().as_secs_f64())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn version(tool: &str) -> String {
    // restic prints its version with `restic version`, borg with `borg --version`.
    let arg = if tool == "restic" {
        "version"
    } else {
        "--version"
    };
    Command::new(tool)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(1)
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// Bytes of the files under `dir` (allocated size would hide sparse holes; this counts content).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match entry.metadata() {
            Ok(m) if m.is_dir() => total += dir_bytes(&entry.path()),
            Ok(m) => total += m.len(),
            Err(_) => {}
        }
    }
    total
}
