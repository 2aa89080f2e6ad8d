//! retention: expire recovery-point tiers by policy, then collect the vault data nothing uses.
//!
//! A `job.retention {instance, as_of}` lists the instance's catalog (streamed; an instance holds
//! at most 360 days × 6 RPs, kept as small summaries), reads its policy
//! (`instances/<i>.json` → `policies/<name>.json`), evaluates every RP ([`evaluate`]) at `as_of`
//! (default: now), and for each expired tier, in this order:
//!
//! * **operational** — deletes the RP's volume snapshots through the disk provider, or a CSI
//!   snapshot's VolumeSnapshot in its cluster ([`VaultContext::csi_clusters`]; only those
//!   named exactly as the snapshot stage names this instance's snapshot of that RP and disk,
//!   [`crate::snapshot::snapshot_name`], so never another instance's), then records the tier as
//!   deleted in the RP's retention record (a tier whose VolumeSnapshots are in a cluster this
//!   worker does not reach is left for a run that does);
//! * **vault** — deletes the RP's `vault` tier manifest, so its volume versions become
//!   unreferenced (their data goes with garbage collection, below), then records it;
//! * **secondary** — likewise the `secondary` tier manifest in the secondary store;
//! * when **no tier remains**: the secondary's copies of the RP manifest and resources, the
//!   resources objects, the RP manifest, and last the retention record.
//!
//! Then it runs the two-phase garbage collection ([`stowage_vault::gc`]) on the primary store
//! (and the secondary), with the real clock, never `as_of`: an `as_of` in the future expires RPs
//! early (an operator's choice) but cannot shorten the grace that protects concurrent writers.
//!
//! The retention record `catalog/<i>/<rp>.retention.json` (compare-and-swap) shows the decision
//! per tier (expiry, state, when deleted); it is written when something changed. Each step is
//! idempotent and recorded after it is done, so a crashed or redelivered job repeats what was
//! not recorded and finds the rest done: deleting a missing snapshot or object succeeds, and a
//! missing tier manifest simply means the tier is gone. Nothing is emitted; counts are logged.
//!
//! **The vault's settings** (`vault.json`) are read per run. A geo vault needs its secondary
//! ([`VaultContext::secondary_of`]): without it retention fails rather than remove RP manifests
//! whose secondary copies it cannot see. **The vault lock** ([`catalog::lock`]): while it is in
//! force nothing of an RP is deleted before its lock date — an expired tier, or an RP with no
//! tier left, is *held* (its record's tier says `held_until`) and deleted by the first run after;
//! the garbage collector keeps unreferenced objects younger than the minimum retention. Lock
//! checks use the stage's clock (the real one), never `as_of`.
//!
//! **Soft-deleted RPs** ([`catalog::soft_delete`]) are left out of the evaluation: none of their
//! tiers expires, they are neither the newest of a tier nor the first of a period. Once their
//! undelete window is over (by the real clock) and the lock allows, the run claims them
//! (state `purging`) and purges them whole: snapshots, tier manifests, the secondary's copies,
//! resources, the RP manifest, the retention record, and the soft-delete record last.

pub mod evaluate;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use futures::StreamExt as _;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use stowage_disk::SnapshotId;
use stowage_runtime::{JobContext, Outcome, StageError, StageHandler};
use stowage_schemas::domain::{Policy, RecoveryPoint, RpState, Tier, VolumeBackup};
use stowage_schemas::jobs::RetentionJob;
use stowage_vault::catalog::lock::Lock;
use stowage_vault::catalog::{self, settings, soft_delete};
use stowage_vault::document::{self, Decision, UpdateError};
use stowage_vault::gc::{self, GcReport};
use stowage_vault::layout::{self, CatalogEntry};
use stowage_vault::store::BlobStore;

use crate::cluster_context::read_instance_opt;
use crate::context::VaultContext;
use evaluate::{RpDecision, RpSummary};

/// A clock, so tests control the garbage collector's notion of now.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The retention stage.
#[derive(Clone)]
pub struct RetentionStage {
    ctx: VaultContext,
    grace: SignedDuration,
    clock: Clock,
    keep_failed_staging: std::time::Duration,
}

/// How long a failed restore's staging disks and objects are kept for inspection before the
/// retention job removes them.
pub const DEFAULT_KEEP_FAILED_STAGING: std::time::Duration =
    std::time::Duration::from_secs(72 * 3600);

