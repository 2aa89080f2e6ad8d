use super::*;

fn loc(pack: u64, offset: u64) -> ChunkLocation {
    ChunkLocation {
        pack: PackId::for_job("job", pack),
        offset,
        length: 100 + offset as u32,
    }
}

fn id(n: u64) -> ChunkId {
    ChunkId::from_bytes(*blake3::hash(&n.to_le_bytes()).as_bytes())
}

async fn segment_ids(store: &BlobStore) -> Vec<String> {
    let mut ids = Vec::new();
    let mut listing = store.list(&layout::index_segments());
    while let Some(info) = listing.next().await {
        let info = info.unwrap();
        ids.push(layout::segment_id_from_key(&info.key).unwrap().to_owned());
    }
    ids.sort();
    ids
}

#[tokio::test]
async fn segments_round_trip_and_are_consulted_by_range() {
    let store = BlobStore::in_memory();
    let a = ChunkId::from_bytes([1; 32]);
    let b = ChunkId::from_bytes([2; 32]);
    let c = ChunkId::from_bytes([3; 32]);
    write_segment(&store, "job-1", &[(b, loc(0, 8)), (a, loc(1, 16))])
        .await
        .unwrap();
    assert_eq!(
        write_segment(&store, "job-1", &[]).await.unwrap(),
        CreateOutcome::AlreadyExists
    );
    write_segment(&store, "job-2", &[(c, loc(0, 99)), (a, loc(2, 0))])
        .await
        .unwrap();

    let index = DedupIndex::open(&store).await.unwrap();
    assert_eq!(index.segments().segments().len(), 2);
    assert_eq!(index.get(&b).await.unwrap(), Some(loc(0, 8)));
    assert_eq!(index.get(&c).await.unwrap(), Some(loc(0, 99)));
    assert!(index.contains(&a).await.unwrap());
    assert!(!index.contains(&ChunkId::from_bytes([9; 32])).await.unwrap());

    let only: HashSet<ChunkId> = [c].into();
    let partial = ChunkIndex::load_only(&store, &only).await.unwrap();
    assert_eq!(partial.len(), 1);
    assert!(partial.contains(&c) && !partial.contains(&a));
}

/// Many blocks: every entry is found through filter, fences and one block read; ids that are
/// not there are not found; a whole decode agrees.
#[tokio::test]
async fn a_large_segment_finds_every_entry_and_nothing_else() {
    let store = BlobStore::in_memory();
    let n = BLOCK_ENTRIES as u64 * 7 + 13;
    let entries: Vec<_> = (0..n).map(|i| (id(i), loc(i % 5, i))).collect();
    write_segment(&store, "big", &entries).await.unwrap();
    let index = DedupIndex::open(&store).await.unwrap();
    assert_eq!(index.segments().entries(), n);
    for (i, (chunk, location)) in entries.iter().enumerate() {
        assert_eq!(
            index.get(chunk).await.unwrap().as_ref(),
            Some(location),
            "{i}"
        );
    }
    for i in n..n + 2000 {
        assert!(!index.contains(&id(i)).await.unwrap());
    }
    let key = layout::index_segment("big").unwrap();
    let whole = decode_segment(&store.get(&key).await.unwrap().bytes, &key).unwrap();
    assert_eq!(whole.len() as u64, n);
    // Memory kept: filter and fences, far below the entries themselves.
    assert!(
        index.segments().resident_bytes() < (n as usize) * 3,
        "{}",
        index.segments().resident_bytes()
    );

    let wanted: HashSet<ChunkId> = (0..n).step_by(97).map(id).chain([id(n + 5)]).collect();
    let partial = ChunkIndex::load_only(&store, &wanted).await.unwrap();
    assert_eq!(partial.len(), (0..n).step_by(97).count());
}

