//! The data path: a managed disk's or snapshot's bytes as a page blob behind a SAS URL.
//!
//! Reads list the written pages (Get Page Ranges) or the pages changed since an earlier
//! snapshot (the same call with `prevsnapshot` or `x-ms-previous-snapshot-url`, which
//! `azure_storage_blob` 1.1 does not offer, so it is sent through the same `azure_core`
//! pipeline here) and fetch them in ≤ 4 MiB ranged reads, a bounded number at a time, so a
//! transfer holds at most `concurrency × 4 MiB`. Writes are Put Page calls of ≤ 4 MiB (the
//! service's limit), all-zero pages skipped because an upload disk starts zeroed.

use std::time::Duration;

use azure_core::http::{
    ClientOptions, Context, Method, Pipeline, PipelineSendOptions, Request, RequestContent, Url,
};
use azure_storage_blob::models::{BlobClientDownloadOptions, HttpRange, PageList};
use azure_storage_blob::{BlobClient, BlobClientOptions, PageBlobClient, PageBlobClientOptions};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt, stream};

use crate::arm::{Access, ArmClient, DiskResource, NewDisk, ResourceId, SasUrl};
use crate::error::{AzureError, Result, ServiceError};
use crate::transport::{RetrySettings, client_options, http_client};

/// Page blobs are written in 512-byte pages.
pub const PAGE_SIZE: u64 = 512;
/// The most one Put Page may write, and the size of one ranged read.
pub const MAX_IO: u64 = 4 << 20;
/// The x-ms-version of the diff request (`x-ms-previous-snapshot-url` needs 2019-04-19 or later).
const DIFF_VERSION: &str = "2021-08-06";

/// A half-open byte range `[offset, offset + len)` of a page blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PageRange {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl PageRange {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Sorts and merges touching or overlapping ranges.
pub fn merge(mut ranges: Vec<PageRange>) -> Vec<PageRange> {
    ranges.sort();
    let mut out: Vec<PageRange> = Vec::with_capacity(ranges.len());
    for r in ranges.into_iter().filter(|r| r.len > 0) {
        match out.last_mut() {
            Some(last) if r.offset <= last.end() => {
                let end = last.end().max(r.end());
                last.len = end - last.offset;
            }
            _ => out.push(r),
        }
    }
    out
}

/// The earlier version a diff is taken against.
#[derive(Debug, Clone)]
pub enum Previous {
    /// A snapshot of the same blob, by its timestamp (`prevsnapshot`).
    BlobSnapshot(String),
    /// An earlier managed-disk snapshot, by its own read SAS (`x-ms-previous-snapshot-url`).
    DiskSnapshot(SasUrl),
}

/// What changed between two versions: pages written, and pages cleared (now zero).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageDiff {
    /// Pages written since the previous version.
    pub written: Vec<PageRange>,
    /// Pages cleared since the previous version; they read as zeros.
    pub cleared: Vec<PageRange>,
}

impl PageDiff {
    /// Every changed range, written or cleared, merged.
    pub fn changed(&self) -> Vec<PageRange> {
        merge(self.written.iter().chain(&self.cleared).copied().collect())
    }
}

/// Tuning of the data path.
#[derive(Debug, Clone)]
pub struct DataSettings {
    /// Ranged reads or Put Page calls in flight at once (memory ≤ this × 4 MiB).
    pub concurrency: usize,
    /// Retries of single requests.
    pub retry: RetrySettings,
}

impl Default for DataSettings {
    fn default() -> Self {
        Self {
            concurrency: 8,
            retry: RetrySettings::default(),
        }
    }
}

/// `ClientOptions` with this crate's transport (rustls on ring) and retries, for any other
/// `azure_storage_blob` client (tests create Azurite containers with it).
pub fn blob_client_options(retry: &RetrySettings) -> Result<ClientOptions> {
    Ok(client_options(&http_client()?, retry))
}

/// One page blob behind a SAS URL: a disk, a snapshot, or (in tests) an Azurite blob.
pub struct PageBlob {
    url: SasUrl,
    blob: BlobClient,
    pages: PageBlobClient,
    pipeline: Pipeline,
    concurrency: usize,
}

