//! geo-replication: copy a vaulted recovery point to the vault's secondary location.
//!
//! The vault's settings (`vault.json`, read per job) decide: a locally redundant vault has
//! nothing to replicate (the job completes and emits nothing); a geo vault needs its secondary
//! ([`VaultContext::secondary_of`]: permanent failure when this worker has none, transient while
//! it does not answer), and `rp.replicated` names the region the settings record. The stage
//! never reports success without the RP's secondary manifest in place.
//!
//! Copies only what the secondary lacks — packs are immutable and named by id, so "lacks" is a
//! `head` per pack — then writes, each create-only: a chunk-index segment for the chunks this
//! RP needs there, the extent maps of its volume chains, the resources object, the RP manifest,
//! and **last** the RP's `secondary` tier manifest. A half-copied RP therefore never shows in
//! the secondary tier, and a redelivered job re-checks and copies only what is still missing.
//! Objects move one at a time and are streamed
//! ([`BlobStore::copy_create_only`]): a pack, a map or a resources object (which grows with the
//! cluster) is never held whole, only a few upload parts of it. Sealed objects (maps, manifests,
//! resources; `stowage_vault::seal`) are copied byte for byte: they are sealed to their key,
//! which is the same in the secondary, so they open there with the vault key as they are.

use std::collections::{BTreeSet, HashSet};

use stowage_runtime::metrics::{BytesKind, metrics};
use stowage_runtime::{JobContext, JobOrEvent, Outcome, StageError, StageHandler};
use stowage_schemas::domain::Tier;
use stowage_schemas::events::{RpReplicated, RpVaulted};
use stowage_schemas::jobs::GeoReplicationJob;
use stowage_schemas::{Message, Stage};
use stowage_vault::catalog::{self, TierManifest};
use stowage_vault::chunk::ChunkId;
use stowage_vault::extent::{ExtentMap, load_chain};
use stowage_vault::index::{self, ChunkIndex};
use stowage_vault::layout::{self, BlobKey};
use stowage_vault::store::BlobStore;

use crate::context::VaultContext;

/// The geo-replication stage, over the vault it replicates.
#[derive(Clone)]
pub struct GeoReplication(pub VaultContext);

impl StageHandler for GeoReplication {
    type Input = JobOrEvent<GeoReplicationJob, RpVaulted>;

    async fn handle(&self, ctx: JobContext, input: Self::Input) -> Result<Outcome, StageError> {
        let (instance, rp_id, triggered) = match input {
            JobOrEvent::Job(job) => (job.instance, job.recovery_point_id, false),
            JobOrEvent::Event(vaulted) => (vaulted.instance, vaulted.recovery_point_id, true),
        };
        let vault = self.0.settings().await?;
        let Some((secondary, secondary_region)) = self.0.secondary_of(&vault).await? else {
            // A locally redundant vault: nothing to replicate, and no event to emit.
            tracing::info!(
                instance,
                rp_id,
                "the vault is not geo-redundant; nothing to replicate"
            );
            return Ok(Outcome::done());
        };
        let copied = replicate(&self.0.primary, secondary, &instance, &rp_id).await?;
        metrics().add_bytes(Stage::GeoReplication, BytesKind::Written, copied.bytes);
        if triggered && let Some(envelope) = ctx.envelope() {
            // The event was published when the RP reached the vault tier.
            let lag = jiff::Timestamp::now().duration_since(envelope.created_at);
            metrics().replication_lag(lag.unsigned_abs());
        }
        Ok(Outcome::done().emit(Message::RpReplicated(RpReplicated {
            instance,
            recovery_point_id: rp_id,
            secondary_region: secondary_region.to_owned(),
            objects_copied: copied.objects,
            bytes_copied: copied.bytes,
        })))
    }
}

