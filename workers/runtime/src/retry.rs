//! When and how long to wait before a failed job is tried again.
//!
//! Transient failures are retried with exponential backoff and "equal jitter": retry `n` waits
//! a random time in `[d/2, d]` where `d = min(base · 2ⁿ, max)`. Jitter spreads out the herd
//! of retries a broker or storage outage produces; the lower bound keeps the backoff growing.
//! Each `d` is one delay queue in the topology (see [`crate::topology`]), whose TTL is `d`.

use std::time::Duration;

/// How a stage retries transient failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total handler attempts for one message, the first included; after the last the message
    /// is dead-lettered. 1 means no retries.
    pub max_attempts: u32,
    /// Delay before the first retry (before jitter).
    pub base_delay: Duration,
    /// Upper bound of any one delay.
    pub max_delay: Duration,
    /// Deliveries of one message (redeliveries after a crash or lost connection included) after
    /// which the broker dead-letters it instead (the stage queue's `x-delivery-limit`). Only a
    /// last resort: the broker counts every message a dying worker held, prefetched ones too,
    /// so a crash-looping worker would get innocent jobs dead-lettered at a low limit. Poison is
    /// told apart from a dying worker where handling starts are recorded (`stowage-control`'s
    /// job-record decorator and its poison limit); this limit only catches a message that kills
    /// workers before its start can even be recorded, so it stays well above that one.
    pub delivery_limit: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(300),
            delivery_limit: 50,
        }
    }
}

impl RetryPolicy {
    /// The un-jittered delay of each backoff level, shortest first (one per retry).
    pub fn levels(&self) -> impl Iterator<Item = Duration> + '_ {
        (0..self.max_attempts.saturating_sub(1)).map(|n| self.level_delay(n))
    }

    fn level_delay(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// What to do after attempt number `attempt` (0-based) failed transiently.
    pub fn after_failure(&self, attempt: u32) -> RetryDecision {
        let retry = attempt;
        if attempt.saturating_add(1) >= self.max_attempts {
            return RetryDecision::GiveUp {
                attempts: attempt.saturating_add(1),
            };
        }
        let ceiling = self.level_delay(retry);
        let floor = ceiling / 2;
        let jitter = if ceiling > floor {
            rand::random_range(floor..=ceiling)
        } else {
            ceiling
        };
        RetryDecision::RetryAfter {
            level: retry as usize,
            delay: jitter,
        }
    }
}

/// The outcome of [`RetryPolicy::after_failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Send through delay queue `level`, expiring after `delay`.
    RetryAfter {
        /// Which delay queue.
        level: usize,
        /// The jittered delay, at most the level's TTL.
        delay: Duration,
    },
    /// No attempts left: dead-letter.
    GiveUp {
        /// How many attempts were made.
        attempts: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_are_capped() {
        let p = RetryPolicy {
            max_attempts: 12,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            delivery_limit: 5,
        };
        let levels: Vec<_> = p.levels().collect();
        assert_eq!(levels.len(), 11);
        assert_eq!(levels[0], Duration::from_secs(1));
        assert_eq!(levels[3], Duration::from_secs(8));
        assert_eq!(levels[10], Duration::from_secs(60));
        for attempt in 0..11 {
            match p.after_failure(attempt) {
                RetryDecision::RetryAfter { level, delay } => {
                    assert_eq!(level, attempt as usize);
                    assert!(
                        delay <= levels[level] && delay >= levels[level] / 2,
                        "{delay:?}"
                    );
                }
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
        assert_eq!(p.after_failure(11), RetryDecision::GiveUp { attempts: 12 });
    }

    #[test]
    fn one_attempt_means_no_retry() {
        let p = RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        };
        assert_eq!(p.levels().count(), 0);
        assert_eq!(p.after_failure(0), RetryDecision::GiveUp { attempts: 1 });
    }
}