impl RetentionStage {
    /// The stage over `ctx`, with the default grace period ([`gc::DEFAULT_GRACE`]) and the
    /// system clock.
    pub fn new(ctx: VaultContext) -> Self {
        Self {
            ctx,
            grace: gc::DEFAULT_GRACE,
            clock: Arc::new(Timestamp::now),
            keep_failed_staging: DEFAULT_KEEP_FAILED_STAGING,
        }
    }

    /// The same stage keeping a failed restore's staging for `keep` before removing it.
    pub fn with_failed_staging_kept_for(mut self, keep: std::time::Duration) -> Self {
        self.keep_failed_staging = keep;
        self
    }

    /// The same stage with another grace period between condemning and deleting vault data.
    pub fn with_grace(mut self, grace: SignedDuration) -> Self {
        self.grace = grace;
        self
    }

    /// The same stage with another clock for garbage collection (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }
}

impl StageHandler for RetentionStage {
    type Input = RetentionJob;

    async fn handle(&self, _ctx: JobContext, job: RetentionJob) -> Result<Outcome, StageError> {
        let now = (self.clock)();
        let as_of = job.as_of.unwrap_or(now);
        let report = run_at(&self.ctx, &job.instance, as_of, now).await?;
        let gc = collect(&self.ctx, now, self.grace).await?;
        // Restores that did not complete keep their staging for inspection, then it goes.
        let mut staging_removed = 0;
        let stores =
            std::iter::once(&self.ctx.primary).chain(self.ctx.secondary.as_ref().map(|s| &s.store));
        for store in stores {
            match crate::staging::sweep(
                store,
                self.ctx.disks.as_ref(),
                now,
                self.keep_failed_staging,
            )
            .await
            {
                Ok(swept) => staging_removed += swept.iter().filter(|r| r.removed).count(),
                Err(err) => {
                    tracing::warn!(%err, "could not sweep restores' staging; the next retention run tries again");
                }
            }
        }
        // What killed writers left: temporary objects not written for the grace period, and
        // the disk provider's leftovers under its own rule (see ARCHITECTURE.md, "Leftovers of
        // killed writers").
        let mut temporaries_removed = 0;
        let grace = std::time::Duration::try_from(self.grace).unwrap_or_default();
        let wall = std::time::SystemTime::from(now);
        let stores =
            std::iter::once(&self.ctx.primary).chain(self.ctx.secondary.as_ref().map(|s| &s.store));
        for store in stores {
            match store.remove_stale_temporaries(grace, wall).await {
                Ok(removed) => temporaries_removed += removed.len(),
                Err(err) => {
                    tracing::warn!(%err, "could not sweep temporary objects; the next retention run tries again");
                }
            }
        }
        match self.ctx.disks.remove_leftovers().await {
            Ok(n) => temporaries_removed += n as usize,
            Err(err) => {
                tracing::warn!(%err, "could not sweep the disk provider's leftovers; the next retention run tries again");
            }
        }
        tracing::info!(
            instance = job.instance,
            %as_of,
            temporaries_removed,
            rps = report.rps,
            operational_expired = report.operational_deleted,
            vault_expired = report.vault_deleted,
            secondary_expired = report.secondary_deleted,
            rps_removed = report.rps_removed,
            rps_purged = report.purged,
            held_by_lock = report.held_by_lock + gc.primary.held_by_lock,
            packs_condemned = gc.primary.packs_condemned,
            packs_deleted = gc.primary.packs_deleted,
            bytes_deleted = gc.primary.bytes_deleted,
            staging_removed,
            "retention done"
        );
        Ok(Outcome::done())
    }
}

/// What one retention run of an instance did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// RPs evaluated.
    pub rps: u64,
    /// Operational tiers deleted (snapshots deleted).
    pub operational_deleted: u64,
    /// Vault tiers deleted.
    pub vault_deleted: u64,
    /// Secondary tiers deleted.
    pub secondary_deleted: u64,
    /// RPs removed entirely (no tier left).
    pub rps_removed: u64,
    /// Snapshots deleted through the disk provider.
    pub snapshots_deleted: u64,
    /// Deletes the vault's lock held back (expired tiers, RPs, soft-deleted RPs to purge).
    pub held_by_lock: u64,
    /// Soft-deleted RPs purged after their undelete window.
    pub purged: u64,
}

/// What garbage collection did in each store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CollectReport {
    /// The primary store (vault tier).
    pub primary: GcReport,
    /// The secondary store, for a geo-redundant vault.
    pub secondary: Option<GcReport>,
}

