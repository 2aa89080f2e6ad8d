//! The cluster side of Stowage: everything that talks to a Kubernetes API server.
//!
//! # Layout
//!
//! - [`target`]: [`ClusterTarget`], one cluster a worker reaches (a `kube::Client` and the
//!   [`PodExec`] its hooks run through, built from that client).
//! - [`exec`]: [`PodExec`], hook commands run in pods the way `kubectl exec` runs them: the
//!   `pods/exec` websocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`), with bounded output,
//!   a timeout that closes the session, and errors sorted by whether a retry helps.
//! - [`collect`]: reads every object a backup scope covers, page by page, strips the fields
//!   the server populates and hands each object to a sink: the resources half of a snapshot.
//! - [`access`]: 401 and 403 answers read into what was refused and which role should grant it.
//! - [`csi`]: CSI VolumeSnapshots (`snapshot.storage.k8s.io/v1`): the class of a driver,
//!   taking a snapshot and waiting for it by watch, deleting it, pre-bound contents for restores.
//! - [`apply`]: the other direction, used by restore: discovery, reading what a target holds,
//!   creating or merge-patching an object, waiting (by watch) for CRDs to be established and for
//!   claims to be bound.
//! - [`wait`]: waiting for an object to reach a state by watch (kube-runtime's watcher), with
//!   a deadline and errors naming the object, the state and the timeout.
//!
//! Everything here speaks the Kubernetes API through `kube`, so the same code runs against
//! a real cluster and against the sandbox (`workers/sandbox`, used only by tests and the CLI's
//! `sandbox` and `demo` commands). Label selectors are a domain type
//! (`stowage_schemas::selector`), shared with the catalog's validation.

pub mod access;
pub mod apply;
pub mod collect;
pub mod csi;
pub mod exec;
pub mod target;
pub mod wait;

pub use access::AccessDenied;
pub use collect::{
    CollectError, CollectOptions, CollectSummary, CollectedObject, SERVER_METADATA_FIELDS, collect,
    collect_with_options, strip_server_fields,
};
pub use exec::{ExecError, ExecOutput, ExecRequest, OUTPUT_LIMIT, PodExec};
pub use stowage_schemas::selector::LabelSelector;
pub use target::ClusterTarget;
