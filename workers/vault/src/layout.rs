//! Every key in a vault is named here, and only here.
//!
//! A vault is one blob container (or one local folder). Its top level is fixed by the design:
//!
//! ```text
//! vault.json                                vault settings
//! policies/<name>.json                      backup policies
//! instances/<instance>.json                 backup instances
//! catalog/<instance>/<rp-id>.json           recovery point manifests
//! resources/<instance>/<rp-id>/<path...>    Kubernetes objects as collected
//! volumes/<volume-id>/<version>.map         extent map of one volume version
//! packs/<2-hex prefix>/<pack-id>            packs of encrypted chunks
//! jobs/<job-id>.json                        job records
//! gc/state.json                             garbage-collection state (condemned packs and maps)
//! ```
//!
//! Why one module: the vault outlives every worker version that writes to it, and geo-replication,
//! retention and verification all walk it by prefix. If each stage formatted its own keys, one
//! stray `format!` would put objects where no lister looks for them, and retention would never
//! collect them. Here a key can only be made by a function that names what it is for.
//!
//! Why validate components: a component comes from user input (instance and policy names) or
//! from another system (volume ids, job ids). A `/` would silently move an object into another
//! folder, `..` could escape a local vault folder, and an empty component makes keys that
//! different backends normalise differently. So every component must be non-empty, at most
//! [`MAX_COMPONENT_LEN`] bytes, not start with `.` (hidden names are reserved for the store's own
//! housekeeping, see [`crate::store`]), and use only ASCII letters, digits and `-_.+=@,%`.
//! `#` is refused in particular: the local-folder backend treats `name#<digits>` as an unfinished
//! upload and hides it from listings. Names that do not fit (Kubernetes allows `:` in RBAC names,
//! for example) go through [`escape_component`] first.

use std::fmt;

use stowage_schemas::domain::Tier;

/// The longest component accepted: the file-name limit of common local filesystems.
pub const MAX_COMPONENT_LEN: usize = 255;

/// Top-level folder of recovery point manifests.
pub const CATALOG: &str = "catalog";
/// Top-level folder of pack objects.
pub const PACKS: &str = "packs";
/// Top-level folder of volume extent maps.
pub const VOLUMES: &str = "volumes";
/// Top-level folder of job records.
pub const JOBS: &str = "jobs";
/// Top-level folder of restore-drill records.
pub const DRILLS: &str = "drills";
/// Top-level folder of restore-drill schedules, one per instance.
pub const DRILL_SCHEDULES: &str = "drill-schedules";
/// Top-level folder of collected Kubernetes resources.
pub const RESOURCES: &str = "resources";
/// Top-level folder of policies.
pub const POLICIES: &str = "policies";
/// Top-level folder of backup instances.
pub const INSTANCES: &str = "instances";
/// Top-level folder of what hydration stages for restores.
pub const STAGING: &str = "staging";
/// Top-level folder of chunk-index segments.
pub const INDEX: &str = "index";
/// Top-level folder of garbage-collection state.
pub const GC: &str = "gc";
/// Top-level folder of the vault's keyring (its data keys, wrapped; see [`crate::keyring`]).
pub const KEYS: &str = "keys";
/// Top-level folder of leases: who works on what right now (see [`crate::lease`]).
pub const LEASES: &str = "leases";
/// Extension of a chunk-index segment object.
pub const INDEX_EXTENSION: &str = ".idx";
/// Extension of an extent-map object.
pub const MAP_EXTENSION: &str = ".map";

/// A full object key inside a vault, such as `catalog/web/0193….json`.
///
/// Only this module builds keys from parts; the store hands back keys it listed.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobKey(String);

impl BlobKey {
    /// The key as a `/`-separated string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A key reported by the backend (listing); it is not re-validated because it already exists.
    pub(crate) fn from_listing(key: String) -> Self {
        Self(key)
    }
}

fmt_as_inner_text!(BlobKey);

/// A folder-like prefix of keys, for listing (`catalog/web`). Listing a prefix matches whole
/// components only: `catalog/web` does not match `catalog/web2/...`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// The prefix as a `/`-separated string, without a trailing `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/", self.0)
    }
}

impl fmt::Debug for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPrefix({}/)", self.0)
    }
}

