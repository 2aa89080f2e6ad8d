//! The sandbox cluster: an in-process HTTP server for the subset of the Kubernetes API that
//! Stowage uses, so the stages, tests and `stowage demo` run without a real cluster.
//!
//! ```no_run
//! # async fn demo() -> Result<(), stowage_sandbox::SandboxError> {
//! use stowage_sandbox::Sandbox;
//!
//! let sandbox = Sandbox::new();
//! sandbox.load_sample_app()?;
//! let handle = sandbox.start_local().await?;
//! let client = handle.client(); // a kube::Client, as for any cluster
//! # let _ = client; Ok(()) }
//! ```
//!
//! # What it serves
//!
//! - `/version`; discovery: `/api`, `/api/v1`, `/apis`, `/apis/{group}`, `/apis/{group}/{version}`,
//!   including the types of CRDs created at run time (created CRDs are `Established` at once).
//! - For every type: list (label selectors with every operator, `fieldSelector` on
//!   `metadata.name`/`metadata.namespace`, `limit`/`continue` paging), get, create (with
//!   `generateName`), update (PUT), merge patch (PATCH `application/merge-patch+json`;
//!   `strategic-merge-patch+json` is treated as a merge patch) and delete (with uid and
//!   resourceVersion preconditions), namespaced and cluster-scoped, in every namespace at once.
//! - Server-populated fields: `metadata.uid`, `resourceVersion` (one global counter),
//!   `creationTimestamp`, `generation` (bumped when anything outside metadata and status
//!   changes) and `managedFields`; namespaces get `status.phase: Active`, CRDs their conditions.
//! - Failures as `Status` objects: 404 `NotFound` (unknown type, object or namespace),
//!   409 `AlreadyExists`, 409 `Conflict` (stale resourceVersion), 422 `Invalid` (missing or
//!   malformed name, name differing from the URL, malformed CRD), 400 `BadRequest`, 405, 415.
//! - Watches (see [`watch`]): `?watch=true|1` on every list path (namespaced, all namespaces,
//!   cluster-scoped, CRD-defined types) and on one object's path; from a `resourceVersion`
//!   (unset or `"0"`: synthetic `ADDED` events for the current state first; `sendInitialEvents`),
//!   with label and field selectors (an object that stops matching is sent as `DELETED`),
//!   `allowWatchBookmarks`, `timeoutSeconds`; a bounded history of recent changes lets a
//!   watch resume, and a `resourceVersion` older than it (or a watcher too slow to keep up)
//!   gets an `ERROR` event with a `410 Expired` `Status`, so kube-runtime's watcher relists.
//!   Deletes, including a namespace's or CRD's contents, are `DELETED` events.
//! - `kubectl --server` can list, get and watch (`get -w`): server-side printing (`as=Table`)
//!   answers name and age.
//! - Hook commands: see [`exec`].
//! - `SubjectAccessReview` (`POST /apis/authorization.k8s.io/v1/subjectaccessreviews`),
//!   answered by evaluating the stored Roles, ClusterRoles and bindings (see `rbac`: verbs,
//!   groups, resources and subresources, resource names, namespaces, `*`); nothing else is
//!   authorized, so the answers only inform, they do not restrict.
//! - CSI volume snapshots, with [`Sandbox::with_csi_disks`]: the snapshot CRDs are in the
//!   sample app, and a controller plays the external-snapshotter, the provisioner and the CSI
//!   driver of [`LOCAL_CSI_DRIVER`] over a disk provider (the `csi` module).
//! - Nodes (the sample app has one, labelled with [`SAMPLE_REGION`]); the version `/version`
//!   answers can be changed with [`Sandbox::set_version`].
//!
//! # What it does not serve
//!
//! Server-side apply, JSON patch, `deletecollection`, subresources (`/status`,
//! `/scale`, real `pods/exec`), OpenAPI documents, aggregated discovery, authentication and
//! authorization of requests (reviews answer, nothing enforces them), admission and schema validation, defaulting, finalizers and graceful
//! deletion (deleting a namespace or CRD removes its contents at once), controllers (a
//! Deployment creates no pods), and consistent paging snapshots (a continued list resumes after
//! the last name it returned, and sees changes made in between). A watch's resource version
//! must come from this sandbox (a newer one than it has issued only waits for it), and the
//! `WatchList` streaming of protobuf is not served (JSON only).

//!
//! No production crate depends on this one: only the CLI's `sandbox` and `demo` commands and
//! the tests do (a test in `tests/` checks the crate graph).

mod csi;
pub(crate) mod error;
pub mod exec;
mod http;
pub(crate) mod rbac;
pub(crate) mod sample;
pub(crate) mod store;
mod types;
pub mod watch;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use exec::{ExecRecord, SandboxExec};
pub use sample::{LOCAL_CSI_DRIVER, LOCAL_SNAPSHOT_CLASS, SAMPLE_REGION};
use store::Store;
use stowage_cluster::ClusterTarget;

/// A sandbox cluster's state. Cheap to clone: clones share one cluster.
#[derive(Clone)]
pub struct Sandbox {
    // A std mutex: every operation is short and never awaits while holding it.
    store: Arc<Mutex<Store>>,
    address: Arc<Mutex<Option<SocketAddr>>>,
    /// Notified after every change of the store (the CSI controller reconciles on it).
    changed: Arc<tokio::sync::Notify>,
}

