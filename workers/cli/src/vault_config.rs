//! Turning `--vault`, `--secondary`, the key and `--disk-root` into a [`VaultContext`], as the
//! vault's settings (`vault.json`) say: see "Honest settings" in ARCHITECTURE.md.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use stowage_disk::LocalDiskProvider;
use stowage_schemas::domain::Redundancy;
use stowage_stages::VaultContext;
use stowage_vault::catalog::settings;
use stowage_vault::crypto::VaultKey;
use stowage_vault::keyring;
use stowage_vault::store::BlobStore;

use crate::cli::{AzureArgs, ClusterArgs, DiskProviderChoice, VaultArgs};

/// The operator's key: `STOWAGE_VAULT_KEY`, or the file `--vault-key-file` names. It is the
/// key-encryption key that unwraps the vault's data key (`stowage_vault::keyring`).
pub fn vault_key(args: &VaultArgs) -> anyhow::Result<VaultKey> {
    configured_vault_key(args)?.context(
        "the vault key is missing: set STOWAGE_VAULT_KEY to its 64 hex digits, or pass --vault-key-file",
    )
}

/// The operator's key if one is configured (`STOWAGE_VAULT_KEY` or `--vault-key-file`).
pub fn configured_vault_key(args: &VaultArgs) -> anyhow::Result<Option<VaultKey>> {
    let text = match (std::env::var("STOWAGE_VAULT_KEY"), &args.vault_key_file) {
        (Ok(key), _) => key,
        (Err(_), Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the vault key file {}", path.display()))?,
        (Err(_), None) => return Ok(None),
    };
    let key = VaultKey::from_hex(text.trim()).context("the vault key is not 64 hex digits")?;
    Ok(Some(key))
}

/// The vault's data key, unwrapped from the keyring of `store` with the operator's `key`;
/// refuses a key that is not the vault's (naming the id it expects) before anything is written.
pub async fn unlock(store: &BlobStore, key: &VaultKey) -> anyhow::Result<keyring::Unlocked> {
    Ok(keyring::unlock(store, key).await?)
}

/// The vault's data key when the operator's key is configured, unwrapped from the keyring of
/// `--vault` (or of `--secondary` when only it is given); `None` without a key.
pub async fn data_key(args: &VaultArgs) -> anyhow::Result<Option<VaultKey>> {
    let Some(key) = configured_vault_key(args)? else {
        return Ok(None);
    };
    let Some(location) = args.vault.as_deref().or(args.secondary.as_deref()) else {
        return Ok(Some(key));
    };
    let store = open_store(location)?;
    Ok(Some(unlock(&store, &key).await?.data_key))
}

/// Open a vault location for a command, with the vault's data key when one is given (see
/// [`data_key`]), so what a recovery point holds (sealed, see `stowage_vault::seal`) can be
/// read; without a key, reading a sealed object fails naming the fix. Settings, policies,
/// instances and job records need no key.
pub fn open_keyed_store(location: &str, data_key: Option<&VaultKey>) -> anyhow::Result<BlobStore> {
    let store = open_store(location)?;
    Ok(match data_key {
        Some(key) => store.with_key(key),
        None => store,
    })
}

/// Open a vault location, with the Azure access key from the environment if it needs one.
pub fn open_store(location: &str) -> anyhow::Result<BlobStore> {
    let key = std::env::var("STOWAGE_AZURE_ACCESS_KEY").ok();
    Ok(BlobStore::open(location, key.as_deref())?)
}

/// Open a storage location that must already exist: a local folder is never created (a
/// missing one is an unmounted volume or a typo, not a place to start writing a copy).
pub fn open_existing_store(location: &str) -> anyhow::Result<BlobStore> {
    if !location.contains("://") || location.starts_with("file://") {
        let folder = Path::new(location.strip_prefix("file://").unwrap_or(location));
        if !folder.is_dir() {
            bail!(
                "the folder {} does not exist; workers do not create it (an unmounted volume \
                 would be replaced by an empty folder): mount or create it",
                folder.display()
            );
        }
    }
    open_store(location)
}

/// The vault stages' context, or `None` when no vault is configured. Reads `vault.json` and
/// refuses an uninitialised vault; a geo vault's secondary is `--secondary`, else the location
/// its settings record, and when it cannot be opened the context says why (the stages that
/// need it fail with that reason; the others run).
pub async fn vault_context(args: &VaultArgs) -> anyhow::Result<Option<VaultContext>> {
    let Some(location) = &args.vault else {
        return Ok(None);
    };
    let primary = open_store(location)?;
    let vault = match settings::read_vault(&primary).await {
        Ok(vault) => vault,
        Err(e) if e.is_not_found() => bail!(
            "the vault at {location} is not initialised (it has no vault.json): run `stowage \
             vault init --vault {location} --name <name>` first, then start the worker"
        ),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read the settings of the vault at {location}"));
        }
    };
    // The key is checked against the vault's keyring before anything else happens: a worker
    // with the wrong key refuses to start, naming the key id the vault expects.
    let key = unlock(&primary, &vault_key(args)?)
        .await
        .with_context(|| format!("the worker cannot use the vault at {location}"))?
        .data_key;
    let disks: Arc<dyn stowage_disk::DiskProvider> = match (&args.disk_root, args.disk_provider) {
        (Some(root), DiskProviderChoice::Azure) => bail!(
            "--disk-root {} names the local disk provider's folder, but --disk-provider azure \
             reads and writes Azure managed disks: drop --disk-root (or STOWAGE_DISK_ROOT)",
            root.display()
        ),
        (None, DiskProviderChoice::Azure) => azure_provider(&args.azure)?,
        (Some(root), _) => Arc::new(
            LocalDiskProvider::open(root)
                .with_context(|| format!("cannot open the disk root {}", root.display()))?,
        ),
        // Operational snapshots through the cluster's CSI driver; no volume data reachable.
        (None, DiskProviderChoice::Csi) => Arc::new(stowage_disk::NoDiskProvider),
        (None, DiskProviderChoice::Local) => bail!(
            "--disk-root is missing: the vault stages read snapshots and write staging disks through the local disk provider rooted there (or pass --disk-provider csi to take operational snapshots as CSI VolumeSnapshots)"
        ),
    };
    let mut ctx = VaultContext::new(primary, key, disks);
    if args.disk_provider == DiskProviderChoice::Azure {
        // Reads of managed-disk snapshots cross the network: more bytes in flight keep the
        // transfer fed (load-tests/README.md, "Azure managed disks"), as 8 reads of 4 MiB (the
        // provider's read size hint); memory stays bounded at about two pieces' worth each.
        ctx.parallelism = ctx.parallelism.max(AZURE_TRANSFER_PARALLELISM);
    }
    match (&vault.redundancy, &args.secondary) {
        (Redundancy::Local, None) => {}
        (Redundancy::Local, Some(secondary)) => bail!(
            "--secondary {secondary} is given, but vault {} is locally redundant (its vault.json \
             says so); drop --secondary, or make the vault geo-redundant with `stowage vault \
             init --update --redundancy geo --secondary <location> --secondary-region <region>`",
            vault.name
        ),
        (
            Redundancy::Geo {
                secondary_location,
                secondary_region,
            },
            flag,
        ) => {
            let location = flag.as_deref().unwrap_or(secondary_location);
            ctx = match open_existing_store(location) {
                Ok(store) => ctx.with_secondary(store),
                Err(e) => {
                    let reason = format!("cannot open {location}: {e:#}");
                    tracing::warn!(
                        vault = %vault.name,
                        secondary_region,
                        %reason,
                        "the vault is geo-redundant but its secondary storage cannot be opened; \
                         geo-replication, retention and restores from the secondary tier will \
                         fail until it can"
                    );
                    ctx.without_secondary(reason)
                }
            };
        }
    }
    Ok(Some(ctx))
}

