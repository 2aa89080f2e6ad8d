//! Blob storage for a vault: one small API over `object_store`, with the two write disciplines
//! the fleet relies on.
//!
//! * **Create-only** ([`BlobStore::put_create_only`]) for everything content-addressed or
//!   immutable: packs, extent maps, manifests. A second write of the same key is not an error but
//!   [`CreateOutcome::AlreadyExists`], so a redelivered job simply reuses what an earlier delivery
//!   stored (rule 1, "at-least-once in, exactly-once effect").
//! * **Compare-and-swap** ([`BlobStore::update_if_unchanged`]) for records that change, such as job
//!   records: read with [`BlobStore::get`], change, write back naming the [`ObjectVersion`] that
//!   was read; if anyone wrote in between, the result is [`StoreError::Conflict`] and the caller
//!   re-reads and re-applies.
//!
//! # What each backend can do (object_store 0.14, read from its source)
//!
//! | backend | `PutMode::Create` | `PutMode::Update` (conditional update) |
//! |---|---|---|
//! | in-memory (`InMemory`) | yes | yes, by e-tag |
//! | Azure Blob (`MicrosoftAzure`, also Azurite) | yes (`If-None-Match: *`) | yes (`If-Match: <etag>`) |
//! | local folder (`LocalFileSystem`) | yes (publishes with a hard link, which fails if the name exists) | **no**: returns `NotImplemented` |
//!
//! The local folder is the embedded default (`stowage demo`), so refusing compare-and-swap there
//! would leave job records without a safe update. Instead this module **emulates it, for a
//! single host**:
//!
//! 1. Every update (and delete) of a key takes an exclusive `flock(2)` on one of
//!    [`LOCAL_LOCK_STRIPES`] lock files in `<folder>/.stowage-locks/`, chosen by a hash of the key.
//!    `flock` locks are released by the kernel when the holder dies, so a worker killed with
//!    SIGKILL cannot leave a stale lock; they conflict between processes and also between two
//!    opens in one process, so tasks of one worker exclude each other too.
//! 2. Under the lock it reads the current content and compares its BLAKE3 hash with the version
//!    the caller read. The local file-system e-tag (inode, mtime, size) is *not* used: mtimes
//!    move in coarse kernel ticks and inodes are reused, so two different writes inside one tick
//!    can share an e-tag and a stale writer would win. A content hash cannot be fooled that way,
//!    and comparing content is exactly the guarantee a read-modify-write needs: the new value was
//!    computed from the value that is there now.
//! 3. It then overwrites the file (object_store writes a staged file and renames it, so readers,
//!    who never lock, see the old or the new content, never a mix).
//!
//! Limits, stated plainly: this is correct for any number of processes on **one host** sharing
//! the folder on a local filesystem. It is not safe for a folder shared between hosts over NFS or
//! SMB, where `flock` may be advisory-only or emulated; use Azure Blob for a shared vault.
//! Because of step 2, on the local folder only versions returned by [`BlobStore::get`],
//! [`BlobStore::put_create_only`] and [`BlobStore::update_if_unchanged`] are valid tokens, which
//! is why [`ObjectInfo`] (from `head` and `list`) carries no version at all.
//!
//! A store wrapped with [`BlobStore::from_object_store`] uses the backend's native conditional
//! update; if the backend does not implement it the answer is [`StoreError::CasUnsupported`],
//! never a silent overwrite.
//!
//! # Bounded memory
//!
//! [`BlobStore::list`] is a stream: listings are never collected. [`BlobStore::get`] buffers one
//! object and is meant for manifests, maps and records; pack data is read with
//! [`BlobStore::get_range`].

use std::fmt;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, PutResult, UpdateVersion,
};

use crate::layout::{BlobKey, KeyPrefix};

/// Number of lock files that serialise compare-and-swap on a local folder. Keys hash onto them,
/// so unrelated keys rarely wait for each other and the folder never holds more lock files.
pub const LOCAL_LOCK_STRIPES: usize = 256;

/// Folder inside a local vault that holds the compare-and-swap lock files. Its leading `.` makes
/// it unnameable through [`crate::layout`], so no vault key can collide with it.
pub const LOCAL_LOCK_DIR: &str = ".stowage-locks";

