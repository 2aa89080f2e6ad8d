//! The disk-provider port and its local, file-backed implementation.
//!
//! A disk provider owns block devices ("disks") and their point-in-time snapshots. Stowage's
//! stages talk to it through the object-safe [`DiskProvider`] trait, so one process can hold an
//! `Arc<dyn DiskProvider>` and pick Azure managed disks or [`LocalDiskProvider`] at run time.
//!
//! What the port promises, whichever implementation is behind it:
//!
//! - **Change-block tracking.** Every snapshot carries the ranges written since the previous
//!   snapshot of the same disk ([`SnapshotInfo::changed`], 4 KiB granularity), so an
//!   incremental vault transfer reads only what changed.
//! - **Sparse reads.** [`DiskProvider::allocated_ranges`] lists the ranges of a snapshot that may
//!   hold data; holes are never listed and never need to be read.
//! - **Idempotence.** Creating a disk, taking a snapshot by name, hydrating a disk from a stream
//!   and deleting are all safe to repeat, because jobs are delivered at least once.
//!
//! The local implementation's on-disk layout and crash-safety argument are described on
//! [`LocalDiskProvider`].

mod cbt;
mod copy;
mod error;
mod local;
mod none;
mod ranges;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use copy::disk_from_snapshot;
pub use error::DiskError;
pub use local::{LOCAL_DRIVER, LOCAL_REGION, LocalDiskProvider};
pub use none::NoDiskProvider;
pub use ranges::{BLOCK_SIZE, merge_ranges};

/// A boxed, `Send` future, so that [`DiskProvider`] stays object-safe.
pub type BoxFuture<'a, T> = futures::future::BoxFuture<'a, T>;

/// What every [`DiskProvider`] method returns: a [`BoxFuture`] of the operation's result.
pub type DiskFuture<'a, T = ()> = BoxFuture<'a, Result<T, DiskError>>;

/// A boxed, `Send` stream of pieces for [`DiskProvider::create_disk_from_stream`].
pub type PieceStream<'a> = futures::stream::BoxStream<'a, Result<(u64, bytes::Bytes), DiskError>>;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// Identifies a disk within its provider. For [`LocalDiskProvider`] it is the disk's name.
    DiskId
);
string_id!(
    /// Identifies a snapshot within its provider. For [`LocalDiskProvider`] it is the snapshot's
    /// name, unique across all disks of the provider.
    SnapshotId
);

/// A half-open byte range `[offset, offset + len)` of a disk or snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ByteRange {
    /// First byte of the range.
    pub offset: u64,
    /// Number of bytes in the range.
    pub len: u64,
}

impl ByteRange {
    /// The range `[offset, offset + len)`.
    pub const fn new(offset: u64, len: u64) -> Self {
        Self { offset, len }
    }

    /// One past the last byte of the range (saturating at `u64::MAX`).
    pub const fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }

    /// Whether the range holds no bytes.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The range widened to whole [`BLOCK_SIZE`] blocks and clipped to `size` bytes (the end of
    /// the disk), which is how change tracking records a write.
    pub fn align_out(&self, size: u64) -> Self {
        ranges::align_out(*self, size)
    }
}

/// A disk as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// The disk's id.
    pub id: DiskId,
    /// The disk's size in bytes.
    pub size: u64,
}

/// A point-in-time snapshot of one disk, with the ranges changed since the previous snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The snapshot's id.
    pub id: SnapshotId,
    /// The disk the snapshot was taken of.
    pub disk: DiskId,
    /// Size of the disk (and of the snapshot) in bytes.
    pub size: u64,
    /// The previous snapshot of the same disk, if any.
    pub parent: Option<SnapshotId>,
    /// Ranges written since `parent` (or since the disk was created, for the first snapshot):
    /// sorted, merged, and aligned out to [`BLOCK_SIZE`] (clipped to `size`). May over-report
    /// (a write interrupted by a crash is still listed), never under-reports.
    pub changed: Vec<ByteRange>,
    /// When the snapshot was taken.
    pub created_at: jiff::Timestamp,
}

impl SnapshotInfo {
    /// Total bytes in [`changed`](Self::changed).
    pub fn changed_bytes(&self) -> u64 {
        self.changed.iter().map(|r| r.len).sum()
    }
}

/// Whose snapshot [`DiskProvider::snapshot_for`] takes: the backup instance and recovery point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotOwner<'a> {
    /// The backup instance.
    pub instance: &'a str,
    /// The recovery point.
    pub recovery_point: &'a str,
}

