//! `stowage vault init|show|lock`, `stowage policy create|list|show`,
//! `stowage instance create|list|show` and `stowage backup now`: the vault's catalog from the
//! command line, validated by [`stowage_vault::catalog::settings`] before anything is written.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use futures::TryStreamExt as _;
use jiff::Timestamp;
use jiff::civil::Time;
use serde::de::DeserializeOwned;
use stowage_control::scheduler::{Slots, backup_now};
use stowage_runtime::{Broker, Names, RabbitBroker};
use stowage_schemas::domain::{
    BackupInstance, CalendarPeriod, Immutability, Namespaces, Policy, Redundancy, Retention,
    Schedule, Scope, Vault, VaultRule,
};
use stowage_vault::catalog::lock::Lock;
use stowage_vault::catalog::settings::{self, WriteMode, Written};
use stowage_vault::store::BlobStore;

use crate::cli::{OnVault, OnVaultAndBroker, OutputArgs, TableOutput, VaultArgs, YamlOutput};
use crate::output;
use crate::vault_config::open_store;

/// `stowage vault`: where the vault is (`--vault`), and its geo secondary (`--secondary`).
pub type VaultCmdArgs = OnVault<VaultAction>;

/// Vault actions.
#[derive(Debug, Subcommand)]
pub enum VaultAction {
    /// Write the vault settings (vault.json) into the storage --vault names.
    Init(VaultInitArgs),
    /// Show the vault settings.
    Show {
        #[command(flatten)]
        output: YamlOutput,
    },
    /// Lock the vault for good: no recovery point is deleted before its minimum retention,
    /// by anything, and the lock can never be undone.
    Lock(VaultLockArgs),
    /// Bring in a new key-encryption key: re-wrap the vault's data key under it (no data is
    /// re-encrypted), update vault.json's key id, copy the keyring to the geo secondary. The
    /// current key comes from STOWAGE_VAULT_KEY or --vault-key-file; afterwards it is refused.
    RotateKey(RotateKeyArgs),
}

/// `stowage vault rotate-key`.
#[derive(Debug, Args)]
pub struct RotateKeyArgs {
    /// File holding the new key (64 hex digits, e.g. from `openssl rand -hex 32`).
    #[arg(long)]
    pub new_key_file: PathBuf,
}

/// `stowage vault lock`.
#[derive(Debug, Args)]
pub struct VaultLockArgs {
    /// Days every recovery point is kept, whatever its policy says (1-36500; default: the
    /// vault's current minimum retention, if it has one). Can only grow once locked.
    #[arg(long)]
    pub minimum_retention_days: Option<u32>,
    /// Confirm: the lock is final.
    #[arg(long)]
    pub yes: bool,
}

/// `stowage vault init`.
#[derive(Debug, Args)]
pub struct VaultInitArgs {
    /// Read the settings from this YAML or JSON file (`-` for stdin) instead of flags.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Vault name (instances name it).
    #[arg(long)]
    pub name: Option<String>,
    /// Region of the vault's storage (e.g. westeurope).
    #[arg(long, default_value = "local")]
    pub region: String,
    /// Storage location recorded in the settings (default: the --vault value).
    #[arg(long)]
    pub location: Option<String>,
    /// Id of the operator's key (its fingerprint, as `vault show` prints it): optional, and
    /// refused when it is not the id of the key given (STOWAGE_VAULT_KEY or --vault-key-file).
    #[arg(long)]
    pub key_id: Option<String>,
    /// `local`, or `geo` to copy the vault tier to --secondary in --secondary-region
    /// (default: geo when --secondary is given, local otherwise).
    #[arg(long, value_enum)]
    pub redundancy: Option<RedundancyChoice>,
    /// Region of a geo vault's secondary (e.g. northeurope): what workers report.
    #[arg(long)]
    pub secondary_region: Option<String>,
    /// The vault lock: `enabled` or `locked` keep every recovery point for
    /// --minimum-retention-days whatever deletes it (`locked` is final).
    #[arg(long, value_enum, default_value_t = ImmutabilityChoice::Disabled)]
    pub immutability: ImmutabilityChoice,
    /// Days the lock keeps every recovery point (1-36500; needed with --immutability enabled
    /// or locked).
    #[arg(long, default_value_t = 0)]
    pub minimum_retention_days: u32,
    /// Days a deleted recovery point can be undeleted before it is purged (14-180).
    #[arg(long, default_value_t = stowage_schemas::domain::DEFAULT_SOFT_DELETE_DAYS)]
    pub soft_delete_days: u16,
    /// Replace existing settings (validated against them) instead of refusing.
    #[arg(long)]
    pub update: bool,
}

