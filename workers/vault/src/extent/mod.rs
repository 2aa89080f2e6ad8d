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
//! A map is stored sealed ([`crate::seal`]: encrypted and authenticated under the vault key,
//! bound to its key `volumes/<volume-id>/<version>.map`): it holds only keyed chunk ids and the
//! layout of written ranges, but that layout still says where a volume holds data, and a map
//! swapped for another would restore the wrong bytes without any chunk being damaged.

use std::ops::Range;

use crate::chunk::{ChunkId, MAX_CHUNK_LEN};
use crate::layout;

mod codec;
mod storage;

pub use storage::load_chain;

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
mod tests;
