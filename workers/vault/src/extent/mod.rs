//! Extent maps: what one version of a volume contains, as ranges over chunks.
//!
//! An [`ExtentMap`] lists sorted, non-overlapping [`Extent`]s: `offset..offset+length` of the
//! volume holds bytes `offset_in_chunk..` of a chunk, or (in incrementals only) zeros.
//!
//! * A **full** map (no parent) maps only written, non-zero ranges. Anything unmapped reads as
//!   zeros, so sparse and never-written areas cost nothing.
//! * An **incremental** map names its parent version and maps only the ranges that changed
//!   since it. A range that changed *to zeros* (overwritten or trimmed) is an explicit
//!   [`ExtentTarget::Zero`] extent, because leaving it unmapped would let the parent's old data
//!   show through.
//! * **Resolving** a chain (oldest full map first, then each incremental) lays each map over the
//!   one before: the child wins wherever it has an extent, and a partly covered parent extent is
//!   clipped (that is what `offset_in_chunk` is for). The result is a flat full map.
//! * **Consolidation**: reading a version costs one map per link of its chain, and retention
//!   cannot delete a version that later ones build on. [`ConsolidationPolicy`] caps the chain:
//!   when a new incremental would make the chain longer than `max_chain_depth` maps, the new
//!   version is written as its resolved full map instead. Only the map is rewritten; chunks are
//!   shared, so consolidation costs metadata, not data.
//!
//! # Serialized form (version 1, compact binary)
//!
//! A map of a fully written 64 GiB volume has 64 Ki extents; a self-describing format
//! (MessagePack with field names) would spend more on names than on data. So the format is
//! fixed-width little-endian, with a checksum so a damaged map is reported, not misread:
//!
//! ```text
//! "STWEMAP1"                                  magic (8)
//! volume size                                 u64
//! version name                                u16 length + UTF-8
//! parent flag (0 = full, 1 = incremental)     u8, then parent name (u16 length + UTF-8) if 1
//! extent count                                u64
//! per extent: offset u64 | length u64 | kind u8 (0 = zero, 1 = chunk)
//!             | if chunk: chunk id (32) | offset in chunk u32
//! BLAKE3 of everything above                  32
//! ```
//!
//! Maps are not encrypted: they hold keyed chunk ids and the layout of written ranges, not data.

use std::ops::Range;

use crate::chunk::{ChunkId, MAX_CHUNK_LEN};
use crate::layout;
use crate::store::{BlobStore, CreateOutcome, StoreError};

const MAP_MAGIC: &[u8; 8] = b"STWEMAP1";
const KIND_ZERO: u8 = 0;
const KIND_CHUNK: u8 = 1;

/// The longest chain [`load_chain`] will follow before deciding the parent links loop.
pub const CHAIN_LIMIT: usize = 10_000;

/// What a range of a volume holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentTarget {
    /// Bytes of a chunk, starting `offset_in_chunk` bytes into its plaintext.
    Chunk {
        /// The chunk.
        id: ChunkId,
        /// Where in the chunk's plaintext the extent starts.
        offset_in_chunk: u32,
    },
    /// Zeros. Only stored in incremental maps, to hide the parent's data.
    Zero,
}

impl ExtentTarget {
    fn advanced_by(self, delta: u64) -> Self {
        match self {
            Self::Chunk {
                id,
                offset_in_chunk,
            } => Self::Chunk {
                id,
                offset_in_chunk: offset_in_chunk
                    + u32::try_from(delta).expect("deltas stay inside one chunk"),
            },
            Self::Zero => Self::Zero,
        }
    }
}

/// One range of a volume and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Start, in bytes from the start of the volume.
    pub offset: u64,
    /// Length in bytes (never zero).
    pub length: u64,
    /// What the range holds.
    pub target: ExtentTarget,
}

