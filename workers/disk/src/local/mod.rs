//! [`LocalDiskProvider`]: sparse files as disks, with change tracking and snapshots.

mod disks;
mod files;
mod snapshots;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

pub use self::files::TEMP_MIN_AGE;
use self::files::{check_bounds, remove_stale_temps};
use crate::{
    ByteRange, DiskError, DiskFuture, DiskId, DiskInfo, DiskProvider, PieceStream, SnapshotId,
    SnapshotInfo,
};

/// The CSI driver name of local disks.
pub const LOCAL_DRIVER: &str = "disk.stowage.local";

/// The region a [`LocalDiskProvider`] reports for its snapshot location unless told another
/// ([`LocalDiskProvider::with_region`]); the sandbox cluster's sample node is labelled with it.
pub const LOCAL_REGION: &str = "local";

/// Bytes of hydration pieces gathered before their change records are made durable and the
/// data is written and its writeback started (one batch writing while the next fills: two in
/// memory).
const HYDRATE_BATCH: usize = 8 << 20;

/// Waits for a batch write started by `create_disk_from_stream`, if any.
async fn finish_write(
    writing: Option<tokio::task::JoinHandle<Result<(), DiskError>>>,
) -> Result<(), DiskError> {
    match writing {
        None => Ok(()),
        Some(task) => task.await.map_err(|e| {
            DiskError::io(
                "local disk provider: a batch write task failed",
                io::Error::other(e.to_string()),
            )
        })?,
    }
}

/// Disks as sparse files in a folder, with change-block tracking and full-image snapshots.
///
/// # Layout under `root`
///
/// ```text
/// disks/<name>.img        the disk: a sparse file of the disk's size (holes read as zeros)
/// disks/<name>.cbt        change log: the base snapshot, then one record per write since it
/// disks/<name>.pending    intent of a snapshot being committed (snapshot name + log length)
/// snapshots/<name>.img    frozen image: only the disk's data ranges copied, holes stay holes
/// snapshots/<name>.json   SnapshotInfo; its presence is what makes the snapshot exist
/// .disks.lock, .snapshots.lock    flock(2) targets serialising create/delete and commits
/// ```
///
/// Names starting with `.` are temporary files (`.<file>.<uuid>.tmp`), written, fsynced and
/// renamed into place.
///
/// # Concurrency
///
/// Writers hold a shared `flock` on the disk image, a snapshot or delete an exclusive one, so a
/// snapshot is point-in-time: writes wait while it copies. Locks are per open file, so they
/// also serialise several providers on one root, in one process or several.
///
/// # Crash safety
///
/// - `write`: the change record is appended and fsynced *before* the data is written and
///   fsynced, so a crash can over-report a change but never lose one.
/// - `snapshot`: (1) the disk's data ranges are copied (found with `SEEK_DATA`/`SEEK_HOLE`, so
///   holes are never read) into a temporary image, which is fsynced; (2) an intent naming the
///   snapshot and the change-log length it consumed is made durable; (3) under the snapshots
///   lock, the image is renamed into place and the metadata written (temp + fsync + rename):
///   the commit point; (4) the change log is replaced by one whose base is the new snapshot,
///   keeping any record past the consumed length; (5) the intent is removed. Killed before
///   (3), nothing is visible and a redo starts over; killed after, a redo returns the
///   committed snapshot, and the next snapshot of the disk first finishes (4) from the intent.
#[derive(Debug, Clone)]
pub struct LocalDiskProvider {
    inner: Arc<Inner>,
    region: Arc<str>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    disks: PathBuf,
    snapshots: PathBuf,
}

impl Inner {
    fn disk_file(&self, name: &str, ext: &str) -> PathBuf {
        self.disks.join(format!("{name}.{ext}"))
    }

    fn snap_file(&self, name: &str, ext: &str) -> PathBuf {
        self.snapshots.join(format!("{name}.{ext}"))
    }
}

