//! A stage's typed input: the runtime decodes the envelope and hands a stage only the message
//! kinds it takes, so no stage repeats an "is this message for me" preamble.
//!
//! A delivery of any other kind is refused by the runtime — dead-lettered at once, naming the
//! kind that came and the kinds the stage takes — before the stage is called.

use stowage_schemas::events::{RestoreHydrated, RpCreated, RpVaulted};
use stowage_schemas::jobs::{
    GeoReplicationJob, RestoreHydrationJob, RestoreJob, RetentionJob, SnapshotJob, VaultTransferJob,
};
use stowage_schemas::{Message, Stage};

use crate::handler::StageError;

/// What a stage takes, made from a message.
pub trait StageInput: Sized + Send + 'static {
    /// The message types it is made from (`job.snapshot`, `event.rp.created`…), named in the
    /// refusal of any other.
    fn takes() -> Vec<&'static str>;

    /// The stage whose job this input is (`None` for inputs that are not one stage's, such as
    /// [`Message`]): a handler taking it consumes that stage's queue.
    fn stage() -> Option<Stage> {
        None
    }

    /// The input `message` carries; `None` for a kind the stage does not take.
    fn from_message(message: &Message) -> Option<Self>;
}

/// Decodes `message` for a stage taking `I`, or the permanent refusal naming what it takes.
pub(crate) fn decode<I: StageInput>(stage: Stage, message: &Message) -> Result<I, StageError> {
    I::from_message(message).ok_or_else(|| {
        StageError::permanent(format!(
            "the {stage} stage does not take {} messages; it takes {} (publish one of those \
             with routing key {stage})",
            message.kind(),
            I::takes().join(" or ")
        ))
    })
}

/// Any message at all: for handlers that look at every kind themselves (test doubles,
/// benchmarks).
impl StageInput for Message {
    fn takes() -> Vec<&'static str> {
        vec!["any message"]
    }

    fn from_message(message: &Message) -> Option<Self> {
        Some(message.clone())
    }
}

/// A stage that takes its own job, or the upstream event that triggers it (vault-transfer on
/// `rp.created`, geo-replication on `rp.vaulted`, restore on `restore.hydrated`).
#[derive(Debug, Clone, PartialEq)]
pub enum JobOrEvent<J, E> {
    /// Submitted explicitly: an operator's or a scheduler's request.
    Job(J),
    /// Triggered by the upstream stage's event.
    Event(E),
}

impl<J: StageInput, E: StageInput> StageInput for JobOrEvent<J, E> {
    fn takes() -> Vec<&'static str> {
        let mut takes = J::takes();
        takes.extend(E::takes());
        takes
    }

    fn stage() -> Option<Stage> {
        J::stage()
    }

    fn from_message(message: &Message) -> Option<Self> {
        J::from_message(message)
            .map(Self::Job)
            .or_else(|| E::from_message(message).map(Self::Event))
    }
}

/// A stage input that is exactly one message type (of `$stage`'s job, or an event).
macro_rules! single_input {
    ($type:ty, $variant:ident, $kind:literal $(, $stage:ident)?) => {
        impl StageInput for $type {
            fn takes() -> Vec<&'static str> {
                vec![$kind]
            }

            $(
                fn stage() -> Option<Stage> {
                    Some(Stage::$stage)
                }
            )?

            fn from_message(message: &Message) -> Option<Self> {
                match message {
                    Message::$variant(inner) => Some(inner.clone()),
                    _ => None,
                }
            }
        }
    };
}

single_input!(SnapshotJob, Snapshot, "job.snapshot", Snapshot);
single_input!(
    VaultTransferJob,
    VaultTransfer,
    "job.vault-transfer",
    VaultTransfer
);
single_input!(
    GeoReplicationJob,
    GeoReplication,
    "job.geo-replication",
    GeoReplication
);
single_input!(
    RestoreHydrationJob,
    RestoreHydration,
    "job.restore-hydration",
    RestoreHydration
);
single_input!(RestoreJob, Restore, "job.restore", Restore);
single_input!(RetentionJob, Retention, "job.retention", Retention);
single_input!(RpCreated, RpCreated, "event.rp.created");
single_input!(RpVaulted, RpVaulted, "event.rp.vaulted");
single_input!(RestoreHydrated, RestoreHydrated, "event.restore.hydrated");

#[cfg(test)]
mod tests {
    use stowage_schemas::samples;

    use super::*;
    use crate::handler::ErrorKind;

    #[test]
    fn a_kind_the_stage_does_not_take_is_refused_by_name() {
        let snapshot = samples::samples()
            .into_iter()
            .map(|e| e.message)
            .find(|m| m.kind() == "job.snapshot")
            .expect("a sample snapshot job");
        let job: SnapshotJob = decode(Stage::Snapshot, &snapshot).unwrap();
        assert_eq!(SnapshotJob::stage(), Some(Stage::Snapshot));
        assert_eq!(
            <JobOrEvent<RestoreJob, RestoreHydrated>>::stage(),
            Some(Stage::Restore)
        );
        assert_eq!(RpCreated::stage(), None);
        assert_eq!(Message::Snapshot(job), snapshot);
        let err = decode::<RetentionJob>(Stage::Retention, &snapshot).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert_eq!(
            err.to_string(),
            "the retention stage does not take job.snapshot messages; it takes job.retention \
             (publish one of those with routing key retention)"
        );
        let err = decode::<JobOrEvent<RestoreJob, RestoreHydrated>>(Stage::Restore, &snapshot)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("it takes job.restore or event.restore.hydrated"),
            "{err}"
        );
    }
}
