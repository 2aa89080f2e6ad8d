//! Write requests' bodies and query parameters: decoding (JSON or [`crate::protobuf`]), field
//! validation (`fieldValidation`), the field manager (`fieldManager`) and strategic merge
//! patches.
//!
//! Field validation, as a real API server does it when asked:
//! - `Strict`: an object holding a field its type does not define, or a JSON object holding the
//!   same key twice, is refused (400, `strict decoding error: unknown field "spec.foo"`);
//! - `Warn`: such fields are dropped and each is named in a `Warning` header;
//! - `Ignore`, or no parameter: the object is stored as sent (a real server would still drop
//!   unknown fields, and warns by default; the sandbox keeps them, for tests that store odd objects).
//!
//! Which fields a type defines: for built-in types, those of its `k8s-openapi` struct (the
//! object is read into it and written back; whatever did not survive is unknown, and a value of
//! the wrong type is refused, `cannot be handled as a …`); for custom resources, the structural
//! schema of the CRD's version (`properties`, `additionalProperties`, `items`,
//! `x-kubernetes-preserve-unknown-fields`, `x-kubernetes-embedded-resource`,
//! `x-kubernetes-int-or-string`), with `metadata` read as an `ObjectMeta`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use axum::http::{HeaderMap, header};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::protobuf;
use crate::store::{Store, Target};
use crate::types::ResourceType;

/// What `fieldValidation` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Directive {
    Ignore,
    Warn,
    Strict,
}

/// The query parameters of a create, update or patch.
#[derive(Debug, Clone)]
pub(crate) struct WriteParams {
    pub field_manager: Option<String>,
    pub validation: Directive,
}

impl WriteParams {
    pub fn from_query(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        refuse_dry_run(query)?;
        let validation = match query.get("fieldValidation").map(String::as_str) {
            None | Some("" | "Ignore") => Directive::Ignore,
            Some("Warn") => Directive::Warn,
            Some("Strict") => Directive::Strict,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "fieldValidation must be one of Ignore, Warn or Strict, not {other:?}"
                )));
            }
        };
        let field_manager = query.get("fieldManager").filter(|m| !m.is_empty()).cloned();
        if let Some(manager) = &field_manager
            && (manager.len() > 128 || manager.chars().any(char::is_control))
        {
            return Err(ApiError::bad_request(format!(
                "fieldManager {manager:?} is invalid: it must be at most 128 printable characters"
            )));
        }
        Ok(Self {
            field_manager,
            validation,
        })
    }
}

/// Refuses a write asking for a dry run, which the sandbox would otherwise carry out.
pub(crate) fn refuse_dry_run(query: &HashMap<String, String>) -> Result<(), ApiError> {
    if query.contains_key("dryRun") {
        return Err(ApiError::bad_request(
            "the sandbox does not serve dry runs (dryRun): it would really write; leave out \
             --dry-run=server (kubectl's --dry-run=client sends nothing)",
        ));
    }
    Ok(())
}

/// The media type of a request (`Content-Type` without parameters; JSON if absent).
pub(crate) fn media_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or("application/json")
}

