//! Reading a resources object one Kubernetes object at a time, by ranges, so a restore's memory
//! does not grow with the object. The object is sealed (`stowage_vault::seal`): each window is
//! authenticated before any object in it is handed on, and [`authenticate`] checks the whole
//! object before a restore applies anything from it.

use std::collections::VecDeque;

use serde_json::Value;
use stowage_runtime::StageError;
use stowage_vault::layout::BlobKey;
use stowage_vault::store::{BlobStore, WindowReader};

/// Reads a resources object (JSON lines; a line may also be a `…List` whose items are the
/// objects) one object at a time, a window (about 1 MiB) per range request.
pub(super) struct ObjectReader<'a> {
    key: &'a BlobKey,
    windows: WindowReader,
    buffer: Vec<u8>,
    start: usize,
    ended: bool,
    pending: VecDeque<Value>,
    line: u64,
}

/// The resources object `key` opened for reading, or a permanent error naming it.
async fn open(store: &BlobStore, key: &BlobKey) -> Result<WindowReader, StageError> {
    store.read_windows(key).await.map_err(|e| {
        if e.is_not_found() {
            StageError::permanent(format!(
                "the resources object {key} is missing ({e}); the recovery point (or its \
                 staging area) is incomplete: restore another recovery point, or hydrate again"
            ))
        } else {
            unreadable(key, e)
        }
    })
}

fn unreadable(key: &BlobKey, error: stowage_vault::Error) -> StageError {
    if error.is_transient() {
        return StageError::from(error);
    }
    StageError::permanent(format!(
        "the resources object {key} cannot be used, so nothing was restored from it: {error}"
    ))
}

/// Reads the whole resources object `key` once, authenticating every segment, before anything
/// from it is applied: a damaged object fails the restore before the cluster is touched, not
/// half-way through it.
pub(super) async fn authenticate(store: &BlobStore, key: &BlobKey) -> Result<u64, StageError> {
    open(store, key)
        .await?
        .check_to_end()
        .await
        .map_err(|e| unreadable(key, e))
}

impl<'a> ObjectReader<'a> {
    pub(super) async fn open(store: &BlobStore, key: &'a BlobKey) -> Result<Self, StageError> {
        Ok(Self {
            key,
            windows: open(store, key).await?,
            buffer: Vec::new(),
            start: 0,
            ended: false,
            pending: VecDeque::new(),
            line: 0,
        })
    }

    pub(super) async fn next(&mut self) -> Result<Option<Value>, StageError> {
        loop {
            if let Some(object) = self.pending.pop_front() {
                return Ok(Some(object));
            }
            let rest = &self.buffer[self.start..];
            let line = match rest.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    let line = self.start..self.start + end;
                    self.start += end + 1;
                    line
                }
                None if !self.ended => {
                    self.buffer.drain(..self.start);
                    self.start = 0;
                    match self.windows.next_window().await {
                        Ok(Some(window)) => self.buffer.extend_from_slice(&window),
                        Ok(None) => self.ended = true,
                        Err(e) => return Err(unreadable(self.key, e)),
                    }
                    continue;
                }
                None if self.start < self.buffer.len() => {
                    let line = self.start..self.buffer.len();
                    self.start = self.buffer.len();
                    line
                }
                None => return Ok(None),
            };
            self.line += 1;
            let text = &self.buffer[line];
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let value: Value = serde_json::from_slice(text).map_err(|e| {
                StageError::permanent(format!(
                    "line {} of the resources object {} is not JSON ({e}); the object is damaged: \
                     restore another recovery point",
                    self.line, self.key
                ))
            })?;
            let is_list = value["kind"].as_str().is_some_and(|k| k.ends_with("List"))
                && value.get("items").is_some_and(Value::is_array);
            if is_list {
                if let Value::Array(items) = value["items"].clone() {
                    self.pending.extend(items);
                }
                continue;
            }
            return Ok(Some(value));
        }
    }
}
