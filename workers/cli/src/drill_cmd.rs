//! `stowage drill run|list|show`: restore drills (ARCHITECTURE.md, "Restore drills").
//!
//! A drill restores the latest recovery point of one tier of an instance into an isolated
//! target — the backed-up namespaces renamed with a prefix (`drill-shop`), through the restore's
//! namespace mapping, on the instance's cluster or another one — through the real pipeline (the
//! restore job is submitted to the broker and real workers do the work), then verifies what was
//! restored against the recovery point, measures the recovery time (request → restored and
//! verified), deletes what it created, records the result in the vault
//! (`drills/<drill-id>.json`) and publishes `drill.completed` on `stowage.events`.
//!
//! Verification, with the drill's own credentials (never the restore worker's):
//! * **objects**: the restore stage's plan-only path runs again against the target with the
//!   same restore id and `existing: patch`: every object it would restore must be "exists and
//!   already matches" (merge-patching the backup onto it changes nothing). An object it would
//!   create is missing, one it would patch differs, a conflict is refused: each is a finding.
//! * **volumes**: each claim's volume is found in the target (claim → PV → CSI volume handle →
//!   disk) and read back, range by range, against the recovery point's vault-tier extent map
//!   (or the secondary's for a secondary drill): each chunk-backed range must hash (keyed
//!   BLAKE3, as chunk ids are made) to its chunk id — or, for a range that is part of a chunk,
//!   equal the chunk's bytes read from the vault — and every unmapped range must read as zeros.
//!   A recovery point not (yet) in the vault tier is compared with its operational snapshot.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use futures::StreamExt as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use stowage_disk::{DiskId, DiskProvider as _, LocalDiskProvider, SnapshotId};
use stowage_runtime::client::submit;
use stowage_runtime::{Broker as _, Names, RabbitBroker};
use stowage_schemas::domain::{JobRecord, JobStatus, Namespaces, RecoveryPoint, RpState, Tier};
use stowage_schemas::events::DrillCompleted;
use stowage_schemas::jobs::{ExistingPolicy, RestoreOptions};
use stowage_schemas::{Envelope, Message, Stage};
use stowage_stages::restore::{PlanAction, RestoreRequest, RestoreSource};
use stowage_vault::catalog::drills::{self, DrillRecord, DrillStatus, VolumeCheck};
use stowage_vault::catalog::{self, jobs::read_job};
use stowage_vault::chunk::{ChunkId, is_all_zero};
use stowage_vault::crypto::{ChunkKeys, VaultKey};
use stowage_vault::extent::{ExtentMap, ExtentTarget, load_chain};
use stowage_vault::index::ChunkIndex;
use stowage_vault::layout;
use stowage_vault::store::{BlobStore, CreateOutcome};

use crate::cli::{ClusterArgs, Format, OnVaultAndBroker, OutputArgs, TableOutput, YamlOutput};
use crate::output;
use crate::restore_cmd::{CreateArgs, ExistingChoice, FromTier};

/// `stowage drill`.
pub type DrillArgs = OnVaultAndBroker<DrillAction>;

/// Drill actions.
#[derive(Debug, Subcommand)]
pub enum DrillAction {
    /// Restore the tier's latest recovery point into an isolated target, verify it, time it,
    /// clean up, record and announce the result; exit code 1 when the drill failed.
    Run(RunArgs),
    /// List drills, newest first.
    List {
        /// Only this instance's drills.
        #[arg(long, value_parser = crate::cli::id_arg)]
        instance: Option<String>,
        #[command(flatten)]
        output: TableOutput,
    },
    /// Set (or replace) the instance's drill schedule, which `stowage scheduler
    /// --drill-kubeconfig …` follows: a drill once the last one of the tier started
    /// `--every-hours` ago.
    Schedule {
        /// The backup instance.
        #[arg(long, value_parser = crate::cli::id_arg)]
        instance: String,
        /// Hours between drills, e.g. 168 for weekly.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        every_hours: u32,
        /// The tier drilled.
        #[arg(long, value_enum, default_value_t = FromTier::Vault)]
        tier: FromTier,
        /// Each backed-up namespace is restored into `<prefix><namespace>`.
        #[arg(long, default_value = "drill-")]
        namespace_prefix: String,
        /// Restore into this cluster instead of the instance's.
        #[arg(long, value_parser = crate::cli::id_arg)]
        target_cluster: Option<String>,
    },
    /// List the drill schedules.
    Schedules {
        #[command(flatten)]
        output: TableOutput,
    },
    /// Remove an instance's drill schedule.
    Unschedule {
        /// The backup instance.
        #[arg(long, value_parser = crate::cli::id_arg)]
        instance: String,
    },
    /// Show one drill's record: outcome, recovery time, what was verified and cleaned up.
    Show {
        /// The drill id (`drill run` and `drill list` print it).
        #[arg(value_parser = crate::cli::id_arg)]
        drill_id: String,
        #[command(flatten)]
        output: YamlOutput,
    },
}

