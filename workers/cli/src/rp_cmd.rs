//! `stowage rp list|describe|delete|undelete`: recovery points as the catalog records them,
//! with the state of each tier, and their soft delete (see "The vault lock and soft delete" in
//! ARCHITECTURE.md).

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use serde::Serialize;
use stowage_control::job_records::format_bytes;
use stowage_schemas::domain::{RecoveryPoint, RpState, Tier};
use stowage_vault::catalog::soft_delete::{self, SoftDeleteRecord};
use stowage_vault::catalog::{self, TierManifest};
use stowage_vault::layout;
use stowage_vault::store::BlobStore;

use crate::cli::{Format, VaultArgs};
use crate::output;
use crate::vault_config;

/// One tier of a recovery point.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TierView {
    /// The tier.
    pub tier: Tier,
    /// `available` when the tier is complete, else what the RP manifest says, or
    /// `not_present`.
    pub state: String,
    /// The tier's manifest (vault and secondary tiers, once complete).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<TierManifest>,
}

/// A recovery point with the state of each of its tiers.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RpView {
    /// The RP manifest (`catalog/<instance>/<rp>.json`).
    pub recovery_point: RecoveryPoint,
    /// Operational, vault and (when `--secondary` is given) secondary.
    pub tiers: Vec<TierView>,
    /// Objects in the resources object, from the snapshot report (if it is there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_count: Option<u64>,
    /// Warnings the snapshot recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// When it was deleted and when it is purged, while it is soft-deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soft_deleted: Option<SoftDeleteRecord>,
}

impl RpView {
    fn size(&self) -> u64 {
        self.recovery_point
            .volumes
            .iter()
            .map(|v| v.size_bytes)
            .sum()
    }

    fn state_text(&self) -> String {
        match &self.soft_deleted {
            Some(d) => format!("soft-deleted (undelete until {})", d.purge_after),
            None => "active".into(),
        }
    }