/// Vault redundancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RedundancyChoice {
    /// One copy.
    Local,
    /// A copy in the paired region.
    Geo,
}

/// Vault immutability: its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImmutabilityChoice {
    /// No lock.
    Disabled,
    /// Nothing is deleted before its minimum retention; can be relaxed or turned off.
    Enabled,
    /// Like enabled, and final: never turned off, its minimum retention never shrinks.
    Locked,
}

/// `stowage policy`.
pub type PolicyArgs = OnVault<PolicyAction>;

/// The flags of `create` for one kind of catalog document, and how its help names it.
pub trait CatalogNoun: Args {
    /// Help of `create`.
    const CREATE: &'static str;
    /// Help of `list`.
    const LIST: &'static str;
    /// Help of `show`.
    const SHOW: &'static str;
    /// Help of `show`'s name.
    const NAME: &'static str;
}

/// What `stowage policy` and `stowage instance` do; `C` holds the flags of `create`.
#[derive(Debug, Subcommand)]
pub enum CatalogAction<C: CatalogNoun> {
    #[command(about = C::CREATE)]
    Create(C),
    #[command(about = C::LIST)]
    List {
        #[command(flatten)]
        output: TableOutput,
    },
    #[command(about = C::SHOW)]
    Show {
        #[arg(help = C::NAME)]
        name: String,
        #[command(flatten)]
        output: YamlOutput,
    },
}

impl CatalogNoun for PolicyCreateArgs {
    const CREATE: &'static str = "Create a policy (or replace one with --update)";
    const LIST: &'static str = "List the vault's policies";
    const SHOW: &'static str = "Show one policy";
    const NAME: &'static str = "Policy name";
}

impl CatalogNoun for InstanceCreateArgs {
    const CREATE: &'static str = "Create a backup instance (or replace one with --update)";
    const LIST: &'static str = "List the vault's backup instances";
    const SHOW: &'static str = "Show one backup instance";
    const NAME: &'static str = "Instance name";
}

/// Policy actions.
pub type PolicyAction = CatalogAction<PolicyCreateArgs>;

/// The name and the file of what `create` writes.
#[derive(Debug, Args)]
pub struct Document {
    /// Name (may come from the file instead).
    pub name: Option<String>,
    /// Read it from this YAML or JSON file (`-` for stdin) instead of flags.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
}

/// `stowage policy create`.
#[derive(Debug, Args)]
pub struct PolicyCreateArgs {
    /// The policy's name, and the file it may come from.
    #[command(flatten)]
    pub document: Document,
    /// Hours between backups: 4, 6, 8, 12 or 24.
    #[arg(long, default_value_t = 24)]
    pub frequency_hours: u8,
    /// Local time of the first backup of each day, HH:MM.
    #[arg(long, default_value = "02:00")]
    pub start: String,
    /// IANA time zone of the start time.
    #[arg(long, default_value = "UTC")]
    pub time_zone: String,
    /// Days every recovery point stays in the operational tier (1-360).
    #[arg(long, default_value_t = 7)]
    pub operational_days: u16,
    /// A vault-tier rule `PERIOD=DAYS`: keep the first backup of each day/week/month/year for
    /// DAYS (repeatable, e.g. --vault-rule day=30 --vault-rule year=3650).
    #[arg(long = "vault-rule", value_name = "PERIOD=DAYS")]
    pub vault_rules: Vec<String>,
    /// Replace an existing policy instead of refusing.
    #[arg(long)]
    pub update: bool,
}

/// `stowage instance`.
#[derive(Debug, Args)]
pub struct InstanceArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: InstanceAction,
    /// Where the vault is.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// The cluster the fast preflight checks of `instance create` read (skipped when no
    /// credentials are found).
    #[command(flatten)]
    pub cluster: crate::cli::ClusterArgs,
}

/// Backup-instance actions.
pub type InstanceAction = CatalogAction<InstanceCreateArgs>;

