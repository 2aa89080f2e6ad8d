//! `stowage restore create|status|cleanup`.
//!
//! `create` checks the request against the vault before anything is written (the instance and
//! the recovery point exist, the tier holds the RP, the namespace mapping is well-formed),
//! then writes the job record (create-only; the job id is the restore id) and submits
//! `job.restore` (operational tier) or `job.restore-hydration` (vault or secondary tier, which
//! triggers the restore when the data is staged). `--dry-run` stops after the checks and,
//! with the target cluster's credentials, runs the restore stage's plan-only path and prints
//! the plan per object (wave, action, reason, each PVC's new disk); exit code 3 when it has
//! conflicts. Without credentials it prints the job it would submit. Either way nothing is
//! written, created or published.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use jiff::Timestamp;
use serde::Serialize;
use stowage_runtime::client::submit;
use stowage_runtime::{Broker as _, Names, RabbitBroker};
use stowage_schemas::domain::{JobRecord, JobStatus, RpState, Tier};
use stowage_schemas::jobs::{ExistingPolicy, RestoreHydrationJob, RestoreJob, RestoreOptions};
use stowage_schemas::{Envelope, Message, Stage};
use stowage_stages::restore::{PlanAction, RestoreRequest, RestoreSource};
use stowage_vault::catalog;
use stowage_vault::catalog::jobs::{create_job, update_known_job};
use stowage_vault::layout;
use stowage_vault::store::{BlobStore, CreateOutcome};

use crate::cli::{ClusterArgs, Format, OnVaultAndBroker, OutputArgs, TableOutput, VaultArgs};
use crate::jobs_cmd;
use crate::output;

/// `stowage restore` (the broker settings are for `create`).
pub type RestoreArgs = OnVaultAndBroker<RestoreAction>;

/// Restore actions.
#[derive(Debug, Subcommand)]
pub enum RestoreAction {
    /// Check a restore request, record it and submit it; prints the restore id.
    Create(CreateArgs),
    /// Show a restore's job record: stages, progress, and the counts of what was restored.
    Status {
        /// The restore id (`restore create` printed it).
        #[arg(value_parser = crate::cli::id_arg)]
        restore_id: String,
        #[command(flatten)]
        output: TableOutput,
    },
    /// Remove staging areas (disks and objects) of restores that did not complete within the
    /// keep time, and the leftover records of completed ones.
    Cleanup {
        /// How long a failed restore's staging is kept for inspection, e.g. `72h`, `30m`.
        #[arg(long, default_value = "72h")]
        keep_failed_for: String,
        #[command(flatten)]
        output: TableOutput,
    },
}

/// Where a restore reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FromTier {
    /// The operational tier: volume snapshots; fastest.
    Operational,
    /// The vault tier, hydrated through staging disks.
    Vault,
    /// The secondary (geo-redundant) copy, hydrated through staging disks.
    Secondary,
}

impl FromTier {
    fn tier(self) -> Tier {
        match self {
            FromTier::Operational => Tier::Operational,
            FromTier::Vault => Tier::Vault,
            FromTier::Secondary => Tier::Secondary,
        }
    }
}

/// What to do with objects that exist in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExistingChoice {
    /// Leave them as they are.
    Skip,
    /// Merge-patch them to the backup.
    Patch,
}