/// Pieces (1 MiB) a vault transfer reads and seals at once with the Azure disk provider.
const AZURE_TRANSFER_PARALLELISM: usize = 32;

/// The Azure disk provider `--disk-provider azure` and the `--azure-*` settings describe,
/// refusing a missing setting by name (with its flag and variable). Must be called inside a
/// Tokio runtime (the provider ends idle read access in a task of its own); the caller ends
/// every access at shutdown ([`stowage_disk::DiskProvider::shutdown`]).
pub fn azure_provider(args: &AzureArgs) -> anyhow::Result<Arc<stowage_azure::AzureDiskProvider>> {
    let config = args.config();
    config.check()?;
    let credential = stowage_azure::credential(config.credential)?;
    let arm = config.arm_client(credential)?;
    let provider = config.provider(arm)?;
    tracing::info!(
        subscription = config.subscription.as_deref().unwrap_or_default(),
        snapshot_group = config.snapshot_group.as_deref().unwrap_or_default(),
        staging_group = config.staging_group.as_deref().unwrap_or_default(),
        region = config.region.as_deref().unwrap_or_default(),
        endpoint = %provider_endpoint(&config),
        "Azure disk provider"
    );
    Ok(Arc::new(provider))
}

fn provider_endpoint(config: &stowage_azure::AzureConfig) -> String {
    config
        .arm_settings()
        .map(|s| s.endpoint.to_string())
        .unwrap_or_default()
}

/// The snapshot and restore stages' context, or `None` when no cluster credentials are found
/// (see `kube_config`).
pub async fn cluster_context(
    cluster: &ClusterArgs,
    vault: Option<&VaultContext>,
    disk_provider: DiskProviderChoice,
) -> anyhow::Result<Option<stowage_stages::ClusterContext>> {
    let Some(found) = crate::kube_config::cluster_client(cluster).await? else {
        return Ok(None);
    };
    let Some(vault) = vault else {
        // A vault-stage worker given a cluster (or running in a pod with a token) needs none.
        tracing::debug!(
            source = found.source,
            "a cluster but no vault: the cluster stages cannot run"
        );
        return Ok(None);
    };
    tracing::info!(
        url = found.url,
        source = found.source,
        "cluster credentials"
    );
    // Hooks run through the same API server's pods/exec websocket, with the same client.
    let target = stowage_cluster::ClusterTarget::new(found.client);
    let Some(name) = cluster.cluster_name.clone() else {
        bail!(
            "name the cluster at {}: --cluster-name <name> (STOWAGE_CLUSTER_NAME), the name \
             its instances give it; the snapshot and restore stages take only that cluster's jobs",
            found.url
        );
    };
    let mut ctx = stowage_stages::ClusterContext::new(
        vault.primary.clone(),
        vault.disks.clone(),
        name,
        target,
    );
    if let Some(secondary) = &vault.secondary {
        ctx = ctx.with_secondary(secondary.store.clone());
    }
    if disk_provider == DiskProviderChoice::Csi {
        ctx = ctx.with_snapshot_mode(stowage_stages::SnapshotMode::Csi);
    }
    Ok(Some(ctx))
}
