//! Sealed objects: everything a recovery point holds besides its chunks (manifests, extent maps,
//! the resources object), encrypted and authenticated under the vault's key.
//!
//! Which keys are sealed is [`crate::layout::is_sealed`]'s decision; a [`BlobStore`] given the
//! vault key ([`BlobStore::with_key`]) seals and opens those keys on its ordinary reads and
//! writes (see `store/sealed.rs`), so callers do not change.
//!
//! # Format (version 1)
//!
//! One format for every sealed object, a 200-byte manifest or a resources object of many GiB:
//!
//! ```text
//! offset  size  field
//! 0       8     magic "STWSEAL1"
//! 8       8     key id: the vault key's fingerprint (VaultKey::key_id), as bytes
//! 16      4     segment size S, u32 little-endian: 65 536 (any other is refused)
//! 20      32    salt, random per object
//! 52      ...   segments 0..n: AES-256-GCM ciphertext of S plaintext bytes, then its 16-byte
//!               tag; the last segment holds 1..=S bytes (0 only when the object is empty)
//! ```
//!
//! This is the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015), as Tink's
//! streaming AEAD and age use it:
//!
//! * each object has its own AES-256-GCM key, `BLAKE3-keyed(sealing root, salt)`, the sealing
//!   root being derived from the vault key ([`VaultKey`]); so a counter is a safe nonce:
//!   segment `i` uses `0⁷ ‖ i (u32 big-endian) ‖ last`, `last` being 1 on the final segment;
//! * every segment's associated data is the header followed by the object's key, so altering
//!   the header or any byte, reordering, dropping or repeating segments, cutting the object at
//!   a segment boundary (its new last segment was not sealed as last), appending to it, or
//!   moving it to another key is detected, segment by segment, before any plaintext of that
//!   segment is used.
//!
//! The plaintext's length follows from the stored size (every segment but the last is full), so
//! a reader knows where the object ends before reading it, and can read it by ranges
//! ([`crate::store::WindowReader`]) with memory bounded by a window, whatever its size. An
//! object holds at most 2³² segments (256 TiB).

use std::fmt;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt as _};
use ring::aead;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret as _, SecretBox};

use crate::crypto::{KeyId, NONCE_LEN, TAG_LEN, VaultKey};
use crate::error::{Error, ErrorKind};
use crate::hex;
use crate::layout::BlobKey;

/// The first bytes of every sealed object.
pub const MAGIC: &[u8; 8] = b"STWSEAL1";
/// Plaintext bytes per segment.
pub const SEGMENT_LEN: usize = 64 << 10;
/// Bytes of the header before the first segment.
pub const HEADER_LEN: usize = 8 + KEY_ID_LEN + 4 + SALT_LEN;
/// Stored bytes of a full segment.
pub const SEALED_SEGMENT_LEN: usize = SEGMENT_LEN + TAG_LEN;
/// Most segments one object may have (the counter is 32 bits).
pub const MAX_SEGMENTS: u64 = 1 << 32;

const KEY_ID_LEN: usize = 8;
const SALT_LEN: usize = 32;

/// The id of the key a sealed object's header says it was sealed under (16 hex digits), or
/// `None` when `header` (the object's first bytes) is not a sealed object's.
pub(crate) fn sealed_under(header: &[u8]) -> Option<String> {
    (header.starts_with(MAGIC) && header.len() >= 8 + KEY_ID_LEN)
        .then(|| hex::encode(&header[8..8 + KEY_ID_LEN]))
}

/// The keys that seal and open objects of one vault, derived from its [`VaultKey`]. `Debug`
/// shows the key id only.
pub struct SealKeys {
    root: SecretBox<[u8; 32]>,
    key_id: KeyId,
    key_id_bytes: [u8; KEY_ID_LEN],
}

impl SealKeys {
    /// The sealing keys of `key`.
    pub fn new(key: &VaultKey) -> Self {
        let key_id = key.key_id();
        let mut key_id_bytes = [0u8; KEY_ID_LEN];
        let decoded = hex::decode(key_id.as_str()).unwrap_or_default();
        let n = decoded.len().min(KEY_ID_LEN);
        key_id_bytes[..n].copy_from_slice(&decoded[..n]);
        Self {
            root: key.sealing_root(),
            key_id,
            key_id_bytes,
        }
    }

