//! The sandbox cluster: an in-process HTTPS API server for the subset of the Kubernetes API
//! that Stowage uses, so the stages, tests and `stowage demo` run without a real cluster.
//!
//! ```no_run
//! # async fn demo() -> Result<(), stowage_sandbox::SandboxError> {
//! use stowage_sandbox::Sandbox;
//!
//! let sandbox = Sandbox::new();
//! sandbox.load_sample_app()?;
//! let handle = sandbox.start_local().await?;
//! let client = handle.client(); // a kube::Client as the admin, as for any cluster
//! let snapshot = handle.client_as("stowage-snapshot")?; // as a fleet service account
//! let files = handle.write_kubeconfigs(std::path::Path::new("kubeconfigs"))?; // for kubectl
//! # let _ = (client, snapshot, files); Ok(()) }
//! ```
//!
//! # What it serves
//!
//! - HTTPS only (rustls on ring, HTTP/1.1 with upgrades), with a CA generated at start and a
//!   server certificate it signs for `localhost`, `127.0.0.1` and the address served on. A
//!   client that does not trust that CA fails the handshake.
//! - Authentication by bearer token, one per identity (see [`auth`]): the admin
//!   (`system:masters`) and every ServiceAccount `infra/k8s/base/rbac.yaml` defines, as
//!   `system:serviceaccount:stowage:<name>`. No token, or an unknown one: 401 `Unauthorized`.
//!   [`SandboxHandle::write_kubeconfigs`] writes a kubeconfig per identity (CA embedded).
//! - Authorization of every request by the stored Roles, ClusterRoles and bindings (the
//!   evaluator behind the reviews, below): refused with 403 `Forbidden`, worded as the API
//!   server words it. Discovery, `/version` and `/openapi*` are open to every authenticated
//!   user. The fleet's roles exist only once someone applies `rbac.yaml`
//!   ([`apply_fleet_rbac`] does it through a client, as `kubectl apply` would).
//! - `/version`; discovery: `/api`, `/api/v1`, `/apis`, `/apis/{group}`, `/apis/{group}/{version}`,
//!   including the types of CRDs created at run time (created CRDs are `Established` at once).
//! - For every type: list (label selectors with every operator, `fieldSelector` on
//!   `metadata.name`/`metadata.namespace`, `limit`/`continue` paging), get, create (with
//!   `generateName`), update (PUT), merge patch (PATCH `application/merge-patch+json`;
//!   `strategic-merge-patch+json` is treated as a merge patch) and delete (with uid and
//!   resourceVersion preconditions), namespaced and cluster-scoped, in every namespace at once.
//! - Server-populated fields: `metadata.uid`, `resourceVersion` (one global counter),
//!   `creationTimestamp`, `generation` (bumped when anything outside metadata and status
//!   changes) and `managedFields`; namespaces get `status.phase: Active`, CRDs their conditions,
//!   and a claim naming its volume (`spec.volumeName`) is `Bound` with that PV once both exist,
//!   as the PV controller binds them.
//! - Failures as `Status` objects: 404 `NotFound` (unknown type, object or namespace),
//!   409 `AlreadyExists`, 409 `Conflict` (stale resourceVersion), 422 `Invalid` (missing or
//!   malformed name, name differing from the URL, malformed CRD), 400 `BadRequest`, 405, 415.
//! - `kubectl` can list, get and watch (`get -w`): server-side printing (`as=Table`) answers
//!   name and age.
//! - kubectl's writes as users type them: `kubectl create namespace|serviceaccount|configmap|secret`
//!   (they send protobuf, decoded by `protobuf`: client-go's typed clients post
//!   `application/vnd.kubernetes.protobuf` and never fall back to JSON, so a server has to read
//!   it; prost reads the wire format, the messages declare the fields kubectl fills in, and a
//!   body holding any other field is refused rather than stored without it; answers stay JSON,
//!   which kubectl accepts), and `kubectl apply -f` with its default strict validation.
//! - OpenAPI v3 discovery (`/openapi/v3` and one document per group-version, see `openapi`):
//!   paths, operations, query parameters and request media types, no schemas; enough for kubectl
//!   to see that every PATCH takes `fieldValidation` and leave validation to the server.
//! - Write parameters (see `validation`): `fieldValidation` `Strict` refuses unknown fields (a
//!   built-in kind's fields are those of its `k8s-openapi` type, a custom resource's those of
//!   its CRD's structural schema) and duplicate JSON keys; `Warn` drops them with a `Warning`
//!   header each; `Ignore` or none stores the object as sent. `fieldManager` is recorded as the
//!   writer in `managedFields`. `dryRun` is refused (the sandbox would write).
//!   Strategic merge patches are applied as merge patches, which is what kubectl's re-apply of a
//!   kind without merge-keyed lists (RBAC, service accounts, config maps) needs; a patch holding
//!   a strategic-merge directive (`$setElementOrder`, `$patch`, `$retainKeys`,
//!   `$deleteFromPrimitiveList`, sent when a merge-keyed list such as a pod's containers
//!   changes) is refused with 400 rather than misapplied.
//! - `pods/exec` as a websocket session (`v5.channel.k8s.io`, `v4.channel.k8s.io`), what
//!   `kubectl exec` and kube's `Api::exec` speak, running scripted pods: see [`exec`].
//! - Watches (see [`watch`]): `?watch=true|1` on every list path (namespaced, all namespaces,
//!   cluster-scoped, CRD-defined types) and on one object's path; from a `resourceVersion`
//!   (unset or `"0"`: synthetic `ADDED` events for the current state first; `sendInitialEvents`),
//!   with label and field selectors (an object that stops matching is sent as `DELETED`),
//!   `allowWatchBookmarks`, `timeoutSeconds`; a bounded history of recent changes lets a
//!   watch resume, and a `resourceVersion` older than it (or a watcher too slow to keep up)
//!   gets an `ERROR` event with a `410 Expired` `Status`, so kube-runtime's watcher relists.
//!   Deletes, including a namespace's or CRD's contents, are `DELETED` events.
//! - `SubjectAccessReview` (`POST /apis/authorization.k8s.io/v1/subjectaccessreviews`),
//!   answered by evaluating the stored Roles, ClusterRoles and bindings (see `rbac`: verbs,
//!   groups, resources and subresources, resource names, namespaces, `*`, `system:masters`):
//!   the same evaluation that authorizes every request.
//! - CSI volume snapshots, with [`Sandbox::with_csi_disks`]: the snapshot CRDs are in the
//!   sample app, and a controller plays the external-snapshotter, the provisioner and the CSI
//!   driver of [`LOCAL_CSI_DRIVER`] over a disk provider (the `csi` module).
//! - Nodes (the sample app has one, labelled with [`SAMPLE_REGION`]); the version `/version`
//!   answers can be changed with [`Sandbox::set_version`].
//!
//! # What it does not serve
//!
//! Server-side apply, JSON patch, `deletecollection`, subresources (`/status`,
//! `/scale`; `pods/exec` over SPDY or with a terminal), OpenAPI v2 and schemas in OpenAPI v3,
//! protobuf for kinds other than the four above (and protobuf answers), dry runs, aggregated
//! discovery, client-certificate or OIDC authentication, impersonation, aggregated
//! ClusterRoles, HTTP/2, admission, defaulting, finalizers and graceful
//! deletion (deleting a namespace or CRD removes its contents at once), controllers (a
//! Deployment creates no pods), and consistent paging snapshots (a continued list resumes after
//! the last name it returned, and sees changes made in between). A watch's resource version
//! must come from this sandbox (a newer one than it has issued only waits for it), and the
//! `WatchList` streaming of protobuf is not served (JSON only).

