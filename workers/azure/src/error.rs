//! Errors that name the resource, the reason and the fix, sorted by whether a retry can help.

/// What went wrong talking to Azure, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum AzureError {
    /// ARM (or blob storage) answered with an error status and, usually, an error body
    /// `{"error":{"code","message"}}`.
    #[error("{0}")]
    Service(Box<ServiceError>),
    /// A long-running operation ended `Failed` or `Canceled`.
    #[error("{operation} {resource}: the operation ended {status}: {code}: {message}")]
    OperationFailed {
        /// What was being done.
        operation: &'static str,
        /// The resource.
        resource: String,
        /// `Failed` or `Canceled`.
        status: String,
        /// The operation's error code.
        code: String,
        /// The operation's error message.
        message: String,
    },
    /// Stowage refuses the resource before asking Azure (a private disk, a disk too large).
    #[error("{resource}: refused: {reason}; fix: {fix}")]
    Refused {
        /// The resource.
        resource: String,
        /// Why.
        reason: String,
        /// What to run or change.
        fix: String,
    },
    /// The request never got an answer (connection, timeout, TLS), or a credential could not
    /// produce a token.
    #[error("{operation} {resource}: {source}")]
    Transport {
        /// What was being done.
        operation: &'static str,
        /// The resource.
        resource: String,
        /// The transport's error (never holds a token or a SAS signature).
        #[source]
        source: Box<azure_core::Error>,
        /// Whether a retry can help (`false` for a credential that is not set up).
        transient: bool,
    },
    /// A long-running operation did not finish within the configured time.
    #[error(
        "{operation} {resource}: not finished after {waited_secs} s; look at the resource in the portal or with `az`, and retry"
    )]
    Timeout {
        /// What was being done.
        operation: &'static str,
        /// The resource.
        resource: String,
        /// How long Stowage waited.
        waited_secs: u64,
    },
    /// The answer did not have the shape the REST reference gives it.
    #[error("{operation} {resource}: unexpected answer: {detail}")]
    Protocol {
        /// What was being done.
        operation: &'static str,
        /// The resource.
        resource: String,
        /// What was wrong with it.
        detail: String,
    },
    /// The data being written came from elsewhere (the vault) and that source failed.
    #[error("{message}")]
    Source {
        /// The source's error, as it said it.
        message: String,
        /// Whether the source said a retry can help.
        transient: bool,
    },
    /// The configuration is unusable (an endpoint over plain HTTP to a remote host, a bad id).
    #[error("configuration: {0}")]
    Config(String),
}

/// An error answer of the service, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{operation} {resource}: {code} (HTTP {status}): {message}{}", fix_suffix(.fix))]
pub struct ServiceError {
    /// What was being done (`create snapshot`, `beginGetAccess`, …).
    pub operation: &'static str,
    /// The resource id or name it was done to.
    pub resource: String,
    /// HTTP status.
    pub status: u16,
    /// The service's error code (`AuthorizationFailed`, `ResourceNotFound`, …).
    pub code: String,
    /// The service's message.
    pub message: String,
    /// What to run or change to fix it, when it is known.
    pub fix: Option<String>,
    /// ARM's `x-ms-correlation-request-id`, for a support ticket.
    pub correlation_id: Option<String>,
}

fn fix_suffix(fix: &Option<String>) -> String {
    match fix {
        Some(fix) => format!("; fix: {fix}"),
        None => String::new(),
    }
}

impl AzureError {
    /// Whether retrying the same request later can succeed: throttling, server errors,
    /// conflicts with an operation in progress, timeouts and lost connections. Everything else
    /// (bad input, missing permission, a refused disk) needs a person first.
    pub fn is_transient(&self) -> bool {
        match self {
            AzureError::Service(e) => {
                e.status == 408
                    || e.status == 409 && e.code != "OperationNotAllowed"
                    || e.status == 429
                    || e.status >= 500
            }
            AzureError::OperationFailed { code, .. } => {
                matches!(
                    code.as_str(),
                    "InternalExecutionError" | "InternalOperationError"
                )
            }
            AzureError::Transport { transient, .. } | AzureError::Source { transient, .. } => {
                *transient
            }
            AzureError::Timeout { .. } => true,
            AzureError::Refused { .. } | AzureError::Protocol { .. } | AzureError::Config(_) => {
                false
            }
        }
    }

    /// Whether the service said the resource does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The HTTP status of a service error.
    pub fn status(&self) -> Option<u16> {
        match self {
            AzureError::Service(e) => Some(e.status),
            _ => None,
        }
    }

    /// The service's error code (`AuthorizationFailed`, …) of a service error.
    pub fn code(&self) -> Option<&str> {
        match self {
            AzureError::Service(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// What the crate's operations return.
pub type Result<T, E = AzureError> = std::result::Result<T, E>;