/// A name that cannot be used as a key component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {what} {value:?} for a vault key: {reason}; \
     use ASCII letters, digits and -_.+=@,% only (at most {MAX_COMPONENT_LEN} bytes, \
     not starting with '.'), or pass the name through layout::escape_component"
)]
pub struct LayoutError {
    /// What the component names, e.g. "instance name".
    pub what: &'static str,
    /// The refused value.
    pub value: String,
    /// Why it was refused.
    pub reason: &'static str,
}

fn is_allowed_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+' | '=' | '@' | ',' | '%')
}

/// Checks one key component; `what` names it in the error ("instance name", "job id", ...).
pub fn validate_component(what: &'static str, value: &str) -> Result<(), LayoutError> {
    let refuse = |reason| {
        Err(LayoutError {
            what,
            value: value.to_owned(),
            reason,
        })
    };
    if value.is_empty() {
        return refuse("it is empty");
    }
    if value == "." || value == ".." {
        return refuse("'.' and '..' would name a folder, not an object");
    }
    if value.starts_with('.') {
        return refuse("names starting with '.' are reserved for the store's housekeeping");
    }
    if value.len() > MAX_COMPONENT_LEN {
        return refuse("it is longer than a file name may be");
    }
    if value.contains('/') {
        return refuse("'/' separates key components and would move the object to another folder");
    }
    if value.contains('#') {
        return refuse("'#' marks unfinished uploads in the local-folder backend");
    }
    if !value.chars().all(is_allowed_char) {
        return refuse("it contains a character outside the allowed set");
    }
    Ok(())
}

/// Checks a component that is an id (instance name, recovery-point, restore or job id): the
/// component rule above, and then the one id rule of [`stowage_schemas::id`] (ASCII letters,
/// digits, `-`, `_`, `.`, at most 253 bytes, starting and ending with a letter or digit), the
/// same rule the CLI and the message decoder apply, so that an id accepted anywhere fits here.
pub fn validate_id(what: &'static str, value: &str) -> Result<(), LayoutError> {
    validate_component(what, value)?;
    stowage_schemas::id::validate(value).map_err(|e| LayoutError {
        what,
        value: e.value,
        reason: e.reason,
    })
}

/// Turns any name into a valid component, reversibly: allowed characters other than `%` stay,
/// every other byte becomes `%XX` (upper-case hex), and a leading `.` becomes `%2E`.
/// An empty name becomes `%` followed by nothing, i.e. `%`, so it still round-trips.
pub fn escape_component(raw: &str) -> String {
    if raw.is_empty() {
        return "%".to_owned();
    }
    let mut escaped = String::with_capacity(raw.len());
    for (index, byte) in raw.bytes().enumerate() {
        let c = byte as char;
        let keep = byte.is_ascii() && is_allowed_char(c) && c != '%' && !(index == 0 && c == '.');
        if keep {
            escaped.push(c);
        } else {
            escaped.push_str(&format!("%{byte:02X}"));
        }
    }
    escaped
}

/// Reverses [`escape_component`]; `None` if `escaped` was not produced by it.
pub fn unescape_component(escaped: &str) -> Option<String> {
    if escaped == "%" {
        return Some(String::new());
    }
    let bytes = escaped.as_bytes();
    let mut raw = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = escaped.get(index + 1..index + 3)?;
            raw.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            raw.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(raw).ok()
}

fn key(parts: &[&str]) -> BlobKey {
    BlobKey(parts.join("/"))
}

fn prefix(parts: &[&str]) -> KeyPrefix {
    KeyPrefix(parts.join("/"))
}

/// `catalog`: every recovery-point manifest of every instance.
pub fn catalog() -> KeyPrefix {
    prefix(&[CATALOG])
}

/// `vault.json`: the vault's settings.
pub fn vault_settings() -> BlobKey {
    key(&[VAULT_SETTINGS])
}

/// `keys/keyring.json`: the vault's data keys, wrapped under the operator's key-encryption key
/// (see [`crate::keyring`]). Not sealed: it is what opens the seal.
pub fn keyring() -> BlobKey {
    key(&[KEYS, "keyring.json"])
}

/// `policies/<name>.json`.
pub fn policy(name: &str) -> Result<BlobKey, LayoutError> {
    validate_component("policy name", name)?;
    Ok(key(&[POLICIES, &format!("{name}.json")]))
}

/// `policies/`: every policy.
pub fn policies() -> KeyPrefix {
    prefix(&[POLICIES])
}

