//! The HTTP face of the sandbox: Kubernetes REST paths parsed by hand, since one generic
//! handler serves every resource type (including CRDs registered at run time).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::Sandbox;
use crate::auth::{Credentials, RequestAttributes};
use crate::error::ApiError;
use crate::store::{ListOptions, Store};
use crate::validation::{self, WriteParams};
use crate::watch::{self, WatchRequest};
use crate::{openapi, rbac};
use stowage_schemas::selector::LabelSelector;

/// What every request handler shares: the cluster, and who may use it.
#[derive(Clone)]
struct Served {
    sandbox: Sandbox,
    credentials: Arc<Credentials>,
}

pub(crate) fn router(sandbox: Sandbox, credentials: Arc<Credentials>) -> Router {
    let served = Served {
        sandbox: sandbox.clone(),
        credentials,
    };
    Router::new()
        // A websocket upgrade, so it needs the request itself (see `crate::exec`).
        .route(
            "/api/v1/namespaces/{namespace}/pods/{pod}/exec",
            axum::routing::any(crate::exec::serve).with_state(sandbox),
        )
        .fallback(handle)
        .layer(axum::middleware::from_fn_with_state(
            served.clone(),
            authorize,
        ))
        .with_state(served)
}

/// Authenticates (bearer token: 401 without a known one) and authorizes through the stored
/// RBAC objects (403 worded as the API server words it) every request, exec upgrades included.
async fn authorize(
    State(Served {
        sandbox,
        credentials,
    }): State<Served>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let Some(identity) = credentials.authenticate(request.headers()) else {
        tracing::debug!(%method, %path, "sandbox request without a valid token");
        return ApiError::unauthorized().into_response();
    };
    let attributes = RequestAttributes::from_request(&method, &path, request.uri().query());
    if !attributes.is_discovery() {
        let decision =
            sandbox.with_store(|s| rbac::evaluate(s, &attributes.access_request(identity)));
        if !decision.allowed {
            let error = attributes.forbidden(&identity.user);
            tracing::debug!(%method, %path, user = identity.user, message = error.message, "sandbox request forbidden");
            return error.into_response();
        }
    }
    next.run(request).await
}

/// Serves a request [`authorize`] let through.
async fn handle(
    State(Served { sandbox, .. }): State<Served>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let mut warnings = Vec::new();
    // A watch streams, so it is answered here rather than as one JSON value by `route`.
    let result = match watch_request(&sandbox, &method, &uri, &headers) {
        Some(Ok(response)) => return response,
        Some(Err(error)) => Err(error),
        None => route(&sandbox, &method, &uri, &headers, &body, &mut warnings).await,
    };
    match result {
        Ok((code, value)) => {
            let mut response = (code, axum::Json(value)).into_response();
            for warning in warnings {
                // RFC 7234 warn-code 299 ("miscellaneous persistent warning"), as Kubernetes sends.
                let text = format!("299 - {}", serde_json::Value::String(warning));
                if let Ok(value) = header::HeaderValue::from_str(&text) {
                    response.headers_mut().append(header::WARNING, value);
                }
            }
            response
        }
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
    warnings: &mut Vec<String>,
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
        ["openapi", "v3"] => ok(sandbox.with_store(openapi::root)),
        ["openapi", "v3", "api", version] => sandbox
            .with_store(|s| openapi::group_version(s, "", version))
            .map(|v| (StatusCode::OK, v)),
        ["openapi", "v3", "apis", group, version] => sandbox
            .with_store(|s| openapi::group_version(s, group, version))
            .map(|v| (StatusCode::OK, v)),
        ["apis", "authorization.k8s.io", "v1", "subjectaccessreviews"]
            if method == Method::POST =>
        {
            subject_access_review(sandbox, body)
        }
        ["api", version, rest @ ..] => {
            let request = (method, uri, headers, body);
            resource(sandbox, request, "", version, rest, warnings)
        }
        ["apis", group, version, rest @ ..] => {
            let request = (method, uri, headers, body);
            resource(sandbox, request, group, version, rest, warnings)
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

fn resource(
    sandbox: &Sandbox,
    (method, uri, headers, body): (&Method, &Uri, &HeaderMap, &Bytes),
    group: &str,
    version: &str,
    rest: &[&str],
    warnings: &mut Vec<String>,
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
            (&Method::POST, None) => {
                let params = WriteParams::from_query(&query)?;
                let (object, warned) =
                    validation::object_body(store, &target, headers, body, &params)?;
                let created = store.create(&target, object)?;
                warnings.extend(warned);
                Ok((
                    StatusCode::CREATED,
                    store.record_manager(&target, created, &params),
                ))
            }
            (&Method::PUT, Some(name)) => {
                let params = WriteParams::from_query(&query)?;
                let (object, warned) =
                    validation::object_body(store, &target, headers, body, &params)?;
                let updated = store.update(&target, name, object)?;
                warnings.extend(warned);
                ok(store.record_manager(&target, updated, &params))
            }
            (&Method::PATCH, Some(name)) => {
                let params = WriteParams::from_query(&query)?;
                let current = store.get(&target, name)?;
                let media = validation::media_type(headers);
                let (patch, warned) =
                    validation::patch_body(store, &target, &current, media, body, &params)?;
                let patched = store.merge_patch(&target, name, &patch)?;
                warnings.extend(warned);
                ok(store.record_manager(&target, patched, &params))
            }
            (&Method::DELETE, Some(name)) => {
                validation::refuse_dry_run(&query)?;
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
