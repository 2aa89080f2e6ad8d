//! The key hierarchy: the operator's key is a key-encryption key (KEK) that wraps the vault's
//! data key, kept in the vault's keyring (`keys/keyring.json`).
//!
//! Everything [`crate::crypto`] derives — chunk ids, chunk encryption, the sealing root — comes
//! from the **data key**, a [`VaultKey`] that `stowage vault init` generates and that never
//! leaves the process unwrapped. The operator holds only the **KEK**; rotating it
//! ([`rotate`]) re-wraps the data key and re-encrypts nothing. Every command that touches what a
//! recovery point holds calls [`unlock`] first, before it writes anything, and is refused with
//! the KEK id the vault expects when it was given another key.
//!
//! Wrapping: AES-256-GCM (ring) under a key derived from the KEK, a random 96-bit nonce, and the
//! two key ids as associated data, so an entry moved to another id, or ids edited in the JSON,
//! do not authenticate. The keyring is a plain JSON document (it is what opens the seal),
//! created create-only and changed by compare-and-swap ([`crate::document::update`]), so a
//! rotation replaces it atomically.
//!
//! Vaults made before the keyring have none: their operator key *is* the data key, as before
//! (see ARCHITECTURE.md, "Keys: the key hierarchy").

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use stowage_schemas::domain::{Redundancy, Vault};

use crate::catalog::settings::{self, SettingsError, WriteMode};
use crate::crypto::{KeyId, NONCE_LEN, VaultKey};
use crate::document::{self, Decision, UpdateError};
use crate::error::{Error, ErrorKind};
use crate::layout;
use crate::store::BlobStore;
use crate::{hex, seal};

/// The keyring format this release reads and writes.
pub const KEYRING_FORMAT: u32 = 1;

/// Compare-and-swap attempts of one keyring write.
const WRITE_TRIES: u32 = 16;

/// The vault's data keys, each wrapped under the key-encryption key (`keys/keyring.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyring {
    /// [`KEYRING_FORMAT`].
    pub format: u32,
    /// The wrapped data keys: one today, the one everything is sealed under. Every entry is
    /// wrapped under the same KEK.
    pub data_keys: Vec<WrappedKey>,
}

/// One data key, wrapped under a key-encryption key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// The data key's id (the key id sealed objects carry in their header).
    pub data_key_id: KeyId,
    /// The id of the key-encryption key it is wrapped under (`vault.json`'s `key_id`).
    pub kek_id: KeyId,
    /// The AES-GCM nonce, 24 hex digits.
    pub nonce: String,
    /// The wrapped key and its tag, 96 hex digits.
    pub wrapped: String,
    /// When it was wrapped (by `vault init` or `vault rotate-key`).
    pub wrapped_at: Timestamp,
}

