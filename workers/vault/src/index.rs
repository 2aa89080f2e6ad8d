//! The chunk index: which chunks a vault holds, and where (pack, offset, length).
//!
//! Extent maps name chunks by id only, so packs can later be repacked without rewriting maps;
//! the index is what turns an id into a place. It is stored as **segments**: each job that packs
//! chunks writes one create-only object `index/<segment-id>.idx` listing the chunks of its packs,
//! after the packs and before the extent maps that use them. Readers list the segments and load
//! them: a vault-transfer loads all of them once per job (deduplication across volumes and
//! versions), a hydration keeps only the entries of the chunks it restores.
//!
//! Memory is about 60 bytes per distinct chunk (an id, a pack number, an offset, a length):
//! 60 MiB per TiB of unique data at the default 1 MiB grid. Past that, the next step is a
//! sorted, merged segment read by range (noted in ARCHITECTURE.md), not a bigger map.
//!
//! # Segment format (version 1)
//!
//! ```text
//! "STWIDX01"                                     magic (8)
//! pack count u32, then each pack id (64 ASCII hex digits)
//! entry count u64, then per entry: chunk id (32) | pack number u32 | offset u64 | length u32
//! BLAKE3 of everything above                     32
//! ```

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use futures::StreamExt as _;

use crate::chunk::ChunkId;
use crate::error::{Error, ErrorKind};
use crate::layout::{self, BlobKey};
use crate::pack::{ChunkLocation, PackId};
use crate::store::{BlobStore, CreateOutcome};

const SEGMENT_MAGIC: &[u8; 8] = b"STWIDX01";
const ENTRY_LEN: usize = 32 + 4 + 8 + 4;

/// A segment that cannot be decoded.
fn corrupt_segment(key: &BlobKey, reason: &str) -> Error {
    Error::new(
        ErrorKind::Damaged,
        format!(
            "chunk-index segment {key} is corrupt: {reason}; rebuild it from the trailers of the \
             packs it lists"
        ),
    )
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    pack: u32,
    offset: u64,
    length: u32,
}

/// Chunk id → location, for the chunks of a vault (or the subset a job needs).
#[derive(Debug, Default, Clone)]
pub struct ChunkIndex {
    packs: Vec<PackId>,
    pack_numbers: HashMap<PackId, u32>,
    slots: HashMap<ChunkId, Slot>,
}

impl ChunkIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every segment in `store`, for deduplication: chunks of packs the garbage collector has
    /// condemned or is deleting are left out (see [`crate::gc`]), so a new transfer never comes
    /// to depend on them.
    pub async fn load(store: &BlobStore) -> Result<Self, Error> {
        let state = gc_state(store).await?;
        Self::load_where(store, |_| true, |pack| state.pack_usable(pack)).await
    }

    /// Only the entries of `wanted` chunks, so memory follows what a job needs, not the vault.
    /// For reading: chunks of condemned packs are included (a job that deduplicated against one
    /// before it was condemned needs it), those of deleted packs are not.
    pub async fn load_only(store: &BlobStore, wanted: &HashSet<ChunkId>) -> Result<Self, Error> {
        let state = gc_state(store).await?;
        Self::load_where(
            store,
            |id| wanted.contains(id),
            |pack| !state.deleted_packs.contains(pack.as_str()),
        )
        .await
    }

    async fn load_where(
        store: &BlobStore,
        keep: impl Fn(&ChunkId) -> bool,
        pack_ok: impl Fn(&PackId) -> bool,
    ) -> Result<Self, Error> {
        let mut index = Self::new();
        let mut listing = store.list(&layout::index_segments());
        while let Some(info) = listing.next().await {
            let info = info?;
            if !info.key.as_str().ends_with(layout::INDEX_EXTENSION) {
                continue;
            }
            let bytes = store.get(&info.key).await?.bytes;
            for (id, location) in decode_segment(&bytes, &info.key)? {
                if keep(&id) && pack_ok(&location.pack) {
                    index.insert(id, location);
                }
            }
        }
        Ok(index)
    }

    /// Where `id` is stored, if the index knows it.
    pub fn get(&self, id: &ChunkId) -> Option<ChunkLocation> {
        self.slots.get(id).map(|slot| ChunkLocation {
            pack: self.packs[slot.pack as usize].clone(),
            offset: slot.offset,
            length: slot.length,
        })
    }

    /// Whether the index knows `id`.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.slots.contains_key(id)
    }

    /// Record where `id` is. The first location recorded for an id wins.
    pub fn insert(&mut self, id: ChunkId, location: ChunkLocation) {
        if self.slots.contains_key(&id) {
            return;
        }
        let pack = match self.pack_numbers.get(&location.pack) {
            Some(n) => *n,
            None => {
                let n = u32::try_from(self.packs.len()).expect("fewer than 4G packs");
                self.packs.push(location.pack.clone());
                self.pack_numbers.insert(location.pack, n);
                n
            }
        };
        self.slots.insert(
            id,
            Slot {
                pack,
                offset: location.offset,
                length: location.length,
            },
        );
    }

    /// Number of chunks known.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True if no chunk is known.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// The collector's record; a damaged one is reported as a damaged index (nothing can be
