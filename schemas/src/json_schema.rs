//! JSON Schemas of the wire contract, generated from the Rust types.
//!
//! Published in `schemas/json/`: `envelope.schema.json` for a whole message,
//! `<type>.schema.json` (e.g. `job.snapshot.schema.json`) for the payload of each message type,
//! and `domain.<name>.schema.json` for the documents kept in a vault (vault, policy, backup
//! instance, recovery point, job record).
//! A test regenerates them and fails when a checked-in file is stale; regenerate with
//! `STOWAGE_BLESS=1 cargo test -p stowage-schemas`.

use schemars::{JsonSchema, Schema, schema_for};
use serde_json::{Map, Value};

use crate::{Envelope, domain, events, jobs};

/// The schema of a whole [`Envelope`].
pub fn envelope() -> Schema {
    schema_for!(Envelope)
}

/// The schema of the payload of message type `kind` (e.g. `job.snapshot`), or `None` for a
/// type not in [`Message::KINDS`](crate::Message::KINDS).
pub fn payload(kind: &str) -> Option<Schema> {
    Some(match kind {
        "job.snapshot" => schema_for!(jobs::SnapshotJob),
        "job.vault-transfer" => schema_for!(jobs::VaultTransferJob),
        "job.geo-replication" => schema_for!(jobs::GeoReplicationJob),
        "job.restore-hydration" => schema_for!(jobs::RestoreHydrationJob),
        "job.restore" => schema_for!(jobs::RestoreJob),
        "job.retention" => schema_for!(jobs::RetentionJob),
        "event.rp.created" => schema_for!(events::RpCreated),
        "event.rp.vaulted" => schema_for!(events::RpVaulted),
        "event.rp.replicated" => schema_for!(events::RpReplicated),
        "event.restore.hydrated" => schema_for!(events::RestoreHydrated),
        "event.restore.completed" => schema_for!(events::RestoreCompleted),
        "event.rp.vault-skipped" => schema_for!(events::RpVaultSkipped),
        "event.job.progress" => schema_for!(events::JobProgress),
        "event.job.failed" => schema_for!(events::JobFailed),
        "event.drill.completed" => schema_for!(events::DrillCompleted),
        _ => return None,
    })
}

/// The schemas of the vault documents in [`crate::domain`], as `(name, schema)`.
pub fn domain() -> Vec<(&'static str, Schema)> {
    vec![
        ("vault", schema_for!(domain::Vault)),
        ("policy", schema_for!(domain::Policy)),
        ("backup-instance", schema_for!(domain::BackupInstance)),
        ("recovery-point", schema_for!(domain::RecoveryPoint)),
        ("job-record", schema_for!(domain::JobRecord)),
    ]
}

/// Every published schema as `(file name, file contents)`: the envelope first, then one per
/// message type in [`Message::KINDS`](crate::Message::KINDS) order, then the domain documents.
///
/// The contents are deterministic: keys sorted at every level, pretty-printed, with a trailing
/// newline, whatever serde_json features the build enables.
pub fn files() -> Vec<(String, String)> {
    let envelope = ("envelope.schema.json".to_owned(), render(envelope()));
    let payloads = crate::Message::KINDS.iter().map(|kind| {
        let schema = payload(kind).expect("every kind in Message::KINDS has a payload schema");
        (format!("{kind}.schema.json"), render(schema))
    });
    let documents = domain()
        .into_iter()
        .map(|(name, schema)| (format!("domain.{name}.schema.json"), render(schema)));
    std::iter::once(envelope)
        .chain(payloads)
        .chain(documents)
        .collect()
}

/// Generates the schema of any contract type, rendered like the published files.
pub fn render_for<T: JsonSchema>() -> String {
    render(schema_for!(T))
}

fn render(schema: Schema) -> String {
    let mut text = serde_json::to_string_pretty(&sorted(schema.to_value()))
        .expect("a JSON value always serializes");
    text.push('\n');
    text
}

/// Rebuilds every object with its keys in sorted order, so the output does not depend on
/// whether serde_json's `preserve_order` feature is enabled somewhere in the build.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.cmp(b));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sorted(v)))
                    .collect::<Map<_, _>>(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}