/// What binds a wrapped key to its ids.
fn associated_data(data_key_id: &KeyId, kek_id: &KeyId) -> Vec<u8> {
    let mut aad = b"stowage keyring v1\0".to_vec();
    aad.extend_from_slice(data_key_id.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(kek_id.as_str().as_bytes());
    aad
}

fn damaged(what: String) -> Error {
    Error::new(
        ErrorKind::Damaged,
        format!(
            "the keyring {} is damaged: {what}; restore keys/keyring.json from the geo \
             secondary's copy (or a copy kept elsewhere); nothing was written",
            layout::keyring()
        ),
    )
}

impl Keyring {
    /// A keyring holding `data_key` wrapped under `kek`.
    pub fn wrap(kek: &VaultKey, data_key: &VaultKey) -> Result<Self, Error> {
        let (data_key_id, kek_id) = (data_key.key_id(), kek.key_id());
        let (nonce, wrapped) = kek.wrap(data_key, &associated_data(&data_key_id, &kek_id))?;
        Ok(Self {
            format: KEYRING_FORMAT,
            data_keys: vec![WrappedKey {
                data_key_id,
                kek_id,
                nonce: hex::encode(&nonce),
                wrapped: hex::encode(&wrapped),
                wrapped_at: Timestamp::now(),
            }],
        })
    }

    /// The entry everything is sealed under, after checking the keyring's shape.
    fn current(&self) -> Result<&WrappedKey, Error> {
        if self.format != KEYRING_FORMAT {
            return Err(damaged(format!(
                "its format is {}, and this release reads format {KEYRING_FORMAT}",
                self.format
            )));
        }
        let Some(first) = self.data_keys.first() else {
            return Err(damaged("it holds no data key".into()));
        };
        if let Some(other) = self.data_keys.iter().find(|k| k.kek_id != first.kek_id) {
            return Err(damaged(format!(
                "its entries are wrapped under different key-encryption keys ({} and {})",
                first.kek_id, other.kek_id
            )));
        }
        Ok(first)
    }

    /// The id of the key-encryption key the keyring is wrapped under.
    pub fn kek_id(&self) -> Result<&KeyId, Error> {
        Ok(&self.current()?.kek_id)
    }

    /// The id of the data key everything is sealed under.
    pub fn data_key_id(&self) -> Result<&KeyId, Error> {
        Ok(&self.current()?.data_key_id)
    }

    /// The data key, unwrapped with `kek`, whose id must be [`Self::kek_id`] (the caller checks
    /// that first, to name a wrong key as such). Anything that does not authenticate, or a key
    /// that does not hash to its recorded id, is a damaged keyring.
    pub fn open(&self, kek: &VaultKey) -> Result<VaultKey, Error> {
        let entry = self.current()?;
        let nonce: [u8; NONCE_LEN] = hex::decode(&entry.nonce)
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| {
                damaged(format!(
                    "data key {}'s nonce is not 24 hex digits",
                    entry.data_key_id
                ))
            })?;
        let wrapped = hex::decode(&entry.wrapped).ok_or_else(|| {
            damaged(format!(
                "data key {}'s wrapped bytes are not hex",
                entry.data_key_id
            ))
        })?;
        let aad = associated_data(&entry.data_key_id, &entry.kek_id);
        let key = kek.unwrap(nonce, &aad, &wrapped).ok_or_else(|| {
            damaged(format!(
                "data key {} wrapped under key-encryption key {} does not authenticate with \
                 that key (the wrapped bytes, the nonce or the ids were altered)",
                entry.data_key_id, entry.kek_id
            ))
        })?;
        if key.key_id() != entry.data_key_id {
            return Err(damaged(format!(
                "the key wrapped as data key {} has id {}",
                entry.data_key_id,
                key.key_id()
            )));
        }
        Ok(key)
    }
}