/// The object of a create or update, decoded and validated as `params` ask; answers it with the
/// warnings to send.
pub(crate) fn object_body(
    store: &Store,
    target: &Target,
    headers: &HeaderMap,
    body: &[u8],
    params: &WriteParams,
) -> Result<(Value, Vec<String>), ApiError> {
    let (mut object, duplicates) = match media_type(headers) {
        "application/json" => parse_json(body, params.validation != Directive::Ignore)?,
        protobuf::MEDIA_TYPE => (protobuf::decode(target, body)?, Vec::new()),
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    let unknown = match params.validation {
        Directive::Ignore => Vec::new(),
        _ => prune(store, target, &mut object)?,
    };
    let warnings = judge(target, params.validation, &duplicates, &unknown)?;
    Ok((object, warnings))
}

/// The body of a PATCH with media type `media`, checked as `params` ask, and the warnings to
/// send. Unknown fields are looked for in the object the patch makes of `current`; under `Warn`
/// they are taken out of the patch.
pub(crate) fn patch_body(
    store: &Store,
    target: &Target,
    current: &Value,
    media: &str,
    body: &[u8],
    params: &WriteParams,
) -> Result<(Value, Vec<String>), ApiError> {
    let strategic = match media {
        "application/merge-patch+json" => false,
        "application/strategic-merge-patch+json" => true,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    let (mut patch, duplicates) = parse_json(body, params.validation != Directive::Ignore)?;
    if strategic && let Some((path, directive)) = find_directive(&patch, &mut Vec::new()) {
        return Err(ApiError::bad_request(format!(
            "the sandbox applies strategic merge patches as JSON merge patches and cannot apply \
             the directive {directive:?} at {:?}: patch with application/merge-patch+json (lists \
             are then replaced whole) or replace the object (kubectl replace)",
            display(&path)
        )));
    }
    if params.validation == Directive::Ignore || !patch.is_object() {
        return Ok((patch, Vec::new()));
    }
    let mut merged = current.clone();
    json_patch::merge(&mut merged, &patch);
    let unknown: Vec<Vec<String>> = prune_paths(store, target, &mut merged)?
        .into_iter()
        .filter(|path| remove_path(&mut patch, path))
        .collect();
    let unknown: Vec<String> = unknown.iter().map(|p| display(p)).collect();
    let warnings = judge(target, params.validation, &duplicates, &unknown)?;
    Ok((patch, warnings))
}

/// Refuses under `Strict`, answers warnings under `Warn`.
fn judge(
    target: &Target,
    directive: Directive,
    duplicates: &[String],
    unknown: &[String],
) -> Result<Vec<String>, ApiError> {
    let problems: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field {f:?}"))
        .chain(duplicates.iter().map(|f| format!("duplicate field {f:?}")))
        .collect();
    match directive {
        Directive::Strict if !problems.is_empty() => Err(ApiError::bad_request(format!(
            "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
            problems.join(", "),
            kind = target.rt.kind,
            version = target.version,
        ))),
        Directive::Ignore => Ok(Vec::new()),
        _ => Ok(problems),
    }
}

/// Removes the fields `target`'s type does not define from `object`; answers their paths.
fn prune(store: &Store, target: &Target, object: &mut Value) -> Result<Vec<String>, ApiError> {
    Ok(prune_paths(store, target, object)?
        .iter()
        .map(|p| display(p))
        .collect())
}

fn prune_paths(
    store: &Store,
    target: &Target,
    object: &mut Value,
) -> Result<Vec<Vec<String>>, ApiError> {
    let mut unknown = Vec::new();
    if !object.is_object() {
        return Ok(unknown);
    }
    if let Some(kept) = round_trip(target, object)? {
        prune_against(object, &kept, &mut Vec::new(), &mut unknown);
        return Ok(unknown);
    }
    // A custom resource: metadata as ObjectMeta, the rest by the CRD's schema.
    let map = object.as_object_mut().expect("checked");
    if let Some(metadata) = map.get_mut("metadata") {
        let kept = read_back::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(
            &target.rt, metadata,
        )?;
        prune_against(metadata, &kept, &mut vec!["metadata".into()], &mut unknown);
    }
    let Some(schema) = crd_schema(store, target) else {
        return Ok(unknown);
    };
    let keys: Vec<String> = map
        .keys()
        .filter(|k| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
        .cloned()
        .collect();
    let mut rest = Value::Object(
        keys.iter()
            .filter_map(|k| Some((k.clone(), map.remove(k)?)))
            .collect(),
    );
    prune_schema(&mut rest, schema, &mut Vec::new(), &mut unknown);
    if let Value::Object(rest) = rest {
        map.extend(rest);
    }
    Ok(unknown)
}

/// The object as `target`'s `k8s-openapi` type reads and writes it back; `None` for custom
/// resources.
fn round_trip(target: &Target, object: &Value) -> Result<Option<Value>, ApiError> {
    use k8s_openapi::api::admissionregistration::v1 as admission;
    use k8s_openapi::api::apps::v1 as apps;
    use k8s_openapi::api::authorization::v1 as authorization;
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::rbac::v1 as rbac;
    use k8s_openapi::api::storage::v1 as storage;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
    let rt = &target.rt;
    if !rt.is_builtin() || target.version != "v1" {
        return Ok(None);
    }
    // The types check apiVersion and kind; the store checks them against the URL afterwards.
    let mut object = object.clone();
    let api_version = if rt.group.is_empty() {
        "v1".to_owned()
    } else {
        format!("{}/v1", rt.group)
    };
    if object["apiVersion"] != Value::String(api_version.clone())
        || object["kind"] != Value::String(rt.kind.clone())
    {
        if object.get("apiVersion").is_some_and(|v| !v.is_null())
            || object.get("kind").is_some_and(|v| !v.is_null())
        {
            // A mismatch the store refuses with its own message.
            return Ok(Some(object));
        }
        object["apiVersion"] = Value::String(api_version);
        object["kind"] = Value::String(rt.kind.clone());
    }
    let kept = match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Namespace") => read_back::<core::Namespace>(rt, &object)?,
        ("", "ConfigMap") => read_back::<core::ConfigMap>(rt, &object)?,
        ("", "Secret") => read_back::<core::Secret>(rt, &object)?,
        ("", "Service") => read_back::<core::Service>(rt, &object)?,
        ("", "ServiceAccount") => read_back::<core::ServiceAccount>(rt, &object)?,
        ("", "PersistentVolume") => read_back::<core::PersistentVolume>(rt, &object)?,
        ("", "PersistentVolumeClaim") => read_back::<core::PersistentVolumeClaim>(rt, &object)?,
        ("", "Pod") => read_back::<core::Pod>(rt, &object)?,
        ("", "Node") => read_back::<core::Node>(rt, &object)?,
        ("apps", "Deployment") => read_back::<apps::Deployment>(rt, &object)?,
        ("apps", "StatefulSet") => read_back::<apps::StatefulSet>(rt, &object)?,
        ("storage.k8s.io", "StorageClass") => read_back::<storage::StorageClass>(rt, &object)?,
        ("rbac.authorization.k8s.io", "Role") => read_back::<rbac::Role>(rt, &object)?,
        ("rbac.authorization.k8s.io", "RoleBinding") => {
            read_back::<rbac::RoleBinding>(rt, &object)?
        }
        ("rbac.authorization.k8s.io", "ClusterRole") => {
            read_back::<rbac::ClusterRole>(rt, &object)?
        }
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            read_back::<rbac::ClusterRoleBinding>(rt, &object)?
        }
        ("authorization.k8s.io", "SubjectAccessReview") => {
            read_back::<authorization::SubjectAccessReview>(rt, &object)?
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            read_back::<apiextensions::CustomResourceDefinition>(rt, &object)?
        }
        ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration") => {
            read_back::<admission::ValidatingWebhookConfiguration>(rt, &object)?
        }
        ("admissionregistration.k8s.io", "MutatingWebhookConfiguration") => {
            read_back::<admission::MutatingWebhookConfiguration>(rt, &object)?
        }
        _ => return Ok(None),
    };
    Ok(Some(kept))
}

