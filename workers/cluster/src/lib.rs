//! The cluster side of Stowage: everything that talks to a Kubernetes API server.
//!
//! # Layout
//!
//! - [`target`]: [`ClusterTarget`], one cluster a worker reaches (a `kube::Client` and the
//!   [`PodExec`] its hooks run through).
//! - [`exec`]: the [`PodExec`] port hooks run through (the sandbox crate implements it over its
//!   JSON exec endpoint; a websocket `pods/exec` implementation is still to come).
//! - [`collect`]: reads every object a backup scope covers, page by page, strips the fields
//!   the server populates and hands each object to a sink: the resources half of a snapshot.
//! - [`csi`]: CSI VolumeSnapshots (`snapshot.storage.k8s.io/v1`): the class of a driver,
//!   taking a snapshot and waiting for it by watch, deleting it, pre-bound contents for restores.
//! - [`apply`]: the other direction, used by restore: discovery, reading what a target holds,
//!   creating or merge-patching an object, waiting (by watch) for CRDs to be established.
//! - [`wait`]: waiting for an object to reach a state by watch (kube-runtime's watcher), with
//!   a deadline and errors naming the object, the state and the timeout.
//!
//! Everything here speaks the Kubernetes API through `kube`, so the same code runs against
//! a real cluster and against the sandbox (`workers/sandbox`, used only by tests and the CLI's
//! `sandbox` and `demo` commands). Label selectors are a domain type
//! (`stowage_schemas::selector`), shared with the catalog's validation.

pub mod apply;
pub mod collect;
pub mod csi;
pub mod exec;
pub mod target;
pub mod wait;

pub use collect::{
    CollectError, CollectOptions, CollectSummary, CollectedObject, SERVER_METADATA_FIELDS, collect,
    collect_with_options, strip_server_fields,
};
pub use exec::{ExecError, ExecOutput, ExecRequest, PodExec};
pub use stowage_schemas::selector::LabelSelector;
pub use target::ClusterTarget;