    /// The id of the vault key these come from.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// The cipher of one object, from its header.
    fn cipher(&self, header: &[u8; HEADER_LEN], object: &BlobKey) -> ObjectCipher {
        let salt = &header[HEADER_LEN - SALT_LEN..];
        let derived = SecretBox::init_with_mut(|key: &mut [u8; 32]| {
            *key = *blake3::keyed_hash(self.root.expose_secret(), salt).as_bytes();
        });
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, derived.expose_secret())
            .expect("AES-256-GCM accepts any 32-byte key");
        let mut associated = Vec::with_capacity(HEADER_LEN + object.as_str().len());
        associated.extend_from_slice(header);
        associated.extend_from_slice(object.as_str().as_bytes());
        ObjectCipher {
            key: aead::LessSafeKey::new(unbound),
            associated,
        }
    }

    /// A fresh header: this key's id and a random salt.
    fn new_header(&self) -> Result<[u8; HEADER_LEN], Error> {
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&self.key_id_bytes);
        header[16..20].copy_from_slice(&(SEGMENT_LEN as u32).to_le_bytes());
        SystemRandom::new()
            .fill(&mut header[HEADER_LEN - SALT_LEN..])
            .map_err(|_| Error::from(crate::crypto::KeyError::Random))?;
        Ok(header)
    }
}

impl fmt::Debug for SealKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealKeys")
            .field("key_id", &self.key_id.as_str())
            .field("keys", &"<redacted>")
            .finish()
    }
}

/// The AES-256-GCM key and associated data of one object.
struct ObjectCipher {
    key: aead::LessSafeKey,
    associated: Vec<u8>,
}

fn nonce(index: u64, last: bool) -> aead::Nonce {
    let mut nonce = [0u8; NONCE_LEN];
    let index = u32::try_from(index).expect("segment counts are checked against MAX_SEGMENTS");
    nonce[7..11].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(last);
    aead::Nonce::assume_unique_for_key(nonce)
}

impl ObjectCipher {
    /// Appends segment `index` sealed (ciphertext, then tag) to `out`.
    fn seal_into(&self, index: u64, last: bool, plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(index, last),
                aead::Aad::from(&self.associated[..]),
                &mut out[start..],
            )
            .expect("a 64 KiB segment is far below AES-GCM's limit");
        out.extend_from_slice(tag.as_ref());
    }

    /// Opens `sealed` (one segment: ciphertext, then tag) in place; its plaintext length, or
    /// `None` if it does not authenticate.
    fn open_in_place(&self, index: u64, last: bool, sealed: &mut [u8]) -> Option<usize> {
        self.key
            .open_in_place(
                nonce(index, last),
                aead::Aad::from(&self.associated[..]),
                sealed,
            )
            .ok()
            .map(|plain| plain.len())
    }

    /// Whether `sealed` authenticates as segment `index` with the other `last` flag (only used
    /// to explain a failure).
    fn opens_as(&self, index: u64, last: bool, sealed: &[u8]) -> bool {
        let mut copy = sealed.to_vec();
        self.open_in_place(index, last, &mut copy).is_some()
    }
}

/// The sealed-object failures, each naming the object.
impl Error {
    fn not_sealed(object: &BlobKey, bytes: &[u8]) -> Self {
        let looks_old = bytes.first() == Some(&b'{') || bytes.starts_with(b"STWEMAP1");
        let origin = if looks_old {
            "it holds plain data, as written by a Stowage release before sealed recovery points"
        } else {
            "it is damaged, or was written by a Stowage release before sealed recovery points"
        };
        Self::new(
            ErrorKind::Damaged,
            format!(
                "{object} is not a sealed object (it does not start with {}): {origin}; this \
                 release reads only sealed vaults: restore it from the other tier, or for a vault \
                 written before sealing, initialise a new vault (`stowage vault init` in an empty \
                 location) and take new backups",
                String::from_utf8_lossy(MAGIC)
            ),
        )
    }

    fn sealed_damaged(object: &BlobKey, what: String) -> Self {
        Self::new(
            ErrorKind::Damaged,
            format!(
                "{object} is damaged: {what}; it cannot be trusted: restore from the other tier \
                 or another recovery point, and run `stowage rp verify` to see what else is hit"
            ),
        )
    }

