//! Job files: what `stowage submit` reads.
//!
//! ```yaml
//! type: job.snapshot          # the message type (see schemas/json/)
//! job_id: nightly-shop-1      # optional; a fresh id is generated otherwise
//! payload:
//!   instance: shop-prod
//!   recovery_point_id: rp-1
//!   trigger: {kind: on_demand}
//! ```
//!
//! Validation is strict where the wire is lenient: a worker ignores unknown fields so the
//! schema can grow, but a person's typo (`instanse:`) would then silently vanish, so a job
//! file with a field the type does not have is refused, naming the field.

use serde::Deserialize;
use serde_json::Value;
use stowage_schemas::{Envelope, Message, Route};

/// A parsed job file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    job_id: Option<String>,
    #[serde(default)]
    payload: Value,
}

/// Why a job file was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobFileError {
    /// Not YAML or JSON of the right shape.
    #[error(
        "{origin}: not a job file ({reason}); expected `type: job.<stage>` and `payload: {{...}}`, optionally `job_id`"
    )]
    Shape {
        /// Where it came from.
        origin: String,
        /// The parser's complaint.
        reason: String,
    },
    /// An event, not a job.
    #[error("{origin}: `{kind}` is an event, not a job; submit one of: {jobs}")]
    NotAJob {
        /// Where it came from.
        origin: String,
        /// The given type.
        kind: String,
        /// The job types.
        jobs: String,
    },
    /// Unknown type or a payload that does not fit it.
    #[error("{origin}: {reason} (the schema is schemas/json/{kind}.schema.json)")]
    Payload {
        /// Where it came from.
        origin: String,
        /// The given type.
        kind: String,
        /// What is wrong.
        reason: String,
    },
    /// A field the type does not have.
    #[error(
        "{origin}: `{path}` is not a field of {kind}; check its spelling (the schema is schemas/json/{kind}.schema.json)"
    )]
    UnknownField {
        /// Where it came from.
        origin: String,
        /// The given type.
        kind: String,
        /// Dotted path of the field.
        path: String,
    },
    /// An empty job id.
    #[error("{origin}: job_id must not be empty")]
    EmptyJobId {
        /// Where it came from.
        origin: String,
    },
}

/// Parse and validate a job file's text (YAML, of which JSON is a subset).
pub fn parse(origin: &str, text: &str) -> Result<Envelope, JobFileError> {
    let file: JobFile = serde_yaml::from_str(text).map_err(|e| JobFileError::Shape {
        origin: origin.to_owned(),
        reason: e.to_string(),
    })?;
    let jobs = || {
        Message::KINDS
            .iter()
            .filter(|k| k.starts_with("job."))
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    };
    if file.kind.starts_with("event.") {
        return Err(JobFileError::NotAJob {
            origin: origin.to_owned(),
            kind: file.kind,
            jobs: jobs(),
        });
    }
    let tagged = serde_json::json!({ "type": file.kind, "payload": file.payload });
    let message: Message = serde_json::from_value(tagged).map_err(|e| JobFileError::Payload {
        origin: origin.to_owned(),
        kind: file.kind.clone(),
        reason: if Message::KINDS.contains(&file.kind.as_str()) {
            format!("the payload does not fit {}: {e}", file.kind)
        } else {
            format!("unknown job type `{}`; use one of: {}", file.kind, jobs())
        },
    })?;
    let echoed = serde_json::to_value(&message).expect("messages always serialize to JSON");
    if let Some(path) = unknown_field(&file.payload, &echoed["payload"], String::new()) {
        return Err(JobFileError::UnknownField {
            origin: origin.to_owned(),
            kind: file.kind,
            path,
        });
    }
    let stage = match message.route() {
        Route::Job(stage) => stage,
        Route::Event(_) => unreachable!("event types were refused above"),
    };
    let job_id = match file.job_id {
        Some(id) if id.trim().is_empty() => {
            return Err(JobFileError::EmptyJobId {
                origin: origin.to_owned(),
            });
        }
        Some(id) => id,
        None => format!("{}-{}", stage.as_str(), uuid::Uuid::now_v7()),
    };
    Ok(Envelope::new(job_id, message))
}

/// The first field present in `given` that did not survive parsing into the type (`echoed`).
/// Fields given as null are fine: they mean "absent", which the type omits when serializing.
fn unknown_field(given: &Value, echoed: &Value, path: String) -> Option<String> {
    match (given, echoed) {
        (Value::Object(g), Value::Object(e)) => g.iter().find_map(|(key, value)| {
            let here = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            match e.get(key) {
                None if value.is_null() => None,
                None => Some(here),
                Some(inner) => unknown_field(value, inner, here),
            }
        }),
        (Value::Array(g), Value::Array(e)) => g
            .iter()
            .zip(e)
            .enumerate()
            .find_map(|(i, (gv, ev))| unknown_field(gv, ev, format!("{path}[{i}]"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_examples_are_valid() {
        for (name, text) in [
            (
                "snapshot.yaml",
                include_str!("../../../schemas/examples/snapshot.yaml"),
            ),
            (
                "vault-transfer.json",
                include_str!("../../../schemas/examples/vault-transfer.json"),
            ),
            (
                "retention.yaml",
                include_str!("../../../schemas/examples/retention.yaml"),
            ),
        ] {
            let env = parse(name, text).unwrap_or_else(|e| panic!("{e}"));
            assert!(env.kind().starts_with("job."));
        }
        let env = parse(
            "vt",
            include_str!("../../../schemas/examples/vault-transfer.json"),
        )
        .unwrap();
        assert_eq!(env.job_id, "vault-transfer-rp-2026-11-22-0300");
        assert_eq!(env.recovery_point_id.as_deref(), Some("rp-2026-11-22-0300"));
    }

    #[test]
    fn a_generated_job_id_names_the_stage() {
        let env = parse("f", "type: job.retention\npayload: {instance: shop}\n").unwrap();
        assert!(env.job_id.starts_with("retention-"), "{}", env.job_id);
    }

    #[test]
    fn mistakes_are_named() {
        let typo = parse("f", "type: job.retention\npayload: {instanse: shop}\n")
            .unwrap_err()
            .to_string();
        assert!(typo.contains("missing field `instance`"), "{typo}");
        let extra = parse(
            "f",
            "type: job.retention\npayload: {instance: shop, colour: red}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            extra.contains("`colour` is not a field of job.retention"),
            "{extra}"
        );
        let nested = parse("f", "type: job.snapshot\npayload: {instance: a, recovery_point_id: b, trigger: {kind: on_demand, by: me}}\n")
            .unwrap_err()
            .to_string();
        assert!(nested.contains("`trigger.by`"), "{nested}");
        let event = parse("f", "type: event.rp.created\npayload: {}\n")
            .unwrap_err()
            .to_string();
        assert!(event.contains("is an event, not a job"), "{event}");
        let unknown = parse("f", "type: job.backup\npayload: {}\n")
            .unwrap_err()
            .to_string();
        assert!(
            unknown.contains("unknown job type `job.backup`"),
            "{unknown}"
        );
        let shape = parse("f", "kind: job.retention\n").unwrap_err().to_string();
        assert!(shape.contains("not a job file"), "{shape}");
        let null_ok = parse(
            "f",
            "type: job.snapshot\npayload: {instance: a, recovery_point_id: b, trigger: {kind: on_demand, requested_by: null}}\n",
        );
        assert!(null_ok.is_ok(), "{null_ok:?}");
    }
}