/// Whether a local-folder vault waits for the disk before reporting a write as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalDurability {
    /// `fsync` every written file and its folder before a write returns: a write that returned
    /// survives a power cut. This is what rule 1 ("ack only after effects are durable") needs.
    Fsync,
    /// Leave writes in the OS page cache. Faster; only for tests and throwaway demos.
    OsBuffered,
}

/// How to reach an Azure Blob container.
#[derive(Clone)]
pub enum AzureConfig {
    /// The Azurite emulator with its well-known development account. The endpoint is
    /// `http://127.0.0.1:10000` unless the `AZURITE_BLOB_STORAGE_URL` environment variable says
    /// otherwise (that is how object_store finds the emulator).
    Emulator {
        /// Container that holds the vault; it must already exist.
        container: String,
    },
    /// A storage account with a shared key.
    Account {
        /// Storage account name.
        account: String,
        /// Shared access key (secret; never printed by `Debug`).
        access_key: String,
        /// Container that holds the vault; it must already exist.
        container: String,
        /// Endpoint override (for sovereign clouds or a proxy); `http://` endpoints are allowed.
        endpoint: Option<String>,
    },
}

impl fmt::Debug for AzureConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Emulator { container } => f
                .debug_struct("Emulator")
                .field("container", container)
                .finish(),
            Self::Account {
                account,
                container,
                endpoint,
                ..
            } => f
                .debug_struct("Account")
                .field("account", account)
                .field("access_key", &"<redacted>")
                .field("container", container)
                .field("endpoint", endpoint)
                .finish(),
        }
    }
}

/// Which concrete backend a [`BlobStore`] talks to; decides how compare-and-swap is done.
#[derive(Debug, Clone)]
enum Backend {
    /// Native conditional update (in-memory, Azure, or a caller-supplied store).
    Native,
    /// Local folder: compare-and-swap emulated with flock + content hash.
    LocalFolder { lock_dir: PathBuf },
}

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
    /// BLAKE3 of the content (local folder, see the module doc).
    ContentHash([u8; 32]),
}

impl ObjectVersion {
    fn native(e_tag: Option<String>, version: Option<String>) -> Self {
        Self(VersionToken::Native { e_tag, version })
    }

    fn content_hash(bytes: &[u8]) -> Self {
        Self(VersionToken::ContentHash(*blake3::hash(bytes).as_bytes()))
    }

