//! Request bodies in the Kubernetes protobuf encoding (`application/vnd.kubernetes.protobuf`),
//! which kubectl's typed clients send: `kubectl create namespace|serviceaccount|configmap|secret`
//! post protobuf and accept JSON back, and a server cannot make them do otherwise (client-go only
//! falls back from CBOR on a 415, never from protobuf).
//!
//! A body is the magic `k8s\0` and a `runtime.Unknown` envelope whose `raw` bytes are the object.
//! The wire format is prost's; the messages below declare, with the field numbers of Kubernetes'
//! `generated.proto`, the fields kubectl's `create` subcommands fill in for the four kinds decoded
//! here. A body holding any other field is refused rather than stored without it: after decoding,
//! each message is re-encoded, and a shorter result means prost skipped a field not declared here.
//! That check is exact because Go's generated marshallers, like prost with `optional` fields,
//! emit each present field once, and map entries are declared as messages (prost's own maps
//! would leave out empty values that Go writes).
//!
//! Answers stay JSON: kubectl accepts `application/json` alongside protobuf.

use k8s_openapi::ByteString;
use prost::Message;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::store::Target;

/// The media type of Kubernetes protobuf bodies.
pub(crate) const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The four bytes every Kubernetes protobuf body starts with.
const MAGIC: &[u8] = b"k8s\0";

/// `runtime.Unknown`: the envelope.
#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    content_encoding: Option<String>,
    #[prost(string, optional, tag = "4")]
    content_type: Option<String>,
}

/// `runtime.TypeMeta`.
#[derive(Clone, PartialEq, Message)]
struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

/// `meta.v1.Time` (a `google.protobuf.Timestamp`).
#[derive(Clone, PartialEq, Message)]
struct Time {
    #[prost(int64, optional, tag = "1")]
    seconds: Option<i64>,
    #[prost(int32, optional, tag = "2")]
    nanos: Option<i32>,
}

/// One entry of a `map<string, string>`.
#[derive(Clone, PartialEq, Message)]
struct StringEntry {
    #[prost(string, optional, tag = "1")]
    key: Option<String>,
    #[prost(string, optional, tag = "2")]
    value: Option<String>,
}

/// One entry of a `map<string, bytes>`.
#[derive(Clone, PartialEq, Message)]
struct BytesEntry {
    #[prost(string, optional, tag = "1")]
    key: Option<String>,
    #[prost(bytes = "vec", optional, tag = "2")]
    value: Option<Vec<u8>>,
}

/// `meta.v1.ObjectMeta`, without `deletionTimestamp` (9), `deletionGracePeriodSeconds` (10),
/// `ownerReferences` (13) and `managedFields` (17).
#[derive(Clone, PartialEq, Message)]
struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    generate_name: Option<String>,
    #[prost(string, optional, tag = "3")]
    namespace: Option<String>,
    #[prost(string, optional, tag = "4")]
    self_link: Option<String>,
    #[prost(string, optional, tag = "5")]
    uid: Option<String>,
    #[prost(string, optional, tag = "6")]
    resource_version: Option<String>,
    #[prost(int64, optional, tag = "7")]
    generation: Option<i64>,
    #[prost(message, optional, tag = "8")]
    creation_timestamp: Option<Time>,
    #[prost(message, repeated, tag = "11")]
    labels: Vec<StringEntry>,
    #[prost(message, repeated, tag = "12")]
    annotations: Vec<StringEntry>,
    #[prost(string, repeated, tag = "14")]
    finalizers: Vec<String>,
}

/// `core.v1.Namespace`.
#[derive(Clone, PartialEq, Message)]
struct Namespace {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<NamespaceSpec>,
    #[prost(message, optional, tag = "3")]
    status: Option<NamespaceStatus>,
}

#[derive(Clone, PartialEq, Message)]
struct NamespaceSpec {
    #[prost(string, repeated, tag = "1")]
    finalizers: Vec<String>,
}

/// `core.v1.NamespaceStatus`, without `conditions` (2).
#[derive(Clone, PartialEq, Message)]
struct NamespaceStatus {
    #[prost(string, optional, tag = "1")]
    phase: Option<String>,
}

/// `core.v1.ServiceAccount`, without `secrets` (2).
#[derive(Clone, PartialEq, Message)]
struct ServiceAccount {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, repeated, tag = "3")]
    image_pull_secrets: Vec<LocalObjectReference>,
    #[prost(bool, optional, tag = "4")]
    automount_service_account_token: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct LocalObjectReference {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
}

