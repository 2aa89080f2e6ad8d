//! Retention rules, evaluated without I/O: which tiers of which recovery points are expired.
//!
//! Rules (issue 6 §3):
//!
//! * **Operational tier**: every RP is kept `operational_days` calendar days after it was taken.
//! * **Vault tier** (and the secondary copy of it): rule `first_of: day | week | month | year`
//!   selects the first successful RP of each such period, read in the policy's time zone (a
//!   week starts on Sunday, a month on day 1, a year on January 1). An RP's vault expiry is its
//!   creation plus the longest `keep_days` of the rules that select it. An RP no rule selects is
//!   not eligible for the vault tier: if it is there anyway (say an earlier RP of the day was
//!   still transferring when it was judged), its vault copy is expired at once.
//! * **The most recent successful RP is never expired.** Applied per tier: the newest RP that is
//!   complete in a tier is never expired from that tier, which includes the newest RP overall in
//!   every tier it is in.
//!
//! "Successful in a tier" means the tier is complete: the RP manifest exists (and the operational
//! tier was not deleted) for the operational tier; the tier manifest exists for vault and
//! secondary. Selection is evaluated per tier over the RPs complete in it, so it needs no history
//! beyond what the catalog holds.
//!
//! Days are calendar days in the policy's zone: 30 days after 01:00 on the day before a DST
//! change is 01:00 thirty days later, not 23 or 25 hours off.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan as _, Zoned};
use stowage_schemas::domain::{CalendarPeriod, Policy, Tier};

/// The policy cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The schedule's time zone is not a known IANA name.
    #[error(
        "policy {policy} names time zone {zone:?}, which this worker does not know ({reason}); \
         use an IANA name such as Europe/Amsterdam or UTC"
    )]
    UnknownTimeZone {
        /// The policy.
        policy: String,
        /// The zone as written.
        zone: String,
        /// jiff's complaint.
        reason: String,
    },
    /// A date computation left jiff's range.
    #[error("policy {policy}: {what} is out of range ({reason}); check the policy's day counts")]
    OutOfRange {
        /// The policy.
        policy: String,
        /// What was being computed.
        what: String,
        /// jiff's complaint.
        reason: String,
    },
}

/// What evaluation needs to know about one recovery point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpSummary {
    /// The RP id.
    pub id: String,
    /// When it was taken.
    pub created_at: Timestamp,
    /// Complete in the operational tier (manifest exists, snapshots not deleted).
    pub operational: bool,
    /// Complete in the vault tier (vault tier manifest exists).
    pub vault: bool,
    /// Complete in the secondary tier (secondary tier manifest exists).
    pub secondary: bool,
}

impl RpSummary {
    /// Whether the RP is complete in `tier`.
    pub fn in_tier(&self, tier: Tier) -> bool {
        match tier {
            Tier::Operational => self.operational,
            Tier::Vault => self.vault,
            Tier::Secondary => self.secondary,
        }
    }
}

/// The decision for one tier of one RP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierDecision {
    /// The tier.
    pub tier: Tier,
    /// When the tier's copy expires by the rules (for an RP no vault rule selects: its creation).
    pub expires_at: Timestamp,
    /// The newest RP complete in this tier: kept whatever `expires_at` says.
    pub protected: bool,
    /// Expired at the evaluation instant (and not protected): retention deletes it.
    pub expired: bool,
}

/// The decisions for one RP, over the tiers it is complete in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpDecision {
    /// The RP id.
    pub id: String,
    /// When it was taken.
    pub created_at: Timestamp,
    /// The vault rules selecting it (periods it is the first vaulted RP of), smallest first.
    pub selected_by: Vec<CalendarPeriod>,
    /// One decision per tier the RP is complete in.
    pub tiers: Vec<TierDecision>,
}

impl RpDecision {
    /// The decision for `tier`, if the RP is in it.
    pub fn tier(&self, tier: Tier) -> Option<&TierDecision> {
        self.tiers.iter().find(|d| d.tier == tier)
    }

