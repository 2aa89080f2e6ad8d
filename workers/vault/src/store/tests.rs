//! Tests of the blob store: every backend through the same API.

use std::path::PathBuf;

use futures::TryStreamExt;
use object_store::local::LocalFileSystem;

use super::stream::temp_path;
use super::*;
use crate::layout;

/// A fresh, empty folder under the system temp dir; removed when dropped.
pub(crate) struct TempFolder(pub PathBuf);

impl TempFolder {
    pub(crate) fn new(purpose: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("stowage-vault-{purpose}-{}", uuid::Uuid::new_v4()));
        Self(path)
    }
}

impl Drop for TempFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An in-memory store and a local folder, holding one vault key (resources, manifests and maps
/// are sealed, see `store/sealed.rs`).
fn stores() -> Vec<(BlobStore, Option<TempFolder>)> {
    let key = crate::crypto::VaultKey::generate().unwrap();
    let folder = TempFolder::new("store");
    let local = BlobStore::local_folder(&folder.0, LocalDurability::OsBuffered).unwrap();
    vec![
        (BlobStore::in_memory().with_key(&key), None),
        (local.with_key(&key), Some(folder)),
    ]
}

/// `len` bytes of a pattern that does not repeat at part boundaries.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// `data` as a stream of chunks of `chunk` bytes.
fn chunked(
    data: &[u8],
    chunk: usize,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let chunks: Vec<_> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks)
}

