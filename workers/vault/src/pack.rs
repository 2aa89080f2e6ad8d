//! Packs: many sealed chunks in one blob.
//!
//! Why packs: a 1 TiB volume at 1 MiB per chunk is a million chunks. As separate blobs that is a
//! million PUTs (slow, and billed per operation on Azure) and a million files in a local folder.
//! Packs of ~16 MiB ([`DEFAULT_PACK_TARGET`]) cut that by 16× or more while a single chunk can
//! still be read alone with one range request.
//!
//! # Format (version 1)
//!
//! ```text
//! "STWPACK1"                               8-byte magic
//! sealed chunk, sealed chunk, ...          see crate::chunk for the sealed form
//! index: one entry per chunk, in order     chunk id (32) | offset u64 LE | length u32 LE
//! trailer (52 bytes):                      index offset u64 LE | entry count u32 LE |
//!                                          BLAKE3 of the index (32) | "STWPEND1"
//! ```
//!
//! The index at the end makes a pack self-describing (a pack can be re-indexed, verified or
//! garbage-collected knowing only its key) while letting [`PackWriter`] stream: entries are only
//! known once the chunks are written. The index checksum catches a damaged index before any
//! offset from it is trusted. Chunks themselves are authenticated by AES-GCM and their id.
//!
//! A pack's id is the BLAKE3 hash of its whole content. Packs are written create-only, so a
//! pack id names exactly one content forever and geo-replication can copy packs by name.
//!
//! # Memory
//!
//! [`PackWriter`] holds at most `1 + UPLOADS_IN_FLIGHT` packs in memory: the one filling and
//! up to [`UPLOADS_IN_FLIGHT`] full ones uploading in the background (their writes and, on a
//! local folder, their fsyncs overlap: one pack's flush latency hides another's). A full pack
//! waits for the oldest upload when that many are running, which gives natural back-pressure
//! to the producer. Readers
//! ([`read_chunk`], [`read_pack_index`]) use range reads only; a whole pack is never fetched.

use std::collections::HashSet;

use bytes::Bytes;

use crate::chunk::{ChunkError, ChunkId, SealedChunk, open_chunk_bytes};
use crate::crypto::ChunkKeys;
use crate::error::{Error, ErrorKind};
use crate::layout::{self, BlobKey};
use crate::store::{BlobStore, CreateOutcome};

/// Packs a [`PackWriter`] uploads at once. Two, not four: on a quiet machine four made a full
/// transfer 8% faster (vault-bench, 1 GiB: 1833 against 1678 MiB/s) but put a worker that
/// resumes a killed transfer past its 128 MiB budget in a debug build (120–139 MiB against
/// 106–117; `a_transfer_killed_midway_resumes_without_duplicates_in_bounded_memory`).
pub const UPLOADS_IN_FLIGHT: usize = 2;

/// Default size a pack is filled to before it is uploaded.
pub const DEFAULT_PACK_TARGET: usize = 16 << 20;

/// Smallest accepted pack target (tests use small packs; production should not go this low).
pub const MIN_PACK_TARGET: usize = 4 << 10;

const PACK_MAGIC: &[u8; 8] = b"STWPACK1";
const TRAILER_MAGIC: &[u8; 8] = b"STWPEND1";
const INDEX_ENTRY_LEN: usize = ChunkId::LEN + 8 + 4;
/// Bytes of the fixed trailer at the end of every pack.
pub const TRAILER_LEN: usize = 8 + 4 + 32 + 8;

/// The id of a pack: 64 lower-case hex digits (BLAKE3 of its content).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct PackId(String);

impl PackId {
    fn of_content(content: &[u8]) -> Self {
        Self(blake3::hash(content).to_hex().to_string())
    }

