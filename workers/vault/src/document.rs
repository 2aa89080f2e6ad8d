//! Mutable JSON documents in a vault, changed by read-modify-write under compare-and-swap.
//!
//! Job records, catalog settings, retention records and the collector's state are small JSON
//! documents that several workers may change at once. Each change goes through [`update`]:
//! read the document (or learn it is absent), let the caller decide what to write from what is
//! there, then write it only if nobody changed it meanwhile — with the version read
//! ([`BlobStore::update_if_unchanged`]) or, for an absent document, create-only. On a conflict
//! the caller's decision runs again on the fresh document, after a short jittered pause so
//! colliding writers do not collide again in lockstep. Documents are pretty-printed JSON with
//! a trailing newline, so an operator can read them with any blob browser.

use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::layout::BlobKey;
use crate::store::{BlobStore, CreateOutcome, StoreError};

/// What to do with the document, decided from what is stored.
pub enum Decision<T, R> {
    /// Write `T` (if the document is still as read), then answer `R`.
    Write(T, R),
    /// Write nothing, answer `R`.
    Keep(R),
}

/// Why an update did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    /// The stored document is not valid JSON of the expected shape.
    #[error("{key} is unreadable: {reason}")]
    Corrupt {
        /// Its key.
        key: String,
        /// The parser's complaint.
        reason: String,
    },
    /// Other writers changed the document on every attempt.
    #[error("{key} changed under every one of {tries} write attempts")]
    Contended {
        /// Its key.
        key: String,
        /// Attempts made.
        tries: u32,
    },
    /// Blob storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The caller's decision refused the change.
    #[error("{0}")]
    Rejected(E),
}

/// The document's bytes as stored.
pub fn encode<T: Serialize>(doc: &T) -> Bytes {
    let mut bytes = serde_json::to_vec_pretty(doc).expect("vault documents always serialize");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// The document stored at `key`, parsed.
pub fn decode<T: DeserializeOwned, E>(key: &BlobKey, bytes: &[u8]) -> Result<T, UpdateError<E>> {
    serde_json::from_slice(bytes).map_err(|e| UpdateError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// Change the document at `key`: `decide` gets what is stored (`None` when absent) and says
/// what to write; it runs again on the fresh document after a conflict, at most `tries` times.
pub async fn update<T, R, E>(
    store: &BlobStore,
    key: &BlobKey,
    tries: u32,
    mut decide: impl FnMut(Option<T>) -> Result<Decision<T, R>, E>,
) -> Result<R, UpdateError<E>>
where
    T: Serialize + DeserializeOwned,
{
    for attempt in 0..tries {
        if attempt > 0 {
            tokio::time::sleep(backoff(key, attempt)).await;
        }
        let (stored, version) = match store.get(key).await {
            Ok(object) => (Some(decode(key, &object.bytes)?), Some(object.version)),
            Err(e) if e.is_not_found() => (None, None),
            Err(e) => return Err(e.into()),
        };
        let (doc, answer) = match decide(stored).map_err(UpdateError::Rejected)? {
            Decision::Keep(answer) => return Ok(answer),
            Decision::Write(doc, answer) => (doc, answer),
        };
        let written = match &version {
            Some(version) => match store.update_if_unchanged(key, encode(&doc), version).await {
                Ok(_) => true,
                Err(StoreError::Conflict { .. }) => false,
                Err(e) => return Err(e.into()),
            },
            None => matches!(
                store.put_create_only(key, encode(&doc)).await?,
                CreateOutcome::Created(_)
            ),
        };
        if written {
            return Ok(answer);
        }
    }
    Err(UpdateError::Contended {
        key: key.to_string(),
        tries,
    })
}

/// A short, growing, jittered pause between attempts (1–2 ms growing to at most ~130 ms).
fn backoff(key: &BlobKey, attempt: u32) -> Duration {
    let base_ms = (1u64 << attempt.min(6)).min(64);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seed = blake3::hash(format!("{key}:{attempt}:{nanos}").as_bytes());
    let jitter = u64::from(seed.as_bytes()[0]) * base_ms / 255;
    Duration::from_millis(base_ms + jitter)
}