impl Extent {
    /// End of the range (exclusive).
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }

    /// The part of this extent inside `start..end` (which must overlap it).
    fn clipped(&self, start: u64, end: u64) -> Self {
        let start = start.max(self.offset);
        let end = end.min(self.end());
        Self {
            offset: start,
            length: end - start,
            target: self.target.advanced_by(start - self.offset),
        }
    }
}

/// An extent map is malformed, or a chain does not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtentError {
    /// An extent was added out of order, overlapping, empty, or past the end of the volume.
    #[error(
        "extent {offset}+{length} cannot follow the map's end at {previous_end} of a \
         {volume_size}-byte volume: extents must be added in order, non-empty and inside the \
         volume"
    )]
    OutOfOrder {
        /// Offset of the refused extent.
        offset: u64,
        /// Length of the refused extent.
        length: u64,
        /// End of the last accepted extent.
        previous_end: u64,
        /// Size of the volume.
        volume_size: u64,
    },
    /// An extent reaches past the largest possible chunk.
    #[error(
        "extent {offset}+{length} reads chunk bytes {offset_in_chunk}.. beyond the \
         {MAX_CHUNK_LEN}-byte chunk limit"
    )]
    BeyondChunk {
        /// Offset of the refused extent.
        offset: u64,
        /// Length of the refused extent.
        length: u64,
        /// Its offset in the chunk.
        offset_in_chunk: u32,
    },
    /// A chain to resolve is empty, does not start with a full map, or has a broken link.
    #[error("cannot resolve the chain: {reason}; load it with extent::load_chain")]
    BrokenChain {
        /// What is wrong.
        reason: String,
    },
    /// A stored map could not be decoded.
    #[error("extent map {key} is corrupt: {reason}; restore it from the secondary tier")]
    Corrupt {
        /// The map's key, or whatever name the caller gave the bytes being decoded.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A name does not fit the layout.
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
}

/// Extents of one volume version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentMap {
    version: String,
    parent: Option<String>,
    volume_size: u64,
    extents: Vec<Extent>,
}

/// Builds an [`ExtentMap`] from extents given in volume order.
#[derive(Debug)]
pub struct ExtentMapBuilder {
    map: ExtentMap,
}

impl ExtentMapBuilder {
    /// A full map: only non-zero data is recorded; [`Self::push_zero`] is a no-op.
    pub fn full(version: &str, volume_size: u64) -> Result<Self, ExtentError> {
        layout::validate_component("volume version", version)?;
        Ok(Self {
            map: ExtentMap {
                version: version.to_owned(),
                parent: None,
                volume_size,
                extents: Vec::new(),
            },
        })
    }

    /// An incremental map on top of version `parent`.
    pub fn incremental(version: &str, parent: &str, volume_size: u64) -> Result<Self, ExtentError> {
        layout::validate_component("volume version", version)?;
        layout::validate_component("parent volume version", parent)?;
        Ok(Self {
            map: ExtentMap {
                version: version.to_owned(),
                parent: Some(parent.to_owned()),
                volume_size,
                extents: Vec::new(),
            },
        })
    }

    fn check_next(&self, offset: u64, length: u64) -> Result<(), ExtentError> {
        let previous_end = self.map.extents.last().map_or(0, Extent::end);
        let fits = length > 0
            && offset >= previous_end
            && offset
                .checked_add(length)
                .is_some_and(|end| end <= self.map.volume_size);
        if fits {
            Ok(())
        } else {
            Err(ExtentError::OutOfOrder {
                offset,
                length,
                previous_end,
                volume_size: self.map.volume_size,
            })
        }
    }

    /// Records that `offset..offset+length` holds chunk `id` from `offset_in_chunk` on.
    pub fn push_chunk(
        &mut self,
        offset: u64,
        length: u64,
        id: ChunkId,
        offset_in_chunk: u32,
    ) -> Result<(), ExtentError> {
        self.check_next(offset, length)?;
        if u64::from(offset_in_chunk) + length > MAX_CHUNK_LEN as u64 {
            return Err(ExtentError::BeyondChunk {
                offset,
                length,
                offset_in_chunk,
            });
        }
        self.map.extents.push(Extent {
            offset,
            length,
            target: ExtentTarget::Chunk {
                id,
                offset_in_chunk,
            },
        });
        Ok(())
    }