impl LocalDiskProvider {
    /// The same provider, reporting `region` as its snapshot location's region (default
    /// [`LOCAL_REGION`]); preflight compares it with the vault's and the cluster's.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into().into();
        self
    }

    /// Open (creating if needed) a provider rooted at `root`, and remove temporary files left
    /// by killed writers (see [`Self::remove_stale_temporaries`]).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, DiskError> {
        let root = root.into();
        let inner = Inner {
            disks: root.join("disks"),
            snapshots: root.join("snapshots"),
            root,
        };
        for dir in [&inner.disks, &inner.snapshots] {
            fs::create_dir_all(dir).map_err(|e| {
                DiskError::io(
                    format!(
                        "creating {} (check the disk root's path and permissions)",
                        dir.display()
                    ),
                    e,
                )
            })?;
            remove_stale_temps(dir, TEMP_MIN_AGE);
        }
        Ok(Self {
            region: LOCAL_REGION.into(),
            inner: Arc::new(inner),
        })
    }

    /// Removes the temporary files (`.<file>.<uuid>.tmp`: partial snapshot images, disk images
    /// and metadata being written) that killed writers left in `disks/` and `snapshots/`, and
    /// returns them. **Rule:** a writer holds an exclusive lock (`flock`) on its temporary file
    /// from the moment it creates it until it renames or removes it, and the kernel drops the
    /// lock when the writer dies; a file is removed only if this lock can be taken (no live
    /// writer) and it was last modified more than `min_age` ago (which covers the instant
    /// between creating a file and locking it). Called at `open` (worker start) with
    /// [`TEMP_MIN_AGE`] and by every retention run.
    pub fn remove_stale_temporaries(&self, min_age: Duration) -> Vec<PathBuf> {
        [&self.inner.disks, &self.inner.snapshots]
            .into_iter()
            .flat_map(|dir| remove_stale_temps(dir, min_age))
            .collect()
    }

    /// The folder this provider keeps its disks and snapshots in.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Path of a disk's image file (for tests and diagnostics; write through the provider).
    pub fn disk_path(&self, disk: &DiskId) -> PathBuf {
        self.inner.disk_file(disk.as_str(), "img")
    }

    /// Path of a snapshot's image file (for tests and diagnostics).
    pub fn snapshot_path(&self, id: &SnapshotId) -> PathBuf {
        self.inner.snap_file(id.as_str(), "img")
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, DiskError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, DiskError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| {
                DiskError::io(
                    "local disk provider: blocking task failed",
                    io::Error::other(e.to_string()),
                )
            })?
    }

    /// Fill `buf` with what `read` (given `buf`'s length) returns, off the async threads.
    fn read_into<'a, F>(&'a self, buf: &'a mut [u8], read: F) -> DiskFuture<'a>
    where
        F: FnOnce(&Inner, usize) -> Result<Vec<u8>, DiskError> + Send + 'static,
    {
        let len = buf.len();
        Box::pin(async move {
            let data = self.blocking(move |inner| read(inner, len)).await?;
            buf.copy_from_slice(&data);
            Ok(())
        })
    }
}

impl DiskProvider for LocalDiskProvider {
    fn driver(&self) -> &str {
        LOCAL_DRIVER
    }

    fn location_region(&self) -> Option<&str> {
        Some(&self.region)
    }

    fn create_disk<'a>(&'a self, name: &'a str, size: u64) -> DiskFuture<'a, DiskInfo> {
        let name = name.to_owned();
        Box::pin(self.blocking(move |inner| inner.create_disk(&name, size)))
    }

