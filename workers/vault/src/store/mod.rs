//! Blob storage for a vault: one small API over `object_store`, with the two write disciplines
//! the fleet relies on.
//!
//! * **Create-only** ([`BlobStore::put_create_only`]) for everything content-addressed or
//!   immutable: packs, extent maps, manifests. A second write of the same key is not an error but
//!   [`CreateOutcome::AlreadyExists`], so a redelivered job simply reuses what an earlier delivery
//!   stored (rule 1, "at-least-once in, exactly-once effect").
//! * **Compare-and-swap** ([`BlobStore::update_if_unchanged`]) for records that change, such as job
//!   records: read with [`BlobStore::get`], change, write back naming the [`ObjectVersion`] that
//!   was read; if anyone wrote in between, the result is an [`Error`] of kind
//!   [`ErrorKind::Conflict`] and the caller re-reads and re-applies.
//!
//! # What each backend can do (object_store 0.14, read from its source)
//!
//! | backend | `PutMode::Create` | `PutMode::Update` (conditional update) |
//! |---|---|---|
//! | in-memory (`InMemory`) | yes | yes, by e-tag |
//! | Azure Blob (`MicrosoftAzure`, also Azurite) | yes (`If-None-Match: *`) | yes (`If-Match: <etag>`) |
//! | local folder (`LocalFileSystem`) | yes (publishes with a hard link, which fails if the name exists) | **no**: returns `NotImplemented` |
//!
//! So compare-and-swap comes in two kinds, [`Cas`]: the backend's native conditional update
//! (in-memory, Azure, any store given to [`BlobStore::from_object_store`]; a backend without one
//! answers [`ErrorKind::Unsupported`], never a silent overwrite), and, for the local folder (the
//! embedded default), an emulation under `flock` with content-hash versions, correct for one host
//! (see `store/local.rs`). The write paths of [`BlobStore`] do not know which one they use.
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | [`BlobStore`], its types, the plain reads and writes, native compare-and-swap |
//! | `local.rs` | the local folder and its flock compare-and-swap |
//! | `azure.rs` | Azure Blob (and Azurite), opening a vault by location text |
//! | `stream.rs` | streaming create-only writes and copies |
//!
//! # Bounded memory
//!
//! [`BlobStore::list`] is a stream: listings are never collected. [`BlobStore::get`] buffers one
//! object and is meant for manifests, maps and records; pack data is read with
//! [`BlobStore::get_range`]; objects that grow with the cluster are written and copied by
//! streaming ([`BlobStore::put_stream_create_only`], [`BlobStore::copy_create_only`]).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};

use crate::error::{Error, ErrorKind};
use crate::layout::{BlobKey, KeyPrefix};

mod azure;
mod local;
mod sealed;
mod stream;
mod temporaries;

pub use azure::{AzureConfig, create_azurite_container};
pub use local::{LOCAL_LOCK_STRIPES, LocalDurability};
pub use sealed::{WINDOW_BYTES, WINDOW_SEGMENTS, WindowReader};
pub use stream::{STREAM_PART_BYTES, STREAM_PARTS_IN_FLIGHT};
pub use temporaries::TemporaryObject;

pub use crate::layout::{LOCAL_LOCK_DIR, STREAM_TEMP_DIR};

/// The version of an object as read, to be handed back to [`BlobStore::update_if_unchanged`].
/// Opaque: it is only meaningful to the store that produced it.
#[derive(Clone, PartialEq, Eq)]
pub struct ObjectVersion(VersionToken);

#[derive(Clone, PartialEq, Eq)]
enum VersionToken {
    /// The backend's own e-tag / version id.
    Native {
        e_tag: Option<String>,
        version: Option<String>,
    },
    /// BLAKE3 of the content (local folder, see `store/local.rs`).
    ContentHash([u8; 32]),
}

impl ObjectVersion {
    fn native(e_tag: Option<String>, version: Option<String>) -> Self {
        Self(VersionToken::Native { e_tag, version })
    }

    fn content_hash(bytes: &[u8]) -> Self {
        Self::hashed(blake3::hash(bytes))
    }