    fn from_put_result(result: PutResult) -> Self {
        Self::native(result.e_tag, result.version)
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
}

/// A blob-storage failure, naming the object and the backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error(
        "{key} does not exist in {backend}: it was never written or has been deleted; \
         check the id, and whether retention removed it"
    )]
    NotFound {
        /// Backend description.
        backend: String,
        /// The missing key.
        key: String,
    },
    /// A compare-and-swap found the object changed (or deleted) since it was read.
    #[error(
        "{key} in {backend} changed since it was read (compare-and-swap conflict); \
         re-read it, re-apply the change and write again"
    )]
    Conflict {
        /// Backend description.
        backend: String,
        /// The contended key.
        key: String,
    },
    /// The backend cannot do a conditional update, so a compare-and-swap was refused rather than
    /// degraded to a blind overwrite.
    #[error(
        "{backend} cannot update {key} with compare-and-swap ({reason}); \
         use the local-folder, in-memory or Azure backend for vaults with job records"
    )]
    CasUnsupported {
        /// Backend description.
        backend: String,
        /// The key whose update was refused.
        key: String,
        /// What the backend said.
        reason: String,
    },
    /// A range read asked for bytes outside the object.
    #[error(
        "range {start}..{end} of {key} in {backend} is outside the object ({size} bytes); \
         the index that pointed there is stale or corrupt"
    )]
    RangeOutOfBounds {
        /// Backend description.
        backend: String,
        /// The object read.
        key: String,
        /// Requested start.
        start: u64,
        /// Requested end (exclusive).
        end: u64,
        /// Actual size.
        size: u64,
    },
    /// Any other backend failure.
    #[error(
        "{operation} {key} on {backend} failed: {source}; \
         retry if the backend is unreachable, otherwise check its credentials and settings"
    )]
    Backend {
        /// What was attempted ("put", "get", ...).
        operation: &'static str,
        /// Backend description.
        backend: String,
        /// The key involved.
        key: String,
        /// The object_store error (boxed: it is large, and errors travel by value).
        #[source]
        source: Box<object_store::Error>,
    },
    /// The local vault folder could not be created or opened.
    #[error(
        "cannot use {path} as a local vault folder: {source}; \
         check that the path is a writable directory on a local filesystem"
    )]
    LocalFolder {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The lock that serialises compare-and-swap on a local folder could not be taken.
    #[error(
        "cannot lock {lock} to update {key}: {source}; the local vault folder must be on a \
         local filesystem that supports flock (not NFS or SMB)"
    )]
    LocalLock {
        /// The lock file.
        lock: PathBuf,
        /// The key being updated.
        key: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The Azure configuration was rejected.
    #[error(
        "cannot open Azure container {container}: {source}; check the account, key and container name"
    )]
    AzureConfig {
        /// The container.
        container: String,
        /// The object_store error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// A vault location string could not be understood.
    #[error("cannot use vault location {location:?}: {reason}")]
    Location {
        /// The location given.
        location: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A container could not be created.
    #[error("cannot create Azure container {container}: {reason}")]
    ContainerSetup {
        /// The container.
        container: String,
        /// Why.
        reason: String,
    },
}

impl StoreError {
    /// Whether retrying the same operation later may succeed (network trouble, throttling),
    /// as opposed to a permanent answer (missing object, conflict, bad configuration).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Backend { source, .. } => matches!(
                **source,
                object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
            ),
            Self::LocalLock { .. } | Self::ContainerSetup { .. } => true,
            Self::NotFound { .. }
            | Self::Conflict { .. }
            | Self::CasUnsupported { .. }
            | Self::RangeOutOfBounds { .. }
            | Self::LocalFolder { .. }
            | Self::Location { .. }
            | Self::AzureConfig { .. } => false,
        }
    }

    /// Whether the error says the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

/// A vault's blob storage: a local folder, an Azure container, or memory.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    backend: Backend,
    description: Arc<str>,
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStore")
            .field("backend", &self.description)
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

impl BlobStore {
    /// An empty in-memory store, for unit tests.
    pub fn in_memory() -> Self {
        Self::with_backend(Arc::new(InMemory::new()), Backend::Native)
    }

    /// A vault in a local folder, created if missing. See the module doc for how
    /// compare-and-swap is made safe there.
    pub fn local_folder(
        folder: impl AsRef<FsPath>,
        durability: LocalDurability,
    ) -> Result<Self, StoreError> {
        let folder = folder.as_ref();
        let lock_dir = folder.join(LOCAL_LOCK_DIR);
        std::fs::create_dir_all(&lock_dir).map_err(|source| StoreError::LocalFolder {
            path: folder.to_owned(),
            source,
        })?;
        let local = LocalFileSystem::new_with_prefix(folder)
            .map_err(|source| StoreError::LocalFolder {
                path: folder.to_owned(),
                source: std::io::Error::other(source),
            })?
            .with_fsync(durability == LocalDurability::Fsync);
        Ok(Self::with_backend(
            Arc::new(local),
            Backend::LocalFolder { lock_dir },
        ))
    }

    /// A vault in an Azure Blob container (or Azurite). The container must exist.
    pub fn azure(config: &AzureConfig) -> Result<Self, StoreError> {
        // object_store is built without aws-lc-rs; TLS goes through rustls with ring, which must
        // be the process default. An error only means a provider is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = object_store::azure::MicrosoftAzureBuilder::new();
        let container = match config {
            AzureConfig::Emulator { container } => {
                builder = builder
                    .with_use_emulator(true)
                    .with_container_name(container);
                container
            }
            AzureConfig::Account {
                account,
                access_key,
                container,
                endpoint,
            } => {
                builder = builder
                    .with_account(account)
                    .with_access_key(access_key)
                    .with_container_name(container);
                if let Some(endpoint) = endpoint {
                    builder = builder
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_endpoint(endpoint.clone());
                }
                container
            }
        };
        let azure = builder.build().map_err(|source| StoreError::AzureConfig {
            container: container.clone(),
            source: Box::new(source),
        })?;
        Ok(Self::with_backend(Arc::new(azure), Backend::Native))
    }

