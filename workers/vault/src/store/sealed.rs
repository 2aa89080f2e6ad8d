//! A store that holds the vault key seals and opens the keys [`layout::is_sealed`] names (the
//! format is [`crate::seal`]'s), on its ordinary reads and writes: `put_create_only`, `get`,
//! `update_if_unchanged`, `put_stream_create_only`, `copy_to_key_create_only`, and
//! [`BlobStore::read_windows`] for objects too large to read whole. A store without the key
//! refuses to write a sealed key (nothing goes to storage in the clear) and fails to read one,
//! naming the fix.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt as _};

use super::BlobStore;
use crate::crypto::{KeyId, VaultKey};
use crate::error::{Error, ErrorKind};
use crate::layout::{self, BlobKey};
use crate::seal::{self, HEADER_LEN, Opener, SealKeys};

/// Plaintext bytes [`WindowReader`] reads per range request of an object that is not sealed;
/// a sealed one is read [`WINDOW_SEGMENTS`] segments at a time (the same 1 MiB of plaintext).
pub const WINDOW_BYTES: u64 = 1 << 20;
/// Segments of a sealed object per range request of [`WindowReader`].
pub const WINDOW_SEGMENTS: u64 = WINDOW_BYTES / seal::SEGMENT_LEN as u64;

impl BlobStore {
    /// This store, sealing and opening the keys [`layout::is_sealed`] names under `key` (see
    /// [`crate::seal`]). Clones share the backend.
    pub fn with_key(&self, key: &VaultKey) -> Self {
        Self {
            seal: Some(Arc::new(SealKeys::new(key))),
            ..self.clone()
        }
    }

    /// The id of the vault key this store seals with, if it holds one.
    pub fn sealing_key_id(&self) -> Option<&KeyId> {
        self.seal.as_deref().map(SealKeys::key_id)
    }

    /// The keys to seal `key` with; an error if this store holds none.
    fn keys_to_seal(&self, key: &BlobKey) -> Result<&SealKeys, Error> {
        self.seal
            .as_deref()
            .ok_or_else(|| Error::sealing_without_key(key))
    }

    /// `bytes` as they are stored under `key`: sealed if the layout says so.
    pub(super) fn seal_for(&self, key: &BlobKey, bytes: Bytes) -> Result<Bytes, Error> {
        if !layout::is_sealed(key) {
            return Ok(bytes);
        }
        seal::seal_whole(self.keys_to_seal(key)?, key, &bytes)
    }

    /// The content of `key` from the bytes `stored` under it: opened if the layout says so.
    pub(super) fn open_for(&self, key: &BlobKey, stored: Bytes) -> Result<Bytes, Error> {
        if !layout::is_sealed(key) {
            return Ok(stored);
        }
        seal::open_whole(self.seal.as_deref(), key, &stored)
    }

    /// Writes the plaintext `chunks` under `key`, create-only, sealing them as they stream if
    /// the layout says so (see [`Self::put_stream_create_only`]).
    pub(super) async fn put_plaintext_stream<S>(
        &self,
        key: &BlobKey,
        chunks: S,
    ) -> Result<super::CreateOutcome, Error>
    where
        S: Stream<Item = Result<Bytes, Error>> + Send,
    {
        if !layout::is_sealed(key) {
            return self.put_stream(key, chunks).await;
        }
        let sealed = seal::seal_stream(self.keys_to_seal(key)?, key, chunks)?;
        self.put_stream(key, sealed).await
    }

    /// Reads the object `key` front to back by range requests of about [`WINDOW_BYTES`], so
    /// memory stays at a window whatever its size: a sealed object is opened segment by segment,
    /// each segment authenticated before its bytes are handed on (and the object is known to
    /// end where it should only when the last window is read).
    pub async fn read_windows(&self, key: &BlobKey) -> Result<WindowReader, Error> {
        let size = self.head(key).await?.size;
        let opener = if layout::is_sealed(key) {
            let header_end = (HEADER_LEN as u64).min(size);
            let header = self.get_range_raw(key, 0..header_end).await?;
            Some(Opener::new(self.seal.as_deref(), key, &header, size)?)
        } else {
            None
        };
        Ok(WindowReader {
            store: self.clone(),
            key: key.clone(),
            size,
            opener,
            next: 0,
        })
    }
}

/// An object read front to back, a window at a time ([`BlobStore::read_windows`]).
pub struct WindowReader {
    store: BlobStore,
    key: BlobKey,
    size: u64,
    opener: Option<Opener>,
    /// The next stored byte (an object that is not sealed) or segment (a sealed one).
    next: u64,
}

