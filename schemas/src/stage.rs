//! The pipeline stages.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A pipeline stage: one kind of job, one queue, one worker deployment.
///
/// The wire and CLI names are `snapshot`, `vault-transfer`, `geo-replication`,
/// `restore-hydration`, `restore` and `retention`; they are also the routing keys on the
/// `stowage.jobs` exchange.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Hooks, resource collection and volume snapshots: creates a recovery point.
    Snapshot,
    /// Copies a recovery point's volume data into the vault tier.
    VaultTransfer,
    /// Copies vault-tier data to the secondary region.
    GeoReplication,
    /// Hydrates vault or secondary data into a staging area for a restore.
    RestoreHydration,
    /// Applies a recovery point to a cluster.
    Restore,
    /// Expires recovery points and garbage-collects unreferenced chunks.
    Retention,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 6] = [
        Stage::Snapshot,
        Stage::VaultTransfer,
        Stage::GeoReplication,
        Stage::RestoreHydration,
        Stage::Restore,
        Stage::Retention,
    ];

    /// Whether the stage acts on a cluster (snapshot, restore): it runs inside that cluster,
    /// with its service accounts, and takes only that cluster's jobs. The other stages work on
    /// the vault alone and take anyone's.
    pub fn is_cluster_side(self) -> bool {
        matches!(self, Stage::Snapshot | Stage::Restore)
    }
}

as_str! {
    /// The wire and CLI name, e.g. `vault-transfer`.
    Stage {
        Snapshot => "snapshot",
        VaultTransfer => "vault-transfer",
        GeoReplication => "geo-replication",
        RestoreHydration => "restore-hydration",
        Restore => "restore",
        Retention => "retention",
    }
}

impl FromStr for Stage {
    type Err = UnknownStage;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::ALL
            .into_iter()
            .find(|stage| stage.as_str() == s)
            .ok_or_else(|| UnknownStage(s.to_owned()))
    }
}

/// A stage name that is not one of [`Stage::ALL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownStage(pub String);

impl fmt::Display for UnknownStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown stage `{}`: expected one of ", self.0)?;
        for (i, stage) in Stage::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(stage.as_str())?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownStage {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for stage in Stage::ALL {
            assert_eq!(stage.as_str().parse::<Stage>(), Ok(stage));
            assert_eq!(stage.to_string(), stage.as_str());
            let json = serde_json::to_string(&stage).unwrap();
            assert_eq!(json, format!("\"{}\"", stage.as_str()));
        }
    }

    #[test]
    fn unknown_stage_lists_the_valid_names() {
        let err = "vault".parse::<Stage>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown stage `vault`: expected one of snapshot, vault-transfer, geo-replication, \
             restore-hydration, restore, retention"
        );
    }
}
