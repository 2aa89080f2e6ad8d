//! CSI volume snapshots through `snapshot.storage.k8s.io/v1`: choosing the VolumeSnapshotClass
//! of a driver, creating a VolumeSnapshot of a claim, waiting (by watch) until it is ready,
//! reading its bound VolumeSnapshotContent, deleting it, and the pre-bound content + snapshot
//! pair a restore into another namespace needs.
//!
//! Any cluster with the snapshot CRDs, the external-snapshotter and a CSI driver that
//! snapshots answers these calls; the sandbox plays both for its local disks. The objects are
//! handled as JSON (`DynamicObject`), so no generated types are needed. What the stages do with
//! them is described in ARCHITECTURE.md, "CSI VolumeSnapshots".

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::ApiResource;
use serde_json::{Value, json};

/// The API group of CSI snapshots.
pub const GROUP: &str = "snapshot.storage.k8s.io";
/// The annotation that makes a VolumeSnapshotClass its driver's default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "snapshot.storage.kubernetes.io/is-default-class";

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: "v1".into(),
        api_version: format!("{GROUP}/v1"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// `VolumeSnapshot` (namespaced).
pub fn volume_snapshots() -> ApiResource {
    resource("VolumeSnapshot", "volumesnapshots")
}

/// `VolumeSnapshotContent` (cluster-scoped).
pub fn volume_snapshot_contents() -> ApiResource {
    resource("VolumeSnapshotContent", "volumesnapshotcontents")
}

/// `VolumeSnapshotClass` (cluster-scoped).
pub fn volume_snapshot_classes() -> ApiResource {
    resource("VolumeSnapshotClass", "volumesnapshotclasses")
}

/// Why a CSI snapshot operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    /// The API server refused or did not answer.
    #[error("{what} failed: {source}")]
    Api {
        /// What was being done, naming the object.
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The snapshot controller or the CSI driver reported `status.error`.
    #[error(
        "VolumeSnapshot {snapshot} failed: {message}; the CSI driver {driver} could not take it \
         (see `kubectl describe volumesnapshot -n {namespace} {name}` and the driver's logs)"
    )]
    Failed {
        /// `namespace/name`.
        snapshot: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The driver.
        driver: String,
        /// `status.error.message`.
        message: String,
    },
    /// The snapshot did not become ready in time.
    #[error(
        "VolumeSnapshot {snapshot} did not become readyToUse within {timeout:?}; check that the \
         external-snapshotter and the CSI driver {driver} run (`kubectl describe volumesnapshot \
         -n {namespace} {name}`)"
    )]
    Timeout {
        /// `namespace/name`.
        snapshot: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The driver.
        driver: String,
        /// How long it was given.
        timeout: Duration,
    },
    /// Watching the snapshot failed.
    #[error("watching VolumeSnapshot {snapshot} failed: {source}")]
    Watch {
        /// `namespace/name`.
        snapshot: String,
        /// The watcher's error.
        #[source]
        source: kube::runtime::wait::Error,
    },
    /// The snapshot disappeared while being waited for.
    #[error(
        "VolumeSnapshot {snapshot} was deleted while Stowage waited for it; something else \
         removes Stowage's snapshots: find it, then run the backup again"
    )]
    Gone {
        /// `namespace/name`.
        snapshot: String,
    },
    /// An object exists under the name, but it is not the one asked for.
    #[error("{what}: {reason}")]
    Conflict {
        /// The object.
        what: String,
        /// How it differs and the fix.
        reason: String,
    },
    /// A ready snapshot's content lacks a field Stowage records.
    #[error(
        "VolumeSnapshotContent {content} (of VolumeSnapshot {snapshot}) is ready but has no \
         {field}; its snapshot controller does not follow snapshot.storage.k8s.io/v1"
    )]
    Incomplete {
        /// The content.
        content: String,
        /// `namespace/name` of the snapshot.
        snapshot: String,
        /// The missing field.
        field: &'static str,
    },
}