    /// Whether `tier` is expired for this RP.
    pub fn is_expired(&self, tier: Tier) -> bool {
        self.tier(tier).is_some_and(|d| d.expired)
    }
}

/// The policy's time zone.
pub fn time_zone(policy: &Policy) -> Result<TimeZone, PolicyError> {
    TimeZone::get(&policy.schedule.time_zone).map_err(|e| PolicyError::UnknownTimeZone {
        policy: policy.name.clone(),
        zone: policy.schedule.time_zone.clone(),
        reason: e.to_string(),
    })
}

/// The first day of the `period` containing `at`, in `zone`: the period's identity.
pub fn period_start(at: Timestamp, zone: &TimeZone, period: CalendarPeriod) -> Date {
    let date = at.to_zoned(zone.clone()).date();
    match period {
        CalendarPeriod::Day => date,
        CalendarPeriod::Week => {
            let back = i64::from(date.weekday().to_sunday_zero_offset());
            date.checked_sub(back.days()).unwrap_or(date)
        }
        CalendarPeriod::Month => date.first_of_month(),
        CalendarPeriod::Year => date.first_of_year(),
    }
}

fn add_days(
    policy: &Policy,
    at: Timestamp,
    zone: &TimeZone,
    days: i64,
) -> Result<Timestamp, PolicyError> {
    let zoned: Zoned = at.to_zoned(zone.clone());
    zoned
        .checked_add(days.days())
        .map(|z| z.timestamp())
        .map_err(|e| PolicyError::OutOfRange {
            policy: policy.name.clone(),
            what: format!("{at} plus {days} days"),
            reason: e.to_string(),
        })
}

/// Evaluate every RP of an instance against `policy` at `as_of`. `rps` may be in any order;
/// the answer is sorted by creation time (then id).
pub fn evaluate(
    policy: &Policy,
    rps: &[RpSummary],
    as_of: Timestamp,
) -> Result<Vec<RpDecision>, PolicyError> {
    let zone = time_zone(policy)?;
    let mut order: Vec<&RpSummary> = rps.iter().collect();
    order.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));

    let newest_in = |tier: Tier| {
        order
            .iter()
            .rev()
            .find(|rp| rp.in_tier(tier))
            .map(|rp| &rp.id)
    };
    let newest = [Tier::Operational, Tier::Vault, Tier::Secondary].map(newest_in);

    // Per tier and rule: the periods already claimed by an earlier RP complete in the tier.
    let mut seen: [Vec<std::collections::HashSet<Date>>; 2] = [
        vec![Default::default(); policy.retention.vault.len()],
        vec![Default::default(); policy.retention.vault.len()],
    ];
    let mut decisions = Vec::with_capacity(order.len());
    for rp in order {
        let mut tiers = Vec::new();
        let mut selected_by = Vec::new();
        if rp.operational {
            let expires_at = add_days(
                policy,
                rp.created_at,
                &zone,
                i64::from(policy.retention.operational_days),
            )?;
            tiers.push(decide(
                Tier::Operational,
                expires_at,
                newest[0] == Some(&rp.id),
                as_of,
            ));
        }
        for (slot, tier) in [(0, Tier::Vault), (1, Tier::Secondary)] {
            if !rp.in_tier(tier) {
                continue;
            }
            let mut keep: Option<u32> = None;
            for (rule_index, rule) in policy.retention.vault.iter().enumerate() {
                let period = period_start(rp.created_at, &zone, rule.first_of);
                if seen[slot][rule_index].insert(period) {
                    keep = Some(keep.map_or(rule.keep_days, |k| k.max(rule.keep_days)));
                    if tier == Tier::Vault && !selected_by.contains(&rule.first_of) {
                        selected_by.push(rule.first_of);
                    }
                }
            }
            let expires_at = match keep {
                Some(days) => add_days(policy, rp.created_at, &zone, i64::from(days))?,
                None => rp.created_at,
            };
            tiers.push(decide(
                tier,
                expires_at,
                newest[slot + 1] == Some(&rp.id),
                as_of,
            ));
        }
        selected_by.sort();
        decisions.push(RpDecision {
            id: rp.id.clone(),
            created_at: rp.created_at,
            selected_by,
            tiers,
        });
    }
    Ok(decisions)
}

