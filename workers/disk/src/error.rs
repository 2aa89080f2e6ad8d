//! The provider's error type.

/// Why a disk-provider call failed. Every message names the thing, the reason, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The disk or snapshot does not exist.
    #[error("{what} {id:?} not found: check the id, or create the {what} first")]
    NotFound {
        /// What was looked for: `"disk"` or `"snapshot"`.
        what: &'static str,
        /// The id that was looked for.
        id: String,
    },

    /// A read or write reaches past the end of the disk or snapshot.
    #[error(
        "{disk}: range at offset {offset} of {len} bytes ends past the size of {size} bytes: \
         keep offset + length within the size"
    )]
    OutOfBounds {
        /// The disk or snapshot (e.g. `disk "a"`).
        disk: String,
        /// Offset of the request.
        offset: u64,
        /// Length of the request.
        len: u64,
        /// Size of the disk or snapshot.
        size: u64,
    },

    /// The request contradicts what already exists (a disk of another size, a snapshot name
    /// taken by another disk).
    #[error("{what} {id:?} conflicts with an existing one: {reason}")]
    Conflict {
        /// What conflicts: `"disk"` or `"snapshot"`.
        what: &'static str,
        /// Its id.
        id: String,
        /// What exists and what to do about it.
        reason: String,
    },

    /// A name the provider cannot use.
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        /// What was being named: `"disk"` or `"snapshot"`.
        what: &'static str,
        /// The name given.
        name: String,
        /// Why it is refused and what is accepted.
        reason: &'static str,
    },

    /// The underlying storage failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl stowage_schemas::Retryable for DiskError {
    fn is_transient(&self) -> bool {
        DiskError::is_transient(self)
    }
}

impl DiskError {
    /// Whether retrying the same call later may succeed. Missing things, bad ranges, conflicts
    /// and bad names are permanent; storage errors are transient unless they report corrupt
    /// data, a bad argument or a missing permission.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Io { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::InvalidData
                    | std::io::ErrorKind::InvalidInput
                    | std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::Unsupported
            ),
            Self::NotFound { .. }
            | Self::OutOfBounds { .. }
            | Self::Conflict { .. }
            | Self::InvalidName { .. } => false,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transience() {
        assert!(
            !DiskError::NotFound {
                what: "disk",
                id: "a".into()
            }
            .is_transient()
        );
        assert!(DiskError::io("x", std::io::Error::other("boom")).is_transient());
        assert!(
            !DiskError::io("x", std::io::Error::from(std::io::ErrorKind::InvalidData))
                .is_transient()
        );
    }
}
