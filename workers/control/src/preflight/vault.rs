//! The vault group: [`VAULT_STORAGE`] and [`VAULT_CONTENTS`].

use super::*;

pub(super) fn local_path(location: &str) -> Option<&str> {
    (!location.contains("://") || location.starts_with("file://"))
        .then(|| location.strip_prefix("file://").unwrap_or(location))
}

/// Opens the vault without creating anything: a local folder must already exist.
pub(super) fn open_vault(target: &VaultTarget) -> Result<BlobStore, Check> {
    if let Some(path) = local_path(&target.location) {
        match std::fs::metadata(Path::new(path)) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Check::fail(
                    VAULT_STORAGE,
                    format!("the vault folder {path} is a file, not a folder"),
                    "point --vault at a folder (an empty one for a new vault)",
                ));
            }
            Err(e) => {
                return Err(Check::fail(
                    VAULT_STORAGE,
                    format!("the vault folder {path} cannot be used: {e}"),
                    format!(
                        "create it (`mkdir -p {path}`) on a local filesystem, or point --vault at the vault"
                    ),
                ));
            }
        }
    }
    BlobStore::open(&target.location, target.access_key.as_deref()).map_err(|e| {
        Check::fail(
            VAULT_STORAGE,
            chain(&e),
            "fix --vault: a folder, azurite://<container> or azure://<account>/<container> with STOWAGE_AZURE_ACCESS_KEY",
        )
    })
}

pub(super) fn container_of(location: &str) -> Option<&str> {
    location.strip_prefix("azurite://").or_else(|| {
        location
            .strip_prefix("azure://")?
            .split_once('/')
            .map(|(_, c)| c)
    })
}

pub(super) fn storage_failure(target: &VaultTarget, error: &stowage_vault::Error) -> Check {
    let text = chain(error);
    let container = container_of(&target.location);
    if let Some(container) = container
        .filter(|_| text.contains("ContainerNotFound") || text.contains("container does not exist"))
    {
        let create = if target.location.starts_with("azurite://") {
            format!(
                "create it: `az storage container create --name {container} --connection-string \"UseDevelopmentStorage=true\"` (Azurite)"
            )
        } else {
            format!(
                "create it: `az storage container create --name {container} --account-name <account>`"
            )
        };
        return Check::fail(
            VAULT_STORAGE,
            format!("the container {container:?} does not exist"),
            create,
        );
    }
    Check::fail(
        VAULT_STORAGE,
        format!(
            "the vault storage at {} cannot be listed: {text}",
            target.location
        ),
        if container.is_some() {
            "check that the storage endpoint is reachable (Azurite: `infra/scripts/start-azurite.sh`), the account key (STOWAGE_AZURE_ACCESS_KEY) and the container name"
        } else {
            "check that the folder is readable by this user"
        },
    )
}

/// [`VAULT_STORAGE`] and [`VAULT_CONTENTS`], from one listing of the container's top level.
pub(super) async fn vault_checks(targets: &PreflightTargets) -> Vec<Check> {
    let Some(target) = &targets.vault else {
        let why = "no vault given (--vault)";
        return vec![
            Check::skipped(VAULT_STORAGE, why),
            Check::skipped(VAULT_CONTENTS, why),
        ];
    };
    let listing = async {
        let store = open_vault(target)?;
        let names = store
            .list_top_level()
            .await
            .map_err(|e| storage_failure(target, &e))?;
        Ok::<_, Check>((store, names))
    };
    let listing = tokio::time::timeout(targets.timeout, listing).await;
    let (store, names) = match listing {
        Ok(Ok(found)) => found,
        Ok(Err(failed)) => {
            return vec![
                failed,
                Check::skipped(VAULT_CONTENTS, "the vault storage cannot be read"),
            ];
        }
        Err(_) => {
            return vec![
                Check::fail(
                    VAULT_STORAGE,
                    format!(
                        "the vault storage at {} did not answer within {} s",
                        target.location,
                        targets.timeout.as_secs_f32()
                    ),
                    "check that the storage endpoint is up and reachable from here (Azurite: `infra/scripts/start-azurite.sh`)",
                ),
                Check::skipped(VAULT_CONTENTS, "the vault storage cannot be read"),
            ];
        }
    };
    let storage = Check::pass(
        VAULT_STORAGE,
        format!(
            "{store} is reachable ({} top-level names)",
            names.iter().filter(|n| !n.starts_with('.')).count()
        ),
    );
    let foreign: Vec<&String> = names
        .iter()
        .filter(|n| !layout::is_vault_top_level(n))
        .collect();
    let contents = if names.iter().all(|n| n.starts_with('.')) {
        Check::pass(VAULT_CONTENTS, "empty: ready to become a vault")
    } else if foreign.is_empty() {
        let ours: Vec<&str> = names
            .iter()
            .filter(|n| !n.starts_with('.'))
            .map(String::as_str)
            .collect();
        Check::pass(
            VAULT_CONTENTS,
            format!("holds only Stowage data ({})", ours.join(", ")),
        )
    } else {
        Check::fail(
            VAULT_CONTENTS,
            format!(
                "holds {} top-level name(s) that are not Stowage data: {}",
                foreign.len(),
                first_few(foreign.iter().map(|s| s.as_str()), 5)
            ),
            "give the vault a container or folder of its own (empty, or written only by Stowage); \
             Stowage's retention and verification walk the whole vault and must not meet other data",
        )
    };
    vec![storage, contents]
}

/// The vault's region: given, or read from `vault.json`.
pub(super) async fn vault_region(target: &VaultTarget) -> Result<Option<String>, String> {
    if let Some(region) = &target.region {
        return Ok(Some(region.clone()));
    }
    let store = open_vault(target).map_err(|c| c.detail)?;
    match stowage_vault::catalog::settings::read_vault(&store).await {
        Ok(vault) => Ok(Some(vault.region)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(chain(&e)),
    }
}