fn decide(tier: Tier, expires_at: Timestamp, protected: bool, as_of: Timestamp) -> TierDecision {
    TierDecision {
        tier,
        expires_at,
        protected,
        expired: !protected && as_of >= expires_at,
    }
}

/// Whether `rp` goes to the vault tier: some vault rule selects it, i.e. no RP in `earlier`
/// that is complete in the vault tier and was taken before it falls in the same period.
/// `earlier` may hold any RPs of the instance (later ones and `rp` itself are ignored). A policy
/// without vault rules makes nothing eligible.
pub fn vault_eligible(
    policy: &Policy,
    rp: &RpSummary,
    earlier: &[RpSummary],
) -> Result<Option<CalendarPeriod>, PolicyError> {
    let zone = time_zone(policy)?;
    let before = |other: &&RpSummary| {
        other.vault && other.id != rp.id && (other.created_at, &other.id) < (rp.created_at, &rp.id)
    };
    let mut rules: Vec<_> = policy.retention.vault.iter().collect();
    rules.sort_by_key(|r| r.first_of);
    for rule in rules {
        let period = period_start(rp.created_at, &zone, rule.first_of);
        let taken = earlier
            .iter()
            .filter(before)
            .any(|other| period_start(other.created_at, &zone, rule.first_of) == period);
        if !taken {
            return Ok(Some(rule.first_of));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::{date, time};

    const ZONE: &str = "Europe/Amsterdam";

    fn policy(operational_days: u16, rules: &[(CalendarPeriod, u32)]) -> Policy {
        let start = time(2, 0, 0, 0);
        stowage_schemas::samples::policy_every("p", 4, start, ZONE, operational_days, rules)
    }

    fn local(y: i16, m: i8, d: i8, h: i8) -> Timestamp {
        date(y, m, d)
            .at(h, 0, 0, 0)
            .in_tz(ZONE)
            .expect("valid local time")
            .timestamp()
    }

    /// RPs every 4 hours (02:00, 06:00, … local) from `from` for `days` days, in every tier.
    fn four_hourly(from: Date, days: i64) -> Vec<RpSummary> {
        let mut out = Vec::new();
        for day in 0..days {
            let d = from.checked_add(day.days()).unwrap();
            for h in [2, 6, 10, 14, 18, 22] {
                let at = d.at(h, 0, 0, 0).in_tz(ZONE).unwrap().timestamp();
                out.push(RpSummary {
                    id: format!("rp-{d}-{h:02}"),
                    created_at: at,
                    operational: true,
                    vault: true,
                    secondary: true,
                });
            }
        }
        out
    }

    fn same_wall_time_after(zoned: &Zoned, days: u32) -> Timestamp {
        zoned
            .date()
            .checked_add(i64::from(days).days())
            .unwrap()
            .to_datetime(zoned.time())
            .in_tz(ZONE)
            .unwrap()
            .timestamp()
    }

    #[test]
    fn weeks_start_on_sunday_months_on_day_one_years_on_january_first() {
        let zone = TimeZone::get(ZONE).unwrap();
        // 2026-03-04 is a Wednesday.
        let wednesday = local(2026, 3, 4, 12);
        // 00:30 local on Jan 1 is still Dec 31 in UTC: the zone decides.
        let new_year = local(2027, 1, 1, 0) + jiff::SignedDuration::from_mins(30);
        let cases = [
            (wednesday, &zone, CalendarPeriod::Day, date(2026, 3, 4)),
            (wednesday, &zone, CalendarPeriod::Week, date(2026, 3, 1)),
            (wednesday, &zone, CalendarPeriod::Month, date(2026, 3, 1)),
            (wednesday, &zone, CalendarPeriod::Year, date(2026, 1, 1)),
            // A Sunday is its own week's start; the Saturday before belongs to the previous week.
            (
                local(2026, 3, 8, 2),
                &zone,
                CalendarPeriod::Week,
                date(2026, 3, 8),
            ),
            (
                local(2026, 3, 7, 23),
                &zone,
                CalendarPeriod::Week,
                date(2026, 3, 1),
            ),
            (new_year, &zone, CalendarPeriod::Year, date(2027, 1, 1)),
            (
                new_year,
                &TimeZone::UTC,
                CalendarPeriod::Year,
                date(2026, 1, 1),
            ),
        ];
        for (at, zone, period, start) in cases {
            assert_eq!(
                period_start(at, zone, period),
                start,
                "{period:?} of {at} in {zone:?}"
            );
        }
    }

    #[test]
    fn thirteen_months_of_four_hourly_backups_across_dst() {
        let rules = [
            (CalendarPeriod::Day, 7),
            (CalendarPeriod::Week, 35),
            (CalendarPeriod::Month, 365),
            (CalendarPeriod::Year, 3650),
        ];
        let policy = policy(5, &rules);
        let start = date(2025, 12, 20);
        let rps = four_hourly(start, 400);
        let as_of = local(2027, 1, 23, 12);
        let decisions = evaluate(&policy, &rps, as_of).unwrap();
        assert_eq!(decisions.len(), rps.len());

        let mut previous: Option<Zoned> = None;
        for d in &decisions {
            let zoned = d.created_at.to_zoned(TimeZone::get(ZONE).unwrap());
            // Independent of period_start: compare with the previous RP's local calendar.
            let (first_of_day, first_of_week, first_of_month, first_of_year) = match &previous {
                None => (true, true, true, true),
                Some(p) => {
                    let new_day = p.date() != zoned.date();
                    let days_apart = (zoned.date() - p.date()).get_days();
                    let new_week = new_day
                        && (zoned.weekday() == jiff::civil::Weekday::Sunday
                            || days_apart >= 7
                            || zoned.weekday().to_sunday_zero_offset()
                                < p.weekday().to_sunday_zero_offset());
                    let new_month = p.month() != zoned.month() || p.year() != zoned.year();
                    (new_day, new_week, new_month, p.year() != zoned.year())
                }
            };
            previous = Some(zoned.clone());
            let mut expected = Vec::new();
            if first_of_day {
                expected.push(CalendarPeriod::Day);
            }
            if first_of_week {
                expected.push(CalendarPeriod::Week);
            }
            if first_of_month {
                expected.push(CalendarPeriod::Month);
            }
            if first_of_year {
                expected.push(CalendarPeriod::Year);
            }
            assert_eq!(d.selected_by, expected, "{} at {zoned}", d.id);

            let keep = rules
                .iter()
                .filter(|(p, _)| expected.contains(p))
                .map(|(_, k)| *k)
                .max();
            let vault = d.tier(Tier::Vault).unwrap();
            match keep {
                Some(days) => {
                    // Calendar days in the zone: the same local wall time, whatever DST did
                    // (a wall time the spring-forward gap skips moves an hour later).
                    assert_eq!(
                        vault.expires_at,
                        same_wall_time_after(&zoned, days),
                        "{}",
                        d.id
                    );
                }
                None => assert_eq!(vault.expires_at, d.created_at),
            }
            assert_eq!(vault.expired, !vault.protected && as_of >= vault.expires_at);
            let operational = d.tier(Tier::Operational).unwrap();
            assert_eq!(
                operational.expires_at,
                same_wall_time_after(&zoned, 5),
                "operational days are calendar days across DST ({})",
                d.id
            );
            assert_eq!(
                d.tier(Tier::Secondary).unwrap().expires_at,
                vault.expires_at
            );
        }

        // What survives at as_of: the last 5 days operationally (plus the newest), in the vault
        // the last 7 daily, 5 weekly, 12 monthly firsts and every yearly first.
        let latest = decisions.last().unwrap();
        for tier in [Tier::Operational, Tier::Vault, Tier::Secondary] {
            let t = latest.tier(tier).unwrap();
            assert!(t.protected && !t.expired, "{tier:?}");
        }
        let kept = |tier| {
            decisions
                .iter()
                .filter(|d| d.tier(tier).is_some_and(|t| !t.expired))
                .count()
        };
        // Taken after 2027-01-18 12:00: three that afternoon, six a day on the 19th to the 23rd
        // (the series runs to 22:00 on the 23rd, past as_of).
        assert_eq!(kept(Tier::Operational), 3 + 5 * 6);
        let kept_vault: Vec<_> = decisions
            .iter()
            .filter(|d| !d.is_expired(Tier::Vault))
            .map(|d| d.id.as_str())
            .collect();
        // Dailies 2027-01-17..=23 (7); Sundays within 35 days not already daily: 12-20, 12-27,
        // 01-03, 01-10 (4); firsts of month within 365 days: 2026-02-01..=12-01 (11); yearly
        // firsts: the series start 2025-12-20, 2026-01-01, 2027-01-01 (3); and the three RPs
        // taken after as_of (no rule selects them, but their "expiry" is still ahead), the
        // last of which is the newest.
        assert!(kept_vault.contains(&"rp-2027-01-17-02"));
        assert!(kept_vault.contains(&"rp-2026-12-20-02"));
        assert!(!kept_vault.contains(&"rp-2026-12-13-02"));
        assert!(kept_vault.contains(&"rp-2026-02-01-02"));
        assert!(!kept_vault.contains(&"rp-2026-01-18-02")); // a Sunday long gone
        assert!(kept_vault.contains(&"rp-2025-12-20-02"));
        assert!(kept_vault.contains(&"rp-2026-01-01-02"));
        assert!(kept_vault.contains(&latest.id.as_str()));
        assert_eq!(kept_vault.len(), 7 + 4 + 11 + 3 + 3, "{kept_vault:?}");
    }

    #[test]
    fn daily_backups_over_a_year_keep_the_right_firsts_as_time_passes() {
        let policy = policy(
            30,
            &[(CalendarPeriod::Month, 90), (CalendarPeriod::Week, 14)],
        );
        let mut rps = Vec::new();
        let start = date(2026, 1, 1);
        for day in 0..400 {
            let d = start.checked_add((day as i64).days()).unwrap();
            rps.push(RpSummary {
                id: format!("rp-{d}"),
                created_at: d.at(23, 30, 0, 0).in_tz(ZONE).unwrap().timestamp(),
                operational: true,
                vault: true,
                secondary: false,
            });
        }
        // Simulate a retention run every 10 days: each run sees what the previous left.
        let mut alive = rps.clone();
        let mut as_of = local(2026, 1, 1, 0);
        for _ in 0..42 {
            as_of = as_of
                .to_zoned(TimeZone::get(ZONE).unwrap())
                .checked_add(10.days())
                .unwrap()
                .timestamp();
            let visible: Vec<RpSummary> = alive
                .iter()
                .filter(|r| r.created_at <= as_of)
                .cloned()
                .collect();
            let decisions = evaluate(&policy, &visible, as_of).unwrap();
            for d in &decisions {
                let rp = alive.iter_mut().find(|r| r.id == d.id).unwrap();
                if d.is_expired(Tier::Operational) {
                    rp.operational = false;
                }
                if d.is_expired(Tier::Vault) {
                    rp.vault = false;
                }
            }
            alive.retain(|r| r.operational || r.vault || r.created_at > as_of);
            let newest = visible.iter().map(|r| r.created_at).max().unwrap();
            assert!(
                alive
                    .iter()
                    .any(|r| r.created_at == newest && r.operational && r.vault),
                "the newest RP survives every run"
            );
            for r in alive.iter().filter(|r| r.vault && r.created_at <= as_of) {
                let zoned = r.created_at.to_zoned(TimeZone::get(ZONE).unwrap());
                let is_first = zoned.day() == 1 || zoned.weekday() == jiff::civil::Weekday::Sunday;
                assert!(
                    is_first || r.created_at == newest || r.id == "rp-2026-01-01",
                    "{} is in the vault but no rule selects it",
                    r.id
                );
            }
        }
        // After 420 days: months within 90 days, Sundays within 14, and the newest.
        let vaulted: Vec<_> = alive
            .iter()
            .filter(|r| r.vault && r.created_at <= as_of)
            .map(|r| r.id.clone())
            .collect();
        assert!(vaulted.len() <= 3 + 2 + 1 + 1, "{vaulted:?}");
        assert!(vaulted.len() > 3, "{vaulted:?}");
    }

    #[test]
    fn the_newest_successful_rp_is_never_expired_even_when_no_rule_selects_it() {
        let policy = policy(1, &[(CalendarPeriod::Day, 1)]);
        let rps = vec![
            RpSummary {
                id: "a".into(),
                created_at: local(2026, 6, 1, 2),
                operational: true,
                vault: true,
                secondary: false,
            },
            RpSummary {
                id: "b".into(),
                created_at: local(2026, 6, 1, 6),
                operational: true,
                vault: true,
                secondary: false,
            },
        ];
        let decisions = evaluate(&policy, &rps, local(2027, 1, 1, 0)).unwrap();
        assert!(decisions[0].is_expired(Tier::Operational));
        assert!(decisions[0].is_expired(Tier::Vault));
        assert!(!decisions[1].is_expired(Tier::Operational));
        assert!(!decisions[1].is_expired(Tier::Vault));
        assert!(decisions[1].tier(Tier::Vault).unwrap().protected);
        assert!(decisions[1].selected_by.is_empty());
        // "b" is not in the secondary tier: no decision for it there.
        assert!(decisions[1].tier(Tier::Secondary).is_none());
    }

    #[test]
    fn eligibility_looks_only_at_earlier_rps_complete_in_the_vault() {
        let policy = policy(7, &[(CalendarPeriod::Day, 7), (CalendarPeriod::Month, 30)]);
        let rp = |id: &str, at, vault| RpSummary {
            id: id.into(),
            created_at: at,
            operational: true,
            vault,
            secondary: false,
        };
        let first = rp("a", local(2026, 3, 29, 2), true);
        let second = rp("b", local(2026, 3, 29, 6), false);
        assert_eq!(
            vault_eligible(&policy, &first, &[]).unwrap(),
            Some(CalendarPeriod::Day)
        );
        assert_eq!(
            vault_eligible(&policy, &second, std::slice::from_ref(&first)).unwrap(),
            None
        );
        // The first of the day never reached the vault: the second is the first successful.
        let failed = rp("a", first.created_at, false);
        assert_eq!(
            vault_eligible(&policy, &second, &[failed]).unwrap(),
            Some(CalendarPeriod::Day)
        );
        // A later RP in the vault does not take the period from an earlier one.
        let later = rp("c", local(2026, 3, 29, 10), true);
        assert_eq!(
            vault_eligible(&policy, &second, &[later]).unwrap(),
            Some(CalendarPeriod::Day)
        );
        // No rules, nothing eligible; an unknown zone is named.
        let none = self::policy(7, &[]);
        assert_eq!(vault_eligible(&none, &first, &[]).unwrap(), None);
        let mut bad = policy.clone();
        bad.schedule.time_zone = "Mars/Olympus".into();
        let err = vault_eligible(&bad, &first, &[]).unwrap_err().to_string();
        assert!(
            err.contains("Mars/Olympus") && err.contains("IANA"),
            "{err}"
        );
    }
}