/// The keyring stored in `store`, or `None` when there is none (a vault from before the key
/// hierarchy, or a secondary not yet given one).
pub async fn read(store: &BlobStore) -> Result<Option<Keyring>, Error> {
    let key = layout::keyring();
    match store.get(&key).await {
        Ok(object) => document::decode::<Keyring, Error>(&key, &object.bytes)
            .map(Some)
            .map_err(|e| damaged(e.to_string())),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where the operator's key came from, as refusals name it.
const KEY_SOURCES: &str = "--vault-key-file or STOWAGE_VAULT_KEY";

fn wrong_key(vault: &str, expected: &KeyId, given: &KeyId) -> Error {
    Error::new(
        ErrorKind::Config,
        format!(
            "{vault} expects key-encryption key {expected} (vault.json key_id and {}), but this \
             process was given key {given}: nothing was written; pass the vault's current key \
             ({KEY_SOURCES}); after `stowage vault rotate-key` that is the new key, and the old \
             one is refused",
            layout::keyring()
        ),
    )
}

fn vault_name(vault: Option<&Vault>) -> String {
    match vault {
        Some(vault) => format!("vault {:?}", vault.name),
        None => "this vault".into(),
    }
}

fn settings_error(e: SettingsError) -> Error {
    match e {
        SettingsError::Store(e) => e,
        other => {
            let kind = if other.is_not_found() {
                ErrorKind::NotFound
            } else {
                ErrorKind::Config
            };
            Error::new(kind, other.to_string())
        }
    }
}

/// The vault settings, if `store` has them (a secondary does not).
async fn read_settings(store: &BlobStore) -> Result<Option<Vault>, Error> {
    match settings::read_vault(store).await {
        Ok(vault) => Ok(Some(vault)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(settings_error(e)),
    }
}

/// The id of the key the first sealed object under `catalog/` is sealed under, if there is one:
/// what a vault without a keyring can tell about its key.
async fn first_sealed_key_id(store: &BlobStore) -> Result<Option<String>, Error> {
    use futures::StreamExt as _;
    let mut listing = store.list(&layout::catalog());
    let Some(first) = listing.next().await.transpose()? else {
        return Ok(None);
    };
    drop(listing);
    let end = (seal::HEADER_LEN as u64).min(first.size);
    let header = store.get_range_raw(&first.key, 0..end).await?;
    Ok(seal::sealed_under(&header))
}

/// Where the data key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// Unwrapped from the vault's keyring.
    Keyring,
    /// The vault has no keyring (made before the key hierarchy): the operator's key is its
    /// data key, checked against the key id its sealed objects record (when it has any).
    OperatorKey,
}

/// What [`unlock`] answers: the data key, and the KEK it was unlocked with.
#[derive(Debug)]
pub struct Unlocked {
    /// The key every chunk and sealed object of the vault is keyed by.
    pub data_key: VaultKey,
    /// The id of the key-encryption key given.
    pub kek_id: KeyId,
    /// Where the data key came from.
    pub source: KeySource,
}

/// The vault's data key, unwrapped with the operator's key `kek`; refuses (before anything is
/// written) a key that is not the vault's, naming the id the vault expects and the id given,
/// a `vault.json` whose `key_id` disagrees with the keyring, and a damaged keyring.
pub async fn unlock(store: &BlobStore, kek: &VaultKey) -> Result<Unlocked, Error> {
    let vault = read_settings(store).await?;
    let name = vault_name(vault.as_ref());
    let given = kek.key_id();
    let Some(keyring) = read(store).await? else {
        if let Some(sealed_under) = first_sealed_key_id(store).await?
            && sealed_under != given.as_str()
        {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{name} has no keyring (it was made before the key hierarchy) and its \
                     recovery points are sealed under key {sealed_under}, but this process was \
                     given key {given}: nothing was written; pass that vault's key \
                     ({KEY_SOURCES}), and give the vault a keyring with `stowage vault \
                     rotate-key --new-key-file <file>`"
                ),
            ));
        }
        return Ok(Unlocked {
            data_key: kek.duplicate(),
            kek_id: given,
            source: KeySource::OperatorKey,
        });
    };
    let expected = keyring.kek_id()?;
    if *expected != given {
        return Err(wrong_key(&name, expected, &given));
    }
    if let Some(vault) = &vault
        && vault.key_id != expected.as_str()
    {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "{name}'s vault.json names key-encryption key {:?}, but its keyring {} is \
                 wrapped under {expected}: a key rotation was interrupted, or vault.json was \
                 edited; nothing was written: rerun `stowage vault rotate-key --new-key-file \
                 <file>` with the same arguments (it finishes the rotation), or set key_id \
                 back to {expected}",
                vault.key_id,
                layout::keyring()
            ),
        ));
    }
    let data_key = keyring.open(kek)?;
    Ok(Unlocked {
        data_key,
        kek_id: given,
        source: KeySource::Keyring,
    })
}

/// What [`init`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initialised {
    /// A new data key was generated and its keyring created.
    Created,
    /// The keyring was already there, wrapped under the same key (a repeated `vault init`).
    Existing,
}