/// Why a sandbox could not start or load objects.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A kube client for the sandbox could not be built.
    #[error("cannot build a Kubernetes client for the sandbox: {0}")]
    Client(#[source] kube::Error),
    /// The sandbox refused an object it was asked to load.
    #[error("the sandbox refused {object}: {message}")]
    Rejected {
        /// `kind namespace/name` of the object.
        object: String,
        /// The API's message.
        message: String,
    },
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    /// An empty cluster holding only the namespaces every cluster has (`default`,
    /// `kube-system`, `kube-public`, `kube-node-lease`).
    pub fn new() -> Self {
        Self {
            store: Arc::new(Mutex::new(Store::new())),
            address: Arc::new(Mutex::new(None)),
            changed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// The same cluster with a CSI snapshot controller and driver over `disks` (the
    /// external-snapshotter, the provisioner and the driver of [`LOCAL_CSI_DRIVER`]; see the
    /// `csi` module): VolumeSnapshots of its volumes are taken as snapshots of their disks, and
    /// claims with a VolumeSnapshot `dataSource` are provisioned from them. The controller runs
    /// as a task of the current tokio runtime (so call this inside one) until the cluster is
    /// dropped.
    pub fn with_csi_disks(self, disks: Arc<dyn stowage_disk::DiskProvider>) -> Self {
        csi::spawn(&self.store, self.changed.clone(), disks);
        self
    }

    /// Loads the sample application (see the `sample` module's table): two namespaces of
    /// workloads with config, secrets, services, RBAC, a CRD with custom resources, and PVCs
    /// bound to CSI volumes of the local disk provider, plus one NFS volume Stowage must skip.
    pub fn load_sample_app(&self) -> Result<(), SandboxError> {
        for object in sample::objects() {
            self.create(object)?;
        }
        Ok(())
    }

    /// Creates one object given as JSON, its type found from `apiVersion` and `kind` (a
    /// namespaced object without `metadata.namespace` goes to `default`). Answers the object
    /// as stored, with the server-populated fields.
    pub fn create(&self, object: serde_json::Value) -> Result<serde_json::Value, SandboxError> {
        let describe = |o: &serde_json::Value| {
            let m = &o["metadata"];
            format!(
                "{} {}/{}",
                o["kind"].as_str().unwrap_or("?"),
                m["namespace"].as_str().unwrap_or(""),
                m["name"].as_str().unwrap_or("?")
            )
        };
        let name = describe(&object);
        self.with_store_mut(|s| s.create_object(object))
            .map_err(|e| SandboxError::Rejected {
                object: name,
                message: e.message,
            })
    }

    /// Every command run through the exec endpoint so far, oldest first.
    pub fn exec_log(&self) -> Vec<ExecRecord> {
        self.with_store(|s| s.exec_log().to_vec())
    }

    /// Makes `/version` answer `major.minor` (a new sandbox answers 1.33), e.g. to see a
    /// version check refuse a cluster too old for CSI snapshots.
    pub fn set_version(&self, major: &str, minor: &str) {
        self.with_store_mut(|s| s.set_version(major, minor));
    }

    /// Keeps at most `changes` changes for watches to resume from (default
    /// [`watch::DEFAULT_HISTORY`]); a watch from an older resource version gets `410 Expired`.
    pub fn set_watch_history(&self, changes: usize) {
        self.with_store_mut(|s| s.set_watch_history(changes));
    }

    /// The cluster's current resource version (the last one issued).
    pub fn resource_version(&self) -> u64 {
        self.with_store(Store::resource_version)
    }

    /// Serves the cluster on `addr` (port 0 picks a free port) until the handle is dropped
    /// or shut down.
    pub async fn start(self, addr: SocketAddr) -> Result<SandboxHandle, SandboxError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| SandboxError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| SandboxError::Bind { addr, source })?;
        *self.address.lock().unwrap_or_else(PoisonError::into_inner) = Some(addr);
        let url = format!("http://{addr}");
        let mut config =
            kube::Config::new(url.parse().expect("a socket address makes a valid URI"));
        config.default_namespace = "default".to_owned();
        let client = kube::Client::try_from(config).map_err(SandboxError::Client)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let app = http::router(self.clone());
        let server = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(%error, "sandbox server failed");
            }
        });
        tracing::info!(%url, "sandbox cluster serving");
        Ok(SandboxHandle {
            sandbox: self,
            addr,
            url,
            client,
            stop: Some(stop),
            server: Some(server),
        })
    }

    /// [`Sandbox::start`] on `127.0.0.1` and a free port.
    pub async fn start_local(self) -> Result<SandboxHandle, SandboxError> {
        self.start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// A new sandbox holding the sample application, served on `127.0.0.1` and a free port:
    /// what most tests and the demo start from.
    pub async fn sample_local() -> Result<SandboxHandle, SandboxError> {
        let sandbox = Self::new();
        sandbox.load_sample_app()?;
        sandbox.start_local().await
    }

    fn address_hint(&self) -> String {
        self.address
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string())
    }

    fn with_store<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&self.store.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn with_store_mut<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let answer = f(&mut self.store.lock().unwrap_or_else(PoisonError::into_inner));
        self.changed.notify_waiters();
        answer
    }
}

/// A running sandbox server. Dropping it stops the server.
pub struct SandboxHandle {
    sandbox: Sandbox,
    addr: SocketAddr,
    url: String,
    client: kube::Client,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl SandboxHandle {
    /// The base URL, e.g. `http://127.0.0.1:41234` (for `kubectl --server`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kube client for the sandbox (no authentication; default namespace `default`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The sandbox as a cluster target for the stages: its client, with hooks through its
    /// exec endpoint.
    pub fn target(&self) -> ClusterTarget {
        ClusterTarget::new(self.client(), Arc::new(SandboxExec::new(self.client())))
    }

    /// The cluster being served, to load objects or read the exec log.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Stops accepting requests and waits for those in flight to finish.
    pub async fn shutdown(mut self) {
        // Open watches would hold the graceful shutdown until they time out.
        self.sandbox.with_store(Store::close_watches);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            self.sandbox.with_store(Store::close_watches);
            let _ = stop.send(());
        }
    }
}