#[test]
fn damage_is_detected() {
    let key = layout::index_segment("s").unwrap();
    let entries: Vec<_> = (0..600).map(|i| (id(i), loc(3, i))).collect();
    let bytes = encode_segment(&entries);
    assert_eq!(decode_segment(&bytes, &key).unwrap().len(), 600);
    for at in [20, bytes.len() / 2, bytes.len() - 40] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 1;
        let err = decode_segment(&damaged, &key).unwrap_err().to_string();
        assert!(
            err.contains("index/s.idx") && err.contains("corrupt"),
            "{err}"
        );
    }
    assert!(decode_segment(b"nonsense", &key).is_err());
    let mut v1 = encode_segment_v1(&entries);
    assert_eq!(decode_segment(&v1, &key).unwrap().len(), 600);
    let middle = v1.len() / 2;
    v1[middle] ^= 1;
    let err = decode_segment(&v1, &key).unwrap_err().to_string();
    assert!(err.contains("checksum"), "{err}");
}

/// A damaged block is found when a lookup reads it, naming the segment.
#[tokio::test]
async fn a_damaged_block_fails_the_lookup_naming_the_segment() {
    let store = BlobStore::in_memory();
    let entries: Vec<_> = (0..600).map(|i| (id(i), loc(3, i))).collect();
    let mut bytes = encode_segment(&entries);
    bytes[8 + 100] ^= 1; // inside block 0
    let key = layout::index_segment("s").unwrap();
    store
        .put_create_only(&key, Bytes::from(bytes))
        .await
        .unwrap();
    let index = DedupIndex::open(&store).await.unwrap();
    let sorted = {
        let mut e = entries.clone();
        e.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        e
    };
    let err = index.get(&sorted[0].0).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Damaged);
    assert!(err.to_string().contains("index/s.idx"), "{err}");
}

/// Old vaults: format-1 segments are read beside format-2 ones, and compaction converts them.
#[tokio::test]
async fn format_1_segments_stay_readable_and_are_converted() {
    let store = BlobStore::in_memory();
    let old: Vec<_> = (0..300).map(|i| (id(i), loc(1, i))).collect();
    let key = layout::index_segment("old-job").unwrap();
    store
        .put_create_only(&key, Bytes::from(encode_segment_v1(&old)))
        .await
        .unwrap();
    write_segment(&store, "new-job", &[(id(1000), loc(2, 0))])
        .await
        .unwrap();
    let index = DedupIndex::open(&store).await.unwrap();
    assert_eq!(index.get(&id(7)).await.unwrap(), Some(loc(1, 7)));
    assert_eq!(index.get(&id(1000)).await.unwrap(), Some(loc(2, 0)));

    let now = Timestamp::now();
    let report = compact(&store, now, SignedDuration::from_hours(24))
        .await
        .unwrap();
    assert_eq!((report.merged, report.written), (2, 1), "{report:?}");
    let index = SegmentIndex::open(&store).await.unwrap();
    assert_eq!(index.segments().len(), 1);
    assert!(!index.segments()[0].is_format_1());
    assert_eq!(index.entries(), 301);
    // Still listed (superseded), deleted only after the grace.
    assert_eq!(segment_ids(&store).await.len(), 3);
    let later = now.checked_add(SignedDuration::from_hours(25)).unwrap();
    let report = compact(&store, later, SignedDuration::from_hours(24))
        .await
        .unwrap();
    assert_eq!(report.deleted, 2, "{report:?}");
    assert_eq!(segment_ids(&store).await.len(), 1);
    let wanted: HashSet<ChunkId> = [id(7), id(1000)].into();
    assert_eq!(
        ChunkIndex::load_only(&store, &wanted).await.unwrap().len(),
        2
    );
}

