//! The sandbox's cluster state: resource types, objects and the resource-version counter.
//!
//! Objects are kept as JSON, keyed by (group, plural) and then (namespace, name), so custom
//! resources need no Rust types. One global counter issues resource versions, as etcd's
//! revision does. Every operation is a plain method that takes the lock-holder's `&mut self`;
//! the HTTP layer (`http.rs`) only parses requests and renders answers.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::exec::ExecRecord;
use crate::types::{ResourceType, builtin_types};
use crate::watch::{self, Backlog, Change, ChangeKind, Hub, Subscription, WatchRequest};
use stowage_schemas::selector::LabelSelector;

/// (group, plural): one bucket per resource type, shared by all its served versions.
pub(crate) type TypeKey = (String, String);
/// (namespace, name); the namespace is empty for cluster-scoped objects.
pub(crate) type ObjectKey = (String, String);

/// The Kubernetes version a new sandbox claims to be, as `(major, minor)`.
pub const DEFAULT_VERSION: (&str, &str) = ("1", "33");

/// Annotation on a pod: the exit code sandbox exec reports (default 0).
pub const EXEC_EXIT_CODE_ANNOTATION: &str = "sandbox.stowage.io/exec-exit-code";
/// Annotation on a pod: milliseconds sandbox exec takes before answering (default 0).
pub const EXEC_DELAY_MS_ANNOTATION: &str = "sandbox.stowage.io/exec-delay-ms";
/// Annotation on a pod: the standard output sandbox exec reports (default empty).
pub const EXEC_STDOUT_ANNOTATION: &str = "sandbox.stowage.io/exec-stdout";
/// Annotation on a pod: the standard error sandbox exec reports (default empty).
pub const EXEC_STDERR_ANNOTATION: &str = "sandbox.stowage.io/exec-stderr";
/// Annotation on a pod: `"true"` makes sandbox exec drop the connection after the output,
/// without an exit status, as a lost connection looks to the client.
pub const EXEC_HANG_UP_ANNOTATION: &str = "sandbox.stowage.io/exec-hang-up";

/// Where a request points: a resource type at one of its versions, maybe in a namespace.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub rt: ResourceType,
    pub version: String,
    pub namespace: Option<String>,
}

impl Target {
    pub fn api_version(&self) -> String {
        if self.rt.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.rt.group, self.version)
        }
    }

    pub fn type_key(&self) -> TypeKey {
        (self.rt.group.clone(), self.rt.plural.clone())
    }

    /// An object as served at the requested version.
    pub fn render(&self, object: &Value) -> Value {
        let mut object = object.clone();
        object["apiVersion"] = json!(self.api_version());
        object
    }
}

/// Options of a list request.
#[derive(Debug, Default)]
pub(crate) struct ListOptions {
    pub label_selector: LabelSelector,
    /// `(field, value, equal)` from `fieldSelector`; only `metadata.name` and `metadata.namespace`.
    pub field_selector: Vec<(String, String, bool)>,
    pub limit: Option<usize>,
    pub continue_after: Option<String>,
}

impl ListOptions {
    /// Whether the object under `key` matches the label and field selectors.
    pub fn selects(&self, (ns, name): &ObjectKey, object: &Value) -> bool {
        self.label_selector.matches_object(object)
            && self.field_selector.iter().all(|(field, value, equal)| {
                let actual = if field == "metadata.name" { name } else { ns };
                (actual == value) == *equal
            })
    }
}

/// What a sandbox exec answers, scripted by the pod's annotations.
#[derive(Debug)]
pub(crate) struct ExecScript {
    pub exit_code: i32,
    pub delay_ms: u64,
    pub stdout: String,
    pub stderr: String,
    pub hang_up: bool,
}

