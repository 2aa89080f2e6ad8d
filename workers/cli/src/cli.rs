//! The command line, as clap types. Every option also reads a `STOWAGE_`-prefixed variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use stowage_schemas::Stage;

/// Stowage backs up Kubernetes clusters — resources and volume data — and restores them.
#[derive(Debug, Parser)]
#[command(name = "stowage", version, propagate_version = true)]
pub struct Cli {
    /// More log output (-v debug, -vv trace). STOWAGE_LOG takes a full filter instead.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log format: auto (JSON inside a Kubernetes pod, text elsewhere), json or text.
    #[arg(
        long,
        global = true,
        env = "STOWAGE_LOG_FORMAT",
        default_value = "auto"
    )]
    pub log_format: stowage_runtime::telemetry::LogFormat,
    /// Export traces over OTLP/HTTP to this collector base URL (e.g. http://otel-collector:4318).
    /// Off when unset. OTEL_EXPORTER_OTLP_ENDPOINT is read too.
    #[arg(long, global = true, env = "STOWAGE_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// `--server` and its token: some commands call `stowage serve`'s API instead.
    #[command(flatten)]
    pub server: crate::serve::client::ServerArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run stage workers until SIGTERM or Ctrl-C.
    Worker(WorkerArgs),
    /// Validate a job from a YAML or JSON file and submit it; prints the job id.
    Submit(SubmitArgs),
    /// Inspect and replay dead-lettered messages.
    Dlq(DlqArgs),
    /// The broker topology.
    Topology(TopologyArgs),
    /// Run the pipeline on embedded defaults: no services needed.
    Demo(DemoArgs),
    /// Recovery points.
    Rp(RpArgs),
    /// Serve a sandbox Kubernetes API with the sample application, until Ctrl-C.
    Sandbox(SandboxArgs),
    /// Job records: list, show, watch and cancel jobs.
    Jobs(crate::jobs_cmd::JobsArgs),
    /// Restores: create one, follow its status, clean up staging.
    Restore(crate::restore_cmd::RestoreArgs),
    /// Check what a backup needs before the first one runs; exits 1 when a check fails.
    Preflight(PreflightArgs),
    /// The vault's settings: init, show.
    Vault(crate::catalog_cmd::VaultCmdArgs),
    /// Backup policies: create, list, show.
    Policy(crate::catalog_cmd::PolicyArgs),
    /// Backup instances: create, list, show.
    Instance(crate::catalog_cmd::InstanceArgs),
    /// On-demand backups.
    Backup(crate::catalog_cmd::BackupArgs),
    /// Restore drills: restore a tier's latest recovery point into an isolated target, verify
    /// it, measure the recovery time, clean up; list and show past drills.
    Drill(crate::drill_cmd::DrillArgs),
    /// Trigger every instance's scheduled backups, until SIGTERM or Ctrl-C.
    Scheduler(crate::scheduler_cmd::SchedulerArgs),
    /// The scheduler, every stage (in-process broker) and the HTTP API in one process, for
    /// small clusters and trying Stowage out; with --amqp-url the scheduler and API of a
    /// RabbitMQ fleet. Until SIGTERM or Ctrl-C.
    Serve(crate::serve::ServeArgs),
}

/// Which Kubernetes cluster the snapshot and restore stages use, and the credentials: kube's
/// standard inference, as kubectl does it (see `kube_config`).
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Kubeconfig file (default: the KUBECONFIG variable, then ~/.kube/config, then the
    /// service account of the pod the command runs in). `stowage sandbox` writes one per
    /// identity.
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current-context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The name of this cluster, as instances (`instance create --cluster`) and restores
    /// (`--target-cluster`) give it. A worker running snapshot or restore must name it: those
    /// stages take only this cluster's jobs (its queues `stowage.<stage>@<name>`) and refuse
    /// instances of other clusters. No default: a worker never guesses which cluster it is in.
    #[arg(long, global = true, env = "STOWAGE_CLUSTER_NAME", value_parser = crate::cli::id_arg)]
    pub cluster_name: Option<String>,
}

