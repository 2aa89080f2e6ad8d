//! Which stage handlers this build has.
//!
//! A stage is runnable only once its real handler exists; until then the worker refuses it
//! with an error that says so, rather than run a placeholder that acks jobs it did not do.

use stowage_runtime::{StageConfig, Worker};
use stowage_schemas::Stage;

/// A stage this build cannot run yet.
#[derive(Debug, thiserror::Error)]
#[error(
    "the {stage} stage has no handler in this build yet (it comes with the {component}); \
     stages this build can run: {available}. Run a build that includes it, or leave the {stage} \
     jobs queued: they wait in the `{stage}` queue until a worker for it starts"
)]
pub struct NotBuilt {
    stage: Stage,
    component: &'static str,
    available: String,
}

/// The stages this build has real handlers for.
pub fn available() -> Vec<Stage> {
    Stage::ALL
        .into_iter()
        .filter(|s| component_of(*s).is_none())
        .collect()
}

/// `None` when the stage's handler is in this build, else the component that will bring it.
fn component_of(stage: Stage) -> Option<&'static str> {
    match stage {
        Stage::Snapshot | Stage::Restore => Some("cluster side (collection, hooks, apply)"),
        Stage::VaultTransfer | Stage::GeoReplication | Stage::RestoreHydration => {
            Some("vault data plane")
        }
        Stage::Retention => Some("control plane (policies and retention rules)"),
    }
}

/// Add the handler of `stage` to `worker`, or say why it cannot run.
pub fn add(worker: Worker, stage: Stage, _config: StageConfig) -> Result<Worker, NotBuilt> {
    match component_of(stage) {
        Some(component) => {
            let available = available();
            let available = if available.is_empty() {
                "none yet".to_owned()
            } else {
                available
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            Err(NotBuilt {
                stage,
                component,
                available,
            })
        }
        None => Ok(worker),
    }
}