    /// Records that `offset..offset+length` now holds zeros (merged with a preceding zero extent).
    pub fn push_zero(&mut self, offset: u64, length: u64) -> Result<(), ExtentError> {
        self.check_next(offset, length)?;
        if self.map.parent.is_none() {
            return Ok(());
        }
        match self.map.extents.last_mut() {
            Some(last) if last.target == ExtentTarget::Zero && last.end() == offset => {
                last.length += length;
            }
            _ => self.map.extents.push(Extent {
                offset,
                length,
                target: ExtentTarget::Zero,
            }),
        }
        Ok(())
    }

    /// The finished map.
    pub fn finish(self) -> ExtentMap {
        self.map
    }
}

impl ExtentMap {
    /// This version's name.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The parent version, for an incremental map.
    pub fn parent(&self) -> Option<&str> {
        self.parent.as_deref()
    }

    /// Whether the map stands alone (no parent).
    pub fn is_full(&self) -> bool {
        self.parent.is_none()
    }

    /// Size of the volume in bytes.
    pub fn volume_size(&self) -> u64 {
        self.volume_size
    }

    /// The extents, sorted and disjoint.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// Bytes mapped to chunk data (zero extents excluded).
    pub fn data_bytes(&self) -> u64 {
        self.extents
            .iter()
            .filter(|e| matches!(e.target, ExtentTarget::Chunk { .. }))
            .map(|e| e.length)
            .sum()
    }