/// `stowage instance create`.
#[derive(Debug, Args)]
pub struct InstanceCreateArgs {
    /// The instance's name, and the file it may come from.
    #[command(flatten)]
    pub document: Document,
    /// The cluster to back up (the name workers know it by).
    #[arg(long)]
    pub cluster: Option<String>,
    /// The policy that schedules and retains the backups.
    #[arg(long)]
    pub policy: Option<String>,
    /// Where the disk provider keeps operational snapshots; cannot change later.
    #[arg(long)]
    pub snapshot_location: Option<String>,
    /// Namespaces to include, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Namespaces to leave out, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub exclude_namespaces: Vec<String>,
    /// A label selector; a resource is included when it matches any (repeatable).
    #[arg(long = "selector")]
    pub selectors: Vec<String>,
    /// Leave out cluster-scoped resources.
    #[arg(long)]
    pub no_cluster_scoped: bool,
    /// Leave out secrets.
    #[arg(long)]
    pub no_secrets: bool,
    /// Leave out volume data.
    #[arg(long)]
    pub no_volumes: bool,
    /// Replace an existing instance instead of refusing.
    #[arg(long)]
    pub update: bool,
}

/// `stowage backup`.
pub type BackupArgs = OnVaultAndBroker<BackupAction>;

/// Backup actions.
#[derive(Debug, Subcommand)]
pub enum BackupAction {
    /// Back an instance up now, outside its schedule; prints the job id.
    Now {
        /// The backup instance.
        #[arg(value_parser = crate::cli::id_arg)]
        instance: String,
    },
}

/// Opens the store `--vault` names.
pub fn vault_store(args: &VaultArgs) -> anyhow::Result<BlobStore> {
    let Some(location) = &args.vault else {
        bail!(
            "--vault is missing: pass the vault's storage (a folder, azurite://<container> or \
             azure://<account>/<container>) or set STOWAGE_VAULT"
        );
    };
    open_store(location)
}

fn read_file<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    // YAML is a superset of JSON, so one parser reads both.
    serde_yaml::from_str(&text).with_context(|| {
        format!(
            "{} is not a valid document: fix the field named above (`-o yaml` on a show \
             command prints a valid example)",
            path.display()
        )
    })
}

/// A policy or instance from `-f <file>`, renamed to `name` when one is given too.
fn read_named<T: DeserializeOwned>(
    path: &Path,
    name: Option<&String>,
    name_of: fn(&mut T) -> &mut String,
) -> anyhow::Result<T> {
    let mut document = read_file::<T>(path)?;
    if let Some(name) = name {
        name_of(&mut document).clone_from(name);
    }
    Ok(document)
}

fn report(what: &str, name: &str, written: Written) {
    match written {
        Written::Created => println!("{what} {name} created"),
        Written::Updated => println!("{what} {name} updated"),
        Written::Unchanged => println!("{what} {name} unchanged"),
    }
}

fn mode(update: bool) -> WriteMode {
    if update {
        WriteMode::CreateOrUpdate
    } else {
        WriteMode::Create
    }
}