/// `instances/<instance>.json`.
pub fn instance(instance: &str) -> Result<BlobKey, LayoutError> {
    validate_id("backup instance name", instance)?;
    Ok(key(&[INSTANCES, &format!("{instance}.json")]))
}

/// `instances/`: every backup instance.
pub fn instances() -> KeyPrefix {
    prefix(&[INSTANCES])
}

/// `catalog/<instance>/<rp-id>.json`: a recovery point manifest.
pub fn recovery_point(instance: &str, rp_id: &str) -> Result<BlobKey, LayoutError> {
    validate_id("backup instance name", instance)?;
    validate_id("recovery point id", rp_id)?;
    Ok(key(&[CATALOG, instance, &format!("{rp_id}.json")]))
}

/// `catalog/<instance>`: every recovery point manifest of one instance.
pub fn recovery_points(instance: &str) -> Result<KeyPrefix, LayoutError> {
    validate_id("backup instance name", instance)?;
    Ok(prefix(&[CATALOG, instance]))
}

/// `resources/<instance>/<rp-id>/<path...>`: one collected object (or file) of a recovery point.
/// Each element of `path` is one component; escape Kubernetes names with [`escape_component`].
pub fn resource(instance: &str, rp_id: &str, path: &[&str]) -> Result<BlobKey, LayoutError> {
    validate_id("backup instance name", instance)?;
    validate_id("recovery point id", rp_id)?;
    if path.is_empty() {
        return Err(LayoutError {
            what: "resource path",
            value: String::new(),
            reason: "it is empty; a resource needs at least a file name under the recovery point",
        });
    }
    let mut parts = vec![RESOURCES, instance, rp_id];
    for part in path {
        validate_component("resource path component", part)?;
        parts.push(part);
    }
    Ok(key(&parts))
}

/// `resources/<instance>/<rp-id>`: every resource object of a recovery point.
pub fn resources(instance: &str, rp_id: &str) -> Result<KeyPrefix, LayoutError> {
    validate_id("backup instance name", instance)?;
    validate_id("recovery point id", rp_id)?;
    Ok(prefix(&[RESOURCES, instance, rp_id]))
}

/// `volumes/<volume-id>/<version>.map`: the extent map of one volume version.
pub fn volume_version(volume_id: &str, version: &str) -> Result<BlobKey, LayoutError> {
    validate_component("volume id", volume_id)?;
    validate_component("volume version", version)?;
    Ok(key(&[
        VOLUMES,
        volume_id,
        &format!("{version}{MAP_EXTENSION}"),
    ]))
}

/// `volumes/<volume-id>`: every version of one volume.
pub fn volume_versions(volume_id: &str) -> Result<KeyPrefix, LayoutError> {
    validate_component("volume id", volume_id)?;
    Ok(prefix(&[VOLUMES, volume_id]))
}

/// The version named by a key made by [`volume_version`], or `None` for any other key.
pub fn version_from_key(key: &BlobKey) -> Option<&str> {
    volume_and_version_from_key(key).map(|(_, version)| version)
}

/// `packs/<first two hex digits>/<pack-id>`: one pack object. The two-digit fan-out keeps any
/// one local folder (and any one listing page) small.
pub fn pack(pack_id: &str) -> Result<BlobKey, LayoutError> {
    validate_component("pack id", pack_id)?;
    if pack_id.len() < 2
        || !pack_id
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(LayoutError {
            what: "pack id",
            value: pack_id.to_owned(),
            reason: "a pack id is lower-case hex of at least two digits",
        });
    }
    Ok(key(&[PACKS, &pack_id[..2], pack_id]))
}

/// `packs`: every pack.
pub fn packs() -> KeyPrefix {
    prefix(&[PACKS])
}

/// The pack id named by a key made by [`pack`], or `None` for any other key.
pub fn pack_id_from_key(key: &BlobKey) -> Option<&str> {
    let mut parts = key.as_str().split('/');
    let (top, fan_out, id) = (parts.next()?, parts.next()?, parts.next()?);
    (top == PACKS
        && parts.next().is_none()
        && id.len() >= 2
        && id.starts_with(fan_out)
        && fan_out.len() == 2)
        .then_some(id)
}

