//! Applying objects to a cluster: the other direction of [`crate::collect`], used by restore.
//!
//! Objects travel as JSON (`serde_json::Value`), as collection wrote them. [`ClusterApi`]
//! knows which types a cluster serves (discovery) and reaches an object's type in its
//! namespace; [`create`] and [`merge_patch`] apply one object and sort the cluster's answer
//! into what a restore plans with: done, already there, or refused (a conflict the restore
//! records and goes past). Anything else — connection trouble, throttling, server errors — is a
//! `kube::Error` for the caller to classify.

use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{ApiCapabilities, Discovery, Scope};
use kube::runtime::wait::Condition;
use kube::runtime::wait::conditions::is_crd_established;
use serde_json::Value;

use crate::wait;

/// `(group, version)` of an object's `apiVersion` (`""` for the core group).
pub fn group_version(object: &Value) -> (&str, &str) {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

/// `metadata.name`, or `""`.
pub fn name_of(object: &Value) -> String {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// `metadata.namespace`, if the object has one.
pub fn namespace_of(object: &Value) -> Option<String> {
    object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// `Kind namespace/name` (or `Kind name`), for messages.
pub fn describe(object: &Value) -> String {
    format!(
        "{} {}{}",
        object["kind"].as_str().unwrap_or_default(),
        namespace_of(object)
            .map(|n| format!("{n}/"))
            .unwrap_or_default(),
        name_of(object)
    )
}

/// `target` with `patch` applied as a JSON merge patch (RFC 7386): what the cluster will hold
/// after [`merge_patch`], so a caller can tell "already matches" without asking it.
pub fn merged(target: &Value, patch: &Value) -> Value {
    let mut merged = target.clone();
    json_patch::merge(&mut merged, patch);
    merged
}

/// A cluster's API as discovered: the types it serves, and a client to reach them.
pub struct ClusterApi {
    client: kube::Client,
    discovery: Discovery,
}

impl ClusterApi {
    /// Discovers what `client`'s cluster serves.
    pub async fn discover(client: kube::Client) -> Result<Self, kube::Error> {
        let discovery = Discovery::new(client.clone()).run().await?;
        Ok(Self { client, discovery })
    }

    /// The API of `object`'s type in its namespace (`default` for a namespaced object without
    /// one); `None` when the cluster does not serve the type.
    pub fn api_for(&self, object: &Value) -> Option<Api<DynamicObject>> {
        let (ar, caps) = self.resolve(object)?;
        Some(
            match (caps.scope == Scope::Namespaced, namespace_of(object)) {
                (true, Some(ns)) => Api::namespaced_with(self.client.clone(), &ns, &ar),
                (true, None) => Api::namespaced_with(self.client.clone(), "default", &ar),
                (false, _) => Api::all_with(self.client.clone(), &ar),
            },
        )
    }

    fn resolve(&self, object: &Value) -> Option<(ApiResource, ApiCapabilities)> {
        let (group, version) = group_version(object);
        let kind = object["kind"].as_str().unwrap_or_default();
        self.discovery
            .resolve_gvk(&GroupVersionKind::gvk(group, version, kind))
    }

    /// The client this API was discovered through.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }
}

/// What the cluster holds under `object`'s name, as JSON; `None` when nothing.
pub async fn current(
    api: &Api<DynamicObject>,
    object: &Value,
) -> Result<Option<Value>, kube::Error> {
    Ok(api
        .get_opt(&name_of(object))
        .await?
        .map(|found| serde_json::to_value(found).expect("an object serializes")))
}

/// How the cluster answered a create or a patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Done.
    Done,
    /// A create found the object there already (created meanwhile by a controller or an
    /// earlier attempt).
    AlreadyExists,
    /// The cluster refused the request for good (422, 400…): what it said.
    Refused(String),
}

/// Why [`create`] could not even ask.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The JSON is not a Kubernetes object.
    #[error("{object} is not a Kubernetes object ({reason})")]
    NotAnObject {
        /// `Kind namespace/name`.
        object: String,
        /// What the parser said.
        reason: String,
    },
    /// The request failed in a way that may pass on a retry (connection, throttling, 5xx).
    #[error("{what} {object} failed: {source}")]
    Api {
        /// `creating` or `patching`.
        what: &'static str,
        /// `Kind namespace/name`.
        object: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// Creates `object` through `api`.
pub async fn create(api: &Api<DynamicObject>, object: &Value) -> Result<Applied, ApplyError> {
    let dynamic: DynamicObject =
        serde_json::from_value(object.clone()).map_err(|e| ApplyError::NotAnObject {
            object: describe(object),
            reason: e.to_string(),
        })?;
    match api.create(&PostParams::default(), &dynamic).await {
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Applied::AlreadyExists),
        result => applied(result, ("creating", "to create it"), object),
    }
}

/// Merge-patches the object named like `object` with `body`.
pub async fn merge_patch(
    api: &Api<DynamicObject>,
    object: &Value,
    body: &Value,
) -> Result<Applied, ApplyError> {
    let result = api
        .patch(
            &name_of(object),
            &PatchParams::default(),
            &Patch::Merge(body),
        )
        .await;
    applied(result, ("patching", "the patch"), object)
}

/// What a create or patch of `object` came to: done, refused by the target (`refused` names
/// what it refused), or an error; `what` is the verb for the error.
fn applied<T>(
    result: Result<T, kube::Error>,
    (what, refused): (&'static str, &str),
    object: &Value,
) -> Result<Applied, ApplyError> {
    match result {
        Ok(_) => Ok(Applied::Done),
        Err(kube::Error::Api(status)) if is_refusal(status.code) => Ok(Applied::Refused(format!(
            "the target refused {refused} ({} {}): {}",
            status.code, status.reason, status.message
        ))),
        Err(source) => Err(ApplyError::Api {
            what,
            object: describe(object),
            source,
        }),
    }
}

/// A client error other than throttling: asking again gives the same answer. A 401 or 403
/// is not the target refusing this object but the worker's identity lacking a permission:
/// an error for the caller (see [`crate::access`]), not a per-object refusal.
fn is_refusal(code: u16) -> bool {
    code < 500 && code != 429 && code != 401 && code != 403
}

/// Why [`wait_established`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The cluster refused to let the CRD be watched.
    #[error("watching CRD {name} until it is Established was refused: {source}")]
    Api {
        /// The CRD.
        name: String,
        /// The cluster's answer.
        #[source]
        source: kube::Error,
    },
    /// The deadline passed first.
    #[error(
        "CRD {name} is not Established after {}s of watching{}; check the target's API server \
         (its apiextensions controller)",
        timeout.as_secs(),
        last_error.as_ref().map(|e| format!(" (the last watch error: {e})")).unwrap_or_default()
    )]
    Timeout {
        /// The CRD still waiting.
        name: String,
        /// How long it was given.
        timeout: Duration,
        /// The last error the watch met and recovered from, if any.
        last_error: Option<String>,
    },
}