/// `stowage sandbox`.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub addr: SocketAddr,
    /// Start empty instead of with the sample application.
    #[arg(long)]
    pub empty: bool,
    /// Folder the kubeconfigs are written to: one per identity (`admin.kubeconfig`,
    /// `stowage-snapshot.kubeconfig`, …) and `sandbox.kubeconfig` with every context.
    #[arg(long, value_name = "DIR", default_value = "sandbox-kubeconfigs")]
    pub kubeconfig_dir: PathBuf,
    /// Root folder of the local disk provider: the sample application's disks (`shop-data`,
    /// `blog-data`) are created there, for workers given the same --disk-root, and the sandbox's
    /// CSI snapshot controller takes VolumeSnapshots of them (for `--disk-provider csi`).
    #[arg(long, env = "STOWAGE_DISK_ROOT", value_name = "DIR")]
    pub disk_root: Option<PathBuf>,
}

/// Where the broker is.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// RabbitMQ URL.
    #[arg(
        long,
        global = true,
        env = "STOWAGE_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: stowage_runtime::AmqpUrl,
    /// Name prefix of every exchange and queue (change it to run several fleets on one broker).
    #[arg(long, global = true, env = "STOWAGE_TOPOLOGY_PREFIX", default_value = stowage_runtime::topology::DEFAULT_PREFIX)]
    pub prefix: String,
}

/// `stowage worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The stage to run, several separated by commas (`snapshot,restore`), or `all`.
    #[arg(long, env = "STOWAGE_STAGE", value_delimiter = ',', required = true)]
    pub stage: Vec<StageChoice>,
    /// Broker settings.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Vault settings (for every stage but retention).
    #[command(flatten)]
    pub vault: VaultArgs,
    /// The cluster the snapshot and restore stages work on.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Address of the /livez, /readyz and /metrics endpoints (unauthenticated): loopback
    /// (127.0.0.1:8080) by default, all interfaces (0.0.0.0:8080) inside Kubernetes
    /// (KUBERNETES_SERVICE_HOST set).
    #[arg(long, env = "STOWAGE_HEALTH_ADDR", default_value_t = default_health_addr())]
    pub health_addr: SocketAddr,
    /// Deliveries the broker may hand this worker ahead of time, per stage.
    #[arg(long, env = "STOWAGE_PREFETCH", default_value_t = 8)]
    pub prefetch: u16,
    /// Jobs run at once, per stage.
    #[arg(long, env = "STOWAGE_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// Attempts per job before it is dead-lettered (transient failures only).
    #[arg(long, env = "STOWAGE_MAX_ATTEMPTS", default_value_t = 6)]
    pub max_attempts: u32,
    /// Times a job's handling may start and die with its worker (killed, crashed) before the
    /// job is dead-lettered as poison; 0 never does. Deaths of workers that merely held it
    /// (prefetched) do not count, nor do graceful shutdowns.
    #[arg(long, env = "STOWAGE_POISON_LIMIT", default_value_t = stowage_control::job_records::POISON_LIMIT)]
    pub poison_limit: u32,
    /// Seconds to wait for in-flight jobs on shutdown before handing them back.
    #[arg(long, env = "STOWAGE_SHUTDOWN_DEADLINE", default_value_t = 30)]
    pub shutdown_deadline: u64,
    /// Seconds between reads of the queue depths reported at /metrics.
    #[arg(long, env = "STOWAGE_QUEUE_POLL_SECS", default_value_t = 15)]
    pub queue_poll_secs: u64,
    /// Seconds between reads of a running job's record, looking for a cancellation request.
    #[arg(long, env = "STOWAGE_JOB_POLL_INTERVAL", default_value_t = 3.0)]
    pub job_poll_interval: f64,
}

