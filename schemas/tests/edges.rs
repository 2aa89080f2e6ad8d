//! Bad input at the decoder: ids against the id rule, refusals that name the field and the
//! expected form, bounded nesting, and property tests (arbitrary bytes and arbitrary JSON-like
//! structures never panic, and a refusal names a field).

use proptest::prelude::*;
use serde_json::{Value, json};
use stowage_schemas::id::{self, Id, MAX_ID_LEN, RULE};
use stowage_schemas::{
    ContentType, DecodeError, Envelope, EnvelopeIds, decode, encode_as, probe_ids, samples::samples,
};

const FORMATS: [ContentType; 2] = [ContentType::MessagePack, ContentType::Json];

fn body(value: &Value, ct: ContentType) -> Vec<u8> {
    match ct {
        ContentType::MessagePack => rmp_serde::to_vec_named(value).unwrap(),
        ContentType::Json => serde_json::to_vec(value).unwrap(),
    }
}

fn snapshot() -> Value {
    let env: Envelope = samples()
        .into_iter()
        .find(|env| env.kind() == "job.snapshot")
        .unwrap();
    serde_json::to_value(env).unwrap()
}

fn refusal(value: &Value, ct: ContentType) -> String {
    match decode(&body(value, ct), ct) {
        Err(err @ DecodeError::Malformed { .. }) => err.to_string(),
        other => panic!("{ct}: expected a malformed-body refusal, got {other:?}"),
    }
}

#[test]
fn a_bad_id_is_refused_naming_the_field_and_the_rule() {
    for (pointer, field) in [
        ("/job_id", "job_id"),
        ("/message/payload/instance", "message.payload.instance"),
        (
            "/message/payload/recovery_point_id",
            "message.payload.recovery_point_id",
        ),
        ("/recovery_point_id", "recovery_point_id"),
    ] {
        for bad in ["../../x", "a/b", "", ".hidden"] {
            let mut value = snapshot();
            *value.pointer_mut(pointer).unwrap() = json!(bad);
            for ct in FORMATS {
                let err = refusal(&value, ct);
                assert!(err.contains(&format!("{field}: ")), "{ct} {bad}: {err}");
                assert!(err.contains(RULE), "{ct} {bad}: {err}");
            }
        }
    }
}

#[test]
fn a_wrong_type_names_the_field_and_the_expected_form() {
    let mut value = snapshot();
    value["message"]["payload"]["instance"] = json!([1]);
    for ct in FORMATS {
        let err = refusal(&value, ct);
        assert!(
            err.contains("message.payload.instance: expected an id string"),
            "{ct}: {err}"
        );
        assert!(err.contains("got a sequence"), "{ct}: {err}");
    }
    let mut value = snapshot();
    value["attempt"] = json!(-1);
    for ct in FORMATS {
        let err = refusal(&value, ct);
        assert!(
            err.contains("attempt: expected an integer from 0 to 4294967295, got integer `-1`"),
            "{ct}: {err}"
        );
    }
}

#[test]
fn a_timestamp_without_an_offset_is_refused_by_form() {
    let mut value = snapshot();
    value["created_at"] = json!("2026-11-29T10:00:00");
    for ct in FORMATS {
        let err = refusal(&value, ct);
        assert!(
            err.contains(
                "created_at: expected an RFC 3339 timestamp with an offset (e.g. \
                 2025-01-15T02:00:00Z), got \"2026-11-29T10:00:00\""
            ),
            "{ct}: {err}"
        );
        assert!(!err.contains("newtype"), "{ct}: {err}");
    }
    let mut value = snapshot();
    value["message"]["payload"]["trigger"]["slot"] = json!(12);
    for ct in FORMATS {
        let err = refusal(&value, ct);
        assert!(err.contains("RFC 3339"), "{ct}: {err}");
    }
}

#[test]
fn a_body_of_the_wrong_shape_names_no_internal_type() {
    for ct in FORMATS {
        for value in [json!(5), json!("x"), json!(null)] {
            let err = refusal(&value, ct);
            assert!(!err.contains("Probe"), "{ct}: {err}");
            assert!(
                err.contains("the body: expected an envelope"),
                "{ct}: {err}"
            );
        }
        let mut value = snapshot();
        value["message"]["payload"] = json!(7);
        let err = refusal(&value, ct);
        assert!(!err.contains("SnapshotJob"), "{ct}: {err}");
        assert!(
            err.contains("message.payload: expected a map"),
            "{ct}: {err}"
        );
    }
}

