//! Issue 12, item 2: the key hierarchy end to end. The operator's key (a key-encryption key)
//! wraps the vault's data key in `keys/keyring.json`; `stowage vault rotate-key` re-wraps it
//! and every older recovery point restores with the new key while the old one is refused; a
//! wrong key is refused by workers of every stage, `backup now`, `restore create` and the `rp`
//! commands before anything is written; a tampered keyring is named.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use stowage_runtime::JobContext;
use stowage_schemas::Stage;
use stowage_schemas::domain::Tier;
use stowage_stages::VaultContext;
use stowage_tests::vault_fixture::{INSTANCE, VaultBackend, VaultFixture, hydration};
use stowage_vault::crypto::VaultKey;
use stowage_vault::keyring;
use stowage_vault::layout;
use stowage_vault::store::{BlobStore, LocalDurability};

use crate::helpers::{TempDir, stdout_and_stderr, stowage_at};

const MIB: u64 = 1 << 20;

/// `stowage <args>` on the vault folder `vault` with the operator's key `key` (hex), on a
/// broker address nothing listens on: a command that got as far as the broker would fail
/// differently from one refused for its key.
fn stowage_with_key(vault: &Path, key: &str, args: &[&str]) -> Output {
    let mut cmd: Command = stowage_at("amqp://guest:guest@127.0.0.1:9/%2f", "stowage-keys-test");
    cmd.args(args)
        .arg("--vault")
        .arg(vault)
        .env("STOWAGE_VAULT_KEY", key)
        .env_remove("STOWAGE_SECONDARY")
        .env_remove("STOWAGE_VAULT_KEY_FILE")
        .env("STOWAGE_LOG", "warn");
    cmd.output().expect("run stowage")
}

fn succeeded(out: &Output) -> String {
    let (stdout, stderr) = stdout_and_stderr(out);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    stdout
}

fn failed(out: &Output) -> String {
    let (stdout, stderr) = stdout_and_stderr(out);
    assert!(!out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    stderr
}

/// Every file under `dir` with its bytes (the lock folder of the local store aside): what
/// "nothing was written" is checked against.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, found: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
            let path = entry.path();
            if entry.file_name() == stowage_vault::store::LOCAL_LOCK_DIR {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, found);
            } else {
                let name = path.strip_prefix(root).unwrap().display().to_string();
                found.insert(name, std::fs::read(&path).expect("read file"));
            }
        }
    }
    let mut found = BTreeMap::new();
    walk(dir, dir, &mut found);
    found
}

fn folder(path: &Path) -> BlobStore {
    BlobStore::local_folder(path, LocalDurability::OsBuffered).expect("folder")
}

/// Hydrates `rp` from `tier` the way a worker started with the operator key `kek` does: the
/// data key unwrapped from the vault's keyring, then the restore-hydration stage; and checks
/// every byte against the snapshot it was taken from.
async fn restore_with(f: &VaultFixture, kek: &VaultKey, rp: &str, tier: Tier, restore_id: &str) {
    let primary = folder(&f.dir.join("vault"));
    let data_key = keyring::unlock(&primary, kek)
        .await
        .expect("unlock")
        .data_key;
    let ctx = VaultContext::new(primary, data_key, f.disks.clone())
        .with_secondary(folder(&f.dir.join("secondary")));
    let job = JobContext::detached(Stage::RestoreHydration);
    let staged =
        stowage_stages::restore_hydration::hydrate(&ctx, &hydration(restore_id, rp, tier), &job)
            .await
            .unwrap_or_else(|e| panic!("restore {rp} from {tier:?} with the new key: {e}"));
    f.assert_same_bytes(&format!("{rp}-d"), &staged.disks[0].disk_id)
        .await;
}

/// The fixture's vault as `vault init` makes it: its data key (the key the fixture's stages
/// seal with) wrapped under the operator's key `kek` in the keyring, and `vault.json`'s key id
/// that key's id.
async fn give_keyring(f: &VaultFixture, kek: &VaultKey) {
    let primary = folder(&f.dir.join("vault"));
    let ring = keyring::Keyring::wrap(kek, &f.ctx.key).expect("wrap");
    primary
        .put_create_only(&layout::keyring(), stowage_vault::document::encode(&ring))
        .await
        .expect("keyring");
    let mut vault = stowage_vault::catalog::settings::read_vault(&primary)
        .await
        .expect("vault.json");
    vault.key_id = kek.key_id().to_string();
    stowage_vault::catalog::settings::write_vault(
        &primary,
        &vault,
        stowage_vault::catalog::settings::WriteMode::CreateOrUpdate,
    )
    .await
    .expect("vault.json");
}

