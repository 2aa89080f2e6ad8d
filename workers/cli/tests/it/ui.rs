//! The Backup center (issue 17) in a real browser: the real `stowage serve --sandbox` with a
//! token, and Debian's Chromium driven by Playwright (npm `playwright-core`, locked in
//! `workers/cli/tests/ui/package-lock.json`) through `workers/cli/tests/ui/backup-center.mjs`:
//! sign in, see the instances, back one up and watch it finish, plan a restore (dry run) and
//! read the plan, run it, see a permanently failed backup as a dead letter. Screenshots land in
//! `<target>/ui-screenshots/`. Chromium, node and the npm packages are required: a missing one
//! fails the test with the command that installs it (scripts/test.sh installs them all).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use stowage_tests::free_port;

use crate::helpers::{TempDir, poll, run, stdout_and_stderr, stowage_command, terminate};

const TOKEN: &str = "ui-test-token-7f3a9c";
/// An instance whose backups fail for good: its pre-hook names a container the pod lacks.
const FAILING: &str = "orders";

fn browser_test_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui")
}

/// Where screenshots go: `<target>/ui-screenshots` (CARGO_TARGET_TMPDIR is `<target>/tmp`).
fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target folder")
        .join("ui-screenshots")
}

/// Chromium, node and playwright-core, or a panic naming how to install the missing one.
fn browser_tools() -> PathBuf {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let version = Command::new(&chromium).arg("--version").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "Chromium is missing at {} (set CHROMIUM to another path): the Backup center is tested \
         in a real browser. Install Debian's: `apt-get install chromium` (scripts/test.sh does it)",
        chromium.display()
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "node is missing: the browser test is a Node.js Playwright script. Install Node.js 18 or \
         later (`apt-get install nodejs npm`)"
    );
    let package = browser_test_dir().join("node_modules/playwright-core/package.json");
    assert!(
        package.exists(),
        "playwright-core is not installed: run `npm ci --prefix workers/cli/tests/ui` \
         (scripts/test.sh does it)"
    );
    chromium
}

#[tokio::test(flavor = "multi_thread")]
async fn the_backup_center_works_in_chromium() {
    let chromium = browser_tools();
    let dir = TempDir::new("serve-ui");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let log = dir.path().join("serve.log");
    let mut child = stowage_command()
        .args(["serve", "--sandbox", "--dir"])
        .arg(dir.path())
        .arg("--addr")
        .arg(format!("127.0.0.1:{port}"))
        // A disk large enough that the browser sees the vault transfer under way.
        .args(["--sample-disk-mib", "512"])
        .env("STOWAGE_LOG", "info")
        .env("STOWAGE_API_TOKEN", TOKEN)
        .env_remove("STOWAGE_SERVER")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start stowage serve");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let up = poll(
        Duration::from_secs(120),
        Duration::from_millis(100),
        async || {
            let r = http.get(format!("{url}/livez")).send().await;
            r.ok().filter(|r| r.status().is_success()).map(|_| ())
        },
    )
    .await;
    let server_log = || std::fs::read_to_string(&log).unwrap_or_default();
    if up.is_none() {
        let _ = child.kill();
        panic!("stowage serve did not start: {}", server_log());
    }

    // The page and its assets: embedded, with their content types, and no token needed.
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
    ] {
        let r = http.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], content_type, "{path}");
        assert!(
            r.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("script-src 'self'"),
            "{path}"
        );
    }
    let missing = http
        .get(format!("{url}/ui/nothing.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);

    // A second instance, made with the CLI on the same vault: its pre-hook runs in a container
    // the database pod does not have, so each backup of it fails permanently (a real
    // misconfiguration, refused by the snapshot stage, dead-lettered by the worker).
    let instance = serde_json::json!({
        "name": FAILING,
        "cluster": "sandbox",
        "vault": "demo",
        "policy": "daily",
        "snapshot_location": "local",
        "scope": {"namespaces": {"kind": "list", "names": ["shop"]}},
        "hooks": [{
            "name": "freeze",
            "phase": "pre",
            "namespace": "shop",
            "label_selector": "app=db",
            "container": "no-such-container",
            "command": ["fsfreeze", "-f", "/data"],
            "timeout_seconds": 5,
            "on_error": "fail"
        }]
    });
    let file = dir.path().join("orders.json");
    std::fs::write(&file, instance.to_string()).unwrap();
    let mut cmd = stowage_command();
    cmd.args(["instance", "create", "-f"])
        .arg(&file)
        .arg("--vault")
        .arg(dir.path().join("vault"))
        .arg("--vault-key-file")
        .arg(dir.path().join("vault.key"))
        .env_remove("STOWAGE_SERVER")
        .env_remove("STOWAGE_VAULT_KEY");
    let out = run(cmd, None);
    let (stdout, stderr) = stdout_and_stderr(&out);
    assert!(out.status.success(), "instance create: {stdout}{stderr}");

    // The browser.
    let shots = screenshot_dir();
    let _ = std::fs::remove_dir_all(&shots);
    let script = browser_test_dir().join("backup-center.mjs");
    let browser = tokio::task::spawn_blocking({
        let (url, shots) = (url.clone(), shots.clone());
        move || {
            Command::new("node")
                .arg(&script)
                .current_dir(browser_test_dir())
                .env("STOWAGE_URL", &url)
                .env("STOWAGE_TOKEN", TOKEN)
                .env("SCREENSHOTS", &shots)
                .env("CHROMIUM", &chromium)
                .env("FAILING_INSTANCE", FAILING)
                .env("JOB_TIMEOUT_MS", "600000")
                .output()
                .expect("run node")
        }
    })
    .await
    .unwrap();
    let (stdout, stderr) = stdout_and_stderr(&browser);
    terminate(&child);
    let status = child.wait().expect("wait stowage serve");
    let server = server_log();
    assert!(
        browser.status.success(),
        "the Backup center failed in Chromium (screenshots in {}):\n{stdout}\n{stderr}\n--- \
         stowage serve's log:\n{server}",
        shots.display()
    );
    assert!(
        status.success(),
        "stowage serve exited with {status}: {server}"
    );
    assert!(
        !server.contains(TOKEN),
        "the token appears in the server's log"
    );

    // What the browser reported, against what it should have seen.
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(shots.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["problems"], Value::Array(Vec::new()), "{report:#}");
    let stages: Vec<&str> = report["backup"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for stage in ["snapshot", "vault-transfer", "geo-replication"] {
        assert!(stages.contains(&stage), "{report:#}");
    }
    assert!(
        report["dead_letter"]["row"]
            .as_str()
            .unwrap()
            .contains("no-such-container"),
        "the dead letter says why: {report:#}"
    );
    for shot in [
        "01-sign-in",
        "02-instances",
        "03-backup-running",
        "04-backup-succeeded",
        "07-restore-plan",
        "08-restore-succeeded",
        "10-dead-letters",
        "12-fleet",
    ] {
        let png = shots.join(format!("{shot}.png"));
        let bytes = std::fs::read(&png).unwrap_or_default();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{} is not a screenshot",
            png.display()
        );
    }
}
