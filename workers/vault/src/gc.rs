//! Garbage collection of vault data: a two-phase mark-and-sweep of packs and extent maps that no
//! tier manifest references any more, safe while other workers write.
//!
//! # What is live
//!
//! *Mark*: every tier manifest in the store (`catalog/*/*.vault.json` in the primary,
//! `*.secondary.json` in the secondary) names volume versions; each version's extent map and its
//! parents (the whole chain) are live, and so is every chunk any of those maps names. A pack is
//! live if its trailer lists at least one live chunk. A pack that is only partly dead is kept
//! whole: repacking its live chunks into a new pack is future work. Memory: the marked set holds
//! 32 bytes (plus hash-set overhead) per live distinct chunk — the same order as the chunk index
//! a transfer loads — and one map chain at a time; packs and maps are listed as streams.
//!
//! # Why two phases
//!
//! A vault-transfer opens the chunk index (its segments as listed then) when it starts and writes its extent maps (and then
//! its tier manifest) when it ends; in between it may deduplicate against a chunk the sweep sees
//! as unreferenced, or build an incremental on a map whose RP just expired. Deleting at once
//! would lose that data. So (kopia-style, with a grace period, see [`DEFAULT_GRACE`]):
//!
//! 1. **Condemn.** An unreferenced pack or map is recorded in `gc/state.json` with the time.
//!    From then on the chunk index consulted for deduplication ([`crate::index::DedupIndex`])
//!    leaves out the chunks of condemned packs, and vault-transfer does not build on condemned
//!    maps, so no *new* job comes to depend on them. Jobs already running may.
//! 2. **Delete**, on a later run at least the grace period after condemnation: mark again; a
//!    condemned object that became referenced (a job that was running at condemnation finished)
//!    is revived; one still unreferenced is moved to the *deleted* set (compare-and-swap) and
//!    only then deleted. Chunk-index segments that name deleted packs are rewritten without
//!    them ([`index::drop_packs`]: a new segment, create-only, that supersedes the old one, which
//!    [`index::compact`] deletes after the grace), and only after that are the packs dropped
//!    from the record. Until then readers leave them out of every index load.
//!
//! **Under a vault lock** (see [`crate::catalog::lock`]) the caller passes the lock's minimum
//! retention: an unreferenced object younger than that (by the store's modification time) stays
//! condemned, however long ago it was condemned, and is deleted by the first run after it has
//! aged ([`GcReport::held_by_lock`] counts them).
//!
//! The one assumption: no job runs longer than the grace period (default 24 h; a transfer of
//! one RP takes minutes to hours). Geo-replication, which writes the secondary without a chunk
//! index, instead calls [`claim`] before relying on a pack or map the secondary already holds:
//! a condemned one is revived on the spot, one being deleted makes it retry later.
//!
//! Crash safety: every step is idempotent and ordered so that a crash leaves at worst objects
//! still recorded (filtered from index loads) that the next run finishes deleting. Two
//! collectors on one store serialise through compare-and-swap on the record; the loser retries.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use futures::StreamExt as _;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use stowage_schemas::domain::Tier;

use crate::catalog;
use crate::chunk::ChunkId;
use crate::document::{self, Decision, UpdateError};
use crate::error::{Error, ErrorKind};
use crate::extent::ExtentMap;
use crate::index;
use crate::layout::{self, CatalogEntry};
use crate::pack::{self, PackId};
use crate::store::{BlobStore, ObjectVersion};

/// Default time between condemning an unreferenced object and deleting it: longer than any job.
pub const DEFAULT_GRACE: SignedDuration = SignedDuration::from_hours(24);

/// How often a compare-and-swap on the record is retried before giving up.
const CAS_ATTEMPTS: u32 = 8;

/// The collector's failures, with the texts operators see.
impl Error {
    /// The record is damaged.
    fn gc_record_corrupt(key: &str, reason: &str) -> Self {
        Self::new(
            ErrorKind::Damaged,
            format!(
                "garbage-collection record {key} is unreadable: {reason}; move it aside — the \
                 next run rebuilds it, condemning afresh (nothing is deleted before a new grace \
                 period)"
            ),
        )
    }

    /// Something the caller wants to rely on is being deleted right now: retry later.
    fn being_deleted(what: &str) -> Self {
        Self::contended(format!(
            "{what} is being deleted by garbage collection in this store; retry in a few \
             minutes, when it is gone and will be copied afresh"
        ))
    }

    /// A referenced map is missing or damaged: marking cannot be trusted, so nothing is swept.
    fn mark_failed(cause: Error) -> Self {
        Self::new(
            cause.kind(),
            format!(
                "cannot mark live data: {cause}; nothing was deleted. Run `stowage rp verify` on \
                 the recovery points of the volume"
            ),
        )
        .with_transient(cause.is_transient())
        .with_source(cause)
    }
}

