//! Soft delete of recovery points: `stowage rp delete` and `stowage rp undelete`.
//!
//! Deleting a recovery point writes `catalog/<instance>/<rp>.deleted.json` and nothing else:
//! every tier stays as it was for the vault's undelete window (`soft_delete_days`). While the
//! record is there the RP is *soft-deleted*: listed as such, not restorable, left alone by
//! retention's policy evaluation, and its data kept by garbage collection (its tier manifests
//! remain). Undeleting within the window removes the record; after it, the next retention run
//! purges the RP ([`begin_purge`], then the stage deletes every part of it, this record last).
//!
//! The record changes by compare-and-swap only, so an undelete and a purge racing at the end of
//! the window serialise: the undelete marks it `undeleted` before removing it (a purge that
//! reads that skips the RP), and a purge marks it `purging` before deleting anything (an
//! undelete that reads that is refused). Deleting is refused while the vault's lock holds the RP
//! ([`super::lock`]). See "The vault lock and soft delete" in ARCHITECTURE.md.

use std::convert::Infallible;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::lock::{Lock, LockRefusal};
use super::settings::{self, SettingsError};
use crate::document::{self, Decision, UpdateError};
use crate::error::{Error, ErrorKind};
use crate::layout;
use crate::store::BlobStore;

/// Compare-and-swap attempts on a record before giving up.
const TRIES: u32 = 8;

/// `catalog/<instance>/<rp>.deleted.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftDeleteRecord {
    /// The instance.
    pub instance: String,
    /// The recovery point.
    pub recovery_point_id: String,
    /// When it was deleted.
    pub deleted_at: Timestamp,
    /// The end of the undelete window: from then on retention purges it.
    pub purge_after: Timestamp,
    /// Where the record is in its life.
    #[serde(default)]
    pub state: SoftDeleteState,
}

/// Where a soft-delete record is in its life; each step is one compare-and-swap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SoftDeleteState {
    /// Deleted, within or past its window.
    #[default]
    Deleted,
    /// An undelete marked it just before removing the record.
    Undeleted {
        /// When.
        at: Timestamp,
    },
    /// Retention marked it just before it started deleting the recovery point.
    Purging {
        /// When.
        since: Timestamp,
    },
}

impl SoftDeleteRecord {
    /// Whether the recovery point is soft-deleted (not undeleted meanwhile).
    pub fn is_deleted(&self) -> bool {
        !matches!(self.state, SoftDeleteState::Undeleted { .. })
    }

    /// Why a restore from the recovery point is refused.
    pub fn restore_refusal(&self) -> String {
        format!(
            "recovery point {rp} of instance {i} was deleted at {at} and is purged after {end}; \
             undelete it first (`stowage rp undelete {i} {rp}`) to restore from it",
            rp = self.recovery_point_id,
            i = self.instance,
            at = self.deleted_at,
            end = self.purge_after,
        )
    }
}

/// Why a delete or undelete did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SoftDeleteError {
    /// The recovery point does not exist.
    #[error(
        "no recovery point {rp} of instance {instance} in the vault's catalog; `stowage rp list \
         {instance}` shows its recovery points"
    )]
    NoRecoveryPoint {
        /// The instance.
        instance: String,
        /// The recovery point.
        rp: String,
    },
    /// The vault's lock holds the recovery point.
    #[error(transparent)]
    Locked(#[from] LockRefusal),
    /// Deleted already.
    #[error(
        "recovery point {} of instance {} was already deleted at {}; it can be undeleted until \
         {} (`stowage rp undelete`)",
        .0.recovery_point_id, .0.instance, .0.deleted_at, .0.purge_after
    )]
    AlreadyDeleted(Box<SoftDeleteRecord>),
    /// Not deleted: nothing to undelete.
    #[error(
        "recovery point {rp} of instance {instance} is not deleted; there is nothing to undelete"
    )]
    NotDeleted {
        /// The instance.
        instance: String,
        /// The recovery point.
        rp: String,
    },
    /// The undelete window is over.
    #[error(
        "the undelete window of recovery point {} of instance {} closed at {} (it was deleted at \
         {}); retention purges it at its next run",
        .0.recovery_point_id, .0.instance, .0.purge_after, .0.deleted_at
    )]
    WindowClosed(Box<SoftDeleteRecord>),
    /// Retention is purging it.
    #[error(
        "recovery point {} of instance {} is being purged by retention (since {}); it can no \
         longer be undeleted",
        .0.recovery_point_id, .0.instance, purging_since(.0)
    )]
    BeingPurged(Box<SoftDeleteRecord>),
    /// The vault settings could not be read.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// Blob storage failed, or the record is damaged or contended.
    #[error(transparent)]
    Store(#[from] Error),
}