/// `stowage vault ...`.
pub async fn vault(args: VaultCmdArgs) -> anyhow::Result<()> {
    let store = vault_store(&args.vault)?;
    match args.action {
        VaultAction::Init(init) => {
            let vault = match &init.file {
                Some(path) => read_file::<Vault>(path)?,
                None => {
                    let Some(name) = init.name.clone() else {
                        bail!(
                            "--name is missing: name the vault (e.g. --name main), or give -f <file>"
                        );
                    };
                    let choice = match (init.redundancy, &args.vault.secondary) {
                        (Some(RedundancyChoice::Local), Some(secondary)) => bail!(
                            "--redundancy local with --secondary {secondary}: a locally \
                             redundant vault has no secondary; drop --secondary, or use \
                             --redundancy geo"
                        ),
                        (Some(choice), _) => choice,
                        (None, Some(_)) => RedundancyChoice::Geo,
                        (None, None) => RedundancyChoice::Local,
                    };
                    let redundancy = match choice {
                        RedundancyChoice::Local => Redundancy::Local,
                        RedundancyChoice::Geo => Redundancy::Geo {
                            secondary_location: args.vault.secondary.clone().unwrap_or_default(),
                            secondary_region: init.secondary_region.clone().unwrap_or_default(),
                        },
                    };
                    Vault {
                        name,
                        region: init.region.clone(),
                        location: init
                            .location
                            .clone()
                            .or_else(|| args.vault.vault.clone())
                            .unwrap_or_default(),
                        redundancy,
                        key_id: init.key_id.clone().unwrap_or_default(),
                        immutability: match init.immutability {
                            ImmutabilityChoice::Disabled => Immutability::Disabled,
                            ImmutabilityChoice::Enabled => Immutability::Enabled,
                            ImmutabilityChoice::Locked => Immutability::Locked,
                        },
                        minimum_retention_days: init.minimum_retention_days,
                        soft_delete_days: init.soft_delete_days,
                    }
                }
            };
            // A vault needs storage of its own: retention and verification walk all of it.
            let where_ = args.vault.vault.as_deref().unwrap_or_default();
            let foreign: Vec<String> = store
                .list_top_level()
                .await
                .with_context(|| format!("cannot list the vault storage {where_}"))?
                .into_iter()
                .filter(|name| !stowage_vault::layout::is_vault_top_level(name))
                .collect();
            if !foreign.is_empty() {
                bail!(
                    "the vault storage {where_} holds data that is not Stowage's ({}); give the \
                     vault an empty container or folder of its own",
                    foreign.join(", ")
                );
            }
            let vault = init_keyring(&store, &args.vault, vault, init.file.is_some()).await?;
            let written = settings::write_vault(&store, &vault, mode(init.update)).await?;
            report("vault", &vault.name, written);
            Ok(())
        }
        VaultAction::Show {
            output: OutputArgs { output },
        } => {
            let vault = settings::read_vault(&store).await?;
            let (redundancy, secondary) = match &vault.redundancy {
                Redundancy::Local => ("local".to_owned(), String::new()),
                Redundancy::Geo {
                    secondary_location,
                    secondary_region,
                } => (
                    "geo".to_owned(),
                    format!("{secondary_location} ({secondary_region})"),
                ),
            };
            let lock = Lock::of(&vault);
            let row = vec![
                vault.name.clone(),
                vault.region.clone(),
                vault.location.clone(),
                redundancy,
                secondary,
                vault.immutability.as_str().to_owned(),
                if lock.in_force() {
                    format!("{}d (enforced by stowage)", vault.minimum_retention_days)
                } else {
                    "-".into()
                },
                format!("{}d", vault.soft_delete_days),
            ];
            output::print(
                output,
                &[
                    "NAME",
                    "REGION",
                    "LOCATION",
                    "REDUNDANCY",
                    "SECONDARY",
                    "IMMUTABILITY",
                    "MINIMUM RETENTION",
                    "UNDELETE WINDOW",
                ],
                &[row],
                &vault,
            )
        }
        VaultAction::Lock(lock) => lock_vault(&store, &args.vault, &lock).await,
        VaultAction::RotateKey(rotate) => rotate_key(&store, &args.vault, &rotate).await,
    }
}