/// One tier in a retention record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierRecord {
    /// The tier.
    pub tier: Tier,
    /// Available while kept; deleting once expired and until deleted.
    pub state: RpState,
    /// When the rules expire it (none while it is the newest RP of the tier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// When retention finished deleting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Timestamp>,
    /// Expired, but the vault's lock keeps it until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_until: Option<Timestamp>,
}

/// `catalog/<instance>/<rp>.retention.json`: what retention decided for one RP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionRecord {
    /// The instance.
    pub instance: String,
    /// The RP.
    pub recovery_point_id: String,
    /// The vault rules that select it.
    #[serde(default)]
    pub selected_by: Vec<stowage_schemas::domain::CalendarPeriod>,
    /// One entry per tier the RP is or was in.
    pub tiers: Vec<TierRecord>,
}

impl RetentionRecord {
    fn deleted(&self, tier: Tier) -> bool {
        self.tiers
            .iter()
            .any(|t| t.tier == tier && t.deleted_at.is_some())
    }

    fn tier_mut(&mut self, tier: Tier) -> &mut TierRecord {
        if let Some(i) = self.tiers.iter().position(|t| t.tier == tier) {
            return &mut self.tiers[i];
        }
        self.tiers.push(TierRecord {
            tier,
            state: RpState::Available,
            expires_at: None,
            deleted_at: None,
            held_until: None,
        });
        self.tiers.last_mut().expect("just pushed")
    }
}

/// Reads the retention record of an RP, `None` if retention never wrote one.
pub async fn read_record(
    store: &BlobStore,
    instance: &str,
    rp_id: &str,
) -> Result<Option<RetentionRecord>, StageError> {
    let key = layout::retention_record(instance, rp_id).map_err(StageError::permanent)?;
    match store.get(&key).await {
        Ok(found) => document::decode(&key, &found.bytes)
            .map(Some)
            .map_err(record_error(instance)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(StageError::from(e)),
    }
}

/// Change the record with compare-and-swap (create it if absent), re-reading on conflict.
async fn update_record(
    store: &BlobStore,
    instance: &str,
    rp_id: &str,
    change: impl Fn(&mut RetentionRecord),
) -> Result<(), StageError> {
    let key = layout::retention_record(instance, rp_id).map_err(StageError::permanent)?;
    document::update(store, &key, 8, |found: Option<RetentionRecord>| {
        let Some(before) = found else {
            let mut record = RetentionRecord {
                instance: instance.to_owned(),
                recovery_point_id: rp_id.to_owned(),
                selected_by: Vec::new(),
                tiers: Vec::new(),
            };
            change(&mut record);
            return Ok::<_, Infallible>(Decision::Write(record, ()));
        };
        let mut record = before.clone();
        change(&mut record);
        Ok(if record == before {
            Decision::Keep(())
        } else {
            Decision::Write(record, ())
        })
    })
    .await
    .map_err(record_error(instance))
}

/// A retention record that cannot be read or written, as a stage error that says what to do.
fn record_error(instance: &str) -> impl Fn(UpdateError<Infallible>) -> StageError + '_ {
    move |e| match e {
        UpdateError::Corrupt { key, reason } => StageError::permanent(format!(
            "retention record {key} is unreadable ({reason}); delete it — the next run \
             re-evaluates the RP from its manifests"
        )),
        UpdateError::Contended { key, .. } => StageError::transient(format!(
            "retention record {key} kept changing under compare-and-swap; another retention job \
             for instance {instance} is running — this one retries"
        )),
        UpdateError::Store(e) => StageError::from(e),
        UpdateError::Rejected(never) => match never {},
    }
}

