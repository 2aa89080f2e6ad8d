//! Integration tests of the sandbox, served on a free port and reached through an ordinary
//! `kube::Client` (and `kubectl`).

mod csi;
mod harness;
mod kubectl;
mod sandbox;
mod watch;