impl CsiError {
    /// Whether trying again may help: API trouble (server errors, throttling, no answer),
    /// a driver error (the snapshot controller retries), a timeout or a broken watch.
    pub fn is_transient(&self) -> bool {
        match self {
            CsiError::Api { source, .. } => match source {
                kube::Error::Api(status) => {
                    status.code >= 500 || status.code == 429 || status.code == 410
                }
                kube::Error::SerdeError(_) => false,
                _ => true,
            },
            CsiError::Failed { .. } | CsiError::Timeout { .. } | CsiError::Watch { .. } => true,
            CsiError::Gone { .. } | CsiError::Conflict { .. } | CsiError::Incomplete { .. } => {
                false
            }
        }
    }
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> CsiError {
    let what = what.into();
    move |source| CsiError::Api { what, source }
}

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// One VolumeSnapshotClass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotClass {
    /// Its name.
    pub name: String,
    /// The CSI driver it snapshots with.
    pub driver: String,
    /// Annotated as its driver's default.
    pub is_default: bool,
    /// `Delete` or `Retain`.
    pub deletion_policy: String,
}

/// The VolumeSnapshotClasses of a cluster, read once per job.
#[derive(Debug, Clone, Default)]
pub struct SnapshotClasses {
    classes: Vec<SnapshotClass>,
    /// The snapshot CRDs are not installed (the class list answered 404).
    pub crds_missing: bool,
}

/// The class a driver's snapshots are taken with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassChoice {
    /// The class.
    pub class: SnapshotClass,
    /// Set when the choice was not clear (several classes and not exactly one default): the
    /// warning to report.
    pub warning: Option<String>,
}

impl SnapshotClasses {
    /// Lists the cluster's classes. A cluster without the snapshot CRDs has none.
    pub async fn load(client: &kube::Client) -> Result<Self, CsiError> {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &volume_snapshot_classes());
        let list = match api.list(&ListParams::default()).await {
            Ok(list) => list,
            Err(e) if is_not_found(&e) => {
                return Ok(Self {
                    classes: Vec::new(),
                    crds_missing: true,
                });
            }
            Err(e) => return Err(api_error("listing VolumeSnapshotClasses")(e)),
        };
        let classes = list
            .items
            .iter()
            .map(|o| {
                let object = serde_json::to_value(o).unwrap_or(Value::Null);
                class_from(&object)
            })
            .collect();
        Ok(Self::from_classes(classes))
    }

    /// A set of classes as given (tests, preflight).
    pub fn from_classes(mut classes: Vec<SnapshotClass>) -> Self {
        classes.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            classes,
            crds_missing: false,
        }
    }

    /// The class for `driver`: the only one whose `driver` matches, or among several the one
    /// annotated default; with several and not exactly one default, the first default (or the
    /// first) by name, with a warning naming them. `None` when no class names the driver.
    pub fn choose(&self, driver: &str) -> Option<ClassChoice> {
        let matching: Vec<&SnapshotClass> =
            self.classes.iter().filter(|c| c.driver == driver).collect();
        let first = *matching.first()?;
        if matching.len() == 1 {
            return Some(ClassChoice {
                class: first.clone(),
                warning: None,
            });
        }
        let defaults: Vec<&SnapshotClass> =
            matching.iter().copied().filter(|c| c.is_default).collect();
        if defaults.len() == 1 {
            return Some(ClassChoice {
                class: defaults[0].clone(),
                warning: None,
            });
        }
        let chosen = defaults.first().copied().unwrap_or(first);
        let names: Vec<&str> = matching.iter().map(|c| c.name.as_str()).collect();
        Some(ClassChoice {
            class: chosen.clone(),
            warning: Some(format!(
                "CSI driver {driver} has {} VolumeSnapshotClasses ({}) and {} marked default, so \
                 {} was used; annotate exactly one with {DEFAULT_CLASS_ANNOTATION}: \"true\"",
                names.len(),
                names.join(", "),
                if defaults.is_empty() {
                    "none".to_owned()
                } else {
                    format!("{} of them", defaults.len())
                },
                chosen.name
            )),
        })
    }

    /// Every class.
    pub fn classes(&self) -> &[SnapshotClass] {
        &self.classes
    }
}