/// The collector's record, `gc/state.json`: small, proportional to the dead objects of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcState {
    /// Unreferenced packs (by id) and when they were condemned.
    #[serde(default)]
    pub condemned_packs: BTreeMap<String, Timestamp>,
    /// Packs being deleted (or deleted while index segments may still name them).
    #[serde(default)]
    pub deleted_packs: BTreeSet<String>,
    /// Unreferenced maps (`<volume>/<version>`) and when they were condemned.
    #[serde(default)]
    pub condemned_maps: BTreeMap<String, Timestamp>,
    /// Maps being deleted.
    #[serde(default)]
    pub deleted_maps: BTreeSet<String>,
}

impl GcState {
    /// Whether a transfer may deduplicate against chunks of `pack`.
    pub fn pack_usable(&self, pack: &PackId) -> bool {
        !self.condemned_packs.contains_key(pack.as_str())
            && !self.deleted_packs.contains(pack.as_str())
    }

    /// Whether a transfer may build an incremental on `version` of `volume_id`.
    pub fn map_usable(&self, volume_id: &str, version: &str) -> bool {
        let name = map_name(volume_id, version);
        !self.condemned_maps.contains_key(&name) && !self.deleted_maps.contains(&name)
    }
}

fn map_name(volume_id: &str, version: &str) -> String {
    format!("{volume_id}/{version}")
}

/// The record and the version read, `None` when no collection ever ran.
pub async fn read_state(store: &BlobStore) -> Result<(GcState, Option<ObjectVersion>), Error> {
    let key = layout::gc_state();
    match store.get(&key).await {
        Ok(found) => {
            let state = serde_json::from_slice(&found.bytes)
                .map_err(|e| Error::gc_record_corrupt(key.as_str(), &e.to_string()))?;
            Ok((state, Some(found.version)))
        }
        Err(e) if e.is_not_found() => Ok((GcState::default(), None)),
        Err(e) => Err(e),
    }
}

/// Apply `change` to the record with compare-and-swap, re-reading and re-applying on conflict.
/// `change` returns what the caller wants back, or an error that aborts without writing.
async fn update_state<T>(
    store: &BlobStore,
    mut change: impl FnMut(&mut GcState) -> Result<T, Error>,
) -> Result<T, Error> {
    let key = layout::gc_state();
    document::update(store, &key, CAS_ATTEMPTS, |stored: Option<GcState>| {
        let before = stored.unwrap_or_default();
        let mut state = before.clone();
        let answer = change(&mut state)?;
        Ok(if state == before {
            Decision::Keep(answer)
        } else {
            Decision::Write(state, answer)
        })
    })
    .await
    .map_err(|e| match e {
        UpdateError::Corrupt { key, reason } => Error::gc_record_corrupt(&key, &reason),
        UpdateError::Contended { key, .. } => Error::contended(format!(
            "the garbage-collection record {key} changed under every one of {CAS_ATTEMPTS} \
             attempts; another collector is running on this store — retry later"
        )),
        UpdateError::Store(e) => e,
        UpdateError::Rejected(e) => e,
    })
}

/// Make sure the collector will not delete `packs` and `maps` (`(volume, version)`), which the
/// caller found in the store and is about to rely on: condemned ones are revived; one being
/// deleted is an [`ErrorKind::Contended`] error (retry later, when it is gone, and copy it afresh).
pub async fn claim(
    store: &BlobStore,
    packs: &[PackId],
    maps: &[(String, String)],
) -> Result<(), Error> {
    update_state(store, |state| {
        for pack in packs {
            if state.deleted_packs.contains(pack.as_str()) {
                return Err(Error::being_deleted(&format!("pack {pack}")));
            }
            state.condemned_packs.remove(pack.as_str());
        }
        for (volume, version) in maps {
            let name = map_name(volume, version);
            if state.deleted_maps.contains(&name) {
                return Err(Error::being_deleted(&format!("extent map {name}")));
            }
            state.condemned_maps.remove(&name);
        }
        Ok(())
    })
    .await
}

/// What one collection did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Tier manifests marked from.
    pub manifests: u64,
    /// Distinct live chunks.
    pub live_chunks: u64,
    /// Packs listed.
    pub packs: u64,
    /// Packs newly condemned.
    pub packs_condemned: u64,
    /// Condemned packs found referenced again and revived.
    pub packs_revived: u64,
    /// Packs deleted.
    pub packs_deleted: u64,
    /// Bytes of the deleted packs.
    pub bytes_deleted: u64,
    /// Maps newly condemned.
    pub maps_condemned: u64,
    /// Maps deleted.
    pub maps_deleted: u64,
    /// Index segments rewritten without deleted packs.
    pub segments_rewritten: u64,
    /// Index segments merged into larger ones (see [`index::compact`]).
    pub segments_merged: u64,
    /// Superseded index segments deleted.
    pub segments_deleted: u64,
    /// Packs and maps due for deletion but younger than the vault lock's minimum retention:
    /// kept condemned for a later run.
    pub held_by_lock: u64,
}

