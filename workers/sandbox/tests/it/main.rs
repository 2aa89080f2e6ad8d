//! Integration tests of the sandbox, served on a free port and reached through an ordinary
//! `kube::Client` (and `kubectl`).

mod harness;
mod csi;
mod kubectl;
mod sandbox;