fn purging_since(record: &SoftDeleteRecord) -> String {
    match record.state {
        SoftDeleteState::Purging { since } => since.to_string(),
        _ => String::new(),
    }
}

fn update_error<E>(
    e: UpdateError<E>,
    rejected: impl FnOnce(E) -> SoftDeleteError,
) -> SoftDeleteError {
    match e {
        UpdateError::Rejected(e) => rejected(e),
        other => SoftDeleteError::Store(store_error(other)),
    }
}

fn store_error<E>(e: UpdateError<E>) -> Error {
    match e {
        UpdateError::Corrupt { key, reason } => Error::new(
            ErrorKind::Damaged,
            format!(
                "soft-delete record {key} is unreadable ({reason}); it was damaged — rewrite it \
                 by hand from `stowage rp describe`, or remove it to undelete the recovery point"
            ),
        ),
        UpdateError::Contended { key, tries } => Error::contended(format!(
            "soft-delete record {key} changed under every one of {tries} attempts; retry in a \
             moment"
        )),
        UpdateError::Store(e) => e,
        UpdateError::Rejected(_) => Error::new(ErrorKind::Internal, "unexpected refusal"),
    }
}

/// The record of the recovery point, whatever its state; `None` when there is none.
pub async fn read(
    store: &BlobStore,
    instance: &str,
    rp_id: &str,
) -> Result<Option<SoftDeleteRecord>, Error> {
    let key = layout::soft_delete_record(instance, rp_id)?;
    match store.get(&key).await {
        Ok(found) => document::decode::<_, Infallible>(&key, &found.bytes)
            .map(Some)
            .map_err(store_error),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The record if the recovery point is soft-deleted (not undeleted).
pub async fn deleted(
    store: &BlobStore,
    instance: &str,
    rp_id: &str,
) -> Result<Option<SoftDeleteRecord>, Error> {
    Ok(read(store, instance, rp_id)
        .await?
        .filter(SoftDeleteRecord::is_deleted))
}

/// Soft-deletes a recovery point at `now`, unless the vault's lock holds it: writes its record
/// with the vault's undelete window.
pub async fn delete(
    store: &BlobStore,
    instance: &str,
    rp_id: &str,
    now: Timestamp,
) -> Result<SoftDeleteRecord, SoftDeleteError> {
    let vault = settings::read_vault(store).await?;
    let rp = match super::read_recovery_point(store, instance, rp_id).await {
        Ok(rp) => rp,
        Err(e) if e.is_not_found() => {
            return Err(SoftDeleteError::NoRecoveryPoint {
                instance: instance.to_owned(),
                rp: rp_id.to_owned(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    Lock::of(&vault).check(
        format_args!("recovery point {rp_id} of instance {instance}"),
        rp.created_at,
        now,
    )?;
    let window = SignedDuration::from_hours(i64::from(vault.soft_delete_days) * 24);
    let record = SoftDeleteRecord {
        instance: instance.to_owned(),
        recovery_point_id: rp_id.to_owned(),
        deleted_at: now,
        purge_after: now.checked_add(window).unwrap_or(Timestamp::MAX),
        state: SoftDeleteState::Deleted,
    };
    let key = layout::soft_delete_record(instance, rp_id).map_err(Error::from)?;
    document::update(store, &key, TRIES, |stored: Option<SoftDeleteRecord>| {
        match stored {
            Some(existing) if existing.is_deleted() => {
                Err(SoftDeleteError::AlreadyDeleted(Box::new(existing)))
            }
            // None, or what an undelete interrupted before removing its record left.
            _ => Ok(Decision::Write(record.clone(), record.clone())),
        }
    })
    .await
    .map_err(|e| update_error(e, |e| e))
}

/// Undeletes a soft-deleted recovery point at `now`, within its window.
pub async fn undelete(
    store: &BlobStore,
    instance: &str,
    rp_id: &str,
    now: Timestamp,
) -> Result<SoftDeleteRecord, SoftDeleteError> {
    let key = layout::soft_delete_record(instance, rp_id).map_err(Error::from)?;
    let record = document::update(store, &key, TRIES, |stored: Option<SoftDeleteRecord>| {
        let Some(record) = stored else {
            return Err(SoftDeleteError::NotDeleted {
                instance: instance.to_owned(),
                rp: rp_id.to_owned(),
            });
        };
        if matches!(record.state, SoftDeleteState::Purging { .. }) {
            return Err(SoftDeleteError::BeingPurged(Box::new(record)));
        }
        if !record.is_deleted() {
            return Ok(Decision::Keep(record)); // an earlier undelete stopped before removing it
        }
        if now >= record.purge_after {
            return Err(SoftDeleteError::WindowClosed(Box::new(record)));
        }
        let undeleted = SoftDeleteRecord {
            state: SoftDeleteState::Undeleted { at: now },
            ..record
        };
        Ok(Decision::Write(undeleted.clone(), undeleted))
    })
    .await
    .map_err(|e| update_error(e, |e| e))?;
    store.delete(&key).await?;
    Ok(record)
}

/// Retention's claim on a soft-deleted recovery point whose window is over at `now`: marks the
/// record `purging` (compare-and-swap) and answers whether to purge it. `false` when
/// there is no record, it was undeleted, or its window is still open.
pub async fn begin_purge(
    store: &BlobStore,
    instance: &str,
    rp_id: &str,
    now: Timestamp,
) -> Result<bool, Error> {
    let key = layout::soft_delete_record(instance, rp_id)?;
    document::update(store, &key, TRIES, |stored: Option<SoftDeleteRecord>| {
        Ok::<_, Infallible>(match stored {
            Some(r) => match r.state {
                SoftDeleteState::Purging { .. } => Decision::Keep(true),
                SoftDeleteState::Deleted if now >= r.purge_after => {
                    let marked = SoftDeleteRecord {
                        state: SoftDeleteState::Purging { since: now },
                        ..r
                    };
                    Decision::Write(marked, true)
                }
                _ => Decision::Keep(false),
            },
            None => Decision::Keep(false),
        })
    })
    .await
    .map_err(store_error)
}

/// Removes the record (the last step of a purge, or what an interrupted undelete left).
pub async fn remove(store: &BlobStore, instance: &str, rp_id: &str) -> Result<(), Error> {
    store
        .delete(&layout::soft_delete_record(instance, rp_id)?)
        .await
}

#[cfg(test)]
mod tests {
    use stowage_schemas::domain::{Immutability, RecoveryPoint, Vault};

    use super::*;
    use crate::catalog::settings::WriteMode;

    /// A vault with the lock given, holding recovery point `r` of `shop`, taken 2026-01-01.
    async fn vault_with_rp(immutability: Immutability, days: u32) -> BlobStore {
        let key = crate::crypto::VaultKey::generate().unwrap();
        let store = BlobStore::in_memory().with_key(&key);
        let vault = Vault {
            immutability,
            minimum_retention_days: days,
            ..stowage_schemas::samples::vault("main", "/v")
        };
        settings::write_vault(&store, &vault, WriteMode::Create)
            .await
            .unwrap();
        let rp = RecoveryPoint {
            id: "r".into(),
            instance: "shop".into(),
            created_at: at("2026-01-01T00:00:00Z"),
            tiers: Vec::new(),
            resources: String::new(),
            volumes: Vec::new(),
        };
        crate::catalog::write_recovery_point(&store, &rp)
            .await
            .unwrap();
        store
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn delete_respects_the_lock_and_undelete_the_window() {
        let store = vault_with_rp(Immutability::Locked, 30).await;
        let err = delete(&store, "shop", "r", at("2026-01-20T00:00:00Z"))
            .await
            .unwrap_err();
        assert!(matches!(err, SoftDeleteError::Locked(_)), "{err}");
        assert!(
            err.to_string().contains("until 2026-01-31T00:00:00Z"),
            "{err}"
        );
        assert!(read(&store, "shop", "r").await.unwrap().is_none());
        let missing = delete(&store, "shop", "nope", at("2026-03-01T00:00:00Z"))
            .await
            .unwrap_err();
        assert!(matches!(missing, SoftDeleteError::NoRecoveryPoint { .. }));

        let now = at("2026-02-01T00:00:00Z");
        let record = delete(&store, "shop", "r", now).await.unwrap();
        assert_eq!(record.purge_after, at("2026-02-15T00:00:00Z"));
        let again = delete(&store, "shop", "r", now).await.unwrap_err();
        assert!(
            matches!(again, SoftDeleteError::AlreadyDeleted(_)),
            "{again}"
        );
        // The window is open: no purge; undelete removes the record.
        assert!(!begin_purge(&store, "shop", "r", now).await.unwrap());
        undelete(&store, "shop", "r", at("2026-02-14T23:59:59Z"))
            .await
            .unwrap();
        assert!(read(&store, "shop", "r").await.unwrap().is_none());
        let nothing = undelete(&store, "shop", "r", now).await.unwrap_err();
        assert!(matches!(nothing, SoftDeleteError::NotDeleted { .. }));

        // Deleted again; after the window undelete is refused and retention may purge.
        delete(&store, "shop", "r", now).await.unwrap();
        let late = at("2026-02-15T00:00:00Z");
        let closed = undelete(&store, "shop", "r", late).await.unwrap_err();
        assert!(
            matches!(closed, SoftDeleteError::WindowClosed(_)),
            "{closed}"
        );
        assert!(begin_purge(&store, "shop", "r", late).await.unwrap());
        let purging = undelete(&store, "shop", "r", now).await.unwrap_err();
        assert!(
            matches!(purging, SoftDeleteError::BeingPurged(_)),
            "{purging}"
        );
        assert!(deleted(&store, "shop", "r").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn an_undelete_that_won_the_race_stops_the_purge() {
        let store = vault_with_rp(Immutability::Disabled, 0).await;
        let deleted_at = at("2026-01-02T00:00:00Z");
        let record = delete(&store, "shop", "r", deleted_at).await.unwrap();
        assert_eq!(record.state, SoftDeleteState::Deleted);
        // An undelete that marked the record and died before removing it.
        let key = layout::soft_delete_record("shop", "r").unwrap();
        let marked = SoftDeleteRecord {
            state: SoftDeleteState::Undeleted {
                at: at("2026-01-03T00:00:00Z"),
            },
            ..record
        };
        store.delete(&key).await.unwrap();
        store
            .put_create_only(&key, document::encode(&marked))
            .await
            .unwrap();
        assert!(
            !begin_purge(&store, "shop", "r", at("2027-01-01T00:00:00Z"))
                .await
                .unwrap()
        );
        assert!(deleted(&store, "shop", "r").await.unwrap().is_none());
        // It can be deleted again (the leftover is replaced).
        delete(&store, "shop", "r", at("2026-01-04T00:00:00Z"))
            .await
            .unwrap();
        assert!(deleted(&store, "shop", "r").await.unwrap().is_some());
    }
}
