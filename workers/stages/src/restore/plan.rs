//! What a restore does, or in a dry run would do, with each object: the plan and the report.

use stowage_schemas::events::RestoreCompleted;

use super::RestoreRequest;

/// What a restore does (or, in a dry run, would do) with one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanAction {
    /// It is missing in the target and is created.
    Create,
    /// It exists and is left as it is (or is not restored at all; see the note).
    Skip,
    /// It exists and is merge-patched to match the backup.
    Patch,
    /// The target refuses it, or cannot serve its type; see the note.
    Conflict,
}

/// One object of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanEntry {
    /// What happens to it.
    pub action: PlanAction,
    /// `apiVersion` of the object.
    pub api_version: String,
    /// `kind` of the object.
    pub kind: String,
    /// Namespace in the target (after mapping); none when cluster-scoped.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// Why, when it is not obvious (the conflict's reason, "owned by a controller"…).
    pub note: Option<String>,
    /// The wave it is applied in (see `graph`): 0 first.
    pub wave: u32,
    /// What it waits for (`Kind namespace/name`, namespaces mapped): objects of earlier waves.
    pub after: Vec<String>,
    /// For a PVC (and the PV made for it): the disk its data lands on — a new disk filled from
    /// the snapshot, the staging disk hydration made, or how the cluster provisions it.
    pub disk: Option<String>,
}

impl PlanAction {
    /// `create`, `skip`, `patch` or `conflict`.
    pub fn word(self) -> &'static str {
        match self {
            PlanAction::Create => "create",
            PlanAction::Skip => "skip",
            PlanAction::Patch => "patch",
            PlanAction::Conflict => "conflict",
        }
    }
}

impl PlanEntry {
    /// Why this action: the note, or what the action means when there is none.
    pub fn reason(&self) -> String {
        match (&self.note, self.action) {
            (Some(note), _) => note.clone(),
            (None, PlanAction::Create) => "not in the target".into(),
            (None, PlanAction::Patch) => "exists and differs from the backup".into(),
            (None, PlanAction::Skip) => "exists".into(),
            (None, PlanAction::Conflict) => "refused by the target".into(),
        }
    }
}

impl std::fmt::Display for PlanEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wave {} {:8} {} ",
            self.wave,
            self.action.word(),
            self.kind
        )?;
        if let Some(ns) = &self.namespace {
            write!(f, "{ns}/")?;
        }
        write!(f, "{}", self.name)?;
        if let Some(note) = &self.note {
            write!(f, " ({note})")?;
        }
        if let Some(disk) = &self.disk {
            write!(f, " [disk {disk}]")?;
        }
        Ok(())
    }
}

/// What a restore did, or would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// The cluster restored into.
    pub target_cluster: String,
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// Every object considered, in the order applied.
    pub plan: Vec<PlanEntry>,
    /// How many waves the objects were applied in.
    pub waves: u32,
    /// Volumes restored onto new disks (planned, in a dry run).
    pub volumes_restored: u32,
    /// What went wrong without failing the restore.
    pub warnings: Vec<String>,
    /// Staging disks that became restored volumes (kept when the staging is released).
    pub adopted_disks: Vec<String>,
}

impl RestoreReport {
    /// Objects with `action`.
    pub fn count(&self, action: PlanAction) -> u64 {
        self.plan.iter().filter(|e| e.action == action).count() as u64
    }

    /// The plan entry of `kind` `namespace/name`, if the restore considered it.
    pub fn entry(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<&PlanEntry> {
        self.plan
            .iter()
            .find(|e| e.kind == kind && e.namespace.as_deref() == namespace && e.name == name)
    }

    /// The `restore.completed` event for `request`.
    pub fn completed_event(&self, request: &RestoreRequest) -> RestoreCompleted {
        RestoreCompleted {
            restore_id: request.restore_id.clone(),
            instance: request.instance.clone(),
            recovery_point_id: request.recovery_point_id.clone(),
            target_cluster: self.target_cluster.clone(),
            dry_run: self.dry_run,
            resources_created: self.count(PlanAction::Create),
            resources_patched: self.count(PlanAction::Patch),
            resources_skipped: self.count(PlanAction::Skip),
            volumes_restored: self.volumes_restored,
            warnings: self.warnings.clone(),
        }
    }
}
