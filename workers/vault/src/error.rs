//! The vault's one public error.
//!
//! Every fallible operation of this crate that touches storage answers [`Error`]: a message
//! that names the object, the reason and what to do (the same texts the per-module errors had),
//! a [`ErrorKind`] to branch on, whether a retry can help ([`Error::is_transient`], also
//! [`stowage_schemas::Retryable`], so a stage turns it into a transient or permanent failure with
//! `?`), and the underlying cause as its `source()`. In the style of rustic_core's error: one
//! type with a kind and a permanent/temporary status, instead of an enum per module that wraps
//! the store's enum again.
//!
//! The small value errors of pure functions ([`crate::layout::LayoutError`],
//! [`crate::extent::ExtentError`], [`crate::chunk::ChunkError`], [`crate::crypto::KeyError`])
//! stay precise types of their own; each converts into [`Error`] with `?`.

use std::error::Error as StdError;
use std::fmt;

use crate::chunk::{ChunkError, Corruption};
use crate::crypto::KeyError;
use crate::extent::ExtentError;
use crate::layout::LayoutError;

/// What went wrong, coarsely: enough to decide what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The object or record does not exist.
    NotFound,
    /// A compare-and-swap found the object changed (or deleted) since it was read: re-read,
    /// re-apply, write again.
    Conflict,
    /// Other writers kept winning, or what the caller relies on is being deleted right now:
    /// retry later.
    Contended,
    /// Storage was unreachable or failed in a way that may pass (network, throttling, locks).
    Unavailable,
    /// Storage refused the operation for good (permissions, a bad request).
    Storage,
    /// Stored data is damaged or does not fit together (corrupt chunk, index, map, manifest).
    Damaged,
    /// A name, id, size or argument that cannot be used.
    InvalidInput,
    /// The backend cannot do what was asked (e.g. a conditional update).
    Unsupported,
    /// The vault location or its configuration cannot be used.
    Config,
    /// The content handed to a streamed write could not be produced.
    Source,
    /// Something inside this process failed (a task died, no randomness).
    Internal,
}

impl ErrorKind {
    /// Whether errors of this kind are worth a retry unless said otherwise.
    fn transient_by_default(self) -> bool {
        matches!(self, Self::Contended | Self::Unavailable)
    }
}

/// A vault operation failed. See the module doc.
pub struct Error {
    kind: ErrorKind,
    transient: bool,
    /// The whole message; `None` means the message (and the causes) are the source's own.
    message: Option<String>,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
    /// What exactly is wrong with a damaged chunk, for reports per chunk.
    corruption: Option<Corruption>,
}

impl Error {
    /// An error of `kind` saying `message`; transient as the kind says.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            transient: kind.transient_by_default(),
            message: Some(message.into()),
            source: None,
            corruption: None,
        }
    }

    /// An error of `kind` whose message is `source`'s own (like `#[error(transparent)]`).
    pub(crate) fn wrap(kind: ErrorKind, source: impl StdError + Send + Sync + 'static) -> Self {
        Self {
            kind,
            transient: kind.transient_by_default(),
            message: None,
            source: Some(Box::new(source)),
            corruption: None,
        }
    }

    /// The same error, caused by `source`.
    pub(crate) fn with_source(
        mut self,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The same error, transient or not whatever its kind says.
    pub(crate) fn with_transient(mut self, transient: bool) -> Self {
        self.transient = transient;
        self
    }

    /// The same error, recording what is wrong with a damaged chunk.
    pub(crate) fn with_corruption(mut self, corruption: Corruption) -> Self {
        self.corruption = Some(corruption);
        self
    }

    /// An [`ErrorKind::Contended`] error (transient) saying `message`: other writers kept
    /// winning, or what the caller relies on is being deleted right now.
    pub fn contended(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Contended, message)
    }

    /// Its kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying the same operation later may succeed (network trouble, throttling,
    /// contention), as opposed to a permanent answer (missing object, conflict, bad input,
    /// damaged data, bad configuration).
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// Whether the object or record does not exist.
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// Whether a compare-and-swap lost to another writer.
    pub fn is_conflict(&self) -> bool {
        self.kind == ErrorKind::Conflict
    }

    /// What is wrong with the chunk, if this error reports a damaged chunk.
    pub fn corruption(&self) -> Option<&Corruption> {
        self.corruption.as_ref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.message, &self.source) {
            (Some(message), _) => f.write_str(message),
            (None, Some(source)) => fmt::Display::fmt(source, f),
            (None, None) => write!(f, "{:?}", self.kind),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Error");
        debug
            .field("kind", &self.kind)
            .field("transient", &self.transient)
            .field("message", &self.to_string());
        if let Some(source) = StdError::source(self) {
            debug.field("source", &source.to_string());
        }
        debug.finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        let source = self.source.as_deref()?;
        match self.message {
            Some(_) => Some(source as &(dyn StdError + 'static)),
            // Transparent: the wrapped error's causes are this error's causes.
            None => source.source(),
        }
    }
}

impl stowage_schemas::Retryable for Error {
    fn is_transient(&self) -> bool {
        self.transient
    }
}

impl From<LayoutError> for Error {
    fn from(error: LayoutError) -> Self {
        Self::wrap(ErrorKind::InvalidInput, error)
    }
}

impl From<ExtentError> for Error {
    fn from(error: ExtentError) -> Self {
        let kind = match &error {
            ExtentError::BrokenChain { .. } | ExtentError::Corrupt { .. } => ErrorKind::Damaged,
            ExtentError::OutOfOrder { .. }
            | ExtentError::BeyondChunk { .. }
            | ExtentError::Layout(_) => ErrorKind::InvalidInput,
        };
        Self::wrap(kind, error)
    }
}

impl From<KeyError> for Error {
    fn from(error: KeyError) -> Self {
        let kind = match &error {
            KeyError::BadHex { .. } => ErrorKind::InvalidInput,
            KeyError::Random => ErrorKind::Internal,
        };
        Self::wrap(kind, error)
    }
}

impl From<ChunkError> for Error {
    fn from(error: ChunkError) -> Self {
        match error {
            ChunkError::Key(key) => key.into(),
            ChunkError::TooLarge { .. } => Self::wrap(ErrorKind::InvalidInput, error),
            ChunkError::Corrupt { ref reason, .. } => {
                let corruption = reason.clone();
                Self::wrap(ErrorKind::Damaged, error).with_corruption(corruption)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_decide_retries_unless_told_otherwise() {
        assert!(Error::contended("busy").is_transient());
        assert!(Error::new(ErrorKind::Unavailable, "down").is_transient());
        let conflict = Error::new(ErrorKind::Conflict, "lost");
        assert!(conflict.is_conflict() && !conflict.is_transient());
        let source = Error::new(ErrorKind::Source, "x").with_transient(true);
        assert!(stowage_schemas::Retryable::is_transient(&source));
    }

    #[test]
    fn a_wrapped_error_reads_as_its_source_and_keeps_its_causes() {
        let layout = crate::layout::job("a/b").unwrap_err();
        let text = layout.to_string();
        let error = Error::from(layout);
        assert_eq!(error.kind(), ErrorKind::InvalidInput);
        assert_eq!(error.to_string(), text);
        assert!(StdError::source(&error).is_none());

        let io = std::io::Error::other("disk on fire");
        let error =
            Error::new(ErrorKind::Unavailable, "cannot write: disk on fire").with_source(io);
        let cause = StdError::source(&error).expect("a cause");
        assert_eq!(cause.to_string(), "disk on fire");
        assert!(format!("{error:?}").contains("Unavailable"));
    }
}
