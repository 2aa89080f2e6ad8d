//! One Kubernetes cluster a worker can reach: its API client and how hooks run in its pods.

use std::sync::Arc;

use crate::exec::PodExec;

/// One Kubernetes cluster a worker can reach.
#[derive(Clone)]
pub struct ClusterTarget {
    /// The API client.
    pub client: kube::Client,
    /// How hook commands run in its pods.
    pub exec: Arc<dyn PodExec>,
}

impl ClusterTarget {
    /// A cluster reached through `client`, with hooks run through `exec`.
    pub fn new(client: kube::Client, exec: Arc<dyn PodExec>) -> Self {
        Self { client, exec }
    }
}