impl PageBlob {
    /// A client of the blob at `url` (the SAS carries the authorisation).
    pub fn new(url: SasUrl, settings: &DataSettings) -> Result<Self> {
        let options = blob_client_options(&settings.retry)?;
        let config = |e: azure_core::Error| AzureError::Config(format!("page blob {url}: {e}"));
        let blob = BlobClient::new(
            url.expose().clone(),
            None,
            Some(BlobClientOptions {
                client_options: options.clone(),
                ..Default::default()
            }),
        )
        .map_err(config)?;
        let pages = PageBlobClient::new(
            url.expose().clone(),
            None,
            Some(PageBlobClientOptions {
                client_options: options.clone(),
                ..Default::default()
            }),
        )
        .map_err(config)?;
        let pipeline = Pipeline::new(
            option_env!("CARGO_PKG_NAME"),
            option_env!("CARGO_PKG_VERSION"),
            options,
            Vec::new(),
            Vec::new(),
            None,
        );
        Ok(Self {
            url,
            blob,
            pages,
            pipeline,
            concurrency: settings.concurrency.max(1),
        })
    }

    /// The blob's SAS URL.
    pub fn url(&self) -> &SasUrl {
        &self.url
    }

    fn error(&self, operation: &'static str, e: azure_core::Error) -> AzureError {
        storage_error(operation, &self.url, e)
    }

    /// The pages that hold data (a first, full version reads only these).
    pub async fn page_ranges(&self) -> Result<Vec<PageRange>> {
        let mut pager = self
            .pages
            .list_page_ranges(None)
            .map_err(|e| self.error("get page ranges", e))?;
        let mut ranges = Vec::new();
        while let Some(page) = pager.next().await {
            let list: PageList = page
                .map_err(|e| self.error("get page ranges", e))?
                .into_model()
                .map_err(|e| self.error("get page ranges", e))?;
            ranges.extend(
                list.page_ranges
                    .iter()
                    .filter_map(|r| to_range(r.start, r.end)),
            );
        }
        Ok(merge(ranges))
    }

