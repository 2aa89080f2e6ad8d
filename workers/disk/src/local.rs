//! [`LocalDiskProvider`]: sparse files as disks, with change tracking and snapshots.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{Whence, lseek};
use serde::{Deserialize, Serialize};

use crate::ranges::{BLOCK_SIZE, merge_in_place};
use crate::{
    BoxFuture, ByteRange, DiskError, DiskId, DiskInfo, DiskProvider, PieceStream, SnapshotId,
    SnapshotInfo, cbt,
};

/// The CSI driver name of local disks.
pub const LOCAL_DRIVER: &str = "disk.stowage.local";

/// The region a [`LocalDiskProvider`] reports for its snapshot location unless told another
/// ([`LocalDiskProvider::with_region`]); the sandbox cluster's sample node is labelled with it.
pub const LOCAL_REGION: &str = "local";

/// Bytes copied per read while taking a snapshot.
const COPY_BUF: usize = 1 << 20;
/// Bytes of hydration pieces gathered before their change records are made durable and the
/// data is written.
const HYDRATE_BATCH: usize = 8 << 20;
/// A temporary file is removed only when no process holds its lock and it is older than this
/// (see [`LocalDiskProvider::remove_stale_temporaries`]).
pub const TEMP_MIN_AGE: Duration = Duration::from_secs(600);
/// Longest accepted disk or snapshot name.
const MAX_NAME: usize = 200;

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

/// The snapshot being committed, kept in `disks/<name>.pending`.
#[derive(Debug, Serialize, Deserialize)]
struct Intent {
    snapshot: String,
    /// Length of the change log the snapshot consumed.
    cbt_len: u64,
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
}

fn remove_stale_temps(dir: &Path, min_age: Duration) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with('.') && name.ends_with(".tmp")) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > min_age);
        if !old {
            continue;
        }
        // A live writer holds the lock: the file is still being written.
        let Ok(file) = OpenOptions::new().read(true).open(entry.path()) else {
            continue;
        };
        if file.try_lock().is_err() {
            tracing::debug!(path = %entry.path().display(), "temporary file still locked by its writer; kept");
            continue;
        }
        tracing::info!(path = %entry.path().display(), "removing a temporary file a killed writer left");
        if fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

/// Creates a temporary file and locks it for as long as it is open, so a sweep never removes
/// it under a live writer (see [`LocalDiskProvider::remove_stale_temporaries`]).
fn create_temp(path: &Path) -> io::Result<File> {
    let file = File::create_new(path)?;
    file.lock()?;
    Ok(file)
}

fn validate(what: &'static str, name: &str) -> Result<(), DiskError> {
    let reason = if name.is_empty() {
        Some("it is empty; use ASCII letters, digits, '.', '_' and '-'")
    } else if name.len() > MAX_NAME {
        Some("it is longer than 200 characters; use a shorter name")
    } else if name.starts_with('.') {
        Some(
            "it starts with '.', which is reserved for temporary files; start with a letter or digit",
        )
    } else if name.contains("..") {
        Some("it contains \"..\"; use single dots")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("it may contain only ASCII letters, digits, '.', '_' and '-' (no '/' or spaces)")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(DiskError::InvalidName {
            what,
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn check_bounds(what: &str, offset: u64, len: u64, size: u64) -> Result<(), DiskError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(DiskError::OutOfBounds {
            disk: what.to_owned(),
            offset,
            len,
            size,
        }),
    }
}

fn io_ctx(what: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> DiskError {
    move |e| DiskError::io(what(), e)
}

fn sync_dir(dir: &Path) -> Result<(), DiskError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_ctx(|| format!("syncing folder {}", dir.display())))
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()))
}

/// A temporary file removed on drop unless kept.
struct Temp {
    path: PathBuf,
    keep: bool,
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Write `bytes` to `path` atomically and durably: temp file, fsync, rename, fsync folder.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DiskError> {
    let mut temp = Temp {
        path: temp_path(path),
        keep: false,
    };
    let ctx = || format!("writing {}", path.display());
    let mut f = create_temp(&temp.path).map_err(io_ctx(ctx))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_ctx(ctx))?;
    fs::rename(&temp.path, path).map_err(io_ctx(ctx))?;
    temp.keep = true;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn remove_if_exists(path: &Path) -> Result<(), DiskError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DiskError::io(format!("removing {}", path.display()), e)),
    }
}

