//! Making a disk from a snapshot through any provider.

use bytes::Bytes;
use futures::StreamExt as _;

use crate::{DiskError, DiskInfo, DiskProvider, SnapshotId};

/// Creates disk `name` from `snapshot`: its allocated ranges, read `piece` bytes at a time and
/// streamed into the provider; holes stay holes. Memory: one piece in flight.
pub async fn disk_from_snapshot(
    disks: &dyn DiskProvider,
    snapshot: &SnapshotId,
    name: &str,
    size: u64,
    piece: u64,
) -> Result<DiskInfo, DiskError> {
    let ranges = disks.allocated_ranges(snapshot).await?;
    let pieces = ranges.into_iter().flat_map(move |r| {
        let end = r.end().min(size);
        let mut offset = r.offset;
        std::iter::from_fn(move || {
            (offset < end).then(|| {
                let len = piece.min(end - offset);
                let at = offset;
                offset += len;
                (at, len)
            })
        })
    });
    let stream = futures::stream::iter(pieces)
        .then(move |(offset, len)| async move {
            let mut buf = vec![0u8; usize::try_from(len).expect("a piece fits in memory")];
            disks.read_snapshot(snapshot, offset, &mut buf).await?;
            Ok((offset, Bytes::from(buf)))
        })
        .boxed();
    disks.create_disk_from_stream(name, size, stream).await
}