    /// The pages changed since `previous` (Get Page Ranges with `prevsnapshot` or
    /// `x-ms-previous-snapshot-url`), following `NextMarker`.
    pub async fn changed_since(&self, previous: &Previous) -> Result<PageDiff> {
        let operation = "get page ranges diff";
        let mut diff = PageDiff::default();
        let mut marker: Option<String> = None;
        loop {
            let mut url: Url = self.url.expose().clone();
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("comp", "pagelist");
                if let Previous::BlobSnapshot(snapshot) = previous {
                    q.append_pair("prevsnapshot", snapshot);
                }
                if let Some(m) = &marker {
                    q.append_pair("marker", m);
                }
            }
            let mut request = Request::new(url, Method::Get);
            request.insert_header("x-ms-version", DIFF_VERSION);
            request.insert_header("accept", "application/xml");
            if let Previous::DiskSnapshot(prev) = previous {
                request.insert_header(
                    "x-ms-previous-snapshot-url",
                    prev.expose().as_str().to_owned(),
                );
            }
            let response = self
                .pipeline
                .send(
                    &Context::new(),
                    &mut request,
                    Some(PipelineSendOptions::default()),
                )
                .await
                .map_err(|e| self.error(operation, e))?;
            let body = std::str::from_utf8(response.body()).map_err(|e| AzureError::Protocol {
                operation,
                resource: self.url.to_string(),
                detail: format!("page list is not UTF-8: {e}"),
            })?;
            let page = parse_page_list(body).map_err(|detail| AzureError::Protocol {
                operation,
                resource: self.url.to_string(),
                detail,
            })?;
            diff.written.extend(page.written);
            diff.cleared.extend(page.cleared);
            match page.next_marker {
                Some(m) => marker = Some(m),
                None => break,
            }
        }
        diff.written = merge(diff.written);
        diff.cleared = merge(diff.cleared);
        Ok(diff)
    }

    /// Reads `range` (at most [`MAX_IO`] bytes) in one request.
    pub async fn read(&self, range: PageRange) -> Result<Bytes> {
        self.read_vec(range).await.map(Bytes::from)
    }

    /// [`read`](Self::read) into a buffer of its own: the body's chunks are copied once into
    /// a buffer of exactly the range's size (the SDK's `collect` grows one by doubling, and
    /// its reallocations copied every byte again).
    pub async fn read_vec(&self, range: PageRange) -> Result<Vec<u8>> {
        let operation = "read pages";
        let len = usize::try_from(range.len).unwrap_or(usize::MAX).max(1);
        let result = self
            .blob
            .download(Some(BlobClientDownloadOptions {
                range: Some(HttpRange::new(range.offset, range.len)),
                parallel: std::num::NonZero::new(1),
                partition_size: std::num::NonZero::new(len),
                ..Default::default()
            }))
            .await
            .map_err(|e| self.error(operation, e))?;
        let mut body = result.body;
        let (mut bytes, mut received) = (Vec::with_capacity(len), 0u64);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.error(operation, e))?;
            received += chunk.len() as u64;
            if received <= range.len {
                bytes.extend_from_slice(&chunk);
            }
        }
        if received != range.len {
            return Err(AzureError::Protocol {
                operation,
                resource: self.url.to_string(),
                detail: format!(
                    "asked for {} bytes at {}, got {received}",
                    range.len, range.offset
                ),
            });
        }
        Ok(bytes)
    }

    /// Reads `ranges` in order, as `(offset, bytes)` pieces of at most [`MAX_IO`] bytes, with at
    /// most the configured number of reads in flight.
    pub fn read_ranges(
        &self,
        ranges: Vec<PageRange>,
    ) -> impl Stream<Item = Result<(u64, Bytes)>> + Send + '_ {
        stream::iter(split(ranges, MAX_IO))
            .map(move |r| async move { self.read(r).await.map(|b| (r.offset, b)) })
            .buffered(self.concurrency)
    }

    /// Writes `data` at `offset` (both multiples of [`PAGE_SIZE`]) in Put Page calls of at most
    /// [`MAX_IO`], skipping all-zero pieces (the blob is new, so they are zero already).
    /// Returns the bytes actually sent.
    pub async fn write(&self, offset: u64, data: Bytes) -> Result<u64> {
        let operation = "put pages";
        if !offset.is_multiple_of(PAGE_SIZE) || !(data.len() as u64).is_multiple_of(PAGE_SIZE) {
            return Err(AzureError::Protocol {
                operation,
                resource: self.url.to_string(),
                detail: format!(
                    "{} bytes at {offset} are not whole 512-byte pages",
                    data.len()
                ),
            });
        }
        let mut sent = 0;
        for start in (0..data.len()).step_by(MAX_IO as usize) {
            let piece = data.slice(start..data.len().min(start + MAX_IO as usize));
            if piece.iter().all(|b| *b == 0) {
                continue;
            }
            let len = piece.len() as u64;
            let at = offset + start as u64;
            self.pages
                .upload_pages(
                    <RequestContent<Bytes, azure_core::http::NoFormat> as From<Bytes>>::from(piece),
                    len,
                    HttpRange::new(at, len),
                    None,
                )
                .await
                .map_err(|e| self.error(operation, e))?;
            sent += len;
        }
        Ok(sent)
    }

    /// Writes a stream of `(offset, bytes)` pieces, the configured number of Put Page calls
    /// in flight. Returns the bytes sent (all-zero pieces are skipped).
    pub async fn write_stream<S>(&self, pieces: S) -> Result<u64>
    where
        S: Stream<Item = Result<(u64, Bytes)>> + Send,
    {
        pieces
            .map_ok(|(offset, data)| {
                // Cut big pieces so that each Put Page future holds at most MAX_IO.
                stream::iter(
                    (0..data.len())
                        .step_by(MAX_IO as usize)
                        .map(move |s| {
                            Ok((
                                offset + s as u64,
                                data.slice(s..data.len().min(s + MAX_IO as usize)),
                            ))
                        })
                        .collect::<Vec<Result<(u64, Bytes)>>>(),
                )
            })
            .try_flatten()
            .map_ok(|(offset, data)| self.write(offset, data))
            .try_buffer_unordered(self.concurrency)
            .try_fold(0u64, |total, sent| async move { Ok(total + sent) })
            .await
    }
}

