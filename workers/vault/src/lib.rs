//! The vault data plane: where Stowage keeps recovery points and volume data, and in what form.
//!
//! This crate is pure library code with no broker or cluster dependency, so stages
//! (vault-transfer, geo-replication, restore-hydration, retention, `rp verify`) can all share it:
//!
//! | module | owns |
//! |---|---|
//! | [`Error`] | the crate's one error: a kind, whether a retry can help, the message and cause |
//! | [`layout`] | every key name in a vault, and validation of the names that go into keys |
//! | [`store`] | [`store::BlobStore`]: local folder (flock compare-and-swap), Azure Blob (Azurite), in-memory; create-only, streamed and compare-and-swap writes |
//! | [`crypto`] | [`crypto::VaultKey`] and the keys derived from it (keyed chunk ids, AES-256-GCM) |
//! | [`keyring`] | the key hierarchy: the operator's key-encryption key wraps the vault's data key in `keys/keyring.json`; unlock, init, rotation |
//! | [`seal`] | sealed objects: manifests, extent maps and resources encrypted and authenticated in 64 KiB segments (STREAM), bound to their key |
//! | [`chunk`] | cutting changed ranges into chunks, sealing (zstd + AES-GCM) and verified opening |
//! | [`pack`] | packing sealed chunks into ~16 MiB pack objects, reading one chunk by range |
//! | [`extent`] | extent maps of volume versions, chain resolution, consolidation, map storage |
//! | [`gc`] | two-phase mark-and-sweep of packs and maps no tier manifest references |
//! | [`catalog`] | the catalog documents: vault settings, policies and instances (validated), recovery-point manifests, job records |
//! | [`document`] | mutable JSON documents (job records, settings, retention and GC state): one read-modify-write loop under compare-and-swap |
//!
//! # How a vault transfer uses it
//!
//! ```text
//! changed ranges ─► ChunkGrid::pieces ─► read piece ─► zero? ─► map: zero extent (or nothing)
//!                                                   └► chunk_id ─► known? ─► map: chunk extent
//!                                                              └► seal_chunk ─► PackWriter::add
//! PackWriter::finish ─► (chunk index segment, see below) ─► ConsolidationPolicy::apply
//!                   ─► ExtentMap::save (create-only) ─► RP manifest (create-only) ─► event
//! ```
//!
//! Order matters for "a worker killed at any instant loses nothing": packs first, then what
//! points at them, then the manifest that makes the recovery point visible.
//!
//! # Design note: the chunk index (which chunks does the vault already hold?)
//!
//! Not implemented yet; this is the proposed design.
//!
//! Two questions need answering: at write time, "is chunk X already stored?" (deduplication), and
//! at read time, "where is chunk X?" (pack, offset, length). Extent maps deliberately store only
//! chunk ids, not locations, so that retention can later repack half-empty packs without
//! rewriting every map that uses them.
//!
//! Options considered:
//!
//! * *A marker object per chunk* (`chunks/<id>`): one extra PUT per chunk undoes what packs
//!   save, and a listing of a million markers is slow. Rejected.
//! * *Read every pack's trailer at startup*: self-contained, but two range reads per pack
//!   (~130 000 requests per TiB) for every job on a stateless worker. Kept only as the repair
//!   path (a lost index can always be rebuilt from pack trailers via [`pack::read_pack_index`]).
//! * **Index segments (proposed).** Each vault-transfer job, after its packs are uploaded and
//!   before its extent maps, writes one create-only object `index/<segment-id>` holding
//!   `(chunk id, pack id, offset, length)` for the chunks it packed, sorted by chunk id (the
//!   same 44-byte entries as a pack index, plus the pack id). Retention merges small segments
//!   into large ones and drops entries of deleted packs, so a vault has few segments.
//!   `index` would be a new top-level folder in [`layout`] (the design lists `chunks/ or packs/`
//!   as open).
//!
//! Lookups, within the 128 MiB worker budget:
//!
//! * *Incrementals* deduplicate against their own parent chain for free: the resolved parent map
//!   already names every chunk of the volume, and unchanged data is never re-read anyway.
//! * *Fulls and cross-volume dedup* stream the segments once per job into a sorted `Vec` of
//!   chunk ids (32 bytes per chunk: 32 MiB per TiB of unique data at 1 MiB chunks). Past that
//!   size, keep an 8-byte prefix per chunk in memory and confirm a prefix hit by a range read of
//!   the sorted segment. A false "already stored" would lose data, so a hit is never trusted on a
//!   prefix alone.
//! * *Hydration* collects the chunk ids of the resolved map it restores, then streams segments
//!   keeping only those entries: memory follows the restored version, not the vault.
//!
//! Crash safety ("no duplicate data after SIGKILL"): a worker killed after uploading a pack but
//! before writing its segment leaves a pack nobody indexes, and the redelivered job would store
//! those chunks again. The fix proposed for the stage work: name packs of a job
//! deterministically (`hash(job id, pack sequence number)`) instead of by content hash. Chunking
//! and zstd are deterministic, so the redelivered job rebuilds the same packs in the same order;
//! `put_create_only` answers [`store::CreateOutcome::AlreadyExists`], and the job reuses the
//! stored pack after reading its trailer index with [`pack::read_pack_index`]. Orphans that do
//! remain (a job that never comes back) are found by retention as packs absent from every
//! segment and older than the longest job.

/// `Display` as the inner text and `Debug` as `Name(text)`, for the newtypes around a `String`.
macro_rules! fmt_as_inner_text {
    ($($ty:ident),+ $(,)?) => {$(
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl ::std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, concat!(stringify!($ty), "({})"), self.0)
            }
        }
    )+};
}

pub mod catalog;
pub mod chunk;
pub mod crypto;
pub mod document;
mod error;
pub mod extent;
pub mod gc;
mod hex;
pub mod index;
pub mod keyring;
pub mod layout;
pub mod lease;
pub mod pack;
pub mod seal;
pub mod store;

pub use error::{Error, ErrorKind};
