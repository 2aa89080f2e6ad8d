//! The vault lock: what `vault.json` allows to be deleted, and when.
//!
//! While a vault's `immutability` is `enabled` or `locked`, no part of a recovery point — any
//! tier, its manifest, resources and records — is deleted before its **lock date**,
//! `created_at + minimum_retention_days × 24 h`, and the garbage collector deletes no pack or map
//! younger than the minimum retention. Every path that deletes asks [`Lock::check`] (or
//! [`Lock::minimum_retention`]) with the real clock, never a job's `as_of`, so no job can move
//! the date. A refusal ([`LockRefusal`]) names the vault, its lock and the date it allows. See
//! "The vault lock and soft delete" in ARCHITECTURE.md.

use std::fmt;

use jiff::{SignedDuration, Timestamp};
use stowage_schemas::domain::{Immutability, Vault};

/// What a vault's settings say about deleting recovery points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    vault: String,
    immutability: Immutability,
    minimum_retention_days: u32,
}

impl Lock {
    /// The lock of `vault`.
    pub fn of(vault: &Vault) -> Self {
        Self {
            vault: vault.name.clone(),
            immutability: vault.immutability,
            minimum_retention_days: vault.minimum_retention_days,
        }
    }

    /// Whether the lock is in force (immutability `enabled` or `locked`).
    pub fn in_force(&self) -> bool {
        self.immutability != Immutability::Disabled
    }

    /// How long the lock keeps everything, `None` when it is not in force.
    pub fn minimum_retention(&self) -> Option<SignedDuration> {
        self.in_force().then(|| {
            SignedDuration::from_hours(i64::from(self.minimum_retention_days).saturating_mul(24))
        })
    }

    /// The lock date of a recovery point taken at `created_at`: nothing of it is deleted
    /// before. `None` when the lock is not in force.
    pub fn lock_date(&self, created_at: Timestamp) -> Option<Timestamp> {
        self.minimum_retention()
            .map(|keep| created_at.checked_add(keep).unwrap_or(Timestamp::MAX))
    }

    /// Whether `what` (part of a recovery point taken at `created_at`) may be deleted at `now`
    /// (the real clock): refused, naming the lock and the date, before the lock date.
    pub fn check(
        &self,
        what: impl fmt::Display,
        created_at: Timestamp,
        now: Timestamp,
    ) -> Result<(), LockRefusal> {
        match self.lock_date(created_at) {
            Some(until) if now < until => Err(LockRefusal {
                what: what.to_string(),
                vault: self.vault.clone(),
                terms: self.terms(),
                until,
            }),
            _ => Ok(()),
        }
    }

    /// `immutability locked, minimum retention 30 days`.
    pub fn terms(&self) -> String {
        format!(
            "immutability {}, minimum retention {} days",
            self.immutability.as_str(),
            self.minimum_retention_days
        )
    }
}

/// A delete the vault's lock does not allow yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} is held by vault {vault}'s lock ({terms}) until {until}; it can be deleted from then"
)]
pub struct LockRefusal {
    /// What would have been deleted, e.g. `recovery point r-1 of instance shop`.
    pub what: String,
    /// The vault.
    pub vault: String,
    /// The lock's terms ([`Lock::terms`]).
    pub terms: String,
    /// The first instant the delete is allowed.
    pub until: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault(immutability: Immutability, days: u32) -> Vault {
        Vault {
            immutability,
            minimum_retention_days: days,
            ..stowage_schemas::samples::vault("main", "/v")
        }
    }

    #[test]
    fn the_lock_holds_until_the_lock_date_and_names_it() {
        let created: Timestamp = "2026-01-01T02:00:00Z".parse().unwrap();
        let lock = Lock::of(&vault(Immutability::Locked, 30));
        let until: Timestamp = "2026-01-31T02:00:00Z".parse().unwrap();
        assert_eq!(lock.lock_date(created), Some(until));
        let just_before = until - SignedDuration::from_secs(1);
        let refusal = lock
            .check("recovery point r", created, just_before)
            .unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "recovery point r is held by vault main's lock (immutability locked, minimum \
             retention 30 days) until 2026-01-31T02:00:00Z; it can be deleted from then"
        );
        lock.check("recovery point r", created, until).unwrap();
        // `enabled` enforces the same; `disabled` holds nothing, whatever the days say.
        let enabled = Lock::of(&vault(Immutability::Enabled, 30));
        assert!(enabled.check("x", created, just_before).is_err());
        let off = Lock::of(&vault(Immutability::Disabled, 30));
        assert!(!off.in_force());
        assert_eq!(off.lock_date(created), None);
        off.check("x", created, created).unwrap();
    }
}