/// `stowage restore create`.
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// The backup instance.
    #[arg(long, value_parser = crate::cli::id_arg)]
    pub instance: String,
    /// The recovery point (`stowage rp list <instance>` shows them).
    #[arg(long, value_parser = crate::cli::id_arg)]
    pub rp: String,
    /// The tier to restore from.
    #[arg(long, value_enum, default_value_t = FromTier::Operational)]
    pub from: FromTier,
    /// Rename a namespace on the way in: `source=target`; repeat for several.
    #[arg(long = "namespace-mapping", value_name = "SOURCE=TARGET")]
    pub namespace_mapping: Vec<String>,
    /// Restore only these (backed-up) namespaces; comma-separated or repeated.
    #[arg(long, value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// What to do with objects that already exist in the target.
    #[arg(long, value_enum, default_value_t = ExistingChoice::Skip)]
    pub existing: ExistingChoice,
    /// Restore resources only, no volume data.
    #[arg(long)]
    pub no_volumes: bool,
    /// The cluster to restore into (a name the restore worker serves); default: the
    /// instance's own cluster.
    #[arg(long, value_parser = crate::cli::id_arg)]
    pub target_cluster: Option<String>,
    /// The restore id (default: generated). It is also the job id.
    #[arg(long, value_parser = crate::cli::id_arg)]
    pub restore_id: Option<String>,
    /// Print the plan: per object, its wave, the action (create / skip / patch / conflict), the
    /// reason, and each PVC's new disk; change, write and submit nothing. Reads the target
    /// cluster through --kubeconfig (or KUBECONFIG, ~/.kube/config, the pod's account); without
    /// credentials only checks the request. Exit code 3 when the plan has conflicts.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: the target cluster's kubeconfig (default: KUBECONFIG, then
    /// ~/.kube/config, then the service account of the pod the command runs in).
    #[arg(long, value_name = "PATH", requires = "dry_run")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// With --dry-run: the kubeconfig context (default: its current-context).
    #[arg(long, value_name = "NAME", requires = "dry_run")]
    pub context: Option<String>,
    /// With --dry-run: how the plan is printed.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
    /// Follow the restore until it finishes (like `jobs watch`); exit non-zero if it fails.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long)]
    pub timeout: Option<f64>,
}

/// Run `stowage restore …`.
pub async fn run(args: RestoreArgs) -> anyhow::Result<()> {
    match args.action {
        RestoreAction::Create(create) => {
            // Unlocked first: a wrong key is refused (naming the key id the vault expects)
            // before anything is written.
            let (store, secondary) = crate::rp_cmd::stores(&args.vault).await?;
            let envelope = plan(&store, secondary.as_ref(), &create).await?;
            if create.dry_run {
                let cluster = ClusterArgs {
                    kubeconfig: create.kubeconfig.clone(),
                    context: create.context.clone(),
                    cluster_name: None,
                };
                let Some(found) = crate::kube_config::cluster_client(&cluster).await? else {
                    eprintln!(
                        "dry run: the request is valid, but no plan was made: no cluster \
                         credentials were found (--kubeconfig, KUBECONFIG, ~/.kube/config or a \
                         pod's service account); give the target cluster's kubeconfig to see what \
                         the restore would do to each object. This is the job `restore create` \
                         would submit (nothing was written or published):"
                    );
                    print!("{}", serde_yaml::to_string(&envelope.message)?);
                    return Ok(());
                };
                return dry_run_plan(&store, secondary.as_ref(), &envelope, found, create.output)
                    .await;
            }
            let broker = RabbitBroker::new(args.broker.amqp_url.clone());
            let names = Names::new(args.broker.prefix.clone());
            submit_restore(&store, &broker, &names, &envelope, requested_by()).await?;
            let id = &envelope.job_id;
            eprintln!(
                "restore {id} submitted ({} to {}); follow it with `stowage restore status {id}` \
                 or `stowage jobs watch {id}`",
                envelope.kind(),
                broker.endpoint()
            );
            println!("{id}");
            if create.wait {
                jobs_cmd::watch(
                    &store,
                    id,
                    Duration::from_secs(1),
                    create.timeout.map(Duration::from_secs_f64),
                )
                .await?;
            }
            Ok(())
        }
        RestoreAction::Status {
            restore_id,
            output: OutputArgs { output: format },
        } => {
            let store = jobs_cmd::open_vault(&args.vault).await?;
            let job = jobs_cmd::read(&store, &restore_id).await.with_context(|| {
                format!(
                    "restore {restore_id} has no record (the job id of a restore is its restore id)"
                )
            })?;
            jobs_cmd::show(&job, format)?;
            if format == Format::Table && job.status() == JobStatus::Failed {
                eprintln!(
                    "the restore failed; its staging (if any) is kept for inspection until \
                     `stowage restore cleanup` removes it after the keep time"
                );
            }
            Ok(())
        }
        RestoreAction::Cleanup {
            keep_failed_for,
            output: OutputArgs { output: format },
        } => cleanup(&args.vault, &keep_failed_for, format).await,
    }
}

fn requested_by() -> Option<String> {
    std::env::var("USER").ok().filter(|u| !u.is_empty())
}

/// A Kubernetes namespace name (RFC 1123 label).
fn check_namespace(what: &str, name: &str) -> anyhow::Result<()> {
    if !catalog::settings::is_namespace_name(name) {
        bail!(
            "{what} {name:?} is not a namespace name: at most 63 lowercase letters, digits and \
             '-', starting and ending with a letter or digit"
        );
    }
    Ok(())
}

