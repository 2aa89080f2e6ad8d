//! Canonical sample envelopes, one per message type, with fixed ids and timestamps.
//!
//! They are the source of the golden fixtures in `schemas/fixtures/` and are public so that
//! other crates' tests can reuse realistic messages. [`policy`] and [`vault`] are sample
//! catalog documents for the same reason (they are not messages and have no fixture).

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::civil::Time;
use uuid::Uuid;

use crate::domain::{
    CalendarPeriod, DEFAULT_SOFT_DELETE_DAYS, Immutability, Policy, Redundancy, Retention,
    Schedule, Tier, Vault, VaultRule,
};
use crate::events::{
    DrillCompleted, JobFailed, JobProgress, RestoreCompleted, RestoreHydrated, RpCreated,
    RpReplicated, RpVaultSkipped, RpVaulted,
};
use crate::jobs::{
    ExistingPolicy, GeoReplicationJob, RestoreHydrationJob, RestoreJob, RestoreOptions,
    RetentionJob, SnapshotJob, StagedDisk, Staging, Trigger, VaultTransferJob,
};
use crate::{Envelope, Message, MessageId, SCHEMA_VERSION, Stage, TraceContext};

/// 2025-01-15T02:00:00Z: the scheduled slot the samples revolve around.
const T0: i64 = 1_736_906_400;

fn at(offset_seconds: i64) -> Timestamp {
    Timestamp::constant(T0 + offset_seconds, 0)
}

/// A locally redundant, unlocked vault named `name` stored at `location`, in westeurope.
pub fn vault(name: &str, location: &str) -> Vault {
    Vault {
        name: name.into(),
        region: "westeurope".into(),
        location: location.into(),
        redundancy: Redundancy::Local,
        key_id: "local".into(),
        immutability: Immutability::Disabled,
        minimum_retention_days: 0,
        soft_delete_days: DEFAULT_SOFT_DELETE_DAYS,
    }
}

/// A policy named `daily`: every 4 hours from 02:00 in Europe/Amsterdam, 7 days in the
/// operational tier, the first backup of each day kept 30 days and of each year 3650 days in
/// the vault tier.
pub fn policy() -> Policy {
    policy_every(
        "daily",
        4,
        Time::constant(2, 0, 0, 0),
        "Europe/Amsterdam",
        7,
        &[(CalendarPeriod::Day, 30), (CalendarPeriod::Year, 3650)],
    )
}

/// A policy named `name` backing up every `frequency_hours` from `start` in `time_zone`,
/// keeping recovery points `operational_days` in the operational tier and, in the vault tier,
/// the first of each period for the days each `(period, days)` rule gives.
pub fn policy_every(
    name: &str,
    frequency_hours: u8,
    start: Time,
    time_zone: &str,
    operational_days: u16,
    rules: &[(CalendarPeriod, u32)],
) -> Policy {
    let vault = rules
        .iter()
        .map(|&(first_of, keep_days)| VaultRule {
            first_of,
            keep_days,
        })
        .collect();
    Policy {
        name: name.into(),
        schedule: Schedule {
            frequency_hours,
            start,
            time_zone: time_zone.into(),
        },
        retention: Retention {
            operational_days,
            vault,
        },
    }
}

