//! Issue 12: no byte of a Secret's data is in the clear anywhere outside the target cluster.
//!
//! A run of `stowage demo` (backup, vault transfer, geo-replication, an incremental, restores
//! from both tiers, every log at trace level), then staging a restore that is not applied yet
//! (so `staging/` holds a resources copy), then the CLI's views of all of it in every output
//! format; then every file under the demo's folder (vault, secondary, disks and staging disks,
//! job records) and every captured output is searched for each of the sample application's
//! Secret values, plain and base64. None may be found. As a control, the same values are found
//! in the recovery point's resources object and its staged copy once opened with the vault key:
//! the backup holds the Secrets, sealed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use stowage_disk::LocalDiskProvider;
use stowage_runtime::JobContext;
use stowage_sandbox::Sandbox;
use stowage_schemas::Stage;
use stowage_schemas::domain::Tier;
use stowage_schemas::jobs::{RestoreHydrationJob, RestoreOptions};
use stowage_stages::VaultContext;
use stowage_vault::crypto::VaultKey;
use stowage_vault::layout::{self, BlobKey};
use stowage_vault::store::{BlobStore, LocalDurability};

use crate::helpers::{TempDir, stowage_command, text};

/// The sample application's Secret values as the sandbox serves them: each decoded value and
/// its base64 form (as it appears in a Secret's `data`), labelled for the report.
async fn sample_secret_values() -> Vec<(String, Vec<u8>)> {
    let sandbox = Sandbox::new();
    sandbox.load_sample_app().expect("sample app");
    let cluster = sandbox.start_local().await.expect("sandbox");
    let secrets: kube::Api<Secret> = kube::Api::all(cluster.client());
    let mut needles = Vec::new();
    for secret in secrets
        .list(&Default::default())
        .await
        .expect("list secrets")
    {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let encoded = serde_json::to_value(&secret).expect("json")["data"].clone();
        for (field, value) in secret.data.unwrap_or_default() {
            let base64 = encoded[&field].as_str().expect("base64 text").to_owned();
            needles.push((format!("{name}.{field} (plain)"), value.0));
            // Without padding, so the value is found however its base64 ends.
            let unpadded = base64.trim_end_matches('=').to_owned();
            needles.push((format!("{name}.{field} (base64)"), unpadded.into_bytes()));
        }
    }
    cluster.shutdown().await;
    needles
}

/// Whether `needle` occurs in `haystack` (a first-byte scan: the disk images are large).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((first, rest)) = needle.split_first() else {
        return true;
    };
    let mut from = 0;
    while let Some(at) = haystack[from..].iter().position(|b| b == first) {
        let start = from + at;
        if haystack[start + 1..].starts_with(rest) {
            return true;
        }
        from = start + 1;
    }
    false
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else if path.is_file() {
            out.push(path);
        }
    }
}