/// Reads the instance's policy: `instances/<i>.json` names it, `policies/<name>.json` holds it.
/// `None` when the instance or its policy is not stored (no control plane yet).
pub async fn read_policy(store: &BlobStore, instance: &str) -> Result<Option<Policy>, StageError> {
    let Some(record) = read_instance_opt(store, instance).await? else {
        return Ok(None);
    };
    match settings::read_policy(store, &record.policy).await {
        Ok(policy) => Ok(Some(policy)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(StageError::from(e)),
    }
}

/// What the catalog listing found for one RP.
#[derive(Default)]
struct Found {
    manifest: bool,
    vault: bool,
    secondary: bool,
    record: bool,
    soft_deleted: bool,
}

async fn scan(
    store: &BlobStore,
    instance: &str,
    found: &mut BTreeMap<String, Found>,
    secondary_store: bool,
) -> Result<(), StageError> {
    let prefix = layout::recovery_points(instance).map_err(StageError::permanent)?;
    let mut listing = store.list(&prefix);
    while let Some(info) = listing.next().await {
        let info = info?;
        let Some(entry) = layout::parse_catalog_key(instance, &info.key) else {
            continue;
        };
        match entry {
            CatalogEntry::Manifest(rp) if !secondary_store => {
                found.entry(rp.to_owned()).or_default().manifest = true
            }
            CatalogEntry::Tier(rp, "vault") if !secondary_store => {
                found.entry(rp.to_owned()).or_default().vault = true
            }
            CatalogEntry::Tier(rp, "secondary") if secondary_store => {
                found.entry(rp.to_owned()).or_default().secondary = true
            }
            CatalogEntry::Retention(rp) if !secondary_store => {
                found.entry(rp.to_owned()).or_default().record = true
            }
            CatalogEntry::SoftDeleted(rp) if !secondary_store => {
                found.entry(rp.to_owned()).or_default().soft_deleted = true
            }
            _ => {}
        }
    }
    Ok(())
}

/// Evaluate and apply retention for `instance` at `as_of` (see the module doc), with the lock
/// and undelete windows read on the system clock; no garbage collection (that is [`collect`]).
pub async fn run(
    ctx: &VaultContext,
    instance: &str,
    as_of: Timestamp,
) -> Result<RetentionReport, StageError> {
    run_at(ctx, instance, as_of, Timestamp::now()).await
}

/// [`run`] with the lock and undelete windows read at `now` (the real clock; tests set it).
pub async fn run_at(
    ctx: &VaultContext,
    instance: &str,
    as_of: Timestamp,
    now: Timestamp,
) -> Result<RetentionReport, StageError> {
    let store = &ctx.primary;
    let policy = read_policy(store, instance).await?.ok_or_else(|| {
        StageError::permanent(format!(
            "instance {instance} has no stored policy (instances/{instance}.json naming a \
             policies/<name>.json); retention cannot decide anything without one — store the \
             instance and its policy, then resubmit"
        ))
    })?;
    let vault = ctx.settings().await?;
    let secondary = ctx.secondary_of(&vault).await?.map(|(store, _)| store);
    let job = Run {
        ctx,
        secondary,
        lock: Lock::of(&vault),
        instance,
        now,
    };
    let mut found = BTreeMap::new();
    scan(store, instance, &mut found, false).await?;
    if let Some(secondary) = secondary {
        scan(secondary, instance, &mut found, true).await?;
    }

    let mut report = RetentionReport::default();
    let mut summaries = Vec::new();
    let mut records = BTreeMap::new();
    let mut to_purge = Vec::new();
    for (rp_id, f) in &found {
        if f.soft_deleted {
            match soft_delete::read(store, instance, rp_id).await? {
                Some(record) if record.is_deleted() => {
                    if f.manifest {
                        to_purge.push(record);
                    } else {
                        // A purge removed the RP and stopped before its record: finish.
                        soft_delete::remove(store, instance, rp_id).await?;
                    }
                    continue; // left out of the evaluation, whatever its tiers
                }
                // What an undelete left when it stopped before removing the record.
                Some(_) => soft_delete::remove(store, instance, rp_id).await?,
                None => {}
            }
        }
        if !f.manifest {
            if f.record && !f.vault && !f.secondary {
                // A run removed the RP and crashed before its record: finish.
                delete_key(store, layout::retention_record(instance, rp_id)).await?;
            } else if f.vault || f.secondary {
                tracing::warn!(
                    instance,
                    rp_id,
                    "tier manifest without an RP manifest; left alone"
                );
            }
            continue;
        }
        let rp = match catalog::read_recovery_point(store, instance, rp_id).await {
            Ok(rp) => rp,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(StageError::from(e)),
        };
        let record = if f.record {
            read_record(store, instance, rp_id).await?
        } else {
            None
        };
        let operational_deleted = record
            .as_ref()
            .is_some_and(|r| r.deleted(Tier::Operational));
        summaries.push(RpSummary {
            id: rp_id.clone(),
            created_at: rp.created_at,
            operational: !operational_deleted,
            vault: f.vault,
            secondary: f.secondary,
        });
        records.insert(rp_id.clone(), record);
    }
    report.rps = summaries.len() as u64;
    let decisions =
        evaluate::evaluate(&policy, &summaries, as_of).map_err(StageError::permanent)?;

    for decision in &decisions {
        let summary = summaries
            .iter()
            .find(|s| s.id == decision.id)
            .expect("decided from the summaries");
        let record = records.get(&decision.id).cloned().flatten();
        job.apply(decision, summary, record, &mut report).await?;
    }
    for record in &to_purge {
        job.purge(record, &mut report).await?;
    }
    Ok(report)
}

/// One retention run of one instance: what every step needs.
struct Run<'a> {
    ctx: &'a VaultContext,
    /// The secondary store, for a geo vault.
    secondary: Option<&'a BlobStore>,
    lock: Lock,
    instance: &'a str,
    /// The real clock, for the lock and undelete windows.
    now: Timestamp,
}

