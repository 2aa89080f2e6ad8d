//! Sorting vault, disk and catalog failures into "retry may help" and "it won't".

use stowage_disk::DiskError;
use stowage_runtime::StageError;
use stowage_vault::catalog::CatalogError;
use stowage_vault::catalog::settings::SettingsError;
use stowage_vault::extent::ExtentStoreError;
use stowage_vault::index::IndexError;
use stowage_vault::pack::PackError;
use stowage_vault::store::StoreError;

/// Classify a failure for the runtime: storage and disk I/O hiccups are transient, everything
/// that means bad input or damaged data is permanent.
pub(crate) trait Classify {
    fn stage_error(self) -> StageError;
}

fn by(transient: bool, err: impl std::error::Error + Send + Sync + 'static) -> StageError {
    if transient {
        StageError::transient(err)
    } else {
        StageError::permanent(err)
    }
}

impl Classify for StoreError {
    fn stage_error(self) -> StageError {
        by(self.is_transient(), self)
    }
}

impl Classify for DiskError {
    fn stage_error(self) -> StageError {
        by(self.is_transient(), self)
    }
}

impl Classify for CatalogError {
    fn stage_error(self) -> StageError {
        let transient = matches!(&self, CatalogError::Store(e) if e.is_transient());
        by(transient, self)
    }
}

impl Classify for PackError {
    fn stage_error(self) -> StageError {
        let transient = matches!(&self, PackError::Store(e) if e.is_transient());
        by(transient, self)
    }
}

impl Classify for IndexError {
    fn stage_error(self) -> StageError {
        let transient = matches!(&self, IndexError::Store(e) if e.is_transient());
        by(transient, self)
    }
}

impl Classify for ExtentStoreError {
    fn stage_error(self) -> StageError {
        let transient = matches!(&self, ExtentStoreError::Store(e) if e.is_transient());
        by(transient, self)
    }
}

impl Classify for SettingsError {
    fn stage_error(self) -> StageError {
        let transient = match &self {
            SettingsError::Store(e) => e.is_transient(),
            SettingsError::Contended { .. } => true,
            _ => false,
        };
        by(transient, self)
    }
}