/// Keys of the temporary objects of streamed writes left in `store`.
async fn leftovers(store: &BlobStore) -> Vec<String> {
    store
        .inner
        .list(Some(&ObjectPath::from(STREAM_TEMP_DIR)))
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

/// A racing writer's temp object, published to `key` by the create-only copy after the early
/// check has passed: answers the temp object and what the copy reports.
async fn race_the_publishing_copy(store: &BlobStore, key: &BlobKey) -> (ObjectPath, CreateOutcome) {
    let temp = temp_path(key);
    store
        .inner
        .put(&temp, PutPayload::from_static(b"racer"))
        .await
        .unwrap();
    let raced = store
        .publish_copy(&temp, key, || async { unreachable!("nothing was created") })
        .await
        .unwrap();
    (temp, raced)
}

#[tokio::test]
async fn streamed_write_round_trips_a_multi_part_object() {
    for (store, _folder) in stores() {
        let key = layout::resource("web", "rp-1", &["resources.jsonl"]).unwrap();
        let data = pattern(2 * STREAM_PART_BYTES + 123_457);
        let outcome = store
            .put_stream_create_only(&key, chunked(&data, 700_001))
            .await
            .unwrap();
        let CreateOutcome::Created(version) = outcome else {
            panic!("{store}: a fresh key already existed");
        };
        let read = store.get(&key).await.unwrap();
        assert!(read.bytes[..] == data[..], "{store}: content differs");
        assert_eq!(read.version, version, "{store}: create and get disagree");
        assert_eq!(
            store.read_windows(&key).await.unwrap().len(),
            data.len() as u64
        );
        assert!(leftovers(&store).await.is_empty(), "{store}");
        // The version is a valid compare-and-swap token.
        store
            .update_if_unchanged(&key, &b"replaced"[..], &version)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn streamed_write_is_create_only() {
    for (store, _folder) in stores() {
        let key = layout::resource("web", "rp-2", &["resources.jsonl"]).unwrap();
        let first = pattern(STREAM_PART_BYTES + 10);
        store
            .put_stream_create_only(&key, chunked(&first, 1 << 20))
            .await
            .unwrap();
        let mut other = pattern(2 * STREAM_PART_BYTES);
        other.reverse();
        for second in [&other[..], &b"small"[..], &[][..]] {
            let outcome = store
                .put_stream_create_only(&key, chunked(second, 1 << 20))
                .await
                .unwrap();
            assert_eq!(outcome, CreateOutcome::AlreadyExists, "{store}");
        }
        assert!(
            store.get(&key).await.unwrap().bytes[..] == first[..],
            "{store}"
        );

        // The copy that publishes is create-only by itself, even when the key appears
        // after the early check (a racing writer).
        let (_, raced) = race_the_publishing_copy(&store, &key).await;
        assert_eq!(raced, CreateOutcome::AlreadyExists, "{store}");
        assert!(
            store.get(&key).await.unwrap().bytes[..] == first[..],
            "{store}"
        );
    }
}

#[tokio::test]
async fn streamed_write_of_small_and_empty_objects() {
    for (store, _folder) in stores() {
        for (name, data) in [("small.json", &b"{\"a\":1}\n"[..]), ("empty.json", &[][..])] {
            let key = layout::resource("web", "rp-3", &[name]).unwrap();
            let outcome = store
                .put_stream_create_only(&key, chunked(data, 3))
                .await
                .unwrap();
            let CreateOutcome::Created(version) = outcome else {
                panic!("{store}: {name} already existed");
            };
            let read = store.get(&key).await.unwrap();
            assert_eq!(&read.bytes[..], data, "{store}");
            assert_eq!(read.version, version, "{store}");
        }
        assert!(leftovers(&store).await.is_empty(), "{store}");
    }
}

#[tokio::test]
async fn a_failing_stream_creates_nothing_and_leaves_nothing() {
    for (store, _folder) in stores() {
        let key = layout::resource("web", "rp-4", &["resources.jsonl"]).unwrap();
        for fail_after in [1usize, 3 * STREAM_PART_BYTES] {
            let data = pattern(fail_after);
            let failing = chunked(&data, 1 << 20).chain(futures::stream::iter([Err(
                std::io::Error::other("collection stopped"),
            )]));
            let error = store
                .put_stream_create_only(&key, failing)
                .await
                .unwrap_err();
            assert!(error.kind() == ErrorKind::Source, "{store}: {error}");
            let text = error.to_string();
            assert!(
                text.contains("resources.jsonl") && text.contains("collection stopped"),
                "{text}"
            );
            assert!(!error.is_transient());
            assert!(store.get(&key).await.unwrap_err().is_not_found(), "{store}");
        }
        // The cleanup of a failed upload may run on a spawned task; give it a moment.
        tokio::task::yield_now().await;
        assert!(leftovers(&store).await.is_empty(), "{store}");
    }
}

#[tokio::test]
async fn copies_between_stores_and_within_one() {
    let (memory, local_folder) = {
        let mut both = stores();
        let (local, folder) = both.pop().unwrap();
        let (memory, _) = both.pop().unwrap();
        ((memory, local), folder)
    };
    let (memory, local) = memory;
    let key = layout::resource("web", "rp-5", &["resources.jsonl"]).unwrap();
    let data = pattern(2 * STREAM_PART_BYTES + 99);
    memory
        .put_stream_create_only(&key, chunked(&data, 1 << 20))
        .await
        .unwrap();
    for (from, to) in [(&memory, &local), (&local, &memory)] {
        if from.head(&key).await.is_ok() && to.head(&key).await.is_ok() {
            continue;
        }
        let CreateOutcome::Created(version) = from.copy_create_only(to, &key).await.unwrap() else {
            panic!("{to}: copy target existed");
        };
        let read = to.get(&key).await.unwrap();
        assert!(read.bytes[..] == data[..], "{from} → {to}");
        assert_eq!(read.version, version, "{from} → {to}");
        let again = from.copy_create_only(to, &key).await.unwrap();
        assert_eq!(again, CreateOutcome::AlreadyExists, "{from} → {to}");
    }
    // Small objects too, and within one store to another key (a staging copy).
    for store in [&memory, &local] {
        let small = layout::resource("web", "rp-5", &["small.json"]).unwrap();
        let copy = layout::staging("restore-1", "small").unwrap();
        let big_copy = layout::staging("restore-1", "resources").unwrap();
        store.put_create_only(&small, &b"{}"[..]).await.unwrap();
        for (source, target, content) in [(&small, &copy, &b"{}"[..]), (&key, &big_copy, &data[..])]
        {
            let CreateOutcome::Created(version) = store
                .copy_to_key_create_only(source, store, target)
                .await
                .unwrap()
            else {
                panic!("{store}: {target} existed");
            };
            let read = store.get(target).await.unwrap();
            assert!(read.bytes[..] == content[..], "{store}: {target}");
            assert_eq!(read.version, version, "{store}: {target}");
            let again = store
                .copy_to_key_create_only(source, &store.clone(), target)
                .await
                .unwrap();
            assert_eq!(again, CreateOutcome::AlreadyExists, "{store}: {target}");
        }
        let missing = layout::resource("web", "rp-5", &["missing"]).unwrap();
        for to in [&memory, &local] {
            let error = store
                .copy_to_key_create_only(&missing, to, &copy)
                .await
                .unwrap_err();
            assert!(error.is_not_found(), "{store} → {to}: {error}");
            assert!(error.to_string().contains("rp-5/missing"), "{error}");
        }
        assert!(leftovers(store).await.is_empty(), "{store}");
    }
    drop(local_folder);
}

/// Needs Azurite on 127.0.0.1:10000, which scripts/test.sh starts; fails (never skips)
/// with the command to start it otherwise.
#[tokio::test]
async fn streamed_write_and_copy_on_azurite() {
    let container = format!("stream-{}", uuid::Uuid::new_v4().simple());
    create_azurite_container(&container)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nStart Azurite with infra/scripts/start-azurite.sh (scripts/test.sh does it)."
            )
        });
    let store = BlobStore::azure(&AzureConfig::Emulator { container })
        .unwrap()
        .with_key(&crate::crypto::VaultKey::generate().unwrap());
    let key = layout::resource("web", "rp-1", &["resources.jsonl"]).unwrap();
    let data = pattern(2 * STREAM_PART_BYTES + 7);
    let CreateOutcome::Created(version) = store
        .put_stream_create_only(&key, chunked(&data, 1 << 20))
        .await
        .unwrap()
    else {
        panic!("a fresh key already existed");
    };
    let read = store.get(&key).await.unwrap();
    assert!(read.bytes[..] == data[..]);
    assert_eq!(read.version, version);
    let again = store
        .put_stream_create_only(&key, chunked(&data, 1 << 20))
        .await
        .unwrap();
    assert_eq!(again, CreateOutcome::AlreadyExists);
    // The publishing copy alone refuses an existing key on Azure too.
    let (temp, raced) = race_the_publishing_copy(&store, &key).await;
    assert_eq!(raced, CreateOutcome::AlreadyExists);
    store.inner.delete(&temp).await.unwrap();
    let staged = layout::staging("restore-1", "resources").unwrap();
    store
        .copy_to_key_create_only(&key, &store, &staged)
        .await
        .unwrap();
    assert!(store.get(&staged).await.unwrap().bytes[..] == data[..]);
    assert!(leftovers(&store).await.is_empty());
}