/// loaded safely without knowing which packs are being deleted).
async fn gc_state(store: &BlobStore) -> Result<crate::gc::GcState, Error> {
    match crate::gc::read_state(store).await {
        Ok((state, _)) => Ok(state),
        Err(e) if e.kind() == ErrorKind::Damaged => {
            Err(corrupt_segment(&layout::gc_state(), &e.to_string()))
        }
        Err(e) => Err(e),
    }
}

/// Encode a segment. Entries are sorted by chunk id; duplicates keep the first.
pub fn encode_segment(entries: &[(ChunkId, ChunkLocation)]) -> Vec<u8> {
    let mut sorted: Vec<&(ChunkId, ChunkLocation)> = entries.iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    sorted.dedup_by(|a, b| a.0 == b.0);
    let mut packs: Vec<&PackId> = sorted.iter().map(|(_, l)| &l.pack).collect();
    packs.sort();
    packs.dedup();
    let number = |p: &PackId| packs.binary_search(&p).expect("collected above") as u32;

    let mut out = Vec::with_capacity(8 + 4 + packs.len() * 64 + 8 + sorted.len() * ENTRY_LEN + 32);
    out.extend_from_slice(SEGMENT_MAGIC);
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for p in &packs {
        out.extend_from_slice(p.as_str().as_bytes());
    }
    out.extend_from_slice(&(sorted.len() as u64).to_le_bytes());
    for (id, l) in &sorted {
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&number(&l.pack).to_le_bytes());
        out.extend_from_slice(&l.offset.to_le_bytes());
        out.extend_from_slice(&l.length.to_le_bytes());
    }
    let checksum = blake3::hash(&out);
    out.extend_from_slice(checksum.as_bytes());
    out
}

/// Decode a segment read from `key`.
pub fn decode_segment(bytes: &[u8], key: &BlobKey) -> Result<Vec<(ChunkId, ChunkLocation)>, Error> {
    let corrupt = |reason: &str| corrupt_segment(key, reason);
    if bytes.len() < 8 + 4 + 8 + 32 || &bytes[..8] != SEGMENT_MAGIC {
        return Err(corrupt(
            "it does not start with the segment magic, or is truncated",
        ));
    }
    let (body, checksum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != checksum {
        return Err(corrupt("its checksum does not match its content"));
    }
    let mut at = 8;
    let mut take = |n: usize| -> Result<&[u8], Error> {
        let slice = body
            .get(at..at + n)
            .ok_or_else(|| corrupt("it ends early"))?;
        at += n;
        Ok(slice)
    };
    let pack_count = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
    let mut packs = Vec::with_capacity(pack_count.min(1 << 20));
    for _ in 0..pack_count {
        let text = std::str::from_utf8(take(64)?).map_err(|_| corrupt("a pack id is not text"))?;
        packs.push(PackId::parse(text).ok_or_else(|| corrupt("a pack id is not 64 hex digits"))?);
    }
    let count = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes")) as usize;
    let mut entries = Vec::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let e = take(ENTRY_LEN)?;
        let id = ChunkId::from_bytes(e[..32].try_into().expect("32 bytes"));
        let pack = u32::from_le_bytes(e[32..36].try_into().expect("4 bytes")) as usize;
        let offset = u64::from_le_bytes(e[36..44].try_into().expect("8 bytes"));
        let length = u32::from_le_bytes(e[44..48].try_into().expect("4 bytes"));
        let pack = packs
            .get(pack)
            .ok_or_else(|| corrupt("an entry names a pack the segment does not list"))?
            .clone();
        entries.push((
            id,
            ChunkLocation {
                pack,
                offset,
                length,
            },
        ));
    }
    if at != body.len() {
        return Err(corrupt("it has bytes after its last entry"));
    }
    Ok(entries)
}

/// Write a segment create-only. An existing segment with the same id is left as it is (a
/// redelivered job that got this far before).
pub async fn write_segment(
    store: &BlobStore,
    segment_id: &str,
    entries: &[(ChunkId, ChunkLocation)],
) -> Result<CreateOutcome, Error> {
    let key = layout::index_segment(segment_id)?;
    store
        .put_create_only(&key, Bytes::from(encode_segment(entries)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(pack: u64, offset: u64) -> ChunkLocation {
        ChunkLocation {
            pack: PackId::for_job("job", pack),
            offset,
            length: 100 + offset as u32,
        }
    }

    #[tokio::test]
    async fn segments_round_trip_and_load_into_an_index() {
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

        let index = ChunkIndex::load(&store).await.unwrap();
        assert_eq!(index.len(), 3);
        assert_eq!(index.get(&b), Some(loc(0, 8)));
        assert_eq!(index.get(&c), Some(loc(0, 99)));
        assert!(index.get(&a).is_some());

        let only: HashSet<ChunkId> = [c].into();
        let partial = ChunkIndex::load_only(&store, &only).await.unwrap();
        assert_eq!(partial.len(), 1);
        assert!(partial.contains(&c) && !partial.contains(&a));
    }

    #[test]
    fn damage_is_detected() {
        let key = layout::index_segment("s").unwrap();
        let mut bytes = encode_segment(&[(ChunkId::from_bytes([7; 32]), loc(3, 1))]);
        assert_eq!(decode_segment(&bytes, &key).unwrap().len(), 1);
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        let err = decode_segment(&bytes, &key).unwrap_err().to_string();
        assert!(
            err.contains("index/s.idx") && err.contains("checksum"),
            "{err}"
        );
        assert!(decode_segment(b"nonsense", &key).is_err());
    }
}