/// A resources key as stored in a recovery-point manifest (`resources/<instance>/<rp>/...`),
/// checked component by component so a damaged manifest cannot point outside `resources/`.
pub fn parse_resource_key(text: &str) -> Result<BlobKey, LayoutError> {
    let mut parts = text.split('/');
    if parts.next() != Some(RESOURCES) {
        return Err(LayoutError {
            what: "resources key",
            value: text.to_owned(),
            reason: "it must start with resources/",
        });
    }
    let rest: Vec<&str> = parts.collect();
    if rest.len() < 3 {
        return Err(LayoutError {
            what: "resources key",
            value: text.to_owned(),
            reason: "it must name an instance, a recovery point and a file",
        });
    }
    resource(rest[0], rest[1], &rest[2..])
}

/// The file name of the staged resources object under `staging/<restore-id>/`.
pub const STAGED_RESOURCES: &str = "resources";

/// Whether the object at `key` is sealed (encrypted and authenticated under the vault key, see
/// [`crate::seal`]): everything a recovery point holds — its manifests and retention record
/// (`catalog/`), its resources object and snapshot report (`resources/`), the extent maps of
/// its volumes (`volumes/`) — and everything staged for a restore (`staging/`: the resources
/// copy, and the hydration and completion records, which makes the record a restore's
/// ownership of its staging disks rests on unforgeable without the key). Settings, policies,
/// instances, job records, chunk-index segments and the collector's state are not: they hold no
/// cluster data and are read by commands without the key. Packs are not sealed as objects:
/// every chunk in them is sealed on its own ([`crate::chunk`]).
pub fn is_sealed(key: &BlobKey) -> bool {
    matches!(
        key.as_str().split('/').next(),
        Some(CATALOG | RESOURCES | VOLUMES | STAGING)
    )
}

/// `staging/<restore-id>/<file>`: what a restore-hydration stages for the restore stage.
pub fn staging(restore_id: &str, file: &str) -> Result<BlobKey, LayoutError> {
    validate_id("restore id", restore_id)?;
    validate_component("staging file", file)?;
    Ok(key(&[STAGING, restore_id, file]))
}

/// `staging/<restore-id>`: everything staged for one restore.
pub fn staging_prefix(restore_id: &str) -> Result<KeyPrefix, LayoutError> {
    validate_id("restore id", restore_id)?;
    Ok(prefix(&[STAGING, restore_id]))
}

/// `staging`: every restore's staging area.
pub fn staging_areas() -> KeyPrefix {
    prefix(&[STAGING])
}

/// `index/<segment-id>.idx`: one chunk-index segment, written create-only by the job that
/// packed the chunks it lists (see [`crate::index`]).
pub fn index_segment(segment_id: &str) -> Result<BlobKey, LayoutError> {
    validate_component("index segment id", segment_id)?;
    Ok(key(&[INDEX, &format!("{segment_id}{INDEX_EXTENSION}")]))
}

/// `leases/index.json`: held by whoever compacts or rewrites chunk-index segments (the garbage
/// collector), so two collectors never merge a segment the other is rewriting.
pub fn index_lease() -> BlobKey {
    key(&[LEASES, &format!("index{JSON_EXTENSION}")])
}

/// The id of the segment that merges the segments `inputs` (sorted): `cx-<32 hex digits>`,
/// derived from them, so a compaction that crashes and runs again writes the same segment.
pub fn compacted_segment_id(inputs: &[&str]) -> String {
    let hash = blake3::hash(inputs.join("/").as_bytes());
    format!("cx-{}", &hash.to_hex()[..32])
}

/// `index`: every chunk-index segment.
pub fn index_segments() -> KeyPrefix {
    prefix(&[INDEX])
}

/// `catalog/<instance>/<rp-id>.<tier>.json`: the manifest of a recovery point in one data tier
/// (`vault`, `secondary`), written create-only and last, so its presence means "complete".
pub fn recovery_point_tier(
    instance: &str,
    rp_id: &str,
    tier: &str,
) -> Result<BlobKey, LayoutError> {
    validate_id("instance", instance)?;
    validate_id("recovery point id", rp_id)?;
    validate_component("tier", tier)?;
    Ok(key(&[CATALOG, instance, &format!("{rp_id}.{tier}.json")]))
}

/// `catalog/<instance>/<rp-id>.retention.json`: what retention decided and deleted for one
/// recovery point, updated with compare-and-swap (see `stowage_stages::retention`).
pub fn retention_record(instance: &str, rp_id: &str) -> Result<BlobKey, LayoutError> {
    validate_id("instance", instance)?;
    validate_id("recovery point id", rp_id)?;
    Ok(key(&[
        CATALOG,
        instance,
        &format!("{rp_id}.{RETENTION_SUFFIX}.json"),
    ]))
}

