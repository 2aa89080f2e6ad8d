//! [`NoDiskProvider`]: the provider of a worker that reaches no disks (`--disk-provider csi`
//! without `--disk-root`).

use crate::{
    ByteRange, DiskError, DiskFuture, DiskId, DiskInfo, DiskProvider, PieceStream, SnapshotId,
    SnapshotInfo,
};

/// A worker's disk provider when it reaches no disks: it handles no CSI driver (so the vault
/// stages leave every CSI volume in the operational tier) and refuses every call with a
/// permanent error saying which flag gives the worker a provider. Deletes succeed (nothing of
/// its own exists), so retention and staging sweeps still run.
#[derive(Debug, Clone, Default)]
pub struct NoDiskProvider;

fn refused<T>(what: &str) -> Result<T, DiskError> {
    Err(DiskError::Io {
        context: format!(
            "{what}: this worker has no disk provider that reaches volume data (it runs with \
             --disk-provider csi and no --disk-root); give it --disk-root (the local disk \
             provider) to read snapshots and write disks"
        ),
        source: std::io::Error::from(std::io::ErrorKind::Unsupported),
    })
}

impl DiskProvider for NoDiskProvider {
    fn driver(&self) -> &str {
        ""
    }

    fn create_disk<'a>(&'a self, name: &'a str, _size: u64) -> DiskFuture<'a, DiskInfo> {
        Box::pin(async move { refused(&format!("creating disk {name}")) })
    }

    fn write<'a>(&'a self, disk: &'a DiskId, _offset: u64, _data: &'a [u8]) -> DiskFuture<'a> {
        Box::pin(async move { refused(&format!("writing disk {disk}")) })
    }

    fn read_disk<'a>(
        &'a self,
        disk: &'a DiskId,
        _offset: u64,
        _buf: &'a mut [u8],
    ) -> DiskFuture<'a> {
        Box::pin(async move { refused(&format!("reading disk {disk}")) })
    }

    fn snapshot<'a>(&'a self, disk: &'a DiskId, _name: &'a str) -> DiskFuture<'a, SnapshotInfo> {
        Box::pin(async move { refused(&format!("snapshotting disk {disk}")) })
    }

    fn get_snapshot<'a>(&'a self, id: &'a SnapshotId) -> DiskFuture<'a, SnapshotInfo> {
        Box::pin(async move { refused(&format!("reading snapshot {id}")) })
    }

    fn read_snapshot<'a>(
        &'a self,
        id: &'a SnapshotId,
        _offset: u64,
        _buf: &'a mut [u8],
    ) -> DiskFuture<'a> {
        Box::pin(async move { refused(&format!("reading snapshot {id}")) })
    }

    fn allocated_ranges<'a>(&'a self, id: &'a SnapshotId) -> DiskFuture<'a, Vec<ByteRange>> {
        Box::pin(async move { refused(&format!("reading snapshot {id}")) })
    }

    fn create_disk_from_stream<'a>(
        &'a self,
        name: &'a str,
        _size: u64,
        _pieces: PieceStream<'a>,
    ) -> DiskFuture<'a, DiskInfo> {
        Box::pin(async move { refused(&format!("creating disk {name}")) })
    }

    fn delete_disk<'a>(&'a self, _disk: &'a DiskId) -> DiskFuture<'a> {
        Box::pin(async { Ok(()) })
    }

    fn delete_snapshot<'a>(&'a self, _id: &'a SnapshotId) -> DiskFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_read_or_write_is_refused_naming_the_fix() {
        let none = NoDiskProvider;
        assert_eq!(none.driver(), "");
        let error = none
            .allocated_ranges(&SnapshotId("s".into()))
            .await
            .unwrap_err();
        assert!(!error.is_transient());
        assert!(error.to_string().contains("--disk-root"), "{error}");
        none.delete_snapshot(&SnapshotId("s".into())).await.unwrap();
    }
}
