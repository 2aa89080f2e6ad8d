//! Envelopes to and from broker messages: where each message goes, and what travels in its
//! AMQP properties beside the body (so operators and other tools can route, trace and filter
//! without decoding MessagePack).

use stowage_schemas::{ContentType, Envelope, EnvelopeIds, MessageId, Route, decode, encode_as};

use crate::broker::{Delivery, Headers, Outgoing, Properties};
use crate::topology::Names;

/// Header carrying the job id.
pub const JOB_ID: &str = "x-stowage-job-id";
/// Header carrying the envelope's schema version.
pub const SCHEMA_VERSION: &str = "x-stowage-schema-version";
/// Header carrying when the message was published, or, for a retry, when its delay ends
/// (Unix milliseconds); workers derive queue wait and the age of the oldest message from it.
pub const PUBLISHED_AT: &str = "x-stowage-published-at";
/// W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace state header.
pub const TRACESTATE: &str = "tracestate";

/// The exchange, routing key and mandatory flag of a message, from its kind: jobs go to
/// `<p>.jobs` keyed by stage (`<stage>@<cluster>` for a cluster-side stage) and must reach a
/// queue; events go to `<p>.events` keyed by event name (followed by the cluster's words when
/// the envelope names one) and may have no listener.
pub fn route(names: &Names, envelope: &Envelope) -> (String, String, bool) {
    let cluster = envelope.cluster.as_deref();
    match envelope.message.route() {
        Route::Job(stage) => (
            names.jobs_exchange(),
            Names::job_routing_key(stage, cluster),
            true,
        ),
        Route::Event(key) => (
            names.events_exchange(),
            Names::event_routing_key(key, cluster),
            false,
        ),
    }
}

/// The cluster whose queue `envelope` must be declared in before it is published, or why it
/// cannot be published: a cluster-side job that names no cluster would reach no queue.
pub fn cluster_of(envelope: &Envelope) -> Result<Option<&str>, crate::BrokerError> {
    match (envelope.message.route(), envelope.cluster.as_deref()) {
        (Route::Job(stage), None) if stage.is_cluster_side() => {
            Err(crate::BrokerError::NoCluster {
                kind: envelope.kind(),
                job_id: envelope.job_id.clone(),
            })
        }
        (_, cluster) => Ok(cluster),
    }
}

/// Properties for an envelope encoded as `content_type`.
pub fn properties(envelope: &Envelope, content_type: ContentType) -> Properties {
    let mut headers = Headers::new();
    headers.insert(JOB_ID.into(), crate::limits::header_str(&envelope.job_id));
    headers.insert(
        SCHEMA_VERSION.into(),
        i64::from(envelope.schema_version).into(),
    );
    headers.insert(
        PUBLISHED_AT.into(),
        jiff::Timestamp::now().as_millisecond().into(),
    );
    if let Some(trace) = &envelope.trace {
        headers.insert(
            TRACEPARENT.into(),
            crate::limits::header_str(&trace.traceparent),
        );
        if let Some(state) = &trace.tracestate {
            headers.insert(TRACESTATE.into(), crate::limits::header_str(state));
        }
    }
    Properties {
        content_type: Some(content_type.as_str().to_owned()),
        message_id: Some(envelope.message_id.to_string()),
        kind: Some(envelope.kind().to_owned()),
        headers,
        expiration: None,
        timestamp: u64::try_from(jiff::Timestamp::now().as_second()).ok(),
    }
}

/// When a delivery entered its queue, in Unix seconds, for the queue-wait and oldest-message
/// metrics: Stowage's [`PUBLISHED_AT`] header (milliseconds; for a retry, when its delay
/// ended), else the AMQP `timestamp` property any client may set, else the envelope's own
/// `created_at` (`created_at`, decoded or probed), which every producer must write.
pub fn published_at(delivery: &Delivery, created_at: Option<jiff::Timestamp>) -> Option<f64> {
    if let Some(ms) = delivery
        .properties
        .headers
        .get(PUBLISHED_AT)
        .and_then(crate::broker::HeaderValue::as_int)
    {
        return Some(ms as f64 / 1000.0);
    }
    if let Some(seconds) = delivery.properties.timestamp {
        return Some(seconds as f64);
    }
    created_at.map(|at| at.as_millisecond() as f64 / 1000.0)
}

/// The ids of a delivery: its AMQP `message_id` and `type` properties, each falling back to
/// what the body itself says (`message_id`, `message.type`) when the producer did not set the
/// property, and the job id, cluster and creation time from the body. Read leniently
/// ([`stowage_schemas::probe_ids`]), so a body that does not decode still names itself.
pub fn probe_delivery(delivery: &Delivery) -> EnvelopeIds {
    let content_type = delivery
        .properties
        .content_type
        .as_deref()
        .map_or(Ok(ContentType::MessagePack), str::parse::<ContentType>);
    let mut ids = match content_type {
        Ok(ct) if delivery.body.len() <= crate::limits::MAX_BODY_BYTES => {
            stowage_schemas::probe_ids(&delivery.body, ct)
        }
        _ => EnvelopeIds::default(),
    };
    if let Some(id) = &delivery.properties.message_id {
        ids.message_id = Some(id.clone());
    }
    if let Some(kind) = &delivery.properties.kind {
        ids.kind = Some(kind.clone());
    }
    ids
}