/// Suffix naming retention records among an instance's catalog objects.
pub const RETENTION_SUFFIX: &str = "retention";

/// `catalog/<instance>/<rp-id>.deleted.json`: the soft-delete record of a recovery point
/// (`stowage rp delete`; see `catalog::soft_delete`).
pub fn soft_delete_record(instance: &str, rp_id: &str) -> Result<BlobKey, LayoutError> {
    // The same form as a tier manifest's key, with the suffix in the tier's place.
    recovery_point_tier(instance, rp_id, SOFT_DELETE_SUFFIX)
}

/// Suffix naming soft-delete records among an instance's catalog objects.
pub const SOFT_DELETE_SUFFIX: &str = "deleted";

/// What a key listed under [`recovery_points`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogEntry<'a> {
    /// `<rp-id>.json`: the RP manifest.
    Manifest(&'a str),
    /// `<rp-id>.<tier>.json`: a tier manifest (`vault`, `secondary`).
    Tier(&'a str, &'a str),
    /// `<rp-id>.retention.json`: a retention record.
    Retention(&'a str),
    /// `<rp-id>.deleted.json`: a soft-delete record.
    SoftDeleted(&'a str),
}

/// Parses a key listed under [`recovery_points`]`(instance)`; `None` for anything else.
/// Tier names are the known ones (`vault`, `secondary`), so an RP id containing dots still parses.
pub fn parse_catalog_key<'a>(instance: &str, key: &'a BlobKey) -> Option<CatalogEntry<'a>> {
    let rest = key
        .as_str()
        .strip_prefix(CATALOG)?
        .strip_prefix('/')?
        .strip_prefix(instance)?
        .strip_prefix('/')?;
    let stem = rest.strip_suffix(".json").filter(|s| !s.contains('/'))?;
    for tier in [TIER_VAULT, TIER_SECONDARY] {
        if let Some(rp) = stem.strip_suffix(&format!(".{tier}")) {
            return (!rp.is_empty()).then_some(CatalogEntry::Tier(rp, tier));
        }
    }
    if let Some(rp) = stem.strip_suffix(&format!(".{RETENTION_SUFFIX}")) {
        return (!rp.is_empty()).then_some(CatalogEntry::Retention(rp));
    }
    if let Some(rp) = stem.strip_suffix(&format!(".{SOFT_DELETE_SUFFIX}")) {
        return (!rp.is_empty()).then_some(CatalogEntry::SoftDeleted(rp));
    }
    (!stem.is_empty()).then_some(CatalogEntry::Manifest(stem))
}

/// `volumes`: every extent map of every volume.
pub fn all_volumes() -> KeyPrefix {
    prefix(&[VOLUMES])
}

/// The volume id and version named by a key made by [`volume_version`], or `None`.
pub fn volume_and_version_from_key(key: &BlobKey) -> Option<(&str, &str)> {
    let mut parts = key.as_str().split('/');
    let (top, volume, file) = (parts.next()?, parts.next()?, parts.next()?);
    if top != VOLUMES || parts.next().is_some() {
        return None;
    }
    let version = file.strip_suffix(MAP_EXTENSION).filter(|v| !v.is_empty())?;
    Some((volume, version))
}

/// `leases/transfer/<volume-id>.json`: the lease a vault transfer holds on a volume while it
/// packs the volume's chunks (see [`crate::lease`]). `volume_id` is already an escaped component.
pub fn transfer_lease(volume_id: &str) -> Result<BlobKey, LayoutError> {
    validate_component("volume id", volume_id)?;
    Ok(key(&[
        LEASES,
        "transfer",
        &format!("{volume_id}{JSON_EXTENSION}"),
    ]))
}

/// The file name of the garbage collector's record inside [`GC`].
const GC_STATE_FILE: &str = "state.json";

/// `gc/state.json`: the garbage collector's record of condemned and deleted packs and maps,
/// updated with compare-and-swap (see [`crate::gc`]).
pub fn gc_state() -> BlobKey {
    key(&[GC, GC_STATE_FILE])
}

/// `jobs/<job-id>.json`: a job record, updated with compare-and-swap.
pub fn job(job_id: &str) -> Result<BlobKey, LayoutError> {
    validate_id("job id", job_id)?;
    Ok(key(&[JOBS, &format!("{job_id}.json")]))
}

