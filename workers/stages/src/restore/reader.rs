//! Reading a resources object one Kubernetes object at a time, by ranges, so a restore's memory
//! does not grow with the object.

use std::collections::VecDeque;

use serde_json::Value;
use stowage_runtime::StageError;
use stowage_vault::layout::BlobKey;
use stowage_vault::store::BlobStore;

/// Bytes read from the resources object per range request.
const READ_WINDOW: u64 = 1 << 20;

/// Reads a resources object (JSON lines; a line may also be a `…List` whose items are the
/// objects) one object at a time, by ranges of [`READ_WINDOW`] bytes.
pub(super) struct ObjectReader<'a> {
    store: &'a BlobStore,
    key: &'a BlobKey,
    size: u64,
    position: u64,
    buffer: Vec<u8>,
    start: usize,
    pending: VecDeque<Value>,
    line: u64,
}

impl<'a> ObjectReader<'a> {
    pub(super) async fn open(store: &'a BlobStore, key: &'a BlobKey) -> Result<Self, StageError> {
        let info = store.head(key).await.map_err(|e| {
            if e.is_not_found() {
                StageError::permanent(format!(
                    "the resources object {key} is missing ({e}); the recovery point (or its \
                     staging area) is incomplete: restore another recovery point, or hydrate again"
                ))
            } else {
                StageError::from(e)
            }
        })?;
        Ok(Self {
            store,
            key,
            size: info.size,
            position: 0,
            buffer: Vec::new(),
            start: 0,
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
                None if self.position < self.size => {
                    self.buffer.drain(..self.start);
                    self.start = 0;
                    let end = (self.position + READ_WINDOW).min(self.size);
                    let bytes = self.store.get_range(self.key, self.position..end).await?;
                    self.buffer.extend_from_slice(&bytes);
                    self.position = end;
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