    /// The id of pack number `seq` written by the job `job_key`. Deterministic, so that a
    /// redelivered job can find the packs an interrupted attempt already uploaded (see
    /// [`PackNaming::Job`]).
    pub fn for_job(job_key: &str, seq: u64) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key("stowage pack id for job v1");
        hasher.update(job_key.as_bytes());
        hasher.update(&seq.to_le_bytes());
        Self(hasher.finalize().to_hex().to_string())
    }

    /// A pack id from text, e.g. read from an index; `None` unless it is 64 lower-case hex digits.
    pub fn parse(text: &str) -> Option<Self> {
        (text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Self(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key the pack is stored under.
    pub fn key(&self) -> BlobKey {
        layout::pack(&self.0).expect("a pack id is always valid hex")
    }
}

fmt_as_inner_text!(PackId);

/// Where a chunk sits inside its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// The chunk.
    pub chunk: ChunkId,
    /// Byte offset of the sealed chunk in the pack.
    pub offset: u64,
    /// Length of the sealed chunk.
    pub length: u32,
}

/// Where a chunk sits in the vault: its pack and its place in that pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLocation {
    /// The pack that holds it.
    pub pack: PackId,
    /// Byte offset of the sealed chunk in the pack.
    pub offset: u64,
    /// Length of the sealed chunk.
    pub length: u32,
}

/// A pack that [`PackWriter`] uploaded.
#[derive(Debug, Clone)]
pub struct WrittenPack {
    /// Its id.
    pub id: PackId,
    /// Its key.
    pub key: BlobKey,
    /// Total size in bytes.
    pub size: u64,
    /// The chunks it holds.
    pub entries: Vec<PackEntry>,
    /// False if an identical pack was already stored (a retried upload).
    pub newly_created: bool,
}

impl WrittenPack {
    /// Each chunk of the pack with its location, for recording in a chunk index.
    pub fn locations(&self) -> impl Iterator<Item = (ChunkId, ChunkLocation)> + '_ {
        self.entries.iter().map(|entry| {
            (
                entry.chunk,
                ChunkLocation {
                    pack: self.id.clone(),
                    offset: entry.offset,
                    length: entry.length,
                },
            )
        })
    }
}

/// The pack failures, with the texts operators see.
impl Error {
    fn corrupt_pack_index(pack_key: &BlobKey, reason: &str) -> Self {
        Self::new(
            ErrorKind::Damaged,
            format!(
                "the index of pack {pack_key} is corrupt: {reason}; its chunks can only be found \
                 through another index; restore the pack from the secondary tier"
            ),
        )
    }
}

/// How a [`PackWriter`] names the packs it uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackNaming {
    /// BLAKE3 of the pack's bytes.
    Content,
    /// `PackId::for_job(job_key, seq)` for seq = `next_seq`, `next_seq + 1`, … in the order the
    /// packs fill. A job that is redelivered after a crash probes these names to find what it
    /// already uploaded, so it never stores the same chunks twice; up to [`UPLOADS_IN_FLIGHT`]
    /// upload at once, so a crash can leave a gap of fewer than that many numbers, which the
    /// probe steps over. If a name is taken (two workers ran the same job at once), the pack is
    /// named by its content instead: correct, at the cost of one duplicate pack.
    Job {
        /// Stable identity of the job.
        job_key: String,
        /// Sequence number of the next pack.
        next_seq: u64,
    },
}

/// Streams sealed chunks into packs of about `target` bytes, uploading each as it fills.
#[derive(Debug)]
pub struct PackWriter {
    store: BlobStore,
    naming: PackNaming,
    /// Full packs uploading while the next one fills, oldest first (at most
    /// [`UPLOADS_IN_FLIGHT`]).
    pending: std::collections::VecDeque<tokio::task::JoinHandle<Result<WrittenPack, Error>>>,
    target: usize,
    buffer: Vec<u8>,
    entries: Vec<PackEntry>,
    chunks_in_buffer: HashSet<ChunkId>,
}