/// `stowage drill run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The backup instance.
    #[arg(long, value_parser = crate::cli::id_arg)]
    pub instance: String,
    /// The tier whose latest recovery point is restored.
    #[arg(long, value_enum, default_value_t = FromTier::Vault)]
    pub tier: FromTier,
    /// Each backed-up namespace is restored into `<prefix><namespace>`, which must not exist.
    #[arg(long, default_value = "drill-")]
    pub namespace_prefix: String,
    /// Restore into this cluster (a name restore workers serve) instead of the instance's.
    #[arg(long, value_parser = crate::cli::id_arg)]
    pub target_cluster: Option<String>,
    /// The target cluster's kubeconfig, for verification and cleanup: an identity that may
    /// read what the restore made and delete namespaces and PVs (default: KUBECONFIG, then
    /// ~/.kube/config, then the pod's service account). Not the restore worker's account:
    /// that one cannot delete.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context (default: its current-context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// The drill id (default: generated); it is also the restore's id.
    #[arg(long, value_parser = crate::cli::id_arg)]
    pub drill_id: Option<String>,
    /// Give up waiting for the restore after this many seconds (the drill then fails).
    #[arg(long, default_value_t = 3600.0)]
    pub timeout: f64,
    /// Leave what the drill restored in place (for inspection) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
    /// How the result is printed.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
    /// Who asked, for the record (default: $USER).
    #[arg(skip)]
    pub requested_by: Option<String>,
}