/// Parse `--namespace-mapping source=target` pairs.
pub fn parse_mapping(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut mapping = BTreeMap::new();
    let mut targets = BTreeSet::new();
    for pair in pairs {
        let Some((source, target)) = pair.split_once('=') else {
            bail!("--namespace-mapping {pair:?} is not SOURCE=TARGET, e.g. shop=shop-restored");
        };
        let (source, target) = (source.trim(), target.trim());
        check_namespace("--namespace-mapping source", source)?;
        check_namespace("--namespace-mapping target", target)?;
        if mapping
            .insert(source.to_owned(), target.to_owned())
            .is_some()
        {
            bail!("--namespace-mapping maps {source} twice; give one target per namespace");
        }
        if !targets.insert(target.to_owned()) {
            bail!(
                "--namespace-mapping maps two namespaces to {target}; their objects would collide"
            );
        }
    }
    Ok(mapping)
}

/// Check a restore request against the vault and build its envelope (see the module doc).
pub async fn plan(
    store: &BlobStore,
    secondary: Option<&BlobStore>,
    args: &CreateArgs,
) -> anyhow::Result<Envelope> {
    let (instance, rp_id) = (args.instance.as_str(), args.rp.as_str());
    let mapping = parse_mapping(&args.namespace_mapping)?;
    for ns in &args.namespaces {
        check_namespace("--namespaces entry", ns)?;
    }
    layout::instance(instance)?;
    let instance_doc = match catalog::settings::read_instance(store, instance).await {
        Ok(doc) => doc,
        Err(e) if e.is_not_found() => bail!(
            "no backup instance {instance} in the vault (instances/{instance}.json); check the \
             name, or create the instance first"
        ),
        Err(e) => return Err(e).context("cannot read the backup instance"),
    };
    let rp = match catalog::read_recovery_point(store, instance, rp_id).await {
        Ok(rp) => rp,
        Err(e) if e.is_not_found() => bail!(
            "no recovery point {rp_id} of instance {instance}; `stowage rp list {instance}` \
             shows its recovery points"
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read recovery point {rp_id}")),
    };
    if let Some(deleted) = catalog::soft_delete::deleted(store, instance, rp_id)
        .await
        .with_context(|| format!("cannot read the soft-delete record of recovery point {rp_id}"))?
    {
        bail!("{}", deleted.restore_refusal());
    }
    let tier = args.from.tier();
    match tier {
        Tier::Operational => {
            let state = rp.tiers.iter().find(|t| t.tier == Tier::Operational);
            if !matches!(state.map(|t| t.state), Some(RpState::Available)) {
                bail!(
                    "recovery point {rp_id} is not available in the operational tier ({}); \
                     restore it --from vault instead",
                    state.map_or("not present".to_owned(), |t| format!("{:?}", t.state))
                );
            }
        }
        Tier::Vault | Tier::Secondary => {
            let (place, name) = match tier {
                Tier::Vault => (Some(store), "vault"),
                _ => (secondary, "secondary"),
            };
            let Some(place) = place else {
                bail!("say where the secondary copy is: --secondary (the paired region's storage)");
            };
            let manifest = catalog::read_tier_manifest(place, instance, rp_id, tier)
                .await
                .with_context(|| format!("cannot read the {name} manifest of {rp_id}"))?;
            if manifest.is_none() {
                bail!(
                    "recovery point {rp_id} is not in the {name} tier (yet): its transfer has not \
                     completed; `stowage rp list {instance}` shows each tier's state"
                );
            }
        }
    }
    if !args.namespaces.is_empty()
        && let Some(unknown) = mapping.keys().find(|s| !args.namespaces.contains(s))
    {
        bail!(
            "--namespace-mapping renames {unknown}, which --namespaces does not restore; add it \
             to --namespaces or drop the mapping"
        );
    }
    let restore_id = match &args.restore_id {
        Some(id) => {
            layout::validate_id("restore id", id)?;
            id.clone()
        }
        None => {
            let nonce = &uuid::Uuid::now_v7().simple().to_string()[20..];
            let id = format!("restore-{rp_id}-{nonce}");
            // A recovery-point id near the length limit would push the restore id past it.
            if id.len() <= stowage_schemas::id::MAX_ID_LEN {
                id
            } else {
                format!("restore-{}", uuid::Uuid::now_v7().simple())
            }
        }
    };
    // The target cluster is always named in the job: it routes the restore to that cluster's
    // restore workers (see stowage_runtime::topology), the instance's own when not given.
    let options = RestoreOptions {
        target_cluster: Some(
            args.target_cluster
                .clone()
                .unwrap_or_else(|| instance_doc.cluster.clone()),
        ),
        namespaces: args.namespaces.clone(),
        namespace_mapping: mapping,
        existing: match args.existing {
            ExistingChoice::Skip => ExistingPolicy::Skip,
            ExistingChoice::Patch => ExistingPolicy::Patch,
        },
        include_volumes: !args.no_volumes,
        dry_run: false,
    };
    let message = match tier {
        Tier::Operational => Message::Restore(RestoreJob {
            restore_id: restore_id.clone(),
            instance: instance.to_owned(),
            recovery_point_id: rp_id.to_owned(),
            source_tier: Tier::Operational,
            staging: None,
            options,
        }),
        tier => Message::RestoreHydration(RestoreHydrationJob {
            restore_id: restore_id.clone(),
            instance: instance.to_owned(),
            recovery_point_id: rp_id.to_owned(),
            tier,
            staging_location: None,
            options,
        }),
    };
    Ok(Envelope::new(restore_id, message))
}

/// Exit code of `restore create --dry-run` when the plan has conflicts (1 is "no plan could be
/// made", 2 a usage error).
pub const EXIT_CONFLICTS: u8 = 3;

/// One object of a dry run's plan, as printed.
#[derive(Debug, Serialize)]
struct PlannedObject<'a> {
    wave: u32,
    action: PlanAction,
    api_version: &'a str,
    kind: &'a str,
    namespace: Option<&'a str>,
    name: &'a str,
    reason: String,
    after: &'a [String],
    disk: Option<&'a str>,
}