    /// Every chunk the map refers to (with repeats), e.g. for verification or garbage collection.
    pub fn chunk_ids(&self) -> impl Iterator<Item = ChunkId> + '_ {
        self.extents.iter().filter_map(|e| match e.target {
            ExtentTarget::Chunk { id, .. } => Some(id),
            ExtentTarget::Zero => None,
        })
    }

    /// What `range` of the volume holds, as consecutive pieces that exactly cover it
    /// (clipped to the volume size); unmapped gaps are reported as [`ExtentTarget::Zero`].
    /// Meaningful on a full (or resolved) map.
    pub fn pieces(&self, range: Range<u64>) -> Vec<Extent> {
        let end = range.end.min(self.volume_size);
        let mut cursor = range.start;
        let mut pieces = Vec::new();
        let first = self.extents.partition_point(|e| e.end() <= cursor);
        for extent in &self.extents[first..] {
            if cursor >= end || extent.offset >= end {
                break;
            }
            if extent.offset > cursor {
                pieces.push(Extent {
                    offset: cursor,
                    length: extent.offset - cursor,
                    target: ExtentTarget::Zero,
                });
            }
            let piece = extent.clipped(cursor, end);
            cursor = piece.end();
            pieces.push(piece);
        }
        if cursor < end {
            pieces.push(Extent {
                offset: cursor,
                length: end - cursor,
                target: ExtentTarget::Zero,
            });
        }
        pieces
    }

    /// `upper` laid over `lower`: upper's extents win, lower's are clipped around them.
    fn overlay(lower: &[Extent], upper: &[Extent], volume_size: u64) -> Vec<Extent> {
        let mut kept_lower = Vec::with_capacity(lower.len());
        let mut first_upper = 0;
        for extent in lower {
            while first_upper < upper.len() && upper[first_upper].end() <= extent.offset {
                first_upper += 1;
            }
            let mut cursor = extent.offset;
            for cover in &upper[first_upper..] {
                if cover.offset >= extent.end() {
                    break;
                }
                if cover.offset > cursor {
                    kept_lower.push(extent.clipped(cursor, cover.offset));
                }
                cursor = cursor.max(cover.end());
                if cursor >= extent.end() {
                    break;
                }
            }
            if cursor < extent.end() {
                kept_lower.push(extent.clipped(cursor, extent.end()));
            }
        }
        // Merge two sorted, mutually disjoint lists; clip to the (possibly shrunk) volume.
        let mut merged = Vec::with_capacity(kept_lower.len() + upper.len());
        let (mut a, mut b) = (kept_lower.into_iter().peekable(), upper.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.offset < y.offset => a.next(),
                (Some(_), Some(_)) | (None, Some(_)) => b.next().copied(),
                (Some(_), None) => a.next(),
                (None, None) => break,
            };
            let extent = next.expect("peeked");
            if extent.offset >= volume_size {
                break;
            }
            merged.push(extent.clipped(extent.offset, extent.end().min(volume_size)));
        }
        merged
    }

    /// Resolves a chain, oldest (a full map) first, each later map naming the one before as its
    /// parent, into one full map of the newest version. Zero extents are dropped: in a full map
    /// unmapped means zero.
    pub fn resolve(chain: &[ExtentMap]) -> Result<ExtentMap, ExtentError> {
        let broken = |reason: String| ExtentError::BrokenChain { reason };
        let (base, rest) = chain
            .split_first()
            .ok_or_else(|| broken("it is empty".into()))?;
        if !base.is_full() {
            return Err(broken(format!(
                "its first map, version {}, is incremental (parent {})",
                base.version,
                base.parent.as_deref().unwrap_or_default()
            )));
        }
        let mut extents = base.extents.clone();
        let mut previous = base;
        for map in rest {
            if map.parent.as_deref() != Some(previous.version.as_str()) {
                return Err(broken(format!(
                    "version {} follows version {} but names {} as its parent",
                    map.version,
                    previous.version,
                    map.parent.as_deref().unwrap_or("no version")
                )));
            }
            extents = Self::overlay(&extents, &map.extents, map.volume_size);
            previous = map;
        }
        extents.retain(|e| e.target != ExtentTarget::Zero);
        Ok(ExtentMap {
            version: previous.version.clone(),
            parent: None,
            volume_size: previous.volume_size,
            extents,
        })
    }

    /// Encodes the map in the format described in the module doc.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.extents.len() * 53);
        out.extend_from_slice(MAP_MAGIC);
        out.extend_from_slice(&self.volume_size.to_le_bytes());
        put_name(&mut out, &self.version);
        match &self.parent {
            Some(parent) => {
                out.push(1);
                put_name(&mut out, parent);
            }
            None => out.push(0),
        }
        out.extend_from_slice(&(self.extents.len() as u64).to_le_bytes());
        for extent in &self.extents {
            out.extend_from_slice(&extent.offset.to_le_bytes());
            out.extend_from_slice(&extent.length.to_le_bytes());
            match extent.target {
                ExtentTarget::Zero => out.push(KIND_ZERO),
                ExtentTarget::Chunk {
                    id,
                    offset_in_chunk,
                } => {
                    out.push(KIND_CHUNK);
                    out.extend_from_slice(id.as_bytes());
                    out.extend_from_slice(&offset_in_chunk.to_le_bytes());
                }
            }
        }
        let checksum = blake3::hash(&out);
        out.extend_from_slice(checksum.as_bytes());
        out
    }

    /// Decodes and validates a map; `source` names it in errors (usually its key).
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<ExtentMap, ExtentError> {
        let corrupt = |reason: String| ExtentError::Corrupt {
            key: source.to_owned(),
            reason,
        };
        if bytes.len() < MAP_MAGIC.len() + 32 || &bytes[..8] != MAP_MAGIC {
            return Err(corrupt(
                "it does not start with the extent-map magic bytes".into(),
            ));
        }
        let (body, checksum) = bytes.split_at(bytes.len() - 32);
        if blake3::hash(body).as_bytes() != checksum {
            return Err(corrupt("its checksum does not match its content".into()));
        }
        let mut reader = Reader { bytes: &body[8..] };
        let truncated = |_| corrupt("it ends in the middle of a field".into());
        let volume_size = reader.u64().map_err(truncated)?;
        let version = reader.name().map_err(truncated)?;
        let parent = match reader.u8().map_err(truncated)? {
            0 => None,
            1 => Some(reader.name().map_err(truncated)?),
            other => return Err(corrupt(format!("unknown parent flag {other}"))),
        };
        let count = reader.u64().map_err(truncated)?;
        let mut builder = match &parent {
            None => ExtentMapBuilder::full(&version, volume_size),
            Some(parent) => ExtentMapBuilder::incremental(&version, parent, volume_size),
        }
        .map_err(|e| corrupt(e.to_string()))?;
        for _ in 0..count {
            let offset = reader.u64().map_err(truncated)?;
            let length = reader.u64().map_err(truncated)?;
            let pushed = match reader.u8().map_err(truncated)? {
                KIND_ZERO if parent.is_none() => {
                    return Err(corrupt("a full map holds a zero extent".into()));
                }
                KIND_ZERO => builder.push_zero(offset, length),
                KIND_CHUNK => {
                    let id = ChunkId::from_bytes(reader.array().map_err(truncated)?);
                    let offset_in_chunk = reader.u32().map_err(truncated)?;
                    builder.push_chunk(offset, length, id, offset_in_chunk)
                }
                other => return Err(corrupt(format!("unknown extent kind {other}"))),
            };
            pushed.map_err(|e| corrupt(e.to_string()))?;
        }
        if !reader.bytes.is_empty() {
            return Err(corrupt(format!(
                "{} unexpected bytes after the last extent",
                reader.bytes.len()
            )));
        }
        let map = builder.finish();
        if map.extents.len() as u64 != count {
            return Err(corrupt("adjacent zero extents were stored unmerged".into()));
        }
        Ok(map)
    }

    /// Stores the map at `volumes/<volume-id>/<version>.map`, create-only.
    pub async fn save(
        &self,
        store: &BlobStore,
        volume_id: &str,
    ) -> Result<CreateOutcome, ExtentStoreError> {
        let key = layout::volume_version(volume_id, &self.version).map_err(ExtentError::from)?;
        Ok(store.put_create_only(&key, self.to_bytes()).await?)
    }

    /// Loads one stored map.
    pub async fn load(
        store: &BlobStore,
        volume_id: &str,
        version: &str,
    ) -> Result<ExtentMap, ExtentStoreError> {
        let key = layout::volume_version(volume_id, version).map_err(ExtentError::from)?;
        let stored = store.get(&key).await?;
        let map = ExtentMap::from_bytes(&stored.bytes, key.as_str())?;
        if map.version != version {
            return Err(ExtentError::Corrupt {
                key: key.to_string(),
                reason: format!("it describes version {}", map.version),
            }
            .into());
        }
        Ok(map)
    }
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    let len = u16::try_from(name.len()).expect("validated names are at most 255 bytes");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
}

