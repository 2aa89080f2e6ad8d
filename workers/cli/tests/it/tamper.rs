//! Issue 12's tamper test: a byte flipped in a resources object, a manifest, an extent map and
//! a pack, objects truncated and deleted — each is named by `stowage rp verify` (which exits 1),
//! and a restore from the vault tier (its hydration) refuses rather than stages wrong data.
//! Every case starts from the intact vault: the file is put back before the next one.

use std::path::{Path, PathBuf};
use std::process::Output;

use stowage_schemas::domain::Tier;
use stowage_tests::vault_fixture::{INSTANCE, VaultBackend, VaultFixture};
use stowage_vault::layout;

use crate::helpers::{stdout_and_stderr, stowage_command};

const MIB: u64 = 1 << 20;
const RP: &str = "rp-t";

fn verify(f: &VaultFixture) -> Output {
    stowage_command()
        .args(["rp", "verify", RP, "--vault"])
        .arg(f.dir.join("vault"))
        .env("STOWAGE_VAULT_KEY", f.ctx.key.expose_secret_hex())
        .env("STOWAGE_LOG", "warn")
        .output()
        .expect("run stowage rp verify")
}

/// The files (or, with `folders`, the folders) in `dir`, sorted: a volume's maps, a pack shard's
/// packs, the pack shards.
fn entries_in(dir: &Path, folders: bool) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| if folders { p.is_dir() } else { p.is_file() })
        .collect();
    found.sort();
    found
}

/// A way to damage the vault.
type Tamper<'a> = Box<dyn Fn() -> Damage + 'a>;

/// What was done to a file, undone by [`Damage::undo`].
struct Damage {
    path: PathBuf,
    original: Vec<u8>,
}

impl Damage {
    fn flip(path: &Path, at: usize) -> Self {
        let original = std::fs::read(path).unwrap();
        let mut bytes = original.clone();
        bytes[at] ^= 0x20;
        std::fs::write(path, bytes).unwrap();
        Self {
            path: path.to_owned(),
            original,
        }
    }

    fn truncate(path: &Path, len: usize) -> Self {
        let original = std::fs::read(path).unwrap();
        std::fs::write(path, &original[..len]).unwrap();
        Self {
            path: path.to_owned(),
            original,
        }
    }

    fn delete(path: &Path) -> Self {
        let original = std::fs::read(path).unwrap();
        std::fs::remove_file(path).unwrap();
        Self {
            path: path.to_owned(),
            original,
        }
    }

