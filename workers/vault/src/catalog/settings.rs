//! The vault's catalog documents — settings (`vault.json`), policies (`policies/<name>.json`)
//! and backup instances (`instances/<name>.json`) — read and written with validation.
//!
//! Everything is validated on write, and every problem is a [`FieldError`] naming the document,
//! the field path and the fix, e.g.
//! `policy "daily": schedule.frequency_hours is 5; it must be 4, 6, 8, 12 or 24 (Azure Backup
//! for AKS's choices)`. A write reports every problem of the document at once.
//!
//! Rules (besides "names are valid key components" and "required text is not empty"):
//!
//! | document | rule |
//! |---|---|
//! | vault | `key_id` is the id of the key-encryption key its keyring (`keys/keyring.json`) is wrapped under, when it has one (see [`crate::keyring`]) |
//! | vault | a `geo` vault names its secondary location and region (both different from the primary's) |
//! | vault | the name never changes; immutability `locked` can never be changed again, and its `minimum_retention_days` and `soft_delete_days` only grow |
//! | vault | `enabled`/`locked` immutability needs `minimum_retention_days` 1..=36500; `soft_delete_days` 14..=180 |
//! | policy | `schedule.frequency_hours` ∈ {4, 6, 8, 12, 24}; `schedule.start` in whole minutes; `schedule.time_zone` is an IANA zone jiff can resolve |
//! | policy | `retention.operational_days` 1..=360; vault rules keep 1..=360 days, except `year` rules (1..=3650: a yearly point kept for less than a year is pointless); at most one rule per `first_of` |
//! | instance | `vault` is this vault's name; `policy` exists; `snapshot_location` is set and never changes |
//! | instance | scope: namespace names are DNS-1123 labels, a namespace list is not empty, label selectors parse (Kubernetes grammar, [`stowage_schemas::selector`]) |
//! | instance | hooks: unique non-empty names, namespace a DNS-1123 label, a command, selector parses, timeout 1..=3600 s |
//!
//! Updates are compare-and-swap ([`BlobStore::update_if_unchanged`]): the rules that compare
//! with the stored document (snapshot location, immutability, vault name) are checked against
//! the version being replaced, so two concurrent writers cannot slip a forbidden change past
//! each other. The stored form is the plain JSON of the domain type, which the stages read
//! (see [`read_instance`]).

use std::collections::BTreeSet;
use std::fmt;

use crate::document::{self, Decision, UpdateError};
use crate::layout::{self, BlobKey, KeyPrefix, LayoutError};
use crate::store::BlobStore;
use futures::stream::BoxStream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use stowage_schemas::domain::{
    BackupInstance, CalendarPeriod, Immutability, Namespaces, Policy, Redundancy, Vault,
};
use stowage_schemas::selector::LabelSelector;

/// The hours a schedule may repeat at: Azure Backup for AKS's choices (6 h joined them later;
/// each divides a day, so every local day has the same slots).
pub const FREQUENCIES: [u8; 5] = [4, 6, 8, 12, 24];
/// Longest retention of the operational tier and of vault rules other than `year`, in days.
pub const MAX_RETENTION_DAYS: u32 = 360;
/// Longest retention of a `year` vault rule, in days (ten years).
pub const MAX_YEARLY_RETENTION_DAYS: u32 = 3650;
/// Longest hook timeout, in seconds.
pub const MAX_HOOK_TIMEOUT_SECONDS: u32 = 3600;
/// Longest minimum retention of a vault lock, in days (a hundred years).
pub const MAX_MINIMUM_RETENTION_DAYS: u32 = 36_500;
/// The shortest and longest undelete windows, in days (Azure Backup's range).
pub const SOFT_DELETE_DAYS: std::ops::RangeInclusive<u16> = 14..=180;

/// Compare-and-swap attempts of one write before giving up.
const WRITE_TRIES: u32 = 16;

/// One problem with one field of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The document, e.g. `policy "daily"`.
    pub document: String,
    /// The field path, e.g. `schedule.frequency_hours` or `hooks[1].command`.
    pub field: String,
    /// What is wrong, e.g. `is 6`.
    pub problem: String,
    /// What to do, e.g. `it must be 4, 6, 8, 12 or 24`.
    pub fix: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} {}; {}",
            self.document, self.field, self.problem, self.fix
        )
    }
}