/// A class from its JSON.
pub fn class_from(object: &Value) -> SnapshotClass {
    let text = |p: &str| {
        object
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    SnapshotClass {
        name: text("/metadata/name"),
        driver: text("/driver"),
        is_default: object
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
            .and_then(Value::as_str)
            == Some("true"),
        deletion_policy: text("/deletionPolicy"),
    }
}

/// The warning for a volume whose driver has no VolumeSnapshotClass: names the driver and the
/// fix. `who` names the volume (e.g. `PVC shop/data (PV pv-1)`).
pub fn no_class_warning(who: &str, driver: &str, crds_missing: bool) -> String {
    if crds_missing {
        format!(
            "{who} is a CSI volume of driver {driver}, but the cluster has no \
             snapshot.storage.k8s.io API: its data was not backed up; install the snapshot CRDs \
             and the external-snapshotter, then create a VolumeSnapshotClass with driver: {driver}"
        )
    } else {
        format!(
            "{who} is a CSI volume of driver {driver}, which has no VolumeSnapshotClass: its data \
             was not backed up; create a VolumeSnapshotClass with driver: {driver} (annotated \
             {DEFAULT_CLASS_ANNOTATION}: \"true\" if it is one of several)"
        )
    }
}

/// A VolumeSnapshot to take of a claim.
#[derive(Debug, Clone)]
pub struct SnapshotRequest<'a> {
    /// The claim's namespace (the snapshot lives there too).
    pub namespace: &'a str,
    /// The snapshot's name.
    pub name: &'a str,
    /// The claim.
    pub claim: &'a str,
    /// The VolumeSnapshotClass.
    pub class: &'a str,
    /// Labels to put on it.
    pub labels: BTreeMap<String, String>,
}

/// Creates the VolumeSnapshot `request` describes. Idempotent: one of that name of the same
/// claim (an earlier attempt's) is kept; one of another claim is a [`CsiError::Conflict`].
pub async fn create_volume_snapshot(
    client: &kube::Client,
    request: &SnapshotRequest<'_>,
) -> Result<(), CsiError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), request.namespace, &volume_snapshots());
    let who = format!("VolumeSnapshot {}/{}", request.namespace, request.name);
    let body = json!({
        "apiVersion": format!("{GROUP}/v1"), "kind": "VolumeSnapshot",
        "metadata": {"name": request.name, "namespace": request.namespace, "labels": request.labels},
        "spec": {
            "volumeSnapshotClassName": request.class,
            "source": {"persistentVolumeClaimName": request.claim},
        },
    });
    let object: DynamicObject =
        serde_json::from_value(body).expect("a VolumeSnapshot is a valid object");
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let existing = api
                .get(request.name)
                .await
                .map_err(api_error(format!("reading {who}")))?;
            let claim = existing
                .data
                .pointer("/spec/source/persistentVolumeClaimName")
                .and_then(Value::as_str);
            if claim == Some(request.claim) {
                Ok(())
            } else {
                Err(CsiError::Conflict {
                    what: who,
                    reason: format!(
                        "it exists and snapshots {} instead of PVC {}; Stowage names its \
                         snapshots after the instance, recovery point and disk, so another tool \
                         made it: rename or delete it",
                        claim.map_or_else(|| "no claim".to_owned(), |c| format!("PVC {c}")),
                        request.claim
                    ),
                })
            }
        }
        Err(e) => Err(api_error(format!("creating {who}"))(e)),
    }
}

/// A ready VolumeSnapshot, as its bound content records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadySnapshot {
    /// The bound VolumeSnapshotContent.
    pub content: String,
    /// The driver's snapshot handle.
    pub handle: String,
    /// Bytes a restored volume needs at least.
    pub restore_size: u64,
}

fn ready(object: &DynamicObject) -> bool {
    object.data.pointer("/status/readyToUse") == Some(&Value::Bool(true))
}

fn error_message(object: &DynamicObject) -> Option<String> {
    let error = object.data.pointer("/status/error")?;
    if error.is_null() {
        return None;
    }
    Some(
        error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("the snapshot controller reported an error without a message")
            .to_owned(),
    )
}