/// A stage, or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageChoice {
    /// One stage.
    One(Stage),
    /// Every stage.
    All,
}

impl std::str::FromStr for StageChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "all" {
            return Ok(StageChoice::All);
        }
        s.parse::<Stage>()
            .map(StageChoice::One)
            .map_err(|e| format!("{e}, or all"))
    }
}

/// Where the vault is, and what the vault stages need besides.
#[derive(Debug, Clone, Args)]
pub struct VaultArgs {
    /// The vault's storage: a folder, azurite://<container> or azure://<account>/<container>
    /// (with STOWAGE_AZURE_ACCESS_KEY).
    #[arg(long, global = true, env = "STOWAGE_VAULT")]
    pub vault: Option<String>,
    /// Storage of the geo-redundant copy, in the paired region (same forms as --vault), as
    /// this process reaches it. Workers default to the secondary location vault.json records;
    /// its region always comes from vault.json.
    #[arg(long, global = true, env = "STOWAGE_SECONDARY")]
    pub secondary: Option<String>,
    /// File holding the vault key (64 hex digits). Alternatively STOWAGE_VAULT_KEY holds the key.
    #[arg(long, global = true, env = "STOWAGE_VAULT_KEY_FILE")]
    pub vault_key_file: Option<PathBuf>,
    /// Root folder of the local disk provider (driver disk.stowage.local). Required with
    /// `--disk-provider local`; with `csi`, the vault stages read snapshots of that driver
    /// through it, and without it every CSI volume stays in the operational tier only.
    #[arg(long, global = true, env = "STOWAGE_DISK_ROOT")]
    pub disk_root: Option<PathBuf>,
    /// How operational snapshots are taken: `local` snapshots disks of the local provider
    /// directly (needs --disk-root); `csi` takes a snapshot.storage.k8s.io/v1 VolumeSnapshot
    /// per PVC for every CSI driver with a VolumeSnapshotClass, restores through a PVC
    /// dataSource, and lets retention delete the VolumeSnapshots in the worker's cluster;
    /// `azure` snapshots `disk.csi.azure.com` volumes through ARM (incremental snapshots in
    /// --azure-snapshot-resource-group) and hydrates into --azure-staging-resource-group.
    #[arg(
        long,
        global = true,
        env = "STOWAGE_DISK_PROVIDER",
        value_enum,
        default_value = "local"
    )]
    pub disk_provider: DiskProviderChoice,
    /// Azure managed disks (`--disk-provider azure`).
    #[command(flatten)]
    pub azure: AzureArgs,
}

/// Where the Azure disk provider keeps snapshots and staging disks, and who it is
/// (`--disk-provider azure`; ARCHITECTURE.md, "Azure managed disks").
#[derive(Debug, Clone, Args)]
pub struct AzureArgs {
    /// Subscription holding the snapshot and staging resource groups.
    #[arg(long, global = true, env = "AZURE_SUBSCRIPTION_ID")]
    pub azure_subscription: Option<String>,
    /// Resource group the instance's incremental snapshots are kept in.
    #[arg(long, global = true, env = "STOWAGE_AZURE_SNAPSHOT_RESOURCE_GROUP")]
    pub azure_snapshot_resource_group: Option<String>,
    /// Resource group hydration creates staging disks in.
    #[arg(long, global = true, env = "STOWAGE_AZURE_STAGING_RESOURCE_GROUP")]
    pub azure_staging_resource_group: Option<String>,
    /// Region of both groups (staging disks are created there; preflight compares it).
    #[arg(long, global = true, env = "STOWAGE_AZURE_REGION")]
    pub azure_region: Option<String>,
    /// Resource group of the source disks (an AKS cluster's node resource group,
    /// MC_<group>_<cluster>_<region>), whose permissions preflight checks when given.
    #[arg(long, global = true, env = "STOWAGE_AZURE_SOURCE_RESOURCE_GROUP")]
    pub azure_source_resource_group: Option<String>,
    /// Which Azure identity to use: `auto` picks workload identity (AKS), a client secret
    /// (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET), managed identity, or the Azure
    /// CLI's login, in that order, from the environment.
    #[arg(
        long,
        global = true,
        env = "STOWAGE_AZURE_CREDENTIAL",
        value_enum,
        default_value = "auto"
    )]
    pub azure_credential: AzureCredentialChoice,
    /// ARM's endpoint (default https://management.azure.com): https for another cloud, or
    /// plain http to a loopback test server only.
    #[arg(long, global = true, env = "STOWAGE_AZURE_ARM_ENDPOINT")]
    pub azure_arm_endpoint: Option<String>,
    /// SKU of staging disks (ARM's default when unset).
    #[arg(long, global = true, env = "STOWAGE_AZURE_STAGING_SKU")]
    pub azure_staging_sku: Option<String>,
}

