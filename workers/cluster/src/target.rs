//! One Kubernetes cluster a worker can reach: its API client and how hooks run in its pods.

use crate::exec::PodExec;

/// One Kubernetes cluster a worker can reach.
#[derive(Clone)]
pub struct ClusterTarget {
    /// The API client.
    pub client: kube::Client,
    /// How hook commands run in its pods: `pods/exec` over a websocket, with the client's
    /// credentials.
    pub exec: PodExec,
}

impl ClusterTarget {
    /// A cluster reached through `client`; hooks run through the same API server's `pods/exec`.
    pub fn new(client: kube::Client) -> Self {
        Self {
            exec: PodExec::new(client.clone()),
            client,
        }
    }
}
