//! The message union and its routing.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Stage, events, jobs};

/// Every job and every event, adjacently tagged on the wire:
/// `{"type": "job.snapshot", "payload": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "payload")]
pub enum Message {
    /// Take a snapshot of a backup instance.
    #[serde(rename = "job.snapshot")]
    Snapshot(jobs::SnapshotJob),
    /// Transfer a recovery point to the vault tier.
    #[serde(rename = "job.vault-transfer")]
    VaultTransfer(jobs::VaultTransferJob),
    /// Replicate a recovery point to the secondary region.
    #[serde(rename = "job.geo-replication")]
    GeoReplication(jobs::GeoReplicationJob),
    /// Hydrate a recovery point into a staging area for a restore.
    #[serde(rename = "job.restore-hydration")]
    RestoreHydration(jobs::RestoreHydrationJob),
    /// Restore a recovery point to a cluster.
    #[serde(rename = "job.restore")]
    Restore(jobs::RestoreJob),
    /// Apply retention to a backup instance.
    #[serde(rename = "job.retention")]
    Retention(jobs::RetentionJob),
    /// A recovery point was created.
    #[serde(rename = "event.rp.created")]
    RpCreated(events::RpCreated),
    /// A recovery point reached the vault tier.
    #[serde(rename = "event.rp.vaulted")]
    RpVaulted(events::RpVaulted),
    /// A recovery point reached the secondary region.
    #[serde(rename = "event.rp.replicated")]
    RpReplicated(events::RpReplicated),
    /// A restore's data was hydrated.
    #[serde(rename = "event.restore.hydrated")]
    RestoreHydrated(events::RestoreHydrated),
    /// A restore completed.
    #[serde(rename = "event.restore.completed")]
    RestoreCompleted(events::RestoreCompleted),
    /// A job made progress.
    #[serde(rename = "event.job.progress")]
    JobProgress(events::JobProgress),
    /// A job failed.
    #[serde(rename = "event.job.failed")]
    JobFailed(events::JobFailed),
    /// A recovery point's vault transfer was skipped by the policy.
    #[serde(rename = "event.rp.vault-skipped")]
    RpVaultSkipped(events::RpVaultSkipped),
    /// A restore drill finished.
    #[serde(rename = "event.drill.completed")]
    DrillCompleted(events::DrillCompleted),
}

/// Where a message is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// A job: the `stowage.jobs` direct exchange, routing key = the stage name.
    Job(Stage),
    /// An event: the `stowage.events` topic exchange, routing key = the event name
    /// (`rp.created`, `rp.vaulted`, `rp.vault-skipped`, `rp.replicated`, `restore.hydrated`,
    /// `restore.completed`, `job.progress`, `job.failed` or `drill.completed`).
    Event(&'static str),
}

impl Route {
    /// The AMQP routing key: the stage name for a job, the event name for an event.
    pub fn routing_key(self) -> &'static str {
        match self {
            Route::Job(stage) => stage.as_str(),
            Route::Event(name) => name,
        }
    }
}

