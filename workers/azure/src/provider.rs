//! [`AzureDiskProvider`]: the disk port for `disk.csi.azure.com` volumes, over the ARM client
//! and the page-blob data path.
//!
//! Ids: a source [`DiskId`] is the disk's ARM resource id (the CSI `volumeHandle`). The
//! provider's own resources travel by name, because Stowage keys the vault by them and sends
//! them in messages under the id rule (no `/`): a [`SnapshotId`] is the snapshot's name in the
//! snapshot resource group, a staging disk's [`DiskId`] its name in the staging resource group
//! ([`DiskProvider::volume_handle`] gives its ARM id for the PV). Full ARM ids are accepted
//! wherever a name is (a CSI snapshot handle, say). What the port asks that ARM does not keep is kept in tags:
//! the source disk and the parent snapshot (`stowage.io/disk`, `stowage.io/parent`), the
//! backup instance and recovery point (`stowage.io/instance`, `stowage.io/recovery-point`,
//! through [`DiskProvider::snapshot_for`]), and a
//! staging disk's completed hydration (`stowage.io/hydrated-bytes`).
//!
//! **Access.** Reads need a read SAS (`beginGetAccess`), which is slow to get, so it is taken
//! once per snapshot and kept while reads use it; a reaper ends access (`endGetAccess`) when
//! a snapshot has had no read in flight for [`AzureDiskSettings::idle_end`], so a failed or
//! cancelled transfer leaves it open at most that long. A redelivered transfer on another
//! worker takes its own SAS; ending access revokes every SAS of the snapshot, so its end
//! covers what the dead attempt left. Deleting a snapshot ends its access first.
//!
//! **Operational tier only.** Taking a snapshot reads no data: [`DiskProvider::snapshot`]
//! reports the whole disk as changed (the port allows over-reporting), and the precise
//! page-range diff is computed by [`DiskProvider::get_snapshot`], which the vault transfer
//! calls. A private or oversized disk is therefore snapshotted, and refused only when its data
//! is read for the vault tier.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use stowage_disk::{
    ByteRange, DiskError, DiskFuture, DiskId, DiskInfo, DiskProvider, PieceStream, SnapshotId,
    SnapshotInfo, SnapshotOwner, merge_ranges,
};

use crate::arm::{
    Access, ArmClient, DiskResource, NewDisk, ResourceId, refuse_oversized, refuse_private,
};
use crate::data::{AccessGuard, DataSettings, MAX_IO, PageBlob, PageRange, Previous, hydrate};
use crate::error::AzureError;

/// The CSI driver of Azure managed disks.
pub const AZURE_DISK_DRIVER: &str = "disk.csi.azure.com";
/// Tag naming a snapshot's source disk (its ARM id).
pub const TAG_DISK: &str = "stowage.io/disk";
/// Tag naming a snapshot's parent (the previous snapshot of the same disk), or empty.
pub const TAG_PARENT: &str = "stowage.io/parent";
/// Tag naming the backup instance a snapshot belongs to (when the snapshot stage took it).
pub const TAG_INSTANCE: &str = "stowage.io/instance";
/// Tag naming the recovery point a snapshot belongs to (when the snapshot stage took it).
pub const TAG_RECOVERY_POINT: &str = "stowage.io/recovery-point";
/// Tag set on a staging disk once its hydration finished, to its data size in bytes.
pub const TAG_HYDRATED: &str = "stowage.io/hydrated-bytes";

/// Where the provider keeps things and how it reads them.
#[derive(Debug, Clone)]
pub struct AzureDiskSettings {
    /// The instance's snapshot resource group (in the ARM client's subscription).
    pub snapshot_group: String,
    /// The staging resource group for hydrated disks.
    pub staging_group: String,
    /// The region of both groups (staging disks are created there).
    pub region: String,
    /// SKU of staging disks (`StandardSSD_LRS`, …); ARM's default when `None`.
    pub staging_sku: Option<String>,
    /// How long a read SAS is asked for.
    pub read_access: Duration,
    /// End a read access after this long without a read in flight.
    pub idle_end: Duration,
    /// The vault tier's size limit; a larger disk is refused when its data is read.
    pub max_vault_disk_bytes: Option<u64>,
    /// Data-path tuning.
    pub data: DataSettings,
}

