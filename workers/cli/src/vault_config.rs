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
use stowage_vault::store::BlobStore;

use crate::cli::{ClusterArgs, DiskProviderChoice, VaultArgs};

/// The vault key: `STOWAGE_VAULT_KEY`, or the file `--vault-key-file` names.
pub fn vault_key(args: &VaultArgs) -> anyhow::Result<VaultKey> {
    configured_vault_key(args)?.context(
        "the vault key is missing: set STOWAGE_VAULT_KEY to its 64 hex digits, or pass --vault-key-file",
    )
}

/// The vault key if one is configured (`STOWAGE_VAULT_KEY` or `--vault-key-file`).
fn configured_vault_key(args: &VaultArgs) -> anyhow::Result<Option<VaultKey>> {
    let text = match (std::env::var("STOWAGE_VAULT_KEY"), &args.vault_key_file) {
        (Ok(key), _) => key,
        (Err(_), Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the vault key file {}", path.display()))?,
        (Err(_), None) => return Ok(None),
    };
    let key = VaultKey::from_hex(text.trim()).context("the vault key is not 64 hex digits")?;
    Ok(Some(key))
}

/// Open a vault location for a command, with the vault key when one is configured, so what a
/// recovery point holds (sealed, see `stowage_vault::seal`) can be read; without a key, reading
/// a sealed object fails naming the fix. Settings, policies, instances and job records need no
/// key.
pub fn open_keyed_store(location: &str, args: &VaultArgs) -> anyhow::Result<BlobStore> {
    let store = open_store(location)?;
    Ok(match configured_vault_key(args)? {
        Some(key) => store.with_key(&key),
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
    let key = vault_key(args)?;
    let disks: Arc<dyn stowage_disk::DiskProvider> = match (&args.disk_root, args.disk_provider) {
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

/// The snapshot and restore stages' context, or `None` without a cluster URL.
pub fn cluster_context(
    cluster: &ClusterArgs,
    vault: Option<&VaultContext>,
    disk_provider: DiskProviderChoice,
) -> anyhow::Result<Option<stowage_stages::ClusterContext>> {
    let Some(url) = &cluster.cluster_url else {
        return Ok(None);
    };
    let Some(vault) = vault else {
        bail!("--cluster-url needs a vault too: pass --vault, the vault key and --disk-root");
    };
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("--cluster-url {url:?} is not a URL"))?;
    let client = kube::Client::try_from(kube::Config::new(uri))
        .with_context(|| format!("cannot build a client for {url}"))?;
    let target = stowage_cluster::ClusterTarget::new(
        client.clone(),
        Arc::new(stowage_sandbox::SandboxExec::new(client)),
    );
    let mut ctx = stowage_stages::ClusterContext::new(
        vault.primary.clone(),
        vault.disks.clone(),
        cluster.cluster_name.clone(),
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
