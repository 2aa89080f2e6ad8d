//! What the workers need to be allowed to do, where, and the preflight that checks it through
//! ARM's permissions API (`…/providers/Microsoft.Authorization/permissions`).

use serde::Deserialize;

use crate::arm::ArmClient;
use crate::error::Result;

/// Actions on the source disks (the cluster's node resource group).
pub const SOURCE_DISK_ACTIONS: &[&str] = &[
    "Microsoft.Compute/disks/read",
    "Microsoft.Compute/disks/beginGetAccess/action",
];

/// Actions in the snapshot resource group.
pub const SNAPSHOT_GROUP_ACTIONS: &[&str] = &[
    "Microsoft.Compute/snapshots/read",
    "Microsoft.Compute/snapshots/write",
    "Microsoft.Compute/snapshots/delete",
    "Microsoft.Compute/snapshots/beginGetAccess/action",
    "Microsoft.Compute/snapshots/endGetAccess/action",
];

/// Actions in the staging resource group (hydration's upload disks).
pub const STAGING_GROUP_ACTIONS: &[&str] = &[
    "Microsoft.Compute/disks/read",
    "Microsoft.Compute/disks/write",
    "Microsoft.Compute/disks/delete",
    "Microsoft.Compute/disks/beginGetAccess/action",
    "Microsoft.Compute/disks/endGetAccess/action",
];

/// The built-in role that grants `action` where Stowage needs it.
pub fn role_for_action(action: &str) -> &'static str {
    let action = action.to_ascii_lowercase();
    if action.starts_with("microsoft.compute/snapshots/") {
        "Disk Snapshot Contributor"
    } else if action == "microsoft.compute/disks/read"
        || action == "microsoft.compute/disks/begingetaccess/action"
    {
        "Disk Backup Reader"
    } else {
        "Contributor"
    }
}

/// One entry of the permissions API's answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Permission {
    /// Allowed actions (may hold `*` wildcards).
    #[serde(default)]
    pub actions: Vec<String>,
    /// Actions excluded from `actions`.
    #[serde(default)]
    pub not_actions: Vec<String>,
}

/// Whether `pattern` (ARM's action syntax, `*` matching any run of characters, case
/// insensitive) matches `action`.
pub fn action_matches(pattern: &str, action: &str) -> bool {
    fn go(p: &[u8], a: &[u8]) -> bool {
        match p.split_first() {
            None => a.is_empty(),
            Some((b'*', rest)) => (0..=a.len()).any(|i| go(rest, &a[i..])),
            Some((c, rest)) => a
                .split_first()
                .is_some_and(|(x, tail)| x.eq_ignore_ascii_case(c) && go(rest, tail)),
        }
    }
    go(pattern.as_bytes(), action.as_bytes())
}

/// Whether any entry allows `action` and does not exclude it.
pub fn allows(permissions: &[Permission], action: &str) -> bool {
    permissions.iter().any(|p| {
        p.actions.iter().any(|a| action_matches(a, action))
            && !p.not_actions.iter().any(|n| action_matches(n, action))
    })
}

/// One scope's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessCheck {
    /// The scope checked.
    pub scope: String,
    /// Actions Stowage needs there and does not have.
    pub missing: Vec<String>,
    /// The commands that grant them (empty when nothing is missing).
    pub fix: Vec<String>,
}

/// Checks `needed` at `scope` and names the role assignments that would grant what is missing.
pub async fn check_access(arm: &ArmClient, scope: &str, needed: &[&str]) -> Result<AccessCheck> {
    let permissions = arm.permissions(scope).await?;
    let missing: Vec<String> = needed
        .iter()
        .filter(|a| !allows(&permissions, a))
        .map(|a| a.to_string())
        .collect();
    let mut roles: Vec<&str> = missing.iter().map(|a| role_for_action(a)).collect();
    roles.dedup();
    let fix = roles
        .into_iter()
        .map(|role| {
            format!("az role assignment create --assignee <the workers' identity> --role \"{role}\" --scope {scope}")
        })
        .collect();
    Ok(AccessCheck {
        scope: scope.to_owned(),
        missing,
        fix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_and_not_actions() {
        assert!(action_matches("*", "Microsoft.Compute/disks/read"));
        assert!(action_matches(
            "microsoft.compute/*",
            "Microsoft.Compute/disks/read"
        ));
        assert!(action_matches(
            "Microsoft.Compute/*/read",
            "Microsoft.Compute/snapshots/read"
        ));
        assert!(!action_matches(
            "Microsoft.Compute/disks/*",
            "Microsoft.Compute/snapshots/read"
        ));
        assert!(!action_matches(
            "Microsoft.Compute/disks/read",
            "Microsoft.Compute/disks/readx"
        ));
        let p = [Permission {
            actions: vec!["Microsoft.Compute/snapshots/*".into()],
            not_actions: vec!["Microsoft.Compute/snapshots/delete".into()],
        }];
        assert!(allows(&p, "Microsoft.Compute/snapshots/write"));
        assert!(!allows(&p, "Microsoft.Compute/snapshots/delete"));
        assert!(!allows(&p, "Microsoft.Compute/disks/read"));
    }
}