    fn hashed(hash: blake3::Hash) -> Self {
        Self(VersionToken::ContentHash(*hash.as_bytes()))
    }
}

impl fmt::Debug for ObjectVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            VersionToken::Native { e_tag, version } => f
                .debug_struct("ObjectVersion")
                .field("e_tag", e_tag)
                .field("version", version)
                .finish(),
            VersionToken::ContentHash(hash) => {
                write!(
                    f,
                    "ObjectVersion(blake3:{})",
                    blake3::Hash::from(*hash).to_hex()
                )
            }
        }
    }
}

/// What a create-only write found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The object did not exist and now holds the bytes given.
    Created(ObjectVersion),
    /// An object with this key already existed and was left untouched. For content-addressed
    /// keys this means the work is already done.
    AlreadyExists,
}

/// A whole object, with the version to name in a later compare-and-swap.
#[derive(Debug, Clone)]
pub struct StoredObject {
    /// The content.
    pub bytes: Bytes,
    /// The version that was read.
    pub version: ObjectVersion,
}

/// What `head` and `list` report about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's key.
    pub key: BlobKey,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written (the garbage collector's age under a vault lock).
    pub modified: jiff::Timestamp,
}

impl ObjectInfo {
    fn of(key: BlobKey, meta: &object_store::ObjectMeta) -> Self {
        let modified = std::time::SystemTime::from(meta.last_modified);
        Self {
            key,
            size: meta.size,
            // A time jiff cannot hold is in no real listing; "just written" errs on keeping.
            modified: jiff::Timestamp::try_from(modified)
                .unwrap_or_else(|_| jiff::Timestamp::now()),
        }
    }
}

/// The blob-storage failures, with the texts operators see.
impl Error {
    fn not_found(backend: &str, key: &str) -> Self {
        Self::new(
            ErrorKind::NotFound,
            format!(
                "{key} does not exist in {backend}: it was never written or has been deleted; \
                 check the id, and whether retention removed it"
            ),
        )
    }

    fn conflict(backend: &str, key: &str) -> Self {
        Self::new(
            ErrorKind::Conflict,
            format!(
                "{key} in {backend} changed since it was read (compare-and-swap conflict); \
                 re-read it, re-apply the change and write again"
            ),
        )
    }

    fn cas_unsupported(backend: &str, key: &str, reason: &str) -> Self {
        Self::new(
            ErrorKind::Unsupported,
            format!(
                "{backend} cannot update {key} with compare-and-swap ({reason}); \
                 use the local-folder, in-memory or Azure backend for vaults with job records"
            ),
        )
    }

    fn range_out_of_bounds(backend: &str, key: &str, range: &Range<u64>, size: u64) -> Self {
        Self::new(
            ErrorKind::Damaged,
            format!(
                "range {}..{} of {key} in {backend} is outside the object ({size} bytes); \
                 the index that pointed there is stale or corrupt",
                range.start, range.end
            ),
        )
    }

    /// Any other backend failure; transient when object_store says the backend was unreachable.
    fn backend(operation: &str, backend: &str, key: &str, source: object_store::Error) -> Self {
        let kind = match source {
            object_store::Error::Generic { .. } | object_store::Error::JoinError { .. } => {
                ErrorKind::Unavailable
            }
            _ => ErrorKind::Storage,
        };
        Self::new(
            kind,
            format!(
                "{operation} {key} on {backend} failed: {source}; \
                 retry if the backend is unreachable, otherwise check its credentials and settings"
            ),
        )
        .with_source(source)
    }
}

/// A vault's blob storage: a local folder, an Azure container, or memory.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    cas: Arc<Cas>,
    description: Arc<str>,
    /// The vault's sealing keys, if this store was given the vault key (`store/sealed.rs`).
    seal: Option<Arc<crate::seal::SealKeys>>,
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStore")
            .field("backend", &self.description)
            .field("sealing_key_id", &self.sealing_key_id())
            .finish()
    }
}

impl fmt::Display for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

fn to_path(key: &str) -> ObjectPath {
    // Keys come from `layout` (validated components) or from listings, so they are always
    // well-formed paths; `from` (not `parse`) would percent-encode anything odd rather than fail.
    ObjectPath::from(key)
}