/// A dry run's plan, as printed with `-o json|yaml`.
#[derive(Debug, Serialize)]
struct PlanView<'a> {
    restore_id: &'a str,
    instance: &'a str,
    recovery_point: &'a str,
    tier: Tier,
    target_cluster: &'a str,
    api_server: &'a str,
    waves: u32,
    create: u64,
    patch: u64,
    skip: u64,
    conflict: u64,
    volumes: u32,
    warnings: &'a [String],
    objects: Vec<PlannedObject<'a>>,
}

/// What a dry run found: the restore stage's plan-only report, and what it planned.
pub struct DryRun {
    /// The restore stage's report; `plan` is the per-object plan.
    pub report: stowage_stages::restore::RestoreReport,
    /// The request as planned (options with `dry_run` set).
    pub request: RestoreRequest,
    /// The tier restored from.
    pub tier: Tier,
    /// The target cluster's name.
    pub target: String,
}

/// The restore stage's plan-only path for `envelope` (a checked request, see [`plan`]), in
/// this process: reads only, the vault and the target cluster through `client`.
pub async fn dry_run(
    store: &BlobStore,
    secondary: Option<&BlobStore>,
    envelope: &Envelope,
    client: kube::Client,
    describe_target: &str,
) -> anyhow::Result<DryRun> {
    let (tier, job_options, instance, rp_id) = match &envelope.message {
        Message::Restore(job) => (
            Tier::Operational,
            &job.options,
            &job.instance,
            &job.recovery_point_id,
        ),
        Message::RestoreHydration(job) => (
            job.tier,
            &job.options,
            &job.instance,
            &job.recovery_point_id,
        ),
        other => bail!("a restore request made a {} job", other.kind()),
    };
    let options = RestoreOptions {
        dry_run: true,
        ..job_options.clone()
    };
    let target = options
        .target_cluster
        .clone()
        .context("the request names no target cluster")?;
    // A plan reads no disk: the provider is never asked.
    let mut ctx = stowage_stages::ClusterContext::new(
        store.clone(),
        Arc::new(stowage_disk::NoDiskProvider),
        target.clone(),
        stowage_cluster::ClusterTarget::new(client),
    );
    if let Some(secondary) = secondary {
        ctx = ctx.with_secondary(secondary.clone());
    }
    let request = RestoreRequest {
        restore_id: envelope.job_id.clone(),
        instance: instance.clone(),
        recovery_point_id: rp_id.clone(),
        source: RestoreSource::Planned { tier },
        options,
    };
    let report = stowage_stages::restore::restore(
        &ctx,
        &request,
        &stowage_runtime::JobContext::detached(Stage::Restore),
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "no plan was made for restore {} into cluster {target} ({describe_target}): {e}",
            request.restore_id,
        )
    })?;
    Ok(DryRun {
        report,
        request,
        tier,
        target,
    })
}