/// `jobs/<job-id>.request`: the message that started a job, kept by `stowage serve` so that
/// it can resubmit the job after a restart (its in-process queues die with it). Not a record:
/// listings of records skip it (it does not end in `.json`).
pub fn job_request(job_id: &str) -> Result<BlobKey, LayoutError> {
    validate_id("job id", job_id)?;
    Ok(key(&[JOBS, &format!("{job_id}.request")]))
}

/// `jobs`: every job record.
pub fn jobs() -> KeyPrefix {
    prefix(&[JOBS])
}

/// `drills/<drill-id>.json`: the record of one restore drill (create-only).
pub fn drill(drill_id: &str) -> Result<BlobKey, LayoutError> {
    validate_id("drill id", drill_id)?;
    Ok(key(&[DRILLS, &format!("{drill_id}.json")]))
}

/// `drills`: every drill record.
pub fn drills() -> KeyPrefix {
    prefix(&[DRILLS])
}

/// The drill id named by a key listed under [`drills`], or `None` for any other object there.
pub fn drill_id_from_key(key: &BlobKey) -> Option<&str> {
    id_from_key(key, DRILLS, JSON_EXTENSION)
}

/// `drill-schedules/<instance>.json`: an instance's restore-drill schedule.
pub fn drill_schedule(instance: &str) -> Result<BlobKey, LayoutError> {
    validate_id("instance name", instance)?;
    Ok(key(&[DRILL_SCHEDULES, &format!("{instance}.json")]))
}

/// `drill-schedules`: every drill schedule.
pub fn drill_schedules() -> KeyPrefix {
    prefix(&[DRILL_SCHEDULES])
}

/// The instance named by a key listed under [`drill_schedules`].
pub fn drill_schedule_from_key(key: &BlobKey) -> Option<&str> {
    id_from_key(key, DRILL_SCHEDULES, JSON_EXTENSION)
}

/// The `.json` ending of every JSON document a vault holds (settings, records, manifests).
pub const JSON_EXTENSION: &str = ".json";

/// The job id named by a key listed under [`jobs`] (`jobs/<job-id>.json`), or `None` for any
/// other object there.
pub fn job_id_from_key(key: &BlobKey) -> Option<&str> {
    id_from_key(key, JOBS, JSON_EXTENSION)
}

/// The segment id named by a key listed under [`index_segments`] (`index/<segment-id>.idx`),
/// or `None` for any other object there.
pub fn segment_id_from_key(key: &BlobKey) -> Option<&str> {
    id_from_key(key, INDEX, INDEX_EXTENSION)
}

/// The `<id>` of a key `<folder>/<id><extension>`, or `None` for any other key.
fn id_from_key<'k>(key: &'k BlobKey, folder: &str, extension: &str) -> Option<&'k str> {
    let file = key.as_str().strip_prefix(folder)?.strip_prefix('/')?;
    file.strip_suffix(extension)
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// The id of the segment that replaces segment `old_id` once garbage collection dropped the
/// entries of deleted packs, keeping `kept` entries: `gc-<32 hex digits>`, derived from both, so
/// a collector that crashes and runs again writes the same segment (create-only) again.
pub fn rewritten_segment_id(old_id: &str, kept: usize) -> String {
    let hash = blake3::hash(format!("{old_id}/{kept}").as_bytes());
    format!("gc-{}", &hash.to_hex()[..32])
}

/// The instance named by a key listed under [`catalog`] (`catalog/<instance>/...`), or `None`.
pub fn instance_from_catalog_key(key: &BlobKey) -> Option<&str> {
    let mut parts = key.as_str().split('/');
    (parts.next()? == CATALOG).then_some(())?;
    parts.next().filter(|instance| !instance.is_empty())
}

/// The tier name in a tier manifest's key (`catalog/<instance>/<rp-id>.<tier>.json`).
pub fn tier_name(tier: Tier) -> &'static str {
    match tier {
        Tier::Operational => "operational",
        Tier::Vault => TIER_VAULT,
        Tier::Secondary => TIER_SECONDARY,
    }
}

/// Tier name of vault-tier manifests.
pub const TIER_VAULT: &str = "vault";
/// Tier name of secondary-tier manifests.
pub const TIER_SECONDARY: &str = "secondary";