struct Truncated;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        if self.bytes.len() < n {
            return Err(Truncated);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, Truncated> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, Truncated> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn name(&mut self) -> Result<String, Truncated> {
        let len = u16::from_le_bytes(self.array()?) as usize;
        // Invalid UTF-8 is caught by the builder's name validation as an empty/odd name.
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }
}

/// Loading or saving a map failed.
#[derive(Debug, thiserror::Error)]
pub enum ExtentStoreError {
    /// The map itself is wrong.
    #[error(transparent)]
    Map(#[from] ExtentError),
    /// Blob storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Loads the chain that `version` of `volume_id` resolves through, oldest (full) map first.
/// Memory holds one map per link, which [`ConsolidationPolicy`] keeps short.
pub async fn load_chain(
    store: &BlobStore,
    volume_id: &str,
    version: &str,
) -> Result<Vec<ExtentMap>, ExtentStoreError> {
    let mut chain = vec![ExtentMap::load(store, volume_id, version).await?];
    while let Some(parent) = chain.last().and_then(|m| m.parent.clone()) {
        if chain.len() >= CHAIN_LIMIT {
            return Err(ExtentError::BrokenChain {
                reason: format!(
                    "version {version} of volume {volume_id} has more than {CHAIN_LIMIT} \
                     ancestors; the parent links probably loop"
                ),
            }
            .into());
        }
        chain.push(ExtentMap::load(store, volume_id, &parent).await?);
    }
    chain.reverse();
    Ok(chain)
}

/// How long a chain of incremental maps may grow before a version is stored consolidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsolidationPolicy {
    max_chain_depth: usize,
}

impl Default for ConsolidationPolicy {
    /// Eight maps per chain: a restore reads at most eight small maps, and a daily schedule
    /// consolidates about weekly.
    fn default() -> Self {
        Self { max_chain_depth: 8 }
    }
}

impl ConsolidationPolicy {
    /// A policy allowing chains of up to `max_chain_depth` maps (1 = every version full).
    /// Zero is treated as 1.
    pub fn new(max_chain_depth: usize) -> Self {
        Self {
            max_chain_depth: max_chain_depth.max(1),
        }
    }

