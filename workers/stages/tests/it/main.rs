//! Integration tests of the stages (one binary): the cluster stages against sandbox clusters
//! (`snapshot`, `restore`, sharing `cluster_fixture`), and retention over simulated months, on
//! local-folder vaults and local disks.

mod cluster_fixture;
mod restore;
mod retention;
mod sealed;
mod snapshot;
