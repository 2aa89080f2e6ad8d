//! Extent maps in a vault: `volumes/<volume-id>/<version>.map`, create-only, and the chains
//! they form.

use super::{CHAIN_LIMIT, ExtentError, ExtentMap};
use crate::error::Error;
use crate::layout;
use crate::store::{BlobStore, CreateOutcome};

impl ExtentMap {
    /// Stores the map at `volumes/<volume-id>/<version>.map`, create-only.
    pub async fn save(&self, store: &BlobStore, volume_id: &str) -> Result<CreateOutcome, Error> {
        let key = layout::volume_version(volume_id, &self.version).map_err(ExtentError::from)?;
        store.put_create_only(&key, self.to_bytes()).await
    }

    /// Loads one stored map.
    pub async fn load(
        store: &BlobStore,
        volume_id: &str,
        version: &str,
    ) -> Result<ExtentMap, Error> {
        let key = layout::volume_version(volume_id, version).map_err(ExtentError::from)?;
        let stored = store.get(&key).await?;
        let map = ExtentMap::from_bytes(&stored.bytes, key.as_str())?;
        if map.version != version {
            return Err(ExtentError::Corrupt {
                key: key.to_string(),
                reason: format!("it describes version {}", map.version),
            }
            .into());
        }
        Ok(map)
    }
}

/// Loads the chain that `version` of `volume_id` resolves through, oldest (full) map first.
/// Memory holds one map per link, which [`ConsolidationPolicy`] keeps short.
pub async fn load_chain(
    store: &BlobStore,
    volume_id: &str,
    version: &str,
) -> Result<Vec<ExtentMap>, Error> {
    let mut chain = vec![ExtentMap::load(store, volume_id, version).await?];
    while let Some(parent) = chain.last().and_then(|m| m.parent.clone()) {
        if chain.len() >= CHAIN_LIMIT {
            return Err(ExtentError::BrokenChain {
                reason: format!(
                    "version {version} of volume {volume_id} has more than {CHAIN_LIMIT} \
                     ancestors; the parent links probably loop"
                ),
            }
            .into());
        }
        chain.push(ExtentMap::load(store, volume_id, &parent).await?);
    }
    chain.reverse();
    Ok(chain)
}