/// Waits by watch until VolumeSnapshot `namespace/name` is `readyToUse` (then reads its bound
/// content) or reports `status.error`, for at most `timeout`. `driver` names the CSI driver in
/// the errors.
pub async fn wait_ready(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    driver: &str,
    timeout: Duration,
) -> Result<ReadySnapshot, CsiError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &volume_snapshots());
    let snapshot = format!("{namespace}/{name}");
    let settled =
        |o: Option<&DynamicObject>| o.is_none_or(|o| ready(o) || error_message(o).is_some());
    let waited = tokio::time::timeout(
        timeout,
        kube::runtime::wait::await_condition(api, name, settled),
    )
    .await
    .map_err(|_| CsiError::Timeout {
        snapshot: snapshot.clone(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        driver: driver.to_owned(),
        timeout,
    })?
    .map_err(|source| CsiError::Watch {
        snapshot: snapshot.clone(),
        source,
    })?;
    let Some(object) = waited else {
        return Err(CsiError::Gone { snapshot });
    };
    if let Some(message) = error_message(&object)
        && !ready(&object)
    {
        return Err(CsiError::Failed {
            snapshot,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            driver: driver.to_owned(),
            message,
        });
    }
    let content = object
        .data
        .pointer("/status/boundVolumeSnapshotContentName")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .ok_or(CsiError::Incomplete {
            content: "(none)".into(),
            snapshot: snapshot.clone(),
            field: "status.boundVolumeSnapshotContentName",
        })?
        .to_owned();
    let contents: Api<DynamicObject> = Api::all_with(client.clone(), &volume_snapshot_contents());
    let bound = contents.get(&content).await.map_err(api_error(format!(
        "reading VolumeSnapshotContent {content}"
    )))?;
    let handle = bound
        .data
        .pointer("/status/snapshotHandle")
        .and_then(Value::as_str)
        .filter(|h| !h.is_empty())
        .ok_or_else(|| CsiError::Incomplete {
            content: content.clone(),
            snapshot: snapshot.clone(),
            field: "status.snapshotHandle",
        })?
        .to_owned();
    let restore_size = bound
        .data
        .pointer("/status/restoreSize")
        .and_then(Value::as_u64)
        .or_else(|| {
            object
                .data
                .pointer("/status/restoreSize")
                .and_then(Value::as_str)
                .and_then(parse_quantity)
        })
        .ok_or_else(|| CsiError::Incomplete {
            content: content.clone(),
            snapshot: snapshot.clone(),
            field: "status.restoreSize",
        })?;
    Ok(ReadySnapshot {
        content,
        handle,
        restore_size,
    })
}

/// Deletes VolumeSnapshot `namespace/name`; answers whether it existed. Its content (and the
/// data) goes as its class's `deletionPolicy` says.
pub async fn delete_volume_snapshot(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<bool, CsiError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &volume_snapshots());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(api_error(format!(
            "deleting VolumeSnapshot {namespace}/{name}"
        ))(e)),
    }
}

/// Whether VolumeSnapshot `namespace/name` exists.
pub async fn volume_snapshot_exists(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<bool, CsiError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &volume_snapshots());
    api.get_opt(name)
        .await
        .map(|o| o.is_some())
        .map_err(api_error(format!(
            "reading VolumeSnapshot {namespace}/{name}"
        )))
}

/// A snapshot handle to expose in a namespace: a VolumeSnapshotContent pre-bound to it and a
/// VolumeSnapshot bound to that content, both named `name` (the cross-namespace procedure of
/// the CSI snapshot documentation).
#[derive(Debug, Clone)]
pub struct PreBound<'a> {
    /// Where the VolumeSnapshot goes.
    pub namespace: &'a str,
    /// Name of both objects.
    pub name: &'a str,
    /// The driver's snapshot handle.
    pub handle: &'a str,
    /// The driver.
    pub driver: &'a str,
    /// The VolumeSnapshotClass.
    pub class: &'a str,
    /// Labels for both.
    pub labels: BTreeMap<String, String>,
}