/// One canonical envelope per message type, in [`Message::KINDS`] order.
///
/// Message ids are fixed UUIDv7 values (`01946a4c-8e00-7000-8000-0000000000NN`, NN = position
/// + 1), `created_at` is a fixed instant, and every sample carries a trace context.
pub fn samples() -> Vec<Envelope> {
    let instance = "shop-prod";
    let rp = "rp-20250115T020000Z";
    let restore = "restore-7f3a";
    let options = RestoreOptions {
        target_cluster: Some("aks-dr-northeurope".into()),
        namespaces: vec!["shop".into()],
        namespace_mapping: BTreeMap::from([("shop".into(), "shop-restored".into())]),
        existing: ExistingPolicy::Patch,
        include_volumes: true,
        dry_run: false,
    };
    let staging = Staging {
        location: "rg-stowage-staging".into(),
        resources: format!("staging/{restore}/resources.json.zst"),
        disks: vec![StagedDisk {
            volume_id: "vol-5d1c".into(),
            disk_id: "disk-staging-5d1c".into(),
            size_bytes: 8 << 30,
        }],
    };

    let messages = [
        (
            format!("snapshot-{instance}-{rp}"),
            Message::Snapshot(SnapshotJob {
                instance: instance.into(),
                recovery_point_id: rp.into(),
                trigger: Trigger::Scheduled { slot: at(0) },
            }),
        ),
        (
            format!("vault-transfer-{instance}-{rp}"),
            Message::VaultTransfer(VaultTransferJob {
                instance: instance.into(),
                recovery_point_id: rp.into(),
            }),
        ),
        (
            format!("geo-replication-{instance}-{rp}"),
            Message::GeoReplication(GeoReplicationJob {
                instance: instance.into(),
                recovery_point_id: rp.into(),
            }),
        ),
        (
            format!("restore-hydration-{restore}"),
            Message::RestoreHydration(RestoreHydrationJob {
                restore_id: restore.into(),
                instance: instance.into(),
                recovery_point_id: rp.into(),
                tier: Tier::Vault,
                staging_location: Some("rg-stowage-staging".into()),
                options: options.clone(),
            }),
        ),
        (
            format!("restore-{restore}"),
            Message::Restore(RestoreJob {
                restore_id: restore.into(),
                instance: instance.into(),
                recovery_point_id: rp.into(),
                source_tier: Tier::Vault,
                staging: Some(staging.clone()),
                options: options.clone(),
            }),
        ),
        (
            format!("retention-{instance}-20250115T030000Z"),
            Message::Retention(RetentionJob {
                instance: instance.into(),
                as_of: Some(at(3600)),
            }),
        ),
        (
            format!("snapshot-{instance}-{rp}"),
            Message::RpCreated(RpCreated {
                instance: instance.into(),
                recovery_point_id: rp.into(),
                created_at: at(42),
                resource_count: 187,
                volume_count: 2,
                volume_bytes: 24 << 30,
                warnings: vec!["hook `flush-cache` in shop/web-0 exited with 1; continued".into()],
            }),
        ),
        (
            format!("vault-transfer-{instance}-{rp}"),
            Message::RpVaulted(RpVaulted {
                instance: instance.into(),
                recovery_point_id: rp.into(),
                bytes_read: 512 << 20,
                bytes_stored: 97 << 20,
                chunks_new: 211,
                chunks_reused: 3917,
                expires_at: Some(at(30 * 86_400)),
            }),
        ),
        (
            format!("geo-replication-{instance}-{rp}"),
            Message::RpReplicated(RpReplicated {
                instance: instance.into(),
                recovery_point_id: rp.into(),
                secondary_region: "northeurope".into(),
                objects_copied: 14,
                bytes_copied: 97 << 20,
            }),
        ),
        (
            format!("restore-hydration-{restore}"),
            Message::RestoreHydrated(RestoreHydrated {
                restore_id: restore.into(),
                instance: instance.into(),
                recovery_point_id: rp.into(),
                tier: Tier::Vault,
                staging,
                options,
            }),
        ),
        (
            format!("restore-{restore}"),
            Message::RestoreCompleted(RestoreCompleted {
                restore_id: restore.into(),
                instance: instance.into(),
                recovery_point_id: rp.into(),
                target_cluster: "aks-dr-northeurope".into(),
                dry_run: false,
                resources_created: 181,
                resources_patched: 4,
                resources_skipped: 2,
                volumes_restored: 2,
                warnings: Vec::new(),
            }),
        ),
        (
            format!("vault-transfer-{instance}-{rp}"),
            Message::JobProgress(JobProgress {
                job_id: format!("vault-transfer-{instance}-{rp}"),
                stage: Stage::VaultTransfer,
                progress: crate::domain::JobProgress {
                    bytes_done: 256 << 20,
                    bytes_total: Some(512 << 20),
                    items_done: 1,
                    items_total: Some(2),
                },
            }),
        ),
        (
            format!("geo-replication-{instance}-{rp}"),
            Message::JobFailed(JobFailed {
                job_id: format!("geo-replication-{instance}-{rp}"),
                stage: Stage::GeoReplication,
                reason: "vault `shop-vault` has local redundancy; geo-replication needs a geo \
                         vault: set redundancy to geo with a secondary location"
                    .into(),
                error_chain: vec![
                    "cannot replicate rp-20250115T020000Z".into(),
                    "vault `shop-vault` has no secondary location".into(),
                ],
                permanent: true,
                attempt: 0,
                will_retry: false,
            }),
        ),
        (
            format!("vault-transfer-{instance}-{rp}"),
            Message::RpVaultSkipped(RpVaultSkipped {
                instance: instance.into(),
                recovery_point_id: rp.into(),
                policy: Some("daily".into()),
                reason: "no vault rule of policy `daily` selects this recovery point: the \
                         vault tier already holds the first recovery point of its day; it \
                         stays in the operational tier only"
                    .into(),
            }),
        ),
        (
            format!("drill-{instance}-{rp}"),
            Message::DrillCompleted(DrillCompleted {
                drill_id: format!("drill-{instance}-{rp}"),
                instance: instance.into(),
                recovery_point_id: rp.into(),
                tier: Tier::Vault,
                target_cluster: "aks-prod".into(),
                succeeded: true,
                reason: None,
                rto_seconds: 184.5,
                objects_verified: 187,
                bytes_verified: 96 << 20,
                finished_at: at(20),
            }),
        ),
    ];

    messages
        .into_iter()
        .zip(1u128..)
        .map(|((job_id, message), n)| {
            let (recovery_point_id, restore_id) = message.subject();
            Envelope {
                message_id: MessageId(Uuid::from_u128(0x01946a4c_8e00_7000_8000_000000000000 + n)),
                schema_version: SCHEMA_VERSION,
                job_id,
                recovery_point_id: recovery_point_id.map(str::to_owned),
                restore_id: restore_id.map(str::to_owned),
                cluster: match &message {
                    Message::Snapshot(_) => Some("aks-prod".to_owned()),
                    other => other.target_cluster().map(str::to_owned),
                },
                attempt: 0,
                created_at: at(n as i64),
                trace: Some(TraceContext {
                    traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                    tracestate: None,
                }),
                message,
            }
        })
        .collect()
}
