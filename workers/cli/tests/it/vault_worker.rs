//! `stowage worker` running the vault stages on the real RabbitMQ: killed with SIGKILL in the
//! middle of a transfer of a multi-GiB sparse disk, the redelivered job finishes with no chunk
//! stored twice and a recovery point that restores byte for byte, and the worker that finishes
//! it stays within 128 MiB of memory.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use stowage_runtime::client::submit;
use stowage_schemas::domain::Tier;
use stowage_tests::vault_fixture::{INSTANCE, VaultBackend, VaultFixture};
use stowage_tests::{Bus, shared_rabbit_bus, vault_transfer_job};
use stowage_vault::pack::{PackId, read_pack_index};

use crate::helpers::{fixture_worker, stdout_and_stderr, stowage_command};

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(180);

struct Worker(Child);

impl Worker {
    fn spawn(bus: &Bus, f: &VaultFixture) -> Self {
        let child = fixture_worker(f, bus.names.prefix())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn stowage worker");
        Self(child)
    }

    /// Peak resident memory so far (VmHWM), in bytes.
    fn peak_rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).expect("proc status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM line");
        line.split_whitespace()
            .nth(1)
            .and_then(|kb| kb.parse::<u64>().ok())
            .expect("VmHWM value")
            * 1024
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pack_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for file in std::fs::read_dir(shard.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = file.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && !name.contains('#') {
                out.push(name);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_killed_midway_resumes_without_duplicates_in_bounded_memory() {
    let (_gate, bus) = shared_rabbit_bus().await;
    let topology = bus.declare_topology().await;
    let probe = bus.probe_events().await;
    let f = VaultFixture::new(VaultBackend::LocalFolder).await;

    // A 4 GiB sparse disk with 384 MiB of random data in three places.
    let size = 4096 * MIB;
    f.disks_create("big", size).await;
    let mut seed = 0u64;
    for region in [0, 1500 * MIB, 4096 * MIB - 128 * MIB] {
        for piece in 0..32 {
            seed += 1;
            f.write_random("big", region + piece * 4 * MIB, 4 * MIB as usize, seed)
                .await;
        }
    }
    f.snapshot_rp("rp-big", &[("big", "vol-big")]).await;

    let mut first = Worker::spawn(&bus, &f);
    let job = vault_transfer_job("vault-transfer-rp-big", INSTANCE, "rp-big");
    submit(bus.broker.as_ref(), &bus.names, &job)
        .await
        .expect("submit");
    let packs = f.dir.join("vault").join("packs");
    let deadline = Instant::now() + WAIT;
    while pack_files(&packs).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the first worker never uploaded a pack"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.0.kill().expect("SIGKILL");
    first.0.wait().expect("reap");
    let uploaded_before_kill = pack_files(&packs).len();

    let second = Worker::spawn(&bus, &f);
    let deadline = Instant::now() + WAIT;
    loop {
        let events = bus.drain(&probe).await;
        if events.iter().any(|e| e.routing_key == "rp.vaulted") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the redelivered transfer did not finish within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peak = second.peak_rss();
    eprintln!(
        "peak RSS of the worker that finished the transfer: {} MiB",
        peak / MIB
    );
    drop(second);
    assert!(
        peak <= 128 * MIB,
        "the worker peaked at {} MiB, over the 128 MiB budget",
        peak / MIB
    );
    assert!(
        uploaded_before_kill < pack_files(&packs).len(),
        "the kill happened mid-transfer"
    );

    // No chunk stored twice: every chunk id appears in exactly one pack.
    let mut seen = HashSet::new();
    for name in pack_files(&packs) {
        let id = PackId::parse(&name).expect("pack file names are pack ids");
        for entry in read_pack_index(&f.ctx.primary, &id)
            .await
            .expect("pack index")
        {
            assert!(
                seen.insert(entry.chunk),
                "chunk {} is stored twice",
                entry.chunk
            );
        }
    }
    // 384 MiB of random data in 1 MiB chunks: 384 chunks, no more.
    assert_eq!(seen.len(), 384);

    // And the recovery point is right.
    let report = stowage_control::verify::verify(
        &f.ctx.primary,
        &f.ctx.key,
        INSTANCE,
        "rp-big",
        Tier::Vault,
        4,
    )
    .await
    .expect("verify");
    assert!(report.is_intact(), "{report:?}");
    let staging = f
        .hydrate("r-big", "rp-big", Tier::Vault)
        .await
        .expect("hydrate");
    f.assert_same_bytes_in(
        "rp-big-big",
        &staging.disks[0].disk_id,
        &[
            (0, 128 * MIB),
            (1500 * MIB, 128 * MIB),
            (size - 128 * MIB, 128 * MIB),
            (777 * MIB, 4 * MIB),
        ],
    )
    .await;
    bus.teardown(&topology).await;
}

fn stowage_rp_verify(f: &VaultFixture, rp: &str) -> std::process::Output {
    stowage_command()
        .args(["rp", "verify", rp, "--vault"])
        .arg(f.dir.join("vault"))
        .env("STOWAGE_VAULT_KEY", f.ctx.key.expose_secret_hex())
        .output()
        .expect("run stowage rp verify")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp_verify_reports_intact_data_and_names_damage() {
    let f = VaultFixture::new(VaultBackend::LocalFolder).await;
    f.disks_create("d", 16 * MIB).await;
    f.write_random("d", 0, 6 * MIB as usize, 42).await;
    f.snapshot_rp("rp-v", &[("d", "vol-v")]).await;
    stowage_stages::vault_transfer::transfer(
        &f.ctx,
        INSTANCE,
        "rp-v",
        &stowage_runtime::JobContext::detached(stowage_schemas::Stage::VaultTransfer),
    )
    .await
    .expect("transfer");

    let ok = stowage_rp_verify(&f, "rp-v");
    let (out, err) = stdout_and_stderr(&ok);
    assert!(ok.status.success(), "{err}");
    assert!(
        out.contains("intact") && err.contains("6291456 bytes checked"),
        "{out}\n{err}"
    );

    let packs = f.dir.join("vault").join("packs");
    let name = pack_files(&packs).into_iter().next().expect("a pack");
    let path = packs.join(&name[..2]).join(&name);
    let mut bytes = std::fs::read(&path).expect("pack");
    bytes[5000] ^= 0x40;
    std::fs::write(&path, bytes).expect("damage the pack");

    let bad = stowage_rp_verify(&f, "rp-v");
    let (out, err) = stdout_and_stderr(&bad);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        out.contains(&name) && out.contains("vol-v"),
        "the damaged pack and volume are named: {out}"
    );
    assert!(
        err.contains("1 damaged chunk(s) in recovery point rp-v"),
        "{err}"
    );

    let missing = stowage_rp_verify(&f, "rp-nope");
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("no recovery point rp-nope in the vault's catalog")
    );
}

#[test]
fn a_vault_stage_without_a_vault_is_refused() {
    let out = stowage_command()
        .args([
            "worker",
            "--stage",
            "vault-transfer",
            "--health-addr",
            "127.0.0.1:0",
        ])
        .env_remove("STOWAGE_VAULT")
        .output()
        .expect("run stowage");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the vault-transfer stage needs a vault: pass --vault"),
        "{err}"
    );
}
