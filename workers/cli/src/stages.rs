//! Which stage handlers this build has, and what each needs to run.
//!
//! Every stage has a handler; a stage runs only when what it needs is configured, otherwise
//! the worker refuses it with an error that says what to pass, rather than start a worker that
//! would fail every job it takes.

use stowage_control::{RecordSettings, Recorded};
use stowage_runtime::{StageConfig, StageHandler, Worker};
use stowage_schemas::Stage;
use stowage_stages::{
    ClusterContext, GeoReplication, RestoreHydration, RestoreStage, RetentionStage, SnapshotStage,
    VaultContext, VaultTransfer,
};
use stowage_vault::store::BlobStore;

/// What the configured stages run against.
#[derive(Clone, Default)]
pub struct Services {
    /// The vault, its key and the disks, when `--vault` was given.
    pub vault: Option<VaultContext>,
    /// The cluster, the vault and the disks, when cluster credentials were found (`--kubeconfig`,
    /// KUBECONFIG, ~/.kube/config or in-cluster) and `--vault` was given.
    pub cluster: Option<ClusterContext>,
    /// How every stage keeps its job records (in the vault's primary storage).
    pub records: RecordSettings,
}

/// Why a stage cannot run.
#[derive(Debug, thiserror::Error)]
pub enum StageUnavailable {
    /// The handler exists but needs a cluster.
    #[error(
        "the {stage} stage needs a cluster and a vault: give the cluster's credentials \
         (--kubeconfig, KUBECONFIG, ~/.kube/config, or the service account of the pod it runs \
         in; `stowage sandbox` writes kubeconfigs for its cluster), --vault, the vault key \
         (STOWAGE_VAULT_KEY) and the disks: --disk-root, or --disk-provider azure with its \
         --azure-* settings"
    )]
    NeedsCluster {
        /// The stage.
        stage: Stage,
    },
    /// The handler exists but needs the vault.
    #[error(
        "the {stage} stage needs a vault: pass --vault (a folder, azurite://<container> or \
         azure://<account>/<container>), the vault key (STOWAGE_VAULT_KEY or --vault-key-file) \
         and the disks: --disk-root, or --disk-provider azure with its --azure-* settings"
    )]
    NeedsVault {
        /// The stage.
        stage: Stage,
    },
}

/// The stages this build has handlers for: all of them.
pub fn built() -> Vec<Stage> {
    Stage::ALL.to_vec()
}

/// Wraps handlers in [`Recorded`], keeping their job records in one store.
#[derive(Clone)]
pub struct Recording {
    /// Where the records live (the vault's primary storage).
    pub store: BlobStore,
    /// How the records are kept.
    pub settings: RecordSettings,
}

impl Recording {
    /// `handler`, recording its runs.
    pub fn wrap<H: StageHandler>(&self, handler: H) -> Recorded<H> {
        Recorded::new(handler, self.store.clone(), self.settings)
    }
}

/// Add the handler of `stage` to `worker`, or say why it cannot run. Every handler is wrapped
/// in [`Recorded`], so its runs show in `stowage jobs` and can be cancelled.
pub fn add(
    worker: Worker,
    stage: Stage,
    config: StageConfig,
    services: &Services,
) -> Result<Worker, StageUnavailable> {
    let rec = |store: &BlobStore| Recording {
        store: store.clone(),
        settings: services.records,
    };
    Ok(match stage {
        Stage::Snapshot | Stage::Restore => {
            let cluster = services.cluster.clone();
            let cluster = cluster.ok_or(StageUnavailable::NeedsCluster { stage })?;
            let rec = rec(&cluster.vault);
            if stage == Stage::Snapshot {
                worker.stage(rec.wrap(SnapshotStage(cluster)), config)
            } else {
                worker.stage(rec.wrap(RestoreStage(cluster)), config)
            }
        }
        Stage::VaultTransfer
        | Stage::GeoReplication
        | Stage::RestoreHydration
        | Stage::Retention => {
            let vault = services.vault.clone();
            let vault = vault.ok_or(StageUnavailable::NeedsVault { stage })?;
            let rec = rec(&vault.primary);
            match stage {
                Stage::VaultTransfer => worker.stage(rec.wrap(VaultTransfer(vault)), config),
                Stage::GeoReplication => worker.stage(rec.wrap(GeoReplication(vault)), config),
                Stage::RestoreHydration => worker.stage(rec.wrap(RestoreHydration(vault)), config),
                _ => worker.stage(rec.wrap(RetentionStage::new(vault)), config),
            }
        }
    })
}