/// The key hierarchy of `vault init`: a new vault gets a keyring (a fresh data key wrapped
/// under the operator's key) before its settings, whose `key_id` is that key's id. A vault
/// that already has settings but no keyring (made before the key hierarchy) keeps working
/// with its operator key as its data key; `vault rotate-key` gives it a keyring.
async fn init_keyring(
    store: &BlobStore,
    at: &VaultArgs,
    mut vault: Vault,
    from_file: bool,
) -> anyhow::Result<Vault> {
    let Some(key) = crate::vault_config::configured_vault_key(at)? else {
        bail!(
            "vault init needs the operator's key, which wraps the vault's data key: generate one \
             (`openssl rand -hex 32 > vault.key`, keep it safe: without it nothing in the vault \
             can be read) and pass --vault-key-file vault.key or set STOWAGE_VAULT_KEY"
        );
    };
    let kek_id = key.key_id().to_string();
    let given_id = vault.key_id.trim().to_owned();
    if !given_id.is_empty() && given_id != kek_id {
        let origin = if from_file {
            "the file's key_id"
        } else {
            "--key-id"
        };
        bail!(
            "{origin} is {given_id:?}, but the key given has id {kek_id}: key_id is the id of the              operator's key, not a name of your choosing; drop it (vault init sets it) or set it              to {kek_id}"
        );
    }
    let existing = match settings::read_vault(store).await {
        Ok(existing) => Some(existing),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e.into()),
    };
    let has_keyring = stowage_vault::keyring::read(store).await?.is_some();
    if let (Some(existing), false) = (&existing, has_keyring) {
        // A vault from before the key hierarchy: its key id stays what it was.
        if given_id.is_empty() {
            vault.key_id = existing.key_id.clone();
        }
        eprintln!(
            "vault {} has no keyring (it was made before the key hierarchy): its key is used as              its data key; give it a keyring with `stowage vault rotate-key --new-key-file <file>`",
            existing.name
        );
        return Ok(vault);
    }
    // Settings that will be refused are refused before the keyring is made.
    vault.key_id = kek_id.clone();
    settings::validate_vault(&vault, existing.as_ref())?;
    let (keyring, outcome) = stowage_vault::keyring::init(store, &key).await?;
    if outcome == stowage_vault::keyring::Initialised::Created {
        eprintln!(
            "vault data key {} generated and wrapped under key-encryption key {kek_id} in {}",
            keyring.data_key_id()?,
            stowage_vault::layout::keyring()
        );
    }
    if let Some(secondary) = &at.secondary {
        match crate::vault_config::open_existing_store(secondary) {
            Ok(secondary_store) => {
                stowage_vault::keyring::replicate(&secondary_store, &keyring).await?;
            }
            Err(e) => eprintln!(
                "the keyring was not copied to the secondary {secondary} ({e:#});                  `stowage vault rotate-key` or the geo-replication stage copies it later"
            ),
        }
    }
    Ok(vault)
}

/// `stowage vault rotate-key`: re-wrap the data key under the new key-encryption key (see
/// `stowage_vault::keyring::rotate`), then copy the keyring to a geo vault's secondary.
async fn rotate_key(store: &BlobStore, at: &VaultArgs, args: &RotateKeyArgs) -> anyhow::Result<()> {
    let current = crate::vault_config::vault_key(at)
        .context("the current key is needed to unwrap the data key")?;
    let text = std::fs::read_to_string(&args.new_key_file).with_context(|| {
        format!(
            "cannot read the new key file {}",
            args.new_key_file.display()
        )
    })?;
    let new = stowage_vault::crypto::VaultKey::from_hex(text.trim()).with_context(|| {
        format!(
            "the new key file {} does not hold a key",
            args.new_key_file.display()
        )
    })?;
    let vault = settings::read_vault(store).await?;
    // The secondary is opened before anything is written, so a wrong path is found first.
    let secondary = match stowage_vault::keyring::secondary_location(&vault) {
        None => None,
        Some(recorded) => {
            let location = at.secondary.as_deref().unwrap_or(recorded);
            Some((
                location.to_owned(),
                crate::vault_config::open_existing_store(location),
            ))
        }
    };
    let rotated = stowage_vault::keyring::rotate(store, &current, &new).await?;
    if rotated.resumed {
        eprintln!(
            "the keyring was already wrapped under {} (an interrupted rotation): finishing it",
            rotated.new_kek_id
        );
    }
    if rotated.first_keyring {
        eprintln!(
            "vault {} had no keyring: its old key {} is now its data key, wrapped under the new key",
            vault.name, rotated.old_kek_id
        );
    }
    if let Some((location, opened)) = secondary {
        match opened {
            Ok(secondary) => {
                stowage_vault::keyring::replicate(&secondary, &rotated.keyring)
                    .await
                    .with_context(|| {
                        format!(
                            "the keyring was rotated on the primary and in vault.json, but not                              copied to the secondary {location}: rerun `stowage vault rotate-key`                              with the same arguments when it is reachable (until then the                              secondary's copy opens with the old key only)"
                        )
                    })?;
            }
            Err(e) => bail!(
                "the keyring was rotated on the primary and in vault.json, but the secondary                  {location} cannot be opened ({e:#}): rerun `stowage vault rotate-key` with the                  same arguments when it is reachable (until then the secondary's copy opens with                  the old key only)"
            ),
        }
    }
    println!(
        "vault {}: data key {} is now wrapped under key-encryption key {} (was {}); no data was          re-encrypted; use the new key everywhere (workers, CLI): the old one is refused",
        vault.name, rotated.data_key_id, rotated.new_kek_id, rotated.old_kek_id
    );
    Ok(())
}

