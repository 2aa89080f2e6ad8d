//! Waiting for an object to reach a state, by watch rather than by polling.
//!
//! [`until`] follows one object with kube-runtime's `watch_object` (a list, then a watch from
//! the list's resourceVersion, `fieldSelector=metadata.name=…`) and answers as soon as a
//! [`Condition`] holds, or fails once the deadline passes. Unlike kube-runtime's own
//! `await_condition`, which gives up on the first watch error, it rides out what a watch meets
//! in normal operation (a `410 Expired` history, a dropped connection, throttling, server
//! errors: the watcher relists, with kube-runtime's default backoff) and fails at once only
//! when the cluster refuses (401, 403, 404 of the type, a bad request), since waiting would not
//! change that answer.
//!
//! ```no_run
//! # async fn demo(client: kube::Client) -> Result<(), stowage_cluster::wait::WaitError> {
//! use std::time::Duration;
//! use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
//! use kube::runtime::wait::conditions::is_crd_established;
//!
//! let crds = kube::Api::<CustomResourceDefinition>::all(client);
//! let name = "widgets.demo.stowage.io";
//! stowage_cluster::wait::until(
//!     crds, name, &format!("CRD {name}"), "Established", is_crd_established(), Duration::from_secs(60),
//! ).await?;
//! # Ok(()) }
//! ```

use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt;
use kube::Api;
use kube::Resource;
use kube::runtime::WatchStreamExt;
use kube::runtime::wait::Condition;
use kube::runtime::watcher::{self, watch_object};
use serde::de::DeserializeOwned;

/// Why [`until`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The cluster refused the watch (authentication, RBAC, an unknown type, a bad request):
    /// waiting longer would not change the answer.
    #[error("watching {object} until it is {awaited} was refused: {source}")]
    Refused {
        /// The object waited for, e.g. `CRD widgets.demo.stowage.io`.
        object: String,
        /// What was awaited, e.g. `Established`.
        awaited: String,
        /// The cluster's answer.
        #[source]
        source: kube::Error,
    },
    /// The deadline passed first.
    #[error(
        "{object} is not {awaited} after {}s of watching{}",
        timeout.as_secs_f64(),
        last_error.as_ref().map(|e| format!(" (the last watch error: {e})")).unwrap_or_default()
    )]
    Timeout {
        /// The object waited for.
        object: String,
        /// What was awaited.
        awaited: String,
        /// How long it was given.
        timeout: Duration,
        /// The last error the watch met and recovered from, if any (a hint at why).
        last_error: Option<String>,
    },
}

/// Watches `name` through `api` until `condition` holds (it sees `None` while the object does
/// not exist), for at most `timeout`; answers the object as it was then (`None` if the
/// condition held for an absent object). `object` and `awaited` name the object and the state
/// in errors, e.g. `"VolumeSnapshot shop/rp-1-data"` and `"readyToUse"`.
pub async fn until<K>(
    api: Api<K>,
    name: &str,
    object: &str,
    awaited: &str,
    condition: impl Condition<K>,
    timeout: Duration,
) -> Result<Option<K>, WaitError>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + 'static,
{
    let mut last_error: Option<String> = None;
    let watch = async {
        let mut stream = std::pin::pin!(watch_object(api, name).default_backoff());
        while let Some(event) = stream.next().await {
            match event {
                Ok(current) => {
                    if condition.matches_object(current.as_ref()) {
                        return Ok(current);
                    }
                }
                Err(error) => match refusal(error) {
                    Ok(refused) => return Err(refused),
                    Err(passing) => {
                        tracing::debug!(object, awaited, error = %passing, "watch error; the watcher recovers");
                        last_error = Some(passing.to_string());
                    }
                },
            }
        }
        unreachable!("kube-runtime's watcher never ends")
    };
    let result = tokio::time::timeout(timeout, watch).await;
    match result {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(source)) => Err(WaitError::Refused {
            object: object.to_owned(),
            awaited: awaited.to_owned(),
            source,
        }),
        Err(_) => Err(WaitError::Timeout {
            object: object.to_owned(),
            awaited: awaited.to_owned(),
            timeout,
            last_error,
        }),
    }
}

/// `Ok(error)` when the cluster refused for good; `Err(error)` when the watcher recovers.
fn refusal(error: watcher::Error) -> Result<kube::Error, watcher::Error> {
    let refused = |code: u16| (400..500).contains(&code) && !matches!(code, 408 | 409 | 410 | 429);
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status))
            if refused(status.code) =>
        {
            Ok(kube::Error::Api(status))
        }
        watcher::Error::WatchError(status) if refused(status.code) => Ok(kube::Error::Api(status)),
        other => Err(other),
    }
}