/// `--azure-credential`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AzureCredentialChoice {
    /// From the environment, in the standard order.
    #[default]
    Auto,
    /// Workload identity federation (AKS).
    WorkloadIdentity,
    /// The pod's or VM's managed identity.
    ManagedIdentity,
    /// A service principal's client secret.
    ClientSecret,
    /// The Azure CLI's login, for a developer.
    AzureCli,
}

impl AzureArgs {
    /// The settings as stowage-azure takes them.
    pub fn config(&self) -> stowage_azure::AzureConfig {
        use stowage_azure::CredentialKind as K;
        stowage_azure::AzureConfig {
            subscription: self.azure_subscription.clone(),
            snapshot_group: self.azure_snapshot_resource_group.clone(),
            staging_group: self.azure_staging_resource_group.clone(),
            region: self.azure_region.clone(),
            source_group: self.azure_source_resource_group.clone(),
            credential: match self.azure_credential {
                AzureCredentialChoice::Auto => K::Auto,
                AzureCredentialChoice::WorkloadIdentity => K::WorkloadIdentity,
                AzureCredentialChoice::ManagedIdentity => K::ManagedIdentity,
                AzureCredentialChoice::ClientSecret => K::ClientSecret,
                AzureCredentialChoice::AzureCli => K::AzureCli,
            },
            arm_endpoint: self.azure_arm_endpoint.clone(),
            staging_sku: self.azure_staging_sku.clone(),
        }
    }
}

/// `--disk-provider`: how operational snapshots are taken (ARCHITECTURE.md, "CSI
/// VolumeSnapshots").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DiskProviderChoice {
    /// The local disk provider snapshots its own disks (driver disk.stowage.local).
    #[default]
    Local,
    /// CSI VolumeSnapshots through the Kubernetes API, for any CSI driver with a class.
    Csi,
    /// Azure managed disks (driver disk.csi.azure.com) through ARM: incremental snapshots,
    /// page-range diffs for the vault tier, upload disks for hydration.
    Azure,
}

/// A noun whose actions work on a vault: `stowage <noun> <action> --vault …`.
#[derive(Debug, Args)]
pub struct OnVault<A: Subcommand> {
    /// What to do.
    #[command(subcommand)]
    pub action: A,
    /// Where the vault is.
    #[command(flatten)]
    pub vault: VaultArgs,
}