impl PackWriter {
    /// A writer filling packs to about `target` bytes (see [`DEFAULT_PACK_TARGET`]).
    pub fn new(store: BlobStore, target: usize) -> Result<Self, Error> {
        if target < MIN_PACK_TARGET {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "pack target of {target} bytes is below the minimum of {MIN_PACK_TARGET}; \
                     the default is 16 MiB"
                ),
            ));
        }
        Ok(Self {
            store,
            naming: PackNaming::Content,
            pending: std::collections::VecDeque::new(),
            target,
            buffer: Vec::new(),
            entries: Vec::new(),
            chunks_in_buffer: HashSet::new(),
        })
    }

    /// The same writer, naming packs as `naming` says.
    pub fn with_naming(mut self, naming: PackNaming) -> Self {
        self.naming = naming;
        self
    }

    /// Bytes currently held in memory for the pack being filled.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Whether `chunk` is already in the pack being filled (and so need not be sealed again).
    pub fn holds(&self, chunk: &ChunkId) -> bool {
        self.chunks_in_buffer.contains(chunk)
    }

    /// Adds a chunk. If it would push the current pack past the target, that pack starts
    /// uploading in the background; when [`UPLOADS_IN_FLIGHT`] were already uploading, the
    /// oldest of them is waited for and returned once stored. A chunk already in the current
    /// pack is skipped.
    pub async fn add(&mut self, chunk: SealedChunk) -> Result<Option<WrittenPack>, Error> {
        if self.chunks_in_buffer.contains(&chunk.id) {
            return Ok(None);
        }
        let projected = self.buffer.len()
            + chunk.bytes.len()
            + (self.entries.len() + 1) * INDEX_ENTRY_LEN
            + TRAILER_LEN;
        let flushed = if !self.entries.is_empty() && projected > self.target {
            self.flush().await?
        } else {
            None
        };
        if self.buffer.is_empty() {
            self.buffer.reserve(self.target.min(DEFAULT_PACK_TARGET));
            self.buffer.extend_from_slice(PACK_MAGIC);
        }
        let length = u32::try_from(chunk.bytes.len()).expect("a sealed chunk is far below 4 GiB");
        self.entries.push(PackEntry {
            chunk: chunk.id,
            offset: self.buffer.len() as u64,
            length,
        });
        self.buffer.extend_from_slice(&chunk.bytes);
        self.chunks_in_buffer.insert(chunk.id);
        Ok(flushed)
    }

    /// Uploads the last, partly filled pack, and waits for every upload: the packs stored since
    /// the last [`PackWriter::add`] that returned one, oldest first.
    pub async fn finish(mut self) -> Result<Vec<WrittenPack>, Error> {
        let mut written = Vec::new();
        if !self.entries.is_empty() {
            written.extend(self.flush().await?);
        }
        while let Some(done) = self.wait_oldest().await? {
            written.push(done);
        }
        Ok(written)
    }

    /// Waits for the oldest upload, if any.
    async fn wait_oldest(&mut self) -> Result<Option<WrittenPack>, Error> {
        let Some(upload) = self.pending.pop_front() else {
            return Ok(None);
        };
        let written = upload.await.map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("a pack upload task failed: {e}"),
            )
        })??;
        Ok(Some(written))
    }

    /// Seal the current pack and start uploading it; when [`UPLOADS_IN_FLIGHT`] are running,
    /// first waits for the oldest and returns it.
    async fn flush(&mut self) -> Result<Option<WrittenPack>, Error> {
        let previous = if self.pending.len() >= UPLOADS_IN_FLIGHT {
            self.wait_oldest().await?
        } else {
            None
        };
        let mut pack = std::mem::take(&mut self.buffer);
        let entries = std::mem::take(&mut self.entries);
        self.chunks_in_buffer.clear();

        let index_offset = pack.len() as u64;
        let index_start = pack.len();
        for entry in &entries {
            pack.extend_from_slice(entry.chunk.as_bytes());
            pack.extend_from_slice(&entry.offset.to_le_bytes());
            pack.extend_from_slice(&entry.length.to_le_bytes());
        }
        let index_checksum = blake3::hash(&pack[index_start..]);
        pack.extend_from_slice(&index_offset.to_le_bytes());
        let count = u32::try_from(entries.len()).expect("a pack holds far fewer than 4G chunks");
        pack.extend_from_slice(&count.to_le_bytes());
        pack.extend_from_slice(index_checksum.as_bytes());
        pack.extend_from_slice(TRAILER_MAGIC);

        let name = match &mut self.naming {
            PackNaming::Content => None,
            PackNaming::Job { job_key, next_seq } => {
                let id = PackId::for_job(job_key, *next_seq);
                *next_seq += 1;
                Some(id)
            }
        };
        let upload = upload(self.store.clone(), name, Bytes::from(pack), entries);
        self.pending.push_back(tokio::spawn(upload));
        Ok(previous)
    }
}

