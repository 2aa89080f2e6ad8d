//! The vault key and the keys derived from it.
//!
//! A vault has one 256-bit secret, the [`VaultKey`]. Nothing uses it directly; BLAKE3's key
//! derivation (`derive_key`, with a context string per purpose) turns it into independent keys:
//!
//! * the **chunk-id key**: chunk ids are `BLAKE3-keyed(chunk-id key, plaintext)`. With a plain
//!   hash, anyone who can list a vault could test whether it holds a known file (hash the file's
//!   blocks and look for the ids). Keyed ids reveal nothing without the key, and the same data in
//!   two vaults gets unrelated ids. Deduplication still works inside the vault, which is the only
//!   place it is wanted.
//! * the **chunk-encryption key**: AES-256-GCM (via `ring`) for chunk contents.
//! * the **sealing root**: each sealed object (manifests, extent maps, resources; see
//!   [`crate::seal`]) is encrypted under a key derived from it and the object's random salt.
//! * the **key id**: a short public fingerprint, stored in `vault.json`, so a worker configured
//!   with the wrong key refuses to write instead of filling the vault with unreadable chunks.
//!
//! Deriving rather than reusing one key keeps a weakness in one use from spilling into another,
//! and lets a later format add purposes without touching existing data.
//!
//! Secrets never print: the key material is held in [`secrecy::SecretBox`], whose `Debug` says
//! `[REDACTED]` and which zeroizes it on drop; `Debug` and `Display` of [`VaultKey`] and
//! [`ChunkKeys`] show only the key id, and the bytes are read only through `expose_secret`.

use std::fmt;

use ring::aead;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret as _, SecretBox};

use crate::chunk::ChunkId;
use crate::hex;

/// BLAKE3 derivation contexts. Changing one changes every id or key derived with it, so they are
/// fixed forever for format version 1.
const CONTEXT_CHUNK_ID: &str = "stowage vault 2025 chunk id key v1";
const CONTEXT_CHUNK_ENCRYPTION: &str = "stowage vault 2025 chunk encryption key v1";
const CONTEXT_KEY_ID: &str = "stowage vault 2025 key id v1";
const CONTEXT_SEALED_OBJECT: &str = "stowage vault 2025 sealed object key v1";
const CONTEXT_KEY_WRAPPING: &str = "stowage vault 2025 key wrapping key v1";

/// Length of a vault key in bytes.
pub const VAULT_KEY_LEN: usize = 32;

/// Length of an AES-GCM nonce in bytes (96 bits).
pub const NONCE_LEN: usize = aead::NONCE_LEN;

/// Length of the AES-GCM authentication tag in bytes.
pub const TAG_LEN: usize = 16;

/// A key could not be made or parsed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text given as a key is not 64 hex digits.
    #[error(
        "a vault key must be {expected} hex digits (32 bytes), got {got_len} characters{detail}; \
         generate one with VaultKey::generate or `openssl rand -hex 32`"
    )]
    BadHex {
        /// Expected number of hex digits.
        expected: usize,
        /// Number of characters received (never the characters themselves).
        got_len: usize,
        /// Extra detail, e.g. that a non-hex character was found.
        detail: &'static str,
    },
    /// The operating system's random source failed.
    #[error("the system random number generator failed; the host has no usable entropy source")]
    Random,
}

/// The secret of one vault. `Debug` and `Display` print its key id, never its bytes.
pub struct VaultKey {
    bytes: SecretBox<[u8; VAULT_KEY_LEN]>,
}

