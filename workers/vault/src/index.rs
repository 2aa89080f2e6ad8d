//! The chunk index: which chunks a vault holds, and where (pack, offset, length).
//!
//! Extent maps name chunks by id only, so packs can later be repacked without rewriting maps;
//! the index is what turns an id into a place. It is stored as immutable, sorted **segments**
//! (`index/<segment-id>.idx`): each job that packs chunks writes one, create-only, after its
//! packs and before the extent maps that use them; the garbage collector merges small ones into
//! larger ones ([`compact`]) and rewrites those naming deleted packs ([`drop_packs`]).
//!
//! Nothing loads the index whole. A job *opens* it ([`SegmentIndex::open`]: two range reads per
//! segment, keeping each segment's filter and fences, about 2.2 bytes a distinct chunk) and then
//! *consults* it: a vault-transfer asks per chunk ([`DedupIndex`]), hydration, geo-replication,
//! verify and drills ask for the chunks they need ([`ChunkIndex::load_only`]). See
//! ARCHITECTURE.md, "The chunk index at scale".
//!
//! # Segment format 2
//!
//! ```text
//! "STWIDX02"                                       magic (8)
//! block 0, …, block n-1: up to 256 entries sorted by chunk id, each
//!     chunk id (32) | pack id (32 raw bytes) | offset u64 | length u32      (76)
//!   followed by the BLAKE3 of the block's entries (32)
//! footer: entry count u64 | block count u32 | per block: first chunk id (32), entry count u32
//!       | bloom probes u32 | bloom words u32 | words (u64 each)
//!       | superseded count u32 | per superseded segment id: length u16, UTF-8
//!       | BLAKE3 of the footer above (32)
//! trailer: footer offset u64 | footer length u64 | "STWIDX02"                 (24)
//! ```
//! Integers are little-endian. Blocks start right after the magic and follow each other, so a
//! block's offset is the sum of the sizes of those before it.
//!
//! # Segment format 1 (read only)
//!
//! ```text
//! "STWIDX01"                                     magic (8)
//! pack count u32, then each pack id (64 ASCII hex digits)
//! entry count u64, then per entry: chunk id (32) | pack number u32 | offset u64 | length u32
//! BLAKE3 of everything above                     32
//! ```
//! Written by earlier releases, one per job; read whole when opened, and converted to format 2
//! by the first compaction.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use jiff::{SignedDuration, Timestamp};

use crate::chunk::ChunkId;
use crate::error::{Error, ErrorKind};
use crate::gc::GcState;
use crate::hex;
use crate::layout::{self, BlobKey};
use crate::lease::{Acquired, Lease};
use crate::pack::{ChunkLocation, PackId};
use crate::store::{BlobStore, CreateOutcome, ObjectInfo};

const SEGMENT_MAGIC_V1: &[u8; 8] = b"STWIDX01";
/// Magic of a format-2 segment (first and last 8 bytes).
pub const SEGMENT_MAGIC: &[u8; 8] = b"STWIDX02";
const V1_ENTRY_LEN: usize = 32 + 4 + 8 + 4;
/// Bytes of one format-2 entry.
pub const ENTRY_LEN: usize = 32 + 32 + 8 + 4;
/// Entries per format-2 block.
pub const BLOCK_ENTRIES: usize = 256;
const TRAILER_LEN: u64 = 24;
const BLOOM_BITS_PER_ENTRY: u64 = 16;
const BLOOM_PROBES: u32 = 11;
/// Blocks a reader keeps after reading them (about 20 KiB each).
const BLOCK_CACHE: usize = 64;
/// Below this many entries a segment is in tier 0; each tier above holds 4× more.
const TIER0_ENTRIES: u64 = 16 * 1024;
/// A tier with this many segments is merged into one.
const MERGE_FAN_IN: usize = 4;
/// Merged output is handed to the store in pieces of about this size.
const MERGE_PIECE: usize = 1 << 20;
/// How long the index-maintenance lease lasts without renewal.
const MAINTENANCE_TTL: Duration = Duration::from_secs(60);

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

/// A segment (or a block of one) deleted while a job was using it.
fn vanished(key: &BlobKey) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!(
            "chunk-index segment {key} was deleted while this job read it (compacted or \
             rewritten more than the collector's grace period after the job opened the index); \
             the job is retried with a fresh listing"
        ),
    )
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    pack: u32,
    offset: u64,
    length: u32,
}