async fn delete_key(
    store: &BlobStore,
    key: Result<layout::BlobKey, layout::LayoutError>,
) -> Result<(), StageError> {
    let key = key.map_err(StageError::permanent)?;
    store.delete(&key).await.map_err(StageError::from)
}

impl Run<'_> {
    /// Whether the lock lets `what` of the RP go now; logs and counts it when not.
    fn lock_allows(
        &self,
        what: &str,
        rp_id: &str,
        created_at: Timestamp,
        report: &mut RetentionReport,
    ) -> Option<Timestamp> {
        match self.lock.check(
            format_args!("{what}recovery point {rp_id} of instance {}", self.instance),
            created_at,
            self.now,
        ) {
            Ok(()) => None,
            Err(refusal) => {
                tracing::info!(instance = self.instance, rp_id, "{refusal}");
                report.held_by_lock += 1;
                Some(refusal.until)
            }
        }
    }

    async fn apply(
        &self,
        decision: &RpDecision,
        summary: &RpSummary,
        record: Option<RetentionRecord>,
        report: &mut RetentionReport,
    ) -> Result<(), StageError> {
        let (ctx, instance) = (self.ctx, self.instance);
        let store = &ctx.primary;
        let rp_id = &decision.id;
        // Expired tiers the lock still holds, and until when.
        let held = decision
            .tiers
            .iter()
            .any(|d| d.expired)
            .then(|| self.lock.lock_date(decision.created_at))
            .flatten()
            .filter(|until| self.now < *until);
        // The decision, for whoever looks (written only when it changed).
        let wanted = |r: &mut RetentionRecord| {
            r.selected_by = decision.selected_by.clone();
            for d in &decision.tiers {
                let t = r.tier_mut(d.tier);
                t.expires_at = (!d.protected).then_some(d.expires_at);
                t.state = if d.expired {
                    RpState::Deleting
                } else {
                    RpState::Available
                };
                t.held_until = held.filter(|_| d.expired);
            }
        };
        let unchanged = record.as_ref().is_some_and(|r| {
            let mut copy = r.clone();
            wanted(&mut copy);
            copy == *r
        });
        if !unchanged {
            update_record(store, instance, rp_id, wanted).await?;
        }

        let mut remaining = [summary.operational, summary.vault, summary.secondary];
        for (slot, tier) in [Tier::Operational, Tier::Vault, Tier::Secondary]
            .into_iter()
            .enumerate()
        {
            if !decision.is_expired(tier) {
                continue;
            }
            let what = format!("the {} tier of ", tier.as_str());
            if self
                .lock_allows(&what, rp_id, decision.created_at, report)
                .is_some()
            {
                continue;
            }
            match tier {
                Tier::Operational => {
                    let rp = catalog::read_recovery_point(store, instance, rp_id).await?;
                    if rp.instance != instance || rp.id != *rp_id {
                        tracing::warn!(instance, rp_id, manifest_instance = %rp.instance, manifest_id = %rp.id, "the RP manifest names another instance or recovery point; its snapshots are not this RP's and are not deleted");
                        continue;
                    }
                    let done = delete_snapshots(ctx, &rp).await?;
                    report.snapshots_deleted += done.deleted;
                    if done.unreachable > 0 {
                        continue;
                    }
                    report.operational_deleted += 1;
                }
                Tier::Vault => {
                    delete_key(
                        store,
                        catalog::tier_manifest_key(instance, rp_id, Tier::Vault),
                    )
                    .await?;
                    report.vault_deleted += 1;
                }
                Tier::Secondary => {
                    if let Some(secondary) = self.secondary {
                        delete_key(
                            secondary,
                            catalog::tier_manifest_key(instance, rp_id, Tier::Secondary),
                        )
                        .await?;
                        report.secondary_deleted += 1;
                    }
                }
            }
            let now = Timestamp::now();
            update_record(store, instance, rp_id, |r| {
                let t = r.tier_mut(tier);
                t.state = RpState::Deleting;
                t.deleted_at.get_or_insert(now);
            })
            .await?;
            remaining[slot] = false;
        }
        if remaining.iter().any(|r| *r)
            || self
                .lock_allows("", rp_id, decision.created_at, report)
                .is_some()
        {
            return Ok(());
        }
        self.remove(rp_id).await?;
        report.rps_removed += 1;
        tracing::info!(instance, rp_id, "recovery point removed: no tier left");
        Ok(())
    }

    /// An RP with no tier left: its own objects, most general last.
    async fn remove(&self, rp_id: &str) -> Result<(), StageError> {
        let (store, instance) = (&self.ctx.primary, self.instance);
        let rp_key = layout::recovery_point(instance, rp_id).map_err(StageError::permanent)?;
        let resources = layout::resources(instance, rp_id).map_err(StageError::permanent)?;
        if let Some(secondary) = self.secondary {
            delete_prefix(secondary, &resources).await?;
            secondary.delete(&rp_key).await?;
        }
        delete_prefix(store, &resources).await?;
        store.delete(&rp_key).await?;
        delete_key(store, layout::retention_record(instance, rp_id)).await
    }

    /// Purges a soft-deleted RP whose undelete window is over and which the lock no longer
    /// holds: claims it ([`soft_delete::begin_purge`]), then deletes every tier and object of
    /// it, the soft-delete record last.
    async fn purge(
        &self,
        record: &soft_delete::SoftDeleteRecord,
        report: &mut RetentionReport,
    ) -> Result<(), StageError> {
        let (ctx, instance) = (self.ctx, self.instance);
        let rp_id = record.recovery_point_id.as_str();
        if self.now < record.purge_after {
            return Ok(()); // still undeletable
        }
        let rp = catalog::read_recovery_point(&ctx.primary, instance, rp_id).await?;
        if self
            .lock_allows("soft-deleted ", rp_id, rp.created_at, report)
            .is_some()
            || !soft_delete::begin_purge(&ctx.primary, instance, rp_id, self.now).await?
        {
            return Ok(());
        }
        if rp.instance == instance && rp.id == rp_id {
            let done = delete_snapshots(ctx, &rp).await?;
            report.snapshots_deleted += done.deleted;
            if done.unreachable > 0 {
                return Ok(()); // claimed as purging; a run that reaches the cluster finishes it
            }
        } else {
            tracing::warn!(instance, rp_id, manifest_instance = %rp.instance, manifest_id = %rp.id, "the RP manifest names another instance or recovery point; its snapshots are not this RP's and are not deleted");
        }
        delete_key(
            &ctx.primary,
            catalog::tier_manifest_key(instance, rp_id, Tier::Vault),
        )
        .await?;
        if let Some(secondary) = self.secondary {
            delete_key(
                secondary,
                catalog::tier_manifest_key(instance, rp_id, Tier::Secondary),
            )
            .await?;
        }
        self.remove(rp_id).await?;
        soft_delete::remove(&ctx.primary, instance, rp_id).await?;
        report.purged += 1;
        tracing::info!(instance, rp_id, deleted_at = %record.deleted_at, "soft-deleted recovery point purged: its undelete window is over");
        Ok(())
    }
}