/// Compaction keeps segments per vault logarithmic, every chunk findable, and a reader that
/// opened the index before a merge keeps working until the grace has passed.
#[tokio::test]
async fn compaction_merges_tiers_and_readers_keep_working() {
    let store = BlobStore::in_memory();
    let mut all = Vec::new();
    for job in 0..10u64 {
        let entries: Vec<_> = (job * 100..job * 100 + 100)
            .map(|i| (id(i), loc(job, i)))
            .collect();
        write_segment(&store, &format!("job-{job}"), &entries)
            .await
            .unwrap();
        all.extend(entries);
    }
    let before = DedupIndex::open(&store).await.unwrap();
    let untouched = DedupIndex::open(&store).await.unwrap();
    assert_eq!(before.segments().segments().len(), 10);
    let now = Timestamp::now();
    let report = compact(&store, now, SignedDuration::from_hours(24))
        .await
        .unwrap();
    assert_eq!(report.written, 1, "{report:?}");
    let after = DedupIndex::open(&store).await.unwrap();
    assert_eq!(after.segments().segments().len(), 1);
    for (chunk, location) in &all {
        assert_eq!(after.get(chunk).await.unwrap().as_ref(), Some(location));
        assert_eq!(before.get(chunk).await.unwrap().as_ref(), Some(location));
    }
    // A merge of a merge supersedes what the first one superseded, so deleting the first
    // never brings its inputs back.
    for job in 10..13u64 {
        write_segment(
            &store,
            &format!("job-{job}"),
            &[(id(5000 + job), loc(job, 0))],
        )
        .await
        .unwrap();
    }
    // Tier 0 holds the merge (1000 entries) and three new ones: merged again.
    let report = compact(&store, now, SignedDuration::from_hours(24))
        .await
        .unwrap();
    assert_eq!(report.written, 1, "{report:?}");
    let later = now.checked_add(SignedDuration::from_hours(25)).unwrap();
    compact(&store, later, SignedDuration::from_hours(24))
        .await
        .unwrap();
    let ids = segment_ids(&store).await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    let last = DedupIndex::open(&store).await.unwrap();
    assert_eq!(last.segments().entries(), 1003);
    // A reader from before every merge that reads a block now fails retryably, naming it.
    let err = untouched.get(&all[0].0).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        err.to_string()
            .contains("was deleted while this job read it"),
        "{err}"
    );
}

#[tokio::test]
async fn dropping_packs_rewrites_and_supersedes() {
    let store = BlobStore::in_memory();
    let entries: Vec<_> = (0..1000).map(|i| (id(i), loc(i % 2, i))).collect();
    write_segment(&store, "job", &entries).await.unwrap();
    let deleted: BTreeSet<String> = [PackId::for_job("job", 1).as_str().to_owned()].into();
    assert_eq!(drop_packs(&store, &deleted).await.unwrap(), Some(1));
    let index = DedupIndex::open(&store).await.unwrap();
    assert_eq!(index.segments().entries(), 500);
    assert_eq!(index.get(&id(2)).await.unwrap(), Some(loc(0, 2)));
    assert_eq!(index.get(&id(3)).await.unwrap(), None);
    // Again: nothing left to drop.
    assert_eq!(drop_packs(&store, &deleted).await.unwrap(), Some(0));
}

/// A second collector finds the maintenance lease taken and leaves the index alone.
#[tokio::test]
async fn maintenance_is_one_collector_at_a_time() {
    let store = BlobStore::in_memory();
    let held = Maintenance::try_take(&store).await.unwrap().expect("free");
    let report = compact(&store, Timestamp::now(), SignedDuration::from_hours(24))
        .await
        .unwrap();
    assert!(report.skipped);
    assert_eq!(drop_packs(&store, &BTreeSet::new()).await.unwrap(), None);
    held.release().await;
    assert!(
        !compact(&store, Timestamp::now(), SignedDuration::from_hours(24))
            .await
            .unwrap()
            .skipped
    );
}

#[test]
fn the_filter_has_few_false_positives() {
    let mut bloom = Bloom::with_capacity(10_000);
    for i in 0..10_000 {
        bloom.insert(&id(i));
    }
    assert!((0..10_000).all(|i| bloom.may_contain(&id(i))));
    let false_positives = (10_000..110_000)
        .filter(|i| bloom.may_contain(&id(*i)))
        .count();
    assert!(false_positives < 200, "{false_positives} in 100000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contains_blocking_answers_from_hashing_threads() {
    let store = BlobStore::in_memory();
    write_segment(&store, "s", &[(id(1), loc(0, 0))])
        .await
        .unwrap();
    let index = Arc::new(DedupIndex::open(&store).await.unwrap());
    let answers = tokio::task::spawn_blocking(move || {
        (
            index.contains_blocking(&id(1)).unwrap(),
            index.contains_blocking(&id(2)).unwrap(),
        )
    })
    .await
    .unwrap();
    assert_eq!(answers, (true, false));
}
