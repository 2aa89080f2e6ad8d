//! Integration tests of the stages (one binary): the cluster stages against sandbox clusters
//! (`snapshot`, `restore`, sharing `cluster_fixture`), and retention over simulated months, on
//! local-folder vaults and local disks.

mod cluster_fixture;
mod honest_settings;
mod lock;
mod restore;
mod retention;
mod snapshot;