impl VaultKey {
    /// A new random key from the operating system's secure random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut filled = Ok(());
        let bytes = SecretBox::init_with_mut(|bytes: &mut [u8; VAULT_KEY_LEN]| {
            filled = SystemRandom::new().fill(bytes);
        });
        filled.map_err(|_| KeyError::Random)?;
        Ok(Self { bytes })
    }

    /// A key from raw bytes (e.g. read from a Kubernetes secret).
    pub fn from_bytes(bytes: [u8; VAULT_KEY_LEN]) -> Self {
        Self {
            bytes: SecretBox::new(Box::new(bytes)),
        }
    }

    /// A key from 64 hex digits; surrounding whitespace is ignored.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let bad = |detail| KeyError::BadHex {
            expected: VAULT_KEY_LEN * 2,
            got_len: text.len(),
            detail,
        };
        if text.len() != VAULT_KEY_LEN * 2 {
            return Err(bad(""));
        }
        let decoded = hex::decode(text).ok_or_else(|| bad(" (not all hex digits)"))?;
        let decoded = secrecy::SecretSlice::from(decoded);
        let bytes = SecretBox::init_with_mut(|bytes: &mut [u8; VAULT_KEY_LEN]| {
            bytes.copy_from_slice(decoded.expose_secret());
        });
        Ok(Self { bytes })
    }

    /// The key as hex, for storing it in a secret store. The name says what it does.
    pub fn expose_secret_hex(&self) -> String {
        hex::encode(self.bytes.expose_secret())
    }

    /// The public fingerprint of this key.
    pub fn key_id(&self) -> KeyId {
        let derived = blake3::derive_key(CONTEXT_KEY_ID, self.bytes.expose_secret());
        KeyId(hex::encode(&derived[..8]))
    }

    /// The root of the keys that seal objects ([`crate::seal`]): each object's key is derived
    /// from it and the object's random salt.
    pub(crate) fn sealing_root(&self) -> SecretBox<[u8; 32]> {
        let secret = self.bytes.expose_secret();
        SecretBox::init_with_mut(|key: &mut [u8; 32]| {
            *key = blake3::derive_key(CONTEXT_SEALED_OBJECT, secret);
        })
    }

    /// Another handle on the same key (the bytes are copied into a new zeroizing box).
    pub(crate) fn duplicate(&self) -> Self {
        Self::from_bytes(*self.bytes.expose_secret())
    }

    /// The AES-256-GCM key this key wraps other keys with, when it is used as a key-encryption
    /// key (see [`crate::keyring`]).
    fn wrapping_cipher(&self) -> aead::LessSafeKey {
        let derived = SecretBox::init_with_mut(|key: &mut [u8; 32]| {
            *key = blake3::derive_key(CONTEXT_KEY_WRAPPING, self.bytes.expose_secret());
        });
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, derived.expose_secret())
            .expect("AES-256-GCM accepts any 32-byte key");
        aead::LessSafeKey::new(unbound)
    }

    /// `key` wrapped under this key-encryption key: a fresh random nonce and the AES-256-GCM
    /// ciphertext of its bytes with the tag appended, authenticated with `associated`.
    pub(crate) fn wrap(
        &self,
        key: &VaultKey,
        associated: &[u8],
    ) -> Result<([u8; NONCE_LEN], Vec<u8>), KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KeyError::Random)?;
        let mut in_out = key.bytes.expose_secret().to_vec();
        self.wrapping_cipher()
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(associated),
                &mut in_out,
            )
            .expect("AES-GCM sealing only fails for inputs over 64 GiB");
        Ok((nonce, in_out))
    }

    /// The key [`Self::wrap`] wrapped, or `None` when `wrapped` does not authenticate under
    /// this key with `associated` (another key-encryption key, or altered bytes or ids).
    pub(crate) fn unwrap(
        &self,
        nonce: [u8; NONCE_LEN],
        associated: &[u8],
        wrapped: &[u8],
    ) -> Option<VaultKey> {
        let mut in_out = secrecy::SecretSlice::from(wrapped.to_vec());
        let opened = self
            .wrapping_cipher()
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(associated),
                secrecy::ExposeSecretMut::expose_secret_mut(&mut in_out),
            )
            .ok()?;
        let bytes: [u8; VAULT_KEY_LEN] = (&*opened).try_into().ok()?;
        Some(Self::from_bytes(bytes))
    }

    /// The keys that id and encrypt chunks.
    pub fn chunk_keys(&self) -> ChunkKeys {
        let secret = self.bytes.expose_secret();
        let id_key = SecretBox::init_with_mut(|key: &mut [u8; 32]| {
            *key = blake3::derive_key(CONTEXT_CHUNK_ID, secret);
        });
        let encryption_key = SecretBox::init_with_mut(|key: &mut [u8; 32]| {
            *key = blake3::derive_key(CONTEXT_CHUNK_ENCRYPTION, secret);
        });
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, encryption_key.expose_secret())
            .expect("AES-256-GCM accepts any 32-byte key");
        ChunkKeys {
            id_key,
            cipher: aead::LessSafeKey::new(unbound),
            key_id: self.key_id(),
        }
    }
}

impl fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultKey")
            .field("key_id", &self.key_id().0)
            .field("bytes", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for VaultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vault key {}", self.key_id())
    }
}

/// The public fingerprint of a [`VaultKey`]: 16 hex digits, safe to store and print.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    /// The fingerprint as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The keys that name and encrypt chunks, derived from a [`VaultKey`].
pub struct ChunkKeys {
    id_key: SecretBox<[u8; 32]>,
    cipher: aead::LessSafeKey,
    key_id: KeyId,
}

