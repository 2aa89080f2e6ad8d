//! Snapshots: full sparse images of a disk, committed with an intent so that a crash at any
//! point leaves either no snapshot or a whole one (and a change log that agrees with it).

use std::fs::{self, File};
use std::io;
use std::path::PathBuf;

use nix::fcntl::FlockArg;
use serde::{Deserialize, Serialize};

use super::Inner;
use super::files::{
    Temp, copy_data, data_ranges, io_ctx, lock_root_file, open_error, read_at, remove_if_exists,
    sync_dir, validate, write_atomic,
};
use crate::ranges::merge_in_place;
use crate::{ByteRange, DiskError, DiskId, SnapshotId, SnapshotInfo, cbt};

/// The snapshot being committed, kept in `disks/<name>.pending`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Intent {
    pub(super) snapshot: String,
    /// Length of the change log the snapshot consumed.
    pub(super) cbt_len: u64,
}

fn not_found(id: &str) -> DiskError {
    DiskError::NotFound {
        what: "snapshot",
        id: id.to_owned(),
    }
}

impl Inner {
    pub(super) fn load_snapshot(&self, id: &str) -> Result<Option<SnapshotInfo>, DiskError> {
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

    pub(super) fn get_snapshot(&self, id: &str) -> Result<SnapshotInfo, DiskError> {
        validate("snapshot", id)?;
        self.load_snapshot(id)?.ok_or_else(|| not_found(id))
    }

    /// An existing snapshot named `name`, if it was taken of `disk`; a conflict otherwise.
    pub(super) fn existing_snapshot(
        &self,
        disk: &str,
        name: &str,
    ) -> Result<Option<SnapshotInfo>, DiskError> {
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
    pub(super) fn reset_log(&self, disk: &str, base: &str, consumed: u64) -> Result<(), DiskError> {
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
    pub(super) fn recover(&self, disk: &str) -> Result<(), DiskError> {
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

    pub(super) fn snapshot(&self, disk: &str, name: &str) -> Result<SnapshotInfo, DiskError> {
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
        let ctx = || format!("writing snapshot image {}", snap_img.display());
        let (temp, out) = Temp::create(&snap_img, ctx)?;
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
                    .ok_or_else(|| not_found(name));
            }
            temp.persist(&snap_img, ctx)?;
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

    pub(super) fn open_snapshot(&self, id: &str) -> Result<(File, PathBuf, u64), DiskError> {
        validate("snapshot", id)?;
        // The metadata is the commit marker: an image without it is not a snapshot (yet).
        if !self.snap_file(id, "json").exists() {
            return Err(not_found(id));
        }
        let path = self.snap_file(id, "img");
        let file = File::open(&path).map_err(open_error("snapshot", id, &path))?;
        let size = Self::size_of(&file, &path)?;
        Ok((file, path, size))
    }

    pub(super) fn read_snapshot(
        &self,
        id: &str,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, DiskError> {
        let (file, path, size) = self.open_snapshot(id)?;
        read_at(
            &format!("snapshot {id:?}"),
            (&file, &path, size),
            offset,
            len,
        )
    }

    pub(super) fn allocated_ranges(&self, id: &str) -> Result<Vec<ByteRange>, DiskError> {
        let (file, path, size) = self.open_snapshot(id)?;
        data_ranges(&file, size, &path)
    }
    pub(super) fn delete_snapshot(&self, id: &str) -> Result<(), DiskError> {
        validate("snapshot", id)?;
        let _guard = lock_root_file(&self.root.join(".snapshots.lock"))?;
        // The metadata goes first: without it the snapshot no longer exists.
        remove_if_exists(&self.snap_file(id, "json"))?;
        remove_if_exists(&self.snap_file(id, "img"))?;
        sync_dir(&self.snapshots)
    }
}