/// Creates the pre-bound pair (`Retain`, so deleting it never deletes the data). Idempotent:
/// objects already there under the names are kept.
pub async fn create_prebound(client: &kube::Client, p: &PreBound<'_>) -> Result<(), CsiError> {
    let contents: Api<DynamicObject> = Api::all_with(client.clone(), &volume_snapshot_contents());
    let content = json!({
        "apiVersion": format!("{GROUP}/v1"), "kind": "VolumeSnapshotContent",
        "metadata": {"name": p.name, "labels": p.labels},
        "spec": {
            "deletionPolicy": "Retain",
            "driver": p.driver,
            "source": {"snapshotHandle": p.handle},
            "volumeSnapshotClassName": p.class,
            "volumeSnapshotRef": {"name": p.name, "namespace": p.namespace},
        },
    });
    let content: DynamicObject = serde_json::from_value(content).expect("a valid object");
    match contents.create(&PostParams::default(), &content).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => {
            return Err(api_error(format!(
                "creating VolumeSnapshotContent {} for snapshot handle {}",
                p.name, p.handle
            ))(e));
        }
    }
    let snapshots: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), p.namespace, &volume_snapshots());
    let snapshot = json!({
        "apiVersion": format!("{GROUP}/v1"), "kind": "VolumeSnapshot",
        "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
        "spec": {
            "volumeSnapshotClassName": p.class,
            "source": {"volumeSnapshotContentName": p.name},
        },
    });
    let snapshot: DynamicObject = serde_json::from_value(snapshot).expect("a valid object");
    match snapshots.create(&PostParams::default(), &snapshot).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(api_error(format!(
            "creating VolumeSnapshot {}/{}",
            p.namespace, p.name
        ))(e)),
    }
}

/// Bytes of a Kubernetes quantity (`1Gi`, `500M`, `4096`); `None` for anything else.
pub fn parse_quantity(text: &str) -> Option<u64> {
    const SUFFIXES: [(&str, u64); 12] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    let text = text.trim();
    for (suffix, factor) in SUFFIXES {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<u64>().ok()?.checked_mul(factor);
        }
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, driver: &str, is_default: bool) -> SnapshotClass {
        SnapshotClass {
            name: name.into(),
            driver: driver.into(),
            is_default,
            deletion_policy: "Delete".into(),
        }
    }

    #[test]
    fn the_class_is_chosen_by_driver_and_the_default_wins() {
        let classes = SnapshotClasses::from_classes(vec![
            class("b-fast", "ebs.csi.aws.com", false),
            class("a-slow", "ebs.csi.aws.com", true),
            class("local", "disk.stowage.local", false),
        ]);
        let local = classes.choose("disk.stowage.local").unwrap();
        assert_eq!((local.class.name.as_str(), local.warning), ("local", None));
        let ebs = classes.choose("ebs.csi.aws.com").unwrap();
        assert_eq!((ebs.class.name.as_str(), ebs.warning), ("a-slow", None));
        assert_eq!(classes.choose("nfs.csi.k8s.io"), None);

        // Several and no default: the first by name, said in a warning naming them.
        let classes =
            SnapshotClasses::from_classes(vec![class("z", "d", false), class("y", "d", false)]);
        let choice = classes.choose("d").unwrap();
        assert_eq!(choice.class.name, "y");
        let warning = choice.warning.unwrap();
        assert!(warning.contains("y, z") && warning.contains(DEFAULT_CLASS_ANNOTATION));
    }

    #[test]
    fn classes_are_read_from_their_json() {
        let object = json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
            "metadata": {"name": "c", "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
            "driver": "d", "deletionPolicy": "Retain"});
        assert_eq!(
            class_from(&object),
            SnapshotClass {
                name: "c".into(),
                driver: "d".into(),
                is_default: true,
                deletion_policy: "Retain".into()
            }
        );
    }

    #[test]
    fn the_missing_class_warning_names_driver_and_fix() {
        let w = no_class_warning("PVC a/b (PV c)", "nfs.csi.k8s.io", false);
        assert!(w.contains("nfs.csi.k8s.io") && w.contains("create a VolumeSnapshotClass"));
        let w = no_class_warning("PVC a/b (PV c)", "nfs.csi.k8s.io", true);
        assert!(w.contains("install the snapshot CRDs"));
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("1Gi"), Some(1 << 30));
        assert_eq!(parse_quantity("4096"), Some(4096));
        assert_eq!(parse_quantity("2M"), Some(2_000_000));
        assert_eq!(parse_quantity("x"), None);
    }
}