/// One snapshot's open read access.
struct OpenRead {
    guard: Mutex<Option<AccessGuard>>,
    blob: PageBlob,
    size: u64,
}

/// A map slot: the access once granted, and what the reaper looks at.
#[derive(Default)]
struct Slot {
    open: tokio::sync::OnceCell<OpenRead>,
    in_flight: AtomicUsize,
    /// Milliseconds since the provider started, at the last use.
    last_used: AtomicU64,
}

type Slots = Mutex<HashMap<String, Arc<Slot>>>;

/// The disk provider of Azure managed disks (see the module documentation).
pub struct AzureDiskProvider {
    arm: ArmClient,
    settings: AzureDiskSettings,
    slots: Arc<Slots>,
    started: Instant,
    reaper: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for AzureDiskProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureDiskProvider")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Drop for AzureDiskProvider {
    fn drop(&mut self) {
        self.reaper.abort();
        // Dropping the slots drops their guards, which end access in tasks of their own.
    }
}

impl AzureDiskProvider {
    /// A provider over `arm`. Must be called inside a Tokio runtime (the reaper is a task).
    pub fn new(arm: ArmClient, settings: AzureDiskSettings) -> Self {
        let slots: Arc<Slots> = Arc::default();
        let started = Instant::now();
        let reaper = tokio::spawn(reap(Arc::downgrade(&slots), started, settings.idle_end));
        Self {
            arm,
            settings,
            slots,
            started,
            reaper,
        }
    }

    /// Ends every read access now (at shutdown, or in tests).
    pub async fn end_all_access(&self) -> Result<(), AzureError> {
        let slots: Vec<Arc<Slot>> = self
            .slots
            .lock()
            .expect("slots")
            .drain()
            .map(|(_, s)| s)
            .collect();
        for slot in slots {
            end_slot(&slot).await?;
        }
        Ok(())
    }

    /// The ARM id of a snapshot given by name (in the snapshot group) or by ARM id.
    fn snapshot_rid(&self, id: &str) -> Result<ResourceId, AzureError> {
        self.resolve(id, &self.settings.snapshot_group, ResourceId::snapshot)
    }

    /// The ARM id of a disk given by name (a staging disk, see [`arm_disk_name`]) or by ARM id.
    fn disk_rid(&self, id: &str) -> Result<ResourceId, AzureError> {
        let name = arm_disk_name(id);
        self.resolve(&name, &self.settings.staging_group, ResourceId::disk)
    }

    fn resolve(
        &self,
        id: &str,
        group: &str,
        make: fn(&str, &str, &str) -> ResourceId,
    ) -> Result<ResourceId, AzureError> {
        if id.contains('/') {
            ResourceId::parse(id)
        } else if !id.is_empty() {
            Ok(make(&self.arm.settings().subscription, group, id))
        } else {
            ResourceId::parse(id)
        }
    }

    /// How the port names snapshot `rid`: its name when it is in the snapshot group, else its
    /// ARM id.
    fn snapshot_name_of(&self, rid: &ResourceId) -> SnapshotId {
        let own = ResourceId::snapshot(
            &self.arm.settings().subscription,
            &self.settings.snapshot_group,
            &rid.name,
        );
        if own.to_string().eq_ignore_ascii_case(&rid.to_string()) {
            SnapshotId(rid.name.clone())
        } else {
            SnapshotId(rid.to_string())
        }
    }

    /// The parent a snapshot's tag names, as the port names it.
    fn parent_of(&self, resource: &DiskResource) -> Option<SnapshotId> {
        resource
            .tags
            .get(TAG_PARENT)
            .filter(|p| !p.is_empty())
            .map(|p| match ResourceId::parse(p) {
                Ok(rid) => self.snapshot_name_of(&rid),
                Err(_) => SnapshotId(p.clone()),
            })
    }