/// What deleting an RP's snapshots did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SnapshotsDeleted {
    /// Snapshots deleted (or found already gone).
    deleted: u64,
    /// Snapshots left because this worker cannot reach their cluster: the tier is not done.
    unreachable: u64,
}

/// Deletes the snapshots the RP manifest names — only those named exactly as the snapshot stage
/// names this instance's snapshot of this RP and disk: a snapshot named otherwise is not one
/// Stowage took for this RP of this instance (another instance's, or one named before snapshot
/// names carried the instance) and is left alone, with a warning. A CSI snapshot is deleted as
/// its VolumeSnapshot, in the cluster it records, through [`VaultContext::csi_clusters`]; one
/// whose cluster this worker does not reach is left (and counted) for a run that does.
async fn delete_snapshots(
    ctx: &VaultContext,
    rp: &RecoveryPoint,
) -> Result<SnapshotsDeleted, StageError> {
    let mut done = SnapshotsDeleted::default();
    for volume in &rp.volumes {
        if !snapshot_of_rp(rp, volume) {
            tracing::warn!(instance = %rp.instance, rp_id = %rp.id, snapshot = %volume.snapshot_id, "the RP manifest names a snapshot the snapshot stage would not have taken for this RP of this instance; left alone");
            continue;
        }
        match &volume.csi {
            None => {
                ctx.disks
                    .delete_snapshot(&SnapshotId(volume.snapshot_id.clone()))
                    .await?;
            }
            Some(csi) => {
                let Some(client) = ctx.csi_clusters.get(&csi.cluster) else {
                    tracing::warn!(instance = %rp.instance, rp_id = %rp.id, cluster = %csi.cluster, snapshot = %format!("{}/{}", volume.namespace, csi.name), "the operational tier expired, but its VolumeSnapshot is in a cluster this retention worker does not reach; it is left, and the tier kept, until a retention worker given that cluster (--kubeconfig/--cluster-name) runs");
                    done.unreachable += 1;
                    continue;
                };
                stowage_cluster::csi::delete_volume_snapshot(client, &volume.namespace, &csi.name)
                    .await
                    .map_err(crate::cluster_context::csi_error)?;
            }
        }
        done.deleted += 1;
    }
    Ok(done)
}