/// Every problem found in a document, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// A catalog document could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The document breaks the rules; nothing was written.
    #[error("{0}")]
    Invalid(FieldErrors),
    /// The document does not exist.
    #[error("{what} {name:?} does not exist in the vault ({key} is missing); {fix}")]
    NotFound {
        /// `vault settings`, `policy` or `backup instance`.
        what: &'static str,
        /// Its name.
        name: String,
        /// Its key.
        key: String,
        /// What to do.
        fix: &'static str,
    },
    /// Create-only write of a document that exists with other content.
    #[error(
        "{what} {name:?} already exists with other settings ({key}); change it with an update \
         (`--update` on the create command) or pick another name"
    )]
    AlreadyExists {
        /// `vault settings`, `policy` or `backup instance`.
        what: &'static str,
        /// Its name.
        name: String,
        /// Its key.
        key: String,
    },
    /// The stored document is not valid JSON of its type.
    #[error(
        "{key} is unreadable: {reason}; it was damaged or written by an incompatible version — \
         rewrite it with the matching create command"
    )]
    Corrupt {
        /// Its key.
        key: String,
        /// The parser's complaint.
        reason: String,
    },
    /// Other writers kept changing the document.
    #[error(
        "{key} changed under every one of {tries} write attempts; another writer is busy \
         with it, retry in a moment"
    )]
    Contended {
        /// Its key.
        key: String,
        /// Attempts made.
        tries: u32,
    },
    /// A name that cannot be part of a key.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Blob storage failed.
    #[error(transparent)]
    Store(#[from] crate::Error),
}

impl stowage_schemas::Retryable for SettingsError {
    fn is_transient(&self) -> bool {
        match self {
            SettingsError::Store(e) => e.is_transient(),
            SettingsError::Contended { .. } => true,
            _ => false,
        }
    }
}

impl SettingsError {
    /// Whether the document simply does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, SettingsError::NotFound { .. })
    }

    /// The field problems, if the error is a validation failure.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            SettingsError::Invalid(errors) => &errors.0,
            _ => &[],
        }
    }
}

/// Whether a write may replace an existing document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Only create: an existing document with other content is [`SettingsError::AlreadyExists`]
    /// (an identical one is [`Written::Unchanged`], so retries are harmless).
    Create,
    /// Create, or replace the existing document (validated against it).
    CreateOrUpdate,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The document did not exist and was created.
    Created,
    /// The existing document was replaced.
    Updated,
    /// The stored document already had this content.
    Unchanged,
}

/// Collects the problems of one document.
struct Check {
    document: String,
    errors: Vec<FieldError>,
}

impl Check {
    fn new(document: String) -> Self {
        Self {
            document,
            errors: Vec::new(),
        }
    }

    fn fail(
        &mut self,
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.errors.push(FieldError {
            document: self.document.clone(),
            field: field.into(),
            problem: problem.into(),
            fix: fix.into(),
        });
    }

    fn component(&mut self, field: &str, what: &'static str, value: &str) {
        if let Err(e) = layout::validate_component(what, value) {
            self.fail(
                field,
                format!("is {value:?}: {}", e.reason),
                "use letters, digits and - _ . (e.g. shop-prod)",
            );
        }
    }

    /// An id (see `stowage_schemas::id`) of at most `max_len` bytes.
    fn id(&mut self, field: &str, value: &str, max_len: usize) {
        if let Err(e) = stowage_schemas::id::validate(value) {
            self.fail(
                field,
                format!("is {}: {}", stowage_schemas::id::quote(value), e.reason),
                format!("use {}", stowage_schemas::id::RULE),
            );
        } else if value.len() > max_len {
            self.fail(
                field,
                format!("is {} bytes long", value.len()),
                format!(
                    "use at most {max_len} bytes, so that the job and recovery-point ids made \
                     from it stay within 253"
                ),
            );
        }
    }

    fn not_empty(&mut self, field: &str, value: &str, example: &str) {
        if value.trim().is_empty() {
            self.fail(field, "is empty", format!("set it (e.g. {example})"));
        }
    }

    fn dns_label(&mut self, field: &str, value: &str) {
        if !is_namespace_name(value) {
            self.fail(
                field,
                format!("is {value:?}, which is not a Kubernetes namespace name"),
                "use at most 63 lowercase letters, digits and '-', starting and ending with a \
                 letter or digit",
            );
        }
    }

    fn selector(&mut self, field: &str, value: &str) {
        if let Err(e) = LabelSelector::parse(value) {
            self.fail(
                field,
                format!("is {value:?}, which does not parse: {}", e.reason),
                "write a Kubernetes label selector, e.g. app=web,tier!=cache or env in (prod,qa)",
            );
        }
    }

    fn finish(self) -> Result<(), SettingsError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(SettingsError::Invalid(FieldErrors(self.errors)))
        }
    }
}

