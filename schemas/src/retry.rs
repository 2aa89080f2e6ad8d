//! Whether a failure is worth another try: the one question every error type the stages see
//! answers once, so the runtime's retry policy is decided per error type rather than per call.

/// Whether trying the same operation again later can help. Every error type the stages see
/// answers it once; the runtime turns any `Retryable` error into a transient or permanent
/// stage failure with `?`.
pub trait Retryable: std::error::Error + Send + Sync + 'static {
    /// True if the same operation may succeed later (an unreachable or busy dependency, a lost
    /// race); false if it will fail the same way (bad input, missing or damaged data).
    fn is_transient(&self) -> bool;
}