    /// Open a vault location given as text:
    ///
    /// | form | backend |
    /// |---|---|
    /// | `/path`, `./path`, `file:///path` | a local folder (fsync'd writes), created if missing |
    /// | `azurite://<container>` | the Azurite emulator (`AZURITE_BLOB_STORAGE_URL`, default `http://127.0.0.1:10000`) |
    /// | `azure://<account>/<container>` | Azure Blob; `access_key` is the account's shared key |
    pub fn open(location: &str, access_key: Option<&str>) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::Location {
            location: location.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(container) = location.strip_prefix("azurite://") {
            if container.is_empty() || container.contains('/') {
                return Err(bad(
                    "azurite:// takes a container name, e.g. azurite://vault",
                ));
            }
            return Self::azure(&AzureConfig::Emulator {
                container: container.to_owned(),
            });
        }
        if let Some(rest) = location.strip_prefix("azure://") {
            let Some((account, container)) = rest
                .split_once('/')
                .filter(|(a, c)| !a.is_empty() && !c.is_empty() && !c.contains('/'))
            else {
                return Err(bad(
                    "azure:// takes an account and a container, e.g. azure://mystorage/vault",
                ));
            };
            let Some(key) = access_key else {
                return Err(bad(
                    "an azure:// vault needs the account's access key (STOWAGE_AZURE_ACCESS_KEY)",
                ));
            };
            return Self::azure(&AzureConfig::Account {
                account: account.to_owned(),
                access_key: key.to_owned(),
                container: container.to_owned(),
                endpoint: None,
            });
        }
        let path = location.strip_prefix("file://").unwrap_or(location);
        if path.is_empty() || path.contains("://") {
            return Err(bad(
                "use a folder path, file:///path, azurite://<container> or azure://<account>/<container>",
            ));
        }
        Self::local_folder(path, LocalDurability::Fsync)
    }

    /// Wraps any object_store backend. Compare-and-swap uses its native conditional update and
    /// is refused with [`StoreError::CasUnsupported`] if it has none.
    pub fn from_object_store(store: Arc<dyn ObjectStore>) -> Self {
        Self::with_backend(store, Backend::Native)
    }

    fn with_backend(inner: Arc<dyn ObjectStore>, backend: Backend) -> Self {
        let description = inner.to_string().into();
        Self {
            inner,
            backend,
            description,
        }
    }

    fn backend_error(
        &self,
        operation: &'static str,
        key: &str,
        source: object_store::Error,
    ) -> StoreError {
        match source {
            object_store::Error::NotFound { .. } => StoreError::NotFound {
                backend: self.description.to_string(),
                key: key.to_owned(),
            },
            source => StoreError::Backend {
                operation,
                backend: self.description.to_string(),
                key: key.to_owned(),
                source: Box::new(source),
            },
        }
    }

    fn conflict(&self, key: &BlobKey) -> StoreError {
        StoreError::Conflict {
            backend: self.description.to_string(),
            key: key.to_string(),
        }
    }

    /// Writes `bytes` under `key` unless the key exists. An existing object is left untouched
    /// and reported as [`CreateOutcome::AlreadyExists`].
    pub async fn put_create_only(
        &self,
        key: &BlobKey,
        bytes: impl Into<Bytes>,
    ) -> Result<CreateOutcome, StoreError> {
        let bytes: Bytes = bytes.into();
        let local_version = match self.backend {
            Backend::LocalFolder { .. } => Some(ObjectVersion::content_hash(&bytes)),
            Backend::Native => None,
        };
        let options = PutOptions::from(PutMode::Create);
        match self
            .inner
            .put_opts(&to_path(key.as_str()), PutPayload::from(bytes), options)
            .await
        {
            Ok(result) => Ok(CreateOutcome::Created(
                local_version.unwrap_or_else(|| ObjectVersion::from_put_result(result)),
            )),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(CreateOutcome::AlreadyExists),
            Err(source) => Err(self.backend_error("create", key.as_str(), source)),
        }
    }