/// Checks vault settings, and the change from `previous` (the stored settings) if any.
pub fn validate_vault(vault: &Vault, previous: Option<&Vault>) -> Result<(), SettingsError> {
    let mut check = Check::new(format!("vault {:?}", vault.name));
    check.component("name", "vault name", &vault.name);
    check.not_empty("region", &vault.region, "westeurope");
    check.not_empty(
        "location",
        &vault.location,
        "https://acct.blob.core.windows.net/stowage or /var/lib/stowage/vault",
    );
    check.not_empty(
        "key_id",
        &vault.key_id,
        "a key-vault key id or a local key name",
    );
    if let Redundancy::Geo {
        secondary_location,
        secondary_region,
    } = &vault.redundancy
    {
        check.not_empty(
            "redundancy.secondary_location",
            secondary_location,
            "https://acct2.blob.core.windows.net/stowage; a geo vault must name its secondary location",
        );
        check.not_empty(
            "redundancy.secondary_region",
            secondary_region,
            "northeurope; a geo vault must name its secondary region",
        );
        if !secondary_location.is_empty() && secondary_location == &vault.location {
            check.fail(
                "redundancy.secondary_location",
                "is the primary location",
                "name storage in the paired region; a copy in the same place protects nothing",
            );
        }
        if !secondary_region.is_empty() && secondary_region == &vault.region {
            check.fail(
                "redundancy.secondary_region",
                format!("is {secondary_region:?}, the primary region"),
                "name the paired region (e.g. northeurope for westeurope)",
            );
        }
    }
    if vault.immutability != Immutability::Disabled
        && !(1..=MAX_MINIMUM_RETENTION_DAYS).contains(&vault.minimum_retention_days)
    {
        check.fail(
            "minimum_retention_days",
            format!(
                "is {} with immutability {}",
                vault.minimum_retention_days,
                vault.immutability.as_str()
            ),
            format!(
                "a lock keeps every recovery point 1 to {MAX_MINIMUM_RETENTION_DAYS} days; set it                  (e.g. --minimum-retention-days 30)"
            ),
        );
    }
    if !SOFT_DELETE_DAYS.contains(&vault.soft_delete_days) {
        check.fail(
            "soft_delete_days",
            format!("is {}", vault.soft_delete_days),
            format!(
                "a deleted recovery point can be undeleted for {} to {} days",
                SOFT_DELETE_DAYS.start(),
                SOFT_DELETE_DAYS.end()
            ),
        );
    }
    if let Some(previous) = previous {
        if previous.immutability == Immutability::Locked {
            if vault.minimum_retention_days < previous.minimum_retention_days {
                check.fail(
                    "minimum_retention_days",
                    format!(
                        "would shrink from {} to {}",
                        previous.minimum_retention_days, vault.minimum_retention_days
                    ),
                    "a locked vault's minimum retention only grows; keep it or raise it",
                );
            }
            if vault.soft_delete_days < previous.soft_delete_days {
                check.fail(
                    "soft_delete_days",
                    format!(
                        "would shrink from {} to {}",
                        previous.soft_delete_days, vault.soft_delete_days
                    ),
                    "a locked vault's undelete window only grows; keep it or raise it",
                );
            }
        }
        if previous.name != vault.name {
            check.fail(
                "name",
                format!("would change from {:?} to {:?}", previous.name, vault.name),
                "a vault's name never changes (instances refer to it); keep the old name",
            );
        }
        if previous.immutability == Immutability::Locked
            && vault.immutability != Immutability::Locked
        {
            check.fail(
                "immutability",
                format!(
                    "would change from locked to {}",
                    vault.immutability.as_str()
                ),
                "locked immutability can never be turned off; keep it locked",
            );
        }
    }
    check.finish()
}