/// The whole cluster.
#[derive(Debug)]
pub(crate) struct Store {
    resource_version: u64,
    builtins: Vec<ResourceType>,
    crd_types: Vec<ResourceType>,
    objects: BTreeMap<TypeKey, BTreeMap<ObjectKey, Value>>,
    exec_log: Vec<ExecRecord>,
    /// `(major, minor)` answered on `/version`.
    version: (String, String),
    /// Recent changes and the channel watches follow.
    watch: Hub,
}

impl Store {
    /// An empty cluster with the namespaces every cluster has.
    pub fn new() -> Self {
        let mut store = Self {
            resource_version: 0,
            builtins: builtin_types(),
            crd_types: Vec::new(),
            objects: BTreeMap::new(),
            exec_log: Vec::new(),
            version: (DEFAULT_VERSION.0.to_owned(), DEFAULT_VERSION.1.to_owned()),
            watch: Hub::new(),
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            store
                .create_object(
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                )
                .expect("built-in namespaces are valid");
        }
        store
    }

    /// The current resource version (the last one issued).
    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    /// The Kubernetes version `/version` answers, as `(major, minor)`.
    pub fn version(&self) -> (&str, &str) {
        (&self.version.0, &self.version.1)
    }

    /// Changes the version `/version` answers (to test version checks).
    pub fn set_version(&mut self, major: &str, minor: &str) {
        self.version = (major.to_owned(), minor.to_owned());
    }

    /// Every stored object of one type (`group`, `plural`), as stored (no `apiVersion` rewrite),
    /// ordered by namespace and name.
    pub fn objects_of(&self, group: &str, plural: &str) -> impl Iterator<Item = &Value> {
        self.objects
            .get(&(group.to_owned(), plural.to_owned()))
            .into_iter()
            .flat_map(BTreeMap::values)
    }