/// Run `stowage drill …`.
pub async fn run(args: DrillArgs) -> anyhow::Result<()> {
    match args.action {
        DrillAction::Run(run) => {
            let record = drill(&args.vault, &args.broker, &run).await?;
            show(&record, run.output)?;
            if record.status == DrillStatus::Failed {
                return Err(output::Exit {
                    code: 1,
                    message: format!(
                        "drill {} failed: {}",
                        record.id,
                        record.reason.as_deref().unwrap_or("see the record")
                    ),
                }
                .into());
            }
            Ok(())
        }
        DrillAction::List {
            instance,
            output: OutputArgs { output: format },
        } => {
            let store = crate::jobs_cmd::open_vault(&args.vault).await?;
            let mut all = Vec::new();
            let mut listing = drills::list_drills(&store);
            while let Some(record) = listing.next().await {
                let record = record.context("cannot list the vault's drill records")?;
                if instance.as_ref().is_none_or(|i| *i == record.instance) {
                    all.push(record);
                }
            }
            all.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(a.id.cmp(&b.id)));
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|d| {
                    vec![
                        d.id.clone(),
                        d.instance.clone(),
                        d.tier.as_str().to_owned(),
                        d.recovery_point_id.clone(),
                        status_word(d.status).to_owned(),
                        format!("{:.1}s", d.rto_seconds),
                        d.started_at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
                        d.reason.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            output::print(
                format,
                &[
                    "DRILL", "INSTANCE", "TIER", "RP", "STATUS", "RTO", "STARTED", "REASON",
                ],
                &rows,
                &all,
            )
        }
        DrillAction::Schedule {
            instance,
            every_hours,
            tier,
            namespace_prefix,
            target_cluster,
        } => {
            let store = crate::jobs_cmd::open_vault(&args.vault).await?;
            catalog::settings::read_instance(&store, &instance)
                .await
                .with_context(|| format!("cannot read backup instance {instance}"))?;
            let schedule = drills::DrillSchedule {
                instance: instance.clone(),
                every_hours,
                tier: tier_of(tier),
                namespace_prefix,
                target_cluster,
            };
            drills::write_schedule(&store, &schedule).await?;
            eprintln!(
                "instance {instance}: a {} drill every {every_hours} h, run by `stowage \
                 scheduler --drill-kubeconfig …`",
                schedule.tier.as_str()
            );
            Ok(())
        }
        DrillAction::Schedules {
            output: OutputArgs { output: format },
        } => {
            let store = crate::jobs_cmd::open_vault(&args.vault).await?;
            let mut all = Vec::new();
            let mut listing = drills::list_schedules(&store);
            while let Some(s) = listing.next().await {
                all.push(s?);
            }
            all.sort_by(|a, b| a.instance.cmp(&b.instance));
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|s| {
                    vec![
                        s.instance.clone(),
                        s.tier.as_str().to_owned(),
                        format!("{} h", s.every_hours),
                        s.namespace_prefix.clone(),
                        s.target_cluster.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            output::print(
                format,
                &["INSTANCE", "TIER", "EVERY", "PREFIX", "TARGET CLUSTER"],
                &rows,
                &all,
            )
        }
        DrillAction::Unschedule { instance } => {
            let store = crate::jobs_cmd::open_vault(&args.vault).await?;
            if !drills::delete_schedule(&store, &instance).await? {
                bail!(
                    "instance {instance} has no drill schedule; `stowage drill schedules` lists them"
                );
            }
            eprintln!("instance {instance}: no more scheduled drills");
            Ok(())
        }
        DrillAction::Show {
            drill_id,
            output: OutputArgs { output: format },
        } => {
            let store = crate::jobs_cmd::open_vault(&args.vault).await?;
            let record = drills::read_drill(&store, &drill_id).await?;
            show(&record, format)
        }
    }
}

fn tier_of(tier: FromTier) -> Tier {
    match tier {
        FromTier::Operational => Tier::Operational,
        FromTier::Vault => Tier::Vault,
        FromTier::Secondary => Tier::Secondary,
    }
}

fn from_tier(tier: Tier) -> FromTier {
    match tier {
        Tier::Operational => FromTier::Operational,
        Tier::Vault => FromTier::Vault,
        Tier::Secondary => FromTier::Secondary,
    }
}

/// Sets the drill gauges (`stowage_drill_*`) from every drill record of the vault.
pub async fn refresh_metrics(store: &BlobStore) -> anyhow::Result<()> {
    let mut listing = drills::list_drills(store);
    while let Some(record) = listing.next().await {
        let d = record.context("cannot list the vault's drill records")?;
        stowage_runtime::metrics::metrics().drill_finished(
            &d.instance,
            d.tier.as_str(),
            Duration::from_secs_f64(d.rto_seconds.max(0.0)),
            d.status == DrillStatus::Succeeded,
            d.finished_at.as_millisecond() as f64 / 1000.0,
        );
    }
    Ok(())
}

/// Runs every scheduled drill that is due at `now` (see [`drills::DrillSchedule`]), one after
/// the other, with `kubeconfig` as the drills' identity; a drill that cannot start is logged.
pub async fn run_due(
    vault: &crate::cli::VaultArgs,
    broker: &crate::cli::BrokerArgs,
    kubeconfig: &std::path::Path,
    identity: &str,
    now: Timestamp,
) -> anyhow::Result<()> {
    let store = crate::jobs_cmd::open_vault(vault).await?;
    let mut schedules = Vec::new();
    let mut listing = drills::list_schedules(&store);
    while let Some(s) = listing.next().await {
        schedules.push(s?);
    }
    // The newest drill start per (instance, tier).
    let mut last: BTreeMap<(String, Tier), Timestamp> = BTreeMap::new();
    let mut listing = drills::list_drills(&store);
    while let Some(d) = listing.next().await {
        let d = d?;
        let at = last
            .entry((d.instance.clone(), d.tier))
            .or_insert(d.started_at);
        *at = (*at).max(d.started_at);
    }
    for schedule in schedules {
        let every = jiff::SignedDuration::from_hours(i64::from(schedule.every_hours));
        let due = last
            .get(&(schedule.instance.clone(), schedule.tier))
            .is_none_or(|at| at.saturating_add(every).is_ok_and(|next| next <= now));
        if !due {
            continue;
        }
        let run = RunArgs {
            instance: schedule.instance.clone(),
            tier: from_tier(schedule.tier),
            namespace_prefix: schedule.namespace_prefix.clone(),
            target_cluster: schedule.target_cluster.clone(),
            kubeconfig: Some(kubeconfig.to_path_buf()),
            context: None,
            drill_id: None,
            timeout: 3600.0,
            keep: false,
            output: Format::Json,
            requested_by: Some(identity.to_owned()),
        };
        match drill(vault, broker, &run).await {
            Ok(record) => tracing::info!(
                drill = %record.id,
                instance = %record.instance,
                tier = record.tier.as_str(),
                status = status_word(record.status),
                rto_seconds = record.rto_seconds,
                reason = record.reason.as_deref().unwrap_or(""),
                "scheduled drill finished"
            ),
            Err(e) => tracing::warn!(
                instance = %schedule.instance,
                tier = schedule.tier.as_str(),
                error = format!("{e:#}"),
                "a scheduled drill could not run; the next tick tries again"
            ),
        }
    }
    Ok(())
}

fn status_word(status: DrillStatus) -> &'static str {
    match status {
        DrillStatus::Succeeded => "succeeded",
        DrillStatus::Failed => "failed",
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Print one drill record.
fn show(d: &DrillRecord, format: Format) -> anyhow::Result<()> {
    if format != Format::Table {
        return output::print(format, &[], &[], d);
    }
    let mapping = d
        .namespace_mapping
        .iter()
        .map(|(s, t)| format!("{s}→{t}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut fields = vec![
        vec!["drill".into(), d.id.clone()],
        vec!["instance".into(), d.instance.clone()],
        vec!["tier".into(), d.tier.as_str().to_owned()],
        vec!["recovery point".into(), d.recovery_point_id.clone()],
        vec!["status".into(), status_word(d.status).to_owned()],
    ];
    if let Some(reason) = &d.reason {
        fields.push(vec!["reason".into(), reason.clone()]);
    }
    fields.extend([
        vec![
            "target".into(),
            format!("cluster {} ({mapping})", d.target_cluster),
        ],
        vec!["restore".into(), d.restore_id.clone()],
        vec!["started".into(), d.started_at.to_string()],
        vec![
            "rto".into(),
            format!(
                "{:.1}s (restore {:.1}s, verify {:.1}s)",
                d.rto_seconds,
                d.restore_seconds,
                d.rto_seconds - d.restore_seconds
            ),
        ],
        vec!["bytes moved".into(), mib(d.bytes_moved)],
        vec![
            "objects verified".into(),
            format!(
                "{} ({} finding(s))",
                d.objects_verified,
                d.object_findings.len()
            ),
        ],
        vec!["volume bytes verified".into(), mib(d.bytes_verified)],
        vec![
            "cleaned up".into(),
            if d.cleaned_up.is_empty() {
                "-".into()
            } else {
                d.cleaned_up.join(", ")
            },
        ],
    ]);
    output::print_fields(&fields);
    let rows: Vec<Vec<String>> = d
        .volumes
        .iter()
        .map(|v| {
            vec![
                format!("{}/{}", v.namespace, v.pvc),
                v.disk.clone().unwrap_or_else(|| "-".into()),
                mib(v.bytes_verified),
                v.checked_against.clone(),
                if v.matches { "match" } else { "MISMATCH" }.into(),
                v.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &["VOLUME", "DISK", "VERIFIED", "AGAINST", "RESULT", "REASON"],
            &rows
        )
    );
    for finding in &d.object_findings {
        println!("object: {finding}");
    }
    for error in &d.cleanup_errors {
        println!("cleanup: {error}");
    }
    Ok(())
}

/// The newest recovery point of `instance` available in `tier`.
async fn latest_rp(
    store: &BlobStore,
    secondary: Option<&BlobStore>,
    instance: &str,
    tier: Tier,
) -> anyhow::Result<RecoveryPoint> {
    let prefix = layout::recovery_points(instance)?;
    let mut listing = store.list(&prefix);
    let mut rps = Vec::new();
    while let Some(info) = listing.next().await {
        let key = info?.key;
        let Some(layout::CatalogEntry::Manifest(rp_id)) = layout::parse_catalog_key(instance, &key)
        else {
            continue;
        };
        match catalog::read_recovery_point(store, instance, rp_id).await {
            Ok(rp) => rps.push(rp),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read recovery point {rp_id}")),
        }
    }
    rps.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    for rp in rps {
        if catalog::soft_delete::deleted(store, instance, &rp.id)
            .await?
            .is_some()
        {
            continue;
        }
        let present = match tier {
            Tier::Operational => rp
                .tiers
                .iter()
                .any(|t| t.tier == Tier::Operational && t.state == RpState::Available),
            Tier::Vault => catalog::read_tier_manifest(store, instance, &rp.id, tier)
                .await?
                .is_some(),
            Tier::Secondary => match secondary {
                Some(s) => catalog::read_tier_manifest(s, instance, &rp.id, tier)
                    .await?
                    .is_some(),
                None => bail!(
                    "say where the secondary copy is: --secondary (the paired region's storage)"
                ),
            },
        };
        if present {
            return Ok(rp);
        }
    }
    bail!(
        "instance {instance} has no recovery point in the {} tier to drill; `stowage rp list \
         {instance}` shows each tier's state",
        tier.as_str()
    )
}

fn elapsed(from: Timestamp, to: Timestamp) -> f64 {
    to.duration_since(from).as_secs_f64().max(0.0)
}

/// Run one drill (see the module doc) and return its record, written to the vault. Errors are
/// for drills that could not start (bad arguments, no recovery point, target not isolated);
/// a drill that started always ends in a record, succeeded or failed.
pub async fn drill(
    vault: &crate::cli::VaultArgs,
    broker_args: &crate::cli::BrokerArgs,
    args: &RunArgs,
) -> anyhow::Result<DrillRecord> {
    let (store, secondary) = crate::rp_cmd::stores(vault).await?;
    let key = crate::vault_config::data_key(vault).await?.context(
        "the vault key is missing: a drill compares the restored volumes with the recovery \
         point's chunks; set STOWAGE_VAULT_KEY or --vault-key-file",
    )?;
    let Some(disk_root) = &vault.disk_root else {
        bail!(
            "--disk-root is missing: a drill reads the restored disks (and deletes them) through \
             the disk provider rooted there"
        );
    };
    let disks = Arc::new(
        LocalDiskProvider::open(disk_root)
            .with_context(|| format!("cannot open the disk root {}", disk_root.display()))?,
    );
    let cluster_args = ClusterArgs {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
        cluster_name: None,
    };
    let found = crate::kube_config::cluster_client(&cluster_args)
        .await?
        .context(
            "no credentials for the drill's target cluster: give --kubeconfig (an identity \
             that may read what the restore made and delete namespaces and PVs)",
        )?;
    let tier = tier_of(args.tier);
    let instance = &args.instance;
    let instance_doc = catalog::settings::read_instance(&store, instance)
        .await
        .with_context(|| format!("cannot read backup instance {instance}"))?;
    let rp = latest_rp(&store, secondary.as_ref(), instance, tier).await?;

    // The isolated namespaces: every backed-up namespace, prefixed.
    let sources: Vec<String> = match &instance_doc.scope.namespaces {
        Namespaces::List { names } => names.clone(),
        _ => {
            let mut names: Vec<String> = rp.volumes.iter().map(|v| v.namespace.clone()).collect();
            names.sort();
            names.dedup();
            names
        }
    };
    if sources.is_empty() {
        bail!(
            "instance {instance} protects all namespaces and its recovery point names none: a \
             drill needs the namespaces to isolate; list them in the instance's scope"
        );
    }
    let namespaces: Api<Namespace> = Api::all(found.client.clone());
    let mut mapping = BTreeMap::new();
    for source in &sources {
        let target = format!("{}{source}", args.namespace_prefix);
        if namespaces
            .get_opt(&target)
            .await
            .with_context(|| format!("cannot read namespace {target} ({})", found.source))?
            .is_some()
        {
            bail!(
                "namespace {target} exists in the target cluster: a drill restores only into \
                 namespaces it creates (and deletes afterwards); delete it or choose another \
                 --namespace-prefix"
            );
        }
        mapping.insert(source.clone(), target);
    }
    let drill_id = match &args.drill_id {
        Some(id) => id.clone(),
        None => {
            let nonce = &uuid::Uuid::now_v7().simple().to_string()[20..];
            format!("drill-{instance}-{nonce}")
        }
    };
    layout::validate_id("drill id", &drill_id)?;
    let create = CreateArgs {
        instance: instance.clone(),
        rp: rp.id.clone(),
        from: args.tier,
        namespace_mapping: mapping.iter().map(|(s, t)| format!("{s}={t}")).collect(),
        namespaces: sources.clone(),
        existing: ExistingChoice::Skip,
        no_volumes: false,
        target_cluster: args.target_cluster.clone(),
        restore_id: Some(drill_id.clone()),
        dry_run: false,
        kubeconfig: None,
        context: None,
        output: Format::Table,
        wait: false,
        timeout: None,
    };
    let envelope = crate::restore_cmd::plan(&store, secondary.as_ref(), &create).await?;
    let options = match &envelope.message {
        Message::Restore(job) => job.options.clone(),
        Message::RestoreHydration(job) => job.options.clone(),
        other => bail!("a drill's restore request made a {} job", other.kind()),
    };
    let target_cluster = options
        .target_cluster
        .clone()
        .unwrap_or_else(|| instance_doc.cluster.clone());

    // What the restore will create: the objects verification checks afterwards. Read-only,
    // before the clock starts.
    let plan_request = |existing: ExistingPolicy| RestoreRequest {
        restore_id: drill_id.clone(),
        instance: instance.clone(),
        recovery_point_id: rp.id.clone(),
        source: RestoreSource::Planned { tier },
        options: RestoreOptions {
            dry_run: true,
            existing,
            ..options.clone()
        },
    };
    // A recovery point that cannot even be planned (damaged, unreadable) or that the target
    // refuses is a failed drill, recorded like any other; nothing is submitted then.
    let pre: Result<HashSet<String>, String> = match plan_only(
        &store,
        secondary.as_ref(),
        &found,
        &plan_request(ExistingPolicy::Skip),
    )
    .await
    {
        Err(e) => Err(format!(
            "no plan could be made of the restore into {} ({}), so nothing was restored: {e:#}",
            found.url, found.source
        )),
        Ok(before) => match before
            .plan
            .iter()
            .find(|e| e.action == PlanAction::Conflict)
        {
            Some(conflict) => Err(format!(
                "the target refuses {}: {}; nothing was restored (`stowage restore create \
                 --dry-run` shows the whole plan)",
                describe(conflict),
                conflict.reason()
            )),
            None => Ok(before
                .plan
                .iter()
                .filter(|e| e.action == PlanAction::Create)
                .map(describe)
                .collect()),
        },
    };
    let expected = pre.clone().unwrap_or_default();

    let broker = RabbitBroker::new(broker_args.amqp_url.clone());
    let names = Names::new(broker_args.prefix.clone());
    let requested_by = args
        .requested_by
        .clone()
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()));
    eprintln!(
        "drill {drill_id}: restoring recovery point {} of {instance} from the {} tier into \
         cluster {target_cluster} ({})",
        rp.id,
        tier.as_str(),
        mapping
            .iter()
            .map(|(s, t)| format!("{s}→{t}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let started_at = Timestamp::now();
    if pre.is_ok() {
        crate::restore_cmd::submit_restore(
            &store,
            &broker,
            &names,
            &envelope,
            requested_by.clone(),
        )
        .await?;
    }

    let mut record = DrillRecord {
        id: drill_id.clone(),
        instance: instance.clone(),
        tier,
        recovery_point_id: rp.id.clone(),
        restore_id: drill_id.clone(),
        target_cluster: target_cluster.clone(),
        namespace_mapping: mapping.clone(),
        requested_by,
        status: DrillStatus::Succeeded,
        reason: None,
        started_at,
        restored_at: None,
        verified_at: started_at,
        finished_at: started_at,
        rto_seconds: 0.0,
        restore_seconds: 0.0,
        bytes_moved: 0,
        objects_verified: 0,
        object_findings: Vec::new(),
        volumes: Vec::new(),
        bytes_verified: 0,
        cleaned_up: Vec::new(),
        cleanup_errors: Vec::new(),
    };

    // 1. The restore, by the fleet.
    let restored = match &pre {
        Ok(_) => wait_for(&store, &drill_id, Duration::from_secs_f64(args.timeout)).await,
        Err(reason) => Err(anyhow::anyhow!("{reason}")),
    };
    let restored_at = Timestamp::now();
    if pre.is_ok() {
        record.restored_at = Some(restored_at);
        record.restore_seconds = elapsed(started_at, restored_at);
    }
    let mut pv_disks: Vec<(String, Option<String>)> = Vec::new();
    match restored {
        Ok(job) => {
            record.bytes_moved = job.stages.iter().map(|s| s.progress.bytes_done).sum();
            eprintln!(
                "drill {drill_id}: restored in {:.1}s; verifying",
                record.restore_seconds
            );
            // 2. Verification, with the drill's credentials.
            let request = plan_request(ExistingPolicy::Patch);
            if let Err(e) = verify_objects(
                &store,
                secondary.as_ref(),
                &found,
                &request,
                &expected,
                &mut record,
            )
            .await
            {
                record.object_findings.push(format!(
                    "the objects could not be compared with the recovery point: {e:#}"
                ));
            }
            let volume_store = match tier {
                Tier::Secondary => secondary.clone().unwrap_or_else(|| store.clone()),
                _ => store.clone(),
            };
            pv_disks = verify_volumes(
                &volume_store,
                &key,
                &disks,
                &found.client,
                &rp,
                tier,
                &mapping,
                &mut record,
            )
            .await;
            let bad_volumes: Vec<String> = record
                .volumes
                .iter()
                .filter(|v| !v.matches)
                .map(|v| {
                    format!(
                        "volume {}/{}: {}",
                        v.namespace,
                        v.pvc,
                        v.reason.as_deref().unwrap_or("differs")
                    )
                })
                .collect();
            if let Some(first) = record.object_findings.first().or(bad_volumes.first()) {
                record.status = DrillStatus::Failed;
                record.reason = Some(format!(
                    "verification failed ({} object finding(s), {} volume(s) differing): {first}",
                    record.object_findings.len(),
                    bad_volumes.len()
                ));
            }
        }
        Err(e) => {
            record.status = DrillStatus::Failed;
            record.reason = Some(if pre.is_ok() {
                format!("the restore did not complete: {e:#}")
            } else {
                format!("{e:#}")
            });
        }
    }
    let verified_at = Timestamp::now();
    record.verified_at = verified_at;
    record.rto_seconds = elapsed(started_at, verified_at);

    // 3. Cleanup.
    if pre.is_err() {
        // Nothing was submitted, so nothing was created.
    } else if args.keep {
        eprintln!("drill {drill_id}: --keep: what the drill restored is left in place");
    } else {
        cleanup(&found.client, &disks, &mapping, &pv_disks, &mut record).await;
    }
    record.finished_at = Timestamp::now();

    // 4. Record and announce.
    match drills::create_drill(&store, &record)
        .await
        .with_context(|| format!("cannot write the record of drill {drill_id}"))?
    {
        CreateOutcome::Created(_) => {}
        CreateOutcome::AlreadyExists => bail!(
            "a drill record {drill_id} already exists; choose another --drill-id (this run's \
             result was: {})",
            status_word(record.status)
        ),
    }
    let event = Envelope::new(
        drill_id.clone(),
        Message::DrillCompleted(DrillCompleted {
            drill_id: drill_id.clone(),
            instance: instance.clone(),
            recovery_point_id: rp.id.clone(),
            tier,
            target_cluster,
            succeeded: record.status == DrillStatus::Succeeded,
            reason: record.reason.clone(),
            rto_seconds: record.rto_seconds,
            objects_verified: record.objects_verified,
            bytes_verified: record.bytes_verified,
            finished_at: record.finished_at,
        }),
    );
    if let Err(e) = submit(&broker, &names, &event).await {
        // The record is written: the result is not lost, only its announcement.
        eprintln!(
            "warning: drill {drill_id} is recorded, but its drill.completed event could not be \
             published to {}: {e}",
            broker.endpoint()
        );
    }
    stowage_runtime::metrics::metrics().drill_finished(
        instance,
        tier.as_str(),
        Duration::from_secs_f64(record.rto_seconds),
        record.status == DrillStatus::Succeeded,
        record.finished_at.as_millisecond() as f64 / 1000.0,
    );
    Ok(record)
}

/// Waits for the restore job `id` to finish; its record when it succeeded.
async fn wait_for(store: &BlobStore, id: &str, timeout: Duration) -> anyhow::Result<JobRecord> {
    let started = tokio::time::Instant::now();
    loop {
        match read_job(store, id).await {
            Ok((job, _)) if crate::jobs_cmd::is_finished(&job) => {
                if job.status() == JobStatus::Succeeded {
                    return Ok(job);
                }
                bail!(
                    "restore {id} {}: {}",
                    crate::jobs_cmd::status_name(job.status()),
                    crate::jobs_cmd::failure(&job)
                );
            }
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read the record of {id}")),
        }
        if started.elapsed() >= timeout {
            bail!(
                "restore {id} did not finish within {:.0} s (are restore workers for the target \
                 cluster running?); `stowage jobs watch {id}` follows it",
                timeout.as_secs_f64()
            );
        }
        // The RTO is measured to this resolution: a read of one small record.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `Kind namespace/name` of a plan entry.
fn describe(entry: &stowage_stages::restore::PlanEntry) -> String {
    match &entry.namespace {
        Some(ns) => format!("{} {ns}/{}", entry.kind, entry.name),
        None => format!("{} {}", entry.kind, entry.name),
    }
}

/// The restore stage's plan-only path against the drill's target, with the drill's credentials.
async fn plan_only(
    store: &BlobStore,
    secondary: Option<&BlobStore>,
    found: &crate::kube_config::ClusterClient,
    request: &RestoreRequest,
) -> anyhow::Result<stowage_stages::restore::RestoreReport> {
    let target = request
        .options
        .target_cluster
        .clone()
        .context("the drill names no target cluster")?;
    let mut ctx = stowage_stages::ClusterContext::new(
        store.clone(),
        Arc::new(stowage_disk::NoDiskProvider),
        target,
        stowage_cluster::ClusterTarget::new(found.client.clone()),
    );
    if let Some(secondary) = secondary {
        ctx = ctx.with_secondary(secondary.clone());
    }
    stowage_stages::restore::restore(
        &ctx,
        request,
        &stowage_runtime::JobContext::detached(Stage::Restore),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Objects: the plan-only path again, with `existing: patch` (see the module doc). Only the
/// objects the drill's restore was to create (`expected`, from the plan made before it) are
/// checked: objects that existed before the drill (cluster-scoped ones the target already had)
/// were left as they were, by design.
async fn verify_objects(
    store: &BlobStore,
    secondary: Option<&BlobStore>,
    found: &crate::kube_config::ClusterClient,
    request: &RestoreRequest,
    expected: &HashSet<String>,
    record: &mut DrillRecord,
) -> anyhow::Result<()> {
    let report = plan_only(store, secondary, found, request).await?;
    let mut seen = HashSet::new();
    for entry in &report.plan {
        let object = describe(entry);
        if !expected.contains(&object) {
            continue;
        }
        seen.insert(object.clone());
        match entry.action {
            PlanAction::Skip if entry.note.as_deref() == Some("exists and already matches") => {
                record.objects_verified += 1;
            }
            PlanAction::Skip => record
                .object_findings
                .push(format!("{object} was not restored: {}", entry.reason())),
            PlanAction::Create => record
                .object_findings
                .push(format!("{object} is missing in the target")),
            PlanAction::Patch => record
                .object_findings
                .push(format!("{object} differs from the recovery point")),
            PlanAction::Conflict => record
                .object_findings
                .push(format!("{object}: {}", entry.reason())),
        }
    }
    // A restored claim's PV leaves the plan once the claim is bound to it: the volume check
    // finds it (claim → PV → disk) and reads it back.
    let mut unplanned: Vec<&String> = expected
        .difference(&seen)
        .filter(|o| !o.starts_with("PersistentVolume "))
        .collect();
    unplanned.sort();
    for object in unplanned {
        record.object_findings.push(format!(
            "{object} was planned before the restore but is no longer in its plan"
        ));
    }
    Ok(())
}

/// Volumes: each claim's disk read back against the recovery point (see the module doc).
/// Returns the PVs found with their disks, for cleanup.
#[allow(clippy::too_many_arguments)]
async fn verify_volumes(
    store: &BlobStore,
    key: &VaultKey,
    disks: &LocalDiskProvider,
    client: &kube::Client,
    rp: &RecoveryPoint,
    tier: Tier,
    mapping: &BTreeMap<String, String>,
    record: &mut DrillRecord,
) -> Vec<(String, Option<String>)> {
    let mut found = Vec::new();
    let manifest_tier = match tier {
        Tier::Secondary => Tier::Secondary,
        _ => Tier::Vault,
    };
    let manifest = catalog::read_tier_manifest(store, &rp.instance, &rp.id, manifest_tier)
        .await
        .ok()
        .flatten();
    for volume in &rp.volumes {
        let namespace = mapping
            .get(&volume.namespace)
            .cloned()
            .unwrap_or_else(|| volume.namespace.clone());
        let mut check = VolumeCheck {
            namespace: namespace.clone(),
            pvc: volume.pvc.clone(),
            disk: None,
            size_bytes: volume.size_bytes,
            bytes_verified: 0,
            checked_against: "-".into(),
            matches: false,
            reason: None,
        };
        let located = locate_disk(client, &namespace, &volume.pvc).await;
        let (pv, disk) = match located {
            Ok(found) => found,
            Err(e) => {
                check.reason = Some(format!("{e:#}"));
                record.volumes.push(check);
                continue;
            }
        };
        found.push((pv, disk.clone()));
        let Some(disk) = disk else {
            check.reason = Some("its PV names no CSI volume handle (disk)".into());
            record.volumes.push(check);
            continue;
        };
        check.disk = Some(disk.clone());
        let vaulted = manifest
            .as_ref()
            .and_then(|m| m.volumes.iter().find(|v| v.volume_id == volume.volume_id));
        let result = match vaulted {
            Some(v) => {
                check.checked_against =
                    format!("{} extent map {}", manifest_tier.as_str(), v.version);
                compare_with_map(store, key, disks, &disk, &volume.volume_id, &v.version).await
            }
            None => {
                check.checked_against = format!("operational snapshot {}", volume.snapshot_id);
                compare_with_snapshot(disks, &disk, &volume.snapshot_id, volume.size_bytes).await
            }
        };
        match result {
            Ok(Compared { bytes, difference }) => {
                check.bytes_verified = bytes;
                record.bytes_verified += bytes;
                check.matches = difference.is_none();
                check.reason = difference;
            }
            Err(e) => check.reason = Some(format!("cannot be compared: {e:#}")),
        }
        record.volumes.push(check);
    }
    found
}

/// The PV bound to claim `namespace/pvc` and the disk its CSI volume handle names.
async fn locate_disk(
    client: &kube::Client,
    namespace: &str,
    pvc: &str,
) -> anyhow::Result<(String, Option<String>)> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let claim = claims
        .get_opt(pvc)
        .await
        .with_context(|| format!("cannot read claim {namespace}/{pvc}"))?
        .with_context(|| format!("claim {namespace}/{pvc} is missing in the target"))?;
    let pv_name = claim
        .spec
        .and_then(|s| s.volume_name)
        .filter(|n| !n.is_empty())
        .with_context(|| format!("claim {namespace}/{pvc} is not bound to a volume"))?;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv = pvs
        .get_opt(&pv_name)
        .await
        .with_context(|| format!("cannot read PV {pv_name}"))?
        .with_context(|| format!("PV {pv_name} of claim {namespace}/{pvc} is missing"))?;
    let disk = pv
        .spec
        .and_then(|s| s.csi)
        .map(|c| c.volume_handle)
        .filter(|h| !h.is_empty());
    Ok((pv_name, disk))
}

/// What a comparison found: bytes compared, and the first difference.
struct Compared {
    bytes: u64,
    difference: Option<String>,
}

/// Pieces read at once: bounded memory whatever the volume's size.
const PIECE: u64 = 4 << 20;

/// Whether `disk` reads as zeros over `start..end`; the first non-zero offset otherwise.
async fn zeros(
    disks: &LocalDiskProvider,
    disk: &DiskId,
    start: u64,
    end: u64,
    buf: &mut Vec<u8>,
) -> anyhow::Result<Option<u64>> {
    let mut at = start;
    while at < end {
        let len = (end - at).min(PIECE) as usize;
        buf.resize(len, 0);
        disks.read_disk(disk, at, &mut buf[..len]).await?;
        if !is_all_zero(&buf[..len]) {
            let first = buf[..len].iter().position(|&b| b != 0).unwrap_or(0);
            return Ok(Some(at + first as u64));
        }
        at += len as u64;
    }
    Ok(None)
}

async fn compare_with_map(
    store: &BlobStore,
    key: &VaultKey,
    disks: &LocalDiskProvider,
    disk: &str,
    volume_id: &str,
    version: &str,
) -> anyhow::Result<Compared> {
    let chain = load_chain(store, volume_id, version).await?;
    let map = ExtentMap::resolve(&chain)?;
    let keys: ChunkKeys = key.chunk_keys();
    let disk = DiskId::from(disk);
    let mut buf = Vec::new();
    let mut index: Option<ChunkIndex> = None;
    let mut at = 0u64;
    let mut bytes = 0u64;
    for extent in map.extents() {
        if let Some(offset) = zeros(disks, &disk, at, extent.offset, &mut buf).await? {
            return Ok(Compared {
                bytes: bytes + (offset - at),
                difference: Some(format!(
                    "byte {offset} is not zero, but the recovery point holds no data there"
                )),
            });
        }
        bytes += extent.offset - at;
        let len = extent.length as usize;
        buf.resize(len, 0);
        disks
            .read_disk(&disk, extent.offset, &mut buf[..len])
            .await?;
        let same = match extent.target {
            ExtentTarget::Zero => is_all_zero(&buf[..len]),
            ExtentTarget::Chunk {
                id,
                offset_in_chunk,
            } => {
                // A whole chunk hashes to its id; a part of one is compared with its bytes.
                offset_in_chunk == 0 && keys.chunk_id(&buf[..len]) == id
                    || chunk_slice_equals(
                        store,
                        &keys,
                        &map,
                        &mut index,
                        &id,
                        offset_in_chunk,
                        &buf[..len],
                    )
                    .await?
            }
        };
        if !same {
            return Ok(Compared {
                bytes,
                difference: Some(format!(
                    "bytes {}..{} differ from the recovery point",
                    extent.offset,
                    extent.end()
                )),
            });
        }
        bytes += extent.length;
        at = extent.end();
    }
    let size = map.volume_size();
    if let Some(offset) = zeros(disks, &disk, at, size, &mut buf).await? {
        return Ok(Compared {
            bytes: bytes + (offset - at),
            difference: Some(format!(
                "byte {offset} is not zero, but the recovery point holds no data there"
            )),
        });
    }
    bytes += size.saturating_sub(at);
    Ok(Compared {
        bytes,
        difference: None,
    })
}

/// Whether `data` equals the chunk `id`'s plaintext from `offset` (read from the vault).
async fn chunk_slice_equals(
    store: &BlobStore,
    keys: &ChunkKeys,
    map: &ExtentMap,
    index: &mut Option<ChunkIndex>,
    id: &ChunkId,
    offset: u32,
    data: &[u8],
) -> anyhow::Result<bool> {
    if index.is_none() {
        let wanted: HashSet<ChunkId> = map.chunk_ids().collect();
        *index = Some(ChunkIndex::load_only(store, &wanted).await?);
    }
    let location = index
        .as_ref()
        .and_then(|i| i.get(id))
        .with_context(|| format!("chunk {id} is in no index segment of the vault"))?;
    let plain = stowage_vault::pack::read_chunk(store, keys, id, &location).await?;
    let start = offset as usize;
    Ok(plain.get(start..start + data.len()) == Some(data))
}

async fn compare_with_snapshot(
    disks: &LocalDiskProvider,
    disk: &str,
    snapshot: &str,
    size: u64,
) -> anyhow::Result<Compared> {
    let disk = DiskId::from(disk);
    let snapshot = SnapshotId::from(snapshot);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut at = 0u64;
    while at < size {
        let len = (size - at).min(PIECE) as usize;
        a.resize(len, 0);
        b.resize(len, 0);
        disks.read_disk(&disk, at, &mut a[..len]).await?;
        disks.read_snapshot(&snapshot, at, &mut b[..len]).await?;
        if a != b {
            let first = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(0);
            return Ok(Compared {
                bytes: at + first as u64,
                difference: Some(format!(
                    "byte {} differs from the snapshot",
                    at + first as u64
                )),
            });
        }
        at += len as u64;
    }
    Ok(Compared {
        bytes: size,
        difference: None,
    })
}

/// Deletes what the drill created: its namespaces (with what is in them), the PVs bound to
/// claims in them, and their disks.
async fn cleanup(
    client: &kube::Client,
    disks: &LocalDiskProvider,
    mapping: &BTreeMap<String, String>,
    found: &[(String, Option<String>)],
    record: &mut DrillRecord,
) {
    let targets: HashSet<&String> = mapping.values().collect();
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let mut pv_disks: BTreeMap<String, Option<String>> = found.iter().cloned().collect();
    match pvs.list(&ListParams::default()).await {
        Ok(list) => {
            for pv in list.items {
                let spec = pv.spec.as_ref();
                let in_drill = spec
                    .and_then(|s| s.claim_ref.as_ref())
                    .and_then(|c| c.namespace.as_ref())
                    .is_some_and(|ns| targets.contains(ns));
                if let (true, Some(name)) = (in_drill, pv.metadata.name.clone()) {
                    let disk = spec
                        .and_then(|s| s.csi.as_ref())
                        .map(|c| c.volume_handle.clone());
                    pv_disks.entry(name).or_insert(disk);
                }
            }
        }
        Err(e) => record
            .cleanup_errors
            .push(format!("cannot list PVs to delete the drill's: {e}")),
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in mapping.values() {
        match namespaces.delete(ns, &DeleteParams::default()).await {
            Ok(_) => record.cleaned_up.push(format!("namespace {ns}")),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => record.cleanup_errors.push(format!(
                "namespace {ns} was not deleted: {e}; delete it by hand"
            )),
        }
    }
    for (pv, disk) in pv_disks {
        match pvs.delete(&pv, &DeleteParams::default()).await {
            Ok(_) => record.cleaned_up.push(format!("pv {pv}")),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                record
                    .cleanup_errors
                    .push(format!("pv {pv} was not deleted: {e}; delete it by hand"));
                continue;
            }
        }
        if let Some(disk) = disk {
            match disks.delete_disk(&DiskId::from(disk.as_str())).await {
                Ok(()) => record.cleaned_up.push(format!("disk {disk}")),
                Err(e) => record.cleanup_errors.push(format!(
                    "disk {disk} was not deleted: {e}; delete it by hand"
                )),
            }
        }
    }
}