/// Issue 16, item 5: a body the decoder refuses still names its ids, read field by field.
#[test]
fn a_refused_body_still_names_its_ids() {
    let mut value = snapshot();
    value["created_at"] = json!("2026-11-29T10:00:00");
    value["message"]["payload"]["trigger"] = json!([1, {"x": null}]);
    value["attempt"] = json!("many");
    for ct in FORMATS {
        let bytes = body(&value, ct);
        assert!(decode(&bytes, ct).is_err());
        let ids = probe_ids(&bytes, ct);
        assert_eq!(
            ids.message_id.as_deref(),
            value["message_id"].as_str(),
            "{ct}"
        );
        assert_eq!(ids.kind.as_deref(), Some("job.snapshot"), "{ct}");
        assert_eq!(ids.job_id.as_deref(), value["job_id"].as_str(), "{ct}");
        assert_eq!(ids.cluster.as_deref(), Some("aks-prod"), "{ct}");
        assert_eq!(ids.created_at, None, "{ct}: no offset, no time");
    }
    let mut value = snapshot();
    value["job_id"] = json!(12);
    value["message"] = json!("not a map");
    let ids = probe_ids(&body(&value, ContentType::Json), ContentType::Json);
    assert_eq!((ids.job_id, ids.kind), (None, None));
    assert!(ids.created_at.is_some());
    for junk in [&b"\xc1\xc1"[..], b"[1,2]", b"", b"\"x\""] {
        for ct in FORMATS {
            assert_eq!(probe_ids(junk, ct), EnvelopeIds::default());
        }
    }
}

/// Issue 16, item 5: what another producer's MessagePack library may write — a string where
/// an integer belongs, a positional array, msgpack's own timestamp extension, a message id that
/// is no UUID — is refused naming the field and the form, never in the decoder's own terms.
#[test]
fn foreign_messagepack_is_refused_by_field_and_form() {
    let refused = |bytes: &[u8]| match decode(bytes, ContentType::MessagePack) {
        Err(err @ DecodeError::Malformed { .. }) => err.to_string(),
        other => panic!("expected a malformed-body refusal, got {other:?}"),
    };
    let mut value = snapshot();
    value["schema_version"] = json!("1");
    let err = refused(&body(&value, ContentType::MessagePack));
    assert!(
        err.contains("schema_version: expected an integer from 0 to 65535, got string \"1\""),
        "{err}"
    );
    let mut value = snapshot();
    value["attempt"] = json!("x");
    let err = refused(&body(&value, ContentType::MessagePack));
    assert!(err.contains("attempt: expected an integer"), "{err}");
    let mut value = snapshot();
    value["message_id"] = json!("abc");
    for ct in FORMATS {
        let err = refusal(&value, ct);
        assert!(
            err.contains("message_id: expected a UUID string such as ")
                && err.contains("got \"abc\""),
            "{ct}: {err}"
        );
    }
    // A whole envelope written positionally (rmp_serde::to_vec), and JSON arrays.
    let positional = rmp_serde::to_vec(&samples()[0]).unwrap();
    for (bytes, ct) in [
        (positional, ContentType::MessagePack),
        (b"[]".to_vec(), ContentType::Json),
        (b" [1, 2]".to_vec(), ContentType::Json),
    ] {
        let err = decode(&bytes, ct).unwrap_err().to_string();
        assert!(
            err.contains("the body: expected an envelope: a map") && err.contains("got a sequence"),
            "{ct}: {err}"
        );
    }
    // msgpack's timestamp extension (type -1) where an RFC 3339 string belongs.
    let mut value = snapshot();
    value["created_at"] = json!("PLACEHOLDER");
    let template = body(&value, ContentType::MessagePack);
    let marker = rmp_serde::to_vec("PLACEHOLDER").unwrap();
    let at = template
        .windows(marker.len())
        .position(|w| w == marker)
        .unwrap();
    let mut packed = template[..at].to_vec();
    packed.extend_from_slice(&[0xd6, 0xff, 0x69, 0x2a, 0xc8, 0x00]);
    packed.extend_from_slice(&template[at + marker.len()..]);
    let err = refused(&packed);
    assert!(
        err.contains("created_at: expected an RFC 3339 timestamp with an offset")
            && err.contains("got a MessagePack extension value"),
        "{err}"
    );
    for internal in ["marker", "newtype", "Probe", "struct ", "offset component"] {
        assert!(!err.contains(internal), "{internal}: {err}");
    }
}

