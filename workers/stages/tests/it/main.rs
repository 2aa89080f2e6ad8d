//! Integration tests of the stages (one binary): the cluster stages against sandbox clusters,
//! and retention over simulated months, on local-folder vaults and local disks.

mod cluster_stages;
mod retention;
