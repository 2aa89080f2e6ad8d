//! The vault data plane against restic and borg, on the same data, in the same run, with every
//! repository on the same filesystem.
//!
//! (a) full transfer of an image, half random and half a repeated pattern;
//! (b) incremental after 1% of the image changed in scattered 4 KiB writes: bytes added and time;
//! (c) restore (hydration) throughput;
//! (d) peak RSS: this process for Stowage (it runs the same code a worker runs), GNU time's
//!     maximum resident set for the peers.
//!
//! ```sh
//! cargo run --release -p stowage-load-tests --bin vault-bench -- --size-mib 1024
//! ```
//! Needs `restic`, `borg` and GNU `time` (`apt-get install restic borgbackup time`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Parser;
use rand::{RngExt as _, SeedableRng as _};
use stowage_disk::{DiskId, DiskProvider as _, LocalDiskProvider};
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
    /// Where to put the disks and the three repositories (one filesystem).
    #[arg(long)]
    workdir: Option<PathBuf>,
}

struct Measure {
    seconds: f64,
    bytes_added: u64,
    peak_rss: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let size = args.size_mib * MIB;
    let work = args.workdir.unwrap_or_else(|| {
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

    let vault = work.join("vault");
    let ctx = VaultContext::new(
        BlobStore::local_folder(&vault, LocalDurability::Fsync)?,
        VaultKey::generate()?,
        disks.clone(),
    );

    // (a) full
    let ours_full = stowage_backup(&ctx, &disks, "rp-1", size, &vault).await?;
    let peers = Peers {
        restic_repo: work.join("restic"),
        borg_repo: work.join("borg"),
        raw: raw.clone(),
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
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    while changed.len() < writes {
        changed.insert(rng.random_range(0..size / 4096));
    }
    let file = std::fs::OpenOptions::new().write(true).open(&raw)?;
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
    let ours_incr = stowage_backup(&ctx, &disks, "rp-2", size, &vault).await?;
    let restic_incr = peers.restic_backup()?;
    let borg_incr = peers.borg_create("incr")?;

    // (c) restore of the latest version. Each restore starts with nothing dirty in the page
    // cache; Stowage's hydration fsyncs its disk before reporting done (the restore stage acts
    // on that), the peers do not, so their restores are also timed with the `sync` that makes
    // them durable.
    sync()?;
    let started = Instant::now();
    let staging = stowage_stages::restore_hydration::hydrate(
        &ctx,
        &hydration(),
        &JobContext::detached(Stage::RestoreHydration),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ours_restore = started.elapsed().as_secs_f64();
    anyhow::ensure!(staging.disks.len() == 1);
    let restore_dir = work.join("restic-restore");
    sync()?;
    let restic_restore = peer(
        &restore_dir,
        peers
            .restic(&["restore", "latest"])
            .arg("--target")
            .arg(&restore_dir),
    )?;
    let restic_sync = timed_sync()?;
    let borg_dir = work.join("borg-restore");
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
    let peak = peak_rss_self();

    let gib = size as f64 / (1u64 << 30) as f64;
    let mbps = |secs: f64| size as f64 / MIB as f64 / secs;
    println!(
        "Image: {} MiB, half random, half a repeated 4 KiB pattern; 1% changed = {} scattered 4 KiB writes ({} bytes).\n",
        args.size_mib, writes, changed_bytes
    );
    println!(
        "| case | Stowage | restic {} | borg {} | target | result |",
        version("restic"),
        version("borg")
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| (a) full transfer, MiB/s | {:.0} | {:.0} | {:.0} | ≥ 2× restic | {:.1}× restic |",
        mbps(ours_full.seconds),
        mbps(restic_full.seconds),
        mbps(borg_full.seconds),
        restic_full.seconds / ours_full.seconds
    );
    println!(
        "| (a) repository size after full, MiB | {:.0} | {:.0} | {:.0} | | |",
        ours_full.bytes_added as f64 / MIB as f64,
        restic_full.bytes_added as f64 / MIB as f64,
        borg_full.bytes_added as f64 / MIB as f64
    );
    println!(
        "| (b) bytes added by the incremental, × changed | {:.2} | {:.1} | {:.1} | ≤ 1.5× | {} |",
        ours_incr.bytes_added as f64 / changed_bytes as f64,
        restic_incr.bytes_added as f64 / changed_bytes as f64,
        borg_incr.bytes_added as f64 / changed_bytes as f64,
        if (ours_incr.bytes_added as f64) <= 1.5 * changed_bytes as f64 {
            "met"
        } else {
            "missed"
        }
    );
    println!(
        "| (b) incremental time, % of full | {:.1}% | {:.1}% | {:.1}% | ≤ 10% | {} |",
        100.0 * ours_incr.seconds / ours_full.seconds,
        100.0 * restic_incr.seconds / restic_full.seconds,
        100.0 * borg_incr.seconds / borg_full.seconds,
        if ours_incr.seconds <= 0.1 * ours_full.seconds {
            "met"
        } else {
            "missed"
        }
    );
    println!(
        "| (c) restore to durable storage (peers: + sync), MiB/s | {:.0} | {:.0} | {:.0} | ≥ restic | {:.1}× restic |",
        mbps(ours_restore),
        mbps(restic_restore.seconds + restic_sync),
        mbps(borg_restore.seconds + borg_sync),
        (restic_restore.seconds + restic_sync) / ours_restore
    );
    println!(
        "| (c) restore, peers without sync, MiB/s | {:.0} (fsync'd) | {:.0} | {:.0} | | {:.1}× restic |",
        mbps(ours_restore),
        mbps(restic_restore.seconds),
        mbps(borg_restore.seconds),
        restic_restore.seconds / ours_restore
    );
    println!(
        "| (d) peak RSS, MiB | {:.0} | {:.0} (backup) | {:.0} (backup) | ≤ 128 MiB | {} |",
        peak as f64 / MIB as f64,
        restic_full.peak_rss.max(restic_incr.peak_rss) as f64 / MIB as f64,
        borg_full.peak_rss.max(borg_incr.peak_rss) as f64 / MIB as f64,
        if peak <= 128 * MIB { "met" } else { "missed" }
    );
    println!(
        "\nStowage times: full {:.2} s, incremental {:.2} s, restore {:.2} s ({gib:.2} GiB).",
        ours_full.seconds, ours_incr.seconds, ours_restore
    );
    std::fs::remove_dir_all(&work).ok();
    Ok(())
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
        peak_rss: peak_rss_self(),
    })
}

fn hydration() -> RestoreHydrationJob {
    RestoreHydrationJob {
        restore_id: "bench".into(),
        instance: "bench".into(),
        recovery_point_id: "rp-2".into(),
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
    timed.args(["-f", "%M"]).arg(&program).args(cmd.get_args());
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

fn peak_rss_self() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}