#[test]
fn deep_nesting_is_refused_quickly() {
    // 100 000 nested arrays where an id belongs: refused by the depth bound, not the stack.
    let depth = 100_000;
    let mut packed = Vec::new();
    let mut value = snapshot();
    value["message"]["payload"]["instance"] = json!("PLACEHOLDER");
    let template = rmp_serde::to_vec_named(&value).unwrap();
    let marker = rmp_serde::to_vec("PLACEHOLDER").unwrap();
    let at = template
        .windows(marker.len())
        .position(|w| w == marker)
        .unwrap();
    packed.extend_from_slice(&template[..at]);
    packed.extend(std::iter::repeat_n(0x91u8, depth));
    packed.push(0x01);
    packed.extend_from_slice(&template[at + marker.len()..]);
    let err = decode(&packed, ContentType::MessagePack)
        .unwrap_err()
        .to_string();
    assert!(err.contains("message.payload.instance"), "{err}");

    let json = format!(
        "{{\"schema_version\":1,\"deep\":{}1{}}}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert!(decode(json.as_bytes(), ContentType::Json).is_err());
    let mut packed = Vec::new();
    packed.push(0x81); // a map of one entry: "deep" → 100 000 nested arrays
    packed.extend(rmp_serde::to_vec("deep").unwrap());
    packed.extend(std::iter::repeat_n(0x91u8, depth));
    packed.push(0x01);
    let err = decode(&packed, ContentType::MessagePack)
        .unwrap_err()
        .to_string();
    assert!(err.contains("depth limit exceeded"), "{err}");
}

#[test]
fn ids_serialize_as_plain_strings_and_refuse_by_rule() {
    assert!(Id::new("a".repeat(MAX_ID_LEN)).is_ok());
    let err = Id::new("a".repeat(MAX_ID_LEN + 1)).unwrap_err().to_string();
    assert!(err.contains(RULE), "{err}");
}

/// Arbitrary JSON-like values, a few levels deep, with keys drawn partly from the envelope's.
fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        Just(Value::from("2025-01-15T02:00:00Z")),
        Just(Value::from("../../x")),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("schema_version".to_owned()),
                    Just("message".to_owned()),
                    Just("type".to_owned()),
                    Just("payload".to_owned()),
                    Just("instance".to_owned()),
                    Just("job_id".to_owned()),
                    "[a-z_]{1,12}",
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces the value at a random path of a valid envelope with an arbitrary one.
fn mutated_envelope() -> impl Strategy<Value = Value> {
    (0usize..64, arb_value()).prop_map(|(pick, replacement)| {
        let mut value = samples()[pick % samples().len()].clone();
        let mut json = serde_json::to_value(&mut value).unwrap();
        let mut paths = Vec::new();
        collect_pointers(&json, String::new(), &mut paths);
        let pointer = &paths[pick % paths.len()];
        if pointer.is_empty() {
            return replacement;
        }
        *json.pointer_mut(pointer).unwrap() = replacement;
        json
    })
}

fn collect_pointers(value: &Value, here: String, out: &mut Vec<String>) {
    out.push(here.clone());
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                collect_pointers(inner, format!("{here}/{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                collect_pointers(inner, format!("{here}/{i}"), out);
            }
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes (up to 64 KiB) never panic the decoder, in either format.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..65_536)) {
        for ct in FORMATS {
            let _ = decode(&bytes, ct);
        }
    }

    /// Bytes that start like an envelope and continue arbitrarily never panic either.
    #[test]
    fn truncated_and_spliced_envelopes_never_panic(cut in 0usize..4096, tail in prop::collection::vec(any::<u8>(), 0..256)) {
        for env in samples().iter().take(3) {
            for ct in FORMATS {
                let mut bytes = encode_as(env, ct);
                bytes.truncate(cut.min(bytes.len()));
                bytes.extend_from_slice(&tail);
                let _ = decode(&bytes, ct);
            }
        }
    }

    /// A valid envelope with one part replaced by an arbitrary structure either decodes or is
    /// refused naming where (a field path or "the body") in both formats.
    #[test]
    fn a_refusal_names_a_field(value in mutated_envelope()) {
        for ct in FORMATS {
            let bytes = body(&value, ct);
            prop_assume!(bytes.len() < 1 << 20);
            match decode(&bytes, ct) {
                Ok(_) | Err(DecodeError::UnsupportedVersion { .. }) | Err(DecodeError::UnknownType { .. }) => {}
                Err(DecodeError::Malformed { reason, .. }) => {
                    let named = reason.starts_with("the body: ")
                        || reason.split_once(": ").is_some_and(|(path, _)| {
                            !path.is_empty()
                                && path.chars().all(|c| c.is_ascii_alphanumeric() || "._[]".contains(c))
                        });
                    prop_assert!(named, "{ct}: {reason}");
                    prop_assert!(reason.len() < 2048, "{ct}: a refusal stays short: {}", reason.len());
                }
            }
        }
    }

    /// Every string either passes the id rule and round-trips, or is refused quoting the rule.
    #[test]
    fn the_id_rule_is_total(s in ".{0,300}") {
        match Id::new(s.clone()) {
            Ok(id) => {
                prop_assert!(!s.is_empty() && s.len() <= MAX_ID_LEN);
                prop_assert!(!s.contains('/') && !s.starts_with('.'));
                let json = serde_json::to_string(&id).unwrap();
                prop_assert_eq!(serde_json::from_str::<Id>(&json).unwrap(), id);
            }
            Err(err) => {
                let text = err.to_string();
                prop_assert!(text.contains(RULE));
                prop_assert!(text.len() < 600);
            }
        }
    }

    /// Ids that follow the rule are accepted.
    #[test]
    fn ids_that_follow_the_rule_are_accepted(s in "[A-Za-z0-9]([A-Za-z0-9._-]{0,200}[A-Za-z0-9])?") {
        prop_assert!(id::validate(&s).is_ok(), "{}", s);
    }
}
