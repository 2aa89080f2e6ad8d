//! Recovering jobs after a restart of a process whose queues died with it (`stowage serve` on
//! the in-process broker).
//!
//! The job records are the durable state: every job that is not final is resubmitted from its
//! record, at the first stage run that is queued or running, with the message that starts that
//! stage (see ARCHITECTURE.md, "stowage serve and the HTTP API"):
//!
//! | stage | message |
//! |---|---|
//! | snapshot | `job.snapshot` (scheduled or on-demand trigger, as the scheduler republishes it) |
//! | vault-transfer | `rp.created` for a backup's pipeline (the policy decides again), `job.vault-transfer` for a job submitted to that stage |
//! | geo-replication | `job.geo-replication` |
//! | retention | `job.retention` |
//! | restore-hydration, restore | the request saved at submission ([`save_request`]), while the first stage has not finished |
//!
//! A stage run still marked under way (`handling`) is resubmitted with that handling's message
//! id and attempt and the [`RECOVERED_HEADER`](stowage_runtime::client::RECOVERED_HEADER), so the
//! worker counts the interrupted handling as a death, as it would a RabbitMQ redelivery: a job
//! that kills the process every time ends as poison instead of a crash loop. Everything the
//! stages do is idempotent under redelivery, so a resubmission duplicates nothing.

use futures::StreamExt as _;
use jiff::Timestamp;
use stowage_runtime::client::resubmit;
use stowage_runtime::{Broker, Names};
use stowage_schemas::domain::{JobRecord, JobStatus};
use stowage_schemas::events::RpCreated;
use stowage_schemas::jobs::{GeoReplicationJob, RetentionJob, VaultTransferJob};
use stowage_schemas::{Envelope, Message, MessageId, Stage};
use stowage_vault::catalog::jobs::{list_jobs, update_job};
use stowage_vault::catalog::{self, settings};
use stowage_vault::layout;
use stowage_vault::store::BlobStore;

use crate::scheduler::{job_message_id, republished_message};

/// What one recovery did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Jobs resubmitted, as `<job-id> (<stage>)`.
    pub resubmitted: Vec<String>,
    /// Jobs that could not be resubmitted and were marked failed, with the reason.
    pub failed: Vec<String>,
    /// Problems that left a job as it was (it stays unfinished), one line each.
    pub errors: Vec<String>,
}

/// Keeps the message that starts job `envelope.job_id` (a restore's first job), so that
/// [`recover`] can resubmit it after a restart. Call it before the first publish.
pub async fn save_request(store: &BlobStore, envelope: &Envelope) -> Result<(), RecoveryError> {
    let key = layout::job_request(&envelope.job_id)?;
    let bytes = serde_json::to_vec(envelope).map_err(|e| RecoveryError::Encode(e.to_string()))?;
    store.put_create_only(&key, bytes).await?;
    Ok(())
}

