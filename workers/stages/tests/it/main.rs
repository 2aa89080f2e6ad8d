//! Integration tests of the stages (one binary): the cluster stages against sandbox clusters
//! (`snapshot`, `restore`, `ordering`, sharing `cluster_fixture`), retention over simulated months, and two
//! instances of one cluster over simulated weeks (`instances`), on local-folder vaults and local
//! disks.

mod cluster_fixture;
mod csi;
mod honest_settings;
mod instances;
mod lock;
mod ordering;
mod restore;
mod retention;
mod sealed;
mod snapshot;
