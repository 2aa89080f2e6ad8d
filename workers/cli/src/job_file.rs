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
//!
//! Parsing is bounded before it starts: a job file is at most [`MAX_JOB_FILE_BYTES`] and nests
//! at most [`MAX_NESTING`] levels (YAML's parser is slow on deep nesting: 200 KB of nested
//! lists took it 30–45 s). Ids (`job_id`, `payload.instance`, …) follow the id rule of
//! [`stowage_schemas::id`], and every refusal names the field and the form it expects.

use serde::Deserialize;
use serde_json::Value;
use stowage_schemas::codec::field_error;
use stowage_schemas::{Envelope, Message, Route};

/// A parsed job file.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a job file: a map with type, payload and optionally job_id and cluster"
)]
struct JobFile {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, deserialize_with = "stowage_schemas::id::fields::option")]
    job_id: Option<String>,
    /// The cluster a snapshot job runs on (its instance's cluster): its workers alone take it.
    #[serde(default, deserialize_with = "stowage_schemas::id::fields::option")]
    cluster: Option<String>,
    #[serde(default)]
    payload: Value,
}

/// The largest job file read, in bytes. A job file is a few hundred bytes; a bigger one is a
/// mistake or an attack, and is refused before it is parsed.
pub const MAX_JOB_FILE_BYTES: usize = 64 * 1024;

/// The deepest nesting of lists and maps a job file may have. A job nests at most five levels
/// (`payload.options.namespace_mapping`), and YAML parsing slows down badly with depth.
pub const MAX_NESTING: usize = 32;