    /// One stored object; `namespace` is empty for cluster-scoped types.
    pub fn object(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(group.to_owned(), plural.to_owned()))?
            .get(&(namespace.to_owned(), name.to_owned()))
    }

    /// Every known resource type: built-ins first, then those of registered CRDs.
    pub fn types(&self) -> impl Iterator<Item = &ResourceType> {
        self.builtins.iter().chain(&self.crd_types)
    }

    /// Resolves `group/version/plural` to a served type.
    pub fn target(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        namespace: Option<&str>,
    ) -> Result<Target, ApiError> {
        let rt = self
            .types()
            .find(|t| {
                t.group == group && t.plural == plural && t.versions.iter().any(|v| v == version)
            })
            .ok_or_else(ApiError::no_such_resource)?;
        if namespace.is_some() && !rt.namespaced {
            return Err(ApiError::no_such_resource());
        }
        Ok(Target {
            rt: rt.clone(),
            version: version.to_owned(),
            namespace: namespace.map(str::to_owned),
        })
    }

    /// Creates an object given only its JSON, finding its type from `apiVersion` and `kind`.
    pub fn create_object(&mut self, object: Value) -> Result<Value, ApiError> {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let rt = self
            .types()
            .find(|t| t.group == group && t.kind == kind && t.versions.iter().any(|v| v == version))
            .ok_or_else(|| {
                ApiError::bad_request(format!("no resource type for {api_version} {kind}"))
            })?
            .clone();
        let namespace = rt.namespaced.then(|| {
            object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_owned()
        });
        let target = Target {
            rt,
            version: version.to_owned(),
            namespace,
        };
        self.create(&target, object)
    }

    pub fn list(&self, target: &Target, options: &ListOptions) -> Result<Value, ApiError> {
        let empty = BTreeMap::new();
        let bucket = self.objects.get(&target.type_key()).unwrap_or(&empty);
        let start = match &options.continue_after {
            None => Bound::Unbounded,
            Some(token) => {
                let (ns, name) = token.split_once('/').ok_or_else(|| {
                    ApiError::bad_request(format!("invalid continue token {token:?}"))
                })?;
                Bound::Excluded((ns.to_owned(), name.to_owned()))
            }
        };
        let mut matching = bucket
            .range((start, Bound::Unbounded))
            .filter(|(key, object)| {
                target.namespace.as_ref().is_none_or(|want| *want == key.0)
                    && options.selects(key, object)
            })
            .peekable();
        let limit = options.limit.filter(|&l| l > 0).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut last_key = None;
        while items.len() < limit {
            let Some((key, object)) = matching.next() else {
                break;
            };
            items.push(target.render(object));
            last_key = Some(key);
        }
        let mut metadata = json!({"resourceVersion": self.resource_version.to_string()});
        if matching.peek().is_some() {
            let remaining = matching.count();
            let (ns, name) = last_key.expect("a full page has a last item");
            metadata["continue"] = json!(format!("{ns}/{name}"));
            metadata["remainingItemCount"] = json!(remaining);
        }
        Ok(json!({
            "apiVersion": target.api_version(),
            "kind": format!("{}List", target.rt.kind),
            "metadata": metadata,
            "items": items,
        }))
    }

    pub fn get(&self, target: &Target, name: &str) -> Result<Value, ApiError> {
        let key = object_key(target, name)?;
        self.objects
            .get(&target.type_key())
            .and_then(|bucket| bucket.get(&key))
            .map(|object| target.render(object))
            .ok_or_else(|| ApiError::not_found(&target.rt, name))
    }

    pub fn create(&mut self, target: &Target, mut object: Value) -> Result<Value, ApiError> {
        self.check_shape(target, &mut object)?;
        let metadata = object["metadata"].as_object_mut().expect("checked shape");
        if metadata
            .get("resourceVersion")
            .is_some_and(|rv| !rv.is_null())
        {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = match metadata.get("name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => match metadata.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => {
                    let name = format!("{prefix}{}", random_suffix());
                    metadata.insert("name".into(), json!(name));
                    name
                }
                _ => {
                    return Err(ApiError::invalid(
                        &target.rt,
                        "",
                        "metadata.name",
                        "FieldValueRequired",
                        "Required value: name or generateName is required",
                    ));
                }
            },
        };
        validate_name(&target.rt, &name)?;
        if let Some(ns) = &target.namespace
            && !self.exists("", "namespaces", "", ns)
        {
            return Err(ApiError::namespace_not_found(ns));
        }
        let key = object_key(target, &name)?;
        if self
            .objects
            .get(&target.type_key())
            .is_some_and(|b| b.contains_key(&key))
        {
            return Err(ApiError::already_exists(&target.rt, &name));
        }
        if target.rt.is_crd() {
            validate_crd(&target.rt, &name, &object)?;
        }
        let rv = self.next_resource_version();
        let metadata = object["metadata"].as_object_mut().expect("checked shape");
        metadata.insert("uid".into(), json!(new_uid()));
        metadata.insert("resourceVersion".into(), json!(rv));
        metadata.insert("creationTimestamp".into(), json!(now()));
        metadata.insert("generation".into(), json!(1));
        let created = self.store(target, key, object, &name)?;
        if target.rt.group.is_empty()
            && matches!(
                target.rt.plural.as_str(),
                "persistentvolumes" | "persistentvolumeclaims"
            )
            && self.bind_static(&created)
        {
            return self.get(target, &name);
        }
        Ok(created)
    }

    /// What a cluster's PV controller does for a claim that names its volume: once the claim
    /// (`spec.volumeName`) and that PV (with no `claimRef`, or one naming the claim) both exist,
    /// both become `Bound`, each write a change watchers see. Answers whether it bound them.
    fn bind_static(&mut self, object: &Value) -> bool {
        let text = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
        let (claim_ns, claim_name, volume) = match object["kind"].as_str() {
            Some("PersistentVolumeClaim") => (
                text(object, "/metadata/namespace"),
                text(object, "/metadata/name"),
                text(object, "/spec/volumeName"),
            ),
            Some("PersistentVolume") => (
                text(object, "/spec/claimRef/namespace"),
                text(object, "/spec/claimRef/name"),
                text(object, "/metadata/name"),
            ),
            _ => return false,
        };
        let (Some(claim_ns), Some(claim_name), Some(volume)) = (claim_ns, claim_name, volume)
        else {
            return false;
        };
        let (Some(mut claim), Some(mut pv)) = (
            self.object("", "persistentvolumeclaims", &claim_ns, &claim_name)
                .cloned(),
            self.object("", "persistentvolumes", "", &volume).cloned(),
        ) else {
            return false;
        };
        let claimed_by = (
            text(&pv, "/spec/claimRef/namespace"),
            text(&pv, "/spec/claimRef/name"),
        );
        if text(&claim, "/spec/volumeName").as_deref() != Some(volume.as_str())
            || text(&claim, "/status/phase").as_deref() == Some("Bound")
            || (claimed_by != (None, None)
                && claimed_by != (Some(claim_ns.clone()), Some(claim_name.clone())))
        {
            return false;
        }
        claim["status"] = json!({
            "phase": "Bound",
            "accessModes": pv.pointer("/spec/accessModes").cloned().unwrap_or(json!([])),
            "capacity": pv.pointer("/spec/capacity").cloned().unwrap_or(json!({})),
        });
        pv["status"] = json!({"phase": "Bound"});
        if let Some(uid) = claim.pointer("/metadata/uid").cloned() {
            pv["spec"]["claimRef"] = json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": claim_ns, "name": claim_name, "uid": uid,
            });
        }
        for (plural, ns, name, body) in [
            ("persistentvolumes", None, volume.as_str(), pv),
            (
                "persistentvolumeclaims",
                Some(claim_ns.as_str()),
                claim_name.as_str(),
                claim,
            ),
        ] {
            let written = self
                .target("", "v1", plural, ns)
                .and_then(|target| self.update(&target, name, body));
            if let Err(e) = written {
                tracing::warn!(error = %e.message, "the sandbox could not bind {name}");
                return false;
            }
        }
        true
    }

    pub fn update(
        &mut self,
        target: &Target,
        name: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        self.check_shape(target, &mut object)?;
        let key = object_key(target, name)?;
        let given_name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if given_name.is_empty() {
            return Err(ApiError::invalid(
                &target.rt,
                name,
                "metadata.name",
                "FieldValueRequired",
                "Required value: name is required",
            ));
        }
        if given_name != name {
            return Err(ApiError::invalid(
                &target.rt,
                given_name,
                "metadata.name",
                "FieldValueInvalid",
                &format!(
                    "Invalid value: {given_name:?}: the name of the object does not match the name on the URL ({name:?})"
                ),
            ));
        }
        let current = self
            .objects
            .get(&target.type_key())
            .and_then(|b| b.get(&key))
            .ok_or_else(|| ApiError::not_found(&target.rt, name))?;
        let current_rv = current
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(given) = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            && !given.is_empty()
            && given != current_rv
        {
            return Err(ApiError::conflict(&target.rt, name));
        }
        if target.rt.is_crd() {
            validate_crd(&target.rt, name, &object)?;
        }
        let generation = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let spec_changed = without_meta_and_status(current) != without_meta_and_status(&object);
        let kept: Vec<(String, Value)> = ["uid", "creationTimestamp"]
            .iter()
            .filter_map(|f| {
                Some((
                    (*f).to_owned(),
                    current.pointer(&format!("/metadata/{f}"))?.clone(),
                ))
            })
            .collect();
        let rv = self.next_resource_version();
        let metadata = object["metadata"].as_object_mut().expect("checked shape");
        metadata.extend(kept);
        metadata.insert("resourceVersion".into(), json!(rv));
        metadata.insert(
            "generation".into(),
            json!(generation + i64::from(spec_changed)),
        );
        self.store(target, key, object, name)
    }

    /// Stamp `object`'s managed fields and status, keep it under `key`, and return it as read
    /// back (the last step of a create and of an update).
    fn store(
        &mut self,
        target: &Target,
        key: ObjectKey,
        mut object: Value,
        name: &str,
    ) -> Result<Value, ApiError> {
        let metadata = object["metadata"].as_object_mut().expect("checked shape");
        metadata.insert("managedFields".into(), managed_fields(target, "Update"));
        populate_status(target, &mut object);
        let previous = self
            .objects
            .entry(target.type_key())
            .or_default()
            .insert(key.clone(), object.clone());
        self.watch.publish(Change {
            rv: self.resource_version,
            type_key: target.type_key(),
            key,
            kind: if previous.is_some() {
                ChangeKind::Modified
            } else {
                ChangeKind::Added
            },
            object,
            previous,
        });
        if target.rt.is_crd() {
            self.refresh_crd_types();
        }
        self.get(target, name)
    }

    /// Applies a JSON merge patch (RFC 7386). A `metadata.resourceVersion` in the patch is a
    /// precondition, as on a real server.
    pub fn merge_patch(
        &mut self,
        target: &Target,
        name: &str,
        patch: &Value,
    ) -> Result<Value, ApiError> {
        if !patch.is_object() {
            return Err(ApiError::bad_request("a merge patch must be a JSON object"));
        }
        let mut object = self.get(target, name)?;
        let current_rv = object["metadata"]["resourceVersion"].clone();
        json_patch::merge(&mut object, patch);
        if let Some(rv) = patch.pointer("/metadata/resourceVersion")
            && !rv.is_null()
            && *rv != current_rv
        {
            return Err(ApiError::conflict(&target.rt, name));
        }
        object["metadata"]["resourceVersion"] = current_rv;
        self.update(target, name, object)
    }

    /// Deletes an object and answers it. Deleting a namespace deletes what it holds, and
    /// deleting a CRD its custom resources, at once (a real server does both in the background).
    pub fn delete(
        &mut self,
        target: &Target,
        name: &str,
        options: &Value,
    ) -> Result<Value, ApiError> {
        let deleted = self.get(target, name)?;
        for field in ["uid", "resourceVersion"] {
            if let Some(want) = options
                .pointer(&format!("/preconditions/{field}"))
                .and_then(Value::as_str)
                && deleted["metadata"][field].as_str() != Some(want)
            {
                return Err(ApiError::precondition_failed(&target.rt, name, field));
            }
        }
        let key = object_key(target, name)?;
        // What the object held goes first, each removal a change of its own, as a real
        // server's namespace and CRD finalizers do it.
        let mut contents: Vec<(TypeKey, ObjectKey)> = Vec::new();
        if target.rt.group.is_empty() && target.rt.plural == "namespaces" {
            for (type_key, bucket) in &self.objects {
                contents.extend(
                    bucket
                        .keys()
                        .filter(|(ns, _)| ns == name)
                        .map(|k| (type_key.clone(), k.clone())),
                );
            }
        }
        if target.rt.is_crd() {
            let text = |path: &str| {
                deleted
                    .pointer(path)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            let type_key = (text("/spec/group"), text("/spec/names/plural"));
            if let Some(bucket) = self.objects.get(&type_key) {
                contents.extend(bucket.keys().map(|k| (type_key.clone(), k.clone())));
            }
        }
        for (type_key, key) in contents {
            self.remove(type_key, key);
        }
        let deleted = self
            .remove(target.type_key(), key)
            .map_or(deleted, |object| target.render(&object));
        if target.rt.is_crd() {
            self.refresh_crd_types();
        }
        Ok(deleted)
    }

    /// Removes one object as a change of its own; answers it with the deletion's resource
    /// version, as its `DELETED` event carries it.
    fn remove(&mut self, type_key: TypeKey, key: ObjectKey) -> Option<Value> {
        let mut object = self.objects.get_mut(&type_key)?.remove(&key)?;
        if self.objects.get(&type_key).is_some_and(BTreeMap::is_empty) {
            self.objects.remove(&type_key);
        }
        let rv = self.next_resource_version();
        object["metadata"]["resourceVersion"] = json!(rv);
        self.watch.publish(Change {
            rv: self.resource_version,
            type_key,
            key,
            kind: ChangeKind::Deleted,
            object: object.clone(),
            previous: None,
        });
        Some(object)
    }

    /// Starts a watch: subscribes to changes and gathers what the watch is sent first.
    pub fn watch(&self, request: WatchRequest) -> Subscription {
        let current = self.resource_version;
        let (backlog, receiver) = self.watch.subscribe(&request, current);
        let backlog = match backlog {
            Backlog::State => {
                let empty = BTreeMap::new();
                let bucket = self
                    .objects
                    .get(&request.target.type_key())
                    .unwrap_or(&empty);
                Ok(bucket
                    .iter()
                    .filter(|(key, object)| {
                        request
                            .target
                            .namespace
                            .as_ref()
                            .is_none_or(|want| *want == key.0)
                            && request.options.selects(key, object)
                    })
                    .map(|(_, object)| ("ADDED", request.target.render(object)))
                    .collect())
            }
            Backlog::Changes(changes) => Ok(changes
                .iter()
                .filter_map(|change| watch::event_for(change, &request.target, &request.options))
                .collect()),
            Backlog::Expired(message) => Err(message),
        };
        let position = if request.initial_state {
            current
        } else {
            request.from.unwrap_or(current).max(current)
        };
        Subscription {
            request,
            backlog,
            receiver,
            position,
        }
    }

    /// Keeps at most `changes` changes for watches to resume from.
    pub fn set_watch_history(&mut self, changes: usize) {
        self.watch.set_capacity(changes);
    }

    /// Ends every open watch (the server is stopping).
    pub fn close_watches(&self) {
        self.watch.close_all();
    }

    /// How the pod's annotations script an exec of `command` in `container` (none: the pod's
    /// only container), with the container it runs in; refused as an API server refuses it.
    pub fn exec_script(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
        command: &[String],
    ) -> Result<(String, ExecScript), ApiError> {
        let target = self.target("", "v1", "pods", Some(namespace))?;
        let pod_object = self.get(&target, pod)?;
        let containers: Vec<&str> = pod_object
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
            .unwrap_or_default();
        let container = match (container, containers.as_slice()) {
            (Some(container), _) if containers.contains(&container) => container,
            (Some(container), _) => {
                return Err(ApiError::bad_request(format!(
                    "container {container} is not valid for pod {pod}"
                )));
            }
            (None, [only]) => only,
            (None, []) => {
                return Err(ApiError::bad_request(format!(
                    "pod {pod} does not have a container"
                )));
            }
            (None, several) => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {pod}, choose one of: [{}]",
                    several.join(" ")
                )));
            }
        };
        if command.is_empty() {
            return Err(ApiError::bad_request(
                "you must specify at least one command for the container",
            ));
        }
        let annotation = |key: &str| {
            pod_object
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(key))
                .and_then(Value::as_str)
        };
        let script = ExecScript {
            exit_code: annotation(EXEC_EXIT_CODE_ANNOTATION)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            delay_ms: annotation(EXEC_DELAY_MS_ANNOTATION)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            stdout: annotation(EXEC_STDOUT_ANNOTATION)
                .unwrap_or_default()
                .to_owned(),
            stderr: annotation(EXEC_STDERR_ANNOTATION)
                .unwrap_or_default()
                .to_owned(),
            hang_up: annotation(EXEC_HANG_UP_ANNOTATION) == Some("true"),
        };
        Ok((container.to_owned(), script))
    }

    /// Appends a command an exec session ran to the exec log.
    pub fn record_exec(&mut self, record: ExecRecord) {
        self.exec_log.push(record);
    }

    /// Names the request's `fieldManager` (if it gave one) as the writer in the managedFields of
    /// `written`, the object a create, update or patch just stored; answers it as stored.
    pub fn record_manager(
        &mut self,
        target: &Target,
        mut written: Value,
        params: &crate::validation::WriteParams,
    ) -> Value {
        let Some(manager) = &params.field_manager else {
            return written;
        };
        let name = written["metadata"]["name"].as_str().unwrap_or_default();
        let Ok(key) = object_key(target, name) else {
            return written;
        };
        if let Some(stored) = self
            .objects
            .get_mut(&target.type_key())
            .and_then(|bucket| bucket.get_mut(&key))
        {
            for object in [stored, &mut written] {
                if let Some(entries) = object
                    .pointer_mut("/metadata/managedFields")
                    .and_then(Value::as_array_mut)
                {
                    for entry in entries {
                        entry["manager"] = json!(manager);
                    }
                }
            }
        }
        written
    }

    pub fn exec_log(&self) -> &[ExecRecord] {
        &self.exec_log
    }

    fn exists(&self, group: &str, plural: &str, ns: &str, name: &str) -> bool {
        self.objects
            .get(&(group.to_owned(), plural.to_owned()))
            .is_some_and(|b| b.contains_key(&(ns.to_owned(), name.to_owned())))
    }

    fn next_resource_version(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    /// Checks `apiVersion`, `kind` and `metadata.namespace` against the URL and fills them in.
    fn check_shape(&self, target: &Target, object: &mut Value) -> Result<(), ApiError> {
        let Some(body) = object.as_object_mut() else {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        };
        let api_version = target.api_version();
        if let Some(given) = body.get("apiVersion").and_then(Value::as_str)
            && given != api_version
        {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({given}) does not match the expected API version ({api_version})"
            )));
        }
        if let Some(given) = body.get("kind").and_then(Value::as_str)
            && given != target.rt.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({given}) does not match the expected kind ({})",
                target.rt.kind
            )));
        }
        body.insert("apiVersion".into(), json!(api_version));
        body.insert("kind".into(), json!(target.rt.kind));
        let metadata = body.entry("metadata").or_insert_with(|| json!({}));
        let Some(metadata) = metadata.as_object_mut() else {
            return Err(ApiError::bad_request("metadata must be a JSON object"));
        };
        match &target.namespace {
            Some(ns) => {
                if let Some(given) = metadata.get("namespace").and_then(Value::as_str)
                    && !given.is_empty()
                    && given != ns
                {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                metadata.insert("namespace".into(), json!(ns));
            }
            None if target.rt.namespaced => {
                return Err(ApiError::bad_request(
                    "a namespaced object needs a namespace in the URL",
                ));
            }
            None => {
                metadata.remove("namespace");
            }
        }
        Ok(())
    }

    /// Rebuilds the resource types served for CRDs from the stored CRD objects.
    fn refresh_crd_types(&mut self) {
        let crds = self.objects.get(&(
            "apiextensions.k8s.io".to_owned(),
            "customresourcedefinitions".to_owned(),
        ));
        self.crd_types = crds
            .into_iter()
            .flat_map(BTreeMap::values)
            .filter_map(ResourceType::from_crd)
            .collect();
    }
}