impl std::fmt::Debug for PageBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageBlob")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// One page of a page-range listing.
#[derive(Debug, Default, PartialEq, Eq)]
struct PageListPage {
    written: Vec<PageRange>,
    cleared: Vec<PageRange>,
    next_marker: Option<String>,
}

/// Parses a `PageList` answer. A diff interleaves `PageRange` and `ClearRange` elements in
/// offset order, which `azure_storage_blob`'s serde model (no overlapped lists) cannot read,
/// so this small reader walks the elements itself.
fn parse_page_list(xml: &str) -> std::result::Result<PageListPage, String> {
    fn number(element: &str, tag: &str) -> std::result::Result<u64, String> {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        let start = element
            .find(&open)
            .ok_or(format!("no {tag} in {element}"))?
            + open.len();
        let end = element[start..]
            .find(&close)
            .ok_or(format!("no </{tag}>"))?
            + start;
        element[start..end]
            .trim()
            .parse()
            .map_err(|e| format!("{tag} is not a number: {e}"))
    }
    let mut page = PageListPage::default();
    let mut rest = xml;
    loop {
        let next = [
            ("<PageRange>", "</PageRange>", true),
            ("<ClearRange>", "</ClearRange>", false),
        ]
        .into_iter()
        .filter_map(|(open, close, written)| rest.find(open).map(|i| (i, open, close, written)))
        .min_by_key(|(i, ..)| *i);
        let Some((i, open, close, written)) = next else {
            break;
        };
        let body_start = i + open.len();
        let body_end = rest[body_start..]
            .find(close)
            .ok_or(format!("unterminated {open}"))?
            + body_start;
        let element = &rest[body_start..body_end];
        let (start, end) = (number(element, "Start")?, number(element, "End")?);
        if end < start {
            return Err(format!("range {start}-{end} ends before it starts"));
        }
        let range = PageRange {
            offset: start,
            len: end - start + 1,
        };
        if written {
            page.written.push(range);
        } else {
            page.cleared.push(range);
        }
        rest = &rest[body_end + close.len()..];
    }
    if let Some(i) = xml.find("<NextMarker>") {
        let start = i + "<NextMarker>".len();
        if let Some(len) = xml[start..].find("</NextMarker>") {
            let marker = xml[start..start + len].trim();
            if !marker.is_empty() {
                page.next_marker = Some(marker.to_owned());
            }
        }
    }
    Ok(page)
}

fn to_range(start: Option<i64>, end: Option<i64>) -> Option<PageRange> {
    let (start, end) = (u64::try_from(start?).ok()?, u64::try_from(end?).ok()?);
    (end >= start).then(|| PageRange {
        offset: start,
        len: end - start + 1,
    })
}

/// Cuts ranges into pieces of at most `max` bytes.
pub fn split(ranges: Vec<PageRange>, max: u64) -> impl Iterator<Item = PageRange> + Send {
    ranges.into_iter().flat_map(move |r| {
        (r.offset..r.end())
            .step_by(max as usize)
            .map(move |o| PageRange {
                offset: o,
                len: max.min(r.end() - o),
            })
    })
}

fn storage_error(operation: &'static str, url: &SasUrl, e: azure_core::Error) -> AzureError {
    match e.kind() {
        azure_core::error::ErrorKind::HttpResponse {
            status, error_code, ..
        } => {
            let status = u16::from(*status);
            let fix = match status {
                403 => Some("the SAS expired or does not allow this: grant access again (beginGetAccess) with a longer duration".to_owned()),
                404 => Some("the disk or snapshot is gone, or its access was ended: check it with `az snapshot show`/`az disk show`".to_owned()),
                _ => None,
            };
            AzureError::Service(Box::new(ServiceError {
                operation,
                resource: url.to_string(),
                status,
                code: error_code
                    .clone()
                    .unwrap_or_else(|| format!("HTTP {status}")),
                message: e.to_string(),
                fix,
                correlation_id: None,
            }))
        }
        _ => AzureError::Transport {
            operation,
            resource: url.to_string(),
            transient: true,
            source: Box::new(e),
        },
    }
}

/// The size ARM wants for an upload disk holding `data_size` bytes: whole MiB of data plus the
/// 512-byte fixed-VHD footer.
pub fn upload_size(data_size: u64) -> u64 {
    data_size.div_ceil(1 << 20) * (1 << 20) + PAGE_SIZE
}

