//! Issue 12, items 3 and 4 from the command line: `vault lock` is final and only grows,
//! `rp delete` obeys the lock (naming it and the date it allows) and soft-deletes,
//! `rp list` shows soft-deleted recovery points, a restore from one is refused, `rp undelete`
//! brings it back; workers refuse a vault without settings and a `--secondary` the vault does
//! not have, and a geo vault must name its secondary region.

use std::path::Path;

use jiff::{SignedDuration, Timestamp};
use stowage_schemas::domain::{RecoveryPoint, RpState, Tier, TierState};
use stowage_vault::catalog;
use stowage_vault::crypto::VaultKey;
use stowage_vault::store::{BlobStore, LocalDurability};

use crate::catalog::{TEST_VAULT_KEY, ok, refused, stowage};
use crate::helpers::{TempDir, stowage_command, text};

/// `stowage <line>` on `vault` is refused, saying every one of `says`.
fn refusal(vault: &Path, line: &str, says: &[&str]) {
    let err = refused(&stowage(vault, line));
    for text in says {
        assert!(err.contains(text), "{line}: {text:?} not in {err}");
    }
}

/// Records an RP of instance `shop` taken at `created_at`, as the snapshot stage would.
async fn recovery_point(vault: &Path, id: &str, created_at: Timestamp) {
    // The operator's key unwraps the vault's data key (vault init made a keyring).
    let key = VaultKey::from_hex(TEST_VAULT_KEY).unwrap();
    let store = BlobStore::local_folder(vault, LocalDurability::OsBuffered).unwrap();
    let data_key = stowage_vault::keyring::unlock(&store, &key)
        .await
        .unwrap()
        .data_key;
    let store = store.with_key(&data_key);
    let rp = RecoveryPoint {
        id: id.into(),
        instance: "shop".into(),
        created_at,
        tiers: vec![TierState {
            tier: Tier::Operational,
            state: RpState::Available,
            expires_at: None,
        }],
        resources: format!("resources/shop/{id}/resources.jsonl"),
        volumes: Vec::new(),
    };
    catalog::write_recovery_point(&store, &rp).await.unwrap();
}

#[test]
fn vault_lock_is_final_and_only_grows() {
    let vault = TempDir::new("cli-lock");
    let v = vault.path();
    ok(&stowage(v, "vault init --name main"));
    refusal(
        v,
        "vault lock --minimum-retention-days 30",
        &["is final", "--yes"],
    );
    refusal(
        v,
        "vault lock --yes",
        &["--minimum-retention-days is missing"],
    );
    let out = ok(&stowage(v, "vault lock --minimum-retention-days 30 --yes"));
    assert!(out.contains("vault main is locked"), "{out}");
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&stowage(v, "vault show -o json"))).expect("JSON");
    assert_eq!(shown["immutability"], "locked", "{shown}");
    assert_eq!(shown["minimum_retention_days"], 30, "{shown}");
    let table = ok(&stowage(v, "vault show -o table"));
    assert!(table.contains("30d (enforced by stowage)"), "{table}");

    refusal(
        v,
        "vault lock --minimum-retention-days 10 --yes",
        &["minimum_retention_days would shrink from 30 to 10"],
    );
    refusal(
        v,
        "vault init --name main --update",
        &["immutability would change from locked to disabled"],
    );
    ok(&stowage(v, "vault lock --minimum-retention-days 45 --yes"));
    // `vault init --immutability locked` needs its minimum retention too.
    refusal(
        TempDir::new("cli-lock").path(),
        "vault init --name x --immutability locked",
        &["minimum_retention_days is 0 with immutability locked"],
    );
}

#[tokio::test]
async fn rp_delete_obeys_the_lock_and_undelete_brings_it_back() {
    let vault = TempDir::new("cli-lock");
    let v = vault.path();
    for line in [
        "vault init --name main --immutability locked --minimum-retention-days 30",
        "policy create p",
        "instance create shop --cluster c --policy p --snapshot-location local",
    ] {
        ok(&stowage(v, line));
    }
    let now = Timestamp::now();
    let young = now - SignedDuration::from_hours(24);
    recovery_point(v, "young", young).await;
    recovery_point(v, "old", now - SignedDuration::from_hours(40 * 24)).await;

    let until = young + SignedDuration::from_hours(30 * 24);
    let held = format!(
        "recovery point young of instance shop is held by vault main's lock (immutability \
         locked, minimum retention 30 days) until {until}"
    );
    refusal(v, "rp delete shop young", &[&held]);
    let out = ok(&stowage(v, "rp delete shop old"));
    assert!(out.contains("can be undeleted until"), "{out}");
    refusal(v, "rp delete shop old", &["already deleted"]);
    refusal(v, "rp delete shop ghost", &["no recovery point ghost"]);

    let listed = ok(&stowage(v, "rp list shop"));
    let line = |id: &str| {
        listed
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} in {listed}"))
            .to_owned()
    };
    assert!(
        line("old").contains("soft-deleted (undelete until"),
        "{listed}"
    );
    assert!(line("young").contains("active"), "{listed}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&stowage(v, "rp list shop -o json"))).expect("JSON");
    let old = json
        .as_array()
        .unwrap()
        .iter()
        .find(|rp| rp["recovery_point"]["id"] == "old")
        .expect("old listed");
    assert!(old["soft_deleted"]["purge_after"].is_string(), "{old}");

    // No restore from a deleted recovery point.
    let restore = "restore create --instance shop --rp old --dry-run";
    refusal(v, restore, &["undelete it first"]);

    let out = ok(&stowage(v, "rp undelete shop old"));
    assert!(out.contains("undeleted"), "{out}");
    let listed = ok(&stowage(v, "rp list shop"));
    assert!(!listed.contains("soft-deleted"), "{listed}");
    refusal(v, "rp undelete shop old", &["is not deleted"]);
    ok(&stowage(v, restore));
}

#[test]
fn workers_follow_the_vault_settings() {
    let dir = TempDir::new("cli-lock");
    let vault = dir.path().join("vault");
    std::fs::create_dir_all(&vault).unwrap();
    let worker = |extra: &[&str]| {
        let out = stowage_command()
            .args("worker --stage vault-transfer --health-addr 127.0.0.1:0".split(' '))
            .arg("--vault")
            .arg(&vault)
            .arg("--disk-root")
            .arg(dir.path().join("disks"))
            .args(extra)
            .env("STOWAGE_VAULT_KEY", TEST_VAULT_KEY)
            .env_remove("STOWAGE_SECONDARY")
            .output()
            .expect("run stowage");
        assert!(!out.status.success());
        text(&out.stderr)
    };
    let err = worker(&[]);
    assert!(
        err.contains("is not initialised (it has no vault.json)")
            && err.contains("stowage vault init"),
        "{err}"
    );
    ok(&stowage(&vault, "vault init --name main"));
    let err = worker(&["--secondary", "/mnt/paired"]);
    assert!(
        err.contains("vault main is locally redundant") && err.contains("drop --secondary"),
        "{err}"
    );
    // A geo vault names its secondary region; workers report that one.
    let secondary = dir.path().join("secondary");
    refusal(
        TempDir::new("cli-lock").path(),
        &format!("vault init --name geo --secondary {}", secondary.display()),
        &["redundancy.secondary_region is empty"],
    );
}