fn flock(file: File, arg: FlockArg, path: &Path) -> Result<Flock<File>, DiskError> {
    let mut file = file;
    loop {
        match Flock::lock(file, arg) {
            Ok(lock) => return Ok(lock),
            Err((f, Errno::EINTR)) => file = f,
            Err((_, errno)) => {
                return Err(DiskError::io(
                    format!("locking {}", path.display()),
                    errno.into(),
                ));
            }
        }
    }
}

/// Take an exclusive lock on a lock file under the root.
fn lock_root_file(path: &Path) -> Result<Flock<File>, DiskError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_ctx(|| format!("opening lock file {}", path.display())))?;
    flock(file, FlockArg::LockExclusive, path)
}

/// The data ranges of `file` within `[0, size)`, found with `SEEK_DATA`/`SEEK_HOLE` so holes are
/// never read. Where the file system cannot tell (no `SEEK_DATA`), the whole file is data.
fn data_ranges(file: &File, size: u64, path: &Path) -> Result<Vec<ByteRange>, DiskError> {
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    let ctx = || format!("finding the data ranges of {}", path.display());
    let to_off = |v: u64| {
        i64::try_from(v)
            .map_err(|_| DiskError::io(ctx(), io::Error::from(io::ErrorKind::InvalidInput)))
    };
    while pos < size {
        let start = match lseek(file, to_off(pos)?, Whence::SeekData) {
            Ok(o) => o as u64,
            Err(Errno::ENXIO) => break,
            Err(Errno::EINVAL) if pos == 0 => {
                tracing::warn!(path = %path.display(), "SEEK_DATA unsupported; treating the whole image as data");
                return Ok(vec![ByteRange::new(0, size)]);
            }
            Err(e) => return Err(DiskError::io(ctx(), e.into())),
        };
        if start >= size {
            break;
        }
        let end = match lseek(file, to_off(start)?, Whence::SeekHole) {
            Ok(o) => (o as u64).min(size),
            Err(e) => return Err(DiskError::io(ctx(), e.into())),
        };
        if end <= start {
            break;
        }
        out.push(ByteRange::new(start, end - start));
        pos = end;
    }
    merge_in_place(&mut out);
    Ok(out)
}

/// Copy the data ranges of `src` to the same offsets of `dst` through one bounded buffer,
/// skipping all-zero blocks so they stay holes. Returns the bytes written.
fn copy_data(
    src: &File,
    src_path: &Path,
    dst: &File,
    dst_path: &Path,
    size: u64,
) -> Result<u64, DiskError> {
    let mut buf = vec![0u8; COPY_BUF];
    let mut written = 0;
    for r in data_ranges(src, size, src_path)? {
        let mut pos = r.offset;
        while pos < r.end() {
            let n = (r.end() - pos).min(COPY_BUF as u64) as usize;
            let chunk = &mut buf[..n];
            src.read_exact_at(chunk, pos).map_err(io_ctx(|| {
                format!("reading {} at {pos}", src_path.display())
            }))?;
            written += write_nonzero(dst, dst_path, chunk, pos)?;
            pos += n as u64;
        }
    }
    Ok(written)
}

/// Write the runs of non-zero blocks of `chunk` (which lies at `offset`) to `dst`.
fn write_nonzero(dst: &File, dst_path: &Path, chunk: &[u8], offset: u64) -> Result<u64, DiskError> {
    let bs = BLOCK_SIZE as usize;
    let mut written = 0;
    let mut i = 0;
    while i < chunk.len() {
        let block_end = |j: usize| (j + bs).min(chunk.len());
        let is_zero = |j: usize| chunk[j..block_end(j)].iter().all(|&b| b == 0);
        if is_zero(i) {
            i = block_end(i);
            continue;
        }
        let start = i;
        while i < chunk.len() && !is_zero(i) {
            i = block_end(i);
        }
        let at = offset + start as u64;
        dst.write_all_at(&chunk[start..i], at)
            .map_err(io_ctx(|| format!("writing {} at {at}", dst_path.display())))?;
        written += (i - start) as u64;
    }
    Ok(written)
}

