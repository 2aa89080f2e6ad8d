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
//! # Streaming create-only writes
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
//!    `.stowage-tmp/<32 hex digits>` (unique per write: a hash of the key, the process, the time
//!    and a per-process random seed). That folder is at the top of the vault, beside
//!    [`LOCAL_LOCK_DIR`]: its leading `.` makes it unnameable through [`crate::layout`], and every
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
//! # Bounded memory
//!
//! [`BlobStore::list`] is a stream: listings are never collected. [`BlobStore::get`] buffers one
//! object and is meant for manifests, maps and records; pack data is read with
//! [`BlobStore::get_range`]; objects that grow with the cluster are written and copied by
//! streaming (above).

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
    CopyMode, CopyOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, PutResult,
    UpdateVersion, WriteMultipart,
};

use crate::layout::{BlobKey, KeyPrefix};

/// Number of lock files that serialise compare-and-swap on a local folder. Keys hash onto them,
/// so unrelated keys rarely wait for each other and the folder never holds more lock files.
pub const LOCAL_LOCK_STRIPES: usize = 256;

/// Folder inside a local vault that holds the compare-and-swap lock files. Its leading `.` makes
/// it unnameable through [`crate::layout`], so no vault key can collide with it.
pub const LOCAL_LOCK_DIR: &str = ".stowage-locks";

/// Folder at the top of a vault that holds the temporary objects of streamed writes while they
/// upload (see "Streaming create-only writes" in the module doc). Its leading `.` makes it
/// unnameable through [`crate::layout`], so no vault key or listing reaches it.
pub const STREAM_TEMP_DIR: &str = ".stowage-tmp";

/// Size of one part of a streamed write. 5 MiB is the smallest part S3 accepts and well within
/// Azure's block limits (50 000 blocks, so objects up to about 240 GiB).
pub const STREAM_PART_BYTES: usize = 5 << 20;