    fn tiers_text(&self) -> String {
        self.tiers
            .iter()
            .map(|t| format!("{}:{}", t.tier.as_str(), t.state))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn state_name(state: RpState) -> &'static str {
    match state {
        RpState::Creating => "creating",
        RpState::Available => "available",
        RpState::Failed => "failed",
        RpState::Deleting => "deleting",
    }
}

/// The primary store (and the secondary, if given).
pub async fn stores(args: &VaultArgs) -> anyhow::Result<(BlobStore, Option<BlobStore>)> {
    let Some(location) = &args.vault else {
        bail!(
            "say where the vault is: --vault (a folder, azurite://<container> or azure://<account>/<container>)"
        );
    };
    // The key is checked against the vault's keyring first: a wrong one is refused, naming
    // the id the vault expects, before anything is read or written.
    let key = vault_config::data_key(args).await?;
    let primary = vault_config::open_keyed_store(location, key.as_ref())?;
    let secondary = args
        .secondary
        .as_deref()
        .map(|location| vault_config::open_keyed_store(location, key.as_ref()))
        .transpose()?;
    Ok((primary, secondary))
}

/// One recovery point with its tiers.
pub async fn view(
    primary: &BlobStore,
    secondary: Option<&BlobStore>,
    rp: RecoveryPoint,
    with_report: bool,
) -> anyhow::Result<RpView> {
    let (instance, id) = (rp.instance.clone(), rp.id.clone());
    let recorded = |tier: Tier| {
        rp.tiers
            .iter()
            .find(|t| t.tier == tier)
            .map(|t| state_name(t.state).to_owned())
    };
    let mut tiers = vec![TierView {
        tier: Tier::Operational,
        state: recorded(Tier::Operational).unwrap_or_else(|| "not_present".into()),
        manifest: None,
    }];
    let mut places = vec![(Tier::Vault, Some(primary))];
    if let Some(s) = secondary {
        places.push((Tier::Secondary, Some(s)));
    }
    for (tier, store) in places {
        let Some(store) = store else { continue };
        let manifest = catalog::read_tier_manifest(store, &instance, &id, tier)
            .await
            .with_context(|| format!("cannot read the {} manifest of {id}", tier.as_str()))?;
        let state = match &manifest {
            Some(_) => "available".to_owned(),
            None => recorded(tier).unwrap_or_else(|| "not_present".into()),
        };
        tiers.push(TierView {
            tier,
            state,
            manifest,
        });
    }
    let soft_deleted = soft_delete::deleted(primary, &instance, &id)
        .await
        .with_context(|| format!("cannot read the soft-delete record of {id}"))?;
    let (mut resource_count, mut warnings) = (None, Vec::new());
    if with_report {
        let key = stowage_stages::snapshot::report_key(&instance, &id)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        match primary.get(&key).await {
            Ok(object) => {
                if let Ok(report) = serde_json::from_slice::<stowage_stages::snapshot::SnapshotReport>(
                    &object.bytes,
                ) {
                    resource_count = Some(report.resource_count);
                    warnings = report.warnings;
                }
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e).context("cannot read the snapshot report"),
        }
    }
    Ok(RpView {
        recovery_point: rp,
        tiers,
        resource_count,
        warnings,
        soft_deleted,
    })
}

/// `stowage rp list <instance>`: every recovery point of the instance, newest first.
pub async fn list(args: &VaultArgs, instance: &str, format: Format) -> anyhow::Result<()> {
    let (primary, secondary) = stores(args).await?;
    let views = views(&primary, secondary.as_ref(), instance).await?;
    print_list(instance, &views, format)
}

/// Every recovery point of `instance` with its tiers, newest first (`rp list`, the API).
pub async fn views(
    primary: &BlobStore,
    secondary: Option<&BlobStore>,
    instance: &str,
) -> anyhow::Result<Vec<RpView>> {
    let prefix = layout::recovery_points(instance)?;
    let mut listing = primary.list(&prefix);
    let mut views = Vec::new();
    while let Some(info) = listing.next().await {
        let key = info?.key;
        // Only RP manifests: tier manifests, retention and soft-delete records are read per RP.
        let Some(layout::CatalogEntry::Manifest(rp_id)) = layout::parse_catalog_key(instance, &key)
        else {
            continue;
        };
        let rp = match catalog::read_recovery_point(primary, instance, rp_id).await {
            Ok(rp) => rp,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read recovery point {rp_id}")),
        };
        views.push(view(primary, secondary, rp, false).await?);
    }
    views.sort_by(|a, b| {
        b.recovery_point
            .created_at
            .cmp(&a.recovery_point.created_at)
            .then(a.recovery_point.id.cmp(&b.recovery_point.id))
    });
    Ok(views)
}

/// Prints recovery points as `rp list` does.
pub fn print_list(instance: &str, views: &[RpView], format: Format) -> anyhow::Result<()> {
    if views.is_empty() && format == Format::Table {
        eprintln!(
            "no recovery points of instance {instance} in the vault's catalog; `stowage backup now` (or a snapshot job) makes one"
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            vec![
                v.recovery_point.id.clone(),
                v.recovery_point.created_at.to_string(),
                v.tiers_text(),
                v.recovery_point.volumes.len().to_string(),
                format_bytes(v.size()),
                v.state_text(),
            ]
        })
        .collect();
    output::print(
        format,
        &[
            "RECOVERY POINT",
            "CREATED",
            "TIERS",
            "VOLUMES",
            "SIZE",
            "STATE",
        ],
        &rows,
        &views,
    )
}

/// `stowage rp describe <instance> <rp>`.
pub async fn describe(
    args: &VaultArgs,
    instance: &str,
    rp_id: &str,
    format: Format,
) -> anyhow::Result<()> {
    let (primary, secondary) = stores(args).await?;
    let rp = match catalog::read_recovery_point(&primary, instance, rp_id).await {
        Ok(rp) => rp,
        Err(e) if e.is_not_found() => bail!(
            "no recovery point {rp_id} of instance {instance} in the vault's catalog; \
             `stowage rp list {instance}` shows its recovery points"
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read recovery point {rp_id}")),
    };
    let view = view(&primary, secondary.as_ref(), rp, true).await?;
    if format != Format::Table {
        return output::print(format, &[], &[], &view);
    }
    let rp = &view.recovery_point;
    let fields = vec![
        vec!["recovery point".into(), rp.id.clone()],
        vec!["instance".into(), rp.instance.clone()],
        vec!["created".into(), rp.created_at.to_string()],
        vec!["state".into(), view.state_text()],
        vec!["resources".into(), rp.resources.clone()],
        vec![
            "objects".into(),
            view.resource_count
                .map_or_else(|| "unknown".into(), |n| n.to_string()),
        ],
        vec!["volumes".into(), rp.volumes.len().to_string()],
        vec!["size".into(), format_bytes(view.size())],
        vec!["warnings".into(), view.warnings.len().to_string()],
    ];
    output::print_fields(&fields);
    let tiers: Vec<Vec<String>> = view
        .tiers
        .iter()
        .map(|t| {
            let (completed, stats) = match &t.manifest {
                Some(m) => (
                    m.completed_at.to_string(),
                    format!(
                        "{} read, {} stored, {} new / {} reused chunks",
                        format_bytes(m.stats.bytes_read),
                        format_bytes(m.stats.bytes_stored),
                        m.stats.chunks_new,
                        m.stats.chunks_reused
                    ),
                ),
                None => ("-".into(), "-".into()),
            };
            vec![t.tier.as_str().into(), t.state.clone(), completed, stats]
        })
        .collect();
    print!(
        "{}",
        output::table(&["TIER", "STATE", "COMPLETED", "TRANSFER"], &tiers)
    );
    println!();
    let volumes: Vec<Vec<String>> = rp
        .volumes
        .iter()
        .map(|v| {
            vec![
                v.volume_id.clone(),
                format!("{}/{}", v.namespace, v.pvc),
                format_bytes(v.size_bytes),
                v.snapshot_id.clone(),
                view.tiers
                    .iter()
                    .filter_map(|t| t.manifest.as_ref())
                    .filter_map(|m| m.volumes.iter().find(|tv| tv.volume_id == v.volume_id))
                    .map(|tv| tv.version.clone())
                    .next()
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &["VOLUME", "CLAIM", "SIZE", "SNAPSHOT", "VAULT VERSION"],
            &volumes
        )
    );
    for w in &view.warnings {
        println!("warning: {w}");
    }
    Ok(())
}

/// `stowage rp delete <instance> <rp>`: soft delete, refused while the vault's lock holds it.
pub async fn delete(args: &VaultArgs, instance: &str, rp_id: &str) -> anyhow::Result<()> {
    let (primary, _) = stores(args).await?;
    let record = soft_delete::delete(&primary, instance, rp_id, jiff::Timestamp::now()).await?;
    println!(
        "recovery point {rp_id} of instance {instance} deleted; it can be undeleted until {} \
         (`stowage rp undelete {instance} {rp_id}`), then retention purges it",
        record.purge_after
    );
    Ok(())
}

/// `stowage rp undelete <instance> <rp>`: within the undelete window.
pub async fn undelete(args: &VaultArgs, instance: &str, rp_id: &str) -> anyhow::Result<()> {
    let (primary, _) = stores(args).await?;
    let record = soft_delete::undelete(&primary, instance, rp_id, jiff::Timestamp::now()).await?;
    println!(
        "recovery point {rp_id} of instance {instance} undeleted (it was deleted at {}); its \
         policy applies to it again",
        record.deleted_at
    );
    Ok(())
}
