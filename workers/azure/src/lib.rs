//! Azure managed disks for Stowage: the ARM control plane and the page-blob data path.
//!
//! # Layout
//!
//! - [`arm`]: a client of ARM's REST API for disks, snapshots and permissions over
//!   `azure_core`'s pipeline: pinned api-version, retries of 429/503 after `Retry-After`,
//!   long-running operations, correlation ids logged, errors that say what to do.
//! - [`identity`]: which credential the workers use (workload identity, managed identity,
//!   client secret, Azure CLI).
//! - [`permissions`]: the actions each resource group needs, and the preflight that checks
//!   them through ARM's permissions API.
//! - [`data`]: page blobs through SAS URLs: page ranges and their diff, bounded parallel
//!   reads, Put Page writes, hydration of upload disks with `endGetAccess` guaranteed.
//! - [`provider`]: [`AzureDiskProvider`], the disk port for `disk.csi.azure.com` volumes over
//!   the two.
//! - [`config`]: the settings a worker is given (subscription, resource groups, region,
//!   credential kind, endpoint), checked, and turned into the client, provider and preflight
//!   scopes.
//! - [`error`]: [`AzureError`], sorted by whether a retry can help.
//!
//! The design, and what is tested against what, is in ARCHITECTURE.md ("Azure managed disks").

pub mod arm;
pub mod config;
pub mod data;
pub mod error;
pub mod identity;
pub mod permissions;
pub mod provider;
mod transport;

pub use arm::{
    Access, ArmClient, ArmSettings, DiskResource, NewDisk, ResourceId, ResourceKind, SasUrl,
};
pub use config::AzureConfig;
pub use error::{AzureError, ServiceError};
pub use identity::{CredentialKind, credential};
pub use provider::{AZURE_DISK_DRIVER, AzureDiskProvider, AzureDiskSettings};
pub use transport::RetrySettings;