    fn sealed_without_key(object: &BlobKey, sealed_under: &str) -> Self {
        Self::new(
            ErrorKind::Config,
            format!(
                "{object} is sealed under vault key {sealed_under} and no vault key was given: \
                 pass --vault-key-file or set STOWAGE_VAULT_KEY (the vault key with id \
                 {sealed_under})"
            ),
        )
    }

    fn sealed_under_other_key(object: &BlobKey, sealed_under: &str, ours: &KeyId) -> Self {
        Self::new(
            ErrorKind::Config,
            format!(
                "{object} is sealed under vault key {sealed_under}, but the key given is {ours}, \
                 another vault's key: pass the key of this vault (--vault-key-file or \
                 STOWAGE_VAULT_KEY, key id {sealed_under})"
            ),
        )
    }

    /// A sealed key written by a store that holds no vault key.
    pub(crate) fn sealing_without_key(object: &BlobKey) -> Self {
        Self::new(
            ErrorKind::Config,
            format!(
                "{object} must be sealed under the vault key, and no vault key was given: \
                 nothing was written; pass --vault-key-file or set STOWAGE_VAULT_KEY"
            ),
        )
    }

    fn too_large_to_seal(object: &BlobKey) -> Self {
        Self::new(
            ErrorKind::InvalidInput,
            format!(
                "{object} would need more than {MAX_SEGMENTS} segments of {SEGMENT_LEN} bytes \
                 (256 TiB), the most a sealed object holds; nothing was created"
            ),
        )
    }
}

/// The parts of a sealed object's layout that follow from its header and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Segments stored.
    pub(crate) segments: u64,
    /// Stored size in bytes.
    pub(crate) stored: u64,
    /// Plaintext bytes.
    pub(crate) plaintext: u64,
}

impl Geometry {
    /// The layout of a sealed object of `stored` bytes.
    fn of(object: &BlobKey, stored: u64) -> Result<Self, Error> {
        let (header, sealed, tag) = (HEADER_LEN as u64, SEALED_SEGMENT_LEN as u64, TAG_LEN as u64);
        if stored < header + tag {
            return Err(Error::sealed_damaged(
                object,
                format!(
                    "it is truncated: {stored} bytes cannot hold a sealed object's \
                     {HEADER_LEN}-byte header and one {TAG_LEN}-byte tag"
                ),
            ));
        }
        let body = stored - header;
        let (full, rest) = (body / sealed, body % sealed);
        let (segments, plaintext) = match rest {
            0 => (full, full * SEGMENT_LEN as u64),
            rest if rest < tag => {
                return Err(Error::sealed_damaged(
                    object,
                    format!(
                        "it is truncated or extended: its {stored} bytes do not end on a segment \
                         ({rest} bytes after segment {full}, less than a tag)"
                    ),
                ));
            }
            rest => (full + 1, full * SEGMENT_LEN as u64 + rest - tag),
        };
        if segments > MAX_SEGMENTS {
            return Err(Error::sealed_damaged(
                object,
                format!("{segments} segments, more than a sealed object may hold"),
            ));
        }
        Ok(Self {
            segments,
            stored,
            plaintext,
        })
    }

    /// Stored byte range of segments `first..end`.
    pub(crate) fn range(&self, first: u64, end: u64) -> std::ops::Range<u64> {
        let at = |i: u64| (HEADER_LEN as u64 + i * SEALED_SEGMENT_LEN as u64).min(self.stored);
        at(first)..at(end)
    }
}

/// An object being opened: its cipher and layout, from its header.
pub(crate) struct Opener {
    object: BlobKey,
    cipher: ObjectCipher,
    pub(crate) geometry: Geometry,
}