/// The peak resident memory of this process so far (`VmHWM`), in bytes.
fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Writing and copying a 64 MiB object raise the process's peak memory by far less than
/// 64 MiB. Peak memory is per process and the test harness runs tests in threads, so the
/// measurement runs in a child process that runs only this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_write_and_copy_use_bounded_memory() {
    const CHILD: &str = "STOWAGE_BOUNDED_MEMORY_CHILD";
    const OBJECT: usize = 64 << 20;
    const CHUNK: usize = 1 << 20;
    const ALLOWED_GROWTH: u64 = 32 << 20;
    if peak_resident_bytes().is_none() {
        eprintln!("no /proc/self/status VmHWM here; skipping the memory measurement");
        return;
    }
    if std::env::var_os(CHILD).is_none() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::tests::streamed_write_and_copy_use_bounded_memory",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "the measuring child failed:\n{text}"
        );
        assert!(
            text.contains("peak memory grew by"),
            "the child did not measure:\n{text}"
        );
        return;
    }
    let vault_key = crate::crypto::VaultKey::generate().unwrap();
    let folder = TempFolder::new("bounded-memory");
    let store = BlobStore::local_folder(&folder.0, LocalDurability::OsBuffered)
        .unwrap()
        .with_key(&vault_key);
    let other_folder = TempFolder::new("bounded-memory-copy");
    let other = BlobStore::local_folder(&other_folder.0, LocalDurability::OsBuffered)
        .unwrap()
        .with_key(&vault_key);
    let key = layout::resource("big", "rp-1", &["resources.jsonl"]).unwrap();
    let before = peak_resident_bytes().unwrap();
    // A generated stream: each chunk is made when asked for and freed once uploaded.
    let generated = futures::stream::iter(0..OBJECT / CHUNK)
        .map(|n| Ok::<_, std::io::Error>(Bytes::from(vec![(n % 251) as u8; CHUNK])));
    let written = store.put_stream_create_only(&key, generated).await.unwrap();
    assert!(matches!(written, CreateOutcome::Created(_)));
    let copied = store.copy_create_only(&other, &key).await.unwrap();
    assert!(matches!(copied, CreateOutcome::Created(_)));
    let after = peak_resident_bytes().unwrap();
    assert_eq!(other.read_windows(&key).await.unwrap().len(), OBJECT as u64);
    let growth = after.saturating_sub(before);
    println!(
        "peak memory grew by {} KiB writing and copying a {} MiB object",
        growth >> 10,
        OBJECT >> 20
    );
    assert!(
        growth < ALLOWED_GROWTH,
        "peak memory grew by {growth} bytes for a {OBJECT}-byte object; streaming is not bounded"
    );
}