/// The live set: maps and chunks reachable from the tier manifests of `tier` in `store`.
struct Marked {
    maps: HashSet<String>,
    chunks: HashSet<ChunkId>,
    manifests: u64,
}

async fn mark(store: &BlobStore, tier: Tier) -> Result<Marked, Error> {
    let wanted = match tier {
        Tier::Vault | Tier::Secondary => layout::tier_name(tier),
        Tier::Operational => {
            return Err(Error::gc_record_corrupt(
                layout::gc_state().as_str(),
                "the operational tier holds no vault data to collect",
            ));
        }
    };
    let mut marked = Marked {
        maps: HashSet::new(),
        chunks: HashSet::new(),
        manifests: 0,
    };
    let mut listing = store.list(&layout::catalog());
    while let Some(info) = listing.next().await {
        let info = info?;
        let Some(instance) = layout::instance_from_catalog_key(&info.key) else {
            continue;
        };
        let Some(CatalogEntry::Tier(rp, name)) = layout::parse_catalog_key(instance, &info.key)
        else {
            continue;
        };
        if name != wanted {
            continue;
        }
        let Some(manifest) = catalog::read_tier_manifest(store, instance, rp, tier).await? else {
            continue; // deleted by retention since it was listed
        };
        marked.manifests += 1;
        for volume in &manifest.volumes {
            let mut version = Some(volume.version.clone());
            while let Some(v) = version.take() {
                if !marked.maps.insert(map_name(&volume.volume_id, &v)) {
                    break; // this map and its ancestors are marked already
                }
                let map = ExtentMap::load(store, &volume.volume_id, &v)
                    .await
                    .map_err(Error::mark_failed)?;
                marked.chunks.extend(map.chunk_ids());
                version = map.parent().map(str::to_owned);
            }
        }
    }
    Ok(marked)
}

/// The sweep's verdicts on one kind of object (packs or maps), each by its name `N`, with what
/// deleting it takes (`X`: a pack's size, a map's key).
struct Sweep<N, X> {
    /// Referenced again after they were condemned: no longer condemned.
    revive: Vec<N>,
    /// Unreferenced and not condemned yet: condemned now.
    condemn: Vec<N>,
    /// Unreferenced and condemned at least the grace period ago, or already being deleted.
    delete: Vec<(N, X)>,
    /// Due for deletion but younger than the lock's minimum retention: left condemned.
    held: u64,
}

impl<N: Clone, X: Clone> Sweep<N, X> {
    fn new() -> Self {
        Self {
            revive: Vec::new(),
            condemn: Vec::new(),
            delete: Vec::new(),
            held: 0,
        }
    }

    /// Sorts an object that is `live` (referenced) or not and was `condemned` at some instant
    /// or not; one referenced and not condemned, or condemned too recently, is left alone, and
    /// so is one due for deletion that was written (`modified`) within the `hold` (a vault
    /// lock's minimum retention).
    fn sort(
        &mut self,
        (name, deleting, modified): (N, X, Timestamp),
        live: bool,
        condemned: Option<&Timestamp>,
        rules: &Rules,
    ) {
        match (live, condemned) {
            (true, Some(_)) => self.revive.push(name),
            (false, None) => self.condemn.push(name),
            (false, Some(at)) if rules.now.duration_since(*at) >= rules.grace => match rules.hold {
                Some(hold) if rules.now.duration_since(modified) < hold => self.held += 1,
                _ => self.delete.push((name, deleting)),
            },
            (true, None) | (false, Some(_)) => {}
        }
    }

    /// Records the verdicts in the state's `condemned` and `deleted` sets (condemned `now`)
    /// and returns what to delete: only objects still condemned as read (or already being
    /// deleted) move to deletion, so one a writer claimed in the meantime stays.
    fn record(
        &self,
        name: fn(&N) -> &str,
        condemned: &mut BTreeMap<String, Timestamp>,
        deleted: &mut BTreeSet<String>,
        now: Timestamp,
    ) -> Vec<(N, X)> {
        for n in &self.revive {
            condemned.remove(name(n));
        }
        for n in &self.condemn {
            condemned.entry(name(n).to_owned()).or_insert(now);
        }
        let mut to_delete = Vec::new();
        for (n, deleting) in &self.delete {
            if deleted.contains(name(n)) || condemned.remove(name(n)).is_some() {
                deleted.insert(name(n).to_owned());
                to_delete.push((n.clone(), deleting.clone()));
            }
        }
        to_delete
    }
}

