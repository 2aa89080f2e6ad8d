//! [`AZURE_PERMISSIONS`]: with the Azure disk provider, the workers' identity holds the ARM
//! actions each resource group needs (`stowage_azure::permissions`), read through ARM's
//! permissions API at each scope; the fix is the `az role assignment create` that grants the
//! built-in role holding what is missing.

use stowage_azure::permissions::check_access;

use super::{AZURE_PERMISSIONS, AzureTarget, Check, PreflightTargets, timed};

/// The Azure permission check, or nothing when the disk provider is not Azure's.
pub(super) async fn azure_checks(targets: &PreflightTargets) -> Vec<Check> {
    let Some(azure) = &targets.azure else {
        return Vec::new();
    };
    vec![
        timed(
            AZURE_PERMISSIONS,
            targets.timeout,
            "ARM's permissions API",
            "check that ARM is reachable from here (https://management.azure.com) and retry",
            permissions(azure),
        )
        .await,
    ]
}

async fn permissions(azure: &AzureTarget) -> Check {
    let checks = futures::future::join_all(azure.scopes.iter().map(|scope| async move {
        (
            scope,
            check_access(&azure.arm, &scope.scope, scope.actions).await,
        )
    }))
    .await;
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    let mut checked = Vec::new();
    for (scope, result) in checks {
        match result {
            Ok(access) if access.missing.is_empty() => {
                checked.push(format!("{} {}", scope.what, scope.scope));
            }
            Ok(access) => {
                problems.push(format!(
                    "{} {} lacks {}",
                    scope.what,
                    scope.scope,
                    access.missing.join(", ")
                ));
                fixes.extend(access.fix);
            }
            // The permissions API refused or failed: its error names the reason and the fix.
            Err(e) => problems.push(format!("{} {}: {e}", scope.what, scope.scope)),
        }
    }
    let source_checked = azure
        .scopes
        .iter()
        .any(|s| s.actions == stowage_azure::permissions::SOURCE_DISK_ACTIONS);
    if !source_checked {
        checked.push(
            "(the source disks' group was not checked: pass --azure-source-resource-group \
             MC_<group>_<cluster>_<region>)"
                .to_owned(),
        );
    }
    if problems.is_empty() {
        return Check::pass(
            AZURE_PERMISSIONS,
            format!(
                "the workers' Azure identity holds what Stowage needs at {}",
                checked.join("; ")
            ),
        );
    }
    let fix = if fixes.is_empty() {
        "see the error above".to_owned()
    } else {
        format!(
            "grant the missing roles to the workers' identity (its principal id: `az ad sp show \
             --id <client id> --query id`): {}",
            fixes.join(" && ")
        )
    };
    Check::fail(AZURE_PERMISSIONS, problems.join("; "), fix)
}