    /// Reads a whole object with its version. For small objects (manifests, records, maps).
    pub async fn get(&self, key: &BlobKey) -> Result<StoredObject, StoreError> {
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
        let version = match self.backend {
            Backend::LocalFolder { .. } => ObjectVersion::content_hash(&bytes),
            Backend::Native => ObjectVersion::native(e_tag, version),
        };
        Ok(StoredObject { bytes, version })
    }

    /// Reads `range` of an object; fails with [`StoreError::RangeOutOfBounds`] rather than
    /// returning fewer bytes than asked for.
    pub async fn get_range(&self, key: &BlobKey, range: Range<u64>) -> Result<Bytes, StoreError> {
        let wanted = range.end.saturating_sub(range.start);
        let result = self
            .inner
            .get_range(&to_path(key.as_str()), range.clone())
            .await;
        let out_of_bounds = |size| StoreError::RangeOutOfBounds {
            backend: self.description.to_string(),
            key: key.to_string(),
            start: range.start,
            end: range.end,
            size,
        };
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
    pub async fn head(&self, key: &BlobKey) -> Result<ObjectInfo, StoreError> {
        let meta = self
            .inner
            .head(&to_path(key.as_str()))
            .await
            .map_err(|e| self.backend_error("head", key.as_str(), e))?;
        Ok(ObjectInfo {
            key: key.clone(),
            size: meta.size,
        })
    }

    /// Streams every object under `prefix` (recursively), in no particular order.
    pub fn list(&self, prefix: &KeyPrefix) -> BoxStream<'static, Result<ObjectInfo, StoreError>> {
        let store = self.clone();
        let prefix_text = prefix.as_str().to_owned();
        self.inner
            .list(Some(&to_path(prefix.as_str())))
            .map(move |item| match item {
                Ok(meta) => Ok(ObjectInfo {
                    key: BlobKey::from_listing(meta.location.to_string()),
                    size: meta.size,
                }),
                Err(source) => Err(store.backend_error("list", &prefix_text, source)),
            })
            .boxed()
    }

    /// Deletes an object. Deleting a missing object succeeds, so retries are harmless.
    pub async fn delete(&self, key: &BlobKey) -> Result<(), StoreError> {
        let _lock = match &self.backend {
            Backend::LocalFolder { lock_dir } => Some(local_lock(lock_dir, key).await?),
            Backend::Native => None,
        };
        match self.inner.delete(&to_path(key.as_str())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(self.backend_error("delete", key.as_str(), source)),
        }
    }

    /// Replaces an object only if it is still at `expected` (the version [`Self::get`] returned).
    /// Returns the new version, or [`StoreError::Conflict`] if the object changed or vanished.
    pub async fn update_if_unchanged(
        &self,
        key: &BlobKey,
        bytes: impl Into<Bytes>,
        expected: &ObjectVersion,
    ) -> Result<ObjectVersion, StoreError> {
        let bytes: Bytes = bytes.into();
        match &self.backend {
            Backend::LocalFolder { lock_dir } => {
                self.update_local(lock_dir, key, bytes, expected).await
            }
            Backend::Native => self.update_native(key, bytes, expected).await,
        }
    }

    async fn update_native(
        &self,
        key: &BlobKey,
        bytes: Bytes,
        expected: &ObjectVersion,
    ) -> Result<ObjectVersion, StoreError> {
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
            Ok(result) => Ok(ObjectVersion::from_put_result(result)),
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => Err(self.conflict(key)),
            Err(object_store::Error::NotImplemented { operation, .. }) => {
                Err(StoreError::CasUnsupported {
                    backend: self.description.to_string(),
                    key: key.to_string(),
                    reason: format!("{operation} is not implemented"),
                })
            }
            Err(source) => Err(self.backend_error("update", key.as_str(), source)),
        }
    }

    async fn update_local(
        &self,
        lock_dir: &FsPath,
        key: &BlobKey,
        bytes: Bytes,
        expected: &ObjectVersion,
    ) -> Result<ObjectVersion, StoreError> {
        let _lock = local_lock(lock_dir, key).await?;
        let current = match self.get(key).await {
            Ok(current) => current,
            Err(StoreError::NotFound { .. }) => return Err(self.conflict(key)),
            Err(other) => return Err(other),
        };
        if &current.version != expected {
            return Err(self.conflict(key));
        }
        let new_version = ObjectVersion::content_hash(&bytes);
        self.inner
            .put_opts(
                &to_path(key.as_str()),
                PutPayload::from(bytes),
                PutMode::Overwrite.into(),
            )
            .await
            .map_err(|e| self.backend_error("update", key.as_str(), e))?;
        Ok(new_version)
    }
}