/// When a collection deletes: its clock, the grace after condemnation, and the vault lock's
/// minimum retention, if one is in force.
struct Rules {
    now: Timestamp,
    grace: SignedDuration,
    hold: Option<SignedDuration>,
}

/// One collection of `store` (whose tier manifests are of `tier`: vault for the primary,
/// secondary for the secondary store) at `now`, deleting what was condemned at least `grace`
/// ago and is still unreferenced — and, when `hold` is a vault lock's minimum retention, was
/// written at least that long ago. See the module doc.
pub async fn collect(
    store: &BlobStore,
    tier: Tier,
    now: Timestamp,
    grace: SignedDuration,
    hold: Option<SignedDuration>,
) -> Result<GcReport, Error> {
    let rules = Rules { now, grace, hold };
    let marked = mark(store, tier).await?;
    let mut report = GcReport {
        manifests: marked.manifests,
        live_chunks: marked.chunks.len() as u64,
        ..GcReport::default()
    };
    let (state, _) = read_state(store).await?;

    // Sweep packs: live, newly dead, or dead for long enough.
    let mut packs = Sweep::new();
    let mut listing = store.list(&layout::packs());
    while let Some(info) = listing.next().await {
        let info = info?;
        let Some(id) = layout::pack_id_from_key(&info.key).and_then(PackId::parse) else {
            continue;
        };
        report.packs += 1;
        if state.deleted_packs.contains(id.as_str()) {
            packs.delete.push((id, info.size)); // a crash interrupted the deletion
            continue;
        }
        let live = match pack::read_pack_index(store, &id).await {
            Ok(entries) => entries.iter().any(|e| marked.chunks.contains(&e.chunk)),
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        let condemned = state.condemned_packs.get(id.as_str());
        packs.sort((id, info.size, info.modified), live, condemned, &rules);
    }
    // Sweep maps the same way.
    let mut maps = Sweep::new();
    let mut listing = store.list(&layout::all_volumes());
    while let Some(info) = listing.next().await {
        let info = info?;
        let Some((volume, version)) = layout::volume_and_version_from_key(&info.key) else {
            continue;
        };
        let name = map_name(volume, version);
        if state.deleted_maps.contains(&name) {
            maps.delete.push((name, info.key.clone()));
            continue;
        }
        let live = marked.maps.contains(&name);
        let condemned = state.condemned_maps.get(&name);
        maps.sort(
            (name, info.key.clone(), info.modified),
            live,
            condemned,
            &rules,
        );
    }

    // Record the decisions before acting on them.
    let (to_delete_packs, to_delete_maps) = update_state(store, |s| {
        let packs = packs.record(
            PackId::as_str,
            &mut s.condemned_packs,
            &mut s.deleted_packs,
            now,
        );
        let maps = maps.record(
            String::as_str,
            &mut s.condemned_maps,
            &mut s.deleted_maps,
            now,
        );
        Ok((packs, maps))
    })
    .await?;
    report.packs_revived = packs.revive.len() as u64;
    report.packs_condemned = packs.condemn.len() as u64;
    report.held_by_lock = packs.held + maps.held;

    for (id, size) in &to_delete_packs {
        store.delete(&id.key()).await?;
        report.packs_deleted += 1;
        report.bytes_deleted += size;
    }
    for (_, key) in &to_delete_maps {
        store.delete(key).await?;
        report.maps_deleted += 1;
    }
    report.maps_condemned = maps.condemn.len() as u64;

    // Drop index entries of deleted packs, then forget the packs. Another collector holding
    // the index-maintenance lease: keep them recorded (readers go on leaving them out) for the
    // next run.
    let (state, _) = read_state(store).await?;
    let mut done_packs: Vec<String> = state.deleted_packs.iter().cloned().collect();
    if !state.deleted_packs.is_empty() {
        match index::drop_packs(store, &state.deleted_packs).await? {
            Some(rewritten) => report.segments_rewritten = rewritten,
            None => done_packs.clear(),
        }
    }
    // Merge small segments, and delete superseded ones no reader can still be using.
    let compacted = index::compact(store, now, grace).await?;
    report.segments_merged = compacted.merged;
    report.segments_deleted = compacted.deleted;
    let done_maps: Vec<String> = to_delete_maps.into_iter().map(|(n, _)| n).collect();
    update_state(store, |s| {
        for p in &done_packs {
            s.deleted_packs.remove(p);
        }
        for m in &done_maps {
            s.deleted_maps.remove(m);
        }
        Ok(())
    })
    .await?;
    Ok(report)
}