/// What a replication copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    /// Objects written to the secondary.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Copy one vaulted RP from `primary` to `secondary` (see the module doc).
pub async fn replicate(
    primary: &BlobStore,
    secondary: &BlobStore,
    instance: &str,
    rp_id: &str,
) -> Result<Copied, StageError> {
    let mut copied = Copied::default();
    if catalog::read_tier_manifest(secondary, instance, rp_id, Tier::Secondary)
        .await?
        .is_some()
    {
        tracing::info!(
            instance,
            rp_id,
            "already in the secondary tier; nothing to do"
        );
        return Ok(copied);
    }
    let Some(vaulted) = catalog::read_tier_manifest(primary, instance, rp_id, Tier::Vault).await?
    else {
        return Err(StageError::permanent(format!(
            "recovery point {rp_id} of instance {instance} is not in the vault tier yet; \
             run its vault transfer first (stowage submit a job.vault-transfer)"
        )));
    };

    // The keyring first (a few hundred bytes): with the operator's key, the secondary alone
    // then opens what it holds. Written only when the secondary's copy differs (a vault's
    // first replication, or after `stowage vault rotate-key`).
    if let Some(keyring) = stowage_vault::keyring::read(primary).await?
        && stowage_vault::keyring::replicate(secondary, &keyring).await?
    {
        tracing::info!(instance, rp_id, "keyring copied to the secondary");
    }

    // Which maps and chunks the RP's volumes need.
    let mut map_keys: Vec<BlobKey> = Vec::new();
    let mut wanted: HashSet<ChunkId> = HashSet::new();
    for volume in &vaulted.volumes {
        let chain = load_chain(primary, &volume.volume_id, &volume.version).await?;
        for map in &chain {
            map_keys.push(
                layout::volume_version(&volume.volume_id, map.version())
                    .map_err(StageError::permanent)?,
            );
        }
        wanted.extend(
            ExtentMap::resolve(&chain)
                .map_err(StageError::permanent)?
                .chunk_ids(),
        );
    }
    let index = ChunkIndex::load_only(primary, &wanted).await?;
    let mut entries = Vec::with_capacity(wanted.len());
    let mut packs = BTreeSet::new();
    for id in &wanted {
        let location = index.get(id).ok_or_else(|| {
            StageError::permanent(format!(
                "chunk {id} of recovery point {rp_id} is in no index segment of the vault; \
                 the vault is damaged: run `stowage rp verify {rp_id}`"
            ))
        })?;
        packs.insert(location.pack.clone());
        entries.push((*id, location));
    }

    // Packs and maps the secondary already holds may have been condemned by its garbage
    // collector: claim them before relying on them (a pack being deleted makes this retry).
    let pack_list: Vec<_> = packs.iter().cloned().collect();
    let map_list: Vec<(String, String)> = map_keys
        .iter()
        .filter_map(|k| layout::volume_and_version_from_key(k))
        .map(|(v, version)| (v.to_owned(), version.to_owned()))
        .collect();
    stowage_vault::gc::claim(secondary, &pack_list, &map_list).await?;
    for pack in &packs {
        copy_if_missing(primary, secondary, &pack.key(), &mut copied).await?;
    }
    let segment = format!(
        "geo-{}",
        &blake3::hash(format!("{instance}/{rp_id}").as_bytes()).to_hex()[..32]
    );
    index::write_segment(secondary, &segment, &entries).await?;
    for key in &map_keys {
        copy_if_missing(primary, secondary, key, &mut copied).await?;
    }
    if !vaulted.resources.is_empty() {
        let resources = layout_key(&vaulted.resources)?;
        copy_if_missing(primary, secondary, &resources, &mut copied).await?;
    }
    let rp_key = layout::recovery_point(instance, rp_id).map_err(StageError::permanent)?;
    copy_if_missing(primary, secondary, &rp_key, &mut copied).await?;

    let manifest = TierManifest {
        tier: Tier::Secondary,
        completed_at: jiff::Timestamp::now(),
        ..vaulted
    };
    catalog::write_tier_manifest(secondary, &manifest).await?;
    tracing::info!(
        instance,
        rp_id,
        objects = copied.objects,
        bytes = copied.bytes,
        packs = packs.len(),
        "replicated"
    );
    Ok(copied)
}

fn layout_key(key: &str) -> Result<BlobKey, StageError> {
    layout::parse_resource_key(key).map_err(StageError::permanent)
}

/// Copies `key` from `from` to `to` unless `to` has it, streaming (see the module doc), and
/// counts what was copied.
async fn copy_if_missing(
    from: &BlobStore,
    to: &BlobStore,
    key: &BlobKey,
    copied: &mut Copied,
) -> Result<(), StageError> {
    match to.head(key).await {
        Ok(_) => return Ok(()),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(StageError::from(e)),
    }
    let size = from.head(key).await?.size;
    if let stowage_vault::store::CreateOutcome::Created(_) = from.copy_create_only(to, key).await? {
        copied.objects += 1;
        copied.bytes += size;
    }
    Ok(())
}