/// `restore create --dry-run` with a cluster: the restore stage's plan-only path, in this
/// process (reads only: the vault, and the target through `found`), printed per object.
async fn dry_run_plan(
    store: &BlobStore,
    secondary: Option<&BlobStore>,
    envelope: &Envelope,
    found: crate::kube_config::ClusterClient,
    format: Format,
) -> anyhow::Result<()> {
    let described = format!("{}, {}", found.url, found.source);
    let DryRun {
        report,
        request,
        tier,
        target,
    } = dry_run(store, secondary, envelope, found.client, &described).await?;
    let (instance, rp_id) = (&request.instance, &request.recovery_point_id);
    let objects: Vec<PlannedObject> = report
        .plan
        .iter()
        .map(|e| PlannedObject {
            wave: e.wave,
            action: e.action,
            api_version: &e.api_version,
            kind: &e.kind,
            namespace: e.namespace.as_deref(),
            name: &e.name,
            reason: e.reason(),
            after: &e.after,
            disk: e.disk.as_deref(),
        })
        .collect();
    let view = PlanView {
        restore_id: &request.restore_id,
        instance,
        recovery_point: rp_id,
        tier,
        target_cluster: &target,
        api_server: &found.url,
        waves: report.waves,
        create: report.count(PlanAction::Create),
        patch: report.count(PlanAction::Patch),
        skip: report.count(PlanAction::Skip),
        conflict: report.count(PlanAction::Conflict),
        volumes: report.volumes_restored,
        warnings: &report.warnings,
        objects,
    };
    let rows: Vec<Vec<String>> = view
        .objects
        .iter()
        .map(|o| {
            let object = match o.namespace {
                Some(ns) => format!("{} {ns}/{}", o.kind, o.name),
                None => format!("{} {}", o.kind, o.name),
            };
            let mut reason = o.reason.clone();
            if !o.after.is_empty() {
                const SHOWN: usize = 3;
                let mut after = o.after[..o.after.len().min(SHOWN)].join(", ");
                if o.after.len() > SHOWN {
                    after.push_str(&format!(" and {} more", o.after.len() - SHOWN));
                }
                reason.push_str(&format!("; after {after}"));
            }
            vec![
                o.wave.to_string(),
                o.action.word().to_owned(),
                object,
                o.disk.unwrap_or("-").to_owned(),
                reason,
            ]
        })
        .collect();
    output::print(
        format,
        &["WAVE", "ACTION", "OBJECT", "NEW DISK", "REASON"],
        &rows,
        &view,
    )?;
    eprintln!(
        "dry run of restore {}: recovery point {rp_id} of {instance} ({} tier) into cluster \
         {target} ({}): {} objects in {} waves: {} create, {} patch, {} skip, {} conflict; {} \
         volume(s) onto new disks. Nothing was changed, written or submitted.",
        view.restore_id,
        serde_json::to_value(tier)?.as_str().unwrap_or("?"),
        found.url,
        view.objects.len(),
        view.waves,
        view.create,
        view.patch,
        view.skip,
        view.conflict,
        view.volumes,
    );
    if view.volumes > 0 {
        eprintln!(
            "the new disks' names carry the restore id: `restore create --restore-id {}` (same \
             options, without --dry-run) restores onto them",
            view.restore_id
        );
    }
    // Conflicts are warnings too; the table has already said them.
    let conflicts: BTreeSet<String> = report
        .plan
        .iter()
        .filter(|e| e.action == PlanAction::Conflict)
        .map(|e| match &e.namespace {
            Some(ns) => format!("{} {ns}/{}: ", e.kind, e.name),
            None => format!("{} {}: ", e.kind, e.name),
        })
        .collect();
    for warning in view.warnings {
        if !conflicts.iter().any(|c| warning.starts_with(c.as_str())) {
            eprintln!("warning: {warning}");
        }
    }
    if view.conflict > 0 {
        return Err(output::Exit {
            code: EXIT_CONFLICTS,
            message: format!(
                "the plan has {} conflict(s) (action `conflict` above, each with its reason): a \
                 restore would go past them and report them; fix them in the target, or choose \
                 other options (--existing patch, --namespace-mapping), and plan again",
                view.conflict
            ),
        }
        .into());
    }
    Ok(())
}