/// The content of the (possibly large) object `key`, opened with the store's key.
async fn content(store: &BlobStore, key: &BlobKey) -> Vec<u8> {
    let mut reader = store.read_windows(key).await.expect("open");
    let mut out = Vec::new();
    while let Some(window) = reader.next_window().await.expect("read") {
        out.extend_from_slice(&window);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_value_is_in_the_clear_in_the_vault_staging_records_logs_or_outputs() {
    let needles = sample_secret_values().await;
    assert!(
        needles.len() >= 4,
        "the sample app has Secrets to look for: {needles:?}"
    );
    let dir = TempDir::new("secrets");
    let root = dir.path();
    // The CLI outputs and logs searched, by name.
    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();

    let demo = stowage_command()
        .args(["demo", "--dir"])
        .arg(root)
        .env("STOWAGE_LOG", "trace")
        .env_remove("STOWAGE_DEMO_AMQP_URL")
        .env_remove("STOWAGE_DEMO_BLOB_URL")
        .output()
        .expect("run the demo");
    assert!(
        demo.status.success(),
        "{}\n{}",
        text(&demo.stdout),
        text(&demo.stderr)
    );
    let trace_lines = text(&demo.stderr)
        .lines()
        .filter(|l| l.contains("TRACE") || l.contains("DEBUG"))
        .count();
    assert!(
        trace_lines > 100,
        "the demo logged at trace level: {trace_lines} lines"
    );
    outputs.push(("demo stdout".into(), demo.stdout));
    outputs.push(("demo logs (trace)".into(), demo.stderr));

    // A restore staged and not applied yet, from each tier: staging holds the resources.
    let key_hex = std::fs::read_to_string(root.join("vault.key")).expect("the demo's key");
    let disks = Arc::new(LocalDiskProvider::open(root.join("disks")).expect("disks"));
    let open = |folder: &str| {
        BlobStore::local_folder(root.join(folder), LocalDurability::OsBuffered).expect(folder)
    };
    // The demo's key is the operator's: it unwraps the vault's data key from the keyring.
    let operator_key = VaultKey::from_hex(key_hex.trim()).unwrap();
    let data_key = stowage_vault::keyring::unlock(&open("vault"), &operator_key)
        .await
        .expect("the demo's key opens its keyring")
        .data_key;
    let vault = VaultContext::new(open("vault"), data_key, disks).with_secondary(open("secondary"));
    for (restore_id, tier) in [
        ("grep-staged-vault", Tier::Vault),
        ("grep-staged-secondary", Tier::Secondary),
    ] {
        let job = RestoreHydrationJob {
            restore_id: restore_id.into(),
            instance: "shop".into(),
            recovery_point_id: "rp-2".into(),
            tier,
            staging_location: None,
            options: RestoreOptions::default(),
        };
        stowage_stages::restore_hydration::hydrate(
            &vault,
            &job,
            &JobContext::detached(Stage::RestoreHydration),
        )
        .await
        .expect("hydrate");
    }

    // The control: the Secrets are in the backup and in staging, sealed.
    let resources = layout::resource("shop", "rp-2", &["resources.jsonl"]).unwrap();
    let staged = layout::staging("grep-staged-vault", layout::STAGED_RESOURCES).unwrap();
    let staged_secondary =
        layout::staging("grep-staged-secondary", layout::STAGED_RESOURCES).unwrap();
    let secondary = &vault.secondary.as_ref().unwrap().store;
    for (what, opened) in [
        (
            "the resources object",
            content(&vault.primary, &resources).await,
        ),
        ("its geo copy", content(secondary, &resources).await),
        ("its staged copy", content(&vault.primary, &staged).await),
        (
            "its staged copy in the secondary",
            content(secondary, &staged_secondary).await,
        ),
    ] {
        for (label, needle) in needles.iter().filter(|(l, _)| l.ends_with("(base64)")) {
            assert!(
                contains(&opened, needle),
                "{what} does not hold {label}: the control failed"
            );
        }
    }

    // The CLI's views, in every format, logging at trace level.
    let vault_args: Vec<std::ffi::OsString> = vec![
        "--vault".into(),
        root.join("vault").into(),
        "--secondary".into(),
        root.join("secondary").into(),
        "--vault-key-file".into(),
        root.join("vault.key").into(),
    ];
    let mut run = |args: &[&str]| {
        let out = stowage_command()
            .args(args)
            .args(&vault_args)
            .env("STOWAGE_LOG", "trace")
            .env_remove("STOWAGE_VAULT_KEY")
            .output()
            .expect("run stowage");
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(
            out.status.success(),
            "stowage {args:?} failed\n{stdout}\n{stderr}"
        );
        outputs.push((format!("stowage {}", args.join(" ")), out.stdout));
        outputs.push((format!("stowage {} (logs)", args.join(" ")), out.stderr));
        stdout
    };
    let listed = run(&["jobs", "list", "--limit", "100", "-o", "json"]);
    let jobs: serde_json::Value = serde_json::from_str(&listed).expect("json");
    let ids: Vec<String> = jobs
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["id"].as_str().expect("id").to_owned())
        .collect();
    assert!(ids.len() >= 5, "backups and restores: {ids:?}");
    for format in ["table", "json", "yaml"] {
        run(&["jobs", "list", "-o", format]);
        run(&["rp", "list", "shop", "-o", format]);
        for rp in ["rp-1", "rp-2"] {
            run(&["rp", "describe", "shop", rp, "-o", format]);
            run(&["rp", "verify", rp, "-o", format]);
            run(&["rp", "verify", rp, "--tier", "secondary", "-o", format]);
        }
        for id in &ids {
            run(&["jobs", "show", id, "-o", format]);
        }
        run(&["restore", "status", "restore-rp-2-from-vault", "-o", format]);
    }
    run(&[
        "restore",
        "create",
        "--instance",
        "shop",
        "--rp",
        "rp-2",
        "--from",
        "vault",
        "--dry-run",
    ]);

    // Every file, then every output.
    let mut files = Vec::new();
    files_under(root, &mut files);
    let (mut searched_files, mut searched_bytes, mut found) = (0, 0u64, Vec::new());
    let mut saw = std::collections::BTreeSet::new();
    for file in &files {
        let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let place = file.strip_prefix(root).unwrap().display().to_string();
        saw.insert(place.split('/').next().unwrap_or_default().to_owned());
        searched_files += 1;
        searched_bytes += bytes.len() as u64;
        for (label, needle) in &needles {
            if contains(&bytes, needle) {
                found.push(format!("{label} in {place}"));
            }
        }
    }
    for (place, bytes) in &outputs {
        searched_bytes += bytes.len() as u64;
        for (label, needle) in &needles {
            if contains(bytes, needle) {
                found.push(format!("{label} in the output of {place}"));
            }
        }
    }
    for expected in ["vault", "secondary", "disks"] {
        assert!(saw.contains(expected), "no file under {expected}: {saw:?}");
    }
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("staging/grep-staged-vault/resources")),
        "staging holds a resources copy"
    );
    assert!(
        files
            .iter()
            .any(|f| f.starts_with(root.join("vault").join("jobs"))),
        "job records are searched"
    );
    eprintln!(
        "searched {searched_files} files and {} outputs ({searched_bytes} bytes) for {} values",
        outputs.len(),
        needles.len()
    );
    assert!(
        found.is_empty(),
        "Secret data in the clear:\n{}",
        found.join("\n")
    );
}