    /// [`open`](Self::open) for a snapshot named by the port's id, errors as the port's.
    async fn open_snapshot(&self, id: &SnapshotId) -> Result<InFlight, DiskError> {
        let rid = self
            .snapshot_rid(id.as_str())
            .map_err(|e| invalid("snapshot", id.as_str(), e))?;
        self.open(&rid)
            .await
            .map_err(|e| disk_error("snapshot", id.as_str(), e))
    }

    /// The open read access of `id`, granting it on first use; the slot counts the caller as
    /// in flight until it drops the returned handle.
    async fn open(&self, id: &ResourceId) -> Result<InFlight, AzureError> {
        let key = id.to_string().to_ascii_lowercase();
        let slot = self
            .slots
            .lock()
            .expect("slots")
            .entry(key)
            .or_default()
            .clone();
        slot.in_flight.fetch_add(1, Ordering::SeqCst);
        let in_flight = InFlight {
            slot,
            started: self.started,
        };
        in_flight
            .slot
            .open
            .get_or_try_init(|| async {
                let resource = self.arm.get(id).await?;
                refuse_private(id, &resource)?;
                if let Some(limit) = self.settings.max_vault_disk_bytes {
                    refuse_oversized(id, &resource, limit)?;
                }
                let size = size_of(id, &resource)?;
                let guard =
                    AccessGuard::grant(&self.arm, id, Access::Read, self.settings.read_access)
                        .await?;
                let blob = PageBlob::new(guard.sas().clone(), &self.settings.data)?;
                Ok::<_, AzureError>(OpenRead {
                    guard: Mutex::new(Some(guard)),
                    blob,
                    size,
                })
            })
            .await?;
        Ok(in_flight)
    }

    async fn snapshot_info(&self, id: &ResourceId) -> Result<SnapshotInfo, AzureError> {
        let snapshot = self.arm.get(id).await?;
        let size = size_of(id, &snapshot)?;
        let disk = DiskId(snapshot.tags.get(TAG_DISK).cloned().unwrap_or_default());
        let created_at = created_at(&snapshot);
        let mut parent = snapshot
            .tags
            .get(TAG_PARENT)
            .filter(|p| !p.is_empty())
            .map(|p| ResourceId::parse(p))
            .transpose()?;
        if let Some(p) = &parent {
            match self.arm.get(p).await {
                Ok(_) => {}
                // Retention deleted the parent: this version is read in full.
                Err(e) if e.is_not_found() => parent = None,
                Err(e) => return Err(e),
            }
        }
        let changed: Vec<PageRange> = match &parent {
            Some(p) => {
                let previous = self.open(p).await?;
                let current = self.open(id).await?;
                let previous_sas = previous.read().blob.url().clone();
                current
                    .read()
                    .blob
                    .changed_since(&Previous::DiskSnapshot(previous_sas))
                    .await?
                    .changed()
            }
            None => self.open(id).await?.read().blob.page_ranges().await?,
        };
        Ok(SnapshotInfo {
            id: self.snapshot_name_of(id),
            disk,
            size,
            parent: parent.map(|p| self.snapshot_name_of(&p)),
            changed: aligned(changed, size),
            created_at,
        })
    }