/// `core.v1.ConfigMap`.
#[derive(Clone, PartialEq, Message)]
struct ConfigMap {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, repeated, tag = "2")]
    data: Vec<StringEntry>,
    #[prost(message, repeated, tag = "3")]
    binary_data: Vec<BytesEntry>,
    #[prost(bool, optional, tag = "4")]
    immutable: Option<bool>,
}

/// `core.v1.Secret`.
#[derive(Clone, PartialEq, Message)]
struct Secret {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, repeated, tag = "2")]
    data: Vec<BytesEntry>,
    #[prost(string, optional, tag = "3")]
    r#type: Option<String>,
    #[prost(message, repeated, tag = "4")]
    string_data: Vec<StringEntry>,
    #[prost(bool, optional, tag = "5")]
    immutable: Option<bool>,
}

/// The kinds whose protobuf bodies the sandbox decodes (all in the core group, `v1`).
pub(crate) const DECODED_KINDS: [&str; 4] = ["Namespace", "ServiceAccount", "ConfigMap", "Secret"];

/// Decodes a protobuf body sent to `target` into the JSON object it stands for.
pub(crate) fn decode(target: &Target, body: &[u8]) -> Result<Value, ApiError> {
    let kind = &target.rt.kind;
    if !(target.rt.group.is_empty() && DECODED_KINDS.contains(&kind.as_str())) {
        return Err(unsupported(&format!(
            "the sandbox decodes protobuf bodies only for {}; send this {kind} as JSON \
             (Content-Type: application/json)",
            DECODED_KINDS.join(", ")
        )));
    }
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("the body does not start with the protobuf magic \"k8s\\0\""))?;
    let unknown: Unknown = strict_decode(envelope, "runtime.Unknown")?;
    if let Some(encoding) = unknown
        .content_encoding
        .as_deref()
        .filter(|e| !e.is_empty())
    {
        return Err(bad(&format!(
            "the protobuf envelope's contentEncoding {encoding:?} is not supported"
        )));
    }
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let given_kind = type_meta.kind.unwrap_or_default();
    if api_version != target.version || given_kind != *kind {
        return Err(bad(&format!(
            "the body holds {api_version} {given_kind}, but the URL is for v1 {kind}"
        )));
    }
    let raw = unknown.raw.unwrap_or_default();
    let what = format!("v1 {kind}");
    let mut object = match kind.as_str() {
        "Namespace" => {
            let ns: Namespace = strict_decode(&raw, &what)?;
            let mut spec = Map::new();
            let finalizers = ns.spec.unwrap_or_default().finalizers;
            if !finalizers.is_empty() {
                spec.insert("finalizers".into(), json!(finalizers));
            }
            let mut status = Map::new();
            if let Some(phase) = ns.status.and_then(|s| s.phase).filter(|p| !p.is_empty()) {
                status.insert("phase".into(), json!(phase));
            }
            json!({"metadata": metadata(ns.metadata), "spec": spec, "status": status})
        }
        "ServiceAccount" => {
            let sa: ServiceAccount = strict_decode(&raw, &what)?;
            let mut object = json!({"metadata": metadata(sa.metadata)});
            if !sa.image_pull_secrets.is_empty() {
                let names: Vec<Value> = sa
                    .image_pull_secrets
                    .into_iter()
                    .map(|r| json!({"name": r.name.unwrap_or_default()}))
                    .collect();
                object["imagePullSecrets"] = json!(names);
            }
            if let Some(automount) = sa.automount_service_account_token {
                object["automountServiceAccountToken"] = json!(automount);
            }
            object
        }
        "ConfigMap" => {
            let cm: ConfigMap = strict_decode(&raw, &what)?;
            let mut object = json!({"metadata": metadata(cm.metadata)});
            put_map(&mut object, "data", strings(cm.data));
            put_map(&mut object, "binaryData", bytes(cm.binary_data));
            if let Some(immutable) = cm.immutable {
                object["immutable"] = json!(immutable);
            }
            object
        }
        _ => {
            let secret: Secret = strict_decode(&raw, &what)?;
            let mut object = json!({"metadata": metadata(secret.metadata)});
            put_map(&mut object, "data", bytes(secret.data));
            put_map(&mut object, "stringData", strings(secret.string_data));
            if let Some(kind) = secret.r#type.filter(|t| !t.is_empty()) {
                object["type"] = json!(kind);
            }
            if let Some(immutable) = secret.immutable {
                object["immutable"] = json!(immutable);
            }
            object
        }
    };
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(given_kind);
    Ok(object)
}