/// `stowage vault lock`: immutability `locked` with a minimum retention, written by
/// compare-and-swap against the stored settings (so "only grows" holds against a concurrent
/// writer too).
async fn lock_vault(store: &BlobStore, at: &VaultArgs, args: &VaultLockArgs) -> anyhow::Result<()> {
    let mut vault = settings::read_vault(store).await?;
    let days = args
        .minimum_retention_days
        .unwrap_or(vault.minimum_retention_days);
    if days == 0 {
        bail!(
            "--minimum-retention-days is missing: say how many days every recovery point is kept \
             whatever deletes it (e.g. --minimum-retention-days 30)"
        );
    }
    if !args.yes {
        bail!(
            "locking vault {} is final: immutability can never be turned off again, and no \
             recovery point will be deleted before it is {days} days old, by retention, garbage \
             collection or `stowage rp delete`; run again with --yes to lock it",
            vault.name
        );
    }
    vault.immutability = Immutability::Locked;
    vault.minimum_retention_days = days;
    let written = settings::write_vault(store, &vault, WriteMode::CreateOrUpdate).await?;
    report("vault", &vault.name, written);
    println!(
        "vault {} is locked: every recovery point is kept at least {days} days after it was \
         taken (enforced by stowage on every delete path)",
        vault.name
    );
    if let Some(azure) = at.vault.as_deref().filter(|l| l.starts_with("azure://")) {
        let (account, container) = azure
            .trim_start_matches("azure://")
            .split_once('/')
            .unwrap_or(("<account>", "<container>"));
        println!(
            "Azure Blob can hold the data itself too; stowage neither sets nor checks this. On a \
             container with version-level immutability support (blob versioning on), set the \
             default version-level retention policy and lock it (Azure's \"Configure \
             immutability policies for blob versions\"):\n  \
             az storage container immutability-policy create --account-name {account} \
             --container-name {container} --period {days}\n  \
             az storage container immutability-policy lock --account-name {account} \
             --container-name {container} --if-match <etag printed by create>\n\
             plus a lifecycle rule that deletes previous versions older than {days} days."
        );
    }
    Ok(())
}

fn parse_rule(text: &str) -> anyhow::Result<VaultRule> {
    let Some((period, days)) = text.split_once('=') else {
        bail!("--vault-rule {text:?} is not PERIOD=DAYS; write e.g. day=30 or year=3650");
    };
    let first_of = match period.trim() {
        "day" => CalendarPeriod::Day,
        "week" => CalendarPeriod::Week,
        "month" => CalendarPeriod::Month,
        "year" => CalendarPeriod::Year,
        other => bail!("--vault-rule {text:?}: {other:?} is not day, week, month or year"),
    };
    let keep_days = days
        .trim()
        .parse()
        .with_context(|| format!("--vault-rule {text:?}: {days:?} is not a number of days"))?;
    Ok(VaultRule {
        first_of,
        keep_days,
    })
}

