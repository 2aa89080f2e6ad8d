//! `--disk-provider azure` through the `stowage` binary: settings refused by name, and the
//! `azure-permissions` preflight check against the ARM stand-in of stowage-azure's tests
//! (`workers/azure/tests/azure/arm_server.rs`), authenticated through the real Azure CLI
//! credential with a stand-in `az` on PATH (it prints a token as `az account
//! get-access-token -o json` does).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::arm_server::{ArmServer, SUBSCRIPTION, TOKEN};
use crate::helpers::{TempDir, run, stdout_and_stderr, stowage_command};

/// Every Azure variable the tests set themselves, removed from what `stowage` inherits.
const AZURE_ENV: &[&str] = &[
    "AZURE_SUBSCRIPTION_ID",
    "STOWAGE_AZURE_SNAPSHOT_RESOURCE_GROUP",
    "STOWAGE_AZURE_STAGING_RESOURCE_GROUP",
    "STOWAGE_AZURE_REGION",
    "STOWAGE_AZURE_SOURCE_RESOURCE_GROUP",
    "STOWAGE_AZURE_CREDENTIAL",
    "STOWAGE_AZURE_ARM_ENDPOINT",
    "STOWAGE_DISK_PROVIDER",
    "STOWAGE_DISK_ROOT",
    "STOWAGE_VAULT",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_FEDERATED_TOKEN_FILE",
    "KUBECONFIG",
    "KUBERNETES_SERVICE_HOST",
];

/// `stowage preflight --no-broker --disk-provider azure` with nothing inherited that would
/// change it, no cluster (HOME is `home`, which has no kubeconfig) and `bin` first on PATH.
fn preflight(home: &Path, bin: &Path) -> Command {
    let mut cmd = stowage_command();
    for var in AZURE_ENV {
        cmd.env_remove(var);
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.env("HOME", home).env("PATH", path).args([
        "preflight",
        "--no-broker",
        "--disk-provider",
        "azure",
    ]);
    cmd
}

/// A stand-in `az` in `bin` that prints `token` as the Azure CLI does, and records its
/// arguments in `bin/az.args`.
fn fake_az(bin: &Path, token: &str) {
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> '{}/az.args'\nprintf '%s' '{}'\n",
        bin.display(),
        json!({
            "accessToken": token,
            "expiresOn": "2035-01-01 00:00:00.000000",
            "expires_on": 2051222400,
            "subscription": SUBSCRIPTION,
            "tenant": "72f988bf-0000-0000-0000-000000000000",
            "tokenType": "Bearer"
        })
    );
    let az = bin.join("az");
    std::fs::write(&az, script).unwrap();
    std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).unwrap();
}

async fn output(cmd: Command) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = run(cmd, None);
        let (stdout, stderr) = stdout_and_stderr(&out);
        (out.status.success(), stdout, stderr)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn missing_settings_are_named_with_their_flags_and_variables() {
    let dir = TempDir::new("azure-settings");
    let (ok, stdout, stderr) = output(preflight(dir.path(), dir.path())).await;
    assert!(!ok, "{stdout}");
    for name in [
        "--azure-subscription (or AZURE_SUBSCRIPTION_ID)",
        "--azure-snapshot-resource-group (or STOWAGE_AZURE_SNAPSHOT_RESOURCE_GROUP)",
        "--azure-staging-resource-group (or STOWAGE_AZURE_STAGING_RESOURCE_GROUP)",
        "--azure-region (or STOWAGE_AZURE_REGION)",
    ] {
        assert!(stderr.contains(name), "{name} in {stderr}");
    }
    // A worker refuses the same way, before it opens anything.
    let mut worker = stowage_command();
    for var in AZURE_ENV {
        worker.env_remove(var);
    }
    worker
        .env("HOME", dir.path())
        .env("STOWAGE_VAULT_KEY", "00".repeat(32))
        .args([
            "worker",
            "--stage",
            "vault-transfer",
            "--disk-provider",
            "azure",
        ])
        .args(["--vault", dir.path().join("vault").to_str().unwrap()]);
    std::fs::create_dir_all(dir.path().join("vault")).unwrap();
    let (ok, _, stderr) = output(worker).await;
    assert!(!ok);
    assert!(
        stderr.contains("--azure-subscription (or AZURE_SUBSCRIPTION_ID)"),
        "{stderr}"
    );
    // Plain http to anything but loopback would carry the token in the clear: refused.
    let mut remote = preflight(dir.path(), dir.path());
    remote.args([
        "--azure-subscription",
        SUBSCRIPTION,
        "--azure-snapshot-resource-group",
        "snaps",
        "--azure-staging-resource-group",
        "staging",
        "--azure-region",
        "westeurope",
        "--azure-arm-endpoint",
        "http://management.example.com",
    ]);
    let (ok, _, stderr) = output(remote).await;
    assert!(!ok);
    assert!(stderr.contains("must be https"), "{stderr}");
}

