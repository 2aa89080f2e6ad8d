//! Integration tests of the sandbox, served on a free port and reached through an ordinary
//! `kube::Client` (and `kubectl`).

mod auth;
mod csi;
mod exec_ws;
mod harness;
mod kubectl;
mod kubectl_apply;
mod sandbox;
mod watch;