fn describe_rules(rules: &[VaultRule]) -> String {
    if rules.is_empty() {
        return "-".into();
    }
    rules
        .iter()
        .map(|r| format!("{:?}:{}d", r.first_of, r.keep_days).to_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

/// The columns of `policy list` (which adds the next slot) and `policy show`.
const POLICY_HEADERS: [&str; 6] = [
    "NAME",
    "EVERY",
    "START",
    "TIME ZONE",
    "OPERATIONAL",
    "VAULT RULES",
];

fn policy_row(p: &Policy) -> Vec<String> {
    vec![
        p.name.clone(),
        format!("{}h", p.schedule.frequency_hours),
        p.schedule.start.strftime("%H:%M").to_string(),
        p.schedule.time_zone.clone(),
        format!("{}d", p.retention.operational_days),
        describe_rules(&p.retention.vault),
    ]
}

/// `stowage policy ...`.
pub async fn policy(args: PolicyArgs) -> anyhow::Result<()> {
    let store = vault_store(&args.vault)?;
    match args.action {
        PolicyAction::Create(create) => {
            let policy = match &create.document.file {
                Some(path) => read_named(path, create.document.name.as_ref(), |p: &mut Policy| {
                    &mut p.name
                })?,
                None => {
                    let Some(name) = create.document.name.clone() else {
                        bail!(
                            "the policy name is missing: `stowage policy create <name> ...` or -f <file>"
                        );
                    };
                    let start: Time = create.start.parse().with_context(|| {
                        format!(
                            "--start {:?} is not a time of day; write HH:MM, e.g. 02:00",
                            create.start
                        )
                    })?;
                    let vault = create
                        .vault_rules
                        .iter()
                        .map(|r| parse_rule(r))
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    Policy {
                        name,
                        schedule: Schedule {
                            frequency_hours: create.frequency_hours,
                            start,
                            time_zone: create.time_zone.clone(),
                        },
                        retention: Retention {
                            operational_days: create.operational_days,
                            vault,
                        },
                    }
                }
            };
            let written = settings::write_policy(&store, &policy, mode(create.update)).await?;
            report("policy", &policy.name, written);
            Ok(())
        }
        PolicyAction::List {
            output: OutputArgs { output },
        } => {
            let mut policies: Vec<Policy> = settings::list_policies(&store).try_collect().await?;
            policies.sort_by(|a, b| a.name.cmp(&b.name));
            let now = Timestamp::now();
            let rows: Vec<Vec<String>> = policies
                .iter()
                .map(|p| {
                    let next = Slots::new(&p.schedule)
                        .ok()
                        .and_then(|s| s.next_after(now))
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "-".into());
                    let mut row = policy_row(p);
                    row.push(next);
                    row
                })
                .collect();
            output::print(
                output,
                &[&POLICY_HEADERS[..], &["NEXT SLOT"]].concat(),
                &rows,
                &policies,
            )
        }
        PolicyAction::Show {
            name,
            output: OutputArgs { output },
        } => {
            let policy = settings::read_policy(&store, &name).await?;
            output::print(output, &POLICY_HEADERS, &[policy_row(&policy)], &policy)
        }
    }
}

/// The fast preflight checks creating an instance depends on (vault reachable and holding only
/// Stowage data; with a cluster (`--kubeconfig`, KUBECONFIG, ~/.kube/config, in-cluster): cluster version, the CSI drivers of the volumes in the
/// instance's scope, the snapshot account's permissions, no conflicting backup tool; regions
/// of vault, cluster and snapshot location). A failing check refuses the instance, naming it
/// and its fix; a check without its target (no cluster credentials found) is skipped, not failed.
async fn preflight_on_create(
    store: &BlobStore,
    vault: &VaultArgs,
    cluster: &crate::cli::ClusterArgs,
    instance: &BackupInstance,
) -> anyhow::Result<()> {
    use stowage_control::preflight::{self, PreflightTargets, VaultTarget};
    let Some(location) = vault.vault.clone() else {
        return Ok(());
    };
    let region = settings::read_vault(store).await.ok().map(|v| v.region);
    let cluster = crate::preflight_cmd::kube_target(cluster).await?;
    let (disks, azure) = crate::preflight_cmd::disk_targets(vault)?;
    let targets = PreflightTargets {
        vault: Some(VaultTarget {
            location,
            access_key: std::env::var("STOWAGE_AZURE_ACCESS_KEY").ok(),
            region,
        }),
        cluster,
        disks,
        azure,
        ..PreflightTargets::default()
    };
    let report = preflight::for_instance(&targets, instance).await;
    match report.refusal() {
        Some(reasons) => anyhow::bail!(
            "instance {:?} is refused: {reasons}. Fix these, or run `stowage preflight` for the full report",
            instance.name
        ),
        None => Ok(()),
    }
}

fn describe_namespaces(scope: &Scope) -> String {
    let included = match &scope.namespaces {
        Namespaces::All => "all".to_owned(),
        Namespaces::List { names } => names.join(","),
    };
    if scope.exclude_namespaces.is_empty() {
        included
    } else {
        format!("{included} except {}", scope.exclude_namespaces.join(","))
    }
}

/// `stowage instance ...`.
pub async fn instance(args: InstanceArgs) -> anyhow::Result<()> {
    let store = vault_store(&args.vault)?;
    match args.action {
        InstanceAction::Create(create) => {
            let instance = match &create.document.file {
                Some(path) => read_named(
                    path,
                    create.document.name.as_ref(),
                    |i: &mut BackupInstance| &mut i.name,
                )?,
                None => instance_from_flags(&store, &create).await?,
            };
            preflight_on_create(&store, &args.vault, &args.cluster, &instance).await?;
            let written = settings::write_instance(&store, &instance, mode(create.update)).await?;
            report("instance", &instance.name, written);
            Ok(())
        }
        InstanceAction::List {
            output: OutputArgs { output },
        } => {
            let mut instances: Vec<BackupInstance> =
                settings::list_instances(&store).try_collect().await?;
            instances.sort_by(|a, b| a.name.cmp(&b.name));
            let rows: Vec<Vec<String>> = instances.iter().map(instance_row).collect();
            output::print(output, &INSTANCE_HEADERS, &rows, &instances)
        }
        InstanceAction::Show {
            name,
            output: OutputArgs { output },
        } => {
            let instance = settings::read_instance(&store, &name).await?;
            output::print(
                output,
                &INSTANCE_HEADERS,
                &[instance_row(&instance)],
                &instance,
            )
        }
    }
}

/// The columns of `instance list` and `instance show`.
const INSTANCE_HEADERS: [&str; 5] = [
    "NAME",
    "CLUSTER",
    "POLICY",
    "NAMESPACES",
    "SNAPSHOT LOCATION",
];

fn instance_row(i: &BackupInstance) -> Vec<String> {
    vec![
        i.name.clone(),
        i.cluster.clone(),
        i.policy.clone(),
        describe_namespaces(&i.scope),
        i.snapshot_location.clone(),
    ]
}

async fn instance_from_flags(
    store: &BlobStore,
    create: &InstanceCreateArgs,
) -> anyhow::Result<BackupInstance> {
    let missing = |flag: &str, example: &str| {
        anyhow::anyhow!("{flag} is missing: give it (e.g. {flag} {example}), or use -f <file>")
    };
    let Some(name) = create.document.name.clone() else {
        bail!("the instance name is missing: `stowage instance create <name> ...` or -f <file>");
    };
    let vault = settings::read_vault(store).await?;
    Ok(BackupInstance {
        name,
        cluster: create
            .cluster
            .clone()
            .ok_or_else(|| missing("--cluster", "aks-prod"))?,
        vault: vault.name,
        policy: create
            .policy
            .clone()
            .ok_or_else(|| missing("--policy", "daily"))?,
        scope: Scope {
            namespaces: if create.namespaces.is_empty() {
                Namespaces::All
            } else {
                Namespaces::List {
                    names: create.namespaces.clone(),
                }
            },
            exclude_namespaces: create.exclude_namespaces.clone(),
            label_selectors: create.selectors.clone(),
            include_cluster_scoped: !create.no_cluster_scoped,
            include_secrets: !create.no_secrets,
            include_volumes: !create.no_volumes,
        },
        snapshot_location: create
            .snapshot_location
            .clone()
            .ok_or_else(|| missing("--snapshot-location", "rg-aks-snapshots"))?,
        hooks: Vec::new(),
    })
}

/// Who is asking, for job records: `cli: user@host`.
fn requested_by() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    format!("cli: {user}@{host}")
}

