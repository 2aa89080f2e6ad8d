//! OpenAPI v3 discovery (`/openapi/v3` and one document per group-version), as far as a client
//! needs it to learn which operations and query parameters the sandbox serves.
//!
//! kubectl reads these documents before `apply` and `create -f` with its default validation
//! (`--validate=strict`): it looks for the PATCH operation of each object's kind, and if that
//! operation lists the `fieldValidation` query parameter it leaves validation to the server
//! (`fieldValidation=Strict`, see [`crate::validation`]); otherwise it validates on the client
//! against the OpenAPI v2 document, which the sandbox does not serve.
//!
//! The documents describe paths, operations, parameters and request media types: only what the
//! sandbox really serves. They carry no schemas (`components.schemas` is empty), so kubectl
//! computes strategic merge patches from the types compiled into it, as it does for any server
//! whose documents lack a kind.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::protobuf;
use crate::store::Store;
use crate::types::ResourceType;

/// `GET /openapi/v3`: where each group-version's document is.
pub(crate) fn root(store: &Store) -> Value {
    let mut paths = Map::new();
    for (group, version) in group_versions(store) {
        let doc = document(store, &group, &version);
        let path = api_path(&group, &version);
        let mut hasher = DefaultHasher::new();
        doc.to_string().hash(&mut hasher);
        paths.insert(
            path.trim_start_matches('/').to_owned(),
            json!({"serverRelativeURL": format!("/openapi/v3{path}?hash={:016X}", hasher.finish())}),
        );
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/api/v1` or `/openapi/v3/apis/{group}/{version}`.
pub(crate) fn group_version(store: &Store, group: &str, version: &str) -> Result<Value, ApiError> {
    if group_versions(store)
        .iter()
        .any(|(g, v)| g == group && v == version)
    {
        Ok(document(store, group, version))
    } else {
        Err(ApiError::no_such_resource())
    }
}

fn group_versions(store: &Store) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for rt in store.types() {
        for version in &rt.versions {
            let gv = (rt.group.clone(), version.clone());
            if !out.contains(&gv) {
                out.push(gv);
            }
        }
    }
    out
}

fn api_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    }
}

fn document(store: &Store, group: &str, version: &str) -> Value {
    let prefix = api_path(group, version);
    let mut paths = Map::new();
    for rt in store
        .types()
        .filter(|t| t.group == group && t.versions.iter().any(|v| v == version))
    {
        let gvk = json!({"group": group, "version": version, "kind": rt.kind});
        let op = |action: &str, verb: &str, scope: &str, params: Vec<Value>| {
            let mut op = json!({
                "operationId": match scope {
                    "ForAllNamespaces" => format!("{verb}{}{}{scope}", camel(group, version), rt.kind),
                    _ => format!("{verb}{}{scope}{}", camel(group, version), rt.kind),
                },
                "parameters": params,
                "responses": {"200": {"description": "OK", "content": {"application/json": {}}}},
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
            });
            if let Some(content) = request_media(rt, action) {
                op["requestBody"] = json!({"required": true, "content": content});
            }
            if action == "post" {
                op["responses"]["201"] =
                    json!({"description": "Created", "content": {"application/json": {}}});
            }
            op
        };
        let (collection, scope) = if rt.namespaced {
            (
                format!("{prefix}/namespaces/{{namespace}}/{}", rt.plural),
                "Namespaced",
            )
        } else {
            (format!("{prefix}/{}", rt.plural), "")
        };
        let namespace = rt.namespaced.then(|| path_param("namespace"));
        if rt.group == "authorization.k8s.io" && rt.plural == "subjectaccessreviews" {
            // Reviews are only ever created (and answered, never stored).
            paths.insert(
                collection,
                json!({"post": op("post", "create", "", Vec::new())}),
            );
            continue;
        }
        if rt.namespaced {
            paths.insert(
                format!("{prefix}/{}", rt.plural),
                json!({"get": op("list", "list", "ForAllNamespaces", list_params())}),
            );
        }
        let mut item = Map::new();
        item.insert("get".into(), op("get", "read", scope, Vec::new()));
        item.insert("put".into(), op("put", "replace", scope, write_params()));
        item.insert("patch".into(), op("patch", "patch", scope, write_params()));
        item.insert("delete".into(), op("delete", "delete", scope, Vec::new()));
        let name_params: Vec<Value> = namespace
            .iter()
            .cloned()
            .chain([path_param("name")])
            .collect();
        item.insert("parameters".into(), json!(name_params));
        paths.insert(format!("{collection}/{{name}}"), Value::Object(item));
        let mut list = json!({
            "get": op("list", "list", scope, list_params()),
            "post": op("post", "create", scope, write_params()),
        });
        if let Some(namespace) = namespace {
            list["parameters"] = json!([namespace]);
        }
        paths.insert(collection, list);
    }
    json!({
        "openapi": "3.0.0",
        "info": {
            "title": "Kubernetes (Stowage sandbox)",
            "version": "v1.33.0",
            "description": "The operations and parameters the Stowage sandbox serves; no schemas.",
        },
        "paths": paths,
        "components": {"schemas": {}},
    })
}

/// The media types a request body may have, for actions that take one.
fn request_media(rt: &ResourceType, action: &str) -> Option<Value> {
    let mut types = match action {
        "post" | "put" => vec!["application/json"],
        // Strategic merge patches are served as merge patches (lists replaced whole), and
        // refused if they hold strategic-merge directives; see `validation`.
        "patch" if rt.is_builtin() => vec![
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ],
        "patch" => vec!["application/merge-patch+json"],
        _ => return None,
    };
    if matches!(action, "post" | "put")
        && rt.group.is_empty()
        && protobuf::DECODED_KINDS.contains(&rt.kind.as_str())
    {
        types.push(protobuf::MEDIA_TYPE);
    }
    Some(Value::Object(
        types
            .into_iter()
            .map(|t| (t.to_owned(), json!({"schema": {"type": "object"}})))
            .collect(),
    ))
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}})
}

fn query_param(name: &str, kind: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": kind, "uniqueItems": true}})
}

fn list_params() -> Vec<Value> {
    vec![
        query_param(
            "labelSelector",
            "string",
            "Only objects whose labels match (every operator).",
        ),
        query_param(
            "fieldSelector",
            "string",
            "Only objects whose metadata.name or metadata.namespace match.",
        ),
        query_param("limit", "integer", "At most this many objects per page."),
        query_param(
            "continue",
            "string",
            "The token of the previous page, to read the next one.",
        ),
    ]
}

fn write_params() -> Vec<Value> {
    vec![
        query_param(
            "fieldManager",
            "string",
            "The name recorded as the writer in managedFields (at most 128 printable characters).",
        ),
        query_param(
            "fieldValidation",
            "string",
            "Strict: refuse an object holding unknown or duplicate fields. Warn: accept it, drop \
             unknown fields, answer a Warning header for each. Ignore (the default here): accept \
             it as it is.",
        ),
    ]
}

/// `CoreV1`, `AppsV1`, `RbacAuthorizationV1`: as Kubernetes' operation ids name a group-version.
fn camel(group: &str, version: &str) -> String {
    let group = if group.is_empty() {
        "core"
    } else {
        group.trim_end_matches(".k8s.io")
    };
    group
        .split(['.', '-'])
        .chain([version])
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}