/// The 512-byte footer of a fixed VHD of `data_size` bytes (a multiple of 1 MiB), which an
/// upload disk must end with (VHD specification: "conectix" cookie, fixed disk type, CHS
/// geometry, ones'-complement checksum). Deterministic for a given `unique_id`, so a repeated
/// hydration writes the same bytes.
pub fn vhd_footer(data_size: u64, unique_id: [u8; 16]) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit set
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // format version 1.0
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: none (fixed disk)
    // 24..28: timestamp, left at the epoch (2000-01-01) so the footer is deterministic.
    f[28..32].copy_from_slice(b"stow");
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&data_size.to_be_bytes());
    f[48..56].copy_from_slice(&data_size.to_be_bytes());
    let (cylinders, heads, sectors) = chs(data_size);
    f[56..58].copy_from_slice(&cylinders.to_be_bytes());
    f[58] = heads;
    f[59] = sectors;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // disk type: fixed
    f[68..84].copy_from_slice(&unique_id);
    let sum: u32 = f.iter().map(|b| u32::from(*b)).sum();
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    f
}

/// CHS geometry as the VHD specification computes it.
fn chs(size: u64) -> (u16, u8, u8) {
    let mut total = (size / 512).min(65535 * 16 * 255);
    let (mut spt, mut heads, mut cth);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = total / spt;
    } else {
        spt = 17;
        cth = total / spt;
        heads = cth.div_ceil(1024);
        if heads < 4 {
            heads = 4;
        }
        if cth >= heads * 1024 || heads > 16 {
            spt = 31;
            heads = 16;
            cth = total / spt;
        }
        if cth >= heads * 1024 {
            spt = 63;
            heads = 16;
            cth = total / spt;
        }
    }
    total = cth / heads;
    (total as u16, heads as u8, spt as u8)
}

/// A granted SAS whose `endGetAccess` is never forgotten: [`end`](Self::end) ends it and says
/// how that went; dropped without it (an error, a cancelled job), the guard ends it in a task of
/// its own. A redelivered job ends access first anyway ([`ArmClient::revoke_access`] is
/// idempotent), in case a killed worker left one open.
#[derive(Debug)]
pub struct AccessGuard {
    arm: ArmClient,
    id: ResourceId,
    sas: SasUrl,
    ended: bool,
}

impl AccessGuard {
    /// Grants `access` to `id` for `duration`.
    pub async fn grant(
        arm: &ArmClient,
        id: &ResourceId,
        access: Access,
        duration: Duration,
    ) -> Result<Self> {
        let sas = arm.grant_access(id, access, duration).await?;
        Ok(Self {
            arm: arm.clone(),
            id: id.clone(),
            sas,
            ended: false,
        })
    }

    /// The SAS URL.
    pub fn sas(&self) -> &SasUrl {
        &self.sas
    }

    /// Ends the access now.
    pub async fn end(mut self) -> Result<()> {
        self.ended = true;
        self.arm.revoke_access(&self.id).await
    }
}

impl Drop for AccessGuard {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let (arm, id) = (self.arm.clone(), self.id.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) = arm.revoke_access(&id).await {
                        tracing::warn!(resource = %id, error = %e, "could not end access after an interrupted transfer; the SAS expires on its own");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(resource = %id, "access left open (no runtime to end it); the SAS expires on its own")
            }
        }
    }
}