#[tokio::test]
async fn create_only_reports_already_exists_and_keeps_the_first_content() {
    for (store, _folder) in stores() {
        let key = layout::recovery_point("web", "rp-1").unwrap();
        let first = store.put_create_only(&key, &b"first"[..]).await.unwrap();
        assert!(matches!(first, CreateOutcome::Created(_)), "{store}");
        let second = store.put_create_only(&key, &b"second"[..]).await.unwrap();
        assert_eq!(second, CreateOutcome::AlreadyExists, "{store}");
        assert_eq!(&store.get(&key).await.unwrap().bytes[..], b"first");
    }
}

#[tokio::test]
async fn compare_and_swap_detects_a_concurrent_writer() {
    for (store, _folder) in stores() {
        let key = layout::job("job-1").unwrap();
        let CreateOutcome::Created(created) =
            store.put_create_only(&key, &b"v1"[..]).await.unwrap()
        else {
            panic!("fresh key already existed");
        };
        let read = store.get(&key).await.unwrap();
        assert_eq!(read.version, created, "{store}: create and get disagree");

        let v2 = store
            .update_if_unchanged(&key, &b"v2"[..], &read.version)
            .await
            .unwrap();
        // A second writer still holding the v1 version loses.
        let stale = store
            .update_if_unchanged(&key, &b"v2-from-stale-reader"[..], &read.version)
            .await
            .unwrap_err();
        assert!(stale.is_conflict(), "{store}: {stale}");
        assert!(stale.to_string().contains("jobs/job-1.json"));
        assert!(stale.to_string().contains("re-read"));
        // The winner can go on from its own version.
        store
            .update_if_unchanged(&key, &b"v3"[..], &v2)
            .await
            .unwrap();
        assert_eq!(&store.get(&key).await.unwrap().bytes[..], b"v3");

        // Updating a deleted record is a conflict too, not a resurrection.
        let latest = store.get(&key).await.unwrap().version;
        store.delete(&key).await.unwrap();
        let gone = store
            .update_if_unchanged(&key, &b"v4"[..], &latest)
            .await
            .unwrap_err();
        assert!(gone.is_conflict(), "{store}: {gone}");
        assert!(store.get(&key).await.unwrap_err().is_not_found());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_read_modify_write_loses_no_update() {
    // Several "workers" (separate BlobStore handles, as separate processes would have)
    // increment one counter record; every increment must survive.
    const WORKERS: usize = 4;
    const INCREMENTS: usize = 15;
    let folder = TempFolder::new("cas-race");
    let memory = BlobStore::in_memory();
    for shared_memory in [true, false] {
        let open = || {
            if shared_memory {
                memory.clone()
            } else {
                BlobStore::local_folder(&folder.0, LocalDurability::OsBuffered).unwrap()
            }
        };
        let key = layout::job("counter").unwrap();
        open().put_create_only(&key, &b"0"[..]).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..WORKERS {
            let store = open();
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..INCREMENTS {
                    loop {
                        let read = store.get(&key).await.unwrap();
                        let value: usize =
                            std::str::from_utf8(&read.bytes).unwrap().parse().unwrap();
                        let next = (value + 1).to_string();
                        match store.update_if_unchanged(&key, next, &read.version).await {
                            Ok(_) => break,
                            Err(e) if e.is_conflict() => continue,
                            Err(other) => panic!("{other}"),
                        }
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let total = open().get(&key).await.unwrap().bytes;
        assert_eq!(
            std::str::from_utf8(&total).unwrap(),
            (WORKERS * INCREMENTS).to_string(),
            "memory={shared_memory}"
        );
    }
}

#[tokio::test]
async fn reads_ranges_heads_lists_and_deletes() {
    for (store, _folder) in stores() {
        let pack = layout::pack("ab01").unwrap();
        store
            .put_create_only(&pack, &b"0123456789"[..])
            .await
            .unwrap();
        assert_eq!(&store.get_range(&pack, 2..5).await.unwrap()[..], b"234");
        assert_eq!(store.head(&pack).await.unwrap().size, 10);
        let beyond = store.get_range(&pack, 8..20).await.unwrap_err();
        assert!(
            beyond.kind() == ErrorKind::Damaged && beyond.to_string().contains("(10 bytes)"),
            "{store}: {beyond}"
        );

        for id in ["ab02", "cd03"] {
            store
                .put_create_only(&layout::pack(id).unwrap(), &b"x"[..])
                .await
                .unwrap();
        }
        store
            .put_create_only(&layout::job("j").unwrap(), &b"{}"[..])
            .await
            .unwrap();
        let mut listed: Vec<String> = store
            .list(&layout::packs())
            .map_ok(|info| info.key.to_string())
            .try_collect()
            .await
            .unwrap();
        listed.sort();
        assert_eq!(listed, ["packs/ab/ab01", "packs/ab/ab02", "packs/cd/cd03"]);

        store.delete(&pack).await.unwrap();
        store.delete(&pack).await.unwrap(); // idempotent
        let missing = store.get(&pack).await.unwrap_err();
        assert!(missing.is_not_found() && !missing.is_transient());
        assert!(missing.to_string().contains("packs/ab/ab01"), "{missing}");
        assert!(store.head(&pack).await.unwrap_err().is_not_found());
    }
}

#[tokio::test]
async fn local_folder_is_created_and_survives_reopening() {
    let folder = TempFolder::new("reopen");
    let nested = folder.0.join("a").join("vault");
    let key = layout::vault_settings();
    {
        let store = BlobStore::local_folder(&nested, LocalDurability::Fsync).unwrap();
        store.put_create_only(&key, &b"{}"[..]).await.unwrap();
    }
    let reopened = BlobStore::local_folder(&nested, LocalDurability::Fsync).unwrap();
    let read = reopened.get(&key).await.unwrap();
    assert_eq!(&read.bytes[..], b"{}");
    // A version read through one handle is valid through another.
    reopened
        .update_if_unchanged(&key, &b"{\"a\":1}"[..], &read.version)
        .await
        .unwrap();
    assert!(nested.join("vault.json").is_file());
}

#[test]
fn local_folder_that_cannot_be_created_is_named() {
    let folder = TempFolder::new("blocked");
    std::fs::create_dir_all(&folder.0).unwrap();
    let file = folder.0.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let error = BlobStore::local_folder(&file, LocalDurability::Fsync).unwrap_err();
    assert!(error.to_string().contains("not-a-dir"), "{error}");
}

#[test]
fn azure_config_debug_hides_the_access_key() {
    let config = AzureConfig::Account {
        account: "acct".into(),
        access_key: "c2VjcmV0LWtleQ==".into(),
        container: "vault".into(),
        endpoint: None,
    };
    let printed = format!("{config:?}");
    assert!(!printed.contains("c2VjcmV0LWtleQ=="), "{printed}");
    assert!(printed.contains("acct") && printed.contains("<redacted>"));
}

#[tokio::test]
async fn azure_emulator_store_builds_without_network() {
    // Building does not connect; this checks the ring/rustls wiring and error-free config.
    let store = BlobStore::azure(&AzureConfig::Emulator {
        container: "vault".into(),
    })
    .unwrap();
    assert!(store.to_string().contains("vault"), "{store}");
}

#[tokio::test]
async fn a_backend_without_conditional_update_refuses_cas() {
    let folder = TempFolder::new("raw-local");
    std::fs::create_dir_all(&folder.0).unwrap();
    // The raw LocalFileSystem, without this module's emulation.
    let raw = BlobStore::from_object_store(Arc::new(
        LocalFileSystem::new_with_prefix(&folder.0).unwrap(),
    ));
    let key = layout::job("j").unwrap();
    raw.put_create_only(&key, &b"a"[..]).await.unwrap();
    let version = ObjectVersion::native(Some("\"x\"".into()), None);
    let refused = raw
        .update_if_unchanged(&key, &b"b"[..], &version)
        .await
        .unwrap_err();
    assert!(refused.kind() == ErrorKind::Unsupported, "{refused}");
    assert_eq!(&raw.get(&key).await.unwrap().bytes[..], b"a");
}

fn set_age(path: &std::path::Path, age: std::time::Duration) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_modified(std::time::SystemTime::now() - age)
        .unwrap();
}

#[tokio::test]
async fn temporaries_killed_writers_left_are_listed_and_swept_by_age() {
    let folder = TempFolder::new("temporaries");
    let store = BlobStore::local_folder(&folder.0, LocalDurability::OsBuffered).unwrap();
    let job = layout::job("j-1").unwrap();
    store.put_create_only(&job, b"{}".to_vec()).await.unwrap();
    let hour = std::time::Duration::from_secs(3600);
    // A killed CAS/put left a staged file beside the record; a killed streamed write left
    // its temporary object (and object_store's staged file of it); a live write is fresh.
    let root = &folder.0;
    let staged = root.join("jobs/j-1.json#17");
    let streamed = root.join(".stowage-tmp/0123abcd");
    let streamed_staged = root.join(".stowage-tmp/4567ef01#3");
    let live = root.join("jobs/j-2.json#18");
    std::fs::create_dir_all(root.join(".stowage-tmp")).unwrap();
    for path in [&staged, &streamed, &streamed_staged, &live] {
        std::fs::write(path, b"partial").unwrap();
    }
    for path in [&staged, &streamed, &streamed_staged] {
        set_age(path, 25 * hour);
    }
    // Not temporaries: a real key whose name has a '#' followed by non-digits, the lock
    // folder's files, the record itself — even when old.
    let odd = root.join("jobs/notes#a1");
    std::fs::write(&odd, b"x").unwrap();
    set_age(&odd, 25 * hour);
    set_age(&root.join("jobs/j-1.json"), 25 * hour);

    let mut listed: Vec<String> = store
        .temporary_objects()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.path)
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ".stowage-tmp/0123abcd",
            ".stowage-tmp/4567ef01#3",
            "jobs/j-1.json#17",
            "jobs/j-2.json#18"
        ]
    );
    let removed = store
        .remove_stale_temporaries(24 * hour, std::time::SystemTime::now())
        .await
        .unwrap();
    assert_eq!(removed.len(), 3, "{removed:?}");
    assert!(!staged.exists() && !streamed.exists() && !streamed_staged.exists());
    assert!(
        live.exists(),
        "a temporary written recently may be a live write: kept"
    );
    assert!(odd.exists());
    assert_eq!(store.get(&job).await.unwrap().bytes.as_ref(), b"{}");
    assert!(root.join(LOCAL_LOCK_DIR).is_dir());

    // Any backend: the streamed-write folder, by the backend's modification time.
    let memory = BlobStore::in_memory();
    memory
        .inner
        .put(
            &to_path(".stowage-tmp/89ab"),
            PutPayload::from_static(b"partial"),
        )
        .await
        .unwrap();
    memory.put_create_only(&job, b"{}".to_vec()).await.unwrap();
    let now = std::time::SystemTime::now();
    assert!(
        memory
            .remove_stale_temporaries(hour, now)
            .await
            .unwrap()
            .is_empty()
    );
    let later = now + 2 * hour;
    assert_eq!(
        memory
            .remove_stale_temporaries(hour, later)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(memory.temporary_objects().await.unwrap().is_empty());
    assert!(memory.get(&job).await.is_ok());
}