    fn undo(self) {
        std::fs::write(&self.path, self.original).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_damaged_part_of_a_recovery_point_is_named_and_refused() {
    let f = VaultFixture::new(VaultBackend::LocalFolder).await;
    f.disks_create("d", 8 * MIB).await;
    f.write_random("d", 0, 3 * MIB as usize, 7).await;
    let rp = f.snapshot_rp(RP, &[("d", "vol-t")]).await;
    // A resources object of several segments (the stand-in's is one line): replace it.
    let resources = layout::parse_resource_key(&rp.resources).unwrap();
    let lines: String = (0..4000)
        .map(|i| {
            format!(
                "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"cm-{i}\",\"namespace\":\"shop\"}},\"data\":{{\"n\":\"{i:08}\"}}}}\n"
            )
        })
        .collect();
    assert!(lines.len() > 4 * stowage_vault::seal::SEGMENT_LEN);
    f.ctx.primary.delete(&resources).await.unwrap();
    f.ctx
        .primary
        .put_create_only(&resources, lines.into_bytes())
        .await
        .unwrap();
    f.transfer(RP).await.expect("transfer");

    let intact = verify(&f);
    let (out, err) = stdout_and_stderr(&intact);
    assert!(intact.status.success(), "{out}\n{err}");
    assert!(out.contains("intact"), "{out}");
    let staged = f
        .hydrate("r-intact", RP, Tier::Vault)
        .await
        .expect("hydrate");
    f.assert_same_bytes("rp-t-d", &staged.disks[0].disk_id)
        .await;

    let vault = f.dir.join("vault");
    let path = |key: &str| vault.join(key);
    let resources_file = path(resources.as_str());
    let manifest_key = layout::recovery_point(INSTANCE, RP).unwrap();
    let tier_key = layout::recovery_point_tier(INSTANCE, RP, layout::TIER_VAULT).unwrap();
    let map_file = entries_in(&vault.join("volumes").join("vol-t"), false).remove(0);
    let map_key = format!(
        "volumes/vol-t/{}",
        map_file.file_name().unwrap().to_string_lossy()
    );
    let shard = entries_in(&vault.join("packs"), true).remove(0);
    let pack_file = entries_in(&shard, false).remove(0);
    let pack_name = pack_file
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let sealed = stowage_vault::seal::HEADER_LEN + stowage_vault::seal::SEALED_SEGMENT_LEN;

    // (what is done, the object verify must name, what it must say about it)
    let cases: Vec<(&str, Tamper, String, &str)> = vec![
        (
            "a byte of the resources object",
            Box::new(|| Damage::flip(&resources_file, sealed + 100)),
            resources.to_string(),
            "segment 1 of",
        ),
        (
            "a byte of the RP manifest",
            Box::new(|| Damage::flip(&path(manifest_key.as_str()), 70)),
            manifest_key.to_string(),
            "failed authentication",
        ),
        (
            "a byte of the vault-tier manifest",
            Box::new(|| Damage::flip(&path(tier_key.as_str()), 70)),
            tier_key.to_string(),
            "failed authentication",
        ),
        (
            "a byte of the extent map",
            Box::new(|| Damage::flip(&map_file, 60)),
            map_key.clone(),
            "failed authentication",
        ),
        (
            "a byte of a pack",
            Box::new(|| Damage::flip(&pack_file, 5000)),
            pack_name.clone(),
            "authentication failed",
        ),
        (
            "the resources object cut at a segment boundary",
            Box::new(|| Damage::truncate(&resources_file, sealed)),
            resources.to_string(),
            "truncated: it ends after segment 0",
        ),
        (
            "the extent map cut short",
            Box::new(|| {
                let len = std::fs::metadata(&map_file).unwrap().len() as usize;
                Damage::truncate(&map_file, len - 7)
            }),
            map_key.clone(),
            "",
        ),
        (
            "a pack cut in half",
            Box::new(|| {
                let len = std::fs::metadata(&pack_file).unwrap().len() as usize;
                Damage::truncate(&pack_file, len / 2)
            }),
            pack_name.clone(),
            "",
        ),
        (
            "the resources object deleted",
            Box::new(|| Damage::delete(&resources_file)),
            resources.to_string(),
            "missing",
        ),
        (
            "the extent map deleted",
            Box::new(|| Damage::delete(&map_file)),
            map_key.clone(),
            "missing",
        ),
        (
            "a pack deleted",
            Box::new(|| Damage::delete(&pack_file)),
            pack_name.clone(),
            "missing",
        ),
    ];
    let mut restore = 0;
    for (what, damage, object, says) in cases {
        let done = damage();
        let report = verify(&f);
        let (out, err) = stdout_and_stderr(&report);
        assert_eq!(
            report.status.code(),
            Some(1),
            "{what}: verify passed\n{out}\n{err}"
        );
        let named: Vec<&str> = out.lines().filter(|l| l.contains(&object)).collect();
        assert!(
            !named.is_empty(),
            "{what}: {object} is not named\n{out}\n{err}"
        );
        assert!(
            named.iter().any(|l| l.contains(says)),
            "{what}: {object} is named without {says:?}\n{out}"
        );
        assert!(
            err.contains(&format!("in recovery point {RP}")),
            "{what}: {err}"
        );
        eprintln!(
            "{what}: {}",
            named[0].split_whitespace().collect::<Vec<_>>().join(" ")
        );

        // The RP manifest is the restore stage's (below); the hydration needs the rest.
        if !what.contains("RP manifest") {
            restore += 1;
            let error = f
                .hydrate(&format!("r-{restore}"), RP, Tier::Vault)
                .await
                .expect_err(what)
                .to_string();
            assert!(
                error.contains(&object) || error.contains(&pack_name),
                "{what}: the hydration's refusal does not name {object}: {error}"
            );
        }
        done.undo();
    }
    let healed = verify(&f);
    assert!(healed.status.success(), "{}", stdout_and_stderr(&healed).0);

    // Without the key, or with another vault's, a reader names the fix and the key ids.
    let key_id = f.ctx.key.key_id().to_string();
    let other = stowage_vault::crypto::VaultKey::generate().unwrap();
    for (given, wanted) in [
        (
            None,
            vec!["--vault-key-file", "STOWAGE_VAULT_KEY", key_id.as_str()],
        ),
        (
            Some(other.expose_secret_hex()),
            // The fixture's vault has no keyring: the key is checked against the key id its
            // sealed objects record.
            vec!["has no keyring", "nothing was written", key_id.as_str()],
        ),
    ] {
        let mut list = stowage_command();
        list.args(["rp", "list", INSTANCE, "--vault"])
            .arg(&vault)
            .env_remove("STOWAGE_VAULT_KEY")
            .env_remove("STOWAGE_VAULT_KEY_FILE");
        if let Some(hex) = &given {
            list.env("STOWAGE_VAULT_KEY", hex);
        }
        let out = list.output().expect("run stowage rp list");
        let (_, err) = stdout_and_stderr(&out);
        assert!(!out.status.success(), "{err}");
        for text in wanted {
            assert!(err.contains(text), "{text:?} missing: {err}");
        }
    }
}
