//! Sorting vault and disk failures into "retry may help" and "it won't".
//!
//! The policy lives with each error type ([`stowage_schemas::Retryable`]: `stowage_vault::Error`
//! and `DiskError` answer it), and `?` converts either into a [`StageError`]. `Classify` is the
//! spelling the stage files still use (`.map_err(|e| e.stage_error())`); it is the same
//! conversion and goes away when those call sites become `?`.

use stowage_disk::DiskError;
use stowage_runtime::StageError;

/// Classify a failure for the runtime: storage and disk I/O hiccups are transient, everything
/// that means bad input or damaged data is permanent.
pub(crate) trait Classify {
    fn stage_error(self) -> StageError;
}

impl Classify for stowage_vault::Error {
    fn stage_error(self) -> StageError {
        self.into()
    }
}

impl Classify for DiskError {
    fn stage_error(self) -> StageError {
        self.into()
    }
}