/// A noun whose actions work on a vault and submit jobs to the broker.
#[derive(Debug, Args)]
pub struct OnVaultAndBroker<A: Subcommand> {
    /// What to do.
    #[command(subcommand)]
    pub action: A,
    /// Where the vault is.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Broker settings.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// `stowage rp`.
pub type RpArgs = OnVault<RpAction>;

/// Recovery-point actions.
#[derive(Debug, Subcommand)]
pub enum RpAction {
    /// List an instance's recovery points, newest first, with the state of each tier.
    List {
        /// The backup instance.
        #[arg(value_parser = crate::cli::id_arg)]
        instance: String,
        #[command(flatten)]
        output: TableOutput,
    },
    /// Describe one recovery point: manifest, tiers (with their manifests), volumes.
    Describe {
        /// The backup instance.
        #[arg(value_parser = crate::cli::id_arg)]
        instance: String,
        /// The recovery point id.
        #[arg(value_parser = crate::cli::id_arg)]
        rp: String,
        #[command(flatten)]
        output: TableOutput,
    },
    /// Delete a recovery point: soft delete, undeletable for the vault's undelete window
    /// (refused while the vault's lock holds it).
    Delete {
        /// The backup instance.
        #[arg(value_parser = crate::cli::id_arg)]
        instance: String,
        /// The recovery point id.
        #[arg(value_parser = crate::cli::id_arg)]
        rp: String,
    },
    /// Bring a deleted recovery point back, within its undelete window.
    Undelete {
        /// The backup instance.
        #[arg(value_parser = crate::cli::id_arg)]
        instance: String,
        /// The recovery point id.
        #[arg(value_parser = crate::cli::id_arg)]
        rp: String,
    },
    /// Re-read every chunk of a recovery point and report its integrity.
    Verify {
        /// The recovery point id.
        #[arg(value_parser = crate::cli::id_arg)]
        rp: String,
        /// Its backup instance (found in the catalog when omitted).
        #[arg(long, value_parser = crate::cli::id_arg)]
        instance: Option<String>,
        /// Which copy to check.
        #[arg(long, value_enum, default_value_t = TierChoice::Vault)]
        tier: TierChoice,
        #[command(flatten)]
        output: TableOutput,
    },
}

/// A data tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TierChoice {
    /// The vault tier, in the vault's own storage.
    Vault,
    /// The geo-redundant copy.
    Secondary,
}

/// `stowage submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// A job file: `type: job.<stage>`, `payload: {...}`, optionally `job_id`. `-` reads stdin.
    pub file: PathBuf,
    /// Broker settings.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// `stowage dlq`.
#[derive(Debug, Args)]
pub struct DlqArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: DlqAction,
    /// Broker settings.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// Dead-letter actions.
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List a stage's dead letters, oldest first.
    List {
        /// The stage.
        stage: Stage,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        output: TableOutput,
    },
    /// Show one dead letter in full: reason, error chain, headers and decoded job.
    Show {
        /// The stage.
        stage: Stage,
        /// The message id (from `dlq list`).
        message_id: String,
        #[command(flatten)]
        output: YamlOutput,
    },
    /// Send dead letters back to their stage with the attempt count reset.
    Replay {
        /// The stage.
        stage: Stage,
        /// Replay only this message (default: all of the stage's dead letters).
        #[arg(long)]
        message_id: Option<String>,
    },
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable table.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// `-o`, the output format, declared once for every command that prints a result. `YAML` picks
/// the default: YAML ([`YamlOutput`]) or a table ([`TableOutput`]).
#[derive(Debug, Clone, Copy, Args)]
pub struct OutputArgs<const YAML: bool> {
    /// Output format.
    // A literal, not `default_value_t`: the derive keeps a `_t` default's text in a static,
    // which both instances of this generic struct would share.
    #[arg(short, long, value_enum, default_value = if YAML { "yaml" } else { "table" })]
    pub output: Format,
}

/// `-o`, a table unless asked otherwise.
pub type TableOutput = OutputArgs<false>;

/// `-o`, YAML unless asked otherwise (commands that show one document).
pub type YamlOutput = OutputArgs<true>;

/// `stowage topology`.
#[derive(Debug, Args)]
pub struct TopologyArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: TopologyAction,
}

