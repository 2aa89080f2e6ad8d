//! `stowage serve` benchmark (issue 17): the API's job-list latency with 10,000 job records in
//! the vault, and the process's resident memory idle and during a 1 GiB backup.
//!
//! It runs the real binary (`--stowage`, default `target/release/stowage`) with the sandbox
//! cluster in-process:
//!
//! 1. **Job list.** A fresh `serve --sandbox` vault gets `--jobs` records (three stage runs
//!    each, as a backup's), written straight into `jobs/`; then `GET /api/v1/jobs?limit=50`
//!    `--requests` times, one at a time, timing each. The raw limit in the same run: reading
//!    the same records in this process through `stowage_vault::catalog::jobs::list_jobs`, the
//!    listing every `jobs list` streams.
//! 2. **Memory.** Another `serve --sandbox --sample-disk-mib 1024` (the shop's database disk is
//!    1 GiB, half of it data: random and repeated blocks); its VmRSS after it settles, then an
//!    on-demand backup through the API (snapshot, vault transfer, geo-replication), VmRSS
//!    sampled every 50 ms and VmHWM at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures::StreamExt as _;
use jiff::Timestamp;
use stowage_schemas::Stage;
use stowage_schemas::domain::{JobProgress, JobRecord, JobStatus, StageRun};
use stowage_vault::catalog::jobs::{create_job, list_jobs};
use stowage_vault::store::{BlobStore, LocalDurability};

#[derive(Debug, Parser)]
struct Args {
    /// The stowage binary.
    #[arg(long, default_value = "target/release/stowage")]
    stowage: PathBuf,
    /// Job records in the vault.
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// Job-list requests timed.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Size of the backed-up disk, MiB (half of it data).
    #[arg(long, default_value_t = 1024)]
    disk_mib: u64,
    /// Where the runs keep their folders (removed at the end).
    #[arg(long, default_value = "target/serve-bench")]
    dir: PathBuf,
}