    async fn take_snapshot(
        &self,
        disk: &DiskId,
        name: &str,
        owner: Option<SnapshotOwner<'_>>,
    ) -> Result<SnapshotInfo, DiskError> {
        let disk_id =
            ResourceId::parse(disk.as_str()).map_err(|e| invalid("disk", disk.as_str(), e))?;
        let group = &self.settings.snapshot_group;
        let id = ResourceId::snapshot(&self.arm.settings().subscription, group, name);
        let existing = match self.arm.get(&id).await {
            Ok(existing) => Some(existing),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(disk_error("snapshot", name, e)),
        };
        let snapshot = match existing {
            Some(existing) => {
                let of = existing
                    .tags
                    .get(TAG_DISK)
                    .map(String::as_str)
                    .unwrap_or("");
                if !of.eq_ignore_ascii_case(disk.as_str()) {
                    return Err(DiskError::Conflict {
                        what: "snapshot",
                        id: id.to_string(),
                        reason: format!(
                            "it is a snapshot of {of:?}, not of {disk}: pick another name"
                        ),
                    });
                }
                existing
            }
            None => {
                let source = self
                    .arm
                    .get(&disk_id)
                    .await
                    .map_err(|e| disk_error("disk", disk.as_str(), e))?;
                let parent = self
                    .latest_snapshot_of(disk.as_str(), name)
                    .await
                    .map_err(|e| disk_error("snapshot", name, e))?;
                let mut tags = BTreeMap::from([
                    (TAG_DISK.to_owned(), disk.to_string()),
                    (TAG_PARENT.to_owned(), parent.unwrap_or_default()),
                ]);
                if let Some(owner) = owner {
                    tags.insert(TAG_INSTANCE.to_owned(), owner.instance.to_owned());
                    tags.insert(
                        TAG_RECOVERY_POINT.to_owned(),
                        owner.recovery_point.to_owned(),
                    );
                }
                self.arm
                    .create_incremental_snapshot(group, name, &source, &tags)
                    .await
                    .map_err(|e| disk_error("snapshot", name, e))?
            }
        };
        let size = size_of(&id, &snapshot).map_err(|e| disk_error("snapshot", name, e))?;
        let parent = self.parent_of(&snapshot);
        Ok(SnapshotInfo {
            id: self.snapshot_name_of(&id),
            disk: disk.clone(),
            size,
            parent,
            // Taking a snapshot reads no data (see the module documentation): the whole disk
            // is reported, which the port allows; get_snapshot gives the precise diff.
            changed: vec![ByteRange::new(0, size)],
            created_at: created_at(&snapshot),
        })
    }

    /// The newest finished snapshot of `disk` in the snapshot group, other than `except`.
    async fn latest_snapshot_of(
        &self,
        disk: &str,
        except: &str,
    ) -> Result<Option<String>, AzureError> {
        let snapshots = self
            .arm
            .list_snapshots(&self.settings.snapshot_group)
            .await?;
        Ok(snapshots
            .into_iter()
            .filter(|s| {
                s.tags
                    .get(TAG_DISK)
                    .is_some_and(|d| d.eq_ignore_ascii_case(disk))
                    && !s.name.eq_ignore_ascii_case(except)
                    && s.properties
                        .provisioning_state
                        .as_deref()
                        .is_some_and(|p| p.eq_ignore_ascii_case("Succeeded"))
            })
            .max_by_key(created_at)
            .map(|s| s.id))
    }

    async fn read_into(
        &self,
        id: &SnapshotId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), DiskError> {
        let mut at = 0usize;
        while at < buf.len() {
            let piece = MAX_IO.min((buf.len() - at) as u64);
            let bytes = self.read_one(id, offset + at as u64, piece).await?;
            buf[at..at + piece as usize].copy_from_slice(&bytes);
            at += piece as usize;
        }
        Ok(())
    }

    /// `len` (≤ [`MAX_IO`]) bytes of snapshot `id` at `offset`, in one ranged read.
    async fn read_one(&self, id: &SnapshotId, offset: u64, len: u64) -> Result<Vec<u8>, DiskError> {
        let open = self.open_snapshot(id).await?;
        let read = open.read();
        if offset.checked_add(len).is_none_or(|end| end > read.size) {
            return Err(DiskError::OutOfBounds {
                disk: format!("snapshot {id}"),
                offset,
                len,
                size: read.size,
            });
        }
        read.blob
            .read_vec(PageRange { offset, len })
            .await
            .map_err(|e| disk_error("snapshot", id.as_str(), e))
    }