/// How a store names versions and does compare-and-swap: by the backend's native conditional
/// update, or by the local folder's emulation (`local::LocalFolderCas`). [`BlobStore`] looks at
/// it at the few points where the two differ, and nowhere else.
#[derive(Debug)]
enum Cas {
    /// The backend's own conditional update; versions are its e-tags.
    Native,
    /// flock per key stripe, content-hash versions (see `store/local.rs`).
    LocalFolder(local::LocalFolderCas),
}

impl Cas {
    /// The version of `bytes`, just created or read whole; `e_tag` and `version` are what the
    /// backend reported for them.
    fn version_of(
        &self,
        bytes: &[u8],
        e_tag: Option<String>,
        version: Option<String>,
    ) -> ObjectVersion {
        match self {
            Self::Native => ObjectVersion::native(e_tag, version),
            Self::LocalFolder(_) => ObjectVersion::content_hash(bytes),
        }
    }

    /// A hasher to feed a streamed write's content through, if versions are content hashes
    /// (then [`ObjectVersion::hashed`] of its result is the version of what was written).
    fn content_hasher(&self) -> Option<blake3::Hasher> {
        matches!(self, Self::LocalFolder(_)).then(blake3::Hasher::new)
    }

    /// The folder of a local-folder store (whose staged files listings hide); `None` otherwise.
    fn local_root(&self) -> Option<&std::path::Path> {
        match self {
            Self::Native => None,
            Self::LocalFolder(local) => local.root(),
        }
    }
}

impl BlobStore {
    /// An empty in-memory store, for unit tests.
    pub fn in_memory() -> Self {
        Self::with_cas(Arc::new(InMemory::new()), Cas::Native)
    }

    /// Wraps any object_store backend. Compare-and-swap uses its native conditional update and
    /// is refused ([`ErrorKind::Unsupported`]) if it has none.
    pub fn from_object_store(store: Arc<dyn ObjectStore>) -> Self {
        Self::with_cas(store, Cas::Native)
    }

    fn with_cas(inner: Arc<dyn ObjectStore>, cas: Cas) -> Self {
        let description = inner.to_string().into();
        Self {
            inner,
            cas: Arc::new(cas),
            description,
            seal: None,
        }
    }

    fn backend_error(&self, operation: &str, key: &str, source: object_store::Error) -> Error {
        match source {
            object_store::Error::NotFound { .. } => Error::not_found(&self.description, key),
            source => Error::backend(operation, &self.description, key, source),
        }
    }

    fn conflict(&self, key: &BlobKey) -> Error {
        Error::conflict(&self.description, key.as_str())
    }

    /// Writes `bytes` under `key` unless the key exists. An existing object is left untouched
    /// and reported as [`CreateOutcome::AlreadyExists`]. A key [`crate::layout::is_sealed`]
    /// names is sealed first (see `store/sealed.rs`).
    pub async fn put_create_only(
        &self,
        key: &BlobKey,
        bytes: impl Into<Bytes>,
    ) -> Result<CreateOutcome, Error> {
        let bytes = self.seal_for(key, bytes.into())?;
        self.put_raw_create_only(key, bytes).await
    }

    /// [`Self::put_create_only`] of bytes as they are to be stored.
    pub(crate) async fn put_raw_create_only(
        &self,
        key: &BlobKey,
        bytes: Bytes,
    ) -> Result<CreateOutcome, Error> {
        let options = PutOptions::from(PutMode::Create);
        match self
            .inner
            .put_opts(
                &to_path(key.as_str()),
                PutPayload::from(bytes.clone()),
                options,
            )
            .await
        {
            Ok(result) => Ok(CreateOutcome::Created(self.cas.version_of(
                &bytes,
                result.e_tag,
                result.version,
            ))),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(CreateOutcome::AlreadyExists),
            Err(source) => Err(self.backend_error("create", key.as_str(), source)),
        }
    }

