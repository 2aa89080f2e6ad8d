//! What a recovery point holds is sealed (`stowage_vault::seal`): the snapshot stores the
//! sample app's Secrets only encrypted, and a restore from a damaged, truncated or swapped
//! resources object or manifest refuses before it applies anything to the cluster.

use stowage_runtime::JobContext;
use stowage_schemas::Stage;
use stowage_stages::restore::restore;
use stowage_vault::layout;

use crate::cluster_fixture::*;

/// The sample app's `shop` Secret, as its data is encoded in the resources object.
const SHOP_PASSWORD_BASE64: &[u8] = b"c2VjcmV0LXBhc3N3b3Jk";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn the_resources_object_is_sealed_and_a_damaged_one_restores_nothing() {
    let f = Fixture::new().await;
    f.define_instance(namespaces(&["shop"]), Vec::new()).await;
    f.snapshot("rp-1").await;
    f.snapshot("rp-2").await;
    let key = |rp: &str| layout::resource(INSTANCE, rp, &["resources.jsonl"]).unwrap();
    let file = |rp: &str| f.dir.join("vault").join(key(rp).as_str());

    // The Secret is in the backup (opened with the key), and not in the bytes stored.
    let stored = std::fs::read(file("rp-1")).unwrap();
    assert!(stored.starts_with(stowage_vault::seal::MAGIC));
    assert!(!contains(&stored, SHOP_PASSWORD_BASE64));
    let mut reader = f.vault.read_windows(&key("rp-1")).await.unwrap();
    let mut opened = Vec::new();
    while let Some(window) = reader.next_window().await.unwrap() {
        opened.extend_from_slice(&window);
    }
    assert!(contains(&opened, SHOP_PASSWORD_BASE64));
    assert!(
        !contains(
            &std::fs::read(f.dir.join("vault/catalog").join(INSTANCE).join("rp-1.json")).unwrap(),
            b"resources.jsonl"
        ),
        "the manifest is sealed too"
    );

    // Each damage: the restore fails naming the object, and the target cluster stays empty.
    let flipped = {
        let mut bytes = stored.clone();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x01;
        bytes
    };
    let swapped = std::fs::read(file("rp-2")).unwrap();
    let manifest = f.dir.join("vault/catalog").join(INSTANCE).join("rp-1.json");
    let manifest_bytes = std::fs::read(&manifest).unwrap();
    let cases: Vec<(&str, std::path::PathBuf, Vec<u8>, String)> = vec![
        (
            "a flipped byte",
            file("rp-1"),
            flipped,
            key("rp-1").to_string(),
        ),
        (
            "a truncated object",
            file("rp-1"),
            stored[..stored.len() - 1].to_vec(),
            key("rp-1").to_string(),
        ),
        (
            "another recovery point's object",
            file("rp-1"),
            swapped,
            key("rp-1").to_string(),
        ),
        (
            "a flipped byte of the manifest",
            manifest.clone(),
            {
                let mut bytes = manifest_bytes.clone();
                bytes[60] ^= 0x01;
                bytes
            },
            format!("catalog/{INSTANCE}/rp-1.json"),
        ),
    ];
    for (n, (what, path, damaged, object)) in cases.into_iter().enumerate() {
        let original = std::fs::read(&path).unwrap();
        std::fs::write(&path, damaged).unwrap();
        let error = restore(
            &f.ctx,
            &operational("rp-1", &format!("r-{n}"), to_dr()),
            &JobContext::detached(Stage::Restore),
        )
        .await
        .expect_err(what)
        .to_string();
        assert!(error.contains(&object), "{what}: {error}");
        assert!(
            get(
                &f.dr.client(),
                ("v1", "Namespace", "namespaces"),
                None,
                "shop"
            )
            .await
            .is_none(),
            "{what}: the restore created the namespace before refusing"
        );
        assert!(
            get(&f.dr.client(), CONFIG_MAP, Some("shop"), "web-config")
                .await
                .is_none(),
            "{what}: the restore applied objects before refusing"
        );
        std::fs::write(&path, original).unwrap();
    }
    // Intact again: the restore goes through.
    let report = f.restore("rp-1", "r-ok", to_dr()).await;
    assert!(report.volumes_restored > 0);
    assert!(
        get(&f.dr.client(), CONFIG_MAP, Some("shop"), "web-config")
            .await
            .is_some()
    );
}