    fn write<'a>(&'a self, disk: &'a DiskId, offset: u64, data: &'a [u8]) -> DiskFuture<'a> {
        let disk = disk.0.clone();
        let data = data.to_vec();
        Box::pin(self.blocking(move |inner| inner.write(&disk, offset, &data)))
    }

    fn read_disk<'a>(&'a self, disk: &'a DiskId, offset: u64, buf: &'a mut [u8]) -> DiskFuture<'a> {
        let id = disk.0.clone();
        self.read_into(buf, move |inner, len| inner.read_disk(&id, offset, len))
    }

    fn read_snapshot<'a>(
        &'a self,
        id: &'a SnapshotId,
        offset: u64,
        buf: &'a mut [u8],
    ) -> DiskFuture<'a> {
        let id = id.0.clone();
        self.read_into(buf, move |inner, len| inner.read_snapshot(&id, offset, len))
    }

    fn read_snapshot_owned<'a>(
        &'a self,
        id: &'a SnapshotId,
        offset: u64,
        len: usize,
    ) -> DiskFuture<'a, Vec<u8>> {
        let id = id.0.clone();
        Box::pin(self.blocking(move |inner| inner.read_snapshot(&id, offset, len)))
    }

    fn snapshot<'a>(&'a self, disk: &'a DiskId, name: &'a str) -> DiskFuture<'a, SnapshotInfo> {
        let disk = disk.0.clone();
        let name = name.to_owned();
        Box::pin(self.blocking(move |inner| inner.snapshot(&disk, &name)))
    }

    fn get_snapshot<'a>(&'a self, id: &'a SnapshotId) -> DiskFuture<'a, SnapshotInfo> {
        let id = id.0.clone();
        Box::pin(self.blocking(move |inner| inner.get_snapshot(&id)))
    }

    fn allocated_ranges<'a>(&'a self, id: &'a SnapshotId) -> DiskFuture<'a, Vec<ByteRange>> {
        let id = id.0.clone();
        Box::pin(self.blocking(move |inner| inner.allocated_ranges(&id)))
    }

    fn create_disk_from_stream<'a>(
        &'a self,
        name: &'a str,
        size: u64,
        mut pieces: PieceStream<'a>,
    ) -> DiskFuture<'a, DiskInfo> {
        Box::pin(async move {
            let info = self.create_disk(name, size).await?;
            let mut batch: Vec<(u64, bytes::Bytes)> = Vec::new();
            let mut batch_bytes = 0usize;
            // One batch is written on the blocking pool while the next one fills, and its
            // writeback starts at once, so the disk is busy from the first batch on instead of
            // taking the whole volume in the fsync at the end (which still makes it durable).
            let mut writing: Option<tokio::task::JoinHandle<Result<(), DiskError>>> = None;
            while let Some(piece) = pieces.next().await {
                let (offset, data) = piece?;
                check_bounds(&format!("disk {name:?}"), offset, data.len() as u64, size)?;
                if data.is_empty() {
                    continue;
                }
                batch_bytes += data.len();
                batch.push((offset, data));
                if batch_bytes >= HYDRATE_BATCH {
                    let full = std::mem::take(&mut batch);
                    batch_bytes = 0;
                    finish_write(writing.take()).await?;
                    let (inner, disk) = (Arc::clone(&self.inner), name.to_owned());
                    writing = Some(tokio::task::spawn_blocking(move || {
                        inner.write_batch(&disk, &full)?;
                        let start = full.iter().map(|(o, _)| *o).min().unwrap_or(0);
                        let end = full
                            .iter()
                            .map(|(o, d)| o + d.len() as u64)
                            .max()
                            .unwrap_or(start);
                        inner.start_writeback(&disk, start, end - start);
                        Ok(())
                    }));
                }
            }
            finish_write(writing.take()).await?;
            let disk = name.to_owned();
            self.blocking(move |inner| {
                if !batch.is_empty() {
                    inner.write_batch(&disk, &batch)?;
                }
                inner.sync_disk(&disk)
            })
            .await?;
            tracing::debug!(disk = name, size, "hydrated local disk from a stream");
            Ok(info)
        })
    }

    fn delete_disk<'a>(&'a self, disk: &'a DiskId) -> DiskFuture<'a> {
        let disk = disk.0.clone();
        Box::pin(self.blocking(move |inner| inner.delete_disk(&disk)))
    }

    fn delete_snapshot<'a>(&'a self, id: &'a SnapshotId) -> DiskFuture<'a> {
        let id = id.0.clone();
        Box::pin(self.blocking(move |inner| inner.delete_snapshot(&id)))
    }

    fn remove_leftovers(&self) -> DiskFuture<'_, u64> {
        Box::pin(self.blocking(|inner| {
            Ok([&inner.disks, &inner.snapshots]
                .into_iter()
                .map(|dir| remove_stale_temps(dir, TEMP_MIN_AGE).len() as u64)
                .sum())
        }))
    }
}

#[cfg(test)]
use self::snapshots::Intent;

#[cfg(test)]
mod tests;