    /// Reads a whole object with its version. For small objects (manifests, records, maps). A
    /// sealed key is opened (and authenticated); its version is that of the stored bytes.
    pub async fn get(&self, key: &BlobKey) -> Result<StoredObject, Error> {
        let stored = self.get_raw(key).await?;
        Ok(StoredObject {
            bytes: self.open_for(key, stored.bytes)?,
            version: stored.version,
        })
    }

    /// [`Self::get`] of the bytes as stored.
    pub(crate) async fn get_raw(&self, key: &BlobKey) -> Result<StoredObject, Error> {
        let result = self
            .inner
            .get(&to_path(key.as_str()))
            .await
            .map_err(|e| self.backend_error("get", key.as_str(), e))?;
        let (e_tag, version) = (result.meta.e_tag.clone(), result.meta.version.clone());
        let bytes = result
            .bytes()
            .await
            .map_err(|e| self.backend_error("get", key.as_str(), e))?;
        let version = self.cas.version_of(&bytes, e_tag, version);
        Ok(StoredObject { bytes, version })
    }

    /// Reads `range` of an object; fails with [`ErrorKind::Damaged`] rather than returning
    /// fewer bytes than asked for. Sealed keys are refused: read them with
    /// [`Self::read_windows`].
    pub async fn get_range(&self, key: &BlobKey, range: Range<u64>) -> Result<Bytes, Error> {
        if crate::layout::is_sealed(key) {
            return Err(Error::range_of_sealed(key));
        }
        self.get_range_raw(key, range).await
    }

    /// [`Self::get_range`] of the bytes as stored.
    pub(crate) async fn get_range_raw(
        &self,
        key: &BlobKey,
        range: Range<u64>,
    ) -> Result<Bytes, Error> {
        let wanted = range.end.saturating_sub(range.start);
        let result = self
            .inner
            .get_range(&to_path(key.as_str()), range.clone())
            .await;
        let out_of_bounds =
            |size| Error::range_out_of_bounds(&self.description, key.as_str(), &range, size);
        match result {
            Ok(bytes) if bytes.len() as u64 == wanted => Ok(bytes),
            Ok(_) => {
                let size = self.head(key).await?.size;
                Err(out_of_bounds(size))
            }
            Err(source @ object_store::Error::NotFound { .. }) => {
                Err(self.backend_error("get range of", key.as_str(), source))
            }
            Err(source) => match self.head(key).await {
                Ok(info) if range.end > info.size => Err(out_of_bounds(info.size)),
                _ => Err(self.backend_error("get range of", key.as_str(), source)),
            },
        }
    }

    /// Size of an object, without reading it.
    pub async fn head(&self, key: &BlobKey) -> Result<ObjectInfo, Error> {
        let meta = self.meta(key).await?;
        Ok(ObjectInfo::of(key.clone(), &meta))
    }