fn read_back<T: serde::de::DeserializeOwned + serde::Serialize>(
    rt: &ResourceType,
    value: &Value,
) -> Result<Value, ApiError> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| {
        ApiError::bad_request(format!(
            "{kind} in version \"v1\" cannot be handled as a {kind}: {e}",
            kind = rt.kind
        ))
    })?;
    Ok(serde_json::to_value(typed).expect("k8s-openapi types serialize"))
}

/// Removes from `value` what is not in `kept` (null values aside: they stand for absence).
fn prune_against(
    value: &mut Value,
    kept: &Value,
    path: &mut Vec<String>,
    unknown: &mut Vec<Vec<String>>,
) {
    match (value, kept) {
        (Value::Object(map), Value::Object(kept)) => {
            map.retain(|key, child| {
                if child.is_null() || kept.contains_key(key) {
                    return true;
                }
                let mut field = path.clone();
                field.push(key.clone());
                unknown.push(field);
                false
            });
            for (key, child) in map.iter_mut() {
                if let Some(kept_child) = kept.get(key) {
                    path.push(key.clone());
                    prune_against(child, kept_child, path, unknown);
                    path.pop();
                }
            }
        }
        (Value::Array(items), Value::Array(kept)) => {
            for (index, (item, kept_item)) in items.iter_mut().zip(kept).enumerate() {
                path.push(format!("[{index}]"));
                prune_against(item, kept_item, path, unknown);
                path.pop();
            }
        }
        _ => {}
    }
}