#[tokio::test]
async fn preflight_checks_the_groups_permissions_and_prints_the_role_assignments() {
    let server = ArmServer::start().await;
    let dir = TempDir::new("azure-preflight");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    fake_az(&bin, TOKEN);
    let group = |g: &str| format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/{g}");
    // The snapshot group: Disk Snapshot Contributor minus delete; staging: nothing at all;
    // the source disks' group: Disk Backup Reader.
    {
        let mut s = server.lock();
        s.permissions.insert(
            group("snaps").to_lowercase(),
            vec![json!({"actions": ["Microsoft.Compute/snapshots/*"], "notActions": ["Microsoft.Compute/snapshots/delete"]})],
        );
        s.permissions.insert(
            group("MC_rg_aks_westeurope").to_lowercase(),
            vec![json!({"actions": ["Microsoft.Compute/disks/read", "Microsoft.Compute/disks/beginGetAccess/action"], "notActions": []})],
        );
    }
    let settings = [
        "--azure-subscription",
        SUBSCRIPTION,
        "--azure-snapshot-resource-group",
        "snaps",
        "--azure-staging-resource-group",
        "staging",
        "--azure-source-resource-group",
        "MC_rg_aks_westeurope",
        "--azure-region",
        "westeurope",
        "--azure-credential",
        "azure-cli",
        "--azure-arm-endpoint",
        &server.url,
    ];
    let mut cmd = preflight(dir.path(), &bin);
    cmd.args(settings);
    let (ok, stdout, stderr) = output(cmd).await;
    assert!(!ok, "a missing role fails preflight: {stdout}\n{stderr}");
    assert!(stdout.contains("✗ azure-permissions"), "{stdout}");
    assert!(
        stdout.contains("Microsoft.Compute/snapshots/delete")
            && stdout.contains("Microsoft.Compute/disks/write"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "az role assignment create --assignee <the workers' identity> --role \"Disk Snapshot Contributor\" --scope {}",
            group("snaps")
        )) && stdout.contains(&format!("--role \"Contributor\" --scope {}", group("staging"))),
        "{stdout}"
    );
    assert!(
        !stdout.contains(&format!("--scope {}", group("MC_rg_aks_westeurope"))),
        "the source group has what it needs: {stdout}"
    );
    assert!(stderr.contains("azure-permissions"), "{stderr}");
    // Through the Azure CLI's token, which is never printed.
    let args = std::fs::read_to_string(bin.join("az.args")).unwrap();
    assert!(
        args.contains("account get-access-token")
            && args.contains("https://management.azure.com/.default"),
        "{args}"
    );
    let seen = server.seen("GET", "/providers/Microsoft.Authorization/permissions");
    assert_eq!(seen.len(), 3, "one scope each");
    assert!(
        seen.iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {TOKEN}")[..])),
        "{seen:?}"
    );
    assert!(
        !stdout.contains(TOKEN) && !stderr.contains(TOKEN),
        "the token leaked: {stdout}\n{stderr}"
    );

    // Granted: the check passes, and so does preflight (nothing else is configured).
    {
        let mut s = server.lock();
        s.permissions.insert(
            group("snaps").to_lowercase(),
            vec![json!({"actions": ["Microsoft.Compute/snapshots/*"], "notActions": []})],
        );
        s.permissions.insert(
            group("staging").to_lowercase(),
            vec![json!({"actions": ["*"], "notActions": []})],
        );
    }
    let mut cmd = preflight(dir.path(), &bin);
    cmd.args(settings);
    let (ok, stdout, stderr) = output(cmd).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("✓ azure-permissions"), "{stdout}");
}