/// An exclusive flock on one stripe lock file; released when dropped (or when the process dies).
#[cfg(unix)]
struct LocalKeyLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

#[cfg(unix)]
async fn local_lock(lock_dir: &FsPath, key: &BlobKey) -> Result<LocalKeyLock, StoreError> {
    let stripe =
        usize::from(blake3::hash(key.as_str().as_bytes()).as_bytes()[0]) % LOCAL_LOCK_STRIPES;
    let lock_path = lock_dir.join(format!("{stripe:03}.lock"));
    let key_text = key.to_string();
    let path_for_task = lock_path.clone();
    let locked = tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path_for_task)?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| std::io::Error::from(errno))
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|result| result);
    locked
        .map(LocalKeyLock)
        .map_err(|source| StoreError::LocalLock {
            lock: lock_path,
            key: key_text,
            source,
        })
}

#[cfg(not(unix))]
struct LocalKeyLock;

#[cfg(not(unix))]
async fn local_lock(lock_dir: &FsPath, key: &BlobKey) -> Result<LocalKeyLock, StoreError> {
    Err(StoreError::LocalLock {
        lock: lock_dir.to_owned(),
        key: key.to_string(),
        source: std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "compare-and-swap on a local folder needs flock(2), which only Unix provides",
        ),
    })
}

