//! Which stage handlers this build has, and what each needs to run.
//!
//! A stage is runnable only once its real handler exists and its dependencies are configured;
//! otherwise the worker refuses it with an error that says which, rather than run a placeholder
//! that acks jobs it did not do.

use stowage_runtime::{StageConfig, Worker};
use stowage_schemas::Stage;
use stowage_stages::{
    ClusterContext, GeoReplication, RecordSettings, Recorded, RestoreHydration, RestoreStage,
    RetentionStage, SnapshotStage, VaultContext, VaultTransfer,
};

/// What the configured stages run against.
#[derive(Clone, Default)]
pub struct Services {
    /// The vault, its key and the disks, when `--vault` was given.
    pub vault: Option<VaultContext>,
    /// The cluster, the vault and the disks, when `--cluster-url` and `--vault` were given.
    pub cluster: Option<ClusterContext>,
    /// How every stage keeps its job records (in the vault's primary storage).
    pub records: RecordSettings,
}

/// Why a stage cannot run.
#[derive(Debug, thiserror::Error)]
pub enum StageUnavailable {
    /// The handler is not in this build yet.
    #[error(
        "the {stage} stage has no handler in this build yet (it comes with the {component}); \
         leave its jobs queued: they wait in the `{stage}` queue until a worker for it starts"
    )]
    NotBuilt {
        /// The stage.
        stage: Stage,
        /// What will bring it.
        component: &'static str,
    },
    /// The handler exists but needs a cluster.
    #[error(
        "the {stage} stage needs a cluster and a vault: pass --cluster-url (e.g. a sandbox from \
         `stowage sandbox`), --vault, the vault key (STOWAGE_VAULT_KEY) and --disk-root"
    )]
    NeedsCluster {
        /// The stage.
        stage: Stage,
    },
    /// The handler exists but needs the vault.
    #[error(
        "the {stage} stage needs a vault: pass --vault (a folder, azurite://<container> or \
         azure://<account>/<container>), the vault key (STOWAGE_VAULT_KEY or --vault-key-file) \
         and --disk-root"
    )]
    NeedsVault {
        /// The stage.
        stage: Stage,
    },
}

/// `None` when the stage's handler is in this build, else the component that will bring it.
fn component_of(stage: Stage) -> Option<&'static str> {
    match stage {
        Stage::Snapshot
        | Stage::Retention
        | Stage::Restore
        | Stage::VaultTransfer
        | Stage::GeoReplication
        | Stage::RestoreHydration => None,
    }
}

/// The stages this build has handlers for.
pub fn built() -> Vec<Stage> {
    Stage::ALL
        .into_iter()
        .filter(|s| component_of(*s).is_none())
        .collect()
}

/// Add the handler of `stage` to `worker`, or say why it cannot run. Every handler is wrapped
/// in [`Recorded`], so its runs show in `stowage jobs` and can be cancelled.
pub fn add(
    worker: Worker,
    stage: Stage,
    config: StageConfig,
    services: &Services,
) -> Result<Worker, StageUnavailable> {
    if let Some(component) = component_of(stage) {
        return Err(StageUnavailable::NotBuilt { stage, component });
    }
    if matches!(stage, Stage::Snapshot | Stage::Restore) {
        let cluster = services
            .cluster
            .clone()
            .ok_or(StageUnavailable::NeedsCluster { stage })?;
        let (store, records) = (cluster.vault.clone(), services.records);
        return Ok(match stage {
            Stage::Snapshot => worker.stage(
                Recorded::new(SnapshotStage::new(cluster), store, records),
                config,
            ),
            _ => worker.stage(
                Recorded::new(RestoreStage::new(cluster), store, records),
                config,
            ),
        });
    }
    let vault = services
        .vault
        .clone()
        .ok_or(StageUnavailable::NeedsVault { stage })?;
    let (store, records) = (vault.primary.clone(), services.records);
    Ok(match stage {
        Stage::VaultTransfer => worker.stage(
            Recorded::new(VaultTransfer::new(vault), store, records),
            config,
        ),
        Stage::GeoReplication => worker.stage(
            Recorded::new(GeoReplication::new(vault), store, records),
            config,
        ),
        Stage::RestoreHydration => worker.stage(
            Recorded::new(RestoreHydration::new(vault), store, records),
            config,
        ),
        Stage::Retention => worker.stage(
            Recorded::new(RetentionStage::new(vault), store, records),
            config,
        ),
        Stage::Snapshot | Stage::Restore => unreachable!("handled above"),
    })
}