struct Serve {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Serve {
    async fn start(stowage: &Path, dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(stowage)
            .args(["serve", "--sandbox", "--dir"])
            .arg(dir)
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .args(extra)
            // As the Deployments run the fleet (infra/k8s/base).
            .env("MALLOC_ARENA_MAX", "2")
            .env("STOWAGE_LOG", "warn")
            .env_remove("STOWAGE_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.with_extension("log"))?)
            .spawn()
            .with_context(|| format!("cannot run {}", stowage.display()))?;
        let serve = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = serve.http.get(format!("{}/livez", serve.url)).send().await
                && r.status().is_success()
            {
                return Ok(serve);
            }
            if Instant::now() > deadline {
                bail!(
                    "stowage serve did not start; see {}",
                    dir.with_extension("log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = text
            .lines()
            .find(|l| l.starts_with(field))
            .with_context(|| format!("no {field} in /proc/<pid>/status"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let r = self.http.get(format!("{}{path}", self.url)).send().await?;
        if !r.status().is_success() {
            bail!("GET {path}: HTTP {}", r.status());
        }
        Ok(serde_json::from_slice(&r.bytes().await?)?)
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn record(i: usize, now: Timestamp) -> JobRecord {
    let at = now - jiff::SignedDuration::from_secs(60 * i as i64);
    let mut r = JobRecord::new(format!("bench-job-{i:05}"), Stage::Snapshot, at);
    r.instance = Some(format!("app-{}", i % 20));
    r.recovery_point_id = Some(format!("bench-rp-{i:05}"));
    r.requested_by = Some("serve-bench".into());
    r.submitted_at = Some(at);
    r.stages = [Stage::Snapshot, Stage::VaultTransfer, Stage::GeoReplication]
        .into_iter()
        .map(|stage| StageRun {
            status: JobStatus::Succeeded,
            attempts: 1,
            started_at: Some(at),
            finished_at: Some(at),
            progress: JobProgress {
                bytes_done: 1 << 30,
                bytes_total: Some(1 << 30),
                items_done: 2,
                items_total: Some(2),
            },
            summary: Some("2 volumes, 1.0 GiB".into()),
            ..StageRun::queued(stage)
        })
        .collect();
    r
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)?;

    // 1. Job-list latency with `--jobs` records.
    let dir = args.dir.join("jobs");
    let serve = Serve::start(&args.stowage, &dir, &[]).await?;
    let store = BlobStore::local_folder(dir.join("vault"), LocalDurability::Fsync)?;
    let now = Timestamp::now();
    let started = Instant::now();
    let mut writes = futures::stream::iter(0..args.jobs)
        .map(|i| {
            let store = store.clone();
            async move { create_job(&store, &record(i, now)).await }
        })
        .buffer_unordered(16);
    while let Some(w) = writes.next().await {
        w?;
    }
    println!(
        "wrote {} job records in {:.1} s",
        args.jobs,
        started.elapsed().as_secs_f64()
    );
    // The raw limit: the listing itself, in this process.
    let mut raw = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut n = 0;
        let mut listing = list_jobs(&store);
        while let Some(r) = listing.next().await {
            r?;
            n += 1;
        }
        raw.push(t.elapsed());
        if n < args.jobs {
            bail!("listed {n} records, wrote {}", args.jobs);
        }
    }
    raw.sort();
    let first = serve.get("/api/v1/jobs?limit=50").await?;
    if first.as_array().map_or(0, Vec::len) != 50 {
        bail!("the job list did not return 50 jobs: {first}");
    }
    let mut times = Vec::with_capacity(args.requests);
    for _ in 0..args.requests {
        let t = Instant::now();
        let jobs = serve.get("/api/v1/jobs?limit=50").await?;
        times.push(t.elapsed());
        std::hint::black_box(jobs);
    }
    times.sort();
    let idle_with_jobs = serve.status_kib("VmRSS:")?;
    let hwm_with_jobs = serve.status_kib("VmHWM:")?;
    serve.stop();
    let raw_median = percentile(&raw, 0.5);
    println!(
        "GET /api/v1/jobs?limit=50 over {} records, {} requests: p50 {:.0} ms, p99 {:.0} ms, \
         max {:.0} ms; raw listing of the records in-process: median {:.0} ms (p99 = {:.2}× \
         the raw listing); serve RSS after the requests {} MiB, peak {} MiB",
        args.jobs,
        args.requests,
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().unwrap_or(&Duration::ZERO)),
        ms(raw_median),
        percentile(&times, 0.99).as_secs_f64() / raw_median.as_secs_f64().max(1e-9),
        idle_with_jobs / 1024,
        hwm_with_jobs / 1024,
    );

    // 2. Memory idle and during a backup of a `--disk-mib` disk.
    let dir = args.dir.join("backup");
    let mib = args.disk_mib.to_string();
    let serve = Serve::start(&args.stowage, &dir, &["--sample-disk-mib", &mib]).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = serve.status_kib("VmRSS:")?;
    let r = serve
        .http
        .post(format!("{}/api/v1/instances/shop/backups", serve.url))
        .send()
        .await?;
    if r.status().as_u16() != 202 {
        bail!("backup now: HTTP {}", r.status());
    }
    let submitted: serde_json::Value = serde_json::from_slice(&r.bytes().await?)?;
    let job = submitted["job_id"]
        .as_str()
        .context("no job id")?
        .to_owned();
    let started = Instant::now();
    let mut peak_sampled = 0;
    let mut last_poll = Instant::now() - Duration::from_secs(1);
    let record = loop {
        peak_sampled = peak_sampled.max(serve.status_kib("VmRSS:")?);
        if last_poll.elapsed() >= Duration::from_millis(500) {
            last_poll = Instant::now();
            let record = serve.get(&format!("/api/v1/jobs/{job}")).await?;
            if matches!(
                record["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                break record;
            }
        }
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("the backup did not finish within an hour");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = started.elapsed();
    let hwm = serve.status_kib("VmHWM:")?;
    serve.stop();
    if record["status"] != "succeeded" {
        bail!("the backup did not succeed: {record:#}");
    }
    let stages: Vec<String> = record["stages"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| {
                    format!(
                        "{} {}",
                        s["stage"].as_str().unwrap_or("?"),
                        s["summary"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    println!(
        "backup of a {} MiB disk ({} MiB of data) in {:.1} s ({}); serve RSS idle {} MiB, \
         during the backup peak sampled {} MiB, VmHWM {} MiB (target ≤ 128 MiB)",
        args.disk_mib,
        args.disk_mib / 2,
        took.as_secs_f64(),
        stages.join("; "),
        idle / 1024,
        peak_sampled / 1024,
        hwm / 1024,
    );
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(())
}