impl WindowReader {
    /// The object's key.
    pub fn key(&self) -> &BlobKey {
        &self.key
    }

    /// How many bytes of content the object holds (after opening, for a sealed one).
    pub fn len(&self) -> u64 {
        match &self.opener {
            Some(opener) => opener.geometry.plaintext,
            None => self.size,
        }
    }

    /// Whether the object holds no content.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next window of content, `None` after the last.
    pub async fn next_window(&mut self) -> Result<Option<Bytes>, Error> {
        let Some(opener) = &self.opener else {
            if self.next >= self.size {
                return Ok(None);
            }
            let end = (self.next + WINDOW_BYTES).min(self.size);
            let bytes = self.store.get_range_raw(&self.key, self.next..end).await?;
            self.next = end;
            return Ok(Some(bytes));
        };
        let segments = opener.geometry.segments;
        if self.next >= segments {
            return Ok(None);
        }
        let end = (self.next + WINDOW_SEGMENTS).min(segments);
        let sealed = self
            .store
            .get_range_raw(&self.key, opener.geometry.range(self.next, end))
            .await?;
        let mut plain = Vec::with_capacity(sealed.len());
        opener.open_segments(self.next, &sealed, &mut plain)?;
        self.next = end;
        Ok(Some(Bytes::from(plain)))
    }

    /// Reads the rest of the object without keeping it, authenticating every segment of a
    /// sealed one; answers how many content bytes were read.
    pub async fn check_to_end(mut self) -> Result<u64, Error> {
        let mut read = 0u64;
        while let Some(window) = self.next_window().await? {
            read += window.len() as u64;
        }
        Ok(read)
    }

    /// The remaining windows as a stream.
    pub fn into_stream(self) -> BoxStream<'static, Result<Bytes, Error>> {
        futures::stream::unfold(Some(self), |reader| async move {
            let mut reader = reader?;
            match reader.next_window().await {
                Ok(Some(window)) => Some((Ok(window), Some(reader))),
                Ok(None) => None,
                Err(error) => Some((Err(error), None)),
            }
        })
        .boxed()
    }
}

impl std::fmt::Debug for WindowReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowReader")
            .field("key", &self.key)
            .field("sealed", &self.opener.is_some())
            .field("len", &self.len())
            .finish()
    }
}

impl Error {
    /// A copy that would write a sealed object's content in the clear.
    pub(super) fn unsealing_copy(from: &BlobKey, to: &BlobKey) -> Self {
        Self::new(
            ErrorKind::InvalidInput,
            format!(
                "{from} is sealed and {to} is not: copying it there would store its content in                  the clear; nothing was written"
            ),
        )
    }

    /// A range read of a sealed key: the bytes are ciphertext, not what the caller wants.
    pub(super) fn range_of_sealed(key: &BlobKey) -> Self {
        Self::new(
            ErrorKind::InvalidInput,
            format!(
                "{key} is sealed, so a byte range of it is ciphertext: read it with \
                 BlobStore::read_windows (or get)"
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::SEGMENT_LEN;
    use crate::store::CreateOutcome;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 13 % 251) as u8).collect()
    }

    fn keyed() -> BlobStore {
        BlobStore::in_memory().with_key(&VaultKey::generate().unwrap())
    }

