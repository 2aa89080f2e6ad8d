//! An ARM stand-in for managed disks, written from the public REST reference, not from the
//! client: the DiskRP 2023-10-02 specification and its examples (Disks/Snapshots CreateOrUpdate,
//! Get, Delete, GrantAccess, RevokeAccess), the permissions API (2022-04-01) and ARM's rules for
//! asynchronous operations ("Track asynchronous Azure operations"):
//!
//! - a PUT answers 200/201 with the resource (`provisioningState` not yet `Succeeded`) and an
//!   `Azure-AsyncOperation` URL, or 202 with only a `Location` URL;
//! - DELETE answers 202 (or 200), and 204 when there is nothing to delete;
//! - `beginGetAccess` answers 202 with `Location` (and `Azure-AsyncOperation`); the `Location`
//!   URL answers 202 while running and then 200 with `{"accessSAS": …}`;
//! - the `Azure-AsyncOperation` URL answers 200 with `status` `InProgress`, then `Succeeded`
//!   (with `properties.output`) or `Failed` (with `error`);
//! - every polling answer carries `Retry-After` (seconds);
//! - errors are `{"error":{"code","message"}}`: 401 `AuthenticationFailed`, 403
//!   `AuthorizationFailed` (ARM's message naming the client, action and scope), 404
//!   `ResourceNotFound`, 400 `InvalidApiVersionParameter`/`InvalidParameter`, 409
//!   `OperationNotAllowed`, 429 `TooManyRequests`, 503 `ServiceUnavailable`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub const TOKEN: &str = "test-token";
pub const SUBSCRIPTION: &str = "00000000-0000-0000-0000-000000000001";
pub const PRINCIPAL: &str = "11111111-2222-3333-4444-555555555555";

/// How the server runs long-running operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LroStyle {
    /// 201/202 with `Azure-AsyncOperation` (and `Location` for POST/DELETE).
    AsyncOperation,
    /// 202 with `Location` only.
    LocationOnly,
    /// 200/201 with the body only; a PUT's resource stays `Updating` for a few GETs.
    BodyOnly,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub client_request_id: Option<String>,
    pub body: Value,
}

enum Effect {
    Succeed(String),
    Remove(String),
    Grant(String, String),
    Revoke(String),
}

struct Operation {
    remaining: u32,
    effect: Option<Effect>,
    failure: Option<(String, String)>,
    result: Option<Value>,
    done: bool,
}

pub struct State {
    base: String,
    pub resources: BTreeMap<String, Value>,
    operations: HashMap<String, Operation>,
    pending_gets: HashMap<String, u32>,
    pub requests: Vec<Seen>,
    pub style: LroStyle,
    /// Polls answered "in progress" before an operation finishes.
    pub polls: u32,
    /// `Retry-After` on polling answers and throttling.
    pub retry_after: u64,
    /// Statuses (429, 503) answered, in order, before serving the next requests.
    pub throttle: VecDeque<u16>,
    /// Actions refused with 403.
    pub denied: Vec<String>,
    /// The next operation ends `Failed` with this code and message.
    pub fail_next: Option<(String, String)>,
    /// Permissions per scope (lower case), as the permissions API lists them.
    pub permissions: BTreeMap<String, Vec<Value>>,
    /// Resources (lower-case ids) with a SAS granted, and its access.
    pub grants: BTreeMap<String, String>,
    /// SAS URL handed out for a resource (lower-case id); a made-up one otherwise.
    pub sas: BTreeMap<String, String>,
    next_id: u64,
}

pub type Shared = Arc<Mutex<State>>;

pub struct ArmServer {
    pub url: String,
    pub state: Shared,
}