//!
//! No production crate depends on this one: only the CLI's `sandbox` and `demo` commands and
//! the tests do (a test in `tests/` checks the crate graph).

pub mod auth;
mod csi;
pub(crate) mod error;
pub mod exec;
mod http;
mod openapi;
mod protobuf;
pub(crate) mod rbac;
pub(crate) mod sample;
mod serve;
pub(crate) mod store;
mod types;
mod validation;
pub mod watch;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use auth::{ADMIN, FLEET_NAMESPACE, Identity, apply_fleet_rbac, fleet_rbac};
pub use exec::ExecRecord;
pub use sample::{LOCAL_CSI_DRIVER, LOCAL_SNAPSHOT_CLASS, SAMPLE_REGION};
use store::Store;
use stowage_cluster::ClusterTarget;

/// A sandbox cluster's state. Cheap to clone: clones share one cluster.
#[derive(Clone)]
pub struct Sandbox {
    // A std mutex: every operation is short and never awaits while holding it.
    store: Arc<Mutex<Store>>,
    address: Arc<Mutex<Option<SocketAddr>>>,
    exec_sessions: Arc<AtomicUsize>,
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
    /// The CA or the server certificate could not be made, or TLS not set up with them.
    #[error("cannot set up the sandbox's TLS: {0}")]
    Tls(String),
    /// A kubeconfig could not be written.
    #[error("cannot write the kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file or folder.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// No identity of that name.
    #[error("the sandbox has no identity {identity:?}; it has: {}", known.join(", "))]
    UnknownIdentity {
        /// The name asked for.
        identity: String,
        /// The identities there are.
        known: Vec<String>,
    },
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
            exec_sessions: Arc::new(AtomicUsize::new(0)),
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

    /// Every command an exec session ran so far, oldest first.
    pub fn exec_log(&self) -> Vec<ExecRecord> {
        self.with_store(|s| s.exec_log().to_vec())
    }