fn object_key(target: &Target, name: &str) -> Result<ObjectKey, ApiError> {
    match (&target.namespace, target.rt.namespaced) {
        (Some(ns), true) => Ok((ns.clone(), name.to_owned())),
        (None, false) => Ok((String::new(), name.to_owned())),
        _ => Err(ApiError::no_such_resource()),
    }
}

/// Names are DNS-1123 subdomains; namespace names are DNS-1123 labels.
fn validate_name(rt: &ResourceType, name: &str) -> Result<(), ApiError> {
    let is_namespace = rt.group.is_empty() && rt.plural == "namespaces";
    let max = if is_namespace { 63 } else { 253 };
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = name.len() <= max
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name
            .chars()
            .all(|c| alnum(c) || c == '-' || (c == '.' && !is_namespace));
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(
            rt,
            name,
            "metadata.name",
            "FieldValueInvalid",
            &format!(
                "Invalid value: {name:?}: a lowercase RFC 1123 name must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ))
    }
}

fn validate_crd(rt: &ResourceType, name: &str, crd: &Value) -> Result<(), ApiError> {
    let field = |path: &str| {
        crd.pointer(path)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    for (path, what) in [
        ("/spec/group", "spec.group"),
        ("/spec/names/plural", "spec.names.plural"),
        ("/spec/names/kind", "spec.names.kind"),
        ("/spec/scope", "spec.scope"),
    ] {
        if field(path).is_none() {
            return Err(ApiError::invalid(
                rt,
                name,
                what,
                "FieldValueRequired",
                "Required value",
            ));
        }
    }
    let expected = format!(
        "{}.{}",
        field("/spec/names/plural").unwrap_or_default(),
        field("/spec/group").unwrap_or_default()
    );
    if name != expected {
        return Err(ApiError::invalid(
            rt,
            name,
            "metadata.name",
            "FieldValueInvalid",
            &format!(
                "Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group ({expected:?})"
            ),
        ));
    }
    if !matches!(field("/spec/scope"), Some("Namespaced" | "Cluster")) {
        return Err(ApiError::invalid(
            rt,
            name,
            "spec.scope",
            "FieldValueNotSupported",
            "Unsupported value: supported values: \"Cluster\", \"Namespaced\"",
        ));
    }
    let served = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .is_some_and(|vs| {
            vs.iter()
                .any(|v| v["name"].is_string() && v["served"] != json!(false))
        });
    if !served {
        return Err(ApiError::invalid(
            rt,
            name,
            "spec.versions",
            "FieldValueRequired",
            "Required value: must have at least one served version",
        ));
    }
    Ok(())
}

/// What the controllers of a real cluster would have filled in by the time anyone looks.
fn populate_status(target: &Target, object: &mut Value) {
    match (target.rt.group.as_str(), target.rt.plural.as_str()) {
        ("", "namespaces") if object.pointer("/status/phase").is_none() => {
            object["status"] = json!({"phase": "Active"});
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            let names = object.pointer("/spec/names").cloned().unwrap_or(json!({}));
            let stored: Vec<Value> = object
                .pointer("/spec/versions")
                .and_then(Value::as_array)
                .map(|vs| {
                    vs.iter()
                        .filter(|v| v["storage"] == json!(true))
                        .map(|v| v["name"].clone())
                        .collect()
                })
                .unwrap_or_default();
            let condition = |kind: &str, reason: &str| json!({"type": kind, "status": "True", "reason": reason, "lastTransitionTime": now()});
            object["status"] = json!({
                "acceptedNames": names,
                "storedVersions": stored,
                "conditions": [condition("NamesAccepted", "NoConflicts"), condition("Established", "InitialNamesAccepted")],
            });
        }
        _ => {}
    }
}

fn without_meta_and_status(object: &Value) -> Map<String, Value> {
    let mut rest = object.as_object().cloned().unwrap_or_default();
    rest.remove("metadata");
    rest.remove("status");
    rest
}

fn managed_fields(target: &Target, operation: &str) -> Value {
    json!([{
        "manager": "stowage-sandbox",
        "operation": operation,
        "apiVersion": target.api_version(),
        "time": now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": {},
    }])
}

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_subdomains() {
        let store = Store::new();
        let cm = store
            .target("", "v1", "configmaps", Some("default"))
            .unwrap();
        let ns = store.target("", "v1", "namespaces", None).unwrap();
        assert!(validate_name(&cm.rt, "web.config-1").is_ok());
        for bad in ["Web", "-web", "web-", "we_b", ""] {
            assert!(validate_name(&cm.rt, bad).is_err(), "{bad}");
        }
        assert!(validate_name(&ns.rt, "a.b").is_err());
    }
}