/// Folder inside a local vault that holds the compare-and-swap lock files (see
/// `store/local.rs`). Its leading `.` makes it unnameable through this module, so no vault key
/// can collide with it.
pub const LOCAL_LOCK_DIR: &str = ".stowage-locks";

/// The lock file of compare-and-swap stripe `stripe`, inside [`LOCAL_LOCK_DIR`].
pub fn local_lock_file(stripe: usize) -> String {
    format!("{stripe:03}.lock")
}

/// Folder at the top of a vault that holds the temporary objects of streamed writes while they
/// upload (see `store/stream.rs`). Its leading `.` makes it unnameable through this module, so
/// no vault key or listing reaches it.
pub const STREAM_TEMP_DIR: &str = ".stowage-tmp";

/// `.stowage-tmp/<name>`: the temporary object of one streamed write.
pub fn stream_temp(name: &str) -> String {
    format!("{STREAM_TEMP_DIR}/{name}")
}

/// The name of the vault settings object at the top of a vault.
pub const VAULT_SETTINGS: &str = "vault.json";

/// Every name a vault holds at its top level: the settings object and each prefix above.
/// Anything else at the top of a container (names starting with `.` aside: the store's own
/// housekeeping) is not Stowage data, which is how `stowage preflight` tells a vault from a
/// container another application uses. **A new top-level prefix must be added here.**
pub const TOP_LEVEL_NAMES: &[&str] = &[
    VAULT_SETTINGS,
    POLICIES,
    INSTANCES,
    CATALOG,
    RESOURCES,
    VOLUMES,
    PACKS,
    INDEX,
    JOBS,
    DRILLS,
    DRILL_SCHEDULES,
    STAGING,
    GC,
    KEYS,
    LEASES,
];

