//! The evolution rules of `schemas/EVOLUTION.md`, and the decode errors, tested in both formats.

use serde_json::{Value, json};
use stowage_schemas::{
    ContentType, DecodeError, Envelope, Message, SCHEMA_VERSION, decode, encode, encode_as,
    samples::samples,
};

const FORMATS: [ContentType; 2] = [ContentType::MessagePack, ContentType::Json];

/// Encodes an arbitrary JSON value as a body of the given format, the way a producer in another
/// language (or a newer or older build) might write it.
fn body(value: &Value, ct: ContentType) -> Vec<u8> {
    match ct {
        ContentType::MessagePack => rmp_serde::to_vec_named(value).unwrap(),
        ContentType::Json => serde_json::to_vec(value).unwrap(),
    }
}

fn as_value(env: &Envelope) -> Value {
    serde_json::to_value(env).unwrap()
}

fn sample(kind: &str) -> Envelope {
    samples()
        .into_iter()
        .find(|env| env.kind() == kind)
        .unwrap()
}

#[test]
fn every_variant_round_trips_in_both_formats() {
    let samples = samples();
    assert_eq!(samples.len(), Message::KINDS.len());
    for env in &samples {
        for ct in FORMATS {
            let bytes = encode_as(env, ct);
            let back =
                decode(&bytes, ct).unwrap_or_else(|err| panic!("{} {ct}: {err}", env.kind()));
            assert_eq!(&back, env, "{} {ct}", env.kind());
        }
    }
}

#[test]
fn freshly_built_envelopes_round_trip() {
    // Not a fixed sample: a real now() timestamp with nanoseconds and a random UUIDv7.
    for sample in samples() {
        let env = Envelope::new("job-1", sample.message);
        for ct in FORMATS {
            assert_eq!(decode(&encode_as(&env, ct), ct).unwrap(), env);
        }
    }
}

#[test]
fn ids_and_timestamps_are_strings_in_msgpack() {
    let env = sample("job.snapshot");
    let bytes = encode(&env);
    let value: Value = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(value["message_id"], "01946a4c-8e00-7000-8000-000000000001");
    assert_eq!(value["created_at"], "2025-01-15T02:00:01Z");
    assert_eq!(value["message"]["type"], "job.snapshot");
    assert_eq!(
        value["message"]["payload"]["trigger"]["slot"],
        "2025-01-15T02:00:00Z"
    );
}

#[test]
fn unknown_fields_are_ignored_at_every_level() {
    for original in samples() {
        let mut value = as_value(&original);
        value["added_in_a_later_version"] = json!({"nested": [1, 2, 3]});
        value["message"]["extra"] = json!("ignored");
        value["message"]["payload"]["future_field"] = json!(42);
        if let Some(trace) = value.get_mut("trace") {
            trace["baggage"] = json!("k=v");
        }
        for ct in FORMATS {
            let decoded = decode(&body(&value, ct), ct)
                .unwrap_or_else(|err| panic!("{} {ct}: {err}", original.kind()));
            assert_eq!(decoded, original, "{} {ct}", original.kind());
        }
    }
}

#[test]
fn optional_fields_may_be_absent() {
    // A producer built before these fields existed does not send them.
    let mut value = as_value(&sample("job.restore"));
    for field in ["attempt", "trace", "recovery_point_id", "restore_id"] {
        value.as_object_mut().unwrap().remove(field);
    }
    let payload = value["message"]["payload"].as_object_mut().unwrap();
    payload.remove("staging");
    payload.remove("options");
    for ct in FORMATS {
        let env = decode(&body(&value, ct), ct).unwrap();
        assert_eq!(env.attempt, 0);
        assert_eq!(env.trace, None);
        assert_eq!(env.recovery_point_id, None);
        let Message::Restore(job) = env.message else {
            panic!("not a restore")
        };
        assert_eq!(job.staging, None);
        assert_eq!(job.options, Default::default());
        assert!(
            job.options.include_volumes,
            "include_volumes defaults to true"
        );
    }
}

