//! Integration tests of the cluster crate, against a sandbox served on a free port and
//! reached through an ordinary `kube::Client` (and `kubectl`).

mod collect;
mod harness;
mod kubectl;
mod sandbox;
