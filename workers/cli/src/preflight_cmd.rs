//! `stowage preflight`: runs [`stowage_control::preflight::run_all`] against the vault, broker,
//! cluster and disk root given as for a worker, prints a line per check (the fix under each
//! failure or warning) or JSON/YAML, and exits non-zero when a check fails.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use stowage_control::preflight::{
    self, AzureTarget, BrokerTarget, Check, KubeTarget, PreflightTargets, Report, Status,
    VaultTarget,
};
use stowage_disk::LocalDiskProvider;
use stowage_runtime::{Names, RabbitBroker};

use crate::cli::{DiskProviderChoice, Format, PreflightArgs};

/// Runs the checks and prints the report; an error (exit code 1) when any check failed.
pub async fn run(args: PreflightArgs) -> anyhow::Result<()> {
    let targets = targets(&args).await?;
    let report = preflight::run_all(&targets).await;
    match args.output.output {
        Format::Table => print!("{}", render(&report)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(&report)?),
    }
    let failed = report.failures().count();
    if failed > 0 {
        bail!(
            "{failed} preflight check(s) failed: {}",
            report
                .failures()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

async fn targets(args: &PreflightArgs) -> anyhow::Result<PreflightTargets> {
    let vault = args.vault.vault.as_ref().map(|location| VaultTarget {
        location: location.clone(),
        access_key: std::env::var("STOWAGE_AZURE_ACCESS_KEY").ok(),
        region: args.vault_region.clone(),
    });
    let broker = (!args.no_broker).then(|| BrokerTarget {
        broker: Arc::new(RabbitBroker::new(args.broker.amqp_url.clone())),
        names: Names::new(args.broker.prefix.clone()),
    });
    let cluster = kube_target(&args.cluster).await?;
    let (disks, azure) = disk_targets(&args.vault)?;
    Ok(PreflightTargets {
        vault,
        broker,
        cluster,
        disks,
        cluster_name: args.cluster.cluster_name.clone(),
        fleet_namespace: args.fleet_namespace.clone(),
        scope: None,
        timeout: Duration::from_secs_f64(args.timeout),
        azure,
    })
}

/// The disk provider the CSI-driver and region checks compare against, and with
/// `--disk-provider azure` the Azure permission check's target: the local provider of
/// `--disk-root` otherwise, or none.
#[allow(clippy::type_complexity)]
pub fn disk_targets(
    vault: &crate::cli::VaultArgs,
) -> anyhow::Result<(
    Option<Arc<dyn stowage_disk::DiskProvider>>,
    Option<AzureTarget>,
)> {
    if vault.disk_provider == DiskProviderChoice::Azure {
        let (disks, azure) = azure_targets(&vault.azure)?;
        return Ok((Some(disks), Some(azure)));
    }
    let disks = vault.disk_root.as_deref().map(disk_provider).transpose()?;
    Ok((disks, None))
}

/// With `--disk-provider azure`: the provider (for the CSI-driver and region checks) and the
/// ARM client and scopes of the permission check, all as the workers would build them.
fn azure_targets(
    args: &crate::cli::AzureArgs,
) -> anyhow::Result<(Arc<dyn stowage_disk::DiskProvider>, AzureTarget)> {
    let config = args.config();
    config.check()?;
    let credential = stowage_azure::credential(config.credential)?;
    let arm = config.arm_client(credential)?;
    let target = AzureTarget {
        arm: arm.clone(),
        scopes: config.scopes()?,
    };
    Ok((Arc::new(config.provider(arm)?), target))
}

/// The cluster the flags and environment name (see `kube_config`), for the cluster checks;
/// `None` (the checks are skipped, saying why) when no credentials are found. Explicit
/// credentials that cannot be used are an error.
pub async fn kube_target(cluster: &crate::cli::ClusterArgs) -> anyhow::Result<Option<KubeTarget>> {
    Ok(crate::kube_config::cluster_client(cluster)
        .await?
        .map(|found| KubeTarget {
            client: found.client,
            url: found.url,
        }))
}

/// The disk provider `--disk-root` names, for the CSI-driver and region checks.
pub fn disk_provider(
    root: &std::path::Path,
) -> anyhow::Result<Arc<dyn stowage_disk::DiskProvider>> {
    Ok(Arc::new(LocalDiskProvider::open(root).with_context(
        || format!("cannot open the disk root {}", root.display()),
    )?))
}

fn mark(check: &Check) -> &'static str {
    match check.status {
        Status::Pass => "✓",
        Status::Warn => "!",
        Status::Fail => "✗",
        Status::Skipped(_) => "-",
    }
}

/// One line per check (`✓`, `!`, `✗` or `-`, the name, what was found), the fix indented under
/// each failure and warning, and a summary line.
pub fn render(report: &Report) -> String {
    let width = report
        .checks
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for check in &report.checks {
        let detail = match &check.status {
            Status::Skipped(reason) => format!("skipped: {reason}"),
            _ => check.detail.clone(),
        };
        out.push_str(&format!(
            "{} {:width$}  {detail}\n",
            mark(check),
            check.name
        ));
        if matches!(check.status, Status::Fail | Status::Warn)
            && let Some(fix) = &check.fix
        {
            out.push_str(&format!("  {:width$}  fix: {fix}\n", ""));
        }
    }
    let count = |s: fn(&Status) -> bool| report.checks.iter().filter(|c| s(&c.status)).count();
    out.push_str(&format!(
        "{} passed, {} warned, {} failed, {} skipped\n",
        count(|s| *s == Status::Pass),
        count(|s| *s == Status::Warn),
        count(|s| *s == Status::Fail),
        count(|s| matches!(s, Status::Skipped(_))),
    ));
    out
}