/// Write the restore's job record (create-only), then publish its job. If the publish fails
/// the record is marked failed, so it does not sit `queued` forever.
pub async fn submit_restore(
    store: &BlobStore,
    broker: &dyn stowage_runtime::Broker,
    names: &Names,
    envelope: &Envelope,
    requested_by: Option<String>,
) -> anyhow::Result<()> {
    let stage = match &envelope.message {
        Message::Restore(_) => Stage::Restore,
        _ => Stage::RestoreHydration,
    };
    let now = Timestamp::now();
    let mut record: JobRecord = stowage_control::job_records::new_record(envelope, stage, now);
    record.requested_by = requested_by;
    let id = &envelope.job_id;
    match create_job(store, &record)
        .await
        .with_context(|| format!("cannot write the job record of restore {id}"))?
    {
        CreateOutcome::Created(_) => {}
        CreateOutcome::AlreadyExists => bail!(
            "a job with id {id} already exists; `stowage restore status {id}` shows it — choose \
             another --restore-id"
        ),
    }
    if let Err(err) = submit(broker, names, envelope).await {
        let reason = format!("the job could not be submitted: {err}");
        let marked = update_known_job(store, &record, |r| {
            r.updated_at = Timestamp::now();
            let run = r.stage_mut(stage);
            run.status = JobStatus::Failed;
            run.finished_at = Some(Timestamp::now());
            run.error = Some(reason.clone());
        })
        .await;
        if let Err(e) = marked {
            tracing::warn!(error = %e, "could not mark the unsubmitted restore failed");
        }
        return Err(err).with_context(|| {
            format!(
                "cannot submit restore {id} to {}; nothing was started",
                broker.endpoint()
            )
        });
    }
    Ok(())
}

async fn cleanup(vault: &VaultArgs, keep: &str, format: Format) -> anyhow::Result<()> {
    let keep: jiff::SignedDuration = keep.parse().with_context(|| {
        format!("--keep-failed-for {keep:?} is not a duration; write e.g. 72h, 30m or 1h30m")
    })?;
    let keep = Duration::try_from(keep)
        .map_err(|_| anyhow::anyhow!("--keep-failed-for must not be negative"))?;
    let (primary, secondary) = crate::rp_cmd::stores(vault).await?;
    let Some(root) = &vault.disk_root else {
        bail!(
            "--disk-root is missing: staging disks are deleted through the disk provider rooted there"
        );
    };
    let disks = stowage_disk::LocalDiskProvider::open(root)
        .with_context(|| format!("cannot open the disk root {}", root.display()))?;
    let now = Timestamp::now();
    let mut swept = stowage_stages::staging::sweep(&primary, &disks, now, keep).await?;
    if let Some(secondary) = &secondary {
        swept.extend(stowage_stages::staging::sweep(secondary, &disks, now, keep).await?);
    }
    let rows: Vec<Vec<String>> = swept
        .iter()
        .map(|s| {
            vec![
                s.restore_id.clone(),
                format!("{:?}", s.state).to_lowercase(),
                s.started_at.map_or_else(|| "-".into(), |t| t.to_string()),
                if s.removed { "removed" } else { "kept" }.into(),
                s.disks_deleted.to_string(),
                s.objects_deleted.to_string(),
            ]
        })
        .collect();
    output::print(
        format,
        &["RESTORE", "STATE", "STARTED", "ACTION", "DISKS", "OBJECTS"],
        &rows,
        &swept,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_are_checked() {
        let ok = parse_mapping(&["shop=shop-copy".into(), "blog = blog-copy".into()]).unwrap();
        assert_eq!(ok["blog"], "blog-copy");
        let err = |pairs: &[&str]| {
            parse_mapping(&pairs.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap_err()
                .to_string()
        };
        assert!(err(&["shop"]).contains("is not SOURCE=TARGET"));
        assert!(err(&["Shop=x"]).contains("is not a namespace name"));
        assert!(err(&["a=x", "b=x"]).contains("two namespaces to x"));
        assert!(err(&["a=x", "a=y"]).contains("maps a twice"));
    }
}