/// The structural schema of the CRD version `target` is at, if it has one.
fn crd_schema<'a>(store: &'a Store, target: &Target) -> Option<&'a Value> {
    let crd = store.object(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "",
        &format!("{}.{}", target.rt.plural, target.rt.group),
    )?;
    crd.pointer("/spec/versions")?
        .as_array()?
        .iter()
        .find(|v| v["name"] == Value::String(target.version.clone()))?
        .pointer("/schema/openAPIV3Schema")
}

/// Prunes `value` as Kubernetes prunes a custom resource by its structural schema.
fn prune_schema(
    value: &mut Value,
    schema: &Value,
    path: &mut Vec<String>,
    unknown: &mut Vec<Vec<String>>,
) {
    let flag = |name: &str| schema.get(name) == Some(&Value::Bool(true));
    if flag("x-kubernetes-int-or-string") {
        return;
    }
    let preserve = flag("x-kubernetes-preserve-unknown-fields");
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let embedded = flag("x-kubernetes-embedded-resource");
            let free_form = properties.is_none()
                && additional.is_none()
                && schema.get("type").is_none_or(|t| t != "object");
            let keep_unknown = preserve || free_form || additional == Some(&Value::Bool(true));
            map.retain(|key, child| {
                let known = properties.is_some_and(|p| p.contains_key(key))
                    || additional.is_some_and(Value::is_object)
                    || (embedded && matches!(key.as_str(), "apiVersion" | "kind" | "metadata"));
                if known || keep_unknown || child.is_null() {
                    return true;
                }
                let mut field = path.clone();
                field.push(key.clone());
                unknown.push(field);
                false
            });
            for (key, child) in map.iter_mut() {
                let child_schema = properties
                    .and_then(|p| p.get(key))
                    .or(additional.filter(|a| a.is_object()));
                if let Some(child_schema) = child_schema {
                    path.push(key.clone());
                    prune_schema(child, child_schema, path, unknown);
                    path.pop();
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter_mut().enumerate() {
                    path.push(format!("[{index}]"));
                    prune_schema(item, item_schema, path, unknown);
                    path.pop();
                }
            }
        }
        _ => {}
    }
}

/// Removes the field at `path` from `patch`; whether it was there.
fn remove_path(patch: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = patch;
    for segment in parents {
        let next = match segment
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|i| i.parse::<usize>().ok())
        {
            Some(index) => node.get_mut(index),
            None => node.get_mut(segment.as_str()),
        };
        match next {
            Some(next) => node = next,
            None => return false,
        }
    }
    node.as_object_mut()
        .is_some_and(|map| map.remove(last).is_some())
}

/// `spec.rules[0].verbs`, as Kubernetes names a field.
fn display(path: &[String]) -> String {
    let mut out = String::new();
    for segment in path {
        if !out.is_empty() && !segment.starts_with('[') {
            out.push('.');
        }
        out.push_str(segment);
    }
    out
}