/// Whether `name` (one path component at a vault's top level) belongs to a vault: one of
/// [`TOP_LEVEL_NAMES`] or a hidden housekeeping name.
pub fn is_vault_top_level(name: &str) -> bool {
    name.starts_with('.') || TOP_LEVEL_NAMES.contains(&name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_top_level_key_is_a_vault_name() {
        let keys = [
            vault_settings().to_string(),
            policy("p").unwrap().to_string(),
            instance("i").unwrap().to_string(),
            recovery_point("i", "rp").unwrap().to_string(),
            resource("i", "rp", &["r.jsonl"]).unwrap().to_string(),
            volume_version("v", "s").unwrap().to_string(),
            pack("00aa").unwrap().to_string(),
            index_segment("s").unwrap().to_string(),
            job("j").unwrap().to_string(),
            staging("r", "resources").unwrap().to_string(),
            keyring().to_string(),
        ];
        for key in keys {
            let top = key.split('/').next().unwrap();
            assert!(
                is_vault_top_level(top),
                "{key}: {top} is not in TOP_LEVEL_NAMES"
            );
        }
        assert!(is_vault_top_level(".stowage-locks"));
        assert!(!is_vault_top_level("backup.tar"));
        assert!(!is_vault_top_level("catalogue"));
    }

    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        assert_eq!(vault_settings().as_str(), "vault.json");
        assert_eq!(policy("daily").unwrap().as_str(), "policies/daily.json");
        assert_eq!(instance("web").unwrap().as_str(), "instances/web.json");
        assert_eq!(
            recovery_point("web", "rp-1").unwrap().as_str(),
            "catalog/web/rp-1.json"
        );
        assert_eq!(
            resource("web", "rp-1", &["namespaces", "default", "pod.json"])
                .unwrap()
                .as_str(),
            "resources/web/rp-1/namespaces/default/pod.json"
        );
        assert_eq!(
            volume_version("vol-a", "v0003").unwrap().as_str(),
            "volumes/vol-a/v0003.map"
        );
        assert_eq!(pack("ab12ef").unwrap().as_str(), "packs/ab/ab12ef");
        assert_eq!(job("job-7").unwrap().as_str(), "jobs/job-7.json");
        assert_eq!(recovery_points("web").unwrap().as_str(), "catalog/web");
        assert_eq!(
            resources("web", "rp-1").unwrap().as_str(),
            "resources/web/rp-1"
        );
        assert_eq!(volume_versions("vol-a").unwrap().as_str(), "volumes/vol-a");
        assert_eq!(packs().as_str(), "packs");
        assert_eq!(jobs().as_str(), "jobs");
        assert_eq!(policies().as_str(), "policies");
        assert_eq!(instances().as_str(), "instances");
    }

    #[test]
    fn refuses_components_that_would_move_or_hide_objects() {
        for (bad, reason_fragment) in [
            ("", "empty"),
            (".", "folder"),
            ("..", "folder"),
            (".hidden", "reserved"),
            ("a/b", "'/'"),
            ("up#1", "'#'"),
            ("sp ace", "outside the allowed set"),
            ("colon:name", "outside the allowed set"),
            ("ünï", "outside the allowed set"),
        ] {
            let error = instance(bad).unwrap_err();
            assert_eq!(error.what, "backup instance name");
            assert!(
                error.reason.contains(reason_fragment),
                "{bad:?}: {}",
                error.reason
            );
            let message = error.to_string();
            assert!(message.contains("escape_component"), "{message}");
        }
        let long = "a".repeat(MAX_COMPONENT_LEN + 1);
        assert!(policy(&long).is_err());
        assert!(policy(&"a".repeat(MAX_COMPONENT_LEN)).is_ok());
        // Ids follow the stricter id rule of stowage_schemas::id.
        assert!(job(&"a".repeat(253)).is_ok());
        assert!(job(&"a".repeat(254)).is_err());
        for bad in ["x-", "a+b", "a@b", "-x", "a%2F"] {
            assert!(job(bad).is_err(), "{bad}");
            assert!(instance(bad).is_err(), "{bad}");
            assert!(recovery_point("web", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_component_of_a_multi_part_key_is_checked() {
        assert_eq!(
            recovery_point("web", "..").unwrap_err().what,
            "recovery point id"
        );
        assert_eq!(
            resource("web", "rp", &["ok", "a/b"]).unwrap_err().what,
            "resource path component"
        );
        assert_eq!(
            resource("web", "rp", &[]).unwrap_err().what,
            "resource path"
        );
        assert_eq!(volume_version("v", "").unwrap_err().what, "volume version");
        assert_eq!(pack("AB12").unwrap_err().what, "pack id");
        assert_eq!(pack("a").unwrap_err().what, "pack id");
    }

    #[test]
    fn escaping_makes_any_name_valid_and_round_trips() {
        for raw in [
            "system:controller:job-controller",
            "a/b",
            "..",
            ".dot",
            "",
            "100%",
            "ünïcode name#1",
            "plain-name.v1",
        ] {
            let escaped = escape_component(raw);
            validate_component("test", &escaped)
                .unwrap_or_else(|e| panic!("{raw:?} escaped to an invalid {escaped:?}: {e}"));
            assert_eq!(unescape_component(&escaped).as_deref(), Some(raw));
        }
        assert_eq!(escape_component("plain-name.v1"), "plain-name.v1");
        assert_eq!(escape_component("a:b"), "a%3Ab");
        assert_eq!(unescape_component("%G1"), None);
    }

    #[test]
    fn keys_parse_back() {
        let map = volume_version("vol-a", "v7").unwrap();
        assert_eq!(version_from_key(&map), Some("v7"));
        assert_eq!(version_from_key(&job("x").unwrap()), None);
        let pack_key = pack("0fab").unwrap();
        assert_eq!(pack_id_from_key(&pack_key), Some("0fab"));
        assert_eq!(
            pack_id_from_key(&BlobKey::from_listing("packs/aa/bb".into())),
            None
        );
        assert_eq!(pack_id_from_key(&job("x").unwrap()), None);
        assert_eq!(volume_and_version_from_key(&map), Some(("vol-a", "v7")));
    }

    #[test]
    fn catalog_keys_parse_back() {
        let parse = |k: BlobKey| parse_catalog_key("web", &k).map(|e| format!("{e:?}"));
        assert_eq!(
            parse(recovery_point("web", "rp.1").unwrap()).as_deref(),
            Some("Manifest(\"rp.1\")")
        );
        assert_eq!(
            parse(recovery_point_tier("web", "rp.1", "vault").unwrap()).as_deref(),
            Some("Tier(\"rp.1\", \"vault\")")
        );
        assert_eq!(
            parse(retention_record("web", "rp-2").unwrap()).as_deref(),
            Some("Retention(\"rp-2\")")
        );
        assert_eq!(parse(recovery_point("web2", "rp").unwrap()), None);
        assert_eq!(
            retention_record("web", "r").unwrap().as_str(),
            "catalog/web/r.retention.json"
        );
        assert_eq!(gc_state().as_str(), "gc/state.json");
    }
}
