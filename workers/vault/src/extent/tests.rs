//! Tests of extent maps: building, resolving, serializing, storing and consolidating.

use super::*;
use crate::chunk::{ChangedRanges, ChunkGrid, is_all_zero};
use crate::crypto::VaultKey;
use crate::store::{BlobStore, CreateOutcome};
use rand::{Rng, RngExt, SeedableRng, rngs::StdRng};
use std::collections::HashMap;

fn id(n: u8) -> ChunkId {
    ChunkId::from_bytes([n; 32])
}

fn chunk(offset: u64, length: u64, n: u8, offset_in_chunk: u32) -> Extent {
    Extent {
        offset,
        length,
        target: ExtentTarget::Chunk {
            id: id(n),
            offset_in_chunk,
        },
    }
}

/// A full map of version `version` with nothing written: all holes.
fn empty_full(version: &str, size: u64) -> ExtentMap {
    ExtentMapBuilder::full(version, size).unwrap().finish()
}

/// An incremental map of `version` over `base` that changes nothing.
fn unchanged(version: &str, base: &str, size: u64) -> ExtentMap {
    ExtentMapBuilder::incremental(version, base, size)
        .unwrap()
        .finish()
}

#[test]
fn child_overrides_parent_and_clips_its_extents() {
    let mut full = ExtentMapBuilder::full("v1", 100).unwrap();
    full.push_chunk(0, 40, id(1), 0).unwrap();
    full.push_chunk(50, 30, id(2), 0).unwrap();
    let full = full.finish();
    let mut incremental = ExtentMapBuilder::incremental("v2", "v1", 100).unwrap();
    incremental.push_chunk(10, 5, id(3), 0).unwrap();
    incremental.push_zero(30, 25).unwrap();
    let incremental = incremental.finish();

    let resolved = ExtentMap::resolve(&[full, incremental]).unwrap();
    assert!(resolved.is_full());
    assert_eq!(resolved.version(), "v2");
    assert_eq!(
        resolved.extents(),
        &[
            chunk(0, 10, 1, 0),
            chunk(10, 5, 3, 0),
            chunk(15, 15, 1, 15),
            chunk(55, 25, 2, 5),
        ]
    );
    assert_eq!(
        resolved.pieces(5..60),
        vec![
            chunk(5, 5, 1, 5),
            chunk(10, 5, 3, 0),
            chunk(15, 15, 1, 15),
            Extent {
                offset: 30,
                length: 25,
                target: ExtentTarget::Zero
            },
            chunk(55, 5, 2, 5),
        ]
    );
}

#[test]
fn builders_refuse_disorder_and_full_maps_skip_zeros() {
    let mut full = ExtentMapBuilder::full("v1", 100).unwrap();
    full.push_zero(0, 10).unwrap();
    full.push_chunk(10, 10, id(1), 0).unwrap();
    assert!(matches!(
        full.push_chunk(15, 10, id(2), 0),
        Err(ExtentError::OutOfOrder { .. })
    ));
    assert!(
        full.push_chunk(95, 10, id(2), 0).is_err(),
        "past the volume end"
    );
    assert!(full.push_chunk(30, 0, id(2), 0).is_err(), "empty");
    assert!(matches!(
        full.push_chunk(30, 10, id(2), MAX_CHUNK_LEN as u32),
        Err(ExtentError::BeyondChunk { .. })
    ));
    assert_eq!(full.finish().extents().len(), 1);
    assert!(ExtentMapBuilder::full("a/b", 1).is_err());

    let mut incremental = ExtentMapBuilder::incremental("v2", "v1", 100).unwrap();
    incremental.push_zero(0, 10).unwrap();
    incremental.push_zero(10, 10).unwrap();
    let incremental = incremental.finish();
    assert_eq!(incremental.extents().len(), 1, "adjacent zeros merge");
    assert_eq!(incremental.data_bytes(), 0);
}

#[test]
fn broken_chains_are_refused_with_the_reason() {
    let full = empty_full("v1", 10);
    let orphan = unchanged("v3", "v2", 10);
    let error = ExtentMap::resolve(&[full.clone(), orphan.clone()]).unwrap_err();
    assert!(
        error.to_string().contains("names v2 as its parent"),
        "{error}"
    );
    assert!(ExtentMap::resolve(&[]).is_err());
    assert!(
        ExtentMap::resolve(&[orphan])
            .unwrap_err()
            .to_string()
            .contains("incremental")
    );
}