/// The envelope a delivery carries, decoded as its content type says (MessagePack when it says
/// nothing), or why it cannot be.
pub fn decode_delivery(delivery: &Delivery) -> Result<Envelope, String> {
    if delivery.body.len() > crate::limits::MAX_BODY_BYTES {
        return Err(format!(
            "message body is {} bytes; the limit is {} bytes (an envelope is a few KiB): not decoded",
            delivery.body.len(),
            crate::limits::MAX_BODY_BYTES
        ));
    }
    let content_type = match delivery.properties.content_type.as_deref() {
        None => ContentType::MessagePack,
        Some(ct) => ct.parse::<ContentType>().map_err(|_| {
            format!(
                "unsupported content type {ct:?}: send application/msgpack (MessagePack) or application/json"
            )
        })?,
    };
    decode(&delivery.body, content_type).map_err(|e| e.to_string())
}

/// The broker message that publishes `envelope` to where its kind routes it.
pub fn outgoing(names: &Names, envelope: &Envelope) -> Outgoing {
    let (exchange, routing_key, mandatory) = route(names, envelope);
    Outgoing {
        exchange,
        routing_key,
        mandatory,
        properties: properties(envelope, ContentType::MessagePack),
        body: encode_as(envelope, ContentType::MessagePack),
    }
}

/// The envelope of a message a handler emits while handling `parent`: same job, same trace,
/// and a message id derived from the parent's, so a redelivered parent re-emits the same ids
/// and downstream consumers can tell a duplicate from new work.
pub fn child(parent: &Envelope, index: usize, message: stowage_schemas::Message) -> Envelope {
    let mut child = Envelope::new(parent.job_id.clone(), message);
    let name = format!("{}#{index}", child.kind());
    child.message_id = MessageId(uuid::Uuid::new_v5(&parent.message_id.0, name.as_bytes()));
    child.trace = parent.trace.clone();
    // The cluster is the child's own (a restore.hydrated names its target cluster), never
    // inherited: a snapshot's rp.created is for the vault stages, whichever cluster made it.
    if child.recovery_point_id.is_none() {
        child.recovery_point_id = parent.recovery_point_id.clone();
    }
    if child.restore_id.is_none() {
        child.restore_id = parent.restore_id.clone();
    }
    child
}

#[cfg(test)]
mod tests {
    use futures::FutureExt as _;
    use futures::future::BoxFuture;

    use super::*;
    use crate::broker::{BrokerError, HeaderValue, Settle};

    struct Noop;

    impl Settle for Noop {
        fn ack(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
            async { Ok(()) }.boxed()
        }

        fn reject(&self, _: bool) -> BoxFuture<'_, Result<(), BrokerError>> {
            async { Ok(()) }.boxed()
        }
    }

    fn delivery(properties: Properties, body: Vec<u8>) -> Delivery {
        Delivery {
            exchange: String::new(),
            routing_key: String::new(),
            redelivered: false,
            properties,
            body,
            settle: Box::new(Noop),
        }
    }

    /// Issue 16, item 5: Stowage's header first, then the AMQP timestamp, then `created_at`.
    #[test]
    fn queue_time_falls_back_to_the_amqp_timestamp_then_created_at() {
        let created: jiff::Timestamp = "2026-11-29T10:00:00Z".parse().unwrap();
        let mut props = Properties::default();
        let bare = delivery(props.clone(), Vec::new());
        assert_eq!(published_at(&bare, None), None);
        assert_eq!(
            published_at(&bare, Some(created)),
            Some(created.as_second() as f64)
        );
        props.timestamp = Some(1_700_000_000);
        let stamped = delivery(props.clone(), Vec::new());
        assert_eq!(published_at(&stamped, Some(created)), Some(1_700_000_000.0));
        props
            .headers
            .insert(PUBLISHED_AT.into(), HeaderValue::Int(1_800_000_000_500));
        let ours = delivery(props, Vec::new());
        assert_eq!(published_at(&ours, Some(created)), Some(1_800_000_000.5));
    }

    /// Issue 16, item 5: without AMQP properties, the ids come from the body.
    #[test]
    fn ids_fall_back_to_the_body_when_properties_are_missing() {
        let envelope = stowage_schemas::samples::samples().remove(0);
        let body = stowage_schemas::encode(&envelope);
        let ids = probe_delivery(&delivery(Properties::default(), body.clone()));
        assert_eq!(ids.message_id, Some(envelope.message_id.to_string()));
        assert_eq!(ids.kind.as_deref(), Some(envelope.kind()));
        assert_eq!(ids.job_id.as_deref(), Some(envelope.job_id.as_str()));
        assert_eq!(ids.created_at, Some(envelope.created_at));
        let props = Properties {
            message_id: Some("from-the-producer".into()),
            kind: Some("job.whatever".into()),
            ..Properties::default()
        };
        let ids = probe_delivery(&delivery(props, body));
        assert_eq!(ids.message_id.as_deref(), Some("from-the-producer"));
        assert_eq!(ids.kind.as_deref(), Some("job.whatever"));
    }
}
