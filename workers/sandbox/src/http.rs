//! The HTTP face of the sandbox: Kubernetes REST paths parsed by hand, since one generic
//! handler serves every resource type (including CRDs registered at run time).

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::Sandbox;
use crate::error::ApiError;
use crate::exec::{ExecBody, ExecRecord, SANDBOX_EXEC_GROUP};
use crate::rbac;
use crate::store::{ListOptions, Store};
use crate::watch::{self, WatchRequest};
use stowage_cluster::ExecOutput;
use stowage_schemas::selector::LabelSelector;

pub(crate) fn router(sandbox: Sandbox) -> Router {
    Router::new().fallback(handle).with_state(sandbox)
}

async fn handle(
    State(sandbox): State<Sandbox>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    // A watch streams, so it is answered here rather than as one JSON value by `route`.
    let result = match watch_request(&sandbox, &method, &uri, &headers) {
        Some(Ok(response)) => return response,
        Some(Err(error)) => Err(error),
        None => route(&sandbox, &method, &uri, &headers, &body).await,
    };
    match result {
        Ok((code, value)) => (code, axum::Json(value)).into_response(),
        Err(error) => {
            tracing::debug!(%method, %path, code = error.code.as_u16(), reason = error.reason, "sandbox request refused");
            error.into_response()
        }
    }
}

type Answer = Result<(StatusCode, Value), ApiError>;

/// `GET` with `watch=true|1` on a resource path: a list path, or one object's path (watched
/// as its list with `fieldSelector=metadata.name=…`). `None` for every other request.
fn watch_request(
    sandbox: &Sandbox,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<Result<Response, ApiError>> {
    let query: HashMap<String, String> = Query::try_from_uri(uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    if method != Method::GET || !query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return None;
    }
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        [plural] => (None, *plural, None),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        _ => return None,
    };
    Some((|| {
        let mut options = list_options(&query)?;
        if let Some(name) = name {
            options
                .field_selector
                .push(("metadata.name".to_owned(), name.to_owned(), true));
        }
        let subscription = sandbox.with_store(|store| {
            let target = store.target(group, version, plural, namespace)?;
            let request = WatchRequest::new(target, options, &query, wants_table(headers))?;
            Ok::<_, ApiError>(store.watch(request))
        })?;
        Ok(watch::stream(subscription))
    })())
}

async fn route(
    sandbox: &Sandbox,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Answer {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let ok = |v| Ok((StatusCode::OK, v));
    match segments.as_slice() {
        ["version"] => ok(sandbox.with_store(|s| version(s.version()))),
        ["api"] => ok(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": sandbox.address_hint()}],
        })),
        ["apis"] => ok(sandbox.with_store(api_group_list)),
        ["api", version] => sandbox.with_store(|s| resource_list(s, "", version)),
        ["apis", group] => sandbox
            .with_store(|s| api_group(s, group))
            .map(|v| (StatusCode::OK, v)),
        ["apis", group, version] => sandbox.with_store(|s| resource_list(s, group, version)),
        [
            "apis",
            SANDBOX_EXEC_GROUP,
            "v1",
            "namespaces",
            ns,
            "pods",
            pod,
            "exec",
        ] if method == Method::POST => exec(sandbox, ns, pod, body).await,
        ["apis", "authorization.k8s.io", "v1", "subjectaccessreviews"]
            if method == Method::POST =>
        {
            subject_access_review(sandbox, body)
        }
        ["api", version, rest @ ..] => {
            resource(sandbox, method, uri, headers, body, "", version, rest)
        }
        ["apis", group, version, rest @ ..] => {
            resource(sandbox, method, uri, headers, body, group, version, rest)
        }
        _ => Err(ApiError::no_such_resource()),
    }
}

