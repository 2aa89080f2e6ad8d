//! Leases: one holder at a time works on a thing (a volume's transfer), for a bounded time that
//! the holder keeps renewing, so a holder that dies (SIGKILL, a lost node) stops blocking others
//! once its lease runs out.
//!
//! A lease is a small JSON document (`leases/<kind>/<name>.json`) changed only through
//! [`document::update`] (compare-and-swap), so two would-be holders never both win. It names its
//! holder and when it runs out; releasing it marks it run out rather than deleting it, since a
//! delete is not conditional and could remove a lease someone else took after ours expired.
//!
//! Time is the workers' wall clock: a holder renews every [`Lease::renew_every`] (a third of the
//! time to live), so clocks that disagree by less than that never hand a live lease to another.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::document::{self, Decision, UpdateError};
use crate::error::{Error, ErrorKind};
use crate::layout::BlobKey;
use crate::store::BlobStore;

/// Attempts of one lease update under contention.
const TRIES: u32 = 8;

/// What a lease document holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Who holds it (a job key: a redelivered attempt of the same job is the same holder).
    pub holder: String,
    /// When the holder took it.
    pub acquired_at: Timestamp,
    /// When it runs out unless renewed; at or before now, it is free.
    pub expires_at: Timestamp,
}

/// The answer of [`Lease::try_acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The caller holds it now (it was free, run out, or already the caller's).
    Yes,
    /// Someone else holds it until `expires_at` (unless they release or renew it).
    HeldBy {
        /// The other holder.
        holder: String,
        /// When it runs out if not renewed.
        expires_at: Timestamp,
    },
}

/// One lease: where it lives and for how long it is taken.
#[derive(Debug, Clone)]
pub struct Lease {
    store: BlobStore,
    key: BlobKey,
    holder: String,
    ttl: Duration,
}

impl Lease {
    /// The lease at `key`, taken by `holder` for `ttl` at a time.
    pub fn new(store: BlobStore, key: BlobKey, holder: impl Into<String>, ttl: Duration) -> Self {
        Self {
            store,
            key,
            holder: holder.into(),
            ttl,
        }
    }

    /// The lease's key.
    pub fn key(&self) -> &BlobKey {
        &self.key
    }

    /// How often a holder renews: a third of the time to live.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    fn expiry(&self, now: Timestamp) -> Result<Timestamp, Error> {
        let ttl = jiff::SignedDuration::try_from(self.ttl).unwrap_or(jiff::SignedDuration::MAX);
        now.checked_add(ttl)
            .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("lease time to live: {e}")))
    }

    /// Take the lease if it is free, run out, or already ours (then it is renewed).
    pub async fn try_acquire(&self) -> Result<Acquired, Error> {
        let now = Timestamp::now();
        let expires_at = self.expiry(now)?;
        self.change(|stored| match stored {
            Some(lease) if lease.holder != self.holder && lease.expires_at > now => {
                Decision::Keep(Acquired::HeldBy {
                    holder: lease.holder,
                    expires_at: lease.expires_at,
                })
            }
            stored => {
                let acquired_at = match stored {
                    Some(lease) if lease.holder == self.holder && lease.expires_at > now => {
                        lease.acquired_at
                    }
                    _ => now,
                };
                let record = LeaseRecord {
                    holder: self.holder.clone(),
                    acquired_at,
                    expires_at,
                };
                Decision::Write(record, Acquired::Yes)
            }
        })
        .await
    }

    /// Extend the lease by its time to live from now. `Ok(false)` when it is no longer ours
    /// (it ran out and someone else took it): the caller must stop relying on it.
    pub async fn renew(&self) -> Result<bool, Error> {
        let expires_at = self.expiry(Timestamp::now())?;
        self.change(|stored| match stored {
            Some(lease) if lease.holder == self.holder => Decision::Write(
                LeaseRecord {
                    expires_at,
                    ..lease
                },
                true,
            ),
            _ => Decision::Keep(false),
        })
        .await
    }

    /// Give the lease up (mark it run out), if it is still ours.
    pub async fn release(&self) -> Result<(), Error> {
        let now = Timestamp::now();
        self.change(|stored| match stored {
            Some(lease) if lease.holder == self.holder && lease.expires_at > now => {
                Decision::Write(
                    LeaseRecord {
                        expires_at: now,
                        ..lease
                    },
                    (),
                )
            }
            _ => Decision::Keep(()),
        })
        .await
    }

    /// One compare-and-swap change of the lease document, decided by `decide` from what is
    /// stored (again after a conflict).
    async fn change<R>(
        &self,
        mut decide: impl FnMut(Option<LeaseRecord>) -> Decision<LeaseRecord, R>,
    ) -> Result<R, Error> {
        let result = document::update(&self.store, &self.key, TRIES, |stored| {
            Ok::<_, std::convert::Infallible>(decide(stored))
        })
        .await;
        self.answer(result)
    }

    fn answer<R>(
        &self,
        result: Result<R, UpdateError<std::convert::Infallible>>,
    ) -> Result<R, Error> {
        result.map_err(|e| match e {
            UpdateError::Store(e) => e,
            UpdateError::Corrupt { key, reason } => Error::new(
                ErrorKind::Damaged,
                format!(
                    "lease {key} is unreadable ({reason}); delete it (it only says who works on \
                     the volume right now) and the next transfer takes it afresh"
                ),
            ),
            UpdateError::Contended { key, tries } => Error::new(
                ErrorKind::Contended,
                format!("lease {key} changed under every one of {tries} attempts; try again"),
            ),
            UpdateError::Rejected(never) => match never {},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout;

    fn lease(store: &BlobStore, holder: &str, ttl: Duration) -> Lease {
        Lease::new(
            store.clone(),
            layout::transfer_lease("vol").unwrap(),
            holder,
            ttl,
        )
    }

    #[tokio::test]
    async fn one_holder_at_a_time_until_release_or_expiry() {
        let store = BlobStore::in_memory();
        let a = lease(&store, "job-a", Duration::from_secs(60));
        let b = lease(&store, "job-b", Duration::from_secs(60));
        assert_eq!(a.try_acquire().await.unwrap(), Acquired::Yes);
        assert_eq!(a.try_acquire().await.unwrap(), Acquired::Yes, "ours again");
        assert!(
            matches!(b.try_acquire().await.unwrap(), Acquired::HeldBy { holder, .. } if holder == "job-a")
        );
        assert!(a.renew().await.unwrap());
        assert!(!b.renew().await.unwrap(), "b never held it");
        a.release().await.unwrap();
        assert_eq!(b.try_acquire().await.unwrap(), Acquired::Yes);
        assert!(!a.renew().await.unwrap(), "a released it and b took it");
        // A release by a former holder leaves the new holder's lease alone.
        a.release().await.unwrap();
        assert!(b.renew().await.unwrap());

        // A holder that stops renewing loses it when it runs out.
        let short = lease(&store, "job-c", Duration::from_millis(1));
        b.release().await.unwrap();
        assert_eq!(short.try_acquire().await.unwrap(), Acquired::Yes);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(a.try_acquire().await.unwrap(), Acquired::Yes);
    }

    #[tokio::test]
    async fn concurrent_acquirers_get_one_winner() {
        let store = BlobStore::in_memory();
        let tries: Vec<_> = (0..8)
            .map(|i| {
                let l = lease(&store, &format!("job-{i}"), Duration::from_secs(60));
                tokio::spawn(async move { l.try_acquire().await.unwrap() })
            })
            .collect();
        let mut winners = 0;
        for t in tries {
            if t.await.unwrap() == Acquired::Yes {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
    }
}
