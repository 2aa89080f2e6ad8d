//! Leftovers of killed writers.
//!
//! Two kinds of temporary objects exist only while a write runs: the `.stowage-tmp/<hex>`
//! object of a streamed write (every backend), and on a local folder the staged file
//! `<key>#<n>` object_store writes before renaming it into place (listings hide those). A writer
//! killed mid-write leaves them behind. **Rule:** one is garbage once it has not been written
//! for longer than any write can pause — the caller's `older_than`, which the retention job sets
//! to the garbage-collection grace (24 h; "no job runs longer than the grace"). A live writer
//! writes its temporary object at least once per part (5 MiB), so its modification time stays
//! recent, and nothing else is ever deleted: only names of these two forms are considered.

use std::path::Path as FsPath;
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use object_store::ObjectStoreExt as _;

use super::{BlobStore, to_path};
use crate::error::{Error, ErrorKind};
use crate::layout::{LOCAL_LOCK_DIR, STREAM_TEMP_DIR};

/// A temporary object a writer left behind (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemporaryObject {
    /// Where it is: a path relative to the vault's root (`.stowage-tmp/<hex>`, or a local
    /// folder's staged file `<key>#<n>`).
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub modified: SystemTime,
}

impl BlobStore {
    /// Every temporary object in the store, with its size and modification time.
    pub async fn temporary_objects(&self) -> Result<Vec<TemporaryObject>, Error> {
        if let Some(root) = self.cas.local_root() {
            let root = root.to_owned();
            return tokio::task::spawn_blocking(move || local_temporaries(&root))
                .await
                .map_err(|e| {
                    Error::new(ErrorKind::Internal, format!("listing temporaries: {e}"))
                })?;
        }
        let mut found = Vec::new();
        let mut listing = self.inner.list(Some(&to_path(STREAM_TEMP_DIR)));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.backend_error("list", STREAM_TEMP_DIR, e))?;
            found.push(TemporaryObject {
                path: meta.location.to_string(),
                size: meta.size,
                modified: meta.last_modified.into(),
            });
        }
        Ok(found)
    }

    /// Deletes the temporary objects not written for longer than `older_than` at `now` (the
    /// rule in the module doc) and returns them; younger ones are kept.
    pub async fn remove_stale_temporaries(
        &self,
        older_than: Duration,
        now: SystemTime,
    ) -> Result<Vec<TemporaryObject>, Error> {
        let mut removed = Vec::new();
        for temp in self.temporary_objects().await? {
            let stale = now
                .duration_since(temp.modified)
                .is_ok_and(|age| age > older_than);
            if !stale {
                continue;
            }
            let gone = match self.cas.local_root() {
                Some(root) => {
                    let file = root.join(&temp.path);
                    match std::fs::remove_file(&file) {
                        Ok(()) => true,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                        Err(source) => return Err(local_error(&file, source)),
                    }
                }
                None => match self.inner.delete(&to_path(&temp.path)).await {
                    Ok(()) => true,
                    Err(object_store::Error::NotFound { .. }) => false,
                    Err(e) => return Err(self.backend_error("delete", &temp.path, e)),
                },
            };
            if gone {
                tracing::info!(path = %temp.path, size = temp.size, "removed a temporary object a killed writer left");
                removed.push(temp);
            }
        }
        Ok(removed)
    }
}

fn local_error(path: &FsPath, source: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Storage,
        format!(
            "cannot sweep temporary files at {}: {source}; check the vault folder's permissions",
            path.display()
        ),
    )
    .with_source(source)
}

/// A local folder's temporary files: everything under `.stowage-tmp/`, and staged files
/// `<name>#<digits>` anywhere else but the lock folder.
fn local_temporaries(root: &FsPath) -> Result<Vec<TemporaryObject>, Error> {
    let mut found = Vec::new();
    let mut folders = vec![(root.to_owned(), false)];
    while let Some((folder, in_temp_dir)) = folders.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(local_error(&folder, source)),
        };
        for entry in entries {
            let entry = entry.map_err(|source| local_error(&folder, source))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if folder == root && name == LOCAL_LOCK_DIR {
                    continue;
                }
                let temp = in_temp_dir || (folder == root && name == STREAM_TEMP_DIR);
                folders.push((entry.path(), temp));
                continue;
            }
            let staged = name
                .split_once('#')
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if !(in_temp_dir || staged) {
                continue;
            }
            let Ok(relative) = entry.path().strip_prefix(root).map(FsPath::to_owned) else {
                continue;
            };
            // Without a modification time its age is unknown: never reported, never removed.
            let Ok(modified) = meta.modified() else {
                continue;
            };
            found.push(TemporaryObject {
                path: relative.to_string_lossy().into_owned(),
                size: meta.len(),
                modified,
            });
        }
    }
    Ok(found)
}