/// Hydration into staging: a new upload disk `name` in `resource_group` holding `data_size`
/// bytes from `pieces` (offsets within `data_size`, whole pages), its footer, and access ended
/// whatever happens. Returns the disk, ready to be bound as a PV.
pub async fn hydrate<S>(
    arm: &ArmClient,
    resource_group: &str,
    name: &str,
    data_size: u64,
    new: &NewDisk,
    pieces: S,
    settings: &DataSettings,
) -> Result<DiskResource>
where
    S: Stream<Item = Result<(u64, Bytes)>> + Send,
{
    let size = upload_size(data_size);
    arm.create_upload_disk(resource_group, name, size, new)
        .await?;
    let id = ResourceId::disk(&arm.settings().subscription, resource_group, name);
    let guard = AccessGuard::grant(arm, &id, Access::Write, Duration::from_secs(6 * 3600)).await?;
    let blob = PageBlob::new(guard.sas().clone(), settings)?;
    let resource = id.to_string();
    let bounded = pieces.map(move |piece| {
        let (offset, data) = piece?;
        if offset + data.len() as u64 > data_size {
            return Err(AzureError::Protocol {
                operation: "hydrate",
                resource: resource.clone(),
                detail: format!("a piece at {offset} runs past the disk's {data_size} bytes"),
            });
        }
        Ok((offset, data))
    });
    let written = blob.write_stream(bounded).await?;
    let mut unique_id = [0u8; 16];
    let digest = id.to_string();
    for (i, b) in digest.bytes().enumerate() {
        unique_id[i % 16] ^= b.rotate_left(i as u32 % 8);
    }
    blob.write(
        size - PAGE_SIZE,
        Bytes::copy_from_slice(&vhd_footer(size - PAGE_SIZE, unique_id)),
    )
    .await?;
    guard.end().await?;
    tracing::info!(disk = %id, data_size, written, "staging disk hydrated");
    arm.get(&id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_split() {
        let r = |offset, len| PageRange { offset, len };
        assert_eq!(
            merge(vec![r(10, 5), r(0, 10), r(20, 0), r(14, 4)]),
            vec![r(0, 18)]
        );
        let pieces: Vec<_> = split(vec![r(0, 10), r(100, 3)], 4).collect();
        assert_eq!(pieces, vec![r(0, 4), r(4, 4), r(8, 2), r(100, 3)]);
    }

    #[test]
    fn page_lists_with_interleaved_clear_ranges() {
        let xml = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><PageList><PageRange><Start>0</Start><End>511</End></PageRange><ClearRange><Start>512</Start><End>1023</End></ClearRange><PageRange><Start>4096</Start><End>8191</End></PageRange><NextMarker>m2</NextMarker></PageList>";
        let page = parse_page_list(xml).unwrap();
        let r = |offset, len| PageRange { offset, len };
        assert_eq!(page.written, vec![r(0, 512), r(4096, 4096)]);
        assert_eq!(page.cleared, vec![r(512, 512)]);
        assert_eq!(page.next_marker.as_deref(), Some("m2"));
        let last = parse_page_list("<PageList><NextMarker /></PageList>").unwrap();
        assert_eq!(last, PageListPage::default());
        assert!(
            parse_page_list(
                "<PageList><PageRange><Start>9</Start><End>1</End></PageRange></PageList>"
            )
            .is_err()
        );
    }

    #[test]
    fn upload_sizes_are_whole_mib_plus_the_footer() {
        assert_eq!(upload_size(1 << 30), (1 << 30) + 512);
        assert_eq!(upload_size((1 << 30) + 1), (1 << 30) + (1 << 20) + 512);
    }

    #[test]
    fn the_footer_follows_the_vhd_specification() {
        let size = 32u64 << 30;
        let f = vhd_footer(size, [7; 16]);
        assert_eq!(&f[0..8], b"conectix");
        assert_eq!(
            u32::from_be_bytes(f[60..64].try_into().unwrap()),
            2,
            "fixed disk"
        );
        assert_eq!(u64::from_be_bytes(f[48..56].try_into().unwrap()), size);
        // The checksum is the ones' complement of the byte sum with the checksum zeroed.
        let mut zeroed = f;
        zeroed[64..68].fill(0);
        let sum: u32 = zeroed.iter().map(|b| u32::from(*b)).sum();
        assert_eq!(u32::from_be_bytes(f[64..68].try_into().unwrap()), !sum);
        // 32 GiB: 67108864 sectors ≥ 65535·16·63, so 255 sectors, 16 heads.
        assert_eq!((f[58], f[59]), (16, 255));
        assert_eq!(
            u16::from_be_bytes([f[56], f[57]]),
            (67_108_864u64 / 255 / 16) as u16
        );
        // A small disk: 20 MiB = 40960 sectors → 17 sectors/track, 4 heads, 602 cylinders.
        let small = vhd_footer(20 << 20, [0; 16]);
        assert_eq!(
            (
                u16::from_be_bytes([small[56], small[57]]),
                small[58],
                small[59]
            ),
            (602, 4, 17)
        );
    }
}