/// The first strategic-merge-patch directive in `patch`: its parent's path and its key.
fn find_directive(patch: &Value, path: &mut Vec<String>) -> Option<(Vec<String>, String)> {
    match patch {
        Value::Object(map) => {
            for (key, child) in map {
                if [
                    "$patch",
                    "$retainKeys",
                    "$setElementOrder/",
                    "$deleteFromPrimitiveList/",
                ]
                .iter()
                .any(|d| key == d || (d.ends_with('/') && key.starts_with(d)))
                {
                    return Some((path.clone(), key.clone()));
                }
                path.push(key.clone());
                let found = find_directive(child, path);
                path.pop();
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        Value::Array(items) => items.iter().enumerate().find_map(|(index, item)| {
            path.push(format!("[{index}]"));
            let found = find_directive(item, path);
            path.pop();
            found
        }),
        _ => None,
    }
}

/// Parses a JSON body; with `find_duplicates`, also answers the paths of keys given twice in an
/// object (the last value is kept).
pub(crate) fn parse_json(
    body: &[u8],
    find_duplicates: bool,
) -> Result<(Value, Vec<String>), ApiError> {
    let invalid =
        |e: serde_json::Error| ApiError::bad_request(format!("the body is not valid JSON: {e}"));
    if !find_duplicates {
        return Ok((serde_json::from_slice(body).map_err(invalid)?, Vec::new()));
    }
    let duplicates = RefCell::new(Vec::new());
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = Tracked {
        path: Vec::new(),
        duplicates: &duplicates,
    }
    .deserialize(&mut deserializer)
    .map_err(invalid)?;
    deserializer.end().map_err(invalid)?;
    Ok((value, duplicates.into_inner()))
}

/// Reads a JSON value, noting duplicate keys.
struct Tracked<'a> {
    path: Vec<String>,
    duplicates: &'a RefCell<Vec<String>>,
}

impl Tracked<'_> {
    fn child(&self, segment: String) -> Self {
        let mut path = self.path.clone();
        path.push(segment);
        Tracked {
            path,
            duplicates: self.duplicates,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Tracked<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Tracked<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.child(format!("[{}]", items.len())))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let value = access.next_value_seed(self.child(key.clone()))?;
            if map.insert(key.clone(), value).is_some() {
                let mut path = self.path.clone();
                path.push(key);
                self.duplicates.borrow_mut().push(display(&path));
            }
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn duplicate_keys_are_found_with_their_path() {
        let (value, duplicates) =
            parse_json(br#"{"a": 1, "b": {"c": [{"d": 1, "d": 2}]}, "a": 3}"#, true).unwrap();
        assert_eq!(value, json!({"a": 3, "b": {"c": [{"d": 2}]}}));
        assert_eq!(duplicates, ["b.c[0].d", "a"]);
    }

    #[test]
    fn unknown_fields_of_a_builtin_are_found_and_pruned() {
        let store = Store::new();
        let target = store
            .target("rbac.authorization.k8s.io", "v1", "clusterroles", None)
            .unwrap();
        let mut role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "r", "labelz": {}},
            "rules": [{"verbs": ["get"], "apiGroups": [""], "resourcez": ["pods"]}],
            "extra": 1, "aggregationRule": null,
        });
        let unknown = prune(&store, &target, &mut role).unwrap();
        assert_eq!(unknown, ["extra", "metadata.labelz", "rules[0].resourcez"]);
        assert_eq!(
            role,
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                   "metadata": {"name": "r"}, "rules": [{"verbs": ["get"], "apiGroups": [""]}],
                   "aggregationRule": null})
        );
        let error = judge(&target, Directive::Strict, &[], &unknown).unwrap_err();
        assert!(
            error.message.contains(
                "strict decoding error: unknown field \"extra\", unknown field \"metadata.labelz\""
            ),
            "{error:?}"
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused() {
        let store = Store::new();
        let target = store.target("", "v1", "configmaps", Some("a")).unwrap();
        let mut cm = json!({"metadata": {"name": "x"}, "data": {"a": 1}});
        let error = prune(&store, &target, &mut cm).unwrap_err();
        assert!(
            error
                .message
                .starts_with("ConfigMap in version \"v1\" cannot be handled as a ConfigMap"),
            "{error:?}"
        );
    }

    #[test]
    fn custom_resources_are_pruned_by_their_structural_schema() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {
                "size": {"x-kubernetes-int-or-string": true},
                "tags": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "raw": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            }},
        }});
        let mut value = json!({"spec": {"size": "1Gi", "tags": [{"k": "a", "v": "b"}],
            "labels": {"any": "x"}, "raw": {"any": {"thing": 1}}, "colour": "red"}, "status": {}});
        let mut unknown = Vec::new();
        prune_schema(&mut value, &schema, &mut Vec::new(), &mut unknown);
        let unknown: Vec<String> = unknown.iter().map(|p| display(p)).collect();
        assert_eq!(unknown, ["status", "spec.colour", "spec.tags[0].v"]);
    }

    #[test]
    fn strategic_merge_directives_are_found() {
        let patch = json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "a"}]}}}});
        let (path, directive) = find_directive(&patch, &mut Vec::new()).unwrap();
        assert_eq!(display(&path), "spec.template.spec");
        assert_eq!(directive, "$setElementOrder/containers");
        assert!(find_directive(&json!({"rules": [{"verbs": ["get"]}]}), &mut Vec::new()).is_none());
    }
}
