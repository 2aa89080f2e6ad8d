//! The cluster side of Stowage: everything that talks to Kubernetes, and a sandbox cluster to
//! talk to when there is no real one.
//!
//! # Layout
//!
//! - [`sandbox`]: an in-process HTTP server for the subset of the Kubernetes API Stowage
//!   uses, with a sample application to load. Tests and `stowage demo` point an ordinary
//!   [`kube::Client`] at it; its module docs list what it serves and what it does not.
//! - [`exec`]: the [`PodExec`] port hooks run through, and its sandbox implementation (the
//!   sandbox answers a JSON exec endpoint instead of the WebSocket protocol of real
//!   `pods/exec`; see the module docs for why and how outcomes are scripted).
//! - [`collect`]: reads every object a backup scope covers, page by page, strips the fields
//!   the server populates and hands each object to a sink: the resources half of a snapshot.
//! - [`selector`]: Kubernetes label selectors, parsed and matched; shared by the sandbox's
//!   list filtering and the collector's scope checks.
//!
//! Everything here speaks the Kubernetes API through `kube`, so the same code runs against
//! a real cluster (reached through a kubeconfig) and against the sandbox.

pub mod collect;
pub mod exec;
pub mod sandbox;
pub mod selector;

pub use collect::{
    CollectError, CollectOptions, CollectSummary, CollectedObject, collect, collect_with_options,
    strip_server_fields,
};
pub use exec::{ExecError, ExecOutput, ExecRecord, ExecRequest, PodExec, SandboxExec};
pub use sandbox::sample::LOCAL_CSI_DRIVER;
pub use sandbox::{SAMPLE_REGION, Sandbox, SandboxError, SandboxHandle};
pub use selector::LabelSelector;