    /// The longest chain allowed, counted in maps including the full one.
    pub fn max_chain_depth(&self) -> usize {
        self.max_chain_depth
    }

    /// The map to store for `new_version`, given the chain of its parent (oldest first, as from
    /// [`load_chain`]): `new_version` itself while the chain stays within the limit, otherwise
    /// its resolved full map under the same version name.
    pub fn apply(
        &self,
        parent_chain: &[ExtentMap],
        new_version: ExtentMap,
    ) -> Result<ExtentMap, ExtentError> {
        if new_version.is_full() {
            return Ok(new_version);
        }
        if parent_chain.len() < self.max_chain_depth {
            return Ok(new_version);
        }
        let mut chain = parent_chain.to_vec();
        chain.push(new_version);
        ExtentMap::resolve(&chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{ChangedRanges, ChunkGrid, is_all_zero};
    use crate::crypto::VaultKey;
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
        let full = ExtentMapBuilder::full("v1", 10).unwrap().finish();
        let orphan = ExtentMapBuilder::incremental("v3", "v2", 10)
            .unwrap()
            .finish();
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
        let store = BlobStore::in_memory();
        let full = ExtentMapBuilder::full("v1", 10).unwrap().finish();
        let mut second = ExtentMapBuilder::incremental("v2", "v1", 10).unwrap();
        second.push_chunk(0, 5, id(1), 0).unwrap();
        let second = second.finish();
        let third = ExtentMapBuilder::incremental("v3", "v2", 10)
            .unwrap()
            .finish();
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
                        out.extend_from_slice(
                            &self.chunks[&id][start..start + piece.length as usize],
                        );
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
        let full = ExtentMapBuilder::full("v0", 10).unwrap().finish();
        let next = ExtentMapBuilder::incremental("v1", "v0", 10)
            .unwrap()
            .finish();
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
        let shrunk = ExtentMapBuilder::incremental("v1", "v0", 90)
            .unwrap()
            .finish();
        let resolved = ExtentMap::resolve(&[full.clone(), shrunk]).unwrap();
        assert_eq!(resolved.extents(), &[chunk(80, 10, 1, 0)]);
        let grown = ExtentMapBuilder::incremental("v1", "v0", 200)
            .unwrap()
            .finish();
        let resolved = ExtentMap::resolve(&[full, grown]).unwrap();
        assert_eq!(resolved.volume_size(), 200);
        assert_eq!(resolved.pieces(190..300).len(), 1);
    }
}
