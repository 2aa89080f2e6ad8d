//! The chunk index of a vault with millions of chunks (issue 15, item 3): lookup latency and the
//! memory a job needs to consult it.
//!
//! Segments are synthesised directly (format 2, through the same encoder jobs and compaction
//! use, streamed to a local-folder vault) — no chunks are written. The default layout is what
//! tiered compaction leaves: segments of geometrically falling size (¾ of what remains each,
//! down to a job-sized tail). Then a *fresh process* opens the index as a vault-transfer does
//! (`DedupIndex::open`) and looks up random known ids (each one filter probe per segment, a
//! fence search, one range read of one block) and random unknown ids (filters only), timing
//! each, and reports its own peak RSS.
//!
//! ```sh
//! cargo run --release -p stowage-load-tests --bin index-bench -- --chunks 10000000
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use rand::{RngExt as _, SeedableRng as _};
use stowage_vault::chunk::ChunkId;
use stowage_vault::index::DedupIndex;
use stowage_vault::store::{BlobStore, LocalDurability};

#[path = "index_synth.rs"]
mod index_synth;
#[path = "rss.rs"]
mod rss;
use index_synth::{MIB, id, layout_sizes, location, write_segment, write_segments};
use rss::{peak_rss, reset_peak_rss};

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    phase: Option<Phase>,
    /// Distinct chunks in the synthesised vault.
    #[arg(long, default_value_t = 10_000_000)]
    chunks: u64,
    /// Lookups of each kind (known, unknown).
    #[arg(long, default_value_t = 20_000)]
    lookups: u64,
    /// Where to put the vault (a local folder).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Also measure compaction: this many job-sized segments merged by `index::compact`.
    #[arg(long, default_value_t = 0)]
    compact_jobs: u64,
    /// Entries of each of those segments.
    #[arg(long, default_value_t = 4096)]
    compact_entries: u64,
}

#[derive(Debug, Subcommand)]
enum Phase {
    /// Only look up, in an index written before (used by the default run, in a child process,
    /// so the peak RSS is the reader's alone).
    Lookup {
        #[arg(long)]
        vault: PathBuf,
    },
    /// Only compact (in a child process too).
    Compact {
        #[arg(long)]
        vault: PathBuf,
    },
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn lookup(vault: &Path, chunks: u64, lookups: u64) -> anyhow::Result<()> {
    let store = BlobStore::local_folder(vault, LocalDurability::Fsync)?;
    let rss_start = peak_rss();
    reset_peak_rss()?;
    let started = Instant::now();
    let index = DedupIndex::open(&store).await?;
    let open_secs = started.elapsed().as_secs_f64();
    let rss_open = peak_rss();
    let sizes = layout_sizes(chunks);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut known = Vec::with_capacity(lookups as usize);
    let mut unknown = Vec::with_capacity(lookups as usize);
    for _ in 0..lookups {
        let segment = rng.random_range(0..sizes.len());
        let i = rng.random_range(0..sizes[segment]);
        let t = Instant::now();
        let found = index.get(&id(segment, i, sizes[segment])).await?;
        known.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(
            found == Some(location(segment, i)),
            "id {i} of segment {segment} not found"
        );
        let mut bytes = [0u8; 32];
        rng.fill(&mut bytes[..]);
        let t = Instant::now();
        let found = index.contains(&ChunkId::from_bytes(bytes)).await?;
        unknown.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(!found, "a random id was found");
    }
    known.sort_by(f64::total_cmp);
    unknown.sort_by(f64::total_cmp);
    let segments = index.segments();
    println!(
        "| chunks | segments | open, s | kept in memory (filters + fences), MiB | peak RSS after open, MiB | peak RSS after lookups, MiB |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {chunks} | {} | {open_secs:.2} | {:.1} | {:.0} | {:.0} |",
        segments.segments().len(),
        segments.resident_bytes() as f64 / MIB,
        rss_open as f64 / MIB,
        peak_rss() as f64 / MIB,
    );
    println!();
    println!("| lookup ({lookups} each) | p50, µs | p99, µs | max, µs | mean, µs |");
    println!("|---|---|---|---|---|");
    for (name, v) in [
        ("known id (one block read)", &known),
        ("unknown id (filters only)", &unknown),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
            percentile(v, 0.5),
            percentile(v, 0.99),
            v[v.len() - 1],
            v.iter().sum::<f64>() / v.len() as f64
        );
    }
    eprintln!(
        "process RSS before opening: {:.0} MiB",
        rss_start as f64 / MIB
    );
    Ok(())
}

/// `jobs` segments of `entries` each, then one compaction run: its time and peak RSS, and
/// every segment's first and last id found afterwards.
async fn compact(vault: &Path, jobs: u64, entries: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(vault)?;
    let store = BlobStore::local_folder(vault, LocalDurability::Fsync)?;
    for job in 0..jobs {
        write_segment(&store, &format!("job-{job:04}"), job as usize, entries).await?;
    }
    reset_peak_rss()?;
    let started = Instant::now();
    let report = stowage_vault::index::compact(
        &store,
        jiff::Timestamp::now(),
        jiff::SignedDuration::from_hours(24),
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let peak = peak_rss();
    let index = DedupIndex::open(&store).await?;
    for job in 0..jobs as usize {
        for i in [0, entries - 1] {
            anyhow::ensure!(index.get(&id(job, i, entries)).await? == Some(location(job, i)));
        }
    }
    println!();
    println!(
        "| compaction | segments before | merged | written | live after | seconds | entries/s | peak RSS, MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {jobs} × {entries} entries | {jobs} | {} | {} | {} | {seconds:.2} | {:.0} | {:.0} |",
        report.merged,
        report.written,
        index.segments().segments().len(),
        // Every merged entry is read and written once per merge it takes part in.
        (jobs * entries) as f64 / seconds,
        peak as f64 / MIB
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match &args.phase {
        Some(Phase::Lookup { vault }) => return lookup(vault, args.chunks, args.lookups).await,
        Some(Phase::Compact { vault }) => {
            return compact(vault, args.compact_jobs, args.compact_entries).await;
        }
        None => {}
    }
    let work = args.workdir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("stowage-index-bench-{}", std::process::id()))
    });
    let vault = work.join("vault");
    std::fs::create_dir_all(&vault)?;
    eprintln!("workdir {}", work.display());
    let store = BlobStore::local_folder(&vault, LocalDurability::Fsync)?;
    write_segments(&store, args.chunks).await?;
    eprintln!("writer peak RSS {:.0} MiB", peak_rss() as f64 / MIB);
    let status = Command::new(std::env::current_exe()?)
        .args(["--chunks", &args.chunks.to_string()])
        .args(["--lookups", &args.lookups.to_string()])
        .arg("lookup")
        .arg("--vault")
        .arg(&vault)
        .status()
        .context("running the lookup phase")?;
    anyhow::ensure!(status.success(), "the lookup phase failed");
    if args.compact_jobs > 0 {
        let status = Command::new(std::env::current_exe()?)
            .args(["--compact-jobs", &args.compact_jobs.to_string()])
            .args(["--compact-entries", &args.compact_entries.to_string()])
            .arg("compact")
            .arg("--vault")
            .arg(work.join("compact"))
            .status()
            .context("running the compaction phase")?;
        anyhow::ensure!(status.success(), "the compaction phase failed");
    }
    if args.workdir.is_none() {
        std::fs::remove_dir_all(&work)?;
    }
    Ok(())
}
