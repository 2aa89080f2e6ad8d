//! The control plane: what drives the pipeline's stages from outside.
//!
//! | module | what it does | used by |
//! |---|---|---|
//! | [`scheduler`] | backup slots per policy, claimed once per slot through job records, and each instance's daily retention job | `stowage scheduler`, `stowage backup now` |
//! | [`preflight`] | checks a backup needs before the first one runs, grouped by what they read (vault, broker, cluster) | `stowage preflight`, `stowage instance create` |
//! | [`job_records`] | [`Recorded`], the decorator every stage runs in: its runs kept in the job's record (status, attempts, progress, cancellation) | every worker |
//! | [`verify`] | re-reads every chunk of a recovery point in a tier and names damage | `stowage rp verify` |
//!
//! The catalog documents these read and write (settings, manifests, job records) live below
//! the stages, in `stowage_vault::catalog`; the stages themselves are `stowage-stages`.

pub mod job_records;
pub mod preflight;
pub mod recovery;
pub mod scheduler;
pub mod verify;

pub use job_records::{RecordSettings, Recorded};