impl ChunkKeys {
    /// The chunk id of `plaintext`: BLAKE3 keyed with this vault's chunk-id key.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId::from_bytes(*blake3::keyed_hash(self.id_key.expose_secret(), plaintext).as_bytes())
    }

    /// Key id of the vault key these were derived from.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// A fresh random nonce. Random 96-bit nonces stay within NIST's collision bound (2^-32)
    /// for up to 2^32 chunks per key, i.e. 4 PiB of unique 1 MiB chunks per vault.
    pub(crate) fn new_nonce(&self) -> Result<[u8; NONCE_LEN], KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KeyError::Random)?;
        Ok(nonce)
    }

    /// Encrypts `in_out` in place; returns the tag (for a caller that keeps a header in front).
    pub(crate) fn seal_in_place(
        &self,
        nonce: [u8; NONCE_LEN],
        associated: &[u8],
        in_out: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let tag = self
            .cipher
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(associated),
                in_out,
            )
            .expect("AES-GCM sealing only fails for inputs over 64 GiB");
        tag.as_ref().try_into().expect("a 16-byte tag")
    }

    /// Decrypts `in_out` (ciphertext followed by tag) in place; `None` if authentication fails.
    pub(crate) fn open<'a>(
        &self,
        nonce: [u8; NONCE_LEN],
        associated: &[u8],
        in_out: &'a mut [u8],
    ) -> Option<&'a mut [u8]> {
        self.cipher
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(associated),
                in_out,
            )
            .ok()
    }
}

impl fmt::Debug for ChunkKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkKeys")
            .field("key_id", &self.key_id.0)
            .field("keys", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn key_bytes_never_appear_in_debug_or_display() {
        let key = VaultKey::from_hex(SAMPLE_HEX).unwrap();
        let keys = key.chunk_keys();
        for printed in [
            format!("{key:?}"),
            format!("{key:#?}"),
            format!("{key}"),
            format!("{keys:?}"),
        ] {
            assert!(!printed.contains(SAMPLE_HEX), "{printed}");
            assert!(!printed.contains("0a0b0c"), "{printed}");
            assert!(!printed.contains("[0, 1, 2"), "{printed}");
            assert!(printed.contains(key.key_id().as_str()), "{printed}");
        }
        assert_eq!(key.expose_secret_hex(), SAMPLE_HEX);
    }

    #[test]
    fn chunk_ids_depend_on_the_vault_key() {
        let a = VaultKey::generate().unwrap().chunk_keys();
        let b = VaultKey::generate().unwrap().chunk_keys();
        let data = b"the same block in two vaults";
        assert_eq!(a.chunk_id(data), a.chunk_id(data));
        assert_ne!(a.chunk_id(data), b.chunk_id(data));
        // Not the plain hash either.
        assert_ne!(a.chunk_id(data).as_bytes(), blake3::hash(data).as_bytes());
    }

    #[test]
    fn derived_keys_are_stable_for_a_given_vault_key() {
        let key = VaultKey::from_hex(SAMPLE_HEX).unwrap();
        let again = VaultKey::from_bytes(*b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f");
        assert_eq!(key.key_id(), again.key_id());
        assert_eq!(key.key_id().as_str().len(), 16);
        assert_eq!(
            key.chunk_keys().chunk_id(b"x"),
            again.chunk_keys().chunk_id(b"x")
        );
    }

    #[test]
    fn a_wrapped_key_opens_only_with_its_key_encryption_key_and_associated_data() {
        let kek = VaultKey::generate().unwrap();
        let data = VaultKey::generate().unwrap();
        let (nonce, wrapped) = kek.wrap(&data, b"ids").unwrap();
        assert_eq!(wrapped.len(), VAULT_KEY_LEN + TAG_LEN);
        assert!(!hex::encode(&wrapped).contains(&data.expose_secret_hex()));
        let opened = kek.unwrap(nonce, b"ids", &wrapped).unwrap();
        assert_eq!(opened.key_id(), data.key_id());
        assert!(kek.unwrap(nonce, b"other ids", &wrapped).is_none());
        assert!(
            VaultKey::generate()
                .unwrap()
                .unwrap(nonce, b"ids", &wrapped)
                .is_none()
        );
        let mut flipped = wrapped.clone();
        flipped[3] ^= 1;
        assert!(kek.unwrap(nonce, b"ids", &flipped).is_none());
    }

    #[test]
    fn bad_hex_is_refused_without_echoing_it() {
        let error = VaultKey::from_hex("abc").unwrap_err();
        assert!(error.to_string().contains("64 hex digits"), "{error}");
        let almost = format!("{}zz", &SAMPLE_HEX[..62]);
        let error = VaultKey::from_hex(&almost).unwrap_err();
        assert!(!error.to_string().contains(&almost[..20]), "{error}");
        assert!(VaultKey::from_hex(&format!("  {SAMPLE_HEX}\n")).is_ok());
    }
}
