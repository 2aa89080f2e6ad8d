//! Envelopes to and from broker messages: where each message goes, and what travels in its
//! AMQP properties beside the body (so operators and other tools can route, trace and filter
//! without decoding MessagePack).

use stowage_schemas::{ContentType, Envelope, MessageId, Route, decode, encode_as};

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
    }
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