/// Whether `volume`'s snapshot carries exactly the name the snapshot stage gives the snapshot
/// of its disk (the volume id, unescaped) for `rp` of `rp.instance`.
pub(crate) fn snapshot_of_rp(rp: &RecoveryPoint, volume: &VolumeBackup) -> bool {
    layout::unescape_component(&volume.volume_id).is_some_and(|disk| {
        let own = crate::snapshot::snapshot_name(&rp.instance, &rp.id, &disk);
        match &volume.csi {
            // A CSI snapshot's handle is the driver's; its VolumeSnapshot carries the name.
            Some(csi) => csi.name == own,
            None => volume.snapshot_id == own,
        }
    })
}

/// Deletes every object under `prefix`, streaming the listing.
async fn delete_prefix(store: &BlobStore, prefix: &layout::KeyPrefix) -> Result<(), StageError> {
    let mut listing = store.list(prefix);
    while let Some(info) = listing.next().await {
        let info = info?;
        store.delete(&info.key).await?;
    }
    Ok(())
}

/// Two-phase garbage collection of the vault's stores at `now` (see [`stowage_vault::gc`]),
/// keeping what the vault's lock holds.
pub async fn collect(
    ctx: &VaultContext,
    now: Timestamp,
    grace: SignedDuration,
) -> Result<CollectReport, StageError> {
    let vault = ctx.settings().await?;
    let hold = Lock::of(&vault).minimum_retention();
    let primary = gc::collect(&ctx.primary, Tier::Vault, now, grace, hold).await?;
    let secondary = match ctx.secondary_of(&vault).await? {
        Some((store, _)) => Some(gc::collect(store, Tier::Secondary, now, grace, hold).await?),
        None => None,
    };
    Ok(CollectReport { primary, secondary })
}

/// Whether vault-transfer should copy `rp_id` to the vault tier under the instance's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eligibility {
    /// A vault rule selects it: the first RP of this period in the vault.
    Selected(stowage_schemas::domain::CalendarPeriod),
    /// No rule selects it; it stays operational only.
    NotSelected,
    /// No policy is stored for the instance: every RP is transferred (the behaviour before
    /// policies existed; the demo and ad-hoc vaults rely on it).
    NoPolicy,
}

/// Decide [`Eligibility`] of `rp` against the RPs of the instance already in the vault tier.
/// Reads the manifests of the vaulted RPs only (their creation times).
pub async fn vault_eligibility(
    store: &BlobStore,
    rp: &RecoveryPoint,
) -> Result<Eligibility, StageError> {
    let Some(policy) = read_policy(store, &rp.instance).await? else {
        return Ok(Eligibility::NoPolicy);
    };
    let earlier = vaulted(store, rp).await?;
    let this = RpSummary {
        id: rp.id.clone(),
        created_at: rp.created_at,
        operational: true,
        vault: false,
        secondary: false,
    };
    Ok(
        match evaluate::vault_eligible(&policy, &this, &earlier).map_err(StageError::permanent)? {
            Some(period) => Eligibility::Selected(period),
            None => Eligibility::NotSelected,
        },
    )
}