/// [`FREQUENCIES`] as a refusal lists them: `4, 6, 8, 12 or 24`.
pub fn frequency_choices() -> String {
    let text: Vec<String> = FREQUENCIES.iter().map(u8::to_string).collect();
    match text.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Checks a policy.
pub fn validate_policy(policy: &Policy) -> Result<(), SettingsError> {
    let mut check = Check::new(format!("policy {:?}", policy.name));
    check.component("name", "policy name", &policy.name);
    let schedule = &policy.schedule;
    if !FREQUENCIES.contains(&schedule.frequency_hours) {
        check.fail(
            "schedule.frequency_hours",
            format!("is {}", schedule.frequency_hours),
            format!(
                "it must be {} (Azure Backup for AKS's choices)",
                frequency_choices()
            ),
        );
    }
    if schedule.start.second() != 0 || schedule.start.subsec_nanosecond() != 0 {
        check.fail(
            "schedule.start",
            format!("is {}", schedule.start),
            "use whole minutes, e.g. 02:00",
        );
    }
    if let Err(e) = jiff::tz::TimeZone::get(&schedule.time_zone) {
        check.fail(
            "schedule.time_zone",
            format!("is {:?}, which does not resolve ({e})", schedule.time_zone),
            "use an IANA time zone name such as UTC or Europe/Amsterdam",
        );
    }
    let retention = &policy.retention;
    let operational = u32::from(retention.operational_days);
    if !(1..=MAX_RETENTION_DAYS).contains(&operational) {
        check.fail(
            "retention.operational_days",
            format!("is {operational}"),
            format!("keep operational recovery points 1 to {MAX_RETENTION_DAYS} days"),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, rule) in retention.vault.iter().enumerate() {
        let max = match rule.first_of {
            CalendarPeriod::Year => MAX_YEARLY_RETENTION_DAYS,
            _ => MAX_RETENTION_DAYS,
        };
        if !(1..=max).contains(&rule.keep_days) {
            check.fail(
                format!("retention.vault[{i}].keep_days"),
                format!("is {}", rule.keep_days),
                format!(
                    "a first-of-{} rule keeps recovery points 1 to {max} days",
                    rule.first_of.as_str()
                ),
            );
        }
        if !seen.insert(rule.first_of) {
            check.fail(
                format!("retention.vault[{i}].first_of"),
                format!(
                    "repeats {}, which an earlier rule already selects",
                    rule.first_of.as_str()
                ),
                "keep one rule per period and give it the longest duration you need",
            );
        }
    }
    check.finish()
}

/// Checks a backup instance against the vault it goes into, whether its policy exists, and the
/// stored instance it replaces (if any).
pub fn validate_instance(
    instance: &BackupInstance,
    vault: &Vault,
    policy_exists: bool,
    previous: Option<&BackupInstance>,
) -> Result<(), SettingsError> {
    let mut check = Check::new(format!("instance {:?}", instance.name));
    check.id(
        "name",
        &instance.name,
        stowage_schemas::id::MAX_INSTANCE_NAME_LEN,
    );
    check.not_empty("cluster", &instance.cluster, "aks-prod");
    if !instance.cluster.trim().is_empty() {
        check.id(
            "cluster",
            &instance.cluster,
            stowage_schemas::id::MAX_ID_LEN,
        );
    }
    if instance.vault != vault.name {
        check.fail(
            "vault",
            format!(
                "is {:?}, but this vault is {:?}",
                instance.vault, vault.name
            ),
            format!(
                "set vault: {} or point --vault at the vault you meant",
                vault.name
            ),
        );
    }
    if !policy_exists {
        check.fail(
            "policy",
            format!("is {:?}, which does not exist in this vault", instance.policy),
            "create it first (`stowage policy create`) or name an existing one (`stowage policy list`)",
        );
    }
    check.not_empty(
        "snapshot_location",
        &instance.snapshot_location,
        "a resource group or folder for operational snapshots",
    );
    if let Some(previous) = previous
        && previous.snapshot_location != instance.snapshot_location
    {
        check.fail(
            "snapshot_location",
            format!(
                "would change from {:?} to {:?}",
                previous.snapshot_location, instance.snapshot_location
            ),
            "an instance's snapshot location cannot change once set (its snapshots live there); \
             keep it, or create a new instance",
        );
    }
    let scope = &instance.scope;
    if let Namespaces::List { names } = &scope.namespaces {
        if names.is_empty() {
            check.fail(
                "scope.namespaces.names",
                "is empty",
                "list at least one namespace, or use kind: all",
            );
        }
        let mut seen = BTreeSet::new();
        for (i, name) in names.iter().enumerate() {
            check.dns_label(&format!("scope.namespaces.names[{i}]"), name);
            if !seen.insert(name) {
                check.fail(
                    format!("scope.namespaces.names[{i}]"),
                    format!("repeats {name:?}"),
                    "list each namespace once",
                );
            }
        }
    }
    for (i, name) in scope.exclude_namespaces.iter().enumerate() {
        check.dns_label(&format!("scope.exclude_namespaces[{i}]"), name);
    }
    for (i, selector) in scope.label_selectors.iter().enumerate() {
        check.selector(&format!("scope.label_selectors[{i}]"), selector);
    }
    let mut hook_names = BTreeSet::new();
    for (i, hook) in instance.hooks.iter().enumerate() {
        let at = |field: &str| format!("hooks[{i}].{field}");
        check.not_empty(&at("name"), &hook.name, "freeze-db");
        if !hook.name.is_empty() && !hook_names.insert(hook.name.as_str()) {
            check.fail(
                at("name"),
                format!("repeats {:?}", hook.name),
                "give each hook its own name",
            );
        }
        check.dns_label(&at("namespace"), &hook.namespace);
        if hook.command.is_empty() || hook.command[0].trim().is_empty() {
            check.fail(
                at("command"),
                "is empty",
                "give the program and its arguments, e.g. [fsfreeze, -f, /data]",
            );
        }
        if let Some(selector) = &hook.label_selector {
            check.selector(&at("label_selector"), selector);
        }
        if !(1..=MAX_HOOK_TIMEOUT_SECONDS).contains(&hook.timeout_seconds) {
            check.fail(
                at("timeout_seconds"),
                format!("is {}", hook.timeout_seconds),
                format!("use 1 to {MAX_HOOK_TIMEOUT_SECONDS} seconds"),
            );
        }
    }
    check.finish()
}

impl<E: Into<SettingsError>> From<UpdateError<E>> for SettingsError {
    fn from(e: UpdateError<E>) -> Self {
        match e {
            UpdateError::Corrupt { key, reason } => SettingsError::Corrupt { key, reason },
            UpdateError::Contended { key, tries } => SettingsError::Contended { key, tries },
            UpdateError::Store(e) => e.into(),
            UpdateError::Rejected(e) => e.into(),
        }
    }
}

async fn read_doc<T: DeserializeOwned>(
    store: &BlobStore,
    key: &BlobKey,
) -> Result<Option<T>, SettingsError> {
    match store.get(key).await {
        Ok(object) => Ok(Some(document::decode::<T, SettingsError>(
            key,
            &object.bytes,
        )?)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The document at `key`, which must exist: a missing one is [`SettingsError::NotFound`],
/// saying `what` it is, its `name` and the `fix`.
async fn read_required<T: DeserializeOwned>(
    store: &BlobStore,
    key: &BlobKey,
    (what, name): (&'static str, &str),
    fix: &'static str,
) -> Result<T, SettingsError> {
    read_doc(store, key)
        .await?
        .ok_or_else(|| SettingsError::NotFound {
            what,
            name: name.to_owned(),
            key: key.to_string(),
            fix,
        })
}

/// The create/compare-and-swap loop shared by every document: `validate` sees the stored
/// version being replaced (or `None` on create) on every attempt.
async fn write_doc<T>(
    store: &BlobStore,
    key: &BlobKey,
    doc: &T,
    mode: WriteMode,
    (what, name): (&'static str, &str),
    validate: impl Fn(Option<&T>) -> Result<(), SettingsError>,
) -> Result<Written, SettingsError>
where
    T: Serialize + DeserializeOwned + PartialEq + Clone,
{
    Ok(
        document::update(store, key, WRITE_TRIES, |stored: Option<T>| {
            let Some(stored) = stored else {
                validate(None)?;
                return Ok(Decision::Write(doc.clone(), Written::Created));
            };
            if &stored == doc {
                return Ok(Decision::Keep(Written::Unchanged));
            }
            if mode == WriteMode::Create {
                return Err(SettingsError::AlreadyExists {
                    what,
                    name: name.to_owned(),
                    key: key.to_string(),
                });
            }
            validate(Some(&stored))?;
            Ok(Decision::Write(doc.clone(), Written::Updated))
        })
        .await?,
    )
}

fn list_docs<T: DeserializeOwned + Send + 'static>(
    store: &BlobStore,
    prefix: &KeyPrefix,
) -> BoxStream<'static, Result<T, SettingsError>> {
    document::list(
        store,
        prefix,
        |key| key.as_str().ends_with(".json"),
        |key, bytes| Ok(document::decode::<T, SettingsError>(key, bytes)?),
    )
}

/// A kind of settings document kept under its own name (a policy, a backup instance).
struct Named {
    /// What it is, in messages.
    what: &'static str,
    /// What to do when one is missing.
    fix: &'static str,
    /// Its key, from its name.
    key: fn(&str) -> Result<BlobKey, LayoutError>,
}

const POLICY: Named = Named {
    what: "policy",
    fix: "create it with `stowage policy create`, or see `stowage policy list`",
    key: layout::policy,
};

const INSTANCE: Named = Named {
    what: "backup instance",
    fix: "create it with `stowage instance create`, or see `stowage instance list`",
    key: layout::instance,
};

impl Named {
    /// The document called `name`, which must exist.
    async fn read<T: DeserializeOwned>(
        &self,
        store: &BlobStore,
        name: &str,
    ) -> Result<T, SettingsError> {
        read_required(store, &(self.key)(name)?, (self.what, name), self.fix).await
    }

    /// Writes `doc`, called `name`, with [`write_doc`].
    async fn write<T>(
        &self,
        store: &BlobStore,
        doc: &T,
        name: &str,
        mode: WriteMode,
        validate: impl Fn(Option<&T>) -> Result<(), SettingsError>,
    ) -> Result<Written, SettingsError>
    where
        T: Serialize + DeserializeOwned + PartialEq + Clone,
    {
        write_doc(
            store,
            &(self.key)(name)?,
            doc,
            mode,
            (self.what, name),
            validate,
        )
        .await
    }
}

/// Whether `name` is a Kubernetes namespace name (an RFC 1123 label): at most 63 lowercase
/// letters, digits and '-', starting and ending with a letter or digit.
pub fn is_namespace_name(name: &str) -> bool {
    stowage_schemas::selector::is_dns_label(name)
}

const VAULT_FIX: &str = "initialise the vault first with `stowage vault init`";

/// The vault settings (`vault.json`).
pub async fn read_vault(store: &BlobStore) -> Result<Vault, SettingsError> {
    let key = layout::vault_settings();
    read_required(store, &key, ("vault settings", "vault.json"), VAULT_FIX).await
}

/// Validates and writes the vault settings.
pub async fn write_vault(
    store: &BlobStore,
    vault: &Vault,
    mode: WriteMode,
) -> Result<Written, SettingsError> {
    let key = layout::vault_settings();
    // `key_id` is the key-encryption key's id: checked against the keyring when there is one.
    let key_id_problem = crate::keyring::key_id_problem(store, vault).await?;
    let with_key_id = |result: Result<(), SettingsError>| {
        let Some((problem, fix)) = &key_id_problem else {
            return result;
        };
        let error = FieldError {
            document: format!("vault {:?}", vault.name),
            field: "key_id".into(),
            problem: problem.clone(),
            fix: fix.clone(),
        };
        match result {
            Ok(()) => Err(SettingsError::Invalid(FieldErrors(vec![error]))),
            Err(SettingsError::Invalid(mut errors)) => {
                errors.0.push(error);
                Err(SettingsError::Invalid(errors))
            }
            Err(other) => Err(other),
        }
    };
    write_doc(
        store,
        &key,
        vault,
        mode,
        ("vault settings", &vault.name),
        |previous| with_key_id(validate_vault(vault, previous)),
    )
    .await
}

/// A policy (`policies/<name>.json`).
pub async fn read_policy(store: &BlobStore, name: &str) -> Result<Policy, SettingsError> {
    POLICY.read(store, name).await
}

/// Validates and writes a policy. The vault must be initialised.
pub async fn write_policy(
    store: &BlobStore,
    policy: &Policy,
    mode: WriteMode,
) -> Result<Written, SettingsError> {
    validate_policy(policy)?;
    read_vault(store).await?;
    POLICY
        .write(store, policy, &policy.name, mode, |_| {
            validate_policy(policy)
        })
        .await
}

/// Streams every policy, in no particular order.
pub fn list_policies(store: &BlobStore) -> BoxStream<'static, Result<Policy, SettingsError>> {
    list_docs(store, &layout::policies())
}

/// A backup instance (`instances/<name>.json`).
pub async fn read_instance(store: &BlobStore, name: &str) -> Result<BackupInstance, SettingsError> {
    INSTANCE.read(store, name).await
}

/// Validates and writes a backup instance: the vault must be initialised under the name the
/// instance gives, its policy must exist, and an update keeps the snapshot location.
pub async fn write_instance(
    store: &BlobStore,
    instance: &BackupInstance,
    mode: WriteMode,
) -> Result<Written, SettingsError> {
    let vault = read_vault(store).await?;
    let policy_exists = match layout::policy(&instance.policy) {
        Ok(key) => store
            .head(&key)
            .await
            .map(|_| true)
            .or_else(|e| if e.is_not_found() { Ok(false) } else { Err(e) })?,
        Err(_) => false,
    };
    validate_instance(instance, &vault, policy_exists, None)?;
    INSTANCE
        .write(store, instance, &instance.name, mode, |previous| {
            validate_instance(instance, &vault, policy_exists, previous)
        })
        .await
}

/// Streams every backup instance, in no particular order.
pub fn list_instances(
    store: &BlobStore,
) -> BoxStream<'static, Result<BackupInstance, SettingsError>> {
    list_docs(store, &layout::instances())
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;
    use jiff::civil::Time;
    use stowage_schemas::domain::{Hook, HookErrorMode, HookPhase, Scope, VaultRule};

    use super::*;
    use stowage_schemas::samples::policy;

    fn vault() -> Vault {
        Vault {
            name: "main".into(),
            region: "westeurope".into(),
            location: "/var/lib/stowage".into(),
            redundancy: Redundancy::Local,
            key_id: "local".into(),
            immutability: Immutability::Disabled,
            minimum_retention_days: 0,
            soft_delete_days: stowage_schemas::domain::DEFAULT_SOFT_DELETE_DAYS,
        }
    }

    fn instance() -> BackupInstance {
        BackupInstance {
            name: "shop".into(),
            cluster: "aks-prod".into(),
            vault: "main".into(),
            policy: "daily".into(),
            scope: Scope::default(),
            snapshot_location: "rg-snapshots".into(),
            hooks: Vec::new(),
        }
    }

    fn messages(result: Result<(), SettingsError>) -> Vec<String> {
        result
            .unwrap_err()
            .field_errors()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// The field path of every problem `result` reports.
    fn fields(result: Result<(), SettingsError>) -> Vec<String> {
        result
            .unwrap_err()
            .field_errors()
            .iter()
            .map(|e| e.field.clone())
            .collect()
    }

    #[test]
    fn good_documents_pass() {
        validate_vault(&vault(), None).unwrap();
        validate_policy(&policy()).unwrap();
        validate_instance(&instance(), &vault(), true, Some(&instance())).unwrap();
    }

    #[test]
    fn policy_errors_name_the_field_and_the_fix() {
        let mut p = policy();
        p.schedule.frequency_hours = 5;
        assert_eq!(
            messages(validate_policy(&p)),
            [
                "policy \"daily\": schedule.frequency_hours is 5; it must be 4, 6, 8, 12 or 24 \
                 (Azure Backup for AKS's choices)"
            ]
        );
        // Every frequency Azure Backup for AKS offers is accepted, and nothing else is.
        for hours in 0..=48u8 {
            let mut p = policy();
            p.schedule.frequency_hours = hours;
            assert_eq!(
                validate_policy(&p).is_ok(),
                [4, 6, 8, 12, 24].contains(&hours),
                "{hours} h"
            );
        }
        let mut p = policy();
        p.schedule.time_zone = "Mars/Olympus".into();
        p.schedule.start = Time::constant(2, 0, 30, 0);
        p.retention.operational_days = 361;
        p.retention.vault.push(VaultRule {
            first_of: CalendarPeriod::Day,
            keep_days: 0,
        });
        p.retention.vault[0].keep_days = 400;
        let all = messages(validate_policy(&p));
        assert_eq!(
            fields(validate_policy(&p)),
            [
                "schedule.start",
                "schedule.time_zone",
                "retention.operational_days",
                "retention.vault[0].keep_days",
                "retention.vault[2].keep_days",
                "retention.vault[2].first_of",
            ],
            "{all:#?}"
        );
        assert!(all[2].contains("1 to 360 days"), "{}", all[2]);
        let mut p = policy();
        p.retention.vault[1].keep_days = 3651;
        assert!(messages(validate_policy(&p))[0].contains("1 to 3650 days"));
    }

    #[test]
    fn vault_rules() {
        let mut v = vault();
        v.redundancy = Redundancy::Geo {
            secondary_location: String::new(),
            secondary_region: "westeurope".into(),
        };
        let all = messages(validate_vault(&v, None));
        assert!(
            all[0].contains("redundancy.secondary_location is empty"),
            "{all:?}"
        );
        assert!(all[1].contains("the primary region"), "{all:?}");
        let mut locked = vault();
        locked.immutability = Immutability::Locked;
        let all = messages(validate_vault(&locked, None));
        assert!(
            all[0].contains("minimum_retention_days is 0 with immutability locked"),
            "{all:?}"
        );
        locked.minimum_retention_days = 30;
        let says = |all: &[String], text: &str| {
            assert!(all.iter().any(|m| m.contains(text)), "{text}: {all:?}");
        };
        let all = messages(validate_vault(&vault(), Some(&locked)));
        says(&all, "immutability would change from locked to disabled");
        let mut shrunk = locked.clone();
        shrunk.minimum_retention_days = 29;
        shrunk.soft_delete_days = 13;
        let all = messages(validate_vault(&shrunk, Some(&locked)));
        says(&all, "soft_delete_days is 13");
        says(&all, "minimum_retention_days would shrink from 30 to 29");
        let mut grown = locked.clone();
        grown.minimum_retention_days = 31;
        grown.soft_delete_days = 30;
        validate_vault(&grown, Some(&locked)).unwrap();
        // An unlocked (`enabled`) vault may relax its lock.
        let mut enabled = locked.clone();
        enabled.immutability = Immutability::Enabled;
        let mut relaxed = enabled.clone();
        relaxed.minimum_retention_days = 1;
        validate_vault(&relaxed, Some(&enabled)).unwrap();
        let mut renamed = vault();
        renamed.name = "other".into();
        assert!(
            messages(validate_vault(&renamed, Some(&vault())))[0].contains("name never changes")
        );
        validate_vault(&locked, Some(&vault())).unwrap();
    }

    #[test]
    fn instance_and_cluster_names_follow_the_id_rule() {
        for (name, cluster, fragment) in [
            ("../x", "c", "path separator"),
            ("x-", "c", "start and end with a letter or digit"),
            (&*"a".repeat(64), "c", "64 bytes long"),
            ("shop", "../c", "path separator"),
        ] {
            let mut i = instance();
            i.name = name.into();
            i.cluster = cluster.into();
            let all = messages(validate_instance(&i, &vault(), true, None));
            assert!(
                all.iter().any(|m| m.contains(fragment)),
                "{name} {cluster}: {all:?}"
            );
        }
        let mut i = instance();
        i.name = "a".repeat(63);
        validate_instance(&i, &vault(), true, None).unwrap();
    }

    #[test]
    fn instance_rules() {
        let mut i = instance();
        i.vault = "elsewhere".into();
        i.name = "bad/name".into();
        i.scope.namespaces = Namespaces::List {
            names: vec!["Shop".into(), "blog".into(), "blog".into()],
        };
        i.scope.label_selectors = vec!["app in (web".into()];
        i.hooks = vec![Hook {
            name: "freeze".into(),
            phase: HookPhase::Pre,
            namespace: "shop".into(),
            label_selector: None,
            container: None,
            command: Vec::new(),
            timeout_seconds: 0,
            on_error: HookErrorMode::Fail,
        }];
        assert_eq!(
            fields(validate_instance(&i, &vault(), false, None)),
            [
                "name",
                "vault",
                "policy",
                "scope.namespaces.names[0]",
                "scope.namespaces.names[2]",
                "scope.label_selectors[0]",
                "hooks[0].command",
                "hooks[0].timeout_seconds",
            ]
        );
        let mut moved = instance();
        moved.snapshot_location = "rg-other".into();
        let all = messages(validate_instance(&moved, &vault(), true, Some(&instance())));
        assert!(
            all[0].contains("snapshot location cannot change once set"),
            "{all:?}"
        );
    }

    #[tokio::test]
    async fn writes_validate_and_use_create_or_update() {
        let store = BlobStore::in_memory();
        let err = write_policy(&store, &policy(), WriteMode::Create)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("stowage vault init"), "{err}");
        assert_eq!(
            write_vault(&store, &vault(), WriteMode::Create)
                .await
                .unwrap(),
            Written::Created
        );
        let err = write_instance(&store, &instance(), WriteMode::Create)
            .await
            .unwrap_err();
        assert_eq!(err.field_errors()[0].field, "policy");
        assert_eq!(
            write_policy(&store, &policy(), WriteMode::Create)
                .await
                .unwrap(),
            Written::Created
        );
        assert_eq!(
            write_policy(&store, &policy(), WriteMode::Create)
                .await
                .unwrap(),
            Written::Unchanged
        );
        let mut longer = policy();
        longer.retention.operational_days = 30;
        let err = write_policy(&store, &longer, WriteMode::Create)
            .await
            .unwrap_err();
        assert!(matches!(err, SettingsError::AlreadyExists { .. }), "{err}");
        assert_eq!(
            write_policy(&store, &longer, WriteMode::CreateOrUpdate)
                .await
                .unwrap(),
            Written::Updated
        );
        assert_eq!(read_policy(&store, "daily").await.unwrap(), longer);

        assert_eq!(
            write_instance(&store, &instance(), WriteMode::Create)
                .await
                .unwrap(),
            Written::Created
        );
        // The stages read what was written.
        let read = read_instance(&store, "shop").await.unwrap();
        assert_eq!(read, instance());
        let mut moved = instance();
        moved.snapshot_location = "rg-other".into();
        let err = write_instance(&store, &moved, WriteMode::CreateOrUpdate)
            .await
            .unwrap_err();
        assert_eq!(err.field_errors()[0].field, "snapshot_location");
        let mut rescoped = instance();
        rescoped.scope.include_secrets = false;
        assert_eq!(
            write_instance(&store, &rescoped, WriteMode::CreateOrUpdate)
                .await
                .unwrap(),
            Written::Updated
        );
        let names: Vec<String> = list_instances(&store)
            .map_ok(|i| i.name)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(names, ["shop"]);
        let policies: Vec<Policy> = list_policies(&store).try_collect().await.unwrap();
        assert_eq!(policies, [longer]);
        assert!(
            read_instance(&store, "nope")
                .await
                .unwrap_err()
                .is_not_found()
        );
    }
}