impl Opener {
    /// Checks the header of `object` (its first [`HEADER_LEN`] bytes, or fewer if it is
    /// shorter) against `keys`, for an object of `stored` bytes.
    pub(crate) fn new(
        keys: Option<&SealKeys>,
        object: &BlobKey,
        header: &[u8],
        stored: u64,
    ) -> Result<Self, Error> {
        if !header.starts_with(MAGIC) {
            return Err(Error::not_sealed(object, header));
        }
        let geometry = Geometry::of(object, stored)?;
        let header: &[u8; HEADER_LEN] = header
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| Error::sealed_damaged(object, "its header is cut short".into()))?;
        let sealed_under = hex::encode(&header[8..16]);
        let Some(keys) = keys else {
            return Err(Error::sealed_without_key(object, &sealed_under));
        };
        if header[8..16] != keys.key_id_bytes {
            return Err(Error::sealed_under_other_key(
                object,
                &sealed_under,
                keys.key_id(),
            ));
        }
        let segment_len = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes"));
        if segment_len as usize != SEGMENT_LEN {
            return Err(Error::sealed_damaged(
                object,
                format!(
                    "its header says segments of {segment_len} bytes, and format 1 has \
                     {SEGMENT_LEN}: the header was altered"
                ),
            ));
        }
        Ok(Self {
            object: object.clone(),
            cipher: keys.cipher(header, object),
            geometry,
        })
    }

    /// Opens the stored segments `first..` held in `sealed` (whole segments, the last one
    /// possibly the object's last), appending their plaintext to `out`.
    pub(crate) fn open_segments(
        &self,
        first: u64,
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let total = self.geometry.segments;
        for (n, segment) in sealed.chunks(SEALED_SEGMENT_LEN).enumerate() {
            let index = first + n as u64;
            let last = index + 1 == total;
            let start = out.len();
            out.extend_from_slice(segment);
            match self.cipher.open_in_place(index, last, &mut out[start..]) {
                Some(len) => out.truncate(start + len),
                None => {
                    out.truncate(start);
                    return Err(self.explain(index, last, segment));
                }
            }
        }
        Ok(())
    }

    fn explain(&self, index: u64, last: bool, segment: &[u8]) -> Error {
        let total = self.geometry.segments;
        let what = if last && self.cipher.opens_as(index, false, segment) {
            format!(
                "it is truncated: it ends after segment {index}, which was not sealed as the last \
                 one"
            )
        } else if !last && self.cipher.opens_as(index, true, segment) {
            format!(
                "it was extended: segment {index} was sealed as the last one, and {} more follow",
                total - index - 1
            )
        } else {
            format!(
                "segment {index} of {total} failed authentication: its bytes were altered, or \
                 the object was moved here from another name"
            )
        };
        Error::sealed_damaged(&self.object, what)
    }
}

/// `plaintext` sealed as the object `object`, whole.
pub(crate) fn seal_whole(
    keys: &SealKeys,
    object: &BlobKey,
    plaintext: &[u8],
) -> Result<Bytes, Error> {
    let header = keys.new_header()?;
    let cipher = keys.cipher(&header, object);
    let segments = plaintext.len().div_ceil(SEGMENT_LEN).max(1);
    if segments as u64 > MAX_SEGMENTS {
        return Err(Error::too_large_to_seal(object));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + segments * TAG_LEN);
    out.extend_from_slice(&header);
    if plaintext.is_empty() {
        cipher.seal_into(0, true, &[], &mut out);
    }
    for (index, segment) in plaintext.chunks(SEGMENT_LEN).enumerate() {
        cipher.seal_into(index as u64, index + 1 == segments, segment, &mut out);
    }
    Ok(Bytes::from(out))
}

/// The plaintext of the whole sealed object `object` (`sealed` as stored).
pub(crate) fn open_whole(
    keys: Option<&SealKeys>,
    object: &BlobKey,
    sealed: &[u8],
) -> Result<Bytes, Error> {
    let opener = Opener::new(keys, object, sealed, sealed.len() as u64)?;
    let mut out = Vec::with_capacity(opener.geometry.plaintext as usize + TAG_LEN);
    opener.open_segments(0, &sealed[HEADER_LEN..], &mut out)?;
    Ok(Bytes::from(out))
}

/// The bytes of `plaintext` sealed as the object `object`, as a stream: the header, then the
/// segments as the plaintext arrives. At most one segment beyond the bytes of one item of
/// `plaintext` is held. An error of `plaintext` ends the stream with that error.
pub(crate) fn seal_stream<'a, S>(
    keys: &SealKeys,
    object: &BlobKey,
    plaintext: S,
) -> Result<impl Stream<Item = Result<Bytes, Error>> + Send + 'a, Error>
where
    S: Stream<Item = Result<Bytes, Error>> + Send + 'a,
{
    let header = keys.new_header()?;
    let state = Sealing {
        input: Box::pin(plaintext),
        cipher: keys.cipher(&header, object),
        object: object.clone(),
        header: Some(Bytes::copy_from_slice(&header)),
        buffer: BytesMut::new(),
        index: 0,
        done: false,
    };
    Ok(futures::stream::unfold(state, Sealing::next))
}