impl ArmServer {
    pub async fn start() -> ArmServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            base: url.clone(),
            resources: BTreeMap::new(),
            operations: HashMap::new(),
            pending_gets: HashMap::new(),
            requests: Vec::new(),
            style: LroStyle::AsyncOperation,
            polls: 1,
            retry_after: 0,
            throttle: VecDeque::new(),
            denied: Vec::new(),
            fail_next: None,
            permissions: BTreeMap::new(),
            grants: BTreeMap::new(),
            sas: BTreeMap::new(),
            next_id: 0,
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        ArmServer { url, state }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Adds a managed disk as a cluster's CSI driver would have made it.
    pub fn add_disk(
        &self,
        group: &str,
        name: &str,
        size: u64,
        network_access_policy: &str,
    ) -> String {
        let id = format!(
            "/subscriptions/{SUBSCRIPTION}/resourceGroups/{group}/providers/Microsoft.Compute/disks/{name}"
        );
        let disk = json!({
            "id": id, "name": name, "type": "Microsoft.Compute/disks", "location": "westeurope",
            "sku": {"name": "Premium_LRS", "tier": "Premium"},
            "properties": {
                "creationData": {"createOption": "Empty"},
                "diskSizeGB": size >> 30, "diskSizeBytes": size,
                "provisioningState": "Succeeded", "diskState": "Attached",
                "networkAccessPolicy": network_access_policy, "publicNetworkAccess": "Enabled",
            }
        });
        self.lock().resources.insert(id.to_lowercase(), disk);
        id
    }

    /// Requests seen whose path ends with `suffix` (case-insensitive), by method.
    pub fn seen(&self, method: &str, suffix: &str) -> Vec<Seen> {
        let suffix = suffix.to_lowercase();
        self.lock()
            .requests
            .iter()
            .filter(|r| r.method == method && r.path.to_lowercase().ends_with(&suffix))
            .cloned()
            .collect()
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json!({"error": {"code": code, "message": message}}).to_string(),
    )
        .into_response()
}

fn json_response(
    status: StatusCode,
    body: &Value,
    headers: Vec<(&'static str, String)>,
) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let h = response.headers_mut();
    h.insert("content-type", "application/json".parse().unwrap());
    for (k, v) in headers {
        h.insert(k, v.parse().unwrap());
    }
    response
}

fn empty(status: StatusCode, headers: Vec<(&'static str, String)>) -> Response {
    let mut response = status.into_response();
    for (k, v) in headers {
        response.headers_mut().insert(k, v.parse().unwrap());
    }
    response
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_owned())
    })
}

async fn handle(
    AxState(state): AxState<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or("").to_owned();
    let mut s = state.lock().unwrap();
    s.requests.push(Seen {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        authorization: header("authorization"),
        client_request_id: header("x-ms-client-request-id"),
        body: body.clone(),
    });

    if header("authorization").as_deref() != Some(&format!("Bearer {TOKEN}")) {
        return error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing or invalid.",
        );
    }
    if let Some(status) = s.throttle.pop_front() {
        let retry = s.retry_after.to_string();
        let (code, message) = if status == 429 {
            (
                "TooManyRequests",
                "The request is being throttled as the limit has been reached for operation type - Read_30Min.",
            )
        } else {
            (
                "ServiceUnavailable",
                "The service is temporarily unavailable.",
            )
        };
        let mut r = error(StatusCode::from_u16(status).unwrap(), code, message);
        r.headers_mut()
            .insert("retry-after", retry.parse().unwrap());
        return r;
    }
    let lower = path.to_lowercase();
    if lower.contains("/providers/microsoft.compute/locations/") && lower.contains("/operations/") {
        let id = path.rsplit('/').next().unwrap_or("").to_owned();
        let monitor = query_param(&query, "monitor").is_some();
        return poll(&mut s, &id, monitor);
    }
    if lower.ends_with("/providers/microsoft.authorization/permissions") {
        if query_param(&query, "api-version").as_deref() != Some("2022-04-01") {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidApiVersionParameter",
                "The api-version is invalid for Microsoft.Authorization.",
            );
        }
        let scope = lower
            .trim_end_matches("/providers/microsoft.authorization/permissions")
            .to_owned();
        let entries = s.permissions.get(&scope).cloned().unwrap_or_default();
        // One entry a page, so that paging through nextLink is exercised.
        let skip: usize = query_param(&query, "$skipToken")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut page = json!({"value": entries.get(skip).cloned().into_iter().collect::<Vec<_>>()});
        if skip + 1 < entries.len() {
            page["nextLink"] = json!(format!(
                "{}{}?api-version=2022-04-01&$skipToken={}",
                s.base,
                path,
                skip + 1
            ));
        }
        return json_response(StatusCode::OK, &page, vec![]);
    }
    compute(&mut s, &method, &path, &query, &body)
}