/// Gives a new vault its keyring: a fresh data key wrapped under `kek`, created create-only.
/// A keyring already wrapped under `kek` is kept (init is repeatable); one under another key
/// is refused.
pub async fn init(store: &BlobStore, kek: &VaultKey) -> Result<(Keyring, Initialised), Error> {
    let given = kek.key_id();
    document::update(
        store,
        &layout::keyring(),
        WRITE_TRIES,
        |stored: Option<Keyring>| {
            let Some(stored) = stored else {
                let data_key = VaultKey::generate()?;
                let keyring = Keyring::wrap(kek, &data_key)?;
                return Ok(Decision::Write(
                    keyring.clone(),
                    (keyring, Initialised::Created),
                ));
            };
            let expected = stored.kek_id()?;
            if *expected != given {
                return Err(wrong_key("the vault storage", expected, &given));
            }
            stored.open(kek)?;
            Ok(Decision::Keep((stored, Initialised::Existing)))
        },
    )
    .await
    .map_err(update_error)
}

fn update_error(e: UpdateError<Error>) -> Error {
    match e {
        UpdateError::Rejected(e) | UpdateError::Store(e) => e,
        UpdateError::Corrupt { reason, .. } => damaged(reason),
        UpdateError::Contended { key, tries } => Error::contended(format!(
            "{key} changed under every one of {tries} write attempts; another rotation or init \
             is busy with it, retry in a moment"
        )),
    }
}

/// Writes `keyring` to a geo vault's secondary (create, or compare-and-swap over the copy
/// there), refusing to replace a keyring of another data key. Answers whether it wrote.
pub async fn replicate(secondary: &BlobStore, keyring: &Keyring) -> Result<bool, Error> {
    let data_key_id = keyring.data_key_id()?.clone();
    document::update(
        secondary,
        &layout::keyring(),
        WRITE_TRIES,
        |stored: Option<Keyring>| match stored {
            Some(stored) if &stored == keyring => Ok(Decision::Keep(false)),
            Some(stored) if stored.data_key_id()? != &data_key_id => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "the secondary's keyring holds data key {}, and this vault's is {data_key_id}: \
                     the secondary belongs to another vault; nothing was written there: check \
                     --secondary and the vault's secondary location",
                    stored.data_key_id()?
                ),
            )),
            _ => Ok(Decision::Write(keyring.clone(), true)),
        },
    )
    .await
    .map_err(update_error)
}

/// What [`rotate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The key-encryption key the keyring was wrapped under before.
    pub old_kek_id: KeyId,
    /// The key-encryption key it is wrapped under now.
    pub new_kek_id: KeyId,
    /// The data key (unchanged).
    pub data_key_id: KeyId,
    /// Whether this wrote the vault's first keyring (a vault from before the key hierarchy).
    pub first_keyring: bool,
    /// Whether the keyring was already under the new key (a rerun finishing an interrupted
    /// rotation).
    pub resumed: bool,
    /// The keyring as now stored.
    pub keyring: Keyring,
}