/// Chunk id → location in memory, for the subset of a vault's chunks a job needs.
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

    /// Only the entries of `wanted` chunks, so memory follows what a job needs, not the vault:
    /// the wanted ids are sorted, each segment's filter and fences pick the blocks that may hold
    /// them, and each such block is read once. For reading: chunks of condemned packs are
    /// included (a job that deduplicated against one before it was condemned needs it), those
    /// of deleted packs are not.
    pub async fn load_only(store: &BlobStore, wanted: &HashSet<ChunkId>) -> Result<Self, Error> {
        let state = gc_state(store).await?;
        let segments = SegmentIndex::open(store).await?;
        let mut sorted: Vec<ChunkId> = wanted.iter().copied().collect();
        sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut index = Self::new();
        let pack_ok = |pack: &PackId| !state.deleted_packs.contains(pack.as_str());
        for segment in &segments.segments {
            match &segment.body {
                Body::V1 { entries } => {
                    for (id, location) in entries.iter() {
                        if wanted.contains(id) && pack_ok(&location.pack) {
                            index.insert(*id, location.clone());
                        }
                    }
                }
                Body::V2(footer) => {
                    let mut blocks: Vec<(usize, ChunkId)> = sorted
                        .iter()
                        .filter(|id| !index.contains(id) && footer.bloom.may_contain(id))
                        .filter_map(|id| footer.block_of(id).map(|b| (b, *id)))
                        .collect();
                    blocks.sort_by_key(|(b, _)| *b);
                    let mut at = 0;
                    while at < blocks.len() {
                        let block = blocks[at].0;
                        let entries = segments.block(segment, block).await?;
                        while at < blocks.len() && blocks[at].0 == block {
                            if let Some(location) = find(&entries, &blocks[at].1)
                                && pack_ok(&location.pack)
                            {
                                index.insert(blocks[at].1, location.clone());
                            }
                            at += 1;
                        }
                    }
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

/// The index a vault-transfer deduplicates against: the vault's segments, consulted per chunk,
/// plus the chunks of packs this job itself uploaded (an interrupted attempt's, in memory).
/// Chunks of packs the garbage collector has condemned or is deleting are left out (see
/// [`crate::gc`]), so a new transfer never comes to depend on them.
pub struct DedupIndex {
    segments: SegmentIndex,
    state: GcState,
    own: ChunkIndex,
}

impl DedupIndex {
    /// Open the vault's segments (their filters and fences, not their entries).
    pub async fn open(store: &BlobStore) -> Result<Self, Error> {
        let state = gc_state(store).await?;
        Ok(Self {
            segments: SegmentIndex::open(store).await?,
            state,
            own: ChunkIndex::new(),
        })
    }

    /// Record a chunk this job stored (it wins over the segments).
    pub fn insert(&mut self, id: ChunkId, location: ChunkLocation) {
        self.own.insert(id, location);
    }

    /// Where `id` is stored, in a pack a new job may rely on.
    pub async fn get(&self, id: &ChunkId) -> Result<Option<ChunkLocation>, Error> {
        if let Some(found) = self.own.get(id) {
            return Ok(Some(found));
        }
        self.segments
            .locate(id, |pack| self.state.pack_usable(pack))
            .await
    }

    /// Whether the vault holds `id` in a pack a new job may rely on.
    pub async fn contains(&self, id: &ChunkId) -> Result<bool, Error> {
        Ok(self.get(id).await?.is_some())
    }

    /// [`Self::contains`] from a blocking thread (`spawn_blocking`) of a Tokio runtime, such as
    /// the hashing threads of a transfer. Panics on an async thread, as `block_on` does.
    pub fn contains_blocking(&self, id: &ChunkId) -> Result<bool, Error> {
        if self.own.contains(id) {
            return Ok(true);
        }
        tokio::runtime::Handle::current().block_on(self.contains(id))
    }

    /// Entries of the live segments in packs a new job may rely on (a chunk in two segments
    /// counts twice), read block by block: for tests and reports, not for transfers.
    pub async fn count(&self) -> Result<u64, Error> {
        let mut count = 0;
        for segment in self.segments.segments() {
            let mut cursor = self.segments.cursor(segment);
            while let Some((_, location)) = cursor.next().await? {
                if self.state.pack_usable(&location.pack) {
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    /// The open segments.
    pub fn segments(&self) -> &SegmentIndex {
        &self.segments
    }
}

/// The collector's record; a damaged one is reported as a damaged index (nothing can be
/// consulted safely without knowing which packs are being deleted).
async fn gc_state(store: &BlobStore) -> Result<GcState, Error> {
    match crate::gc::read_state(store).await {
        Ok((state, _)) => Ok(state),
        Err(e) if e.kind() == ErrorKind::Damaged => {
            Err(corrupt_segment(&layout::gc_state(), &e.to_string()))
        }
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------------
// Bloom filter

/// A bloom filter over chunk ids. Ids are keyed BLAKE3, uniform, so the probes come from the
/// id's own bits (double hashing over its first 16 bytes).
#[derive(Debug, Clone)]
struct Bloom {
    words: Vec<u64>,
    probes: u32,
}

impl Bloom {
    fn with_capacity(entries: u64) -> Self {
        let words = (entries.max(1) * BLOOM_BITS_PER_ENTRY).div_ceil(64);
        Self {
            words: vec![0; words as usize],
            probes: BLOOM_PROBES,
        }
    }

    fn insert(&mut self, id: &ChunkId) {
        for bit in positions(id, self.words.len() as u64 * 64, self.probes) {
            self.words[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    #[cfg(test)]
    fn may_contain(&self, id: &ChunkId) -> bool {
        positions(id, self.words.len() as u64 * 64, self.probes)
            .all(|bit| self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }
}

/// The bit positions of `id` in a filter of `bits` bits.
fn positions(id: &ChunkId, bits: u64, probes: u32) -> impl Iterator<Item = u64> + use<> {
    let bytes = id.as_bytes();
    let h1 = u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes"));
    let h2 = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) | 1;
    (0..u64::from(probes)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % bits)
}

/// A filter as read from a footer: the stored bytes themselves (little-endian words, so bit
/// `b` is bit `b % 8` of byte `b / 8`), not copied.
#[derive(Debug, Clone)]
struct BloomView {
    bytes: Bytes,
    probes: u32,
}

impl BloomView {
    fn may_contain(&self, id: &ChunkId) -> bool {
        positions(id, self.bytes.len() as u64 * 8, self.probes)
            .all(|bit| self.bytes[(bit / 8) as usize] & (1 << (bit % 8)) != 0)
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Writes a format-2 segment from entries given in ascending chunk-id order, a block at a time:
/// memory is the filter (2 bytes an entry), the fences and one block, whatever the segment size.
pub struct SegmentEncoder {
    bloom: Bloom,
    fences: Vec<([u8; 32], u32)>,
    block: Vec<u8>,
    in_block: u32,
    last: Option<ChunkId>,
    count: u64,
    written: u64,
    supersedes: Vec<String>,
}

impl SegmentEncoder {
    /// An encoder for at most `capacity` entries (sizes the filter; more still decode, with
    /// more false positives), superseding the segments `supersedes`. Returns the first bytes.
    pub fn new(capacity: u64, supersedes: Vec<String>) -> (Self, Vec<u8>) {
        let encoder = Self {
            bloom: Bloom::with_capacity(capacity),
            fences: Vec::new(),
            block: Vec::with_capacity(BLOCK_ENTRIES * ENTRY_LEN + 32),
            in_block: 0,
            last: None,
            count: 0,
            written: SEGMENT_MAGIC.len() as u64,
            supersedes,
        };
        (encoder, SEGMENT_MAGIC.to_vec())
    }

    /// Add an entry; ids must come in ascending order (a repeated id is skipped: the first
    /// location wins). Returns the bytes of a block this completed.
    pub fn push(&mut self, id: &ChunkId, location: &ChunkLocation) -> Option<Vec<u8>> {
        if let Some(last) = &self.last {
            match last.as_bytes().cmp(id.as_bytes()) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => return None,
                std::cmp::Ordering::Greater => {
                    panic!("segment entries out of order: {id} after {last}")
                }
            }
        }
        self.last = Some(*id);
        if self.in_block == 0 {
            self.fences.push((*id.as_bytes(), 0));
        }
        self.bloom.insert(id);
        self.block.extend_from_slice(id.as_bytes());
        let pack = hex::decode(location.pack.as_str()).expect("a pack id is 64 hex digits");
        self.block.extend_from_slice(&pack);
        self.block.extend_from_slice(&location.offset.to_le_bytes());
        self.block.extend_from_slice(&location.length.to_le_bytes());
        self.in_block += 1;
        self.count += 1;
        (self.in_block as usize == BLOCK_ENTRIES).then(|| self.seal_block())
    }

    fn seal_block(&mut self) -> Vec<u8> {
        let checksum = blake3::hash(&self.block);
        let mut out = std::mem::replace(
            &mut self.block,
            Vec::with_capacity(BLOCK_ENTRIES * ENTRY_LEN + 32),
        );
        out.extend_from_slice(checksum.as_bytes());
        self.fences.last_mut().expect("a block has a fence").1 = self.in_block;
        self.in_block = 0;
        self.written += out.len() as u64;
        out
    }

    /// The last block, the footer and the trailer.
    pub fn finish(mut self) -> Vec<u8> {
        let mut out = if self.in_block > 0 {
            self.seal_block()
        } else {
            Vec::new()
        };
        let footer_at = self.written; // seal_block counted the last block
        let mut footer = Vec::with_capacity(
            16 + self.fences.len() * 36 + self.bloom.words.len() * 8 + self.supersedes.len() * 40,
        );
        footer.extend_from_slice(&self.count.to_le_bytes());
        footer.extend_from_slice(&(self.fences.len() as u32).to_le_bytes());
        for (first, count) in &self.fences {
            footer.extend_from_slice(first);
            footer.extend_from_slice(&count.to_le_bytes());
        }
        footer.extend_from_slice(&self.bloom.probes.to_le_bytes());
        footer.extend_from_slice(&(self.bloom.words.len() as u32).to_le_bytes());
        for word in &self.bloom.words {
            footer.extend_from_slice(&word.to_le_bytes());
        }
        footer.extend_from_slice(&(self.supersedes.len() as u32).to_le_bytes());
        for id in &self.supersedes {
            footer.extend_from_slice(&(id.len() as u16).to_le_bytes());
            footer.extend_from_slice(id.as_bytes());
        }
        let checksum = blake3::hash(&footer);
        footer.extend_from_slice(checksum.as_bytes());
        out.extend_from_slice(&footer);
        out.extend_from_slice(&footer_at.to_le_bytes());
        out.extend_from_slice(&(footer.len() as u64).to_le_bytes());
        out.extend_from_slice(SEGMENT_MAGIC);
        out
    }
}

/// Encode a (format-2) segment of `entries` in one buffer. Entries are sorted by chunk id;
/// duplicates keep the first.
pub fn encode_segment(entries: &[(ChunkId, ChunkLocation)]) -> Vec<u8> {
    let mut sorted: Vec<&(ChunkId, ChunkLocation)> = entries.iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let (mut encoder, mut out) = SegmentEncoder::new(sorted.len() as u64, Vec::new());
    for (id, location) in sorted {
        if let Some(block) = encoder.push(id, location) {
            out.extend_from_slice(&block);
        }
    }
    out.extend_from_slice(&encoder.finish());
    out
}

/// Encode a format-1 segment, as releases before format 2 wrote them (for tests of old vaults).
pub fn encode_segment_v1(entries: &[(ChunkId, ChunkLocation)]) -> Vec<u8> {
    let mut sorted: Vec<&(ChunkId, ChunkLocation)> = entries.iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    sorted.dedup_by(|a, b| a.0 == b.0);
    let mut packs: Vec<&PackId> = sorted.iter().map(|(_, l)| &l.pack).collect();
    packs.sort();
    packs.dedup();
    let number = |p: &PackId| packs.binary_search(&p).expect("collected above") as u32;
    let mut out = Vec::new();
    out.extend_from_slice(SEGMENT_MAGIC_V1);
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

// ---------------------------------------------------------------------------------------------
// Decoding

/// The part of a format-2 segment a reader keeps: filter and fences.
#[derive(Debug)]
struct Footer {
    entries: u64,
    firsts: Vec<[u8; 32]>,
    offsets: Vec<u64>,
    counts: Vec<u32>,
    bloom: BloomView,
    supersedes: Vec<String>,
}

impl Footer {
    /// The block that holds `id` if any does: the last whose first id is not above it.
    fn block_of(&self, id: &ChunkId) -> Option<usize> {
        let after = self.firsts.partition_point(|first| first <= id.as_bytes());
        after.checked_sub(1)
    }

    fn block_range(&self, block: usize) -> std::ops::Range<u64> {
        let start = self.offsets[block];
        start..start + u64::from(self.counts[block]) * ENTRY_LEN as u64 + 32
    }

    fn resident_bytes(&self) -> usize {
        self.firsts.len() * (32 + 8 + 4) + self.bloom.bytes.len()
    }
}

fn decode_footer(bytes: &Bytes, key: &BlobKey, footer_at: u64) -> Result<Footer, Error> {
    let corrupt = |reason: &str| corrupt_segment(key, reason);
    if bytes.len() < 32 {
        return Err(corrupt("its footer is truncated"));
    }
    let (body, checksum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != checksum {
        return Err(corrupt("its footer's checksum does not match its content"));
    }
    let mut at = 0;
    let mut take = |n: usize| -> Result<&[u8], Error> {
        let slice = body
            .get(at..at + n)
            .ok_or_else(|| corrupt("its footer ends early"))?;
        at += n;
        Ok(slice)
    };
    let entries = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
    let blocks = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
    let mut firsts = Vec::with_capacity(blocks.min(1 << 24));
    let mut offsets = Vec::with_capacity(blocks.min(1 << 24));
    let mut counts = Vec::with_capacity(blocks.min(1 << 24));
    let mut offset = SEGMENT_MAGIC.len() as u64;
    let mut total = 0u64;
    for _ in 0..blocks {
        firsts.push(take(32)?.try_into().expect("32 bytes"));
        let count = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
        if count == 0 || count as usize > BLOCK_ENTRIES {
            return Err(corrupt("a block has an impossible entry count"));
        }
        offsets.push(offset);
        counts.push(count);
        offset += u64::from(count) * ENTRY_LEN as u64 + 32;
        total += u64::from(count);
    }
    if offset != footer_at || total != entries {
        return Err(corrupt(
            "its blocks do not add up to its footer's place and count",
        ));
    }
    if firsts.windows(2).any(|w| w[0] >= w[1]) {
        return Err(corrupt("its fences are not in ascending order"));
    }
    let probes = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
    let words = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
    if words == 0 || probes == 0 || probes > 64 {
        return Err(corrupt("its filter is malformed"));
    }
    let filter = bytes.slice_ref(take(words * 8)?);
    let superseded = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
    let mut supersedes = Vec::with_capacity(superseded.min(1 << 16));
    for _ in 0..superseded {
        let len = u16::from_le_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
        let text = std::str::from_utf8(take(len)?)
            .map_err(|_| corrupt("a superseded segment id is not text"))?;
        supersedes.push(text.to_owned());
    }
    if at != body.len() {
        return Err(corrupt("its footer has bytes after its last field"));
    }
    Ok(Footer {
        entries,
        firsts,
        offsets,
        counts,
        bloom: BloomView {
            bytes: filter,
            probes,
        },
        supersedes,
    })
}

/// Decode one format-2 block (entries and checksum), checking it.
fn decode_block(
    bytes: &[u8],
    key: &BlobKey,
    count: usize,
) -> Result<Vec<(ChunkId, ChunkLocation)>, Error> {
    let corrupt = |reason: &str| corrupt_segment(key, reason);
    if bytes.len() != count * ENTRY_LEN + 32 {
        return Err(corrupt("a block has the wrong length"));
    }
    let (body, checksum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != checksum {
        return Err(corrupt("a block's checksum does not match its content"));
    }
    let mut entries = Vec::with_capacity(count);
    let mut last: Option<ChunkId> = None;
    for e in body.chunks_exact(ENTRY_LEN) {
        let id = ChunkId::from_bytes(e[..32].try_into().expect("32 bytes"));
        if last.is_some_and(|l| l.as_bytes() >= id.as_bytes()) {
            return Err(corrupt("a block's entries are not in ascending order"));
        }
        last = Some(id);
        let pack = PackId::parse(&hex::encode(&e[32..64])).expect("64 hex digits");
        entries.push((
            id,
            ChunkLocation {
                pack,
                offset: u64::from_le_bytes(e[64..72].try_into().expect("8 bytes")),
                length: u32::from_le_bytes(e[72..76].try_into().expect("4 bytes")),
            },
        ));
    }
    Ok(entries)
}

fn decode_trailer(trailer: &[u8], size: u64) -> Option<(u64, u64)> {
    if trailer.len() != TRAILER_LEN as usize || &trailer[16..24] != SEGMENT_MAGIC {
        return None;
    }
    let at = u64::from_le_bytes(trailer[0..8].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(trailer[8..16].try_into().expect("8 bytes"));
    (at.checked_add(len)? == size.checked_sub(TRAILER_LEN)?).then_some((at, len))
}

/// Decode a whole segment (either format) read from `key`: every entry, in id order.
pub fn decode_segment(bytes: &[u8], key: &BlobKey) -> Result<Vec<(ChunkId, ChunkLocation)>, Error> {
    if bytes.starts_with(SEGMENT_MAGIC) {
        let size = bytes.len() as u64;
        let trailer = &bytes[bytes.len().saturating_sub(TRAILER_LEN as usize)..];
        let (at, len) = decode_trailer(trailer, size)
            .ok_or_else(|| corrupt_segment(key, "its trailer is missing or malformed"))?;
        let footer = decode_footer(
            &Bytes::copy_from_slice(&bytes[at as usize..(at + len) as usize]),
            key,
            at,
        )?;
        let mut entries = Vec::with_capacity(footer.entries.min(1 << 24) as usize);
        for block in 0..footer.counts.len() {
            let range = footer.block_range(block);
            entries.extend(decode_block(
                &bytes[range.start as usize..range.end as usize],
                key,
                footer.counts[block] as usize,
            )?);
        }
        return Ok(entries);
    }
    decode_segment_v1(bytes, key)
}

fn decode_segment_v1(bytes: &[u8], key: &BlobKey) -> Result<Vec<(ChunkId, ChunkLocation)>, Error> {
    let corrupt = |reason: &str| corrupt_segment(key, reason);
    if bytes.len() < 8 + 4 + 8 + 32 || &bytes[..8] != SEGMENT_MAGIC_V1 {
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
        let e = take(V1_ENTRY_LEN)?;
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
    // Format 1 sorted its entries; check rather than trust, lookups binary-search them.
    if entries
        .windows(2)
        .any(|w| w[0].0.as_bytes() >= w[1].0.as_bytes())
    {
        entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        entries.dedup_by(|a, b| a.0 == b.0);
    }
    Ok(entries)
}

fn find<'e>(entries: &'e [(ChunkId, ChunkLocation)], id: &ChunkId) -> Option<&'e ChunkLocation> {
    entries
        .binary_search_by(|(e, _)| e.as_bytes().cmp(id.as_bytes()))
        .ok()
        .map(|i| &entries[i].1)
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

// ---------------------------------------------------------------------------------------------
// Reading: the open index

#[derive(Debug)]
enum Body {
    /// Format 1: every entry, sorted (old vaults, until compaction converts them).
    V1 {
        entries: Arc<Vec<(ChunkId, ChunkLocation)>>,
    },
    /// Format 2: filter and fences; blocks are read by range.
    V2(Footer),
}

/// One open segment.
#[derive(Debug)]
pub struct Segment {
    id: String,
    key: BlobKey,
    modified: Timestamp,
    body: Body,
}

impl Segment {
    /// Its id (`index/<id>.idx`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Entries it holds.
    pub fn entries(&self) -> u64 {
        match &self.body {
            Body::V1 { entries } => entries.len() as u64,
            Body::V2(footer) => footer.entries,
        }
    }

    /// Whether it is in format 1.
    pub fn is_format_1(&self) -> bool {
        matches!(self.body, Body::V1 { .. })
    }

    fn supersedes(&self) -> &[String] {
        match &self.body {
            Body::V1 { .. } => &[],
            Body::V2(footer) => &footer.supersedes,
        }
    }
}

type CachedBlock = Arc<Vec<(ChunkId, ChunkLocation)>>;

#[derive(Default)]
struct BlockCache {
    blocks: HashMap<(String, usize), CachedBlock>,
    order: VecDeque<(String, usize)>,
}

/// The vault's live segments, open: each one's filter and fences in memory, entries read by
/// range on demand. Segments another listed segment supersedes are left out.
pub struct SegmentIndex {
    store: BlobStore,
    segments: Vec<Segment>,
    /// Every listed segment id another listed segment supersedes, and since when (the oldest
    /// superseder's modification time).
    superseded: HashMap<String, Timestamp>,
    cache: Mutex<BlockCache>,
}

impl SegmentIndex {
    /// List `index/` and open every segment: two range reads each (trailer, footer) for format
    /// 2, the whole object for format 1.
    pub async fn open(store: &BlobStore) -> Result<Self, Error> {
        let mut listed: Vec<ObjectInfo> = Vec::new();
        let mut listing = store.list(&layout::index_segments());
        while let Some(info) = listing.next().await {
            let info = info?;
            if layout::segment_id_from_key(&info.key).is_some() {
                listed.push(info);
            }
        }
        let names: HashSet<String> = listed
            .iter()
            .filter_map(|info| layout::segment_id_from_key(&info.key).map(str::to_owned))
            .collect();
        let mut opened = Vec::new();
        let mut old = Vec::new();
        for info in listed {
            match open_footer(store, &info).await? {
                Opened::V2(segment) => opened.push(*segment),
                Opened::V1 => old.push(info),
                Opened::Vanished => {}
            }
        }
        let mut superseded: HashMap<String, Timestamp> = HashMap::new();
        for segment in &opened {
            for id in segment.supersedes().iter().filter(|id| names.contains(*id)) {
                let since = superseded.entry(id.clone()).or_insert(segment.modified);
                *since = (*since).min(segment.modified);
            }
        }
        let mut segments: Vec<Segment> = opened
            .into_iter()
            .filter(|s| !superseded.contains_key(&s.id))
            .collect();
        for info in old {
            let id = layout::segment_id_from_key(&info.key).expect("filtered above");
            if superseded.contains_key(id) {
                continue;
            }
            let bytes = match store.get(&info.key).await {
                Ok(found) => found.bytes,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            segments.push(Segment {
                id: id.to_owned(),
                key: info.key.clone(),
                modified: info.modified,
                body: Body::V1 {
                    entries: Arc::new(decode_segment_v1(&bytes, &info.key)?),
                },
            });
        }
        // Larger segments first: a hit is likelier there.
        segments.sort_by(|a, b| b.entries().cmp(&a.entries()).then(a.id.cmp(&b.id)));
        Ok(Self {
            store: store.clone(),
            segments,
            superseded,
            cache: Mutex::new(BlockCache::default()),
        })
    }

    /// The live segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Entries over the live segments (a chunk in two segments counts twice).
    pub fn entries(&self) -> u64 {
        self.segments.iter().map(Segment::entries).sum()
    }

    /// Bytes kept in memory for the open segments (filters and fences; format-1 entries
    /// counted at 60 bytes each), not counting the block cache.
    pub fn resident_bytes(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match &s.body {
                Body::V1 { entries } => entries.len() * 60,
                Body::V2(footer) => footer.resident_bytes(),
            })
            .sum()
    }

    /// Where `id` is, in the first segment that holds it in a pack `pack_ok` accepts.
    pub async fn locate(
        &self,
        id: &ChunkId,
        pack_ok: impl Fn(&PackId) -> bool,
    ) -> Result<Option<ChunkLocation>, Error> {
        for segment in &self.segments {
            let found = match &segment.body {
                Body::V1 { entries } => find(entries, id).cloned(),
                Body::V2(footer) => {
                    if !footer.bloom.may_contain(id) {
                        continue;
                    }
                    let Some(block) = footer.block_of(id) else {
                        continue;
                    };
                    let entries = self.block(segment, block).await?;
                    find(&entries, id).cloned()
                }
            };
            if let Some(location) = found
                && pack_ok(&location.pack)
            {
                return Ok(Some(location));
            }
        }
        Ok(None)
    }

    /// Block `block` of `segment`, from the cache or by one range read.
    async fn block(&self, segment: &Segment, block: usize) -> Result<CachedBlock, Error> {
        let Body::V2(footer) = &segment.body else {
            unreachable!("only format-2 segments have blocks")
        };
        let name = (segment.id.clone(), block);
        if let Some(found) = self.cache_get(&name) {
            return Ok(found);
        }
        let bytes = match self
            .store
            .get_range(&segment.key, footer.block_range(block))
            .await
        {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => return Err(vanished(&segment.key)),
            Err(e) => return Err(e),
        };
        let entries = Arc::new(decode_block(
            &bytes,
            &segment.key,
            footer.counts[block] as usize,
        )?);
        if entries.first().map(|(id, _)| id.as_bytes()) != Some(&footer.firsts[block]) {
            return Err(corrupt_segment(
                &segment.key,
                "a block does not start with its fence",
            ));
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.order.len() >= BLOCK_CACHE
            && let Some(oldest) = cache.order.pop_front()
        {
            cache.blocks.remove(&oldest);
        }
        cache.order.push_back(name.clone());
        cache.blocks.insert(name, entries.clone());
        Ok(entries)
    }

    fn cache_get(&self, name: &(String, usize)) -> Option<CachedBlock> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.blocks.get(name).cloned()
    }

    /// A cursor over every entry of `segment`, in id order, one block in memory at a time.
    fn cursor<'a>(&'a self, segment: &'a Segment) -> Cursor<'a> {
        Cursor {
            index: self,
            segment,
            next_block: 0,
            buffer: Arc::new(Vec::new()),
            at: 0,
        }
    }
}

enum Opened {
    V2(Box<Segment>),
    V1,
    Vanished,
}

async fn open_footer(store: &BlobStore, info: &ObjectInfo) -> Result<Opened, Error> {
    let id = layout::segment_id_from_key(&info.key).expect("listed as a segment");
    if info.size < SEGMENT_MAGIC.len() as u64 + TRAILER_LEN {
        return Ok(Opened::V1); // too small for format 2: format 1 decodes (or refuses) it
    }
    let trailer = match store
        .get_range(&info.key, info.size - TRAILER_LEN..info.size)
        .await
    {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => return Ok(Opened::Vanished),
        Err(e) => return Err(e),
    };
    let Some((at, len)) = decode_trailer(&trailer, info.size) else {
        return Ok(Opened::V1);
    };
    let footer = match store.get_range(&info.key, at..at + len).await {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => return Ok(Opened::Vanished),
        Err(e) => return Err(e),
    };
    Ok(Opened::V2(Box::new(Segment {
        id: id.to_owned(),
        key: info.key.clone(),
        modified: info.modified,
        body: Body::V2(decode_footer(&footer, &info.key, at)?),
    })))
}

struct Cursor<'a> {
    index: &'a SegmentIndex,
    segment: &'a Segment,
    next_block: usize,
    buffer: CachedBlock,
    at: usize,
}

impl Cursor<'_> {
    async fn next(&mut self) -> Result<Option<(ChunkId, ChunkLocation)>, Error> {
        loop {
            if let Some(entry) = self.buffer.get(self.at) {
                self.at += 1;
                return Ok(Some(entry.clone()));
            }
            match &self.segment.body {
                Body::V1 { entries } => {
                    if self.next_block > 0 {
                        return Ok(None);
                    }
                    self.buffer = entries.clone();
                }
                Body::V2(footer) => {
                    if self.next_block >= footer.counts.len() {
                        return Ok(None);
                    }
                    let range = footer.block_range(self.next_block);
                    let bytes = match self.index.store.get_range(&self.segment.key, range).await {
                        Ok(bytes) => bytes,
                        Err(e) if e.is_not_found() => return Err(vanished(&self.segment.key)),
                        Err(e) => return Err(e),
                    };
                    self.buffer = Arc::new(decode_block(
                        &bytes,
                        &self.segment.key,
                        footer.counts[self.next_block] as usize,
                    )?);
                }
            }
            self.next_block += 1;
            self.at = 0;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Maintenance: merging and rewriting, under one lease

/// What a [`compact`] run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Segments merged into new ones.
    pub merged: u64,
    /// New segments written.
    pub written: u64,
    /// Superseded segments deleted (their superseder older than the grace).
    pub deleted: u64,
    /// Another collector held the maintenance lease: nothing was done.
    pub skipped: bool,
}

/// The maintenance lease, renewed in the background while held.
struct Maintenance {
    lease: Lease,
    lost: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Maintenance {
    async fn try_take(store: &BlobStore) -> Result<Option<Self>, Error> {
        static TAKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let holder = format!(
            "index-maintenance-{}-{}-{}",
            std::process::id(),
            Timestamp::now().as_nanosecond(),
            TAKEN.fetch_add(1, Ordering::SeqCst)
        );
        let lease = Lease::new(
            store.clone(),
            layout::index_lease(),
            holder,
            MAINTENANCE_TTL,
        );
        if let Acquired::HeldBy { holder, .. } = lease.try_acquire().await? {
            tracing::info!(%holder, "another collector maintains the chunk index; leaving it");
            return Ok(None);
        }
        let lost = Arc::new(AtomicBool::new(false));
        let (renewing, flag) = (lease.clone(), lost.clone());
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(renewing.renew_every()).await;
                match renewing.renew().await {
                    Ok(true) => {}
                    Ok(false) => {
                        flag.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew the index-maintenance lease; trying again")
                    }
                }
            }
        });
        Ok(Some(Self {
            lease,
            lost,
            renewer,
        }))
    }

    fn check(&self) -> Result<(), Error> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(Error::new(
                ErrorKind::Contended,
                "the index-maintenance lease ran out and another collector took it; stopping \
                 (the next run continues)",
            ));
        }
        Ok(())
    }

    async fn release(self) {
        self.renewer.abort();
        if let Err(e) = self.lease.release().await {
            tracing::warn!(error = %e, "cannot release the index-maintenance lease; it runs out on its own");
        }
    }
}

fn tier(entries: u64) -> u32 {
    if entries < TIER0_ENTRIES {
        0
    } else {
        1 + (entries / TIER0_ENTRIES).ilog(4)
    }
}

/// Merge small segments into larger ones and delete superseded segments whose superseder is
/// older than `grace`. Segments are grouped in size tiers (below 16 Ki entries, then ×4 per
/// tier); a tier with [`MERGE_FAN_IN`] or more live segments, or holding a format-1 segment,
/// is merged into one format-2 segment (streaming: one block per input in memory). Does nothing
/// when another collector holds the maintenance lease.
pub async fn compact(
    store: &BlobStore,
    now: Timestamp,
    grace: SignedDuration,
) -> Result<CompactReport, Error> {
    let Some(maintenance) = Maintenance::try_take(store).await? else {
        return Ok(CompactReport {
            skipped: true,
            ..CompactReport::default()
        });
    };
    let result = compact_held(store, now, grace, &maintenance).await;
    maintenance.release().await;
    result
}

async fn compact_held(
    store: &BlobStore,
    now: Timestamp,
    grace: SignedDuration,
    maintenance: &Maintenance,
) -> Result<CompactReport, Error> {
    let mut report = CompactReport::default();
    // Delete what was superseded long enough ago that no job can still be reading it.
    let index = SegmentIndex::open(store).await?;
    for (id, since) in &index.superseded {
        if since.checked_add(grace).is_ok_and(|t| t <= now) {
            maintenance.check()?;
            store.delete(&layout::index_segment(id)?).await?;
            report.deleted += 1;
        }
    }
    // A live segment with no entries (what rewriting a segment of deleted packs only leaves)
    // is deleted once what it superseded is gone: it has no block a reader could be reading.
    let index = SegmentIndex::open(store).await?;
    for segment in index.segments() {
        let Body::V2(footer) = &segment.body else {
            continue;
        };
        if footer.entries == 0
            && footer
                .supersedes
                .iter()
                .all(|old| !index.superseded.contains_key(old))
            && segment.modified.checked_add(grace).is_ok_and(|t| t <= now)
        {
            maintenance.check()?;
            store.delete(&segment.key).await?;
            report.deleted += 1;
        }
    }
    // Then merge, a tier at a time, until no tier is crowded.
    for _ in 0..16 {
        let index = SegmentIndex::open(store).await?;
        let mut tiers: std::collections::BTreeMap<u32, Vec<&Segment>> = Default::default();
        for segment in index.segments() {
            tiers
                .entry(tier(segment.entries()))
                .or_default()
                .push(segment);
        }
        let Some(group) = tiers
            .into_values()
            .find(|group| group.len() >= MERGE_FAN_IN || group.iter().any(|s| s.is_format_1()))
        else {
            break;
        };
        maintenance.check()?;
        let mut inputs: Vec<&str> = group.iter().map(|s| s.id()).collect();
        inputs.sort_unstable();
        let new_id = layout::compacted_segment_id(&inputs);
        merge(store, &index, &group, &new_id, &|_: &ChunkLocation| true).await?;
        report.merged += group.len() as u64;
        report.written += 1;
    }
    Ok(report)
}

/// What the segments `inputs` supersede: themselves, and whatever they supersede that is still
/// listed (so deleting an intermediate superseder never resurrects what it replaced).
fn superseded_by_merge(index: &SegmentIndex, inputs: &[&Segment]) -> Vec<String> {
    let mut ids: BTreeSet<String> = inputs.iter().map(|s| s.id.clone()).collect();
    for input in inputs {
        for old in input.supersedes() {
            if index.superseded.contains_key(old) {
                ids.insert(old.clone());
            }
        }
    }
    ids.into_iter().collect()
}

/// Merge `inputs` into segment `new_id`, keeping entries whose location `keep` accepts.
async fn merge(
    store: &BlobStore,
    index: &SegmentIndex,
    inputs: &[&Segment],
    new_id: &str,
    keep: &(dyn Fn(&ChunkLocation) -> bool + Sync),
) -> Result<CreateOutcome, Error> {
    let key = layout::index_segment(new_id)?;
    let capacity: u64 = inputs.iter().map(|s| s.entries()).sum();
    let (encoder, header) = SegmentEncoder::new(capacity, superseded_by_merge(index, inputs));
    let cursors: Vec<Cursor<'_>> = inputs.iter().map(|s| index.cursor(s)).collect();
    struct State<'a> {
        cursors: Vec<Cursor<'a>>,
        heads: BinaryHeap<Reverse<([u8; 32], usize)>>,
        pending: HashMap<usize, ChunkLocation>,
        encoder: Option<SegmentEncoder>,
        out: Vec<u8>,
        started: bool,
    }
    let state = State {
        cursors,
        heads: BinaryHeap::new(),
        pending: HashMap::new(),
        encoder: Some(encoder),
        out: header,
        started: false,
    };
    let stream = futures::stream::try_unfold(state, move |mut st| async move {
        if !st.started {
            st.started = true;
            for i in 0..st.cursors.len() {
                if let Some((id, location)) = st.cursors[i].next().await? {
                    st.heads.push(Reverse((*id.as_bytes(), i)));
                    st.pending.insert(i, location);
                }
            }
        }
        let Some(encoder) = st.encoder.as_mut() else {
            return Ok::<_, Error>(None);
        };
        while st.out.len() < MERGE_PIECE {
            let Some(Reverse((id, i))) = st.heads.pop() else {
                let encoder = st.encoder.take().expect("present above");
                st.out.extend_from_slice(&encoder.finish());
                break;
            };
            let location = st.pending.remove(&i).expect("a head has its location");
            if keep(&location)
                && let Some(block) = encoder.push(&ChunkId::from_bytes(id), &location)
            {
                st.out.extend_from_slice(&block);
            }
            if let Some((next, location)) = st.cursors[i].next().await? {
                st.heads.push(Reverse((*next.as_bytes(), i)));
                st.pending.insert(i, location);
            }
        }
        let piece = Bytes::from(std::mem::take(&mut st.out));
        Ok(Some((piece, st)))
    });
    store.put_stream_create_only(&key, stream).await
}

/// Rewrite every live segment that names a pack in `deleted` without those entries: the new
/// segment (create-only, named after the old one and what it keeps) supersedes the old one,
/// which a later [`compact`] deletes after the grace. Streaming, one block per segment in
/// memory. `Ok(None)` when another collector holds the maintenance lease: the caller must then
/// keep the packs in its record (readers go on leaving them out) and try again next run.
pub async fn drop_packs(
    store: &BlobStore,
    deleted: &BTreeSet<String>,
) -> Result<Option<u64>, Error> {
    let Some(maintenance) = Maintenance::try_take(store).await? else {
        return Ok(None);
    };
    let result = drop_packs_held(store, deleted, &maintenance).await;
    maintenance.release().await;
    result.map(Some)
}

async fn drop_packs_held(
    store: &BlobStore,
    deleted: &BTreeSet<String>,
    maintenance: &Maintenance,
) -> Result<u64, Error> {
    let index = SegmentIndex::open(store).await?;
    let keep = |l: &ChunkLocation| !deleted.contains(l.pack.as_str());
    let mut rewritten = 0;
    for segment in index.segments() {
        // A first pass counts what stays (and whether anything goes).
        let (mut kept, mut dropped) = (0usize, 0usize);
        let mut cursor = index.cursor(segment);
        while let Some((_, location)) = cursor.next().await? {
            if keep(&location) {
                kept += 1;
            } else {
                dropped += 1;
            }
        }
        if dropped == 0 {
            continue;
        }
        maintenance.check()?;
        let new_id = layout::rewritten_segment_id(segment.id(), kept);
        merge(store, &index, &[segment], &new_id, &keep).await?;
        rewritten += 1;
    }
    Ok(rewritten)
}

#[cfg(test)]
mod tests;