fn compute(s: &mut State, method: &Method, path: &str, query: &str, body: &Value) -> Response {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if parts.len() == 7
        && method == Method::GET
        && parts[5].eq_ignore_ascii_case("Microsoft.Compute")
    {
        return list(s, &parts, query);
    }
    if parts.len() < 8 || !parts[5].eq_ignore_ascii_case("Microsoft.Compute") {
        return error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            &format!("The resource type could not be found for {path}."),
        );
    }
    let version = query_param(query, "api-version").unwrap_or_default();
    if version != "2023-10-02" {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            &format!(
                "The api-version '{version}' is invalid. The supported versions are '2023-10-02'."
            ),
        );
    }
    let (kind, name, group) = (parts[6].to_lowercase(), parts[7], parts[3]);
    let id = format!(
        "/subscriptions/{}/resourceGroups/{group}/providers/Microsoft.Compute/{kind}/{name}",
        parts[1]
    );
    let key = id.to_lowercase();
    let action_of = |verb: &str| format!("Microsoft.Compute/{kind}/{verb}");
    let action = match (method.as_str(), parts.get(8).copied()) {
        ("GET", None) => action_of("read"),
        ("PUT", None) | ("PATCH", None) => action_of("write"),
        ("DELETE", None) => action_of("delete"),
        ("POST", Some("beginGetAccess")) => action_of("beginGetAccess/action"),
        ("POST", Some("endGetAccess")) => action_of("endGetAccess/action"),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "NotFound",
                "No HTTP resource was found that matches the request.",
            );
        }
    };
    if s.denied.iter().any(|d| d.eq_ignore_ascii_case(&action)) {
        return error(
            StatusCode::FORBIDDEN,
            "AuthorizationFailed",
            &format!(
                "The client 'stowage-test' with object id '{PRINCIPAL}' does not have authorization to perform action '{action}' over scope '{id}' or the scope is invalid. If access was recently granted, please refresh your credentials."
            ),
        );
    }
    let not_found = || {
        error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!(
                "The Resource 'Microsoft.Compute/{kind}/{name}' under resource group '{group}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
            ),
        )
    };
    match action.rsplit_once('/').map(|(_, v)| v).unwrap_or("") {
        "read" => {
            let Some(resource) = s.resources.get(&key).cloned() else {
                return not_found();
            };
            let mut resource = resource;
            if let Some(n) = s.pending_gets.get_mut(&key) {
                if *n == 0 {
                    resource["properties"]["provisioningState"] = json!("Succeeded");
                    s.resources.insert(key.clone(), resource.clone());
                    s.pending_gets.remove(&key);
                } else {
                    *n -= 1;
                }
            }
            json_response(StatusCode::OK, &resource, vec![])
        }
        "write" if method == Method::PATCH => {
            let Some(resource) = s.resources.get_mut(&key) else {
                return not_found();
            };
            if let Some(tags) = body.get("tags") {
                resource["tags"] = tags.clone();
            }
            let resource = resource.clone();
            if s.style == LroStyle::BodyOnly {
                return json_response(StatusCode::OK, &resource, vec![]);
            }
            start(s, Some(Effect::Succeed(key)), None, true)
        }
        "write" => put(s, &kind, name, &id, &key, body),
        "delete" => {
            if !s.resources.contains_key(&key) {
                return empty(StatusCode::NO_CONTENT, vec![]);
            }
            if s.grants.contains_key(&key) {
                return error(
                    StatusCode::CONFLICT,
                    "OperationNotAllowed",
                    &format!(
                        "The {kind} '{name}' cannot be deleted while it has an active SAS; call endGetAccess first."
                    ),
                );
            }
            start(s, Some(Effect::Remove(key)), None, false)
        }
        "action" if action.ends_with("beginGetAccess/action") => {
            let Some(resource) = s.resources.get(&key).cloned() else {
                return not_found();
            };
            let access = body.get("access").and_then(Value::as_str).unwrap_or("");
            if body
                .get("durationInSeconds")
                .and_then(Value::as_u64)
                .is_none()
                || !["Read", "Write"].contains(&access)
            {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InvalidParameter",
                    "Required parameters 'access' and 'durationInSeconds' are missing or invalid.",
                );
            }
            let state = resource["properties"]["diskState"].as_str().unwrap_or("");
            if access == "Write" && state != "ReadyToUpload" {
                return error(
                    StatusCode::CONFLICT,
                    "OperationNotAllowed",
                    &format!(
                        "Write access can only be granted to a disk in state ReadyToUpload; '{name}' is {state}."
                    ),
                );
            }
            let sas = s.sas.get(&key).cloned().unwrap_or_else(|| {
                format!("https://md-test.z1.blob.storage.azure.net/abcd/{name}?sv=2018-03-28&sr=b&si=x&sig=SECRETSIG")
            });
            start(
                s,
                Some(Effect::Grant(key, access.to_owned())),
                Some(json!({"accessSAS": sas})),
                false,
            )
        }
        _ => {
            if !s.resources.contains_key(&key) {
                return not_found();
            }
            start(s, Some(Effect::Revoke(key)), None, false)
        }
    }
}