/// Re-wraps the vault's data key under `new` (the operator's new key-encryption key), given
/// the `current` one; no data is read or re-encrypted. Order: the keyring (one
/// compare-and-swap: old or new, never a mix), then `vault.json`'s `key_id`. A rerun after an
/// interruption finds the keyring already under `new`, checks that `new` opens it, and
/// finishes. The geo secondary's copy is the caller's next step ([`replicate`]).
pub async fn rotate(
    store: &BlobStore,
    current: &VaultKey,
    new: &VaultKey,
) -> Result<Rotated, Error> {
    let (current_id, new_id) = (current.key_id(), new.key_id());
    if current_id == new_id {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "the new key is the current key ({current_id}): generate a new one (`openssl \
                 rand -hex 32 > new.key`) and pass it with --new-key-file"
            ),
        ));
    }
    let Some(vault) = read_settings(store).await? else {
        return Err(Error::new(
            ErrorKind::NotFound,
            "the vault is not initialised (it has no vault.json): nothing to rotate; run \
             `stowage vault init` first",
        ));
    };
    let name = vault_name(Some(&vault));
    let existing = read(store).await?;
    if existing.is_none() {
        // A vault from before the keyring: check the current key the only way it can be.
        unlock(store, current).await?;
    }
    let (keyring, old_kek_id, first_keyring, resumed) = document::update(
        store,
        &layout::keyring(),
        WRITE_TRIES,
        |stored: Option<Keyring>| {
            let Some(stored) = stored else {
                let keyring = Keyring::wrap(new, current)?;
                return Ok(Decision::Write(
                    keyring.clone(),
                    (keyring, current_id.clone(), true, false),
                ));
            };
            let kek_id = stored.kek_id()?.clone();
            if kek_id == new_id {
                stored.open(new)?;
                return Ok(Decision::Keep((stored, current_id.clone(), false, true)));
            }
            if kek_id != current_id {
                return Err(wrong_key(&name, &kek_id, &current_id));
            }
            let data_key = stored.open(current)?;
            let keyring = Keyring::wrap(new, &data_key)?;
            Ok(Decision::Write(
                keyring.clone(),
                (keyring, kek_id, false, false),
            ))
        },
    )
    .await
    .map_err(update_error)?;
    let mut updated = vault.clone();
    updated.key_id = new_id.as_str().to_owned();
    settings::write_vault(store, &updated, WriteMode::CreateOrUpdate)
        .await
        .map_err(settings_error)?;
    Ok(Rotated {
        old_kek_id,
        new_kek_id: new_id,
        data_key_id: keyring.data_key_id()?.clone(),
        first_keyring,
        resumed,
        keyring,
    })
}

/// The problem with `vault`'s `key_id`, checked against the keyring stored in `store` when
/// it has one: the id of the key-encryption key, not free text.
pub(crate) async fn key_id_problem(
    store: &BlobStore,
    vault: &Vault,
) -> Result<Option<(String, String)>, Error> {
    let Some(keyring) = read(store).await? else {
        return Ok(None);
    };
    let expected = keyring.kek_id()?;
    Ok((vault.key_id != expected.as_str()).then(|| {
        (
            format!(
                "is {:?}, but the vault's keyring ({}) is wrapped under key-encryption key \
                 {expected}",
                vault.key_id,
                layout::keyring()
            ),
            format!(
                "key_id is the id of the operator's key, set by `stowage vault init` and \
                 `stowage vault rotate-key`, never by hand: set it to {expected}"
            ),
        )
    }))
}