    async fn hydrate_disk(
        &self,
        name: &str,
        size: u64,
        pieces: PieceStream<'_>,
    ) -> Result<DiskInfo, AzureError> {
        let group = &self.settings.staging_group;
        let arm_name = arm_disk_name(name);
        let id = ResourceId::disk(&self.arm.settings().subscription, group, &arm_name);
        match self.arm.get(&id).await {
            Ok(done) if done.tags.get(TAG_HYDRATED) == Some(&size.to_string()) => {
                tracing::info!(disk = %id, "staging disk already hydrated (a redelivered job)");
                return Ok(DiskInfo {
                    id: DiskId(name.to_owned()),
                    size,
                });
            }
            // An earlier attempt stopped half-way: start over on a new disk.
            Ok(_) => {
                self.arm.revoke_access(&id).await?;
                self.arm.delete(&id).await?;
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        let new = NewDisk {
            location: self.settings.region.clone(),
            sku: self.settings.staging_sku.clone(),
            tags: BTreeMap::new(),
        };
        let pieces = pieces
            .map_err(|e| AzureError::Source {
                transient: e.is_transient(),
                message: e.to_string(),
            })
            .boxed();
        hydrate(
            &self.arm,
            group,
            &arm_name,
            size,
            &new,
            pieces,
            &self.settings.data,
        )
        .await?;
        self.arm
            .update_tags(
                &id,
                &BTreeMap::from([(TAG_HYDRATED.to_owned(), size.to_string())]),
            )
            .await?;
        Ok(DiskInfo {
            id: DiskId(name.to_owned()),
            size,
        })
    }

    async fn delete(&self, what: &'static str, id: &str) -> Result<(), DiskError> {
        let rid = if what == "snapshot" {
            self.snapshot_rid(id)
        } else {
            self.disk_rid(id)
        }
        .map_err(|e| invalid(what, id, e))?;
        let slot = self
            .slots
            .lock()
            .expect("slots")
            .remove(&rid.to_string().to_ascii_lowercase());
        if let Some(slot) = slot {
            end_slot(&slot).await.map_err(|e| disk_error(what, id, e))?;
        }
        // A disk or snapshot with an active SAS cannot be deleted: end it first (harmless
        // when there is none).
        self.arm
            .revoke_access(&rid)
            .await
            .map_err(|e| disk_error(what, id, e))?;
        self.arm
            .delete(&rid)
            .await
            .map_err(|e| disk_error(what, id, e))
    }
}

/// Counts a reader as in flight on its slot until dropped, which stamps the slot's last use.
struct InFlight {
    slot: Arc<Slot>,
    /// The provider's start, the origin of `Slot::last_used`.
    started: Instant,
}

impl InFlight {
    fn read(&self) -> &OpenRead {
        self.slot.open.get().expect("opened before use")
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.slot.last_used.fetch_max(now, Ordering::SeqCst);
        self.slot.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn end_slot(slot: &Slot) -> Result<(), AzureError> {
    let guard = slot
        .open
        .get()
        .and_then(|o| o.guard.lock().expect("guard").take());
    match guard {
        Some(guard) => guard.end().await,
        None => Ok(()),
    }
}

/// Ends read accesses idle for `idle` (no reader in flight, none for that long).
async fn reap(slots: Weak<Slots>, started: Instant, idle: Duration) {
    let tick = (idle / 2).max(Duration::from_millis(20));
    loop {
        tokio::time::sleep(tick).await;
        let Some(slots) = slots.upgrade() else { return };
        let now = started.elapsed().as_millis() as u64;
        let idle_ms = idle.as_millis() as u64;
        let expired: Vec<(String, Arc<Slot>)> = {
            let mut map = slots.lock().expect("slots");
            let keys: Vec<String> = map
                .iter()
                .filter(|(_, s)| {
                    s.open.initialized()
                        && s.in_flight.load(Ordering::SeqCst) == 0
                        && now.saturating_sub(s.last_used.load(Ordering::SeqCst)) >= idle_ms
                })
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| map.remove(&k).map(|s| (k, s)))
                .collect()
        };
        drop(slots);
        for (key, slot) in expired {
            if let Err(e) = end_slot(&slot).await {
                tracing::warn!(resource = key, error = %e, "could not end an idle read access; the SAS expires on its own");
            }
        }
    }
}

/// The longest name ARM gives a managed disk.
pub const MAX_DISK_NAME_LEN: usize = 80;

/// The ARM name of the staging disk the port calls `name`: the same when it fits ARM's 80
/// characters, else its first 63 characters (the restore's staging prefix, which ownership
/// checks read, is kept as far as it fits) and 16 hex digits of its BLAKE3 hash. The port keeps
/// `name` (the hydration record lists it); every call maps it the same way. ARM ids pass as
/// they are.
pub fn arm_disk_name(name: &str) -> String {
    if name.len() <= MAX_DISK_NAME_LEN || name.contains('/') {
        return name.to_owned();
    }
    let keep = MAX_DISK_NAME_LEN - 17;
    let mut head: String = name.chars().take(keep).collect();
    while head.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        head.pop();
    }
    let hash = blake3::hash(name.as_bytes()).to_hex();
    format!("{head}-{}", &hash[..16])
}

fn size_of(id: &ResourceId, resource: &DiskResource) -> Result<u64, AzureError> {
    resource.size_bytes().ok_or_else(|| AzureError::Protocol {
        operation: "get",
        resource: id.to_string(),
        detail: "no diskSizeBytes or diskSizeGB".into(),
    })
}

fn created_at(resource: &DiskResource) -> jiff::Timestamp {
    resource
        .properties
        .time_created
        .as_deref()
        .and_then(|t| t.parse().ok())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

fn aligned(ranges: Vec<PageRange>, size: u64) -> Vec<ByteRange> {
    merge_ranges(
        ranges
            .into_iter()
            .map(|r| ByteRange::new(r.offset, r.len).align_out(size))
            .filter(|r| !r.is_empty()),
    )
}

fn invalid(what: &'static str, id: &str, e: AzureError) -> DiskError {
    DiskError::Io {
        context: format!("{what} {id:?}: {e}"),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    }
}

/// The port's error for an Azure one: not found stays not found; the rest keeps its message
/// (reason and fix) and its transience.
fn disk_error(what: &'static str, id: &str, e: AzureError) -> DiskError {
    if e.is_not_found() {
        return DiskError::NotFound {
            what,
            id: id.to_owned(),
        };
    }
    let kind = if e.is_transient() {
        std::io::ErrorKind::Other
    } else if matches!(e.status(), Some(401 | 403)) {
        std::io::ErrorKind::PermissionDenied
    } else {
        std::io::ErrorKind::InvalidInput
    };
    DiskError::Io {
        context: e.to_string(),
        source: std::io::Error::new(kind, "Azure"),
    }
}

fn unsupported<T>(what: String) -> Result<T, DiskError> {
    Err(DiskError::Io {
        context: format!(
            "{what}: the Azure disk provider does not make or write disks in place (the cluster's CSI driver makes them; hydration writes staging disks)"
        ),
        source: std::io::Error::from(std::io::ErrorKind::Unsupported),
    })
}

impl DiskProvider for AzureDiskProvider {
    fn driver(&self) -> &str {
        AZURE_DISK_DRIVER
    }

    fn location_region(&self) -> Option<&str> {
        Some(&self.settings.region)
    }

    fn create_disk<'a>(&'a self, name: &'a str, _size: u64) -> DiskFuture<'a, DiskInfo> {
        Box::pin(async move { unsupported(format!("creating disk {name}")) })
    }

    fn write<'a>(&'a self, disk: &'a DiskId, _offset: u64, _data: &'a [u8]) -> DiskFuture<'a> {
        Box::pin(async move { unsupported(format!("writing disk {disk}")) })
    }

    fn read_disk<'a>(
        &'a self,
        disk: &'a DiskId,
        _offset: u64,
        _buf: &'a mut [u8],
    ) -> DiskFuture<'a> {
        Box::pin(async move { unsupported(format!("reading disk {disk} in place")) })
    }

    fn snapshot<'a>(&'a self, disk: &'a DiskId, name: &'a str) -> DiskFuture<'a, SnapshotInfo> {
        Box::pin(self.take_snapshot(disk, name, None))
    }

    fn snapshot_for<'a>(
        &'a self,
        disk: &'a DiskId,
        name: &'a str,
        owner: SnapshotOwner<'a>,
    ) -> DiskFuture<'a, SnapshotInfo> {
        Box::pin(self.take_snapshot(disk, name, Some(owner)))
    }

    fn get_snapshot<'a>(&'a self, id: &'a SnapshotId) -> DiskFuture<'a, SnapshotInfo> {
        Box::pin(async move {
            let rid = self
                .snapshot_rid(id.as_str())
                .map_err(|e| invalid("snapshot", id.as_str(), e))?;
            self.snapshot_info(&rid)
                .await
                .map_err(|e| disk_error("snapshot", id.as_str(), e))
        })
    }

    fn read_snapshot<'a>(
        &'a self,
        id: &'a SnapshotId,
        offset: u64,
        buf: &'a mut [u8],
    ) -> DiskFuture<'a> {
        Box::pin(self.read_into(id, offset, buf))
    }

    fn read_snapshot_owned<'a>(
        &'a self,
        id: &'a SnapshotId,
        offset: u64,
        len: usize,
    ) -> DiskFuture<'a, Vec<u8>> {
        Box::pin(async move {
            if len as u64 <= MAX_IO {
                // One request, its body copied once into the buffer returned.
                return self.read_one(id, offset, len as u64).await;
            }
            let mut buf = vec![0u8; len];
            self.read_into(id, offset, &mut buf).await?;
            Ok(buf)
        })
    }

    fn read_size_hint(&self) -> Option<u64> {
        Some(MAX_IO)
    }

    fn allocated_ranges<'a>(&'a self, id: &'a SnapshotId) -> DiskFuture<'a, Vec<ByteRange>> {
        Box::pin(async move {
            let open = self.open_snapshot(id).await?;
            let ranges = open
                .read()
                .blob
                .page_ranges()
                .await
                .map_err(|e| disk_error("snapshot", id.as_str(), e))?;
            Ok(aligned(ranges, open.read().size))
        })
    }

    fn create_disk_from_stream<'a>(
        &'a self,
        name: &'a str,
        size: u64,
        pieces: PieceStream<'a>,
    ) -> DiskFuture<'a, DiskInfo> {
        Box::pin(async move {
            self.hydrate_disk(name, size, pieces)
                .await
                .map_err(|e| disk_error("disk", name, e))
        })
    }

    fn delete_disk<'a>(&'a self, disk: &'a DiskId) -> DiskFuture<'a> {
        Box::pin(self.delete("disk", disk.as_str()))
    }

    fn delete_snapshot<'a>(&'a self, id: &'a SnapshotId) -> DiskFuture<'a> {
        Box::pin(self.delete("snapshot", id.as_str()))
    }

    fn volume_handle(&self, disk: &DiskId) -> String {
        match self.disk_rid(disk.as_str()) {
            Ok(rid) => rid.to_string(),
            Err(_) => disk.to_string(),
        }
    }

    fn shutdown(&self) -> DiskFuture<'_> {
        Box::pin(async move {
            self.end_all_access()
                .await
                .map_err(|e| disk_error("read access", "(all)", e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_disk_names_fit_arm() {
        assert_eq!(arm_disk_name("staging-r1-vol"), "staging-r1-vol");
        let long = format!("staging-restore-1-{}", "-2Fsubscriptions-2Fabc".repeat(10));
        let short = arm_disk_name(&long);
        assert!(short.len() <= MAX_DISK_NAME_LEN, "{short}");
        assert!(short.starts_with("staging-restore-1-"), "{short}");
        assert!(
            short.ends_with(|c: char| c.is_ascii_alphanumeric()),
            "{short}"
        );
        assert_eq!(arm_disk_name(&long), short, "the same every time");
        assert_ne!(arm_disk_name(&format!("{long}x")), short);
        let id = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/disks/d";
        assert_eq!(arm_disk_name(id), id);
    }
}