fn version((major, minor): (&str, &str)) -> Value {
    json!({
        "major": major,
        "minor": minor,
        "gitVersion": format!("v{major}.{minor}.0-stowage-sandbox"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "none (stowage sandbox)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

/// Groups other than core, each with the versions its types serve, preferred first.
fn groups(store: &Store) -> Vec<(String, Vec<String>)> {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for rt in store.types().filter(|t| !t.group.is_empty()) {
        let index = match groups.iter().position(|(g, _)| *g == rt.group) {
            Some(i) => i,
            None => {
                groups.push((rt.group.clone(), Vec::new()));
                groups.len() - 1
            }
        };
        for v in &rt.versions {
            if !groups[index].1.contains(v) {
                groups[index].1.push(v.clone());
            }
        }
    }
    groups
}

fn group_json(group: &str, versions: &[String]) -> Value {
    let gv = |v: &String| json!({"groupVersion": format!("{group}/{v}"), "version": v});
    json!({
        "name": group,
        "versions": versions.iter().map(gv).collect::<Vec<_>>(),
        "preferredVersion": gv(&versions[0]),
    })
}

fn api_group_list(store: &Store) -> Value {
    let groups: Vec<Value> = groups(store)
        .iter()
        .map(|(g, vs)| group_json(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn api_group(store: &Store, group: &str) -> Result<Value, ApiError> {
    let groups = groups(store);
    let (name, versions) = groups
        .iter()
        .find(|(g, _)| g == group)
        .ok_or_else(ApiError::no_such_resource)?;
    let mut value = group_json(name, versions);
    value["kind"] = json!("APIGroup");
    value["apiVersion"] = json!("v1");
    Ok(value)
}

fn resource_list(store: &Store, group: &str, version: &str) -> Answer {
    let resources: Vec<Value> = store
        .types()
        .filter(|t| t.group == group && t.versions.iter().any(|v| v == version))
        .map(|t| {
            json!({
                "name": t.plural,
                "singularName": t.singular,
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                "shortNames": t.short_names,
                "categories": categories(&t.group, &t.plural),
            })
        })
        .collect();
    if resources.is_empty() {
        return Err(ApiError::no_such_resource());
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Ok((
        StatusCode::OK,
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    ))
}

/// `kubectl get all` lists the types in the `all` category.
fn categories(group: &str, plural: &str) -> Vec<&'static str> {
    match (group, plural) {
        ("", "pods" | "services") | ("apps", "deployments" | "statefulsets") => vec!["all"],
        _ => Vec::new(),
    }
}

#[allow(clippy::too_many_arguments)]
fn resource(
    sandbox: &Sandbox,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Answer {
    let (namespace, plural, name) = match rest {
        [plural] => (None, *plural, None),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        _ => {
            return Err(ApiError::no_such_resource());
        }
    };
    let query: HashMap<String, String> = Query::try_from_uri(uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    sandbox.with_store_mut(|store| {
        let target = store.target(group, version, plural, namespace)?;
        let ok = |v| Ok((StatusCode::OK, v));
        match (method, name) {
            (&Method::GET, None) => {
                let list = store.list(&target, &list_options(&query)?)?;
                if wants_table(headers) {
                    ok(table(list))
                } else {
                    ok(list)
                }
            }
            (&Method::GET, Some(name)) => {
                let object = store.get(&target, name)?;
                if wants_table(headers) {
                    ok(table(json!({"metadata": {}, "items": [object]})))
                } else {
                    ok(object)
                }
            }
            (&Method::POST, None) => Ok((
                StatusCode::CREATED,
                store.create(&target, json_body(body)?)?,
            )),
            (&Method::PUT, Some(name)) => ok(store.update(&target, name, json_body(body)?)?),
            (&Method::PATCH, Some(name)) => {
                let content_type = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let media = content_type.split(';').next().unwrap_or_default().trim();
                match media {
                    // Strategic merge is served as a plain merge patch: close enough for the
                    // label and annotation patches kubectl sends, but lists are replaced whole.
                    "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                        ok(store.merge_patch(&target, name, &json_body(body)?)?)
                    }
                    other => Err(ApiError::unsupported_media_type(other)),
                }
            }
            (&Method::DELETE, Some(name)) => {
                let options = if body.is_empty() {
                    json!({})
                } else {
                    json_body(body)?
                };
                ok(store.delete(&target, name, &options)?)
            }
            (method, _) => Err(ApiError::method_not_allowed(format!(
                "the sandbox does not serve {method} on this path"
            ))),
        }
    })
}

fn list_options(query: &HashMap<String, String>) -> Result<ListOptions, ApiError> {
    let label_selector =
        LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut field_selector = Vec::new();
    for part in query
        .get("fieldSelector")
        .map_or("", String::as_str)
        .split(',')
        .filter(|p| !p.trim().is_empty())
    {
        let (field, value, equal) = if let Some((f, v)) = part.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            (f, v, true)
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid field selector {part:?}"
            )));
        };
        let field = field.trim();
        if !matches!(field, "metadata.name" | "metadata.namespace") {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {field}"
            )));
        }
        field_selector.push((field.to_owned(), value.trim().to_owned(), equal));
    }
    let limit = match query.get("limit") {
        Some(l) => Some(
            l.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        ),
        None => None,
    };
    Ok(ListOptions {
        label_selector,
        field_selector,
        limit,
        continue_after: query.get("continue").filter(|c| !c.is_empty()).cloned(),
    })
}

fn json_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

/// kubectl asks for server-side printing (`as=Table`); the sandbox answers with name and age.
fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept
                .split(',')
                .next()
                .is_some_and(|first| first.contains("as=Table"))
        })
}

pub(crate) fn table(list: Value) -> Value {
    let rows: Vec<Value> = list["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|object| {
            let name = object["metadata"]["name"].clone();
            let created = object["metadata"]["creationTimestamp"].clone();
            let mut partial = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": object["metadata"].clone(),
            });
            if let Some(metadata) = partial["metadata"].as_object_mut() {
                metadata.remove("managedFields");
            }
            json!({"cells": [name, created], "object": partial})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": list["metadata"]["resourceVersion"].clone(), "continue": list["metadata"]["continue"].clone()},
        "columnDefinitions": [
            {"name": "Name", "type": "string", "format": "name", "description": "Name of the object", "priority": 0},
            {"name": "Created At", "type": "date", "format": "", "description": "When the object was created", "priority": 0},
        ],
        "rows": rows,
    })
}

/// Answers a `SubjectAccessReview` from the RBAC objects in the sandbox (see [`super::rbac`]).
/// Nothing is stored, as on a real API server.
fn subject_access_review(sandbox: &Sandbox, body: &Bytes) -> Answer {
    let review = json_body(body)?;
    let request = rbac::AccessRequest::from_review(&review).map_err(|message| {
        ApiError::bad_request(format!("invalid SubjectAccessReview: {message}"))
    })?;
    let decision = sandbox.with_store(|store| rbac::evaluate(store, &request));
    Ok((StatusCode::CREATED, rbac::answer(review, &decision)))
}

async fn exec(sandbox: &Sandbox, namespace: &str, pod: &str, body: &Bytes) -> Answer {
    let request: ExecBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid exec request: {e}")))?;
    let record = ExecRecord {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        container: request.container,
        command: request.command,
    };
    let script = sandbox.with_store_mut(|store| store.exec(namespace, pod, record))?;
    if script.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(script.delay_ms)).await;
    }
    let output = ExecOutput {
        exit_code: script.exit_code,
        stdout: script.stdout,
        stderr: script.stderr,
    };
    Ok((
        StatusCode::OK,
        serde_json::to_value(output).expect("plain data serializes"),
    ))
}