/// The disk-provider port. Object-safe, so stages hold `Arc<dyn DiskProvider>`.
///
/// Ids and names are plain strings; implementations may restrict them (the local one accepts
/// ASCII letters, digits, `.`, `_` and `-`, not starting with `.`) and say so with
/// [`DiskError::InvalidName`].
pub trait DiskProvider: Send + Sync + 'static {
    /// CSI driver name this provider handles (local: `"disk.stowage.local"`); the snapshot
    /// stage skips volumes of other drivers.
    fn driver(&self) -> &str;

    /// Region of the location where this provider keeps snapshots (Azure: the snapshot resource
    /// group's region; local: [`LOCAL_REGION`] unless configured), or `None` when it cannot say.
    /// Preflight checks it against the vault's and the cluster's regions: a snapshot in another
    /// region than its cluster makes every backup and restore cross regions.
    fn location_region(&self) -> Option<&str> {
        None
    }

    /// Create an empty (all-zero, unallocated) disk of `size` bytes. Idempotent: a disk that
    /// already exists with the same size is returned as is; with a different size it is a
    /// [`DiskError::Conflict`].
    fn create_disk<'a>(&'a self, name: &'a str, size: u64) -> DiskFuture<'a, DiskInfo>;

    /// Write `data` at `offset`. The written range is recorded for change tracking, and both the
    /// data and the record are durable before this returns `Ok`.
    fn write<'a>(&'a self, disk: &'a DiskId, offset: u64, data: &'a [u8]) -> DiskFuture<'a>;

    /// Fill `buf` from the disk's current contents at `offset`; never-written bytes read as zero.
    fn read_disk<'a>(&'a self, disk: &'a DiskId, offset: u64, buf: &'a mut [u8]) -> DiskFuture<'a>;

    /// Take a point-in-time snapshot named `name` of `disk`. Idempotent by name: a second call
    /// (a redelivered snapshot job) returns the same [`SnapshotInfo`] without taking another.
    /// A snapshot of that name on a different disk is a [`DiskError::Conflict`].
    fn snapshot<'a>(&'a self, disk: &'a DiskId, name: &'a str) -> DiskFuture<'a, SnapshotInfo>;

    /// [`snapshot`](Self::snapshot), for the recovery point `owner` names: a provider that can
    /// label what it keeps (Azure: tags) records the owner on a snapshot it takes. The default
    /// takes the snapshot unlabelled.
    fn snapshot_for<'a>(
        &'a self,
        disk: &'a DiskId,
        name: &'a str,
        owner: SnapshotOwner<'a>,
    ) -> DiskFuture<'a, SnapshotInfo> {
        let _ = owner;
        self.snapshot(disk, name)
    }

    /// The snapshot's metadata.
    fn get_snapshot<'a>(&'a self, id: &'a SnapshotId) -> DiskFuture<'a, SnapshotInfo>;

    /// Fill `buf` from the snapshot's frozen contents at `offset`; holes read as zeros.
    fn read_snapshot<'a>(
        &'a self,
        id: &'a SnapshotId,
        offset: u64,
        buf: &'a mut [u8],
    ) -> DiskFuture<'a>;

    /// `len` bytes of the snapshot at `offset` in a buffer of their own (what a transfer reads
    /// a piece into). The default zero-fills a buffer and calls [`Self::read_snapshot`]; a
    /// provider that can read straight into a buffer it owns overrides it, sparing a copy.
    fn read_snapshot_owned<'a>(
        &'a self,
        id: &'a SnapshotId,
        offset: u64,
        len: usize,
    ) -> DiskFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let mut buf = vec![0u8; len];
            self.read_snapshot(id, offset, &mut buf).await?;
            Ok(buf)
        })
    }

    /// The size of snapshot read this provider serves best, in bytes, when each call has a
    /// cost of its own beyond the bytes (Azure: one HTTP request a read, whose round trip
    /// costs as much as a megabyte): a transfer then reads adjacent pieces together, up to this
    /// many bytes a call, and never reads a byte it was not asked for. `None`, the default: a
    /// piece a call.
    fn read_size_hint(&self) -> Option<u64> {
        None
    }

    /// Ranges of the snapshot that may hold data (everything written up to it), sorted and
    /// merged; holes are never listed. Used for full transfers.
    fn allocated_ranges<'a>(&'a self, id: &'a SnapshotId) -> DiskFuture<'a, Vec<ByteRange>>;

    /// Create a disk (hydration) from a stream of `(offset, bytes)` pieces; regions never
    /// written stay holes. Idempotent by name: if the disk exists (with the same size) it is
    /// overwritten piecewise, so a redelivered hydration re-writes the same bytes. The data is
    /// durable when this returns `Ok`.
    fn create_disk_from_stream<'a>(
        &'a self,
        name: &'a str,
        size: u64,
        pieces: PieceStream<'a>,
    ) -> DiskFuture<'a, DiskInfo>;

    /// Delete a disk. Its snapshots stay. Idempotent: deleting a missing disk is `Ok`.
    fn delete_disk<'a>(&'a self, disk: &'a DiskId) -> DiskFuture<'a>;

    /// Delete a snapshot. Idempotent: deleting a missing snapshot is `Ok`.
    fn delete_snapshot<'a>(&'a self, id: &'a SnapshotId) -> DiskFuture<'a>;

    /// The CSI `volumeHandle` of a disk this provider made (hydration's staging disks), for
    /// the PV the restore binds to it. Ids that are already handles (the default, and the
    /// local provider's) are returned as they are; Azure's staging disks travel by name (the
    /// id rule of `restore.hydrated` has no `/`) and map to their ARM resource id here.
    fn volume_handle(&self, disk: &DiskId) -> String {
        disk.0.clone()
    }

    /// Ends what the provider keeps open between calls (Azure: the read SAS of snapshots being
    /// transferred), at a worker's shutdown. Providers that keep nothing open keep the default.
    fn shutdown(&self) -> DiskFuture<'_> {
        Box::pin(async { Ok(()) })
    }

    /// Removes what killed writers left behind (partial images and the like) under the
    /// provider's own rule, which never touches a file a live writer is writing; returns how
    /// many were removed. Providers without such leftovers keep the default (nothing).
    fn remove_leftovers(&self) -> DiskFuture<'_, u64> {
        Box::pin(async { Ok(0) })
    }
}