/// The geo secondary location `vault` records, if it is geo-redundant.
pub fn secondary_location(vault: &Vault) -> Option<&str> {
    match &vault.redundancy {
        Redundancy::Geo {
            secondary_location, ..
        } => Some(secondary_location),
        Redundancy::Local => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CreateOutcome;

    async fn vault_with_keyring(kek: &VaultKey) -> (BlobStore, Keyring) {
        let store = BlobStore::in_memory();
        let (keyring, outcome) = init(&store, kek).await.unwrap();
        assert_eq!(outcome, Initialised::Created);
        let settings = Vault {
            key_id: kek.key_id().to_string(),
            ..stowage_schemas::samples::vault("v", "mem")
        };
        settings::write_vault(&store, &settings, WriteMode::Create)
            .await
            .unwrap();
        (store, keyring)
    }

    #[tokio::test]
    async fn the_data_key_unlocks_with_its_kek_only_and_init_is_repeatable() {
        let kek = VaultKey::generate().unwrap();
        let (store, keyring) = vault_with_keyring(&kek).await;
        let unlocked = unlock(&store, &kek).await.unwrap();
        assert_eq!(unlocked.source, KeySource::Keyring);
        assert_eq!(&unlocked.data_key.key_id(), keyring.data_key_id().unwrap());
        assert_ne!(
            unlocked.data_key.key_id(),
            kek.key_id(),
            "a data key of its own"
        );
        // The keyring holds no key in the clear.
        let stored = store.get(&layout::keyring()).await.unwrap().bytes;
        let text = String::from_utf8(stored.to_vec()).unwrap();
        assert!(!text.contains(&unlocked.data_key.expose_secret_hex()));
        assert!(!text.contains(&kek.expose_secret_hex()));
        // Again: the same keyring, not a new data key.
        let (again, outcome) = init(&store, &kek).await.unwrap();
        assert_eq!(outcome, Initialised::Existing);
        assert_eq!(again, keyring);

        let other = VaultKey::generate().unwrap();
        let error = unlock(&store, &other).await.unwrap_err().to_string();
        for needed in [
            kek.key_id().to_string(),
            other.key_id().to_string(),
            "nothing was written".into(),
            "rotate-key".into(),
        ] {
            assert!(error.contains(&needed), "{needed}: {error}");
        }
        assert!(init(&store, &other).await.is_err());
    }

    #[tokio::test]
    async fn a_hand_written_key_id_is_refused() {
        let kek = VaultKey::generate().unwrap();
        let (store, _) = vault_with_keyring(&kek).await;
        let mut vault = settings::read_vault(&store).await.unwrap();
        vault.key_id = "my-key".into();
        let error = settings::write_vault(&store, &vault, WriteMode::CreateOrUpdate)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("key_id") && error.contains(kek.key_id().as_str()),
            "{error}"
        );
    }

    #[tokio::test]
    async fn every_change_to_the_keyring_is_detected() {
        let kek = VaultKey::generate().unwrap();
        let (store, keyring) = vault_with_keyring(&kek).await;
        let other = VaultKey::generate().unwrap();
        let entry = keyring.data_keys[0].clone();
        let flip = |text: &str, at: usize| {
            let mut chars: Vec<char> = text.chars().collect();
            chars[at] = if chars[at] == '0' { '1' } else { '0' };
            chars.into_iter().collect::<String>()
        };
        let cases: Vec<(&str, WrappedKey)> = vec![
            (
                "wrapped",
                WrappedKey {
                    wrapped: flip(&entry.wrapped, 10),
                    ..entry.clone()
                },
            ),
            (
                "nonce",
                WrappedKey {
                    nonce: flip(&entry.nonce, 0),
                    ..entry.clone()
                },
            ),
            (
                "data key id",
                WrappedKey {
                    data_key_id: other.key_id(),
                    ..entry.clone()
                },
            ),
            (
                "tag cut off",
                WrappedKey {
                    wrapped: entry.wrapped[..64].to_owned(),
                    ..entry.clone()
                },
            ),
        ];
        for (what, changed) in cases {
            let tampered = Keyring {
                data_keys: vec![changed],
                ..keyring.clone()
            };
            let stored = store.get(&layout::keyring()).await.unwrap();
            store
                .update_if_unchanged(
                    &layout::keyring(),
                    document::encode(&tampered),
                    &stored.version,
                )
                .await
                .unwrap();
            let error = unlock(&store, &kek).await.unwrap_err();
            assert_eq!(error.kind(), ErrorKind::Damaged, "{what}: {error}");
            assert!(
                error.to_string().contains("keys/keyring.json is damaged"),
                "{what}: {error}"
            );
        }
        // An entry moved under another key-encryption key's id: the key given no longer matches
        // what the keyring claims, and vault.json disagrees with the keyring.
        let moved = Keyring {
            data_keys: vec![WrappedKey {
                kek_id: other.key_id(),
                ..entry.clone()
            }],
            ..keyring.clone()
        };
        let stored = store.get(&layout::keyring()).await.unwrap();
        store
            .update_if_unchanged(
                &layout::keyring(),
                document::encode(&moved),
                &stored.version,
            )
            .await
            .unwrap();
        assert!(unlock(&store, &kek).await.is_err());
        let error = unlock(&store, &other).await.unwrap_err().to_string();
        assert!(error.contains("vault.json names"), "{error}");
        // Not JSON at all.
        let stored = store.get(&layout::keyring()).await.unwrap();
        store
            .update_if_unchanged(&layout::keyring(), &b"{ not json"[..], &stored.version)
            .await
            .unwrap();
        let error = unlock(&store, &kek).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Damaged, "{error}");
    }

    #[tokio::test]
    async fn rotation_rewraps_the_same_data_key_and_resumes() {
        let (a, b) = (VaultKey::generate().unwrap(), VaultKey::generate().unwrap());
        let (store, before) = vault_with_keyring(&a).await;
        let data_key_id = before.data_key_id().unwrap().clone();
        let rotated = rotate(&store, &a, &b).await.unwrap();
        assert_eq!(rotated.data_key_id, data_key_id);
        assert_eq!(
            (rotated.old_kek_id.clone(), rotated.new_kek_id.clone()),
            (a.key_id(), b.key_id())
        );
        assert!(!rotated.resumed && !rotated.first_keyring);
        assert_eq!(
            unlock(&store, &b).await.unwrap().data_key.key_id(),
            data_key_id
        );
        assert!(unlock(&store, &a).await.is_err());
        assert_eq!(
            settings::read_vault(&store).await.unwrap().key_id,
            b.key_id().as_str()
        );
        // A rerun (as after an interruption) finishes without changing anything.
        let again = rotate(&store, &a, &b).await.unwrap();
        assert!(again.resumed);
        assert_eq!(again.keyring, rotated.keyring);
        // The same key twice, and a key that is neither, are refused.
        assert!(rotate(&store, &b, &b).await.is_err());
        let c = VaultKey::generate().unwrap();
        assert!(rotate(&store, &c, &a).await.is_err());
        // The secondary gets the same keyring, and refuses another vault's.
        let secondary = BlobStore::in_memory();
        assert!(replicate(&secondary, &rotated.keyring).await.unwrap());
        assert!(!replicate(&secondary, &rotated.keyring).await.unwrap());
        let (_, foreign) = vault_with_keyring(&b).await;
        assert!(replicate(&secondary, &foreign).await.is_err());
    }

    #[tokio::test]
    async fn a_vault_without_a_keyring_uses_its_key_and_rotation_gives_it_one() {
        let old = VaultKey::generate().unwrap();
        let store = BlobStore::in_memory();
        settings::write_vault(
            &store,
            &stowage_schemas::samples::vault("v", "mem"),
            WriteMode::Create,
        )
        .await
        .unwrap();
        let sealed = store.with_key(&old);
        let manifest = layout::recovery_point("i", "rp-1").unwrap();
        assert!(matches!(
            sealed.put_create_only(&manifest, &b"{}"[..]).await.unwrap(),
            CreateOutcome::Created(_)
        ));
        let unlocked = unlock(&store, &old).await.unwrap();
        assert_eq!(unlocked.source, KeySource::OperatorKey);
        assert_eq!(unlocked.data_key.key_id(), old.key_id());
        let wrong = VaultKey::generate().unwrap();
        let error = unlock(&store, &wrong).await.unwrap_err().to_string();
        assert!(
            error.contains(old.key_id().as_str()) && error.contains("has no keyring"),
            "{error}"
        );
        assert!(
            rotate(&store, &wrong, &VaultKey::generate().unwrap())
                .await
                .is_err()
        );

        let new = VaultKey::generate().unwrap();
        let rotated = rotate(&store, &old, &new).await.unwrap();
        assert!(rotated.first_keyring);
        let unlocked = unlock(&store, &new).await.unwrap();
        assert_eq!(
            unlocked.data_key.key_id(),
            old.key_id(),
            "the old key is the data key"
        );
        assert_eq!(
            store
                .with_key(&unlocked.data_key)
                .get(&manifest)
                .await
                .unwrap()
                .bytes
                .as_ref(),
            b"{}"
        );
        assert!(
            unlock(&store, &old).await.is_err(),
            "the old key is refused"
        );
    }
}