/// The state of [`seal_stream`].
struct Sealing<'a> {
    input: Pin<Box<dyn Stream<Item = Result<Bytes, Error>> + Send + 'a>>,
    cipher: ObjectCipher,
    object: BlobKey,
    header: Option<Bytes>,
    buffer: BytesMut,
    index: u64,
    done: bool,
}

impl<'a> Sealing<'a> {
    async fn next(mut self) -> Option<(Result<Bytes, Error>, Self)> {
        if self.done {
            return None;
        }
        if let Some(header) = self.header.take() {
            return Some((Ok(header), self));
        }
        loop {
            // More than a segment buffered: the first segments are certainly not the last.
            if self.buffer.len() > SEGMENT_LEN {
                let full = (self.buffer.len() - 1) / SEGMENT_LEN;
                if self.index + full as u64 >= MAX_SEGMENTS {
                    self.done = true;
                    return Some((Err(Error::too_large_to_seal(&self.object)), self));
                }
                let mut out = Vec::with_capacity(full * SEALED_SEGMENT_LEN);
                for _ in 0..full {
                    let segment = self.buffer.split_to(SEGMENT_LEN);
                    self.cipher.seal_into(self.index, false, &segment, &mut out);
                    self.index += 1;
                }
                return Some((Ok(Bytes::from(out)), self));
            }
            match self.input.next().await {
                Some(Ok(bytes)) => self.buffer.extend_from_slice(&bytes),
                Some(Err(error)) => {
                    self.done = true;
                    return Some((Err(error), self));
                }
                None => {
                    self.done = true;
                    let segment = self.buffer.split();
                    let mut out = Vec::with_capacity(segment.len() + TAG_LEN);
                    self.cipher.seal_into(self.index, true, &segment, &mut out);
                    return Some((Ok(Bytes::from(out)), self));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout;

    fn keys() -> SealKeys {
        SealKeys::new(&VaultKey::generate().unwrap())
    }

    fn object() -> BlobKey {
        layout::recovery_point("web", "rp-1").unwrap()
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    async fn sealed_by_stream(keys: &SealKeys, key: &BlobKey, data: &[u8], item: usize) -> Vec<u8> {
        let items: Vec<Result<Bytes, Error>> = data
            .chunks(item.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let stream = seal_stream(keys, key, futures::stream::iter(items)).unwrap();
        let parts: Vec<Bytes> = stream.map(|r| r.unwrap()).collect().await;
        parts.concat()
    }

    #[tokio::test]
    async fn whole_and_streamed_sealing_open_to_the_same_bytes_at_every_size() {
        let keys = keys();
        let key = object();
        for len in [
            0,
            1,
            SEGMENT_LEN - 1,
            SEGMENT_LEN,
            SEGMENT_LEN + 1,
            3 * SEGMENT_LEN,
            3 * SEGMENT_LEN + 17,
        ] {
            let data = pattern(len);
            let whole = seal_whole(&keys, &key, &data).unwrap();
            assert_eq!(
                open_whole(Some(&keys), &key, &whole).unwrap(),
                data,
                "{len}"
            );
            for item in [1000, SEGMENT_LEN, 5 * SEGMENT_LEN / 2] {
                let streamed = sealed_by_stream(&keys, &key, &data, item).await;
                assert_eq!(streamed.len(), whole.len(), "{len} by {item}");
                assert_eq!(
                    open_whole(Some(&keys), &key, &streamed).unwrap(),
                    data,
                    "{len} by {item}"
                );
                let geometry = Geometry::of(&key, streamed.len() as u64).unwrap();
                assert_eq!(geometry.plaintext, len as u64);
            }
            if len >= 64 {
                assert!(
                    !whole.windows(64).any(|w| w == &data[..64]),
                    "no plaintext shows"
                );
            }
        }
    }

    #[test]
    fn a_flipped_byte_anywhere_is_named_with_the_object() {
        let keys = keys();
        let key = object();
        let data = pattern(2 * SEGMENT_LEN + 5);
        let sealed = seal_whole(&keys, &key, &data).unwrap().to_vec();
        for at in [
            3,
            9,
            17,
            30,
            HEADER_LEN + 1,
            HEADER_LEN + SEGMENT_LEN + 20,
            sealed.len() - 1,
        ] {
            let mut bad = sealed.clone();
            bad[at] ^= 0x01;
            let error = open_whole(Some(&keys), &key, &bad).unwrap_err();
            assert!(
                matches!(error.kind(), ErrorKind::Damaged | ErrorKind::Config),
                "{at}: {error}"
            );
            assert!(error.to_string().contains(key.as_str()), "{at}: {error}");
        }
        let mut bad = sealed.clone();
        bad[HEADER_LEN + SEGMENT_LEN + 20] ^= 0x01;
        let error = open_whole(Some(&keys), &key, &bad).unwrap_err().to_string();
        assert!(
            error.contains("segment 1 of 3 failed authentication"),
            "{error}"
        );
    }

    #[test]
    fn truncation_extension_reordering_and_moving_are_detected() {
        let keys = keys();
        let key = object();
        let data = pattern(3 * SEGMENT_LEN);
        let sealed = seal_whole(&keys, &key, &data).unwrap().to_vec();
        let cut = HEADER_LEN + 2 * SEALED_SEGMENT_LEN;
        let error = open_whole(Some(&keys), &key, &sealed[..cut])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("truncated: it ends after segment 1"),
            "{error}"
        );
        let error = open_whole(Some(&keys), &key, &sealed[..cut + 3])
            .unwrap_err()
            .to_string();
        assert!(error.contains("do not end on a segment"), "{error}");

        let shorter = seal_whole(&keys, &key, &pattern(SEGMENT_LEN))
            .unwrap()
            .to_vec();
        let mut extended = shorter.clone();
        extended.extend_from_slice(&sealed[HEADER_LEN..HEADER_LEN + SEALED_SEGMENT_LEN]);
        let error = open_whole(Some(&keys), &key, &extended)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("extended") || error.contains("failed authentication"),
            "{error}"
        );

        let mut swapped = sealed.clone();
        let (a, b) = (HEADER_LEN, HEADER_LEN + SEALED_SEGMENT_LEN);
        let first = sealed[a..b].to_vec();
        swapped[a..b].copy_from_slice(&sealed[b..b + SEALED_SEGMENT_LEN]);
        swapped[b..b + SEALED_SEGMENT_LEN].copy_from_slice(&first);
        assert!(open_whole(Some(&keys), &key, &swapped).is_err());

        let elsewhere = layout::recovery_point("web", "rp-2").unwrap();
        let error = open_whole(Some(&keys), &elsewhere, &sealed)
            .unwrap_err()
            .to_string();
        assert!(error.contains("moved here from another name"), "{error}");
    }

    #[test]
    fn a_missing_or_wrong_key_and_plain_data_are_refused_by_name() {
        let keys = keys();
        let key = object();
        let sealed = seal_whole(&keys, &key, b"{\"id\":\"rp-1\"}").unwrap();
        let without = open_whole(None, &key, &sealed).unwrap_err();
        assert_eq!(without.kind(), ErrorKind::Config);
        let text = without.to_string();
        assert!(
            text.contains("--vault-key-file") && text.contains(keys.key_id().as_str()),
            "{text}"
        );
        let other = self::keys();
        let wrong = open_whole(Some(&other), &key, &sealed)
            .unwrap_err()
            .to_string();
        assert!(
            wrong.contains(keys.key_id().as_str()) && wrong.contains(other.key_id().as_str()),
            "{wrong}"
        );
        let plain = open_whole(Some(&keys), &key, b"{\"id\":\"rp-1\"}").unwrap_err();
        assert_eq!(plain.kind(), ErrorKind::Damaged);
        assert!(
            plain.to_string().contains("before sealed recovery points"),
            "{plain}"
        );
        let debug = format!("{keys:?}");
        assert!(debug.contains(keys.key_id().as_str()) && debug.contains("redacted"));
    }

    #[tokio::test]
    async fn a_failing_source_ends_the_sealed_stream_with_its_error() {
        let keys = keys();
        let items: Vec<Result<Bytes, Error>> = vec![
            Ok(Bytes::from(pattern(SEGMENT_LEN + 10))),
            Err(Error::new(ErrorKind::Source, "collection stopped")),
        ];
        let stream = seal_stream(&keys, &object(), futures::stream::iter(items)).unwrap();
        let results: Vec<Result<Bytes, Error>> = stream.collect().await;
        assert!(results.last().unwrap().is_err());
        assert!(results.iter().filter(|r| r.is_err()).count() == 1);
    }
}