/// Why a job file was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobFileError {
    /// Too large or too deeply nested to be parsed.
    #[error("{origin}: refused before parsing: {reason}")]
    TooLarge {
        /// Where it came from.
        origin: String,
        /// Which bound it exceeds.
        reason: String,
    },
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
    /// A cluster-side job that names no cluster.
    #[error(
        "{origin}: a {kind} runs on one cluster's workers and this one names no cluster: add \
         `cluster: <name>` (the instance's cluster) to the job file{hint}"
    )]
    NoCluster {
        /// Where it came from.
        origin: String,
        /// The job type.
        kind: &'static str,
        /// More on where else the cluster may go.
        hint: &'static str,
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
    check_bounds(text).map_err(|reason| JobFileError::TooLarge {
        origin: origin.to_owned(),
        reason,
    })?;
    let file: JobFile = serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
        .map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let at = inner
                .location()
                .map(|l| format!(" (at line {} column {})", l.line(), l.column()))
                .unwrap_or_default();
            let message = inner.to_string();
            let message = message.split(" at line ").next().unwrap_or_default();
            // serde_yaml names the path itself too; say it once.
            let message = message
                .strip_prefix(&format!("{path}: "))
                .unwrap_or(message);
            JobFileError::Shape {
                origin: origin.to_owned(),
                reason: format!("{}{at}", field_error(&path, message)),
            }
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
    // As JSON text with `type` first, so that a refusal inside the payload names its path
    // (serde would buffer a payload that comes first and lose where it failed).
    let tagged = format!(
        "{{\"type\":{},\"payload\":{}}}",
        serde_json::Value::from(file.kind.as_str()),
        file.payload
    );
    let message: Message =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(&tagged))
            .map_err(|e| {
                let path = e.path().to_string();
                let message = e.into_inner().to_string();
                let message = message.split(" at line ").next().unwrap_or_default();
                JobFileError::Payload {
                    origin: origin.to_owned(),
                    kind: file.kind.clone(),
                    reason: if Message::KINDS.contains(&file.kind.as_str()) {
                        format!(
                            "the payload does not fit {}: {}",
                            file.kind,
                            field_error(&path, message)
                        )
                    } else {
                        format!("unknown job type `{}`; use one of: {}", file.kind, jobs())
                    },
                }
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
    let mut envelope = Envelope::new(job_id, message);
    if let Some(cluster) = file.cluster {
        envelope.cluster = Some(cluster);
    }
    if stage.is_cluster_side() && envelope.cluster.is_none() {
        return Err(JobFileError::NoCluster {
            origin: origin.to_owned(),
            kind: envelope.kind(),
            hint: if stage == stowage_schemas::Stage::Restore {
                ", or set payload.options.target_cluster"
            } else {
                ""
            },
        });
    }
    Ok(envelope)
}

/// Refuses a text larger than [`MAX_JOB_FILE_BYTES`] or nested deeper than [`MAX_NESTING`],
/// saying which, in one pass and before any parsing.
///
/// The depth is an upper-bound estimate that needs no parser: block nesting is the number of
/// open indentation levels plus the `- `/`? ` entries that open on the same line, flow nesting
/// is the number of open `[` and `{`. Quotes that begin a scalar hide what they contain, and
/// `#` after a space starts a comment. It may overestimate (never below the real depth), which
/// only matters for files far deeper than any job.
pub fn check_bounds(text: &str) -> Result<(), String> {
    if text.len() > MAX_JOB_FILE_BYTES {
        return Err(format!(
            "it is {} bytes; a job file may be at most {MAX_JOB_FILE_BYTES} bytes",
            text.len()
        ));
    }
    let too_deep = || {
        Err(format!(
            "it nests lists or maps more than {MAX_NESTING} levels deep; a job nests at most a \
             few"
        ))
    };
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut quote: Option<char> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let mut block = indents.len();
        if flow == 0 && quote.is_none() && !trimmed.is_empty() && !trimmed.starts_with('#') {
            let indent = line.len() - trimmed.len();
            while indents.last().is_some_and(|&open| open >= indent) {
                indents.pop();
            }
            indents.push(indent);
            let mut rest = trimmed;
            let mut inline = 0;
            while let Some(after) = rest
                .strip_prefix("- ")
                .or_else(|| rest.strip_prefix("? "))
                .or_else(|| (rest == "-").then_some(""))
            {
                inline += 1;
                rest = after.trim_start();
            }
            block = indents.len() + inline;
        }
        if block + flow > MAX_NESTING {
            return too_deep();
        }
        let mut previous = ' ';
        let mut escaped = false;
        for c in line.chars() {
            match quote {
                Some('"') if escaped => escaped = false,
                Some('"') if c == '\\' => escaped = true,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    '"' | '\'' if previous.is_whitespace() || "[{,:-?".contains(previous) => {
                        quote = Some(c)
                    }
                    '#' if previous.is_whitespace() => break,
                    '[' | '{' => {
                        flow += 1;
                        if block + flow > MAX_NESTING {
                            return too_deep();
                        }
                    }
                    ']' | '}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
            previous = c;
        }
    }
    Ok(())
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

    /// Parses `text` as a job file that must be refused, and checks that the refusal says
    /// every one of `phrases`.
    fn assert_refused(text: &str, phrases: &[&str]) {
        let err = parse("f", text).unwrap_err().to_string();
        for phrase in phrases {
            assert!(err.contains(phrase), "{phrase:?} is not in: {err}");
        }
    }

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
    fn bad_ids_are_refused_naming_the_field_and_the_rule() {
        let rule = stowage_schemas::id::RULE;
        assert_refused(
            "type: job.retention\njob_id: ../../x\npayload: {instance: shop}\n",
            &["job_id: \"../../x\" is not a valid id", rule],
        );
        assert_refused(
            "type: job.retention\npayload: {instance: ../etc}\n",
            &["payload.instance: \"../etc\" is not a valid id", rule],
        );
    }

    #[test]
    fn a_wrong_type_names_the_field_and_the_expected_form() {
        assert_refused(
            "type: job.retention\npayload: {instance: [1]}\n",
            &["payload.instance: expected an id string", "got a sequence"],
        );
        assert_refused(
            "type: [job.retention]\npayload: {}\n",
            &["type: expected a string, got a sequence"],
        );
        assert_refused(
            "type: job.retention\npayload: {instance: shop, as_of: 2026-11-29T10:00:00}\n",
            &["payload.as_of: expected an RFC 3339 timestamp with an offset"],
        );
    }

    #[test]
    fn deep_or_large_files_are_refused_before_parsing() {
        let huge = format!(
            "type: job.retention\npayload: {{instance: shop, x: {}1{}}}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_refused(&huge, &["refused before parsing", "at most 65536 bytes"]);
        let block = format!(
            "type: job.retention\npayload:\n  x:\n  {}1\n",
            "- ".repeat(100)
        );
        let flow = format!(
            "type: job.retention\npayload: {{x: {}1{}}}\n",
            "[".repeat(40),
            "]".repeat(40)
        );
        let indented: String = (0..40)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        for deep in [block, flow, indented] {
            assert_refused(&deep, &["more than 32 levels deep"]);
        }
        // Brackets in quoted strings and comments are not nesting.
        let quoted = format!(
            "type: job.snapshot # [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\ncluster: aks\npayload: {{instance: a, recovery_point_id: b, trigger: {{kind: on_demand, requested_by: \"{}\"}}}}\n",
            "[".repeat(50)
        );
        assert!(parse("f", &quoted).is_ok(), "{:?}", parse("f", &quoted));
    }

    #[test]
    fn mistakes_are_named() {
        for (text, phrase) in [
            (
                "type: job.retention\npayload: {instanse: shop}\n",
                "missing field `instance`",
            ),
            (
                "type: job.retention\npayload: {instance: shop, colour: red}\n",
                "`colour` is not a field of job.retention",
            ),
            (
                "type: job.snapshot\npayload: {instance: a, recovery_point_id: b, trigger: {kind: on_demand, by: me}}\n",
                "`trigger.by`",
            ),
            (
                "type: event.rp.created\npayload: {}\n",
                "is an event, not a job",
            ),
            (
                "type: job.backup\npayload: {}\n",
                "unknown job type `job.backup`",
            ),
            ("kind: job.retention\n", "not a job file"),
        ] {
            assert_refused(text, &[phrase]);
        }
        let null_ok = parse(
            "f",
            "type: job.snapshot\ncluster: aks\npayload: {instance: a, recovery_point_id: b, trigger: {kind: on_demand, requested_by: null}}\n",
        );
        assert!(null_ok.is_ok(), "{null_ok:?}");
    }
}
