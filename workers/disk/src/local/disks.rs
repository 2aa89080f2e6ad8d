//! Disks: sparse image files, written behind their change log (the change-block tracking).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use super::Inner;
use super::files::{
    Temp, check_bounds, flock, io_ctx, lock_root_file, open_error, read_at, remove_if_exists,
    sync_dir, validate, write_atomic,
};
use crate::ranges::merge_in_place;
use crate::{ByteRange, DiskError, DiskId, DiskInfo, cbt};

impl Inner {
    /// Open a disk's image and lock it; fails with `NotFound` if the disk was deleted (or
    /// replaced) while waiting for the lock.
    pub(super) fn lock_disk(&self, disk: &str, arg: FlockArg) -> Result<Flock<File>, DiskError> {
        let path = self.disk_file(disk, "img");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(open_error("disk", disk, &path))?;
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

    pub(super) fn open_disk(&self, disk: &str) -> Result<File, DiskError> {
        let path = self.disk_file(disk, "img");
        File::open(&path).map_err(open_error("disk", disk, &path))
    }

    pub(super) fn size_of(file: &File, path: &Path) -> Result<u64, DiskError> {
        file.metadata()
            .map(|m| m.len())
            .map_err(io_ctx(|| format!("inspecting {}", path.display())))
    }

    pub(super) fn create_disk(&self, name: &str, size: u64) -> Result<DiskInfo, DiskError> {
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
        let ctx = || format!("creating disk image {}", img.display());
        let (temp, f) = Temp::create(&img, ctx)?;
        f.set_len(size)
            .and_then(|()| f.sync_all())
            .map_err(io_ctx(ctx))?;
        temp.persist(&img, ctx)?;
        tracing::debug!(disk = name, size, "created local disk");
        Ok(info)
    }

    /// Append change records for `ranges` (already aligned) to the disk's log and fsync it.
    pub(super) fn record_changes(&self, disk: &str, ranges: &[ByteRange]) -> Result<(), DiskError> {
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

    pub(super) fn write(&self, disk: &str, offset: u64, data: &[u8]) -> Result<(), DiskError> {
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
    pub(super) fn write_batch(
        &self,
        disk: &str,
        batch: &[(u64, bytes::Bytes)],
    ) -> Result<(), DiskError> {
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

    pub(super) fn sync_disk(&self, disk: &str) -> Result<(), DiskError> {
        let path = self.disk_file(disk, "img");
        self.open_disk(disk)?
            .sync_all()
            .map_err(io_ctx(|| format!("syncing {}", path.display())))
    }

    /// Starts writing `len` bytes at `offset` of the disk's image to storage, without waiting
    /// (a hydration batch just written): Linux submits the range's dirty pages for writeback on
    /// `POSIX_FADV_DONTNEED` and drops them from the page cache once clean. The disk then writes
    /// while the next batch is prepared, and the final fsync finds little left to write. Advice
    /// only: failing it changes nothing but speed.
    pub(super) fn start_writeback(&self, disk: &str, offset: u64, len: u64) {
        #[cfg(target_os = "linux")]
        if let Ok(file) = self.open_disk(disk) {
            let advised = nix::fcntl::posix_fadvise(
                &file,
                offset.try_into().unwrap_or(0),
                len.try_into().unwrap_or(0),
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
            if let Err(errno) = advised {
                tracing::debug!(disk, %errno, "posix_fadvise failed; the final fsync writes everything");
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (disk, offset, len);
    }

    pub(super) fn read_disk(
        &self,
        disk: &str,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, DiskError> {
        validate("disk", disk)?;
        let file = self.open_disk(disk)?;
        let path = self.disk_file(disk, "img");
        let size = Self::size_of(&file, &path)?;
        read_at(&format!("disk {disk:?}"), (&file, &path, size), offset, len)
    }

    pub(super) fn delete_disk(&self, disk: &str) -> Result<(), DiskError> {
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
}