/// Topology actions.
#[derive(Debug, Subcommand)]
pub enum TopologyAction {
    /// Print the RabbitMQ definitions file (for `rabbitmqctl import_definitions`).
    Export {
        /// Name prefix.
        #[arg(long, env = "STOWAGE_TOPOLOGY_PREFIX", default_value = stowage_runtime::topology::DEFAULT_PREFIX)]
        prefix: String,
    },
    /// Declare the topology on a broker (idempotent; workers also do it at start).
    Declare {
        /// Broker settings.
        #[command(flatten)]
        broker: BrokerArgs,
    },
}

/// `stowage demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Use this RabbitMQ instead of the in-process broker.
    #[arg(long, env = "STOWAGE_DEMO_AMQP_URL")]
    pub amqp_url: Option<stowage_runtime::AmqpUrl>,
    /// Keep the vault in this blob storage instead of local folders (e.g. azurite://demo; the
    /// secondary goes to the same name with -secondary).
    #[arg(long, env = "STOWAGE_DEMO_BLOB_URL")]
    pub blob_url: Option<String>,
    /// Folder for disks, key and local vault (default: a new folder under the temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `stowage preflight`: the same vault, broker, cluster and disk flags as `stowage worker`.
#[derive(Debug, Args)]
pub struct PreflightArgs {
    /// Broker settings.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Do not check a broker (e.g. when only the vault and cluster are set up yet).
    #[arg(long)]
    pub no_broker: bool,
    /// Vault settings (the vault key is not needed).
    #[command(flatten)]
    pub vault: VaultArgs,
    /// The vault's region (default: the region in the vault's vault.json, if it has one).
    #[arg(long, env = "STOWAGE_VAULT_REGION")]
    pub vault_region: Option<String>,
    /// The cluster to back up.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Namespace of the fleet's service accounts, whose permissions are reviewed.
    #[arg(long, env = "STOWAGE_FLEET_NAMESPACE", default_value = stowage_control::preflight::DEFAULT_FLEET_NAMESPACE)]
    pub fleet_namespace: String,
    /// Seconds each check may take before it fails.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// Output format.
    #[command(flatten)]
    pub output: TableOutput,
}

/// The default `--health-addr`: `127.0.0.1:8080` outside Kubernetes, so that the
/// unauthenticated health and metrics endpoints are not on every interface of a laptop or VM;
/// `0.0.0.0:8080` in a pod (`KUBERNETES_SERVICE_HOST` is set), where the kubelet probes the pod
/// IP. The manifests in `infra/k8s` set it explicitly either way.
pub fn default_health_addr() -> SocketAddr {
    health_addr_for(std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty()))
}

/// The default health address in (`true`) or outside Kubernetes.
pub fn health_addr_for(in_kubernetes: bool) -> SocketAddr {
    let ip = if in_kubernetes {
        std::net::Ipv4Addr::UNSPECIFIED
    } else {
        std::net::Ipv4Addr::LOCALHOST
    };
    SocketAddr::from((ip, 8080))
}

/// Parses a command-line id (instance, recovery point, job, restore or cluster name) by the id
/// rule of `stowage_schemas::id`, so a bad one is refused naming the flag and the rule.
pub fn id_arg(value: &str) -> Result<String, String> {
    stowage_schemas::id::validate(value)
        .map(|()| value.to_owned())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn each_command_keeps_its_own_output_default() {
        let output = |args: &[&str]| match Cli::try_parse_from(args).expect("parses").command {
            Command::Dlq(DlqArgs {
                action: DlqAction::Show { output, .. },
                ..
            }) => output.output,
            Command::Dlq(DlqArgs {
                action: DlqAction::List { output, .. },
                ..
            }) => output.output,
            other => panic!("not a dlq list/show: {other:?}"),
        };
        assert_eq!(
            output(&["stowage", "dlq", "show", "snapshot", "m-1"]),
            Format::Yaml
        );
        assert_eq!(
            output(&["stowage", "dlq", "list", "snapshot"]),
            Format::Table
        );
        assert_eq!(
            output(&["stowage", "dlq", "show", "snapshot", "m-1", "-o", "json"]),
            Format::Json
        );
    }
}
