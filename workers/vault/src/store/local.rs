//! A vault in a local folder, and its compare-and-swap.
//!
//! object_store's `LocalFileSystem` creates conditionally (a hard link, which fails if the name
//! exists) but cannot update conditionally (`PutMode::Update` is `NotImplemented`). The local
//! folder is the embedded default (`stowage demo`), so refusing compare-and-swap there would
//! leave job records without a safe update. Instead [`LocalFolderCas`] **emulates it, for a
//! single host**:
//!
//! 1. Every update (and delete) of a key takes an exclusive `flock(2)` on one of
//!    [`LOCAL_LOCK_STRIPES`] lock files in `<folder>/.stowage-locks/`
//!    ([`crate::layout::LOCAL_LOCK_DIR`]), chosen by a hash of the key. `flock` locks are
//!    released by the kernel when the holder dies, so a worker killed with SIGKILL cannot leave a
//!    stale lock; they conflict between processes and also between two opens in one process, so
//!    tasks of one worker exclude each other too.
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
//! is why [`super::ObjectInfo`] (from `head` and `list`) carries no version at all.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use object_store::local::LocalFileSystem;
use object_store::{ObjectStoreExt, PutMode, PutPayload};

use super::{BlobStore, Cas, ObjectVersion, to_path};
use crate::error::{Error, ErrorKind};
use crate::layout::{self, BlobKey};

/// Number of lock files that serialise compare-and-swap on a local folder. Keys hash onto them,
/// so unrelated keys rarely wait for each other and the folder never holds more lock files.
pub const LOCAL_LOCK_STRIPES: usize = 256;

/// Whether a local-folder vault waits for the disk before reporting a write as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalDurability {
    /// `fsync` every written file and its folder before a write returns: a write that returned
    /// survives a power cut. This is what rule 1 ("ack only after effects are durable") needs.
    Fsync,
    /// Leave writes in the OS page cache. Faster; only for tests and throwaway demos.
    OsBuffered,
}

impl Error {
    fn local_folder(path: &FsPath, source: std::io::Error) -> Self {
        Self::new(
            ErrorKind::Config,
            format!(
                "cannot use {} as a local vault folder: {source}; \
                 check that the path is a writable directory on a local filesystem",
                path.display()
            ),
        )
        .with_source(source)
    }

    fn local_lock(lock: &FsPath, key: &BlobKey, source: std::io::Error) -> Self {
        Self::new(
            ErrorKind::Unavailable,
            format!(
                "cannot lock {} to update {key}: {source}; the local vault folder must be on a \
                 local filesystem that supports flock (not NFS or SMB)",
                lock.display()
            ),
        )
        .with_source(source)
    }
}

/// Compare-and-swap on a local folder: flock per key stripe, content-hash versions (see the
/// module doc).
#[derive(Debug)]
pub(super) struct LocalFolderCas {
    lock_dir: PathBuf,
}

impl BlobStore {
    /// A vault in a local folder, created if missing. See the module doc for how
    /// compare-and-swap is made safe there.
    pub fn local_folder(
        folder: impl AsRef<FsPath>,
        durability: LocalDurability,
    ) -> Result<Self, Error> {
        let folder = folder.as_ref();
        let lock_dir = folder.join(layout::LOCAL_LOCK_DIR);
        std::fs::create_dir_all(&lock_dir).map_err(|source| Error::local_folder(folder, source))?;
        let local = LocalFileSystem::new_with_prefix(folder)
            .map_err(|source| Error::local_folder(folder, std::io::Error::other(source)))?
            .with_fsync(durability == LocalDurability::Fsync);
        Ok(Self::with_cas(
            Arc::new(local),
            Cas::LocalFolder(LocalFolderCas { lock_dir }),
        ))
    }
}

impl LocalFolderCas {
    /// The vault's folder.
    pub(super) fn root(&self) -> Option<&FsPath> {
        self.lock_dir.parent()
    }

    /// Replaces the object under the key's lock if its content is still what `expected` names.
    pub(super) async fn update(
        &self,
        store: &BlobStore,
        key: &BlobKey,
        bytes: Bytes,
        expected: &ObjectVersion,
    ) -> Result<ObjectVersion, Error> {
        let _lock = local_lock(&self.lock_dir, key).await?;
        let current = match store.get_raw(key).await {
            Ok(current) => current,
            Err(e) if e.is_not_found() => return Err(store.conflict(key)),
            Err(other) => return Err(other),
        };
        if &current.version != expected {
            return Err(store.conflict(key));
        }
        let new_version = ObjectVersion::content_hash(&bytes);
        store
            .inner
            .put_opts(
                &to_path(key.as_str()),
                PutPayload::from(bytes),
                PutMode::Overwrite.into(),
            )
            .await
            .map_err(|e| store.backend_error("update", key.as_str(), e))?;
        Ok(new_version)
    }

    /// Deletes the object under the key's lock, so no update is half-way through.
    pub(super) async fn delete(&self, store: &BlobStore, key: &BlobKey) -> Result<(), Error> {
        let _lock = local_lock(&self.lock_dir, key).await?;
        store.delete_now(key).await
    }
}

impl BlobStore {
    /// The content-hash version of a stored object, read by streaming.
    pub(super) async fn content_version(&self, key: &BlobKey) -> Result<ObjectVersion, Error> {
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
        Ok(ObjectVersion::hashed(hasher.finalize()))
    }
}

/// An exclusive flock on one stripe lock file; released when dropped (or when the process dies).
#[cfg(unix)]
struct LocalKeyLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

#[cfg(unix)]
async fn local_lock(lock_dir: &FsPath, key: &BlobKey) -> Result<LocalKeyLock, Error> {
    let stripe =
        usize::from(blake3::hash(key.as_str().as_bytes()).as_bytes()[0]) % LOCAL_LOCK_STRIPES;
    let lock_path = lock_dir.join(layout::local_lock_file(stripe));
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
        .map_err(|source| Error::local_lock(&lock_path, key, source))
}

#[cfg(not(unix))]
struct LocalKeyLock;

#[cfg(not(unix))]
async fn local_lock(lock_dir: &FsPath, key: &BlobKey) -> Result<LocalKeyLock, Error> {
    Err(Error::local_lock(
        lock_dir,
        key,
        std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "compare-and-swap on a local folder needs flock(2), which only Unix provides",
        ),
    ))
}