#[test]
fn serialization_round_trips_and_detects_damage() {
    let mut builder = ExtentMapBuilder::incremental("v2", "v1", 1 << 40).unwrap();
    builder.push_chunk(4096, 4096, id(9), 0).unwrap();
    builder.push_zero(1 << 30, 1 << 20).unwrap();
    builder
        .push_chunk((1 << 30) + (1 << 20), 100, id(8), 12)
        .unwrap();
    let map = builder.finish();
    let bytes = map.to_bytes();
    assert_eq!(ExtentMap::from_bytes(&bytes, "test").unwrap(), map);
    for position in [0, 9, 20, bytes.len() / 2, bytes.len() - 1] {
        let mut damaged = bytes.clone();
        damaged[position] ^= 0x10;
        let error = ExtentMap::from_bytes(&damaged, "volumes/v/v2.map").unwrap_err();
        assert!(error.to_string().contains("volumes/v/v2.map"), "{error}");
    }
    assert!(ExtentMap::from_bytes(&bytes[..bytes.len() - 40], "x").is_err());
}

#[tokio::test]
async fn maps_are_saved_create_only_and_chains_load_in_order() {
    let store = BlobStore::in_memory().with_key(&VaultKey::generate().unwrap());
    let full = empty_full("v1", 10);
    let mut second = ExtentMapBuilder::incremental("v2", "v1", 10).unwrap();
    second.push_chunk(0, 5, id(1), 0).unwrap();
    let second = second.finish();
    let third = unchanged("v3", "v2", 10);
    for map in [&full, &second, &third] {
        assert!(matches!(
            map.save(&store, "vol").await.unwrap(),
            CreateOutcome::Created(_)
        ));
    }
    assert_eq!(
        full.save(&store, "vol").await.unwrap(),
        CreateOutcome::AlreadyExists
    );
    let chain = load_chain(&store, "vol", "v3").await.unwrap();
    let versions: Vec<_> = chain.iter().map(ExtentMap::version).collect();
    assert_eq!(versions, ["v1", "v2", "v3"]);
    let missing = load_chain(&store, "vol", "v9").await.unwrap_err();
    assert!(
        missing.to_string().contains("volumes/vol/v9.map"),
        "{missing}"
    );
}

/// A model of the vault for the property test: chunk plaintexts by id.
struct Model {
    keys: crate::crypto::ChunkKeys,
    chunks: HashMap<ChunkId, Vec<u8>>,
    stored_bytes: u64,
}

impl Model {
    /// Builds the map of one version from the volume's bytes and its changed ranges,
    /// the way vault-transfer does: grid pieces, zero pieces not stored.
    fn write_version(
        &mut self,
        volume: &[u8],
        changed: &ChangedRanges,
        version: &str,
        parent: Option<&str>,
        grid: ChunkGrid,
    ) -> ExtentMap {
        let size = volume.len() as u64;
        let mut builder = match parent {
            None => ExtentMapBuilder::full(version, size).unwrap(),
            Some(parent) => ExtentMapBuilder::incremental(version, parent, size).unwrap(),
        };
        for piece in grid.pieces(changed) {
            let data = &volume[piece.start as usize..piece.end as usize];
            if is_all_zero(data) {
                builder
                    .push_zero(piece.start, piece.end - piece.start)
                    .unwrap();
            } else {
                let id = self.keys.chunk_id(data);
                if !self.chunks.contains_key(&id) {
                    self.stored_bytes += data.len() as u64;
                    self.chunks.insert(id, data.to_vec());
                }
                builder
                    .push_chunk(piece.start, piece.end - piece.start, id, 0)
                    .unwrap();
            }
        }
        builder.finish()
    }

    fn read(&self, map: &ExtentMap) -> Vec<u8> {
        let mut out = Vec::with_capacity(map.volume_size() as usize);
        for piece in map.pieces(0..map.volume_size()) {
            match piece.target {
                ExtentTarget::Zero => out.resize(out.len() + piece.length as usize, 0),
                ExtentTarget::Chunk {
                    id,
                    offset_in_chunk,
                } => {
                    let start = offset_in_chunk as usize;
                    out.extend_from_slice(&self.chunks[&id][start..start + piece.length as usize]);
                }
            }
        }
        out
    }
}

/// Random writes: data, zeros, or a repeated block; returns the changed ranges.
fn scribble(volume: &mut [u8], rng: &mut StdRng, writes: usize, max_len: u64) -> ChangedRanges {
    let size = volume.len() as u64;
    let mut changed = Vec::new();
    for _ in 0..writes {
        let start = rng.random_range(0..size);
        let end = (start + rng.random_range(1..=max_len)).min(size);
        let slice = &mut volume[start as usize..end as usize];
        match rng.random_range(0..4) {
            0 => slice.fill(0),
            1 => slice.fill(0xAB),
            _ => rng.fill_bytes(slice),
        }
        changed.push(start..end);
    }
    ChangedRanges::from_unsorted(changed)
}