/// `stowage backup now <instance>`.
pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let store = vault_store(&args.vault)?;
    // The job runs on workers with their own key; a key given here is checked anyway, so a
    // wrong one is refused before the job record is written or the job published.
    if let Some(key) = crate::vault_config::configured_vault_key(&args.vault)? {
        crate::vault_config::unlock(&store, &key).await?;
    }
    let BackupAction::Now { instance } = args.action;
    let broker: Arc<dyn Broker> = Arc::new(RabbitBroker::new(args.broker.amqp_url.clone()));
    let names = Names::new(args.broker.prefix.clone());
    // One backup is one trace from here: snapshot, vault-transfer and geo-replication jobs are
    // children of this span (submit stamps it on the job's envelope).
    let span = tracing::info_span!("backup now", instance = %instance);
    let record = tracing::Instrument::instrument(
        backup_now(
            &store,
            broker.as_ref(),
            &names,
            &instance,
            Some(requested_by()),
            Timestamp::now(),
        ),
        span,
    )
    .await?;
    println!("{}", record.id);
    eprintln!(
        "backup of {instance} submitted as job {} (recovery point {}); follow it with `stowage jobs watch {}`",
        record.id,
        record.recovery_point_id.as_deref().unwrap_or("-"),
        record.id
    );
    Ok(())
}