/// Store one sealed pack under `name` (a job's numbered name), or under its content's hash when
/// there is none or the name is taken (the same job ran twice at once).
async fn upload(
    store: BlobStore,
    name: Option<PackId>,
    pack: Bytes,
    entries: Vec<PackEntry>,
) -> Result<WrittenPack, Error> {
    let size = pack.len() as u64;
    let mut outcome = None;
    if let Some(id) = name {
        match store.put_create_only(&id.key(), pack.clone()).await? {
            CreateOutcome::AlreadyExists => {
                tracing::warn!(pack = %id, "pack name taken: the same job ran twice at once; naming this one by its content");
            }
            created => outcome = Some((id, created)),
        }
    }
    let (id, outcome) = match outcome {
        Some(done) => done,
        None => {
            let id = PackId::of_content(&pack);
            let outcome = store.put_create_only(&id.key(), pack).await?;
            (id, outcome)
        }
    };
    let key = id.key();
    tracing::debug!(pack = %id, size, chunks = entries.len(), "pack uploaded");
    Ok(WrittenPack {
        id,
        key,
        size,
        entries,
        newly_created: matches!(outcome, CreateOutcome::Created(_)),
    })
}

/// Reads, verifies and decrypts one chunk with a single range read of its pack.
pub async fn read_chunk(
    store: &BlobStore,
    keys: &ChunkKeys,
    chunk: &ChunkId,
    location: &ChunkLocation,
) -> Result<Vec<u8>, Error> {
    read_chunk_bytes(store, keys, chunk, location)
        .await
        .map(Vec::from)
}

/// [`read_chunk`], decrypting in the buffer the range read returned: a chunk stored raw comes
/// back as a slice of that buffer, without a copy (what hydration streams to disk).
pub async fn read_chunk_bytes(
    store: &BlobStore,
    keys: &ChunkKeys,
    chunk: &ChunkId,
    location: &ChunkLocation,
) -> Result<Bytes, Error> {
    let key = location.pack.key();
    let end = location.offset + u64::from(location.length);
    let sealed = store.get_range(&key, location.offset..end).await?;
    open_chunk_bytes(keys, chunk, sealed).map_err(|error| match error {
        ChunkError::Corrupt { chunk, reason } => Error::new(
            ErrorKind::Damaged,
            format!(
                "chunk {chunk} in pack {key} is corrupt: {reason}; restore from the secondary \
                 tier, or re-run the vault transfer that stored it"
            ),
        )
        .with_corruption(reason),
        other => other.into(),
    })
}