    #[tokio::test]
    async fn sealed_keys_are_sealed_on_every_write_path_and_read_back() {
        let store = keyed();
        let manifest = layout::recovery_point("web", "rp-1").unwrap();
        let body = br#"{"id":"rp-1","secret":"hunter2"}"#.to_vec();
        store
            .put_create_only(&manifest, body.clone())
            .await
            .unwrap();
        let raw = store.get_raw(&manifest).await.unwrap().bytes;
        assert!(raw.starts_with(seal::MAGIC));
        assert!(!raw.windows(7).any(|w| w == b"hunter2"));
        let read = store.get(&manifest).await.unwrap();
        assert_eq!(read.bytes, body);
        // Compare-and-swap seals the new content and still compares versions.
        let changed = br#"{"id":"rp-1","secret":"hunter3"}"#.to_vec();
        store
            .update_if_unchanged(&manifest, changed.clone(), &read.version)
            .await
            .unwrap();
        assert_eq!(store.get(&manifest).await.unwrap().bytes, changed);
        assert!(
            store
                .update_if_unchanged(&manifest, body.clone(), &read.version)
                .await
                .unwrap_err()
                .is_conflict()
        );

        // Streamed, across many segments and more than one upload part.
        let resources = layout::resource("web", "rp-1", &["resources.jsonl"]).unwrap();
        let data = pattern(6 << 20);
        let chunks: Vec<Result<Bytes, std::io::Error>> = data
            .chunks(300_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let outcome = store
            .put_stream_create_only(&resources, futures::stream::iter(chunks))
            .await
            .unwrap();
        assert!(matches!(outcome, CreateOutcome::Created(_)));
        let mut reader = store.read_windows(&resources).await.unwrap();
        assert_eq!(reader.len(), data.len() as u64);
        let mut back = Vec::new();
        while let Some(window) = reader.next_window().await.unwrap() {
            assert!(window.len() as u64 <= WINDOW_BYTES);
            back.extend_from_slice(&window);
        }
        assert_eq!(back, data);
        assert!(
            store
                .get_range(&resources, 0..10)
                .await
                .unwrap_err()
                .to_string()
                .contains("read_windows")
        );

        // A copy under another key is re-sealed for that key; a byte copy would not open.
        let staged = layout::staging("restore-1", layout::STAGED_RESOURCES).unwrap();
        store
            .copy_to_key_create_only(&resources, &store, &staged)
            .await
            .unwrap();
        let copied = store.read_windows(&staged).await.unwrap().into_stream();
        let copied: Vec<Bytes> = copied.map(|w| w.unwrap()).collect().await;
        assert_eq!(copied.concat(), data);
        let moved = layout::staging("restore-2", layout::STAGED_RESOURCES).unwrap();
        let raw = store.get_raw(&resources).await.unwrap().bytes;
        store.put_raw_create_only(&moved, raw).await.unwrap();
        let error = store
            .read_windows(&moved)
            .await
            .unwrap()
            .check_to_end()
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Damaged);
        assert!(error.to_string().contains("restore-2"), "{error}");

        // Objects outside the sealed prefixes stay as they are.
        let job = layout::job("j-1").unwrap();
        store.put_create_only(&job, &b"{}"[..]).await.unwrap();
        assert_eq!(store.get_raw(&job).await.unwrap().bytes, &b"{}"[..]);
    }

    #[tokio::test]
    async fn a_store_without_the_key_neither_writes_nor_reads_sealed_keys() {
        let store = keyed();
        let bare = BlobStore {
            seal: None,
            ..store.clone()
        };
        let map = layout::volume_version("vol", "v1").unwrap();
        let error = bare.put_create_only(&map, &b"map"[..]).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Config);
        assert!(error.to_string().contains("STOWAGE_VAULT_KEY"), "{error}");
        assert!(bare.head(&map).await.unwrap_err().is_not_found());
        let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from_static(b"x"))]);
        let resources = layout::resource("web", "rp", &["resources.jsonl"]).unwrap();
        assert!(
            bare.put_stream_create_only(&resources, stream)
                .await
                .is_err()
        );
        assert!(bare.head(&resources).await.unwrap_err().is_not_found());

        store.put_create_only(&map, &b"map"[..]).await.unwrap();
        let error = bare.get(&map).await.unwrap_err().to_string();
        assert!(
            error.contains("--vault-key-file")
                && error.contains(store.sealing_key_id().unwrap().as_str()),
            "{error}"
        );
        let other = bare.with_key(&VaultKey::generate().unwrap());
        let error = other.get(&map).await.unwrap_err().to_string();
        assert!(error.contains("another vault's key"), "{error}");
    }

    #[tokio::test]
    async fn windows_of_a_damaged_object_stop_at_the_damaged_segment() {
        let store = keyed();
        let key = layout::resource("web", "rp", &["resources.jsonl"]).unwrap();
        let data = pattern(40 * SEGMENT_LEN + 5);
        store.put_create_only(&key, data.clone()).await.unwrap();
        let mut raw = store.get_raw(&key).await.unwrap().bytes.to_vec();
        let at = HEADER_LEN + 20 * seal::SEALED_SEGMENT_LEN + 9;
        raw[at] ^= 0x80;
        let damaged = layout::resource("web", "rp", &["resources.jsonl"]).unwrap();
        store.delete(&damaged).await.unwrap();
        store
            .put_raw_create_only(&damaged, Bytes::from(raw))
            .await
            .unwrap();
        let mut reader = store.read_windows(&damaged).await.unwrap();
        assert_eq!(
            reader.next_window().await.unwrap().unwrap(),
            data[..1 << 20]
        );
        let error = reader.next_window().await.unwrap_err().to_string();
        assert!(
            error.contains("segment 20 of 41 failed authentication") && error.contains("rp/"),
            "{error}"
        );
    }
}
