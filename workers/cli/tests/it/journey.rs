//! The README's "From nothing to a verified restore", run as written: the shell block between
//! `<!-- journey:begin -->` and `<!-- journey:end -->` is taken from README.md and run by bash
//! with the `stowage` under test first on the PATH, in a fresh folder beside a link to the
//! repository's `infra/` (the block runs from the repository's root). Only the broker's topology
//! prefix comes from the test (so it shares the RabbitMQ with other tests); the block itself
//! starts the sandbox and the workers, backs up, verifies, restores and compares the bytes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stowage_runtime::{RetryPolicy, Topology};
use stowage_tests::{BrokerKind, Bus, amqp_url};

use crate::helpers::TempDir;

/// The block runs a backup and a restore of the sample app: well within this, even on a busy
/// machine.
const LIMIT: Duration = Duration::from_secs(300);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The journey's shell block from README.md.
fn journey_block() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("read README.md");
    let (_, rest) = readme
        .split_once("<!-- journey:begin -->")
        .expect("README.md has a <!-- journey:begin --> marker");
    let (section, _) = rest
        .split_once("<!-- journey:end -->")
        .expect("README.md has a <!-- journey:end --> marker");
    let (_, code) = section
        .split_once("```sh\n")
        .expect("the journey section holds a ```sh block");
    let (code, _) = code
        .split_once("```")
        .expect("the journey's ```sh block is closed");
    code.to_owned()
}

fn tool(name: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "the README journey needs `{name}` on the PATH; scripts/test.sh installs kubectl \
         (Debian's kubernetes-client), and openssl, awk and cmp come with Debian"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_journey_restores_a_byte_identical_volume() {
    let _broker = stowage_tests::shared_broker().await;
    let bus = Bus::new(BrokerKind::Rabbit).await;
    for name in ["bash", "kubectl", "openssl", "awk", "cmp"] {
        tool(name);
    }
    let dir = TempDir::new("journey");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_stowage"), bin.join("stowage")).unwrap();
    std::os::unix::fs::symlink(
        std::fs::canonicalize(repo_root().join("infra")).unwrap(),
        dir.path().join("infra"),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Background jobs the block leaves behind (after a failure) are stopped when bash exits.
    let script = format!(
        "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n{}",
        journey_block()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", path)
        .env("HOME", dir.path())
        .env("STOWAGE_AMQP_URL", amqp_url())
        .env("STOWAGE_TOPOLOGY_PREFIX", bus.names.prefix())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("run bash");
    let pid = child.id();
    let started = Instant::now();
    let waited = tokio::time::timeout(
        LIMIT,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    let journey = dir.path().join("journey");
    let logs = || {
        ["sandbox.log", "snapshot.log", "restore.log", "vault.log"]
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(journey.join(f)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {f} (last lines)\n{}\n", tail.join("\n"))
            })
            .collect::<String>()
    };
    let out = match waited {
        Ok(done) => done.expect("join").expect("wait bash"),
        Err(_) => {
            // Only bash itself: its trap stops what it started.
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!(
                "the README journey did not finish within {} s\n{}",
                LIMIT.as_secs(),
                logs()
            );
        }
    };
    let mut topology = Topology::new(bus.names.clone(), &RetryPolicy::default());
    topology.add_cluster(&RetryPolicy::default(), "sandbox");
    bus.teardown(&topology).await;
    let (stdout, stderr) = crate::helpers::stdout_and_stderr(&out);
    assert!(
        out.status.success(),
        "the README journey failed ({}) after {:.0} s\nstdout:\n{stdout}\nstderr:\n{stderr}\n{}",
        out.status,
        started.elapsed().as_secs_f64(),
        logs()
    );
    // Shown with --nocapture, and with any failure below.
    println!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("is byte-identical"),
        "the journey ended without comparing the restored volume\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // Nothing the workers logged is an error: a journey that "works" while logging failures
    // is not one a user can follow.
    for f in ["snapshot.log", "restore.log", "vault.log"] {
        let text = std::fs::read_to_string(journey.join(f)).unwrap_or_default();
        let errors: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(" ERROR ") || l.contains("\"level\":\"ERROR\""))
            .collect();
        assert!(
            errors.is_empty(),
            "{f} logged errors:\n{}",
            errors.join("\n")
        );
    }
}