    /// Whether the storage itself is there, reading nothing in it: a local folder's root with
    /// its lock folder (an unmounted volume takes them away, and writing would otherwise make a
    /// new, empty folder in its place), or a container that answers a listing. A missing local
    /// folder is [`ErrorKind::Unavailable`] (transient: a volume may come back).
    pub async fn probe(&self) -> Result<(), Error> {
        if let Some(root) = self.cas.local_root() {
            let locks = root.join(crate::layout::LOCAL_LOCK_DIR);
            return match std::fs::metadata(&locks) {
                Ok(meta) if meta.is_dir() => Ok(()),
                _ => Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "{} is not there: the folder {} (or its {} folder) is missing — was its \
                         volume unmounted? Mount it again; nothing is written until it is back",
                        self.description,
                        root.display(),
                        crate::layout::LOCAL_LOCK_DIR
                    ),
                )),
            };
        }
        self.list_top_level().await.map(|_| ())
    }

    /// What the backend reports about an object, without reading it.
    async fn meta(&self, key: &BlobKey) -> Result<ObjectMeta, Error> {
        self.inner
            .head(&to_path(key.as_str()))
            .await
            .map_err(|e| self.backend_error("head", key.as_str(), e))
    }

    /// The version of an object that was just created without passing through this process
    /// (by a copy inside the store).
    async fn version_of_stored(&self, key: &BlobKey) -> Result<ObjectVersion, Error> {
        match &*self.cas {
            Cas::Native => {
                let meta = self.meta(key).await?;
                Ok(ObjectVersion::native(meta.e_tag, meta.version))
            }
            Cas::LocalFolder(_) => self.content_version(key).await,
        }
    }

    /// Streams every object under `prefix` (recursively), in no particular order.
    pub fn list(&self, prefix: &KeyPrefix) -> BoxStream<'static, Result<ObjectInfo, Error>> {
        let store = self.clone();
        let prefix_text = prefix.as_str().to_owned();
        self.inner
            .list(Some(&to_path(prefix.as_str())))
            .map(move |item| match item {
                Ok(meta) => Ok(ObjectInfo::of(
                    BlobKey::from_listing(meta.location.to_string()),
                    &meta,
                )),
                Err(source) => Err(store.backend_error("list", &prefix_text, source)),
            })
            .boxed()
    }

    /// The names directly under the root (objects and "folders"), from one delimited listing:
    /// what `stowage preflight` reads to tell a vault from a container holding other data.
    /// Only the top level is read, so a vault's size does not matter; the answer holds one
    /// entry per top-level name.
    pub async fn list_top_level(&self) -> Result<Vec<String>, Error> {
        let listing = self
            .inner
            .list_with_delimiter(None)
            .await
            .map_err(|e| self.backend_error("list the top level of", "", e))?;
        let last = |path: &ObjectPath| {
            path.parts()
                .next_back()
                .map(|p| p.as_ref().to_owned())
                .unwrap_or_default()
        };
        let mut names: Vec<String> = listing.common_prefixes.iter().map(last).collect();
        names.extend(listing.objects.iter().map(|o| last(&o.location)));
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Deletes an object. Deleting a missing object succeeds, so retries are harmless.
    pub async fn delete(&self, key: &BlobKey) -> Result<(), Error> {
        match &*self.cas {
            Cas::Native => self.delete_now(key).await,
            Cas::LocalFolder(local) => local.delete(self, key).await,
        }
    }

    /// The delete itself, without any exclusion against updates.
    async fn delete_now(&self, key: &BlobKey) -> Result<(), Error> {
        match self.inner.delete(&to_path(key.as_str())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(self.backend_error("delete", key.as_str(), source)),
        }
    }

    /// Replaces an object only if it is still at `expected` (the version [`Self::get`] returned).
    /// Returns the new version, or an [`ErrorKind::Conflict`] error if the object changed or
    /// vanished.
    pub async fn update_if_unchanged(
        &self,
        key: &BlobKey,
        bytes: impl Into<Bytes>,
        expected: &ObjectVersion,
    ) -> Result<ObjectVersion, Error> {
        let bytes = self.seal_for(key, bytes.into())?;
        match &*self.cas {
            Cas::Native => self.update_natively(key, bytes, expected).await,
            Cas::LocalFolder(local) => local.update(self, key, bytes, expected).await,
        }
    }

    /// Compare-and-swap by the backend's own conditional update (e-tags).
    async fn update_natively(
        &self,
        key: &BlobKey,
        bytes: Bytes,
        expected: &ObjectVersion,
    ) -> Result<ObjectVersion, Error> {
        let VersionToken::Native { e_tag, version } = &expected.0 else {
            // A content-hash token can only come from a local-folder store.
            return Err(self.conflict(key));
        };
        let mode = PutMode::Update(UpdateVersion {
            e_tag: e_tag.clone(),
            version: version.clone(),
        });
        match self
            .inner
            .put_opts(&to_path(key.as_str()), PutPayload::from(bytes), mode.into())
            .await
        {
            Ok(result) => Ok(ObjectVersion::native(result.e_tag, result.version)),
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => Err(self.conflict(key)),
            Err(object_store::Error::NotImplemented { operation, .. }) => {
                Err(Error::cas_unsupported(
                    &self.description,
                    key.as_str(),
                    &format!("{operation} is not implemented"),
                ))
            }
            Err(source) => Err(self.backend_error("update", key.as_str(), source)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