impl Inner {
    fn disk_file(&self, name: &str, ext: &str) -> PathBuf {
        self.disks.join(format!("{name}.{ext}"))
    }

    fn snap_file(&self, name: &str, ext: &str) -> PathBuf {
        self.snapshots.join(format!("{name}.{ext}"))
    }

    /// Open a disk's image and lock it; fails with `NotFound` if the disk was deleted (or
    /// replaced) while waiting for the lock.
    fn lock_disk(&self, disk: &str, arg: FlockArg) -> Result<Flock<File>, DiskError> {
        let path = self.disk_file(disk, "img");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    DiskError::NotFound {
                        what: "disk",
                        id: disk.to_owned(),
                    }
                } else {
                    DiskError::io(format!("opening disk {disk:?} ({})", path.display()), e)
                }
            })?;
        let lock = flock(file, arg, &path)?;
        let held = lock
            .metadata()
            .map_err(io_ctx(|| format!("inspecting {}", path.display())))?;
        match fs::metadata(&path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => Ok(lock),
            _ => Err(DiskError::NotFound {
                what: "disk",
                id: disk.to_owned(),
            }),
        }
    }

    fn open_disk(&self, disk: &str) -> Result<File, DiskError> {
        let path = self.disk_file(disk, "img");
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                DiskError::NotFound {
                    what: "disk",
                    id: disk.to_owned(),
                }
            } else {
                DiskError::io(format!("opening disk {disk:?} ({})", path.display()), e)
            }
        })
    }

    fn size_of(file: &File, path: &Path) -> Result<u64, DiskError> {
        file.metadata()
            .map(|m| m.len())
            .map_err(io_ctx(|| format!("inspecting {}", path.display())))
    }

    fn create_disk(&self, name: &str, size: u64) -> Result<DiskInfo, DiskError> {
        validate("disk", name)?;
        let _guard = lock_root_file(&self.root.join(".disks.lock"))?;
        let img = self.disk_file(name, "img");
        let info = DiskInfo {
            id: DiskId(name.to_owned()),
            size,
        };
        match fs::metadata(&img) {
            Ok(m) if m.len() == size => return Ok(info),
            Ok(m) => {
                return Err(DiskError::Conflict {
                    what: "disk",
                    id: name.to_owned(),
                    reason: format!(
                        "it exists with {} bytes, not the {size} requested; pick another name or delete it first",
                        m.len()
                    ),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(DiskError::io(format!("inspecting {}", img.display()), e)),
        }
        // The image appears last: until it does, the disk does not exist and this is redone.
        remove_if_exists(&self.disk_file(name, "pending"))?;
        write_atomic(&self.disk_file(name, "cbt"), &cbt::header(None))?;
        let mut temp = Temp {
            path: temp_path(&img),
            keep: false,
        };
        let ctx = || format!("creating disk image {}", img.display());
        let f = create_temp(&temp.path).map_err(io_ctx(ctx))?;
        f.set_len(size)
            .and_then(|()| f.sync_all())
            .map_err(io_ctx(ctx))?;
        fs::rename(&temp.path, &img).map_err(io_ctx(ctx))?;
        temp.keep = true;
        sync_dir(&self.disks)?;
        tracing::debug!(disk = name, size, "created local disk");
        Ok(info)
    }

    /// Append change records for `ranges` (already aligned) to the disk's log and fsync it.
    fn record_changes(&self, disk: &str, ranges: &[ByteRange]) -> Result<(), DiskError> {
        let path = self.disk_file(disk, "cbt");
        let ctx = || format!("recording changes of disk {disk:?} in {}", path.display());
        let mut bytes = Vec::with_capacity(ranges.len() * cbt::RECORD_LEN);
        for r in ranges {
            bytes.extend_from_slice(&cbt::record(*r));
        }
        let mut log = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_ctx(ctx))?;
        log.write_all(&bytes)
            .and_then(|()| log.sync_data())
            .map_err(io_ctx(ctx))
    }

    fn write(&self, disk: &str, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        validate("disk", disk)?;
        let img = self.lock_disk(disk, FlockArg::LockShared)?;
        let path = self.disk_file(disk, "img");
        let size = Self::size_of(&img, &path)?;
        check_bounds(&format!("disk {disk:?}"), offset, data.len() as u64, size)?;
        if data.is_empty() {
            return Ok(());
        }
        self.record_changes(
            disk,
            &[ByteRange::new(offset, data.len() as u64).align_out(size)],
        )?;
        let ctx = || format!("writing disk {disk:?} ({}) at {offset}", path.display());
        img.write_all_at(data, offset)
            .and_then(|()| img.sync_data())
            .map_err(io_ctx(ctx))
    }

    /// Write a batch of hydration pieces: records first (one fsync), then the data (no fsync;
    /// the caller syncs the image once at the end).
    fn write_batch(&self, disk: &str, batch: &[(u64, bytes::Bytes)]) -> Result<(), DiskError> {
        let img = self.lock_disk(disk, FlockArg::LockShared)?;
        let path = self.disk_file(disk, "img");
        let size = Self::size_of(&img, &path)?;
        let mut ranges = Vec::with_capacity(batch.len());
        for (offset, data) in batch {
            check_bounds(&format!("disk {disk:?}"), *offset, data.len() as u64, size)?;
            ranges.push(ByteRange::new(*offset, data.len() as u64).align_out(size));
        }
        merge_in_place(&mut ranges);
        self.record_changes(disk, &ranges)?;
        for (offset, data) in batch {
            img.write_all_at(data, *offset).map_err(io_ctx(|| {
                format!("writing disk {disk:?} ({}) at {offset}", path.display())
            }))?;
        }
        Ok(())
    }

    fn sync_disk(&self, disk: &str) -> Result<(), DiskError> {
        let path = self.disk_file(disk, "img");
        self.open_disk(disk)?
            .sync_all()
            .map_err(io_ctx(|| format!("syncing {}", path.display())))
    }

    fn read_disk(&self, disk: &str, offset: u64, len: usize) -> Result<Vec<u8>, DiskError> {
        validate("disk", disk)?;
        let file = self.open_disk(disk)?;
        let path = self.disk_file(disk, "img");
        check_bounds(
            &format!("disk {disk:?}"),
            offset,
            len as u64,
            Self::size_of(&file, &path)?,
        )?;
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, offset).map_err(io_ctx(|| {
            format!("reading disk {disk:?} ({}) at {offset}", path.display())
        }))?;
        Ok(buf)
    }

    fn load_snapshot(&self, id: &str) -> Result<Option<SnapshotInfo>, DiskError> {
        let path = self.snap_file(id, "json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                DiskError::io(
                    format!("reading snapshot metadata {} (corrupt: delete the snapshot and take it again)", path.display()),
                    io::Error::new(io::ErrorKind::InvalidData, e),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DiskError::io(format!("reading snapshot metadata {}", path.display()), e)),
        }
    }

    fn get_snapshot(&self, id: &str) -> Result<SnapshotInfo, DiskError> {
        validate("snapshot", id)?;
        self.load_snapshot(id)?.ok_or_else(|| DiskError::NotFound {
            what: "snapshot",
            id: id.to_owned(),
        })
    }

    /// An existing snapshot named `name`, if it was taken of `disk`; a conflict otherwise.
    fn existing_snapshot(&self, disk: &str, name: &str) -> Result<Option<SnapshotInfo>, DiskError> {
        match self.load_snapshot(name)? {
            Some(info) if info.disk.as_str() == disk => Ok(Some(info)),
            Some(info) => Err(DiskError::Conflict {
                what: "snapshot",
                id: name.to_owned(),
                reason: format!(
                    "it was taken of disk {:?}, not {disk:?}; snapshot names are unique across disks, pick another",
                    info.disk.as_str()
                ),
            }),
            None => Ok(None),
        }
    }

    /// Replace the disk's change log by one based on `base`, keeping the records after byte
    /// `consumed` of the current log.
    fn reset_log(&self, disk: &str, base: &str, consumed: u64) -> Result<(), DiskError> {
        let path = self.disk_file(disk, "cbt");
        let rest = cbt::read(&path, consumed)
            .map_err(io_ctx(|| format!("reading change log {}", path.display())))?;
        let mut bytes = cbt::header(Some(base));
        for r in &rest.ranges {
            bytes.extend_from_slice(&cbt::record(*r));
        }
        write_atomic(&path, &bytes)
    }

    /// Finish or discard a snapshot commit interrupted by a crash. Caller holds the disk's
    /// exclusive lock.
    fn recover(&self, disk: &str) -> Result<(), DiskError> {
        let pending = self.disk_file(disk, "pending");
        let intent: Intent = match fs::read(&pending) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(intent) => intent,
                // Torn intent: written before the commit, so the commit never happened.
                Err(_) => return remove_if_exists(&pending),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(DiskError::io(format!("reading {}", pending.display()), e)),
        };
        let log_path = self.disk_file(disk, "cbt");
        let base = cbt::read_base(&log_path).map_err(io_ctx(|| {
            format!("reading change log {}", log_path.display())
        }))?;
        if base.as_deref() != Some(intent.snapshot.as_str()) {
            let committed = matches!(self.load_snapshot(&intent.snapshot)?, Some(info) if info.disk.as_str() == disk);
            if committed {
                tracing::info!(disk, snapshot = %intent.snapshot, "finishing an interrupted snapshot commit");
                self.reset_log(disk, &intent.snapshot, intent.cbt_len)?;
            } else {
                // Never committed: drop an image renamed into place just before the crash.
                let _guard = lock_root_file(&self.root.join(".snapshots.lock"))?;
                if self.load_snapshot(&intent.snapshot)?.is_none() {
                    remove_if_exists(&self.snap_file(&intent.snapshot, "img"))?;
                }
            }
        }
        remove_if_exists(&pending)
    }

    fn snapshot(&self, disk: &str, name: &str) -> Result<SnapshotInfo, DiskError> {
        validate("disk", disk)?;
        validate("snapshot", name)?;
        if let Some(info) = self.existing_snapshot(disk, name)? {
            return Ok(info);
        }
        let img = self.lock_disk(disk, FlockArg::LockExclusive)?;
        self.recover(disk)?;
        if let Some(info) = self.existing_snapshot(disk, name)? {
            return Ok(info);
        }
        let img_path = self.disk_file(disk, "img");
        let size = Self::size_of(&img, &img_path)?;
        let log_path = self.disk_file(disk, "cbt");
        let log = cbt::read(&log_path, 0).map_err(io_ctx(|| {
            format!("reading change log {}", log_path.display())
        }))?;
        let mut changed: Vec<ByteRange> = log.ranges.iter().map(|r| r.align_out(size)).collect();
        merge_in_place(&mut changed);

        // (1) Copy the data ranges into a temporary image.
        let snap_img = self.snap_file(name, "img");
        let mut temp = Temp {
            path: temp_path(&snap_img),
            keep: false,
        };
        let ctx = || format!("writing snapshot image {}", snap_img.display());
        let out = create_temp(&temp.path).map_err(io_ctx(ctx))?;
        out.set_len(size).map_err(io_ctx(ctx))?;
        let copied = copy_data(&img, &img_path, &out, &temp.path, size)?;
        out.sync_all().map_err(io_ctx(ctx))?;
        drop(out);

        let info = SnapshotInfo {
            id: SnapshotId(name.to_owned()),
            disk: DiskId(disk.to_owned()),
            size,
            parent: log.base.map(SnapshotId),
            changed,
            created_at: jiff::Timestamp::now(),
        };
        let json = serde_json::to_vec_pretty(&info)
            .map_err(|e| DiskError::io("encoding snapshot metadata", io::Error::other(e)))?;

        // (2) Intent, so a crash after the commit can finish resetting the change log.
        let intent = Intent {
            snapshot: name.to_owned(),
            cbt_len: log.len,
        };
        let intent_json = serde_json::to_vec(&intent)
            .map_err(|e| DiskError::io("encoding snapshot intent", io::Error::other(e)))?;
        let pending = self.disk_file(disk, "pending");
        write_atomic(&pending, &intent_json)?;

        // (3) Commit: image into place, then the metadata, create-only under the lock.
        {
            let _guard = lock_root_file(&self.root.join(".snapshots.lock"))?;
            if self.load_snapshot(name)?.is_some() {
                // Taken meanwhile by another disk (ours is locked): ours is discarded.
                remove_if_exists(&pending)?;
                drop(temp);
                return self
                    .existing_snapshot(disk, name)?
                    .ok_or_else(|| DiskError::NotFound {
                        what: "snapshot",
                        id: name.to_owned(),
                    });
            }
            fs::rename(&temp.path, &snap_img).map_err(io_ctx(ctx))?;
            temp.keep = true;
            sync_dir(&self.snapshots)?;
            write_atomic(&self.snap_file(name, "json"), &json)?;
        }

        // (4) The next snapshot's changes start here; (5) done.
        self.reset_log(disk, name, log.len)?;
        remove_if_exists(&pending)?;
        tracing::info!(
            disk,
            snapshot = name,
            parent = ?info.parent,
            changed_bytes = info.changed_bytes(),
            copied_bytes = copied,
            "took local snapshot"
        );
        Ok(info)
    }

    fn open_snapshot(&self, id: &str) -> Result<(File, PathBuf, u64), DiskError> {
        validate("snapshot", id)?;
        let not_found = || DiskError::NotFound {
            what: "snapshot",
            id: id.to_owned(),
        };
        // The metadata is the commit marker: an image without it is not a snapshot (yet).
        if !self.snap_file(id, "json").exists() {
            return Err(not_found());
        }
        let path = self.snap_file(id, "img");
        let file = File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                not_found()
            } else {
                DiskError::io(format!("opening snapshot {id:?} ({})", path.display()), e)
            }
        })?;
        let size = Self::size_of(&file, &path)?;
        Ok((file, path, size))
    }

    fn read_snapshot(&self, id: &str, offset: u64, len: usize) -> Result<Vec<u8>, DiskError> {
        let (file, path, size) = self.open_snapshot(id)?;
        check_bounds(&format!("snapshot {id:?}"), offset, len as u64, size)?;
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, offset).map_err(io_ctx(|| {
            format!("reading snapshot {id:?} ({}) at {offset}", path.display())
        }))?;
        Ok(buf)
    }

    fn allocated_ranges(&self, id: &str) -> Result<Vec<ByteRange>, DiskError> {
        let (file, path, size) = self.open_snapshot(id)?;
        data_ranges(&file, size, &path)
    }

    fn delete_disk(&self, disk: &str) -> Result<(), DiskError> {
        validate("disk", disk)?;
        let _guard = lock_root_file(&self.root.join(".disks.lock"))?;
        // Wait for writers and snapshots in flight; a missing disk is already deleted.
        let lock = match self.lock_disk(disk, FlockArg::LockExclusive) {
            Ok(lock) => Some(lock),
            Err(DiskError::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        // The image goes first: without it the disk no longer exists.
        remove_if_exists(&self.disk_file(disk, "img"))?;
        remove_if_exists(&self.disk_file(disk, "cbt"))?;
        remove_if_exists(&self.disk_file(disk, "pending"))?;
        drop(lock);
        sync_dir(&self.disks)
    }

    fn delete_snapshot(&self, id: &str) -> Result<(), DiskError> {
        validate("snapshot", id)?;
        let _guard = lock_root_file(&self.root.join(".snapshots.lock"))?;
        // The metadata goes first: without it the snapshot no longer exists.
        remove_if_exists(&self.snap_file(id, "json"))?;
        remove_if_exists(&self.snap_file(id, "img"))?;
        sync_dir(&self.snapshots)
    }
}

impl DiskProvider for LocalDiskProvider {
    fn driver(&self) -> &str {
        LOCAL_DRIVER
    }

    fn location_region(&self) -> Option<&str> {
        Some(&self.region)
    }

    fn create_disk<'a>(
        &'a self,
        name: &'a str,
        size: u64,
    ) -> BoxFuture<'a, Result<DiskInfo, DiskError>> {
        let name = name.to_owned();
        Box::pin(self.blocking(move |inner| inner.create_disk(&name, size)))
    }

    fn write<'a>(
        &'a self,
        disk: &'a DiskId,
        offset: u64,
        data: &'a [u8],
    ) -> BoxFuture<'a, Result<(), DiskError>> {
        let disk = disk.0.clone();
        let data = data.to_vec();
        Box::pin(self.blocking(move |inner| inner.write(&disk, offset, &data)))
    }

    fn read_disk<'a>(
        &'a self,
        disk: &'a DiskId,
        offset: u64,
        buf: &'a mut [u8],
    ) -> BoxFuture<'a, Result<(), DiskError>> {
        let id = disk.0.clone();
        let len = buf.len();
        Box::pin(async move {
            let data = self
                .blocking(move |inner| inner.read_disk(&id, offset, len))
                .await?;
            buf.copy_from_slice(&data);
            Ok(())
        })
    }

    fn snapshot<'a>(
        &'a self,
        disk: &'a DiskId,
        name: &'a str,
    ) -> BoxFuture<'a, Result<SnapshotInfo, DiskError>> {
        let disk = disk.0.clone();
        let name = name.to_owned();
        Box::pin(self.blocking(move |inner| inner.snapshot(&disk, &name)))
    }

    fn get_snapshot<'a>(
        &'a self,
        id: &'a SnapshotId,
    ) -> BoxFuture<'a, Result<SnapshotInfo, DiskError>> {
        let id = id.0.clone();
        Box::pin(self.blocking(move |inner| inner.get_snapshot(&id)))
    }

    fn read_snapshot<'a>(
        &'a self,
        id: &'a SnapshotId,
        offset: u64,
        buf: &'a mut [u8],
    ) -> BoxFuture<'a, Result<(), DiskError>> {
        let id = id.0.clone();
        let len = buf.len();
        Box::pin(async move {
            let data = self
                .blocking(move |inner| inner.read_snapshot(&id, offset, len))
                .await?;
            buf.copy_from_slice(&data);
            Ok(())
        })
    }

    fn allocated_ranges<'a>(
        &'a self,
        id: &'a SnapshotId,
    ) -> BoxFuture<'a, Result<Vec<ByteRange>, DiskError>> {
        let id = id.0.clone();
        Box::pin(self.blocking(move |inner| inner.allocated_ranges(&id)))
    }

    fn create_disk_from_stream<'a>(
        &'a self,
        name: &'a str,
        size: u64,
        mut pieces: PieceStream<'a>,
    ) -> BoxFuture<'a, Result<DiskInfo, DiskError>> {
        Box::pin(async move {
            let info = self.create_disk(name, size).await?;
            let mut batch: Vec<(u64, bytes::Bytes)> = Vec::new();
            let mut batch_bytes = 0usize;
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
                    let disk = name.to_owned();
                    self.blocking(move |inner| inner.write_batch(&disk, &full))
                        .await?;
                }
            }
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

    fn delete_disk<'a>(&'a self, disk: &'a DiskId) -> BoxFuture<'a, Result<(), DiskError>> {
        let disk = disk.0.clone();
        Box::pin(self.blocking(move |inner| inner.delete_disk(&disk)))
    }

    fn delete_snapshot<'a>(&'a self, id: &'a SnapshotId) -> BoxFuture<'a, Result<(), DiskError>> {
        let id = id.0.clone();
        Box::pin(self.blocking(move |inner| inner.delete_snapshot(&id)))
    }

    fn remove_leftovers(&self) -> BoxFuture<'_, Result<u64, DiskError>> {
        Box::pin(self.blocking(|inner| {
            Ok([&inner.disks, &inner.snapshots]
                .into_iter()
                .map(|dir| remove_stale_temps(dir, TEMP_MIN_AGE).len() as u64)
                .sum())
        }))
    }
}

#[cfg(test)]
mod tests;