/// Waits, by watch, until every CRD in `names` reports `Established` (a CRD that is absent,
/// e.g. one the target refused, is not waited for), for at most `timeout` in all.
pub async fn wait_established(
    client: &kube::Client,
    names: &[String],
    timeout: Duration,
) -> Result<(), WaitError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + timeout;
    for name in names {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let absent_or_established = |crd: Option<&CustomResourceDefinition>| {
            crd.is_none() || is_crd_established().matches_object(crd)
        };
        wait::until(
            api.clone(),
            name,
            &format!("CRD {name}"),
            "Established",
            absent_or_established,
            left,
        )
        .await
        .map_err(|error| match error {
            wait::WaitError::Refused { source, .. } => WaitError::Api {
                name: name.clone(),
                source,
            },
            wait::WaitError::Timeout { last_error, .. } => WaitError::Timeout {
                name: name.clone(),
                timeout,
                last_error,
            },
        })?;
    }
    Ok(())
}

/// Waits, by watch, until every claim `(namespace, name)` in `claims` is `Bound`, for at most
/// `timeout` in all; answers those that are not, each with why (still pending, gone, or the
/// watch refused), for the caller to warn about: a claim that binds late is no reason to stop.
pub async fn wait_bound(
    client: &kube::Client,
    claims: &[(String, String)],
    timeout: Duration,
) -> Vec<(String, String, String)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut late = Vec::new();
    for (ns, name) in claims {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let bound = |claim: Option<&PersistentVolumeClaim>| {
            claim
                .is_none_or(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
        };
        match wait::until(api, name, &format!("PVC {ns}/{name}"), "Bound", bound, left).await {
            Ok(Some(_)) => {}
            Ok(None) => late.push((ns.clone(), name.clone(), "it is gone".to_owned())),
            Err(e) => late.push((ns.clone(), name.clone(), e.to_string())),
        }
    }
    late
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        let target = merged(&target, &json!({"a": "z", "c": {"f": null}, "l": [3]}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
    }

    #[test]
    fn objects_are_described_by_kind_namespace_and_name() {
        let object = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"}});
        assert_eq!(group_version(&object), ("apps", "v1"));
        assert_eq!(describe(&object), "Deployment shop/web");
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}});
        assert_eq!(group_version(&ns), ("", "v1"));
        assert_eq!(describe(&ns), "Namespace shop");
    }
}