/// Decodes `bytes` as `M`, refusing it if it holds a field `M` does not declare.
fn strict_decode<M: Message + Default>(bytes: &[u8], what: &str) -> Result<M, ApiError> {
    let message = M::decode(bytes)
        .map_err(|e| bad(&format!("the protobuf body is not a valid {what}: {e}")))?;
    if message.encoded_len() != bytes.len() {
        return Err(bad(&format!(
            "the protobuf {what} holds a field the sandbox does not decode (it reads the fields \
             kubectl create fills in: name, generateName, namespace, labels, annotations, \
             finalizers and the kind's own data); send the object as JSON instead"
        )));
    }
    Ok(message)
}

fn metadata(meta: Option<ObjectMeta>) -> Value {
    let meta = meta.unwrap_or_default();
    let mut out = Map::new();
    for (field, value) in [
        ("name", meta.name),
        ("generateName", meta.generate_name),
        ("namespace", meta.namespace),
        ("selfLink", meta.self_link),
        ("uid", meta.uid),
        ("resourceVersion", meta.resource_version),
    ] {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            out.insert(field.into(), json!(value));
        }
    }
    if let Some(generation) = meta.generation.filter(|g| *g != 0) {
        out.insert("generation".into(), json!(generation));
    }
    // creationTimestamp is set by the server; a client's value is ignored, as it is for JSON.
    for (field, entries) in [("labels", meta.labels), ("annotations", meta.annotations)] {
        let map = strings(entries);
        if !map.is_empty() {
            out.insert(field.into(), Value::Object(map));
        }
    }
    if !meta.finalizers.is_empty() {
        out.insert("finalizers".into(), json!(meta.finalizers));
    }
    Value::Object(out)
}

fn strings(entries: Vec<StringEntry>) -> Map<String, Value> {
    entries
        .into_iter()
        .map(|e| {
            (
                e.key.unwrap_or_default(),
                json!(e.value.unwrap_or_default()),
            )
        })
        .collect()
}

/// Byte values as the JSON encoding writes them: base64.
fn bytes(entries: Vec<BytesEntry>) -> Map<String, Value> {
    entries
        .into_iter()
        .map(|e| {
            let value = serde_json::to_value(ByteString(e.value.unwrap_or_default()))
                .expect("bytes serialize");
            (e.key.unwrap_or_default(), value)
        })
        .collect()
}

fn put_map(object: &mut Value, field: &str, map: Map<String, Value>) {
    if !map.is_empty() {
        object[field] = Value::Object(map);
    }
}

fn bad(message: &str) -> ApiError {
    ApiError::bad_request(message.to_owned())
}

fn unsupported(message: &str) -> ApiError {
    let mut error = ApiError::unsupported_media_type(MEDIA_TYPE);
    error.message = format!("{}: {message}", error.message);
    error
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// What `kubectl create namespace stowage` sends (captured from kubectl v1.32).
    const CREATE_NAMESPACE: &[u8] = b"k8s\x00\n\x0f\n\x02v1\x12\tNamespace\x12\x1f\n\x17\n\x07stowage\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x12\x00\x1a\x02\n\x00\x1a\x00\"\x00";

    fn target(plural: &str, namespace: Option<&str>) -> Target {
        Store::new().target("", "v1", plural, namespace).unwrap()
    }

    #[test]
    fn kubectl_create_namespace_decodes() {
        let object = decode(&target("namespaces", None), CREATE_NAMESPACE).unwrap();
        assert_eq!(
            object,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "stowage"}, "spec": {}, "status": {}})
        );
    }

    #[test]
    fn a_field_not_declared_here_is_refused() {
        // The namespace's metadata with field 13 (ownerReferences: one empty entry) appended.
        let mut meta = ObjectMeta {
            name: Some("x".into()),
            ..Default::default()
        }
        .encode_to_vec();
        meta.extend([0x6a, 0x00]);
        let mut raw = vec![0x0a, u8::try_from(meta.len()).unwrap()];
        raw.extend(meta);
        let body = [
            MAGIC,
            &Unknown {
                type_meta: Some(TypeMeta {
                    api_version: Some("v1".into()),
                    kind: Some("Namespace".into()),
                }),
                raw: Some(raw),
                ..Default::default()
            }
            .encode_to_vec(),
        ]
        .concat();
        let error = decode(&target("namespaces", None), &body).unwrap_err();
        assert!(error.message.contains("does not decode"), "{error:?}");
    }

    #[test]
    fn the_kind_must_match_the_url_and_be_decoded() {
        let error = decode(&target("serviceaccounts", Some("a")), CREATE_NAMESPACE).unwrap_err();
        assert!(
            error.message.contains("URL is for v1 ServiceAccount"),
            "{error:?}"
        );
        let error = decode(&target("pods", Some("a")), CREATE_NAMESPACE).unwrap_err();
        assert_eq!(error.code.as_u16(), 415, "{error:?}");
    }
}