/// Parts of one streamed write that upload at once; the producer waits beyond that, so a
/// streamed write holds about `(STREAM_PARTS_IN_FLIGHT + 1) × STREAM_PART_BYTES`.
pub const STREAM_PARTS_IN_FLIGHT: usize = 2;

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
    /// The content of a streamed write could not be produced, so the object was not created.
    #[error(
        "writing {key} to {backend} stopped because its content could not be produced: {source}; \
         nothing was created under that key; fix what produces the content and write again"
    )]
    Source {
        /// Backend description.
        backend: String,
        /// The key being written.
        key: String,
        /// What the content's producer reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
            // A producer that is itself a store (a copy) may have failed transiently.
            Self::Source { source, .. } => source
                .downcast_ref::<StoreError>()
                .is_some_and(StoreError::is_transient),
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

    /// The names directly under the root (objects and "folders"), from one delimited listing:
    /// what `stowage preflight` reads to tell a vault from a container holding other data.
    /// Only the top level is read, so a vault's size does not matter; the answer holds one
    /// entry per top-level name.
    pub async fn list_top_level(&self) -> Result<Vec<String>, StoreError> {
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

/// Streaming writes and copies (see "Streaming create-only writes" in the module doc).
impl BlobStore {
    /// Writes the bytes of `chunks`, in order, under `key` unless the key exists, without ever
    /// holding the whole object: memory stays at about `(STREAM_PARTS_IN_FLIGHT + 1) ×
    /// STREAM_PART_BYTES` whatever the object's size. An existing object is left untouched and
    /// reported as [`CreateOutcome::AlreadyExists`] (the rest of `chunks` is then not read).
    ///
    /// If `chunks` yields an error, nothing is created under `key` and the answer is
    /// [`StoreError::Source`] with that error. A stream that simply ends is the whole content,
    /// so a producer that can stop early must report that as an error, not just end.
    pub async fn put_stream_create_only<S, E>(
        &self,
        key: &BlobKey,
        chunks: S,
    ) -> Result<CreateOutcome, StoreError>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let chunks = chunks.map(|item| {
            item.map_err(|source| StoreError::Source {
                backend: self.description.to_string(),
                key: key.to_string(),
                source: source.into(),
            })
        });
        self.put_stream(key, chunks).await
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
    ) -> Result<CreateOutcome, StoreError> {
        self.copy_to_key_create_only(key, to, key).await
    }

    /// Like [`Self::copy_create_only`], to another key `to_key` of `to` (which may be this
    /// store), such as a staging copy of a resources object.
    pub async fn copy_to_key_create_only(
        &self,
        from_key: &BlobKey,
        to: &BlobStore,
        to_key: &BlobKey,
    ) -> Result<CreateOutcome, StoreError> {
        let from_path = to_path(from_key.as_str());
        if Arc::ptr_eq(&self.inner, &to.inner) {
            if from_key == to_key {
                return Ok(CreateOutcome::AlreadyExists);
            }
            // Make a missing source a NotFound naming it, not an error about the target.
            self.head(from_key).await?;
            return to
                .publish_copy(&from_path, to_key, || async {
                    match &to.backend {
                        Backend::LocalFolder { .. } => to.content_hash_of(to_key).await,
                        Backend::Native => to.native_version_of(to_key).await,
                    }
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
    /// [`Self::copy_to_key_create_only`]; errors of `chunks` are returned as they are.
    async fn put_stream<S>(&self, key: &BlobKey, chunks: S) -> Result<CreateOutcome, StoreError>
    where
        S: futures::Stream<Item = Result<Bytes, StoreError>> + Send,
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
                    return self.put_create_only(key, whole).await;
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
        let mut hasher = match self.backend {
            Backend::LocalFolder { .. } => Some(blake3::Hasher::new()),
            Backend::Native => None,
        };
        let fed: Result<(), StoreError> = async {
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
                    Some(hasher) => Ok(ObjectVersion(VersionToken::ContentHash(
                        *hasher.finalize().as_bytes(),
                    ))),
                    None => self.native_version_of(key).await,
                }
            })
            .await;
        temp.remove().await;
        outcome
    }

    /// Copies `from` to `key` in this store unless `key` exists; `version` names what was
    /// created.
    async fn publish_copy<F, Fut>(
        &self,
        from: &ObjectPath,
        key: &BlobKey,
        version: F,
    ) -> Result<CreateOutcome, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<ObjectVersion, StoreError>>,
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

    /// The native version of an object just created (its e-tag, from a `head`).
    async fn native_version_of(&self, key: &BlobKey) -> Result<ObjectVersion, StoreError> {
        let meta = self
            .inner
            .head(&to_path(key.as_str()))
            .await
            .map_err(|e| self.backend_error("head", key.as_str(), e))?;
        Ok(ObjectVersion::native(meta.e_tag, meta.version))
    }

    /// The content-hash version of an object (local folder), read by streaming.
    async fn content_hash_of(&self, key: &BlobKey) -> Result<ObjectVersion, StoreError> {
        let mut chunks = self
            .inner
            .get(&to_path(key.as_str()))
            .await
            .map_err(|e| self.backend_error("get", key.as_str(), e))?
            .into_stream();
        let mut hasher = blake3::Hasher::new();
        while let Some(chunk) = chunks.next().await {
            hasher.update(&chunk.map_err(|e| self.backend_error("get", key.as_str(), e))?);
        }
        Ok(ObjectVersion(VersionToken::ContentHash(
            *hasher.finalize().as_bytes(),
        )))
    }

    fn temp_error(
        &self,
        operation: &'static str,
        key: &BlobKey,
        temp: &ObjectPath,
        source: object_store::Error,
    ) -> StoreError {
        self.backend_error(operation, &format!("{key} (through {temp})"), source)
    }
}

/// A temporary object a writer left behind (see "Leftovers of killed writers" on
/// [`BlobStore::temporary_objects`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemporaryObject {
    /// Where it is: a path relative to the vault's root (`.stowage-tmp/<hex>`, or a local
    /// folder's staged file `<key>#<n>`).
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub modified: std::time::SystemTime,
}

/// Leftovers of killed writers.
///
/// Two kinds of temporary objects exist only while a write runs: the `.stowage-tmp/<hex>`
/// object of a streamed write (every backend), and on a local folder the staged file
/// `<key>#<n>` object_store writes before renaming it into place (listings hide those). A writer
/// killed mid-write leaves them behind. **Rule:** one is garbage once it has not been written
/// for longer than any write can pause — the caller's `older_than`, which the retention job sets
/// to the garbage-collection grace (24 h; "no job runs longer than the grace"). A live writer
/// writes its temporary object at least once per part (5 MiB), so its modification time stays
/// recent, and nothing else is ever deleted: only names of these two forms are considered.
impl BlobStore {
    /// Every temporary object in the store, with its size and modification time.
    pub async fn temporary_objects(&self) -> Result<Vec<TemporaryObject>, StoreError> {
        match &self.backend {
            Backend::LocalFolder { lock_dir } => {
                let root = lock_dir.parent().unwrap_or(lock_dir).to_owned();
                tokio::task::spawn_blocking(move || local_temporaries(&root))
                    .await
                    .map_err(|e| StoreError::LocalFolder {
                        path: PathBuf::new(),
                        source: std::io::Error::other(e),
                    })?
            }
            Backend::Native => {
                let prefix = to_path(STREAM_TEMP_DIR);
                let mut found = Vec::new();
                let mut listing = self.inner.list(Some(&prefix));
                while let Some(meta) = listing.next().await {
                    let meta =
                        meta.map_err(|e| self.backend_error("list", STREAM_TEMP_DIR, e))?;
                    found.push(TemporaryObject {
                        path: meta.location.to_string(),
                        size: meta.size,
                        modified: meta.last_modified.into(),
                    });
                }
                Ok(found)
            }
        }
    }

    /// Deletes the temporary objects not written for longer than `older_than` at `now` (the
    /// rule above) and returns them; younger ones are kept.
    pub async fn remove_stale_temporaries(
        &self,
        older_than: std::time::Duration,
        now: std::time::SystemTime,
    ) -> Result<Vec<TemporaryObject>, StoreError> {
        let mut removed = Vec::new();
        for temp in self.temporary_objects().await? {
            let stale = now
                .duration_since(temp.modified)
                .is_ok_and(|age| age > older_than);
            if !stale {
                continue;
            }
            let gone = match &self.backend {
                Backend::LocalFolder { lock_dir } => {
                    let file = lock_dir.parent().unwrap_or(lock_dir).join(&temp.path);
                    match std::fs::remove_file(&file) {
                        Ok(()) => true,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                        Err(source) => return Err(StoreError::LocalFolder { path: file, source }),
                    }
                }
                Backend::Native => {
                    match self.inner.delete(&to_path(&temp.path)).await {
                        Ok(()) => true,
                        Err(object_store::Error::NotFound { .. }) => false,
                        Err(e) => return Err(self.backend_error("delete", &temp.path, e)),
                    }
                }
            };
            if gone {
                tracing::info!(path = %temp.path, size = temp.size, "removed a temporary object a killed writer left");
                removed.push(temp);
            }
        }
        Ok(removed)
    }
}

/// A local folder's temporary files: everything under `.stowage-tmp/`, and staged files
/// `<name>#<digits>` anywhere else but the lock folder.
fn local_temporaries(root: &FsPath) -> Result<Vec<TemporaryObject>, StoreError> {
    let mut found = Vec::new();
    let mut folders = vec![(root.to_owned(), false)];
    while let Some((folder, in_temp_dir)) = folders.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(StoreError::LocalFolder { path: folder, source }),
        };
        for entry in entries {
            let entry = entry.map_err(|source| StoreError::LocalFolder {
                path: folder.clone(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if folder == root && name == LOCAL_LOCK_DIR {
                    continue;
                }
                let temp = in_temp_dir || (folder == root && name == STREAM_TEMP_DIR);
                folders.push((entry.path(), temp));
                continue;
            }
            let staged = name
                .split_once('#')
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if !(in_temp_dir || staged) {
                continue;
            }
            let Ok(relative) = entry.path().strip_prefix(root).map(FsPath::to_owned) else {
                continue;
            };
            // Without a modification time its age is unknown: never reported, never removed.
            let Ok(modified) = meta.modified() else {
                continue;
            };
            found.push(TemporaryObject {
                path: relative.to_string_lossy().into_owned(),
                size: meta.len(),
                modified,
            });
        }
    }
    Ok(found)
}

/// A unique temporary key for a streamed write of `key` (see the module doc).
fn temp_path(key: &BlobKey) -> ObjectPath {
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
    to_path(&format!("{STREAM_TEMP_DIR}/{name}"))
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

    /// `len` bytes of a pattern that does not repeat at part boundaries.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// `data` as a stream of chunks of `chunk` bytes.
    fn chunked(
        data: &[u8],
        chunk: usize,
    ) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        let chunks: Vec<_> = data
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(chunks)
    }

    /// Keys of the temporary objects of streamed writes left in `store`.
    async fn leftovers(store: &BlobStore) -> Vec<String> {
        store
            .inner
            .list(Some(&ObjectPath::from(STREAM_TEMP_DIR)))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn streamed_write_round_trips_a_multi_part_object() {
        for (store, _folder) in stores() {
            let key = layout::resource("web", "rp-1", &["resources.jsonl"]).unwrap();
            let data = pattern(2 * STREAM_PART_BYTES + 123_457);
            let outcome = store
                .put_stream_create_only(&key, chunked(&data, 700_001))
                .await
                .unwrap();
            let CreateOutcome::Created(version) = outcome else {
                panic!("{store}: a fresh key already existed");
            };
            let read = store.get(&key).await.unwrap();
            assert!(read.bytes[..] == data[..], "{store}: content differs");
            assert_eq!(read.version, version, "{store}: create and get disagree");
            assert_eq!(store.head(&key).await.unwrap().size, data.len() as u64);
            assert!(leftovers(&store).await.is_empty(), "{store}");
            // The version is a valid compare-and-swap token.
            store
                .update_if_unchanged(&key, &b"replaced"[..], &version)
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn streamed_write_is_create_only() {
        for (store, _folder) in stores() {
            let key = layout::resource("web", "rp-2", &["resources.jsonl"]).unwrap();
            let first = pattern(STREAM_PART_BYTES + 10);
            store
                .put_stream_create_only(&key, chunked(&first, 1 << 20))
                .await
                .unwrap();
            let mut other = pattern(2 * STREAM_PART_BYTES);
            other.reverse();
            for second in [&other[..], &b"small"[..], &[][..]] {
                let outcome = store
                    .put_stream_create_only(&key, chunked(second, 1 << 20))
                    .await
                    .unwrap();
                assert_eq!(outcome, CreateOutcome::AlreadyExists, "{store}");
            }
            assert!(
                store.get(&key).await.unwrap().bytes[..] == first[..],
                "{store}"
            );

            // The copy that publishes is create-only by itself, even when the key appears
            // after the early check (a racing writer).
            let temp = temp_path(&key);
            store
                .inner
                .put(&temp, PutPayload::from_static(b"racer"))
                .await
                .unwrap();
            let raced = store
                .publish_copy(&temp, &key, || async {
                    unreachable!("nothing was created")
                })
                .await
                .unwrap();
            assert_eq!(raced, CreateOutcome::AlreadyExists, "{store}");
            assert!(
                store.get(&key).await.unwrap().bytes[..] == first[..],
                "{store}"
            );
        }
    }

    #[tokio::test]
    async fn streamed_write_of_small_and_empty_objects() {
        for (store, _folder) in stores() {
            for (name, data) in [("small.json", &b"{\"a\":1}\n"[..]), ("empty.json", &[][..])] {
                let key = layout::resource("web", "rp-3", &[name]).unwrap();
                let outcome = store
                    .put_stream_create_only(&key, chunked(data, 3))
                    .await
                    .unwrap();
                let CreateOutcome::Created(version) = outcome else {
                    panic!("{store}: {name} already existed");
                };
                let read = store.get(&key).await.unwrap();
                assert_eq!(&read.bytes[..], data, "{store}");
                assert_eq!(read.version, version, "{store}");
            }
            assert!(leftovers(&store).await.is_empty(), "{store}");
        }
    }

    #[tokio::test]
    async fn a_failing_stream_creates_nothing_and_leaves_nothing() {
        for (store, _folder) in stores() {
            let key = layout::resource("web", "rp-4", &["resources.jsonl"]).unwrap();
            for fail_after in [1usize, 3 * STREAM_PART_BYTES] {
                let data = pattern(fail_after);
                let failing = chunked(&data, 1 << 20).chain(futures::stream::iter([Err(
                    std::io::Error::other("collection stopped"),
                )]));
                let error = store
                    .put_stream_create_only(&key, failing)
                    .await
                    .unwrap_err();
                assert!(
                    matches!(error, StoreError::Source { .. }),
                    "{store}: {error}"
                );
                let text = error.to_string();
                assert!(
                    text.contains("resources.jsonl") && text.contains("collection stopped"),
                    "{text}"
                );
                assert!(!error.is_transient());
                assert!(store.get(&key).await.unwrap_err().is_not_found(), "{store}");
            }
            // The cleanup of a failed upload may run on a spawned task; give it a moment.
            tokio::task::yield_now().await;
            assert!(leftovers(&store).await.is_empty(), "{store}");
        }
    }

    #[tokio::test]
    async fn copies_between_stores_and_within_one() {
        let (memory, local_folder) = {
            let mut both = stores();
            let (local, folder) = both.pop().unwrap();
            let (memory, _) = both.pop().unwrap();
            ((memory, local), folder)
        };
        let (memory, local) = memory;
        let key = layout::resource("web", "rp-5", &["resources.jsonl"]).unwrap();
        let data = pattern(2 * STREAM_PART_BYTES + 99);
        memory
            .put_stream_create_only(&key, chunked(&data, 1 << 20))
            .await
            .unwrap();
        for (from, to) in [(&memory, &local), (&local, &memory)] {
            if from.head(&key).await.is_ok() && to.head(&key).await.is_ok() {
                continue;
            }
            let CreateOutcome::Created(version) = from.copy_create_only(to, &key).await.unwrap()
            else {
                panic!("{to}: copy target existed");
            };
            let read = to.get(&key).await.unwrap();
            assert!(read.bytes[..] == data[..], "{from} → {to}");
            assert_eq!(read.version, version, "{from} → {to}");
            let again = from.copy_create_only(to, &key).await.unwrap();
            assert_eq!(again, CreateOutcome::AlreadyExists, "{from} → {to}");
        }
        // Small objects too, and within one store to another key (a staging copy).
        for store in [&memory, &local] {
            let small = layout::resource("web", "rp-5", &["small.json"]).unwrap();
            let copy = layout::staging("restore-1", "small").unwrap();
            let big_copy = layout::staging("restore-1", "resources").unwrap();
            store.put_create_only(&small, &b"{}"[..]).await.unwrap();
            for (source, target, content) in
                [(&small, &copy, &b"{}"[..]), (&key, &big_copy, &data[..])]
            {
                let CreateOutcome::Created(version) = store
                    .copy_to_key_create_only(source, store, target)
                    .await
                    .unwrap()
                else {
                    panic!("{store}: {target} existed");
                };
                let read = store.get(target).await.unwrap();
                assert!(read.bytes[..] == content[..], "{store}: {target}");
                assert_eq!(read.version, version, "{store}: {target}");
                let again = store
                    .copy_to_key_create_only(source, &store.clone(), target)
                    .await
                    .unwrap();
                assert_eq!(again, CreateOutcome::AlreadyExists, "{store}: {target}");
            }
            let missing = layout::resource("web", "rp-5", &["missing"]).unwrap();
            for to in [&memory, &local] {
                let error = store
                    .copy_to_key_create_only(&missing, to, &copy)
                    .await
                    .unwrap_err();
                assert!(error.is_not_found(), "{store} → {to}: {error}");
                assert!(error.to_string().contains("rp-5/missing"), "{error}");
            }
            assert!(leftovers(store).await.is_empty(), "{store}");
        }
        drop(local_folder);
    }

    /// Needs Azurite on 127.0.0.1:10000, which scripts/test.sh starts; fails (never skips)
    /// with the command to start it otherwise.
    #[tokio::test]
    async fn streamed_write_and_copy_on_azurite() {
        let container = format!("stream-{}", uuid::Uuid::new_v4().simple());
        create_azurite_container(&container).await.unwrap_or_else(|e| {
            panic!("{e}\nStart Azurite with infra/scripts/start-azurite.sh (scripts/test.sh does it).")
        });
        let store = BlobStore::azure(&AzureConfig::Emulator { container }).unwrap();
        let key = layout::resource("web", "rp-1", &["resources.jsonl"]).unwrap();
        let data = pattern(2 * STREAM_PART_BYTES + 7);
        let CreateOutcome::Created(version) = store
            .put_stream_create_only(&key, chunked(&data, 1 << 20))
            .await
            .unwrap()
        else {
            panic!("a fresh key already existed");
        };
        let read = store.get(&key).await.unwrap();
        assert!(read.bytes[..] == data[..]);
        assert_eq!(read.version, version);
        let again = store
            .put_stream_create_only(&key, chunked(&data, 1 << 20))
            .await
            .unwrap();
        assert_eq!(again, CreateOutcome::AlreadyExists);
        // The publishing copy alone refuses an existing key on Azure too.
        let temp = temp_path(&key);
        store
            .inner
            .put(&temp, PutPayload::from_static(b"racer"))
            .await
            .unwrap();
        let raced = store
            .publish_copy(&temp, &key, || async {
                unreachable!("nothing was created")
            })
            .await
            .unwrap();
        assert_eq!(raced, CreateOutcome::AlreadyExists);
        store.inner.delete(&temp).await.unwrap();
        let staged = layout::staging("restore-1", "resources").unwrap();
        store
            .copy_to_key_create_only(&key, &store, &staged)
            .await
            .unwrap();
        assert!(store.get(&staged).await.unwrap().bytes[..] == data[..]);
        assert!(leftovers(&store).await.is_empty());
    }

    /// The peak resident memory of this process so far (`VmHWM`), in bytes.
    fn peak_resident_bytes() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Writing and copying a 64 MiB object raise the process's peak memory by far less than
    /// 64 MiB. Peak memory is per process and the test harness runs tests in threads, so the
    /// measurement runs in a child process that runs only this test.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streamed_write_and_copy_use_bounded_memory() {
        const CHILD: &str = "STOWAGE_BOUNDED_MEMORY_CHILD";
        const OBJECT: usize = 64 << 20;
        const CHUNK: usize = 1 << 20;
        const ALLOWED_GROWTH: u64 = 32 << 20;
        if peak_resident_bytes().is_none() {
            eprintln!("no /proc/self/status VmHWM here; skipping the memory measurement");
            return;
        }
        if std::env::var_os(CHILD).is_none() {
            let output = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "store::tests::streamed_write_and_copy_use_bounded_memory",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(
                output.status.success(),
                "the measuring child failed:\n{text}"
            );
            assert!(
                text.contains("peak memory grew by"),
                "the child did not measure:\n{text}"
            );
            return;
        }
        let folder = TempFolder::new("bounded-memory");
        let store = BlobStore::local_folder(&folder.0, LocalDurability::OsBuffered).unwrap();
        let other_folder = TempFolder::new("bounded-memory-copy");
        let other = BlobStore::local_folder(&other_folder.0, LocalDurability::OsBuffered).unwrap();
        let key = layout::resource("big", "rp-1", &["resources.jsonl"]).unwrap();
        let before = peak_resident_bytes().unwrap();
        // A generated stream: each chunk is made when asked for and freed once uploaded.
        let generated = futures::stream::iter(0..OBJECT / CHUNK)
            .map(|n| Ok::<_, std::io::Error>(Bytes::from(vec![(n % 251) as u8; CHUNK])));
        let written = store.put_stream_create_only(&key, generated).await.unwrap();
        assert!(matches!(written, CreateOutcome::Created(_)));
        let copied = store.copy_create_only(&other, &key).await.unwrap();
        assert!(matches!(copied, CreateOutcome::Created(_)));
        let after = peak_resident_bytes().unwrap();
        assert_eq!(other.head(&key).await.unwrap().size, OBJECT as u64);
        let growth = after.saturating_sub(before);
        println!(
            "peak memory grew by {} KiB writing and copying a {} MiB object",
            growth >> 10,
            OBJECT >> 20
        );
        assert!(
            growth < ALLOWED_GROWTH,
            "peak memory grew by {growth} bytes for a {OBJECT}-byte object; streaming is not bounded"
        );
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

    fn set_age(path: &FsPath, age: std::time::Duration) {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.set_modified(std::time::SystemTime::now() - age).unwrap();
    }

    #[tokio::test]
    async fn temporaries_killed_writers_left_are_listed_and_swept_by_age() {
        let folder = TempFolder::new("temporaries");
        let store = BlobStore::local_folder(&folder.0, LocalDurability::OsBuffered).unwrap();
        let job = layout::job("j-1").unwrap();
        store.put_create_only(&job, b"{}".to_vec()).await.unwrap();
        let hour = std::time::Duration::from_secs(3600);
        // A killed CAS/put left a staged file beside the record; a killed streamed write left
        // its temporary object (and object_store's staged file of it); a live write is fresh.
        let root = &folder.0;
        let staged = root.join("jobs/j-1.json#17");
        let streamed = root.join(".stowage-tmp/0123abcd");
        let streamed_staged = root.join(".stowage-tmp/4567ef01#3");
        let live = root.join("jobs/j-2.json#18");
        std::fs::create_dir_all(root.join(".stowage-tmp")).unwrap();
        for path in [&staged, &streamed, &streamed_staged, &live] {
            std::fs::write(path, b"partial").unwrap();
        }
        for path in [&staged, &streamed, &streamed_staged] {
            set_age(path, 25 * hour);
        }
        // Not temporaries: a real key whose name has a '#' followed by non-digits, the lock
        // folder's files, the record itself — even when old.
        let odd = root.join("jobs/notes#a1");
        std::fs::write(&odd, b"x").unwrap();
        set_age(&odd, 25 * hour);
        set_age(&root.join("jobs/j-1.json"), 25 * hour);

        let mut listed: Vec<String> = store
            .temporary_objects()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.path)
            .collect();
        listed.sort();
        assert_eq!(
            listed,
            [
                ".stowage-tmp/0123abcd",
                ".stowage-tmp/4567ef01#3",
                "jobs/j-1.json#17",
                "jobs/j-2.json#18"
            ]
        );
        let removed = store
            .remove_stale_temporaries(24 * hour, std::time::SystemTime::now())
            .await
            .unwrap();
        assert_eq!(removed.len(), 3, "{removed:?}");
        assert!(!staged.exists() && !streamed.exists() && !streamed_staged.exists());
        assert!(live.exists(), "a temporary written recently may be a live write: kept");
        assert!(odd.exists());
        assert_eq!(store.get(&job).await.unwrap().bytes.as_ref(), b"{}");
        assert!(root.join(LOCAL_LOCK_DIR).is_dir());

        // Any backend: the streamed-write folder, by the backend's modification time.
        let memory = BlobStore::in_memory();
        memory
            .inner
            .put(&to_path(".stowage-tmp/89ab"), PutPayload::from_static(b"partial"))
            .await
            .unwrap();
        memory.put_create_only(&job, b"{}".to_vec()).await.unwrap();
        let now = std::time::SystemTime::now();
        assert!(memory.remove_stale_temporaries(hour, now).await.unwrap().is_empty());
        let later = now + 2 * hour;
        assert_eq!(memory.remove_stale_temporaries(hour, later).await.unwrap().len(), 1);
        assert!(memory.temporary_objects().await.unwrap().is_empty());
        assert!(memory.get(&job).await.is_ok());
    }
}