/// The instance's other RPs complete in the vault tier (soft-deleted ones left out, as
/// retention leaves them out), as summaries.
async fn vaulted(store: &BlobStore, rp: &RecoveryPoint) -> Result<Vec<RpSummary>, StageError> {
    let mut found = BTreeMap::new();
    scan(store, &rp.instance, &mut found, false).await?;
    let mut vaulted = Vec::new();
    for (id, f) in &found {
        if !f.vault || *id == rp.id {
            continue;
        }
        if f.soft_deleted
            && soft_delete::deleted(store, &rp.instance, id)
                .await?
                .is_some()
        {
            continue;
        }
        match catalog::read_recovery_point(store, &rp.instance, id).await {
            Ok(other) => vaulted.push(RpSummary {
                id: id.clone(),
                created_at: other.created_at,
                operational: true,
                vault: true,
                secondary: false,
            }),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(StageError::from(e)),
        }
    }
    Ok(vaulted)
}

/// When retention may delete `rp`'s vault copy, as `rp.vaulted` announces it: the policy's
/// vault expiry among the RPs already in the vault tier (its creation when no rule selects
/// it), or the vault lock's date if later. `None` when the instance has no stored policy.
pub async fn vault_expiry(
    store: &BlobStore,
    rp: &RecoveryPoint,
) -> Result<Option<Timestamp>, StageError> {
    let Some(policy) = read_policy(store, &rp.instance).await? else {
        return Ok(None);
    };
    let mut rps = vaulted(store, rp).await?;
    rps.push(RpSummary {
        id: rp.id.clone(),
        created_at: rp.created_at,
        operational: false,
        vault: true,
        secondary: false,
    });
    let decisions =
        evaluate::evaluate(&policy, &rps, rp.created_at).map_err(StageError::permanent)?;
    let Some(expiry) = decisions
        .iter()
        .find(|d| d.id == rp.id)
        .and_then(|d| d.tier(Tier::Vault))
        .map(|d| d.expires_at)
    else {
        return Ok(None);
    };
    let lock_date = match settings::read_vault(store).await {
        Ok(vault) => Lock::of(&vault).lock_date(rp.created_at),
        // Workers refuse an uninitialised vault at start; a vault without settings has no lock.
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e.into()),
    };
    Ok(Some(lock_date.map_or(expiry, |date| date.max(expiry))))
}

#[cfg(test)]
mod tests {
    use super::snapshot_of_rp;
    use crate::snapshot::snapshot_name;
    use stowage_schemas::domain::{RecoveryPoint, VolumeBackup};

    fn rp(instance: &str, id: &str) -> RecoveryPoint {
        RecoveryPoint {
            id: id.into(),
            instance: instance.into(),
            created_at: jiff::Timestamp::UNIX_EPOCH,
            tiers: Vec::new(),
            resources: String::new(),
            volumes: Vec::new(),
        }
    }

    fn volume(volume_id: &str, snapshot_id: &str) -> VolumeBackup {
        VolumeBackup {
            volume_id: volume_id.into(),
            namespace: "shop".into(),
            pvc: "data".into(),
            size_bytes: 1,
            snapshot_id: snapshot_id.into(),
            vault_version: None,
            csi: None,
        }
    }

    #[test]
    fn only_snapshots_named_for_the_rp_of_this_instance_are_its_own() {
        let shop = rp("shop", "rp-1");
        let own = snapshot_name("shop", "rp-1", "shop-data");
        assert!(snapshot_of_rp(&shop, &volume("shop-data", &own)));
        // Another instance's snapshot of the same RP id and disk is not this one's.
        let other = snapshot_name("blog", "rp-1", "shop-data");
        assert!(!snapshot_of_rp(&shop, &volume("shop-data", &other)));
        // Nor one of another RP or disk, the disk itself, or names of the earlier form.
        for name in [
            snapshot_name("shop", "rp-10", "shop-data"),
            snapshot_name("shop", "rp-1", "blog-data"),
            "shop-data".to_owned(),
            "rp-1-shop-data".to_owned(),
            format!("{own}x"),
        ] {
            assert!(
                !snapshot_of_rp(&shop, &volume("shop-data", &name)),
                "{name}"
            );
        }
        // Escaped volume ids name their disk.
        let odd = snapshot_name("shop", "rp-1", "disk%x");
        assert!(snapshot_of_rp(&shop, &volume("disk%25x", &odd)));
        let long = "r".repeat(253);
        let name = snapshot_name("shop", &long, "disk");
        assert!(snapshot_of_rp(&rp("shop", &long), &volume("disk", &name)));
    }
}
