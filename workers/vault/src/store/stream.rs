//! Streaming create-only writes and copies.
//!
//! Objects that grow with the cluster or the data (the resources object of a recovery point, a
//! pack being replicated) are written with [`BlobStore::put_stream_create_only`] and copied
//! between stores with [`BlobStore::copy_create_only`]; neither holds the whole object.
//!
//! Objects that grow with the cluster or the data (the resources object of a recovery point, a
//! pack being replicated) are written with [`BlobStore::put_stream_create_only`] and copied
//! between stores with [`BlobStore::copy_create_only`]; neither holds the whole object.
//!
//! No backend can make a *multipart* upload conditional (object_store's `PutMultipartOptions`
//! has no mode), so a streamed object is published in two steps:
//!
//! 1. The stream is uploaded with `put_multipart` in parts of [`STREAM_PART_BYTES`], at most
//!    [`STREAM_PARTS_IN_FLIGHT`] parts uploading at once, to a **temporary key**
//!    `.stowage-tmp/<32 hex digits>` ([`crate::layout::stream_temp`]) (unique per write: a hash of the key, the process, the time
//!    and a per-process random seed). That folder is at the top of the vault, beside
//!    [`crate::layout::LOCAL_LOCK_DIR`]: its leading `.` makes it unnameable through [`crate::layout`], and every
//!    listing the fleet does is under a layout prefix, so no listing ever sees a temporary object.
//! 2. The temporary object is copied to the real key with `copy_opts` in `CopyMode::Create`
//!    (local folder: a hard link, which fails if the name exists; Azure: Copy Blob with
//!    `If-None-Match: *`; in-memory: checked under its lock). An existing key is
//!    [`CreateOutcome::AlreadyExists`] and is left untouched. Then the temporary object is
//!    deleted — also when anything failed, and (from a spawned task) when the write is
//!    cancelled; a worker killed in between can leave one behind under `.stowage-tmp/`, which
//!    is garbage by definition and safe to delete once no write is running.
//!
//! A stream that ends within its first part skips all that: one ordinary create-only put, so
//! small objects cost one request as before. Memory per streamed write is about
//! `(STREAM_PARTS_IN_FLIGHT + 1) × STREAM_PART_BYTES`, whatever the object's size.
//!
//! Azure's Copy Blob may in principle finish asynchronously (`x-ms-copy-status: pending`), which
//! object_store does not report. A copy inside one storage account — the only kind done here,
//! since both keys are in the same container — completes within the request in practice (and
//! always on Azurite); the temporary object is deleted only after the copy request returned.
//!

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{CopyMode, CopyOptions, ObjectStore, ObjectStoreExt, WriteMultipart};

use super::{BlobStore, CreateOutcome, ObjectVersion, to_path};
use crate::error::{Error, ErrorKind};
use crate::layout::{self, BlobKey};

/// Size of one part of a streamed write. 5 MiB is the smallest part S3 accepts and well within
/// Azure's block limits (50 000 blocks, so objects up to about 240 GiB).
pub const STREAM_PART_BYTES: usize = 5 << 20;

/// Parts of one streamed write that upload at once; the producer waits beyond that, so a
/// streamed write holds about `(STREAM_PARTS_IN_FLIGHT + 1) × STREAM_PART_BYTES`.
pub const STREAM_PARTS_IN_FLIGHT: usize = 2;

impl Error {
    /// The content of a streamed write could not be produced, so the object was not created.
    /// Transient if the producer is itself a store (a copy) that failed transiently.
    fn source_failed(
        backend: &str,
        key: &BlobKey,
        source: Box<dyn std::error::Error + Send + Sync>,
    ) -> Self {
        let transient = source
            .downcast_ref::<Error>()
            .is_some_and(Error::is_transient);
        Self::new(
            ErrorKind::Source,
            format!(
                "writing {key} to {backend} stopped because its content could not be produced: \
                 {source}; nothing was created under that key; fix what produces the content and \
                 write again"
            ),
        )
        .with_source(source)
        .with_transient(transient)
    }
}