fn put(s: &mut State, kind: &str, name: &str, id: &str, key: &str, body: &Value) -> Response {
    let Some(location) = body.get("location").and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "LocationRequired",
            "The location property is required for this definition.",
        );
    };
    let creation = &body["properties"]["creationData"];
    s.next_id += 1;
    let created = format!(
        "2026-11-30T10:{:02}:{:02}.000000+00:00",
        s.next_id / 60 % 60,
        s.next_id % 60
    );
    let mut properties = json!({"creationData": creation.clone(), "provisioningState": "Updating", "timeCreated": created});
    match creation.get("createOption").and_then(Value::as_str) {
        Some("Copy") => {
            let source = creation
                .get("sourceResourceId")
                .and_then(Value::as_str)
                .unwrap_or("");
            let Some(src) = s.resources.get(&source.to_lowercase()).cloned() else {
                return error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("Resource {source} is not found."),
                );
            };
            for k in [
                "diskSizeBytes",
                "diskSizeGB",
                "networkAccessPolicy",
                "publicNetworkAccess",
            ] {
                properties[k] = src["properties"][k].clone();
            }
            if kind == "snapshots" {
                properties["incremental"] = body["properties"]["incremental"].clone();
            } else {
                properties["diskState"] = json!("Unattached");
            }
        }
        Some("Upload") if kind == "disks" => {
            let size = creation
                .get("uploadSizeBytes")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            // A fixed VHD: whole MiB of data plus the 512-byte footer, at least 20 MiB.
            if size < (20 << 20) + 512 || !(size - 512).is_multiple_of(1 << 20) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InvalidParameter",
                    &format!(
                        "The specified uploadSizeBytes {size} is invalid: it must be a multiple of 1 MiB plus 512 bytes, at least 20 MiB + 512."
                    ),
                );
            }
            properties["diskSizeBytes"] = json!(size - 512);
            properties["diskState"] = json!("ReadyToUpload");
            properties["networkAccessPolicy"] = json!("AllowAll");
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidParameter",
                "creationData.createOption is missing or not supported here.",
            );
        }
    }
    let existed = s.resources.contains_key(key);
    let resource = json!({
        "id": id, "name": name, "type": format!("Microsoft.Compute/{kind}"), "location": location,
        "tags": body.get("tags").cloned().unwrap_or(json!({})),
        "sku": body.get("sku").cloned().unwrap_or(json!({"name": "Standard_LRS"})),
        "properties": properties,
    });
    s.resources.insert(key.to_owned(), resource.clone());
    let created = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    match s.style {
        LroStyle::BodyOnly => {
            let polls = s.polls;
            s.pending_gets.insert(key.to_owned(), polls);
            json_response(created, &resource, vec![])
        }
        _ => {
            let mut r = start(s, Some(Effect::Succeed(key.to_owned())), None, true);
            if s.style == LroStyle::AsyncOperation {
                *r.status_mut() = created;
                let body = resource.to_string();
                let (parts, _) = r.into_parts();
                let mut r = Response::from_parts(parts, axum::body::Body::from(body));
                r.headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                return r;
            }
            r
        }
    }
}

/// GET of a collection: `…/providers/Microsoft.Compute/{disks|snapshots}`, one resource a
/// page so that `nextLink` paging is exercised.
fn list(s: &mut State, parts: &[&str], query: &str) -> Response {
    let prefix = format!(
        "/subscriptions/{}/resourcegroups/{}/providers/microsoft.compute/{}/",
        parts[1], parts[3], parts[6]
    )
    .to_lowercase();
    let all: Vec<Value> = s
        .resources
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| v.clone())
        .collect();
    let skip: usize = query_param(query, "$skipToken")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut page = json!({"value": all.get(skip).cloned().into_iter().collect::<Vec<_>>()});
    if skip + 1 < all.len() {
        page["nextLink"] = json!(format!(
            "{}/{}?api-version=2023-10-02&$skipToken={}",
            s.base,
            parts.join("/"),
            skip + 1
        ));
    }
    json_response(StatusCode::OK, &page, vec![])
}

