//! The envelope: the versioned header every message travels in.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use uuid::Uuid;

use crate::{Message, SCHEMA_VERSION};

/// One message on the wire: a versioned header around a typed [`Message`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope {
    /// Unique id of this message (a UUIDv7 from [`MessageId::new_v7`]); consumers deduplicate
    /// on it. A retry keeps the id and increments `attempt`.
    pub message_id: MessageId,
    /// The wire-contract version the message was written with; see `schemas/EVOLUTION.md`.
    pub schema_version: u16,
    /// The job this message belongs to: the job it requests, or the job that emitted the event.
    #[serde(deserialize_with = "crate::id::fields::string")]
    #[schemars(with = "crate::id::Id")]
    pub job_id: String,
    /// The recovery point the message is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "crate::id::fields::option")]
    #[schemars(with = "Option<crate::id::Id>")]
    pub recovery_point_id: Option<String>,
    /// The restore the message is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "crate::id::fields::option")]
    #[schemars(with = "Option<crate::id::Id>")]
    pub restore_id: Option<String>,
    /// The cluster whose workers take this message, for the cluster-side stages (snapshot,
    /// restore) and the events that trigger them: it routes the message to that cluster's
    /// queue (`<p>.<stage>@<cluster>`), so a cluster's snapshot and restore workers take only
    /// its jobs. A snapshot job names its instance's cluster; a restore job and a
    /// `restore.hydrated` event name the target cluster (their `options.target_cluster`, which
    /// [`Envelope::new`] copies here). None for vault-stage jobs and their events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "crate::id::fields::option")]
    #[schemars(with = "Option<crate::id::Id>")]
    pub cluster: Option<String>,
    /// Delivery attempt: 0 on the first delivery, incremented by the runtime on each retry.
    #[serde(default)]
    pub attempt: u32,
    /// When the message was first created (RFC 3339, UTC).
    #[serde(deserialize_with = "crate::timestamp::required")]
    pub created_at: Timestamp,
    /// W3C trace context, so that one trace follows a recovery point through every stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
    /// The job or event itself.
    pub message: Message,
}

impl Envelope {
    /// Wraps `message` for job `job_id`: a fresh UUIDv7 message id, the current
    /// [`SCHEMA_VERSION`], attempt 0, created now, no trace context, the recovery-point and
    /// restore ids taken from [`Message::subject`], and the cluster from
    /// [`Message::target_cluster`] (set it with [`Envelope::on_cluster`] for a snapshot job).
    pub fn new(job_id: impl Into<String>, message: Message) -> Self {
        let (recovery_point_id, restore_id) = message.subject();
        Self {
            message_id: MessageId::new_v7(),
            schema_version: SCHEMA_VERSION,
            job_id: job_id.into(),
            recovery_point_id: recovery_point_id.map(str::to_owned),
            restore_id: restore_id.map(str::to_owned),
            cluster: message.target_cluster().map(str::to_owned),
            attempt: 0,
            created_at: Timestamp::now(),
            trace: None,
            message,
        }
    }

    /// The same envelope for the workers of `cluster` (see [`Envelope::cluster`]).
    pub fn on_cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = Some(cluster.into());
        self
    }

    /// The message type, e.g. `job.snapshot` (see [`Message::kind`]).
    pub fn kind(&self) -> &'static str {
        self.message.kind()
    }
}

/// W3C trace context (<https://www.w3.org/TR/trace-context/>).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TraceContext {
    /// The `traceparent` header, e.g. `00-<trace-id>-<parent-id>-01`.
    pub traceparent: String,
    /// The `tracestate` header, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// The id of one message.
///
/// Always a hyphenated UUID string on the wire, in MessagePack as in JSON, so that any language
/// can produce it (uuid's own serde impl would write 16 raw bytes in MessagePack). Any form
/// [`Uuid::parse_str`] accepts is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub Uuid);

impl MessageId {
    /// A fresh, time-ordered UUIDv7.
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }
}

impl From<Uuid> for MessageId {
    fn from(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

impl From<MessageId> for Uuid {
    fn from(id: MessageId) -> Self {
        id.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl FromStr for MessageId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = Uuid::encode_buffer();
        serializer.serialize_str(self.0.hyphenated().encode_lower(&mut buf))
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl de::Visitor<'_> for Visitor {
            type Value = MessageId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a UUID string such as 01946a4c-8e00-7000-8000-000000000001")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<MessageId, E> {
                s.parse().map_err(|_| {
                    E::custom(format_args!(
                        "expected a UUID string such as 01946a4c-8e00-7000-8000-000000000001, got {}",
                        crate::id::quote(s)
                    ))
                })
            }
        }

        deserializer.deserialize_str(Visitor)
    }
}

string_schema!(MessageId {
    "type": "string",
    "format": "uuid"
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_is_a_hyphenated_string_in_both_formats() {
        let id = MessageId(Uuid::from_u128(0x01946a4c_8e00_7000_8000_000000000001));
        let text = "01946a4c-8e00-7000-8000-000000000001";
        assert_eq!(id.to_string(), text);
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{text}\""));
        let packed = rmp_serde::to_vec_named(&id).unwrap();
        assert_eq!(packed, rmp_serde::to_vec(text).unwrap());
        assert_eq!(rmp_serde::from_slice::<MessageId>(&packed).unwrap(), id);
        assert_eq!(
            serde_json::from_str::<MessageId>(&format!("\"{text}\"")).unwrap(),
            id
        );
    }

    #[test]
    fn new_envelope_takes_ids_from_the_subject() {
        let message = Message::VaultTransfer(crate::jobs::VaultTransferJob {
            instance: "shop".into(),
            recovery_point_id: "rp-1".into(),
        });
        let env = Envelope::new("job-1", message);
        assert_eq!(env.schema_version, SCHEMA_VERSION);
        assert_eq!(env.attempt, 0);
        assert_eq!(env.recovery_point_id.as_deref(), Some("rp-1"));
        assert_eq!(env.restore_id, None);
        assert_eq!(env.message_id.0.get_version_num(), 7);
        assert_eq!(env.kind(), "job.vault-transfer");
    }
}