async fn saved_request(store: &BlobStore, job_id: &str) -> Result<Option<Envelope>, RecoveryError> {
    let key = layout::job_request(job_id)?;
    match store.get(&key).await {
        Ok(object) => Ok(Some(
            serde_json::from_slice(&object.bytes)
                .map_err(|e| RecoveryError::Encode(format!("{key}: {e}")))?,
        )),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Why a recovery step failed.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The vault could not be read or written.
    #[error(transparent)]
    Vault(#[from] stowage_vault::Error),
    /// A key could not be made (an id that is not one).
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
    /// The catalog could not be read.
    #[error(transparent)]
    Settings(#[from] settings::SettingsError),
    /// The broker refused the message.
    #[error(transparent)]
    Broker(#[from] stowage_runtime::BrokerError),
    /// A saved request does not decode.
    #[error("a saved job request does not decode: {0}")]
    Encode(String),
}

/// Resubmits every unfinished job of the vault in `store` (see the module doc). Jobs whose
/// cancellation was requested are resubmitted too: the worker then records them cancelled.
pub async fn recover(store: &BlobStore, broker: &dyn Broker, names: &Names) -> RecoveryReport {
    let mut report = RecoveryReport::default();
    let mut listing = list_jobs(store);
    while let Some(record) = listing.next().await {
        let record = match record {
            Ok(record) => record,
            Err(e) if e.is_not_found() => continue,
            Err(e) => {
                report.errors.push(format!("cannot list job records: {e}"));
                break;
            }
        };
        if record.status().is_final() {
            continue;
        }
        match recover_one(store, broker, names, &record).await {
            Ok(Some(stage)) => report.resubmitted.push(format!("{} ({stage})", record.id)),
            Ok(None) => {}
            Err(Failure::Unrecoverable(reason)) => {
                let now = Timestamp::now();
                let marked = update_job(
                    store,
                    &record.id,
                    || record.clone(),
                    |r| {
                        r.updated_at = now;
                        if let Some(run) = r.stages.iter_mut().find(|s| !s.status.is_final()) {
                            run.status = JobStatus::Failed;
                            run.finished_at = Some(now);
                            run.handling = None;
                            run.error = Some(reason.clone());
                        }
                    },
                )
                .await;
                match marked {
                    Ok(_) => report.failed.push(format!("{}: {reason}", record.id)),
                    Err(e) => report.errors.push(format!(
                        "job {}: {reason}; and cannot mark it failed: {e}",
                        record.id
                    )),
                }
            }
            Err(Failure::Retry(e)) => report
                .errors
                .push(format!("cannot resubmit job {}: {e}", record.id)),
        }
    }
    report
}

/// Why a job was not resubmitted.
enum Failure {
    /// It never can be: it is marked failed with this reason.
    Unrecoverable(String),
    /// Not now (the vault or the broker failed); it stays as it is.
    Retry(RecoveryError),
}

impl From<RecoveryError> for Failure {
    fn from(e: RecoveryError) -> Self {
        Failure::Retry(e)
    }
}
impl From<stowage_vault::Error> for Failure {
    fn from(e: stowage_vault::Error) -> Self {
        Failure::Retry(e.into())
    }
}
impl From<settings::SettingsError> for Failure {
    fn from(e: settings::SettingsError) -> Self {
        Failure::Retry(e.into())
    }
}
impl From<stowage_runtime::BrokerError> for Failure {
    fn from(e: stowage_runtime::BrokerError) -> Self {
        Failure::Retry(e.into())
    }
}

async fn recover_one(
    store: &BlobStore,
    broker: &dyn Broker,
    names: &Names,
    record: &JobRecord,
) -> Result<Option<Stage>, Failure> {
    let Some(run) = record.stages.iter().find(|s| !s.status.is_final()) else {
        return Ok(None);
    };
    let stage = run.stage;
    let instance = record.instance.clone().unwrap_or_default();
    let rp = record.recovery_point_id.clone().unwrap_or_default();
    let mut cluster = None;
    let message = match stage {
        Stage::Snapshot => {
            let Some(message) = republished_message(record) else {
                return Err(Failure::Unrecoverable(
                    "interrupted by a restart; its record does not say which instance and \
                     recovery point it was for, so it cannot be resubmitted: take a new backup"
                        .into(),
                ));
            };
            cluster = Some(settings::read_instance(store, &instance).await?.cluster);
            message
        }
        Stage::VaultTransfer if record.kind == Stage::Snapshot => {
            let manifest = catalog::read_recovery_point(store, &instance, &rp).await?;
            Message::RpCreated(RpCreated {
                instance: instance.clone(),
                recovery_point_id: rp.clone(),
                created_at: manifest.created_at,
                resource_count: 0,
                volume_count: u32::try_from(manifest.volumes.len()).unwrap_or(u32::MAX),
                volume_bytes: manifest.volumes.iter().map(|v| v.size_bytes).sum(),
                warnings: Vec::new(),
            })
        }
        Stage::VaultTransfer => Message::VaultTransfer(VaultTransferJob {
            instance: instance.clone(),
            recovery_point_id: rp.clone(),
        }),
        Stage::GeoReplication => Message::GeoReplication(GeoReplicationJob {
            instance: instance.clone(),
            recovery_point_id: rp.clone(),
        }),
        Stage::Retention => Message::Retention(RetentionJob {
            instance: instance.clone(),
            as_of: None,
        }),
        Stage::RestoreHydration | Stage::Restore => {
            // Only the restore's first stage can be rebuilt: the restore after a hydration
            // needs the staging its `restore.hydrated` event named, which no record holds.
            if stage != record.kind {
                return Err(Failure::Unrecoverable(format!(
                    "interrupted by a restart after hydration and before the {stage} stage \
                     finished; its staging is kept under staging/{} (`stowage restore cleanup` \
                     removes it): create the restore again",
                    record.id
                )));
            }
            match saved_request(store, &record.id).await? {
                Some(envelope) => {
                    let mut envelope = envelope;
                    envelope.attempt = 0;
                    if let Some(h) = &run.handling {
                        envelope.message_id = h.message_id;
                        envelope.attempt = h.attempt;
                    }
                    resubmit(broker, names, &envelope).await?;
                    return Ok(Some(stage));
                }
                None => {
                    return Err(Failure::Unrecoverable(
                        "interrupted by a restart; its request was not saved (it was not \
                         submitted through stowage serve), so it cannot be resubmitted: create \
                         the restore again"
                            .into(),
                    ));
                }
            }
        }
    };
    let mut envelope = Envelope::new(record.id.clone(), message);
    if let Some(cluster) = cluster {
        envelope = envelope.on_cluster(cluster);
    }
    // The interrupted handling's own id and attempt: the worker sees a redelivery of it.
    match &run.handling {
        Some(h) => {
            envelope.message_id = h.message_id;
            envelope.attempt = h.attempt;
        }
        None => envelope.message_id = recovered_message_id(&record.id, stage),
    }
    resubmit(broker, names, &envelope).await?;
    Ok(Some(stage))
}

/// The message id of a resubmitted stage that was queued: the snapshot's is the one every
/// publish of the job uses; a later stage's is derived from the job id and stage, so a second
/// recovery resubmits the same id.
fn recovered_message_id(job_id: &str, stage: Stage) -> MessageId {
    match stage {
        Stage::Snapshot => job_message_id(job_id),
        stage => job_message_id(&format!("{job_id}#{stage}")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use stowage_runtime::broker::HeaderValue;
    use stowage_runtime::client::RECOVERED_HEADER;
    use stowage_runtime::{InProcessBroker, RetryPolicy, Topology};
    use stowage_schemas::domain::{Handling, StageRun, Tier};
    use stowage_schemas::jobs::{RestoreHydrationJob, RestoreOptions};
    use stowage_vault::catalog::jobs::{create_job, read_job};

    use super::*;

    fn restore_request(id: &str) -> Envelope {
        Envelope::new(
            id,
            Message::RestoreHydration(RestoreHydrationJob {
                restore_id: id.into(),
                instance: "shop".into(),
                recovery_point_id: "rp-1".into(),
                tier: Tier::Vault,
                staging_location: None,
                options: RestoreOptions {
                    target_cluster: Some("c1".into()),
                    ..RestoreOptions::default()
                },
            }),
        )
    }

    fn restore_record(id: &str, stages: Vec<StageRun>) -> JobRecord {
        let mut r = JobRecord::new(id, Stage::RestoreHydration, Timestamp::now());
        r.instance = Some("shop".into());
        r.recovery_point_id = Some("rp-1".into());
        r.restore_id = Some(id.into());
        r.stages = stages;
        r
    }

    /// A restore whose hydration was under way is resubmitted from its saved request, as a
    /// redelivery of the interrupted handling; one interrupted after hydration is marked
    /// failed with the reason; a finished job is left alone.
    #[tokio::test]
    async fn restores_are_resubmitted_from_their_saved_request_or_failed_with_the_reason() {
        let store = BlobStore::in_memory();
        let broker = Arc::new(InProcessBroker::new());
        let names = Names::new("recovery-test");
        broker
            .declare(&Topology::new(names.clone(), &RetryPolicy::default()))
            .await
            .unwrap();

        // r1: hydration running when the process died.
        let request = restore_request("r1");
        save_request(&store, &request).await.unwrap();
        let mut running = StageRun::queued(Stage::RestoreHydration);
        running.status = JobStatus::Running;
        running.attempts = 1;
        running.handling = Some(Handling {
            id: "h1".into(),
            message_id: request.message_id,
            attempt: 0,
            started_at: Timestamp::now(),
            shutting_down: false,
        });
        create_job(&store, &restore_record("r1", vec![running]))
            .await
            .unwrap();
        // r2: hydrated, the restore stage still queued.
        save_request(&store, &restore_request("r2")).await.unwrap();
        let mut hydrated = StageRun::queued(Stage::RestoreHydration);
        hydrated.status = JobStatus::Succeeded;
        create_job(
            &store,
            &restore_record(
                "r2",
                vec![hydrated.clone(), StageRun::queued(Stage::Restore)],
            ),
        )
        .await
        .unwrap();
        // r3: finished.
        create_job(&store, &restore_record("r3", vec![hydrated]))
            .await
            .unwrap();

        let report = recover(&store, broker.as_ref(), &names).await;
        assert_eq!(
            report.resubmitted,
            vec!["r1 (restore-hydration)".to_owned()]
        );
        assert_eq!(report.failed.len(), 1, "{report:?}");
        assert!(report.failed[0].starts_with("r2: "), "{report:?}");
        assert!(report.errors.is_empty(), "{report:?}");

        let delivery = broker
            .get(&names.stage_queue(Stage::RestoreHydration))
            .await
            .unwrap()
            .expect("the hydration job is back in its queue");
        assert_eq!(
            delivery.properties.message_id.as_deref(),
            Some(request.message_id.to_string().as_str()),
            "the interrupted handling's own message id"
        );
        assert_eq!(
            delivery.properties.headers.get(RECOVERED_HEADER),
            Some(&HeaderValue::Bool(true))
        );
        assert!(
            broker
                .get(&names.stage_queue(Stage::RestoreHydration))
                .await
                .unwrap()
                .is_none(),
            "nothing else was resubmitted"
        );
        let (r2, _) = read_job(&store, "r2").await.unwrap();
        assert_eq!(r2.status(), JobStatus::Failed);
        let reason = r2.stage(Stage::Restore).unwrap().error.clone().unwrap();
        assert!(reason.contains("after hydration"), "{reason}");
        let (r3, _) = read_job(&store, "r3").await.unwrap();
        assert_eq!(r3.status(), JobStatus::Succeeded);
    }
}