/// Streaming writes and copies (see the module doc).
impl BlobStore {
    /// Writes the bytes of `chunks`, in order, under `key` unless the key exists, without ever
    /// holding the whole object: memory stays at about `(STREAM_PARTS_IN_FLIGHT + 1) ×
    /// STREAM_PART_BYTES` whatever the object's size. An existing object is left untouched and
    /// reported as [`CreateOutcome::AlreadyExists`] (the rest of `chunks` is then not read).
    ///
    /// If `chunks` yields an error, nothing is created under `key` and the answer is
    /// [`Error::Source`] with that error. A stream that simply ends is the whole content,
    /// so a producer that can stop early must report that as an error, not just end.
    pub async fn put_stream_create_only<S, E>(
        &self,
        key: &BlobKey,
        chunks: S,
    ) -> Result<CreateOutcome, Error>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let chunks = chunks.map(|item| {
            item.map_err(|source| Error::source_failed(&self.description, key, source.into()))
        });
        self.put_plaintext_stream(key, chunks).await
    }

    /// Copies the object `key` of this store to the same key in `to`, create-only, streaming:
    /// the object is never held whole (see [`Self::put_stream_create_only`]). Within one store
    /// (`to` is this store or a clone of it) the backend copies it without the bytes passing
    /// through this process. An existing object in `to` is left untouched and reported as
    /// [`CreateOutcome::AlreadyExists`].
    pub async fn copy_create_only(
        &self,
        to: &BlobStore,
        key: &BlobKey,
    ) -> Result<CreateOutcome, Error> {
        self.copy_to_key_create_only(key, to, key).await
    }

    /// Like [`Self::copy_create_only`], to another key `to_key` of `to` (which may be this
    /// store), such as a staging copy of a resources object. A sealed object is bound to its key
    /// (see [`crate::seal`]), so a copy to another key is opened and sealed again for it on the
    /// way (authenticating every segment; streamed, never held whole), which needs the vault key
    /// in both stores; a sealed object is never copied to a key that is not sealed.
    pub async fn copy_to_key_create_only(
        &self,
        from_key: &BlobKey,
        to: &BlobStore,
        to_key: &BlobKey,
    ) -> Result<CreateOutcome, Error> {
        if from_key != to_key && (layout::is_sealed(from_key) || layout::is_sealed(to_key)) {
            if !layout::is_sealed(to_key) {
                return Err(Error::unsealing_copy(from_key, to_key));
            }
            let content = self.read_windows(from_key).await?.into_stream();
            return to.put_plaintext_stream(to_key, content).await;
        }
        let from_path = to_path(from_key.as_str());
        if Arc::ptr_eq(&self.inner, &to.inner) {
            if from_key == to_key {
                return Ok(CreateOutcome::AlreadyExists);
            }
            // Make a missing source a NotFound naming it, not an error about the target.
            self.head(from_key).await?;
            return to
                .publish_copy(&from_path, to_key, || async {
                    to.version_of_stored(to_key).await
                })
                .await;
        }
        let read_error = |source| self.backend_error("read (to copy)", from_key.as_str(), source);
        let chunks = self
            .inner
            .get(&from_path)
            .await
            .map_err(read_error)?
            .into_stream()
            .map(move |item| item.map_err(read_error));
        to.put_stream(to_key, chunks).await
    }

    /// The streamed write behind [`Self::put_stream_create_only`] and
    /// [`Self::copy_to_key_create_only`], of bytes as they are to be stored; errors of `chunks`
    /// are returned as they are.
    pub(super) async fn put_stream<S>(
        &self,
        key: &BlobKey,
        chunks: S,
    ) -> Result<CreateOutcome, Error>
    where
        S: futures::Stream<Item = Result<Bytes, Error>> + Send,
    {
        let mut chunks = std::pin::pin!(chunks);
        // The first part: an object that fits in it takes one ordinary create-only put.
        let mut first: Vec<Bytes> = Vec::new();
        let mut first_len = 0usize;
        while first_len < STREAM_PART_BYTES {
            match chunks.next().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    first_len += chunk.len();
                    first.push(chunk);
                }
                None => {
                    let whole = match first.len() {
                        1 => first.pop().unwrap_or_default(),
                        _ => Bytes::from(first.concat()),
                    };
                    return self.put_raw_create_only(key, whole).await;
                }
            }
        }
        // A large object: do not upload it at all if the key is taken (a redelivery).
        match self.head(key).await {
            Ok(_) => return Ok(CreateOutcome::AlreadyExists),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }

        let temp = TempObject::new(self.inner.clone(), temp_path(key));
        let upload = self
            .inner
            .put_multipart(&temp.path)
            .await
            .map_err(|e| self.temp_error("start the upload of", key, &temp.path, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, STREAM_PART_BYTES);
        let mut hasher = self.cas.content_hasher();
        let fed: Result<(), Error> = async {
            let rest = futures::stream::iter(first.into_iter().map(Ok)).chain(chunks);
            let mut rest = std::pin::pin!(rest);
            while let Some(chunk) = rest.next().await {
                let chunk = chunk?;
                writer
                    .wait_for_capacity(STREAM_PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| self.temp_error("upload a part of", key, &temp.path, e))?;
                if let Some(hasher) = hasher.as_mut() {
                    hasher.update(&chunk);
                }
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        if let Err(error) = fed {
            if let Err(abort) = writer.abort().await {
                tracing::debug!(%key, error = %abort, "aborting a failed streamed upload failed");
            }
            temp.remove().await;
            return Err(error);
        }
        if let Err(e) = writer.finish().await {
            let error = self.temp_error("complete the upload of", key, &temp.path, e);
            temp.remove().await;
            return Err(error);
        }
        let outcome = self
            .publish_copy(&temp.path, key, || async {
                match hasher {
                    Some(hasher) => Ok(ObjectVersion::hashed(hasher.finalize())),
                    None => self.version_of_stored(key).await,
                }
            })
            .await;
        temp.remove().await;
        outcome
    }

    /// Copies `from` to `key` in this store unless `key` exists; `version` names what was
    /// created.
    pub(super) async fn publish_copy<F, Fut>(
        &self,
        from: &ObjectPath,
        key: &BlobKey,
        version: F,
    ) -> Result<CreateOutcome, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<ObjectVersion, Error>>,
    {
        let options = CopyOptions::new().with_mode(CopyMode::Create);
        match self
            .inner
            .copy_opts(from, &to_path(key.as_str()), options)
            .await
        {
            Ok(()) => Ok(CreateOutcome::Created(version().await?)),
            // `If-None-Match: *` refused: the key exists.
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(CreateOutcome::AlreadyExists),
            Err(source) => Err(self.backend_error("create (by copy)", key.as_str(), source)),
        }
    }

    fn temp_error(
        &self,
        operation: &'static str,
        key: &BlobKey,
        temp: &ObjectPath,
        source: object_store::Error,
    ) -> Error {
        self.backend_error(operation, &format!("{key} (through {temp})"), source)
    }
}

/// A unique temporary key for a streamed write of `key` (see the module doc).
pub(super) fn temp_path(key: &BlobKey) -> ObjectPath {
    use std::hash::BuildHasher as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded randomly per process, so two hosts writing the same key at the same
    // nanosecond with the same pid and counter still get different names.
    let seed = std::collections::hash_map::RandomState::new().hash_one(key.as_str());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut hasher = blake3::Hasher::new();
    hasher.update(key.as_str().as_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(&nanos.to_le_bytes());
    hasher.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.update(&seed.to_le_bytes());
    let name = &hasher.finalize().to_hex()[..32];
    to_path(&layout::stream_temp(name))
}

/// The temporary object of a streamed write: deleted by [`TempObject::remove`], or from a
/// spawned task if the write is dropped (cancelled) before that.
struct TempObject {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    removed: bool,
}

impl TempObject {
    fn new(store: Arc<dyn ObjectStore>, path: ObjectPath) -> Self {
        Self {
            store,
            path,
            removed: false,
        }
    }

    /// Deletes the temporary object, best effort: a failure is logged, not returned, because
    /// the write's own outcome is what matters and a leftover is only wasted space.
    async fn remove(mut self) {
        self.removed = true;
        match self.store.delete(&self.path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => tracing::warn!(
                temp = %self.path,
                %error,
                "could not delete the temporary object of a streamed write; it is garbage and \
                 can be deleted by hand"
            ),
        }
    }
}

impl Drop for TempObject {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, path) = (self.store.clone(), self.path.clone());
            drop(runtime.spawn(async move {
                let _ = store.delete(&path).await;
            }));
        }
    }
}