/// Reads a pack's index from its trailer (two range reads, plus a `head` for the size), and
/// checks that every entry lies inside the pack's chunk area without overlapping another.
pub async fn read_pack_index(store: &BlobStore, pack: &PackId) -> Result<Vec<PackEntry>, Error> {
    let key = pack.key();
    let corrupt = |reason: String| Error::corrupt_pack_index(&key, &reason);
    let size = store.head(&key).await?.size;
    let minimum = (PACK_MAGIC.len() + TRAILER_LEN) as u64;
    if size < minimum {
        return Err(corrupt(format!(
            "the pack is {size} bytes, shorter than an empty pack ({minimum})"
        )));
    }
    let trailer = store
        .get_range(&key, size - TRAILER_LEN as u64..size)
        .await?;
    if &trailer[TRAILER_LEN - 8..] != TRAILER_MAGIC {
        return Err(corrupt("the trailer's magic bytes are wrong".into()));
    }
    let index_offset = u64::from_le_bytes(trailer[0..8].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(trailer[8..12].try_into().expect("4 bytes")) as u64;
    let checksum: [u8; 32] = trailer[12..44].try_into().expect("32 bytes");
    let index_end = size - TRAILER_LEN as u64;
    let expected_index_len = count * INDEX_ENTRY_LEN as u64;
    if index_offset < PACK_MAGIC.len() as u64
        || index_offset > index_end
        || index_end - index_offset != expected_index_len
    {
        return Err(corrupt(format!(
            "the trailer places {count} entries at offset {index_offset}, which does not fit a \
             {size}-byte pack"
        )));
    }
    let index = store.get_range(&key, index_offset..index_end).await?;
    if blake3::hash(&index).as_bytes() != &checksum {
        return Err(corrupt("the index does not match its checksum".into()));
    }
    let mut entries = Vec::with_capacity(count as usize);
    let mut next_free = PACK_MAGIC.len() as u64;
    for raw in index.chunks_exact(INDEX_ENTRY_LEN) {
        let chunk = ChunkId::from_bytes(raw[..32].try_into().expect("32 bytes"));
        let offset = u64::from_le_bytes(raw[32..40].try_into().expect("8 bytes"));
        let length = u32::from_le_bytes(raw[40..44].try_into().expect("4 bytes"));
        if offset < next_free || offset + u64::from(length) > index_offset {
            return Err(corrupt(format!(
                "entry for chunk {chunk} at {offset}+{length} overlaps another entry or the index"
            )));
        }
        next_free = offset + u64::from(length);
        entries.push(PackEntry {
            chunk,
            offset,
            length,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::seal_chunk;
    use crate::crypto::VaultKey;
    use crate::store::LocalDurability;
    use crate::store::tests::TempFolder;
    use futures::TryStreamExt;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use std::collections::HashMap;

    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut data = vec![0u8; len];
        StdRng::seed_from_u64(seed).fill_bytes(&mut data);
        data
    }

    /// Writes `count` random chunks of `chunk_len` bytes; returns plaintexts, locations and packs.
    async fn write_chunks(
        store: &BlobStore,
        keys: &ChunkKeys,
        count: u64,
        chunk_len: usize,
        target: usize,
    ) -> (HashMap<ChunkId, (Vec<u8>, ChunkLocation)>, Vec<WrittenPack>) {
        let mut writer = PackWriter::new(store.clone(), target).unwrap();
        let mut plaintexts = HashMap::new();
        let mut packs = Vec::new();
        for seed in 0..count {
            let data = random_bytes(chunk_len, seed);
            let sealed = seal_chunk(keys, &data).unwrap();
            plaintexts.insert(sealed.id, data);
            if let Some(pack) = writer.add(sealed).await.unwrap() {
                packs.push(pack);
            }
            assert!(writer.buffered_bytes() <= target + chunk_len + 64);
        }
        packs.extend(writer.finish().await.unwrap());
        let mut located = HashMap::new();
        for pack in &packs {
            for (chunk, location) in pack.locations() {
                let data = plaintexts.remove(&chunk).expect("each chunk packed once");
                located.insert(chunk, (data, location));
            }
        }
        assert!(plaintexts.is_empty(), "every chunk was packed");
        (located, packs)
    }

    /// `count` chunks of `chunk_len` bytes in one pack in a local folder, whose file (at `path`)
    /// a test can damage; the folder is removed when `_folder` is dropped.
    struct PackOnDisk {
        _folder: TempFolder,
        store: BlobStore,
        keys: ChunkKeys,
        located: HashMap<ChunkId, (Vec<u8>, ChunkLocation)>,
        pack: WrittenPack,
        path: std::path::PathBuf,
    }

    async fn pack_on_disk(purpose: &str, count: u64, chunk_len: usize) -> PackOnDisk {
        let folder = TempFolder::new(purpose);
        let store = BlobStore::local_folder(&folder.0, LocalDurability::OsBuffered).unwrap();
        let keys = VaultKey::generate().unwrap().chunk_keys();
        let (located, mut packs) = write_chunks(&store, &keys, count, chunk_len, 1 << 20).await;
        assert_eq!(packs.len(), 1);
        let pack = packs.remove(0);
        let path = folder.0.join(pack.key.as_str());
        PackOnDisk {
            _folder: folder,
            store,
            keys,
            located,
            pack,
            path,
        }
    }

    #[tokio::test]
    async fn chunks_round_trip_through_packs_of_bounded_size() {
        let store = BlobStore::in_memory();
        let keys = VaultKey::generate().unwrap().chunk_keys();
        let target = 64 << 10;
        let (located, packs) = write_chunks(&store, &keys, 40, 10_000, target).await;
        assert!(packs.len() >= 6, "{} packs", packs.len());
        for pack in &packs {
            assert!(pack.size as usize <= target, "{} > {target}", pack.size);
            assert!(pack.newly_created);
            assert_eq!(store.head(&pack.key).await.unwrap().size, pack.size);
            assert_eq!(
                read_pack_index(&store, &pack.id).await.unwrap(),
                pack.entries
            );
        }
        for (chunk, (data, location)) in &located {
            assert_eq!(
                &read_chunk(&store, &keys, chunk, location).await.unwrap(),
                data
            );
        }
        let listed: Vec<_> = store.list(&layout::packs()).try_collect().await.unwrap();
        assert_eq!(listed.len(), packs.len());
    }

    #[tokio::test]
    async fn job_packs_upload_concurrently_numbered_in_fill_order_and_a_taken_name_falls_back_to_content()
     {
        let store = BlobStore::in_memory();
        let keys = VaultKey::generate().unwrap().chunk_keys();
        // Number 2 is taken (the same job ran twice at once): that pack is named by content.
        let taken = PackId::for_job("job-a", 2);
        store
            .put_create_only(&taken.key(), Bytes::from_static(b"another attempt's pack"))
            .await
            .unwrap();
        let mut writer = PackWriter::new(store.clone(), MIN_PACK_TARGET)
            .unwrap()
            .with_naming(PackNaming::Job {
                job_key: "job-a".into(),
                next_seq: 0,
            });
        let mut packs = Vec::new();
        for seed in 0..(UPLOADS_IN_FLIGHT as u64 + 4) {
            let sealed = seal_chunk(&keys, &random_bytes(3000, seed)).unwrap();
            packs.extend(writer.add(sealed).await.unwrap());
            assert!(writer.pending.len() <= UPLOADS_IN_FLIGHT);
        }
        packs.extend(writer.finish().await.unwrap());
        assert_eq!(packs.len(), UPLOADS_IN_FLIGHT + 4, "one chunk per pack");
        for (n, pack) in packs.iter().enumerate() {
            if n == 2 {
                assert_eq!(
                    pack.id,
                    PackId::of_content(&store.get(&pack.key).await.unwrap().bytes)
                );
            } else {
                assert_eq!(pack.id, PackId::for_job("job-a", n as u64), "pack {n}");
            }
            assert!(pack.newly_created);
            assert_eq!(
                read_pack_index(&store, &pack.id).await.unwrap(),
                pack.entries
            );
        }
    }

    #[tokio::test]
    async fn a_chunk_larger_than_the_target_gets_a_pack_of_its_own() {
        let store = BlobStore::in_memory();
        let keys = VaultKey::generate().unwrap().chunk_keys();
        let (located, packs) = write_chunks(&store, &keys, 3, 20_000, MIN_PACK_TARGET).await;
        assert_eq!(packs.len(), 3);
        assert_eq!(located.len(), 3);
    }

    #[tokio::test]
    async fn duplicate_chunks_in_one_pack_are_stored_once() {
        let store = BlobStore::in_memory();
        let keys = VaultKey::generate().unwrap().chunk_keys();
        let mut writer = PackWriter::new(store.clone(), DEFAULT_PACK_TARGET).unwrap();
        let sealed = seal_chunk(&keys, b"repeated block").unwrap();
        assert!(!writer.holds(&sealed.id));
        writer.add(sealed.clone()).await.unwrap();
        assert!(writer.holds(&sealed.id));
        writer
            .add(seal_chunk(&keys, b"repeated block").unwrap())
            .await
            .unwrap();
        let pack = writer.finish().await.unwrap().pop().unwrap();
        assert_eq!(pack.entries.len(), 1);
    }

    #[tokio::test]
    async fn an_empty_writer_uploads_nothing_and_tiny_targets_are_refused() {
        let store = BlobStore::in_memory();
        let writer = PackWriter::new(store.clone(), DEFAULT_PACK_TARGET).unwrap();
        assert!(writer.finish().await.unwrap().is_empty());
        let refused = PackWriter::new(store, 100).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::InvalidInput, "{refused}");
        assert!(
            refused.to_string().contains("pack target of 100 bytes"),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn a_flipped_byte_in_a_pack_is_detected_and_names_chunk_and_pack() {
        let PackOnDisk {
            _folder,
            store,
            keys,
            located,
            pack,
            path,
        } = pack_on_disk("pack-flip", 8, 3000).await;
        let victim = pack.entries[3];

        // Flip one byte in the middle of the victim's ciphertext, directly on disk.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(victim.offset + u64::from(victim.length) / 2) as usize] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();

        let (_, location) = &located[&victim.chunk];
        let error = read_chunk(&store, &keys, &victim.chunk, location)
            .await
            .unwrap_err();
        let message = error.to_string();
        assert!(
            error.kind() == ErrorKind::Damaged && error.corruption().is_some(),
            "{message}"
        );
        assert!(message.contains(&victim.chunk.to_string()), "{message}");
        assert!(message.contains(pack.key.as_str()), "{message}");

        // Its neighbours are intact and still readable.
        for entry in pack.entries.iter().filter(|e| e.chunk != victim.chunk) {
            let (data, location) = &located[&entry.chunk];
            assert_eq!(
                &read_chunk(&store, &keys, &entry.chunk, location)
                    .await
                    .unwrap(),
                data
            );
        }
    }

    #[tokio::test]
    async fn a_damaged_index_or_trailer_is_detected() {
        let PackOnDisk {
            _folder,
            store,
            pack,
            path,
            ..
        } = pack_on_disk("pack-index", 4, 1000).await;
        let original = std::fs::read(&path).unwrap();
        let len = original.len();
        let index_start = len - TRAILER_LEN - 4 * INDEX_ENTRY_LEN;
        for position in [index_start + 5, len - TRAILER_LEN + 2, len - 1] {
            let mut damaged = original.clone();
            damaged[position] ^= 0x01;
            std::fs::write(&path, &damaged).unwrap();
            let error = read_pack_index(&store, &pack.id).await.unwrap_err();
            assert_eq!(error.kind(), ErrorKind::Damaged, "{error}");
            assert!(error.to_string().contains(pack.key.as_str()), "{error}");
        }
        std::fs::write(&path, &original[..10]).unwrap();
        let error = read_pack_index(&store, &pack.id).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Damaged, "{error}");
    }

    #[tokio::test]
    async fn a_missing_pack_is_a_store_error_naming_it() {
        let store = BlobStore::in_memory();
        let keys = VaultKey::generate().unwrap().chunk_keys();
        let pack = PackId::parse(&"ab".repeat(32)).unwrap();
        let location = ChunkLocation {
            pack: pack.clone(),
            offset: 8,
            length: 100,
        };
        let error = read_chunk(&store, &keys, &keys.chunk_id(b"x"), &location)
            .await
            .unwrap_err();
        assert!(error.is_not_found(), "{error}");
        assert!(error.to_string().contains(pack.key().as_str()));
        assert!(PackId::parse("AB").is_none());
    }
}
