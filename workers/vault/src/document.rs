//! Mutable JSON documents in a vault, changed by read-modify-write under compare-and-swap.
//!
//! Job records, catalog settings, retention records and the collector's state are small JSON
//! documents that several workers may change at once. Each change goes through [`update`]:
//! read the document (or learn it is absent), let the caller decide what to write from what is
//! there, then write it only if nobody changed it meanwhile — with the version read
//! ([`BlobStore::update_if_unchanged`]) or, for an absent document, create-only. On a conflict
//! the caller's decision runs again on the fresh document, after a short jittered pause so
//! colliding writers do not collide again in lockstep ([`backon`]'s exponential backoff). Documents are pretty-printed JSON with
//! a trailing newline, so an operator can read them with any blob browser.

use std::sync::Mutex;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::layout::{BlobKey, KeyPrefix};
use crate::store::{BlobStore, CreateOutcome};

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
    Store(#[from] Error),
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

/// How many documents [`list`] reads at once.
const LIST_READS_IN_FLIGHT: usize = 8;

/// Streams the documents under `prefix` whose key `wanted` accepts, in no particular order,
/// reading a few at a time (memory stays bounded however many there are) and parsing each
/// with `decode`. A document deleted between the listing and its read is skipped.
pub fn list<T, E>(
    store: &BlobStore,
    prefix: &KeyPrefix,
    wanted: fn(&BlobKey) -> bool,
    decode: fn(&BlobKey, &[u8]) -> Result<T, E>,
) -> BoxStream<'static, Result<T, E>>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    let reader = store.clone();
    store
        .list(prefix)
        .filter_map(move |item| async move {
            match item {
                Ok(info) if wanted(&info.key) => Some(Ok(info.key)),
                Ok(_) => None,
                Err(e) => Some(Err(E::from(e))),
            }
        })
        .map(move |key| {
            let store = reader.clone();
            async move {
                let key = match key {
                    Ok(key) => key,
                    Err(e) => return Some(Err(e)),
                };
                match store.get(&key).await {
                    Ok(object) => Some(decode(&key, &object.bytes)),
                    Err(e) if e.is_not_found() => None,
                    Err(e) => Some(Err(E::from(e))),
                }
            }
        })
        .buffer_unordered(LIST_READS_IN_FLIGHT)
        .filter_map(|item| async move { item })
        .boxed()
}

/// Change the document at `key`: `decide` gets what is stored (`None` when absent) and says
/// what to write; it runs again on the fresh document after a conflict, at most `tries` times.
pub async fn update<T, R, E>(
    store: &BlobStore,
    key: &BlobKey,
    tries: u32,
    decide: impl FnMut(Option<T>) -> Result<Decision<T, R>, E>,
) -> Result<R, UpdateError<E>>
where
    T: Serialize + DeserializeOwned,
{
    // Each attempt borrows the decision; a lock (never contended: attempts run one at a time)
    // lets the attempt futures share it.
    let decide = Mutex::new(decide);
    let attempt = || async {
        let (stored, version) = match store.get(key).await {
            Ok(object) => (Some(decode(key, &object.bytes)?), Some(object.version)),
            Err(e) if e.is_not_found() => (None, None),
            Err(e) => return Err(Attempt::Failed(e.into())),
        };
        let decision = (decide.lock().unwrap_or_else(|p| p.into_inner()))(stored);
        let (doc, answer) = match decision.map_err(UpdateError::Rejected)? {
            Decision::Keep(answer) => return Ok(answer),
            Decision::Write(doc, answer) => (doc, answer),
        };
        let written = match &version {
            Some(version) => match store.update_if_unchanged(key, encode(&doc), version).await {
                Ok(_) => true,
                Err(e) if e.is_conflict() => false,
                Err(e) => return Err(Attempt::Failed(e.into())),
            },
            None => matches!(
                store
                    .put_create_only(key, encode(&doc))
                    .await
                    .map_err(UpdateError::from)?,
                CreateOutcome::Created(_)
            ),
        };
        if written {
            Ok(answer)
        } else {
            Err(Attempt::Lost)
        }
    };
    match attempt
        .retry(pauses(tries))
        .when(|e| matches!(e, Attempt::Lost))
        .await
    {
        Ok(answer) => Ok(answer),
        Err(Attempt::Failed(e)) => Err(e),
        Err(Attempt::Lost) => Err(UpdateError::Contended {
            key: key.to_string(),
            tries,
        }),
    }
}

/// How one attempt of [`update`] ended, if not with an answer.
enum Attempt<E> {
    /// Another writer changed the document since it was read: decide again.
    Lost,
    /// Give up with this error.
    Failed(UpdateError<E>),
}

impl<E> From<UpdateError<E>> for Attempt<E> {
    fn from(error: UpdateError<E>) -> Self {
        Self::Failed(error)
    }
}

/// The pauses between attempts: short, growing, jittered (2–4 ms, doubling to at most
/// 64–128 ms), and `tries - 1` of them.
fn pauses(tries: u32) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(2))
        .with_factor(2.0)
        .with_max_delay(Duration::from_millis(64))
        .with_max_times(tries.saturating_sub(1) as usize)
        .with_jitter()
}