#[test]
fn chains_resolve_to_the_volume_bytes_and_consolidation_preserves_them() {
    let grid = ChunkGrid::new(4096).unwrap();
    for seed in 0..12u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let size = rng.random_range(32_000..200_000u64);
        let mut volume = vec![0u8; size as usize];
        let mut model = Model {
            keys: VaultKey::generate().unwrap().chunk_keys(),
            chunks: HashMap::new(),
            stored_bytes: 0,
        };
        let policy = ConsolidationPolicy::new(rng.random_range(1..5));

        // Version 0: a full map of whatever is written.
        let changed = scribble(&mut volume, &mut rng, 30, 20_000);
        let full = model.write_version(&volume, &changed, "v0", None, grid);
        assert!(
            full.extents()
                .iter()
                .all(|e| e.target != ExtentTarget::Zero)
        );
        assert_eq!(model.read(&full), volume, "seed {seed}: full version");

        // Unconsolidated chain, and the chain as the policy would store it.
        let mut raw_chain = vec![full.clone()];
        let mut stored_chain = vec![full];
        for n in 1..10 {
            let version = format!("v{n}");
            let parent = format!("v{}", n - 1);
            let writes = rng.random_range(0..12);
            let changed = scribble(&mut volume, &mut rng, writes, 9000);
            let map = model.write_version(&volume, &changed, &version, Some(&parent), grid);
            assert!(map.data_bytes() <= changed.total_len());
            let bytes = map.to_bytes();
            assert_eq!(ExtentMap::from_bytes(&bytes, "m").unwrap(), map);

            raw_chain.push(map.clone());
            let resolved = ExtentMap::resolve(&raw_chain).unwrap();
            assert_eq!(model.read(&resolved), volume, "seed {seed}: {version}");
            for pair in resolved.extents().windows(2) {
                assert!(pair[0].end() <= pair[1].offset, "sorted and disjoint");
            }

            let to_store = policy.apply(&stored_chain, map).unwrap();
            if to_store.is_full() {
                stored_chain = vec![to_store];
            } else {
                stored_chain.push(to_store);
            }
            assert!(stored_chain.len() <= policy.max_chain_depth());
            let consolidated = ExtentMap::resolve(&stored_chain).unwrap();
            assert_eq!(
                consolidated, resolved,
                "seed {seed}: {version} consolidated"
            );
        }
    }
}

#[test]
fn scattered_small_writes_store_about_the_changed_bytes() {
    // 8 MiB volume, fully written, then 1% changed in scattered 4 KiB writes.
    let grid = ChunkGrid::default();
    let mut rng = StdRng::seed_from_u64(99);
    let mut volume = vec![0u8; 8 << 20];
    rng.fill_bytes(&mut volume);
    let mut model = Model {
        keys: VaultKey::generate().unwrap().chunk_keys(),
        chunks: HashMap::new(),
        stored_bytes: 0,
    };
    let everything = ChangedRanges::from_unsorted(std::iter::once(0..volume.len() as u64));
    let full = model.write_version(&volume, &everything, "v0", None, grid);
    let before = model.stored_bytes;

    let blocks = volume.len() / 4096;
    let mut changed = Vec::new();
    for _ in 0..blocks / 100 {
        let block = rng.random_range(0..blocks);
        let start = block * 4096;
        rng.fill_bytes(&mut volume[start..start + 4096]);
        changed.push(start as u64..start as u64 + 4096);
    }
    let changed = ChangedRanges::from_unsorted(changed);
    let incremental = model.write_version(&volume, &changed, "v1", Some("v0"), grid);
    let added = model.stored_bytes - before;
    assert_eq!(added, changed.total_len(), "exactly the changed bytes");
    assert_eq!(
        model.read(&ExtentMap::resolve(&[full, incremental]).unwrap()),
        volume
    );
}

#[test]
fn consolidation_policy_boundaries() {
    let full = empty_full("v0", 10);
    let next = unchanged("v1", "v0", 10);
    assert!(
        !ConsolidationPolicy::new(2)
            .apply(std::slice::from_ref(&full), next.clone())
            .unwrap()
            .is_full()
    );
    assert!(
        ConsolidationPolicy::new(1)
            .apply(std::slice::from_ref(&full), next.clone())
            .unwrap()
            .is_full()
    );
    assert_eq!(ConsolidationPolicy::new(0).max_chain_depth(), 1);
    assert_eq!(ConsolidationPolicy::default().max_chain_depth(), 8);
    let consolidated = ConsolidationPolicy::new(1).apply(&[full], next).unwrap();
    assert_eq!(consolidated.version(), "v1");
}

#[test]
fn shrinking_and_growing_volumes_resolve() {
    let mut full = ExtentMapBuilder::full("v0", 100).unwrap();
    full.push_chunk(80, 20, id(1), 0).unwrap();
    let full = full.finish();
    let shrunk = unchanged("v1", "v0", 90);
    let resolved = ExtentMap::resolve(&[full.clone(), shrunk]).unwrap();
    assert_eq!(resolved.extents(), &[chunk(80, 10, 1, 0)]);
    let grown = unchanged("v1", "v0", 200);
    let resolved = ExtentMap::resolve(&[full, grown]).unwrap();
    assert_eq!(resolved.volume_size(), 200);
    assert_eq!(resolved.pieces(190..300).len(), 1);
}