/// The well-known development account of the Azure Storage emulator (public, documented).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Create a container in Azurite if it does not exist (object_store has no container API).
/// The endpoint is `AZURITE_BLOB_STORAGE_URL`, as for [`AzureConfig::Emulator`].
pub async fn create_azurite_container(container: &str) -> Result<(), StoreError> {
    use base64::Engine as _;
    // As in `BlobStore::azure`: TLS goes through rustls with ring, installed as the default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let endpoint = std::env::var("AZURITE_BLOB_STORAGE_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:10000".to_owned());
    let fail = |reason: String| StoreError::ContainerSetup {
        container: container.to_owned(),
        reason,
    };
    let date = jiff::Timestamp::now()
        .strftime("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let version = "2021-08-06";
    // Shared Key signature: verb, eleven empty standard headers, canonical x-ms headers, and
    // the canonical resource (path-style emulator URLs repeat the account name).
    let to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
    );
    let key_bytes = base64::engine::general_purpose::STANDARD
        .decode(AZURITE_KEY)
        .map_err(|e| fail(e.to_string()))?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key_bytes);
    let signature = base64::engine::general_purpose::STANDARD
        .encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
    let url = format!("{endpoint}/{AZURITE_ACCOUNT}/{container}?restype=container");
    let response = reqwest::Client::new()
        .put(&url)
        .header("x-ms-date", &date)
        .header("x-ms-version", version)
        .header(
            "Authorization",
            format!("SharedKey {AZURITE_ACCOUNT}:{signature}"),
        )
        .header("Content-Length", "0")
        .send()
        .await
        .map_err(|e| fail(format!("Azurite at {endpoint} is unreachable: {e}")))?;
    match response.status().as_u16() {
        201 | 409 => Ok(()),
        code => Err(fail(format!(
            "Azurite answered {code}: {}",
            response.text().await.unwrap_or_default()
        ))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layout;
    use futures::TryStreamExt;

    /// A fresh, empty folder under the system temp dir; removed when dropped.
    pub(crate) struct TempFolder(pub PathBuf);

    impl TempFolder {
        pub(crate) fn new(purpose: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("stowage-vault-{purpose}-{}", uuid::Uuid::new_v4()));
            Self(path)
        }
    }

    impl Drop for TempFolder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn stores() -> Vec<(BlobStore, Option<TempFolder>)> {
        let folder = TempFolder::new("store");
        let local = BlobStore::local_folder(&folder.0, LocalDurability::OsBuffered).unwrap();
        vec![(BlobStore::in_memory(), None), (local, Some(folder))]
    }

    #[tokio::test]
    async fn create_only_reports_already_exists_and_keeps_the_first_content() {
        for (store, _folder) in stores() {
            let key = layout::recovery_point("web", "rp-1").unwrap();
            let first = store.put_create_only(&key, &b"first"[..]).await.unwrap();
            assert!(matches!(first, CreateOutcome::Created(_)), "{store}");
            let second = store.put_create_only(&key, &b"second"[..]).await.unwrap();
            assert_eq!(second, CreateOutcome::AlreadyExists, "{store}");
            assert_eq!(&store.get(&key).await.unwrap().bytes[..], b"first");
        }
    }

    #[tokio::test]
    async fn compare_and_swap_detects_a_concurrent_writer() {
        for (store, _folder) in stores() {
            let key = layout::job("job-1").unwrap();
            let CreateOutcome::Created(created) =
                store.put_create_only(&key, &b"v1"[..]).await.unwrap()
            else {
                panic!("fresh key already existed");
            };
            let read = store.get(&key).await.unwrap();
            assert_eq!(read.version, created, "{store}: create and get disagree");

            let v2 = store
                .update_if_unchanged(&key, &b"v2"[..], &read.version)
                .await
                .unwrap();
            // A second writer still holding the v1 version loses.
            let stale = store
                .update_if_unchanged(&key, &b"v2-from-stale-reader"[..], &read.version)
                .await
                .unwrap_err();
            assert!(
                matches!(stale, StoreError::Conflict { .. }),
                "{store}: {stale}"
            );
            assert!(stale.to_string().contains("jobs/job-1.json"));
            assert!(stale.to_string().contains("re-read"));
            // The winner can go on from its own version.
            store
                .update_if_unchanged(&key, &b"v3"[..], &v2)
                .await
                .unwrap();
            assert_eq!(&store.get(&key).await.unwrap().bytes[..], b"v3");

            // Updating a deleted record is a conflict too, not a resurrection.
            let latest = store.get(&key).await.unwrap().version;
            store.delete(&key).await.unwrap();
            let gone = store
                .update_if_unchanged(&key, &b"v4"[..], &latest)
                .await
                .unwrap_err();
            assert!(
                matches!(gone, StoreError::Conflict { .. }),
                "{store}: {gone}"
            );
            assert!(store.get(&key).await.unwrap_err().is_not_found());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_read_modify_write_loses_no_update() {
        // Several "workers" (separate BlobStore handles, as separate processes would have)
        // increment one counter record; every increment must survive.
        const WORKERS: usize = 4;
        const INCREMENTS: usize = 15;
        let folder = TempFolder::new("cas-race");
        let memory = BlobStore::in_memory();
        for shared_memory in [true, false] {
            let open = || {
                if shared_memory {
                    memory.clone()
                } else {
                    BlobStore::local_folder(&folder.0, LocalDurability::OsBuffered).unwrap()
                }
            };
            let key = layout::job("counter").unwrap();
            open().put_create_only(&key, &b"0"[..]).await.unwrap();
            let mut tasks = Vec::new();
            for _ in 0..WORKERS {
                let store = open();
                let key = key.clone();
                tasks.push(tokio::spawn(async move {
                    for _ in 0..INCREMENTS {
                        loop {
                            let read = store.get(&key).await.unwrap();
                            let value: usize =
                                std::str::from_utf8(&read.bytes).unwrap().parse().unwrap();
                            let next = (value + 1).to_string();
                            match store.update_if_unchanged(&key, next, &read.version).await {
                                Ok(_) => break,
                                Err(StoreError::Conflict { .. }) => continue,
                                Err(other) => panic!("{other}"),
                            }
                        }
                    }
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
            let total = open().get(&key).await.unwrap().bytes;
            assert_eq!(
                std::str::from_utf8(&total).unwrap(),
                (WORKERS * INCREMENTS).to_string(),
                "memory={shared_memory}"
            );
        }
    }

    #[tokio::test]
    async fn reads_ranges_heads_lists_and_deletes() {
        for (store, _folder) in stores() {
            let pack = layout::pack("ab01").unwrap();
            store
                .put_create_only(&pack, &b"0123456789"[..])
                .await
                .unwrap();
            assert_eq!(&store.get_range(&pack, 2..5).await.unwrap()[..], b"234");
            assert_eq!(store.head(&pack).await.unwrap().size, 10);
            let beyond = store.get_range(&pack, 8..20).await.unwrap_err();
            assert!(
                matches!(beyond, StoreError::RangeOutOfBounds { size: 10, .. }),
                "{store}: {beyond}"
            );

            for id in ["ab02", "cd03"] {
                store
                    .put_create_only(&layout::pack(id).unwrap(), &b"x"[..])
                    .await
                    .unwrap();
            }
            store
                .put_create_only(&layout::job("j").unwrap(), &b"{}"[..])
                .await
                .unwrap();
            let mut listed: Vec<String> = store
                .list(&layout::packs())
                .map_ok(|info| info.key.to_string())
                .try_collect()
                .await
                .unwrap();
            listed.sort();
            assert_eq!(listed, ["packs/ab/ab01", "packs/ab/ab02", "packs/cd/cd03"]);

            store.delete(&pack).await.unwrap();
            store.delete(&pack).await.unwrap(); // idempotent
            let missing = store.get(&pack).await.unwrap_err();
            assert!(missing.is_not_found() && !missing.is_transient());
            assert!(missing.to_string().contains("packs/ab/ab01"), "{missing}");
            assert!(store.head(&pack).await.unwrap_err().is_not_found());
        }
    }

    #[tokio::test]
    async fn local_folder_is_created_and_survives_reopening() {
        let folder = TempFolder::new("reopen");
        let nested = folder.0.join("a").join("vault");
        let key = layout::vault_settings();
        {
            let store = BlobStore::local_folder(&nested, LocalDurability::Fsync).unwrap();
            store.put_create_only(&key, &b"{}"[..]).await.unwrap();
        }
        let reopened = BlobStore::local_folder(&nested, LocalDurability::Fsync).unwrap();
        let read = reopened.get(&key).await.unwrap();
        assert_eq!(&read.bytes[..], b"{}");
        // A version read through one handle is valid through another.
        reopened
            .update_if_unchanged(&key, &b"{\"a\":1}"[..], &read.version)
            .await
            .unwrap();
        assert!(nested.join("vault.json").is_file());
    }

    #[test]
    fn local_folder_that_cannot_be_created_is_named() {
        let folder = TempFolder::new("blocked");
        std::fs::create_dir_all(&folder.0).unwrap();
        let file = folder.0.join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let error = BlobStore::local_folder(&file, LocalDurability::Fsync).unwrap_err();
        assert!(error.to_string().contains("not-a-dir"), "{error}");
    }

    #[test]
    fn azure_config_debug_hides_the_access_key() {
        let config = AzureConfig::Account {
            account: "acct".into(),
            access_key: "c2VjcmV0LWtleQ==".into(),
            container: "vault".into(),
            endpoint: None,
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains("c2VjcmV0LWtleQ=="), "{printed}");
        assert!(printed.contains("acct") && printed.contains("<redacted>"));
    }

    #[tokio::test]
    async fn azure_emulator_store_builds_without_network() {
        // Building does not connect; this checks the ring/rustls wiring and error-free config.
        let store = BlobStore::azure(&AzureConfig::Emulator {
            container: "vault".into(),
        })
        .unwrap();
        assert!(store.to_string().contains("vault"), "{store}");
    }

    #[tokio::test]
    async fn a_backend_without_conditional_update_refuses_cas() {
        let folder = TempFolder::new("raw-local");
        std::fs::create_dir_all(&folder.0).unwrap();
        // The raw LocalFileSystem, without this module's emulation.
        let raw = BlobStore::from_object_store(Arc::new(
            LocalFileSystem::new_with_prefix(&folder.0).unwrap(),
        ));
        let key = layout::job("j").unwrap();
        raw.put_create_only(&key, &b"a"[..]).await.unwrap();
        let version = ObjectVersion::native(Some("\"x\"".into()), None);
        let refused = raw
            .update_if_unchanged(&key, &b"b"[..], &version)
            .await
            .unwrap_err();
        assert!(
            matches!(refused, StoreError::CasUnsupported { .. }),
            "{refused}"
        );
        assert_eq!(&raw.get(&key).await.unwrap().bytes[..], b"a");
    }
}