impl Message {
    /// Every message type (the `type` tag), jobs first, in declaration order.
    pub const KINDS: &'static [&'static str] = &[
        "job.snapshot",
        "job.vault-transfer",
        "job.geo-replication",
        "job.restore-hydration",
        "job.restore",
        "job.retention",
        "event.rp.created",
        "event.rp.vaulted",
        "event.rp.replicated",
        "event.restore.hydrated",
        "event.restore.completed",
        "event.job.progress",
        "event.job.failed",
        "event.rp.vault-skipped",
        "event.drill.completed",
    ];

    /// The message type, the `type` tag on the wire, e.g. `job.snapshot`.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Snapshot(_) => "job.snapshot",
            Message::VaultTransfer(_) => "job.vault-transfer",
            Message::GeoReplication(_) => "job.geo-replication",
            Message::RestoreHydration(_) => "job.restore-hydration",
            Message::Restore(_) => "job.restore",
            Message::Retention(_) => "job.retention",
            Message::RpCreated(_) => "event.rp.created",
            Message::RpVaulted(_) => "event.rp.vaulted",
            Message::RpReplicated(_) => "event.rp.replicated",
            Message::RestoreHydrated(_) => "event.restore.hydrated",
            Message::RestoreCompleted(_) => "event.restore.completed",
            Message::RpVaultSkipped(_) => "event.rp.vault-skipped",
            Message::JobProgress(_) => "event.job.progress",
            Message::JobFailed(_) => "event.job.failed",
            Message::DrillCompleted(_) => "event.drill.completed",
        }
    }

    /// Where the message is published.
    pub fn route(&self) -> Route {
        match self {
            Message::Snapshot(_) => Route::Job(Stage::Snapshot),
            Message::VaultTransfer(_) => Route::Job(Stage::VaultTransfer),
            Message::GeoReplication(_) => Route::Job(Stage::GeoReplication),
            Message::RestoreHydration(_) => Route::Job(Stage::RestoreHydration),
            Message::Restore(_) => Route::Job(Stage::Restore),
            Message::Retention(_) => Route::Job(Stage::Retention),
            Message::RpCreated(_) => Route::Event("rp.created"),
            Message::RpVaulted(_) => Route::Event("rp.vaulted"),
            Message::RpReplicated(_) => Route::Event("rp.replicated"),
            Message::RestoreHydrated(_) => Route::Event("restore.hydrated"),
            Message::RestoreCompleted(_) => Route::Event("restore.completed"),
            Message::RpVaultSkipped(_) => Route::Event("rp.vault-skipped"),
            Message::JobProgress(_) => Route::Event("job.progress"),
            Message::JobFailed(_) => Route::Event("job.failed"),
            Message::DrillCompleted(_) => Route::Event("drill.completed"),
        }
    }

    /// The recovery point and the restore the message is about: `(recovery_point_id,
    /// restore_id)`. Progress and failure events, and retention jobs, are about neither.
    pub fn subject(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Message::Snapshot(job) => (Some(&job.recovery_point_id), None),
            Message::VaultTransfer(job) => (Some(&job.recovery_point_id), None),
            Message::GeoReplication(job) => (Some(&job.recovery_point_id), None),
            Message::RestoreHydration(job) => (Some(&job.recovery_point_id), Some(&job.restore_id)),
            Message::Restore(job) => (Some(&job.recovery_point_id), Some(&job.restore_id)),
            Message::Retention(_) => (None, None),
            Message::RpCreated(ev) => (Some(&ev.recovery_point_id), None),
            Message::RpVaulted(ev) => (Some(&ev.recovery_point_id), None),
            Message::RpReplicated(ev) => (Some(&ev.recovery_point_id), None),
            Message::RestoreHydrated(ev) => (Some(&ev.recovery_point_id), Some(&ev.restore_id)),
            Message::RestoreCompleted(ev) => (Some(&ev.recovery_point_id), Some(&ev.restore_id)),
            Message::RpVaultSkipped(ev) => (Some(&ev.recovery_point_id), None),
            Message::JobProgress(_) | Message::JobFailed(_) => (None, None),
            Message::DrillCompleted(ev) => (Some(&ev.recovery_point_id), None),
        }
    }

    /// The cluster a restore job or a `restore.hydrated` event targets, when its options name
    /// one: the cluster whose restore workers must take it (see `Envelope::cluster`).
    pub fn target_cluster(&self) -> Option<&str> {
        match self {
            Message::Restore(job) => job.options.target_cluster.as_deref(),
            Message::RestoreHydrated(ev) => ev.options.target_cluster.as_deref(),
            _ => None,
        }
    }

    /// Whether the message is a job (published to `stowage.jobs`) rather than an event.
    pub fn is_job(&self) -> bool {
        matches!(self.route(), Route::Job(_))
    }
}

#[cfg(test)]
mod tests {
    use crate::samples::samples;

    use super::*;

    #[test]
    fn kinds_match_the_serde_tags_and_routes() {
        let samples = samples();
        let kinds: Vec<_> = samples.iter().map(|env| env.kind()).collect();
        assert_eq!(kinds, Message::KINDS);
        for env in &samples {
            let json = serde_json::to_value(&env.message).unwrap();
            assert_eq!(json["type"], env.kind());
            let expected = match env.message.route() {
                Route::Job(stage) => format!("job.{stage}"),
                Route::Event(name) => format!("event.{name}"),
            };
            assert_eq!(expected, env.kind());
        }
    }
}