/// Starts an operation and answers the way the server's style says.
fn start(s: &mut State, effect: Option<Effect>, result: Option<Value>, is_put: bool) -> Response {
    if s.style == LroStyle::BodyOnly && !is_put {
        // Finish at once: 200 with the result (or nothing).
        if let Some(effect) = effect {
            apply(s, effect);
        }
        return match result {
            Some(result) => json_response(StatusCode::OK, &result, vec![]),
            None => empty(StatusCode::OK, vec![]),
        };
    }
    s.next_id += 1;
    let id = format!("op-{}", s.next_id);
    let failure = s.fail_next.take();
    s.operations.insert(
        id.clone(),
        Operation {
            remaining: s.polls,
            effect,
            failure,
            result,
            done: false,
        },
    );
    let base = format!(
        "{}/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Compute/locations/westeurope/operations/{id}",
        s.base
    );
    let mut headers = vec![
        (
            "location",
            format!("{base}?monitor=true&api-version=2023-10-02"),
        ),
        ("retry-after", s.retry_after.to_string()),
    ];
    if s.style == LroStyle::AsyncOperation {
        headers.push((
            "azure-asyncoperation",
            format!("{base}?api-version=2023-10-02"),
        ));
        if is_put {
            headers.retain(|(k, _)| *k != "location");
        }
    }
    empty(StatusCode::ACCEPTED, headers)
}

fn apply(s: &mut State, effect: Effect) {
    match effect {
        Effect::Succeed(key) => {
            if let Some(r) = s.resources.get_mut(&key) {
                r["properties"]["provisioningState"] = json!("Succeeded");
            }
        }
        Effect::Remove(key) => {
            s.resources.remove(&key);
        }
        Effect::Grant(key, access) => {
            if let Some(r) = s.resources.get_mut(&key) {
                let state = if access == "Write" {
                    "ActiveUpload"
                } else {
                    "ActiveSAS"
                };
                r["properties"]["diskState"] = json!(state);
            }
            s.grants.insert(key, access);
        }
        Effect::Revoke(key) => {
            if let Some(r) = s.resources.get_mut(&key) {
                let uploaded = r["properties"]["diskState"] == "ActiveUpload";
                r["properties"]["diskState"] =
                    json!(if uploaded { "Unattached" } else { "Reserved" });
            }
            s.grants.remove(&key);
        }
    }
}

fn poll(s: &mut State, id: &str, monitor: bool) -> Response {
    let retry = s.retry_after.to_string();
    let Some(op) = s.operations.get_mut(id) else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("Operation {id} was not found."),
        );
    };
    if op.remaining > 0 {
        op.remaining -= 1;
        return if monitor {
            let location = format!(
                "{}/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Compute/locations/westeurope/operations/{id}?monitor=true&api-version=2023-10-02",
                s.base
            );
            empty(
                StatusCode::ACCEPTED,
                vec![("location", location), ("retry-after", retry)],
            )
        } else {
            json_response(
                StatusCode::OK,
                &json!({"name": id, "status": "InProgress", "startTime": "2026-11-30T10:00:00Z"}),
                vec![("retry-after", retry)],
            )
        };
    }
    let failure = op.failure.clone();
    let result = op.result.clone();
    let effect = if op.done { None } else { op.effect.take() };
    op.done = true;
    if let (None, Some(effect)) = (&failure, effect) {
        apply(s, effect);
    }
    match (failure, monitor) {
        (Some((code, message)), false) => json_response(
            StatusCode::OK,
            &json!({"name": id, "status": "Failed", "error": {"code": code, "message": message}}),
            vec![],
        ),
        (Some((code, message)), true) => error(StatusCode::BAD_REQUEST, &code, &message),
        (None, false) => {
            let mut body = json!({"name": id, "status": "Succeeded", "startTime": "2026-11-30T10:00:00Z", "endTime": "2026-11-30T10:00:01Z"});
            if let Some(result) = result {
                body["properties"] = json!({"output": result});
            }
            json_response(StatusCode::OK, &body, vec![])
        }
        (None, true) => match result {
            Some(result) => json_response(StatusCode::OK, &result, vec![]),
            None => empty(StatusCode::NO_CONTENT, vec![]),
        },
    }
}