/// `rp verify` of `rp` with `key`.
fn verify(f: &VaultFixture, key: &VaultKey, rp: &str) -> Output {
    stowage_with_key(
        &f.dir.join("vault"),
        &key.expose_secret_hex(),
        &["rp", "verify", rp],
    )
}

fn rotate(f: &VaultFixture, current: &VaultKey, new: &VaultKey) -> Output {
    let file = f.dir.join(format!("new-{}.key", new.key_id()));
    std::fs::write(&file, new.expose_secret_hex()).expect("key file");
    stowage_with_key(
        &f.dir.join("vault"),
        &current.expose_secret_hex(),
        &[
            "vault",
            "rotate-key",
            "--new-key-file",
            file.to_str().unwrap(),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_every_older_recovery_point_restorable_and_refuses_the_old_key() {
    let f = VaultFixture::new(VaultBackend::LocalFolder).await;
    let (a, b) = (VaultKey::generate().unwrap(), VaultKey::generate().unwrap());
    give_keyring(&f, &a).await;
    // Two recovery points under key A: a full one, copied to the secondary, and an incremental.
    f.disks_create("d", 8 * MIB).await;
    f.write_random("d", 0, 3 * MIB as usize, 1).await;
    f.snapshot_rp("rp-1", &[("d", "vol-k")]).await;
    f.transfer("rp-1").await.expect("transfer rp-1");
    let primary = f.ctx.primary.clone();
    let secondary = f.ctx.secondary.as_ref().unwrap().store.clone();
    stowage_stages::geo_replication::replicate(&primary, &secondary, INSTANCE, "rp-1")
        .await
        .expect("replicate rp-1");
    f.write_random("d", 5 * MIB, MIB as usize, 2).await;
    f.snapshot_rp("rp-2", &[("d", "vol-k")]).await;
    f.transfer("rp-2").await.expect("transfer rp-2");
    let secondary_dir = f.dir.join("secondary");
    let keyring_before = std::fs::read(secondary_dir.join("keys/keyring.json"))
        .expect("geo-replication copied the keyring to the secondary");

    // Rotate A → B: no pack, map, manifest or resources object changes.
    let data_before: BTreeMap<_, _> = files(&f.dir.join("vault"))
        .into_iter()
        .filter(|(name, _)| !name.starts_with("keys/") && name != "vault.json")
        .collect();
    let out = rotate(&f, &a, &b);
    let stdout = succeeded(&out);
    assert!(
        stdout.contains(b.key_id().as_str()) && stdout.contains(a.key_id().as_str()),
        "{stdout}"
    );
    let data_after: BTreeMap<_, _> = files(&f.dir.join("vault"))
        .into_iter()
        .filter(|(name, _)| !name.starts_with("keys/") && name != "vault.json")
        .collect();
    assert!(data_before == data_after, "rotation re-wrote data");
    let vault_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.dir.join("vault/vault.json")).unwrap()).unwrap();
    assert_eq!(vault_json["key_id"], b.key_id().as_str());
    // The secondary's keyring is the primary's new one.
    let primary_ring = std::fs::read(f.dir.join("vault/keys/keyring.json")).unwrap();
    let secondary_ring = std::fs::read(secondary_dir.join("keys/keyring.json")).unwrap();
    assert_eq!(primary_ring, secondary_ring);
    assert_ne!(secondary_ring, keyring_before);

    // Every older recovery point restores byte for byte with B, from both tiers.
    restore_with(&f, &b, "rp-1", Tier::Vault, "r-1").await;
    restore_with(&f, &b, "rp-2", Tier::Vault, "r-2").await;
    restore_with(&f, &b, "rp-1", Tier::Secondary, "r-3").await;
    assert!(succeeded(&verify(&f, &b, "rp-2")).contains("intact"));
    // The secondary alone opens with B too (its own keyring).
    let alone = keyring::unlock(&folder(&secondary_dir), &b).await.unwrap();
    assert_eq!(alone.data_key.key_id(), f.ctx.key.key_id());

    // A is refused, naming the key id the vault expects and the one given.
    let err = failed(&verify(&f, &a, "rp-1"));
    assert!(
        err.contains(b.key_id().as_str()) && err.contains(a.key_id().as_str()),
        "{err}"
    );
    assert!(
        keyring::unlock(&folder(&f.dir.join("vault")), &a)
            .await
            .is_err()
    );
    assert!(keyring::unlock(&folder(&secondary_dir), &a).await.is_err());
    // A rotation from A again is refused; a rerun with B as the current key and A as the
    // new one rotates back (rotation is symmetric), which is not what is tested here.
    let err = failed(&rotate(&f, &a, &VaultKey::generate().unwrap()));
    assert!(err.contains(b.key_id().as_str()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_without_a_keyring_gets_one_at_its_first_rotation() {
    // The fixture's vault has no keyring: its stages' key is the operator's key.
    let f = VaultFixture::new(VaultBackend::LocalFolder).await;
    let old = VaultKey::from_hex(&f.ctx.key.expose_secret_hex()).unwrap();
    f.disks_create("d", 4 * MIB).await;
    f.write_random("d", 0, 2 * MIB as usize, 3).await;
    f.snapshot_rp("rp-1", &[("d", "vol-m")]).await;
    f.transfer("rp-1").await.expect("transfer");
    let wrong = VaultKey::generate().unwrap();
    let err = failed(&verify(&f, &wrong, "rp-1"));
    assert!(
        err.contains("has no keyring") && err.contains(old.key_id().as_str()),
        "{err}"
    );
    assert!(succeeded(&verify(&f, &old, "rp-1")).contains("intact"));

    let new = VaultKey::generate().unwrap();
    let stdout = succeeded(&rotate(&f, &old, &new));
    assert!(stdout.contains(new.key_id().as_str()), "{stdout}");
    assert!(f.dir.join("vault/keys/keyring.json").exists());
    restore_with(&f, &new, "rp-1", Tier::Vault, "r-m").await;
    let err = failed(&verify(&f, &old, "rp-1"));
    assert!(err.contains(new.key_id().as_str()), "{err}");
}

/// The stages a worker can run, as `--stage` names them.
const STAGES: [&str; 7] = [
    "snapshot",
    "vault-transfer",
    "geo-replication",
    "restore-hydration",
    "restore",
    "retention",
    "all",
];

#[test]
fn the_wrong_key_is_refused_before_anything_is_written() {
    let dir = TempDir::new("keys-wrong");
    let vault = dir.path().join("vault");
    std::fs::create_dir_all(&vault).unwrap();
    let right = VaultKey::generate().unwrap();
    let wrong = VaultKey::generate().unwrap();
    let (right_hex, wrong_hex) = (right.expose_secret_hex(), wrong.expose_secret_hex());
    let (right_id, wrong_id) = (right.key_id().to_string(), wrong.key_id().to_string());

    // `vault init` makes the keyring and records the key's id; a hand-written id is refused.
    let err = failed(&stowage_with_key(
        &vault,
        &right_hex,
        &["vault", "init", "--name", "main", "--key-id", "my-key"],
    ));
    assert!(err.contains(&right_id), "{err}");
    assert!(!vault.join("keys").exists(), "nothing was made");
    let err = failed(&stowage_with_key(
        &vault,
        &right_hex,
        &["vault", "init", "--name", "main", "--redundancy", "geo"],
    ));
    assert!(err.contains("secondary"), "{err}");
    assert!(
        !vault.join("keys").exists(),
        "settings refused before the keyring is made"
    );
    succeeded(&stowage_with_key(
        &vault,
        &right_hex,
        &["vault", "init", "--name", "main"],
    ));
    let shown = succeeded(&stowage_with_key(
        &vault,
        &right_hex,
        &["vault", "show", "-o", "json"],
    ));
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["key_id"], right_id.as_str());
    // A repeated init with the same key is harmless; with another key it is refused.
    succeeded(&stowage_with_key(
        &vault,
        &right_hex,
        &["vault", "init", "--name", "main"],
    ));
    let err = failed(&stowage_with_key(
        &vault,
        &wrong_hex,
        &["vault", "init", "--name", "main", "--update"],
    ));
    assert!(err.contains(&right_id), "{err}");
    // A settings file naming another key id is refused.
    let file = dir.path().join("vault.yaml");
    let mut edited = shown.clone();
    edited["key_id"] = "https://kv.vault.azure.net/keys/other/1".into();
    std::fs::write(&file, serde_json::to_vec(&edited).unwrap()).unwrap();
    let err = failed(&stowage_with_key(
        &vault,
        &right_hex,
        &["vault", "init", "--update", "-f", file.to_str().unwrap()],
    ));
    assert!(err.contains("key_id") && err.contains(&right_id), "{err}");
    succeeded(&stowage_with_key(
        &vault,
        &right_hex,
        &["policy", "create", "daily", "--frequency-hours", "24"],
    ));
    succeeded(&stowage_with_key(
        &vault,
        &right_hex,
        &[
            "instance",
            "create",
            "shop",
            "--cluster",
            "aks-prod",
            "--policy",
            "daily",
            "--snapshot-location",
            "rg-snaps",
            "--namespaces",
            "shop",
        ],
    ));

    let before = files(&vault);
    let refusals: Vec<(String, Vec<String>)> = STAGES
        .iter()
        .map(|stage| {
            (
                format!("worker --stage {stage}"),
                vec![
                    "worker".into(),
                    "--stage".into(),
                    stage.to_string(),
                    "--disk-root".into(),
                    dir.path().join("disks").display().to_string(),
                    "--health-addr".into(),
                    "127.0.0.1:0".into(),
                ],
            )
        })
        .chain(
            [
                vec!["backup", "now", "shop"],
                vec!["restore", "create", "--instance", "shop", "--rp", "rp-1"],
                vec!["rp", "list", "shop"],
                vec!["rp", "delete", "shop", "rp-1"],
                vec!["rp", "undelete", "shop", "rp-1"],
                vec!["rp", "verify", "rp-1", "--instance", "shop"],
            ]
            .into_iter()
            .map(|args| (args.join(" "), args.into_iter().map(String::from).collect())),
        )
        .collect();
    for (what, args) in &refusals {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = failed(&stowage_with_key(&vault, &wrong_hex, &args));
        for needed in [right_id.as_str(), wrong_id.as_str(), "--vault-key-file"] {
            assert!(err.contains(needed), "{what}: {needed} missing from: {err}");
        }
        assert!(
            files(&vault) == before,
            "{what} wrote into the vault with the wrong key"
        );
    }
    assert!(!dir.path().join("disks").exists() || files(&dir.path().join("disks")).is_empty());

    // With the right key the same commands get past the key (here: to the empty catalog).
    let out = succeeded(&stowage_with_key(
        &vault,
        &right_hex,
        &["rp", "list", "shop"],
    ));
    assert!(!out.contains(&wrong_id), "{out}");
}

#[test]
fn a_tampered_keyring_is_named_and_nothing_is_written() {
    let dir = TempDir::new("keys-tamper");
    let vault = dir.path().join("vault");
    std::fs::create_dir_all(&vault).unwrap();
    let key = VaultKey::generate().unwrap();
    let hex = key.expose_secret_hex();
    succeeded(&stowage_with_key(
        &vault,
        &hex,
        &["vault", "init", "--name", "main"],
    ));
    let path = vault.join("keys/keyring.json");
    let original = std::fs::read_to_string(&path).unwrap();
    let ring: serde_json::Value = serde_json::from_str(&original).unwrap();
    let wrapped = ring["data_keys"][0]["wrapped"].as_str().unwrap().to_owned();
    let first = if wrapped.starts_with('0') { "1" } else { "0" };
    let tampered = original.replacen(&wrapped, &format!("{first}{}", &wrapped[1..]), 1);
    assert_ne!(tampered, original);
    std::fs::write(&path, tampered).unwrap();
    let before = files(&vault);
    let err = failed(&stowage_with_key(
        &vault,
        &hex,
        &[
            "worker",
            "--stage",
            "all",
            "--disk-root",
            dir.path().join("disks").to_str().unwrap(),
            "--health-addr",
            "127.0.0.1:0",
        ],
    ));
    assert!(
        err.contains("keys/keyring.json is damaged") && err.contains("does not authenticate"),
        "{err}"
    );
    let err = failed(&stowage_with_key(&vault, &hex, &["rp", "list", "shop"]));
    assert!(err.contains("keys/keyring.json is damaged"), "{err}");
    assert!(files(&vault) == before);
    // Put back, it opens again.
    std::fs::write(&path, original).unwrap();
    succeeded(&stowage_with_key(&vault, &hex, &["rp", "list", "shop"]));
}
