//! File plumbing of the local provider: name checks, atomic and durable writes, locks, and the
//! sparse-image I/O that finds data ranges with `SEEK_DATA`/`SEEK_HOLE` and keeps holes holes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{Whence, lseek};

use crate::ranges::{BLOCK_SIZE, merge_in_place};
use crate::{ByteRange, DiskError};

/// Bytes copied per read while taking a snapshot.
const COPY_BUF: usize = 1 << 20;
/// A temporary file is removed only when no process holds its lock and it is older than this
/// (see [`super::LocalDiskProvider::remove_stale_temporaries`]).
pub const TEMP_MIN_AGE: Duration = Duration::from_secs(600);
/// Longest accepted disk or snapshot name.
const MAX_NAME: usize = 200;

pub(super) fn remove_stale_temps(dir: &Path, min_age: Duration) -> Vec<PathBuf> {
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

pub(super) fn validate(what: &'static str, name: &str) -> Result<(), DiskError> {
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

pub(super) fn check_bounds(what: &str, offset: u64, len: u64, size: u64) -> Result<(), DiskError> {
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

pub(super) fn io_ctx(what: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> DiskError {
    move |e| DiskError::io(what(), e)
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), DiskError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_ctx(|| format!("syncing folder {}", dir.display())))
}

pub(super) fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()))
}

/// A temporary file beside its destination, removed on drop unless [`Temp::persist`]ed.
pub(super) struct Temp {
    pub(super) path: PathBuf,
    keep: bool,
}

impl Temp {
    /// Create a new temporary file beside `dest` (not yet in place).
    pub(super) fn create(dest: &Path, ctx: impl Fn() -> String) -> Result<(Self, File), DiskError> {
        let temp = Self {
            path: temp_path(dest),
            keep: false,
        };
        // Locked for as long as it is open, so a sweep never removes it under a live writer
        // (see `remove_stale_temps`).
        let file = File::create_new(&temp.path)
            .and_then(|file| file.lock().map(|()| file))
            .map_err(io_ctx(&ctx))?;
        Ok((temp, file))
    }

    /// Rename the (already fsynced) file to `dest` and fsync the folder: the commit point.
    pub(super) fn persist(
        mut self,
        dest: &Path,
        ctx: impl Fn() -> String,
    ) -> Result<(), DiskError> {
        fs::rename(&self.path, dest).map_err(io_ctx(ctx))?;
        self.keep = true;
        sync_dir(dest.parent().unwrap_or(Path::new(".")))
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Write `bytes` to `path` atomically and durably: temp file, fsync, rename, fsync folder.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DiskError> {
    let ctx = || format!("writing {}", path.display());
    let (temp, mut f) = Temp::create(path, ctx)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_ctx(ctx))?;
    temp.persist(path, ctx)
}

pub(super) fn remove_if_exists(path: &Path) -> Result<(), DiskError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DiskError::io(format!("removing {}", path.display()), e)),
    }
}

pub(super) fn flock(file: File, arg: FlockArg, path: &Path) -> Result<Flock<File>, DiskError> {
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

/// How opening `what` `id` at `path` failed: [`DiskError::NotFound`] if the file is missing.
pub(super) fn open_error(
    what: &'static str,
    id: &str,
    path: &Path,
) -> impl FnOnce(io::Error) -> DiskError {
    move |e| {
        if e.kind() == io::ErrorKind::NotFound {
            DiskError::NotFound {
                what,
                id: id.to_owned(),
            }
        } else {
            DiskError::io(format!("opening {what} {id:?} ({})", path.display()), e)
        }
    }
}

/// Read `len` bytes at `offset` of the image `file` (at `path`, `size` bytes long) of `label`
/// (`disk "name"` or `snapshot "name"`), refusing a read past its end.
pub(super) fn read_at(
    label: &str,
    (file, path, size): (&File, &Path, u64),
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, DiskError> {
    check_bounds(label, offset, len as u64, size)?;
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, offset).map_err(io_ctx(|| {
        format!("reading {label} ({}) at {offset}", path.display())
    }))?;
    Ok(buf)
}

/// Take an exclusive lock on a lock file under the root.
pub(super) fn lock_root_file(path: &Path) -> Result<Flock<File>, DiskError> {
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
pub(super) fn data_ranges(
    file: &File,
    size: u64,
    path: &Path,
) -> Result<Vec<ByteRange>, DiskError> {
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
pub(super) fn copy_data(
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