#[test]
fn minimal_job_from_another_language_decodes() {
    // What the README shows: the smallest valid job, written by hand.
    let value = json!({
        "message_id": "01946a4c-8e00-7000-8000-0000000000ff",
        "schema_version": 1,
        "job_id": "snapshot-shop-prod-manual-1",
        "created_at": "2025-01-15T09:30:00+01:00",
        "message": {
            "type": "job.snapshot",
            "payload": {
                "instance": "shop-prod",
                "recovery_point_id": "rp-manual-1",
                "trigger": {"kind": "on_demand"}
            }
        }
    });
    for ct in FORMATS {
        let env = decode(&body(&value, ct), ct).unwrap();
        assert_eq!(env.kind(), "job.snapshot");
        assert_eq!(env.created_at.to_string(), "2025-01-15T08:30:00Z");
    }
}

#[test]
fn another_version_is_unsupported_even_if_its_shape_changed() {
    let mut changed = as_value(&sample("job.snapshot"));
    changed["schema_version"] = json!(SCHEMA_VERSION + 1);
    changed["message"] = json!(["a", "different", "shape"]);
    changed["job_id"] = json!(7);
    for ct in FORMATS {
        match decode(&body(&changed, ct), ct) {
            Err(DecodeError::UnsupportedVersion {
                found: 2,
                supported: 1,
            }) => {}
            other => panic!("{ct}: expected UnsupportedVersion, got {other:?}"),
        }
    }
    let message = DecodeError::UnsupportedVersion {
        found: 2,
        supported: 1,
    }
    .to_string();
    assert!(message.contains("upgrade the workers"), "{message}");
    assert!(message.contains("schema_version 1"), "{message}");
}

#[test]
fn unknown_type_is_reported_with_the_known_ones() {
    let mut value = as_value(&sample("job.snapshot"));
    value["message"]["type"] = json!("job.defragment");
    for ct in FORMATS {
        match decode(&body(&value, ct), ct) {
            Err(err @ DecodeError::UnknownType { .. }) => {
                let text = err.to_string();
                assert!(text.contains("`job.defragment`"), "{text}");
                assert!(text.contains("job.snapshot, job.vault-transfer"), "{text}");
            }
            other => panic!("{ct}: expected UnknownType, got {other:?}"),
        }
    }
}

#[test]
fn garbage_is_malformed() {
    let bad_payload = {
        let mut value = as_value(&sample("job.snapshot"));
        value["message"]["payload"] = json!({"instance": 5});
        value
    };
    let bad_id = {
        let mut value = as_value(&sample("job.snapshot"));
        value["message_id"] = json!("not-a-uuid");
        value
    };
    let cases: Vec<(&str, ContentType, Vec<u8>)> = vec![
        (
            "random bytes",
            ContentType::MessagePack,
            vec![0xc1, 0xff, 0x00, 0x13],
        ),
        (
            "random bytes",
            ContentType::Json,
            b"\x00\x01 not json".to_vec(),
        ),
        ("empty", ContentType::MessagePack, Vec::new()),
        ("empty", ContentType::Json, Vec::new()),
        (
            "json read as msgpack",
            ContentType::MessagePack,
            encode_as(&sample("job.snapshot"), ContentType::Json),
        ),
        (
            "msgpack read as json",
            ContentType::Json,
            encode(&sample("job.snapshot")),
        ),
        (
            "trailing bytes",
            ContentType::MessagePack,
            [encode(&sample("job.snapshot")), vec![0x01]].concat(),
        ),
        (
            "bad payload",
            ContentType::MessagePack,
            body(&bad_payload, ContentType::MessagePack),
        ),
        (
            "bad payload",
            ContentType::Json,
            body(&bad_payload, ContentType::Json),
        ),
        (
            "bad message id",
            ContentType::MessagePack,
            body(&bad_id, ContentType::MessagePack),
        ),
        (
            "no version",
            ContentType::Json,
            br#"{"job_id": "x"}"#.to_vec(),
        ),
    ];
    for (what, ct, bytes) in cases {
        match decode(&bytes, ct) {
            Err(err @ DecodeError::Malformed { .. }) => {
                let text = err.to_string();
                assert!(
                    text.contains("not a valid Stowage envelope"),
                    "{what}: {text}"
                );
                assert!(text.contains(ct.as_str()), "{what}: {text}");
            }
            other => panic!("{what} ({ct}): expected Malformed, got {other:?}"),
        }
    }
}
