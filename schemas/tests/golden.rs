//! Golden fixtures and published JSON Schemas: any change to the wire format shows up as a
//! changed checked-in file in review.
//!
//! Regenerate both with `STOWAGE_BLESS=1 cargo test -p stowage-schemas`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use stowage_schemas::{ContentType, Envelope, decode, encode, encode_as, json_schema, samples};

fn bless() -> bool {
    std::env::var_os("STOWAGE_BLESS").is_some_and(|v| v == "1")
}

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// Checks (or, when blessing, writes) that `dir` holds exactly `files`.
fn check_dir(dir: &Path, files: &[(String, Vec<u8>)]) {
    let expected: BTreeSet<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    if bless() {
        fs::create_dir_all(dir).unwrap();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if !expected.contains(name.as_str()) {
                fs::remove_file(&path).unwrap();
            }
        }
        for (name, bytes) in files {
            fs::write(dir.join(name), bytes).unwrap();
        }
        return;
    }
    let stale = "stale: run STOWAGE_BLESS=1 cargo test -p stowage-schemas and review the diff";
    let present: BTreeSet<String> = fs::read_dir(dir)
        .unwrap_or_else(|err| panic!("{}: {err}; {stale}", dir.display()))
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    let present: BTreeSet<&str> = present.iter().map(String::as_str).collect();
    assert_eq!(
        present,
        expected,
        "{}: unexpected set of files; {stale}",
        dir.display()
    );
    for (name, bytes) in files {
        let path = dir.join(name);
        let on_disk = fs::read(&path).unwrap();
        assert!(
            on_disk == *bytes,
            "{} differs from the generated file; {stale}",
            path.display()
        );
    }
}

#[test]
fn fixtures_match_the_samples_byte_for_byte() {
    let samples = samples::samples();
    let mut files = Vec::new();
    for env in &samples {
        let mut json = serde_json::to_vec_pretty(env).unwrap();
        json.push(b'\n');
        files.push((format!("{}.msgpack", env.kind()), encode(env)));
        files.push((format!("{}.json", env.kind()), json));
    }
    let fixtures = dir("fixtures");
    check_dir(&fixtures, &files);

    // And the checked-in bytes decode back to the samples.
    for env in &samples {
        let check = |ext: &str, ct: ContentType| {
            let bytes = fs::read(fixtures.join(format!("{}.{ext}", env.kind()))).unwrap();
            let decoded: Envelope = decode(&bytes, ct).unwrap();
            assert_eq!(&decoded, env, "{}.{ext}", env.kind());
        };
        check("msgpack", ContentType::MessagePack);
        check("json", ContentType::Json);
        // The compact JSON encoding says the same as the pretty twin.
        let pretty = fs::read(fixtures.join(format!("{}.json", env.kind()))).unwrap();
        let compact = encode_as(env, ContentType::Json);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&pretty).unwrap(),
            serde_json::from_slice::<serde_json::Value>(&compact).unwrap(),
        );
    }
}

#[test]
fn json_schemas_are_up_to_date() {
    let files: Vec<(String, Vec<u8>)> = json_schema::files()
        .into_iter()
        .map(|(name, text)| (name, text.into_bytes()))
        .collect();
    assert!(files.iter().any(|(name, _)| name == "envelope.schema.json"));
    assert!(
        files
            .iter()
            .any(|(name, _)| name == "job.snapshot.schema.json")
    );
    check_dir(&dir("json"), &files);
}

#[test]
fn schemas_describe_the_samples() {
    // A light check without a validator: every payload's required fields are present in the
    // sample, and the envelope schema lists every message type.
    let envelope = fs::read_to_string(dir("json").join("envelope.schema.json"))
        .unwrap_or_else(|_| json_schema::files()[0].1.clone());
    for kind in stowage_schemas::Message::KINDS {
        assert!(
            envelope.contains(&format!("\"{kind}\"")),
            "envelope schema lacks {kind}"
        );
    }
    for env in samples::samples() {
        let schema = json_schema::payload(env.kind()).unwrap().to_value();
        let payload = serde_json::to_value(&env.message).unwrap()["payload"].clone();
        for field in schema["required"].as_array().into_iter().flatten() {
            let field = field.as_str().unwrap();
            assert!(
                payload.get(field).is_some(),
                "{}: sample lacks {field}",
                env.kind()
            );
        }
    }
}