    /// Exec sessions open right now (a client that gives up closes its session).
    pub fn open_exec_sessions(&self) -> usize {
        self.exec_sessions.load(Ordering::SeqCst)
    }

    /// Counts an exec session as open until the guard drops.
    fn exec_session_opened(&self) -> ExecSessionGuard {
        self.exec_sessions.fetch_add(1, Ordering::SeqCst);
        ExecSessionGuard(self.exec_sessions.clone())
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

    /// Serves the cluster over HTTPS on `addr` (port 0 picks a free port) until the handle is
    /// dropped or shut down, with a new CA, server certificate and tokens (see [`auth`]).
    pub async fn start(self, addr: SocketAddr) -> Result<SandboxHandle, SandboxError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| SandboxError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| SandboxError::Bind { addr, source })?;
        *self.address.lock().unwrap_or_else(PoisonError::into_inner) = Some(addr);
        let credentials = Arc::new(auth::Credentials::generate(addr)?);
        let url = format!("https://{addr}");
        let admin = credentials
            .identity(ADMIN)
            .expect("the admin identity always exists");
        let client = client_for(&url, &credentials, admin)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let app = http::router(self.clone(), credentials.clone());
        let tls = tokio_rustls::TlsAcceptor::from(credentials.server_config.clone());
        let server = tokio::spawn(serve::serve(listener, tls, app, stopped));
        tracing::info!(%url, "sandbox cluster serving");
        Ok(SandboxHandle {
            sandbox: self,
            addr,
            url,
            client,
            credentials,
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

/// A kube client for `identity`: the sandbox's CA as the only trusted root, the identity's
/// token, default namespace `default`.
fn client_for(
    url: &str,
    credentials: &auth::Credentials,
    identity: &Identity,
) -> Result<kube::Client, SandboxError> {
    let mut config = kube::Config::new(url.parse().expect("a socket address makes a valid URI"));
    config.default_namespace = "default".to_owned();
    config.root_cert = Some(vec![credentials.ca_der().to_vec()]);
    config.auth_info.token = Some(identity.token().to_owned().into());
    kube::Client::try_from(config).map_err(SandboxError::Client)
}

/// One open exec session, counted in [`Sandbox::open_exec_sessions`].
struct ExecSessionGuard(Arc<AtomicUsize>);

impl Drop for ExecSessionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running sandbox server. Dropping it stops the server.
pub struct SandboxHandle {
    sandbox: Sandbox,
    addr: SocketAddr,
    url: String,
    client: kube::Client,
    credentials: Arc<auth::Credentials>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl SandboxHandle {
    /// The base URL, e.g. `https://127.0.0.1:41234`. Reaching it takes the CA
    /// ([`SandboxHandle::ca_pem`]) and a token: use [`SandboxHandle::client`],
    /// [`SandboxHandle::client_as`] or a kubeconfig from [`SandboxHandle::write_kubeconfigs`].
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The sandbox CA's certificate (PEM), the one root its server certificate chains to.
    pub fn ca_pem(&self) -> &str {
        self.credentials.ca_pem()
    }

    /// The identities the sandbox knows: [`ADMIN`] and the fleet's service accounts
    /// (`stowage-snapshot`, `stowage-restore`, `stowage-vault`).
    pub fn identities(&self) -> Vec<String> {
        self.credentials
            .identities()
            .iter()
            .map(|i| i.name.clone())
            .collect()
    }

    /// A kube client authenticated as `identity` (see [`SandboxHandle::identities`]),
    /// trusting only the sandbox's CA.
    pub fn client_as(&self, identity: &str) -> Result<kube::Client, SandboxError> {
        let found =
            self.credentials
                .identity(identity)
                .ok_or_else(|| SandboxError::UnknownIdentity {
                    identity: identity.to_owned(),
                    known: self.identities(),
                })?;
        client_for(&self.url, &self.credentials, found)
    }

    /// Writes a kubeconfig per identity into `dir` (`<identity>.kubeconfig`: the CA as
    /// `certificate-authority-data`, the https URL, the identity's token, one context
    /// `sandbox-<identity>`), plus `sandbox.kubeconfig` holding every context (current:
    /// `sandbox-admin`). Files are readable by their owner only. Answers identity → path.
    pub fn write_kubeconfigs(
        &self,
        dir: &std::path::Path,
    ) -> Result<BTreeMap<String, PathBuf>, SandboxError> {
        self.credentials.write_kubeconfigs(&self.url, dir)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kube client for the sandbox as [`ADMIN`] (allowed everything; CA-verified; default
    /// namespace `default`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The sandbox as a cluster target for the stages: its client, with hooks through its
    /// websocket `pods/exec`, as for any cluster.
    pub fn target(&self) -> ClusterTarget {
        ClusterTarget::new(self.client())
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
