//! The ARM control plane for managed disks and snapshots: one `azure_core` pipeline, a pinned
//! api-version, long-running operations polled the ARM way, and errors that say what to do.
//!
//! Long-running operations follow "Track asynchronous Azure operations": a 201 or 202 carries
//! `Azure-AsyncOperation` (poll it until `status` is `Succeeded`, `Failed` or `Canceled`),
//! else `Location` (poll it until it stops answering 202), and `Retry-After` says how long to
//! wait between polls. A PUT is read back with GET afterwards; `beginGetAccess` takes its
//! result from `Location` (`final-state-via: location` in the DiskRP specification).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use azure_core::http::{
    Context, Method, Pipeline, PipelineSendOptions, RawResponse, Request, Url, headers::HeaderName,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{AzureError, Result, ServiceError};
use crate::permissions::role_for_action;
use crate::transport::{BearerPolicy, RetrySettings, client_options, http_client, may_carry_token};

/// The `Microsoft.Compute` api-version every disk and snapshot request uses.
pub const COMPUTE_API_VERSION: &str = "2023-10-02";
/// The `Microsoft.Authorization` api-version of the permissions API.
pub const AUTHORIZATION_API_VERSION: &str = "2022-04-01";
/// ARM's endpoint in the public cloud.
pub const PUBLIC_CLOUD_ENDPOINT: &str = "https://management.azure.com";

const AZURE_ASYNC_OPERATION: HeaderName = HeaderName::from_static("azure-asyncoperation");
const LOCATION: HeaderName = HeaderName::from_static("location");
const RETRY_AFTER: HeaderName = HeaderName::from_static("retry-after");
const CORRELATION_ID: HeaderName = HeaderName::from_static("x-ms-correlation-request-id");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-request-id");

/// Where ARM is and how patient to be with it.
#[derive(Debug, Clone)]
pub struct ArmSettings {
    /// ARM's endpoint (`https://management.azure.com`; an in-test server on loopback may be
    /// plain http).
    pub endpoint: Url,
    /// The token scope (`https://management.azure.com/.default` in the public cloud).
    pub scope: String,
    /// The subscription holding the snapshot and staging resource groups.
    pub subscription: String,
    /// Retries of single requests (429, 503, …).
    pub retry: RetrySettings,
    /// Wait between polls when the service gives no `Retry-After`.
    pub poll_interval: Duration,
    /// Longest wait between polls, whatever `Retry-After` says.
    pub max_poll_interval: Duration,
    /// Give up on a long-running operation after this long.
    pub operation_timeout: Duration,
}

impl ArmSettings {
    /// Settings for the public cloud and `subscription`.
    pub fn public_cloud(subscription: impl Into<String>) -> Self {
        Self {
            endpoint: Url::parse(PUBLIC_CLOUD_ENDPOINT).expect("a valid URL"),
            scope: format!("{PUBLIC_CLOUD_ENDPOINT}/.default"),
            subscription: subscription.into(),
            retry: RetrySettings::default(),
            poll_interval: Duration::from_secs(5),
            max_poll_interval: Duration::from_secs(60),
            operation_timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// A managed disk or snapshot resource's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// `Microsoft.Compute/disks`.
    Disk,
    /// `Microsoft.Compute/snapshots`.
    Snapshot,
}

impl ResourceKind {
    fn segment(self) -> &'static str {
        match self {
            ResourceKind::Disk => "disks",
            ResourceKind::Snapshot => "snapshots",
        }
    }
    fn az(self) -> &'static str {
        match self {
            ResourceKind::Disk => "disk",
            ResourceKind::Snapshot => "snapshot",
        }
    }
}

/// The ARM id of a managed disk or snapshot:
/// `/subscriptions/<s>/resourceGroups/<g>/providers/Microsoft.Compute/<disks|snapshots>/<n>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceId {
    /// Subscription id.
    pub subscription: String,
    /// Resource group name.
    pub resource_group: String,
    /// Disk or snapshot.
    pub kind: ResourceKind,
    /// Resource name.
    pub name: String,
}

impl ResourceId {
    /// A disk's id.
    pub fn disk(subscription: &str, resource_group: &str, name: &str) -> Self {
        Self::new(subscription, resource_group, ResourceKind::Disk, name)
    }

    /// A snapshot's id.
    pub fn snapshot(subscription: &str, resource_group: &str, name: &str) -> Self {
        Self::new(subscription, resource_group, ResourceKind::Snapshot, name)
    }

    fn new(subscription: &str, resource_group: &str, kind: ResourceKind, name: &str) -> Self {
        Self {
            subscription: subscription.to_owned(),
            resource_group: resource_group.to_owned(),
            kind,
            name: name.to_owned(),
        }
    }

    /// Parses an ARM id (segment names compared without regard to case, as ARM does), such as
    /// a `disk.csi.azure.com` volume handle or snapshot handle.
    pub fn parse(id: &str) -> Result<Self> {
        let bad = || {
            AzureError::Config(format!(
                "`{id}` is not a managed disk or snapshot id (/subscriptions/<s>/resourceGroups/<g>/providers/Microsoft.Compute/disks|snapshots/<name>)"
            ))
        };
        let parts: Vec<&str> = id.trim_matches('/').split('/').collect();
        let [
            subs,
            subscription,
            groups,
            group,
            providers,
            namespace,
            kind,
            name,
        ] = parts[..]
        else {
            return Err(bad());
        };
        let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        if !eq(subs, "subscriptions")
            || !eq(groups, "resourceGroups")
            || !eq(providers, "providers")
            || !eq(namespace, "Microsoft.Compute")
            || [subscription, group, name].iter().any(|s| s.is_empty())
        {
            return Err(bad());
        }
        let kind = if eq(kind, "disks") {
            ResourceKind::Disk
        } else if eq(kind, "snapshots") {
            ResourceKind::Snapshot
        } else {
            return Err(bad());
        };
        Ok(Self::new(subscription, group, kind, name))
    }

    /// The resource group's scope, `/subscriptions/<s>/resourceGroups/<g>`.
    pub fn group_scope(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}",
            self.subscription, self.resource_group
        )
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/providers/Microsoft.Compute/{}/{}",
            self.group_scope(),
            self.kind.segment(),
            self.name
        )
    }
}

/// A managed disk or a snapshot as ARM returns it (the two share their shape). Fields Stowage
/// does not read are not kept.
#[derive(Debug, Clone, Deserialize)]
pub struct DiskResource {
    /// ARM id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Region (`westeurope`).
    pub location: String,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Properties.
    #[serde(default)]
    pub properties: DiskProperties,
}

/// The properties of a [`DiskResource`] that Stowage reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskProperties {
    /// Size in bytes.
    pub disk_size_bytes: Option<u64>,
    /// Size in GiB (older resources report only this).
    #[serde(rename = "diskSizeGB")]
    pub disk_size_gb: Option<u64>,
    /// `Creating`, `Updating`, `Succeeded`, `Failed`, `Canceled`, …
    pub provisioning_state: Option<String>,
    /// `Unattached`, `Attached`, `ReadyToUpload`, `ActiveUpload`, `ActiveSAS`, …
    pub disk_state: Option<String>,
    /// `AllowAll`, `AllowPrivate` or `DenyAll`.
    pub network_access_policy: Option<String>,
    /// `Enabled` or `Disabled`.
    pub public_network_access: Option<String>,
    /// Whether a snapshot is incremental.
    pub incremental: Option<bool>,
    /// An incremental snapshot's background copy progress (absent or 100 when done).
    pub completion_percent: Option<f64>,
    /// When the resource was created (RFC 3339).
    pub time_created: Option<String>,
}

impl DiskResource {
    /// The resource's size in bytes, from `diskSizeBytes` or else `diskSizeGB`.
    pub fn size_bytes(&self) -> Option<u64> {
        self.properties
            .disk_size_bytes
            .or(self.properties.disk_size_gb.map(|gb| gb << 30))
    }
}

/// Read or write access to a disk's or snapshot's data through a SAS URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read (a snapshot or an unattached disk).
    Read,
    /// Write (an upload disk in `ReadyToUpload`).
    Write,
}

/// A SAS URL. Its query holds the signature, so it is never printed whole: `Debug` and
/// `Display` show the blob without the query.
#[derive(Clone, PartialEq, Eq)]
pub struct SasUrl(Url);

impl SasUrl {
    /// Wraps a URL (in tests, an Azurite blob URL with a SAS query).
    pub fn new(url: Url) -> Self {
        Self(url)
    }
    /// The full URL, signature included: hand it to an HTTP client, never to a log.
    pub fn expose(&self) -> &Url {
        &self.0
    }
}

impl fmt::Display for SasUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.clone();
        shown.set_query(None);
        write!(f, "{shown}?<sas>")
    }
}

impl fmt::Debug for SasUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SasUrl({self})")
    }
}

/// How a new disk (upload or copy) is made.
#[derive(Debug, Clone)]
pub struct NewDisk {
    /// Region; a copy must be in its snapshot's region.
    pub location: String,
    /// SKU (`StandardSSD_LRS`, `Premium_LRS`, …); ARM's default when `None`.
    pub sku: Option<String>,
    /// Tags (`stowage.io/restore`, …).
    pub tags: BTreeMap<String, String>,
}

/// What a long-running operation's caller wants once it has finished.
enum FinalState {
    /// GET this resource (PUT).
    Resource(Url),
    /// The body at `Location`, else the operation's `properties.output` (`beginGetAccess`).
    Location,
    /// Nothing (DELETE, `endGetAccess`).
    Nothing,
}

/// A client of the ARM REST API for managed disks, snapshots and permissions.
#[derive(Debug, Clone)]
pub struct ArmClient {
    pipeline: Pipeline,
    settings: Arc<ArmSettings>,
}

impl ArmClient {
    /// A client with `settings`, authenticating with `credential`. Refuses an endpoint that
    /// would carry the token over plain HTTP to anything but loopback.
    pub fn new(settings: ArmSettings, credential: Arc<dyn TokenCredential>) -> Result<Self> {
        if !may_carry_token(&settings.endpoint) {
            return Err(AzureError::Config(format!(
                "ARM endpoint {} must be https (plain http only to a loopback test server)",
                settings.endpoint
            )));
        }
        let client = http_client()?;
        let options = client_options(&client, &settings.retry);
        let auth = Arc::new(BearerPolicy {
            credential,
            scope: settings.scope.clone(),
        });
        let pipeline = Pipeline::new(
            option_env!("CARGO_PKG_NAME"),
            option_env!("CARGO_PKG_VERSION"),
            options,
            Vec::new(),
            vec![auth],
            None,
        );
        Ok(Self {
            pipeline,
            settings: Arc::new(settings),
        })
    }

    /// The client's settings.
    pub fn settings(&self) -> &ArmSettings {
        &self.settings
    }

    fn url(&self, path: &str, api_version: &str) -> Result<Url> {
        let mut url = self
            .settings
            .endpoint
            .join(path)
            .map_err(|e| AzureError::Config(format!("bad ARM path {path}: {e}")))?;
        url.query_pairs_mut()
            .append_pair("api-version", api_version);
        Ok(url)
    }

    fn resource_url(&self, id: &ResourceId) -> Result<Url> {
        self.url(&id.to_string(), COMPUTE_API_VERSION)
    }

    /// Sends one request through the pipeline (which retries throttling and server errors),
    /// logs its ids, and turns an error status into [`AzureError::Service`].
    async fn call(
        &self,
        operation: &'static str,
        resource: &str,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<RawResponse> {
        let mut request = Request::new(url, method);
        request.insert_header("accept", "application/json");
        let client_request_id = azure_core::Uuid::new_v4().to_string();
        request.insert_header("x-ms-client-request-id", client_request_id.clone());
        match body {
            Some(body) => {
                request.insert_header("content-type", "application/json");
                let bytes = serde_json::to_vec(body).expect("a JSON value serialises");
                request.set_body(azure_core::Bytes::from(bytes));
            }
            None if matches!(method, Method::Post | Method::Put) => {
                request.insert_header("content-length", "0");
            }
            None => {}
        }
        let options = PipelineSendOptions {
            skip_checks: true,
            ..Default::default()
        };
        let response = self
            .pipeline
            .send(&Context::new(), &mut request, Some(options))
            .await
            .map_err(|source| AzureError::Transport {
                operation,
                resource: resource.to_owned(),
                transient: !matches!(source.kind(), azure_core::error::ErrorKind::Credential),
                source: Box::new(source),
            })?;
        let status = u16::from(response.status());
        let headers = response.headers();
        tracing::debug!(
            operation,
            resource,
            method = %method,
            status,
            client_request_id,
            correlation_id = headers.get_optional_str(&CORRELATION_ID).unwrap_or(""),
            request_id = headers.get_optional_str(&REQUEST_ID).unwrap_or(""),
            "ARM answered"
        );
        if !(200..300).contains(&status) {
            return Err(service_error(operation, resource, &response));
        }
        Ok(response)
    }

    /// Waits for a long-running operation started by `first` and returns what `last` asks for.
    async fn finish(
        &self,
        operation: &'static str,
        resource: &str,
        first: RawResponse,
        last: FinalState,
    ) -> Result<Option<Value>> {
        let started = Instant::now();
        let status = u16::from(first.status());
        let async_operation = self.poll_url(operation, resource, &first, &AZURE_ASYNC_OPERATION)?;
        let location = self.poll_url(operation, resource, &first, &LOCATION)?;
        let mut wait = self.retry_after(&first);
        let mut output = None;
        let mut location_body = None;

        if let Some(poll) = &async_operation {
            loop {
                self.sleep(operation, resource, started, wait).await?;
                let answer = self
                    .call(operation, resource, Method::Get, poll.clone(), None)
                    .await?;
                wait = self.retry_after(&answer);
                let body = json_body(operation, resource, &answer)?;
                let state = body.get("status").and_then(Value::as_str).unwrap_or("");
                match state.to_ascii_lowercase().as_str() {
                    "succeeded" => {
                        output = body.pointer("/properties/output").cloned();
                        break;
                    }
                    "failed" | "canceled" | "cancelled" => {
                        return Err(operation_failed(operation, resource, state, &body));
                    }
                    _ => {}
                }
            }
        } else if let (202, Some(poll)) = (status, &location) {
            location_body = Some(
                self.poll_location(operation, resource, started, poll, wait)
                    .await?,
            );
        } else if status == 204 {
            return Ok(None);
        }

        match last {
            FinalState::Nothing => Ok(None),
            FinalState::Location => {
                if let Some(body) = location_body {
                    return Ok(body);
                }
                if let (Some(_), Some(poll)) = (&async_operation, &location) {
                    let body = self
                        .poll_location(operation, resource, started, poll, Duration::ZERO)
                        .await?;
                    if body.is_some() {
                        return Ok(body);
                    }
                }
                if output.is_some() {
                    return Ok(output);
                }
                // A synchronous 200 carries the result itself.
                Ok(Some(json_body(operation, resource, &first)?))
            }
            FinalState::Resource(url) => {
                // Read back until the resource itself says it is done (a 200/201 without any
                // polling header may still be `Creating`).
                loop {
                    let answer = self
                        .call(operation, resource, Method::Get, url.clone(), None)
                        .await?;
                    let body = json_body(operation, resource, &answer)?;
                    let state = body
                        .pointer("/properties/provisioningState")
                        .and_then(Value::as_str)
                        .unwrap_or("Succeeded");
                    match state.to_ascii_lowercase().as_str() {
                        "succeeded" => return Ok(Some(body)),
                        "failed" | "canceled" => {
                            return Err(operation_failed(operation, resource, state, &body));
                        }
                        _ => {
                            let wait = self.retry_after(&answer);
                            self.sleep(operation, resource, started, wait).await?;
                        }
                    }
                }
            }
        }
    }

    /// Polls a `Location` URL until it stops answering 202; returns its body, if any.
    async fn poll_location(
        &self,
        operation: &'static str,
        resource: &str,
        started: Instant,
        poll: &Url,
        mut wait: Duration,
    ) -> Result<Option<Value>> {
        loop {
            self.sleep(operation, resource, started, wait).await?;
            let answer = self
                .call(operation, resource, Method::Get, poll.clone(), None)
                .await?;
            if u16::from(answer.status()) != 202 {
                let body = answer.body();
                if body.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(json_body(operation, resource, &answer)?));
            }
            wait = self.retry_after(&answer);
        }
    }

    /// A polling URL from `header`, refused unless it is on the ARM endpoint (the token goes
    /// with every poll).
    fn poll_url(
        &self,
        operation: &'static str,
        resource: &str,
        response: &RawResponse,
        header: &HeaderName,
    ) -> Result<Option<Url>> {
        let Some(value) = response.headers().get_optional_str(header) else {
            return Ok(None);
        };
        let url = Url::parse(value).map_err(|e| AzureError::Protocol {
            operation,
            resource: resource.to_owned(),
            detail: format!("{} is not a URL: {e}", header.as_str()),
        })?;
        let endpoint = &self.settings.endpoint;
        if url.origin() != endpoint.origin() {
            return Err(AzureError::Protocol {
                operation,
                resource: resource.to_owned(),
                detail: format!(
                    "{} points at {}, not at the ARM endpoint {}; not sending the token there",
                    header.as_str(),
                    url.origin().ascii_serialization(),
                    endpoint.origin().ascii_serialization()
                ),
            });
        }
        Ok(Some(url))
    }

    /// `Retry-After` in seconds (capped), or the configured poll interval.
    fn retry_after(&self, response: &RawResponse) -> Duration {
        response
            .headers()
            .get_optional_str(&RETRY_AFTER)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(self.settings.poll_interval)
            .min(self.settings.max_poll_interval)
    }

    async fn sleep(
        &self,
        operation: &'static str,
        resource: &str,
        started: Instant,
        wait: Duration,
    ) -> Result<()> {
        if started.elapsed() + wait > self.settings.operation_timeout {
            return Err(AzureError::Timeout {
                operation,
                resource: resource.to_owned(),
                waited_secs: started.elapsed().as_secs(),
            });
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Reads a disk or snapshot.
    pub async fn get(&self, id: &ResourceId) -> Result<DiskResource> {
        let resource = id.to_string();
        let operation = match id.kind {
            ResourceKind::Disk => "get disk",
            ResourceKind::Snapshot => "get snapshot",
        };
        let answer = self
            .call(
                operation,
                &resource,
                Method::Get,
                self.resource_url(id)?,
                None,
            )
            .await?;
        parse(
            operation,
            &resource,
            json_body(operation, &resource, &answer)?,
        )
    }

    /// Creates (or finds, a PUT being idempotent) the incremental snapshot `name` of `disk` in
    /// `resource_group` of the client's subscription, tagged with `tags`, and waits until it
    /// can be read: provisioned and its background copy complete.
    pub async fn create_incremental_snapshot(
        &self,
        resource_group: &str,
        name: &str,
        disk: &DiskResource,
        tags: &BTreeMap<String, String>,
    ) -> Result<DiskResource> {
        let operation = "create snapshot";
        let id = ResourceId::snapshot(&self.settings.subscription, resource_group, name);
        let body = json!({
            "location": disk.location,
            "tags": tags,
            "properties": {
                "creationData": { "createOption": "Copy", "sourceResourceId": disk.id },
                "incremental": true,
            },
        });
        let snapshot = self.put(operation, &id, &body).await?;
        let started = Instant::now();
        let mut snapshot = snapshot;
        while snapshot
            .properties
            .completion_percent
            .is_some_and(|p| p < 100.0)
        {
            self.sleep(
                operation,
                &id.to_string(),
                started,
                self.settings.poll_interval,
            )
            .await?;
            snapshot = self.get(&id).await?;
        }
        Ok(snapshot)
    }

    /// Creates a disk with `createOption: Upload` of `upload_size_bytes` (the fixed VHD's size,
    /// footer included), ready for a write SAS.
    pub async fn create_upload_disk(
        &self,
        resource_group: &str,
        name: &str,
        upload_size_bytes: u64,
        new: &NewDisk,
    ) -> Result<DiskResource> {
        let id = ResourceId::disk(&self.settings.subscription, resource_group, name);
        let body = disk_body(
            new,
            json!({ "createOption": "Upload", "uploadSizeBytes": upload_size_bytes }),
        );
        self.put("create upload disk", &id, &body).await
    }

    /// Creates a disk copied from `snapshot` (an operational-tier restore).
    pub async fn create_disk_from_snapshot(
        &self,
        resource_group: &str,
        name: &str,
        snapshot: &DiskResource,
        new: &NewDisk,
    ) -> Result<DiskResource> {
        let id = ResourceId::disk(&self.settings.subscription, resource_group, name);
        let body = disk_body(
            new,
            json!({ "createOption": "Copy", "sourceResourceId": snapshot.id }),
        );
        self.put("create disk from snapshot", &id, &body).await
    }

    async fn put(
        &self,
        operation: &'static str,
        id: &ResourceId,
        body: &Value,
    ) -> Result<DiskResource> {
        let resource = id.to_string();
        let url = self.resource_url(id)?;
        let first = self
            .call(operation, &resource, Method::Put, url.clone(), Some(body))
            .await?;
        let done = self
            .finish(operation, &resource, first, FinalState::Resource(url))
            .await?;
        let body = done.ok_or_else(|| AzureError::Protocol {
            operation,
            resource: resource.clone(),
            detail: "no resource after the operation".into(),
        })?;
        parse(operation, &resource, body)
    }

    /// Deletes a disk or snapshot and waits until it is gone; one already gone is fine.
    pub async fn delete(&self, id: &ResourceId) -> Result<()> {
        let resource = id.to_string();
        let operation = match id.kind {
            ResourceKind::Disk => "delete disk",
            ResourceKind::Snapshot => "delete snapshot",
        };
        match self
            .call(
                operation,
                &resource,
                Method::Delete,
                self.resource_url(id)?,
                None,
            )
            .await
        {
            Ok(first) => {
                self.finish(operation, &resource, first, FinalState::Nothing)
                    .await?;
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `beginGetAccess`: a SAS URL for reading (a snapshot) or writing (an upload disk) the
    /// data, valid `duration`. A read of a disk or snapshot that only a private endpoint can
    /// reach is refused before asking, with the `az` command that opens it.
    pub async fn grant_access(
        &self,
        id: &ResourceId,
        access: Access,
        duration: Duration,
    ) -> Result<SasUrl> {
        let operation = "beginGetAccess";
        let resource = id.to_string();
        if access == Access::Read {
            let current = self.get(id).await?;
            refuse_private(id, &current)?;
        }
        let url = self.url(&format!("{resource}/beginGetAccess"), COMPUTE_API_VERSION)?;
        let body = json!({
            "access": match access { Access::Read => "Read", Access::Write => "Write" },
            "durationInSeconds": duration.as_secs().max(1),
        });
        let first = self
            .call(operation, &resource, Method::Post, url, Some(&body))
            .await?;
        let result = self
            .finish(operation, &resource, first, FinalState::Location)
            .await?;
        let sas = result
            .as_ref()
            .and_then(|v| v.get("accessSAS"))
            .and_then(Value::as_str)
            .ok_or_else(|| AzureError::Protocol {
                operation,
                resource: resource.clone(),
                detail: "no accessSAS in the result".into(),
            })?;
        let sas = Url::parse(sas).map_err(|e| AzureError::Protocol {
            operation,
            resource: resource.clone(),
            detail: format!("accessSAS is not a URL: {e}"),
        })?;
        tracing::info!(resource, ?access, "access granted");
        Ok(SasUrl(sas))
    }

    /// `endGetAccess`: revokes every SAS of the disk or snapshot. Safe to repeat; a resource
    /// already gone has no access to end.
    pub async fn revoke_access(&self, id: &ResourceId) -> Result<()> {
        let operation = "endGetAccess";
        let resource = id.to_string();
        let url = self.url(&format!("{resource}/endGetAccess"), COMPUTE_API_VERSION)?;
        match self
            .call(operation, &resource, Method::Post, url, None)
            .await
        {
            Ok(first) => {
                self.finish(operation, &resource, first, FinalState::Nothing)
                    .await?;
                tracing::info!(resource, "access ended");
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The snapshots of `resource_group` in the client's subscription, all pages.
    pub async fn list_snapshots(&self, resource_group: &str) -> Result<Vec<DiskResource>> {
        let operation = "list snapshots";
        let scope = format!(
            "/subscriptions/{}/resourceGroups/{resource_group}/providers/Microsoft.Compute/snapshots",
            self.settings.subscription
        );
        let mut url = self.url(&scope, COMPUTE_API_VERSION)?;
        let mut all = Vec::new();
        loop {
            let answer = self.call(operation, &scope, Method::Get, url, None).await?;
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Page {
                #[serde(default)]
                value: Vec<DiskResource>,
                next_link: Option<String>,
            }
            let page: Page = parse(operation, &scope, json_body(operation, &scope, &answer)?)?;
            all.extend(page.value);
            match page.next_link.filter(|l| !l.is_empty()) {
                Some(next) => url = self.next_link(operation, &scope, &next)?,
                None => return Ok(all),
            }
        }
    }

    /// Replaces a disk's or snapshot's tags (PATCH, the Update operation), waiting for it.
    pub async fn update_tags(
        &self,
        id: &ResourceId,
        tags: &BTreeMap<String, String>,
    ) -> Result<DiskResource> {
        let operation = "update tags";
        let resource = id.to_string();
        let url = self.resource_url(id)?;
        let body = json!({ "tags": tags });
        let first = self
            .call(
                operation,
                &resource,
                Method::Patch,
                url.clone(),
                Some(&body),
            )
            .await?;
        let done = self
            .finish(operation, &resource, first, FinalState::Resource(url))
            .await?;
        parse(operation, &resource, done.unwrap_or(Value::Null))
    }

    fn next_link(&self, operation: &'static str, scope: &str, next: &str) -> Result<Url> {
        let url = Url::parse(next).map_err(|e| AzureError::Protocol {
            operation,
            resource: scope.to_owned(),
            detail: format!("nextLink is not a URL: {e}"),
        })?;
        if url.origin() != self.settings.endpoint.origin() {
            return Err(AzureError::Protocol {
                operation,
                resource: scope.to_owned(),
                detail: "nextLink leaves the ARM endpoint".into(),
            });
        }
        Ok(url)
    }

    /// The caller's permissions at `scope` (`/subscriptions/<s>/resourceGroups/<g>` or a
    /// resource id), all pages.
    pub async fn permissions(&self, scope: &str) -> Result<Vec<crate::permissions::Permission>> {
        let operation = "list permissions";
        let mut url = self.url(
            &format!(
                "{}/providers/Microsoft.Authorization/permissions",
                scope.trim_end_matches('/')
            ),
            AUTHORIZATION_API_VERSION,
        )?;
        let mut all = Vec::new();
        loop {
            let answer = self.call(operation, scope, Method::Get, url, None).await?;
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Page {
                #[serde(default)]
                value: Vec<crate::permissions::Permission>,
                next_link: Option<String>,
            }
            let page: Page = parse(operation, scope, json_body(operation, scope, &answer)?)?;
            all.extend(page.value);
            match page.next_link.filter(|l| !l.is_empty()) {
                Some(next) => url = self.next_link(operation, scope, &next)?,
                None => return Ok(all),
            }
        }
    }
}

fn disk_body(new: &NewDisk, creation_data: Value) -> Value {
    let mut body = json!({
        "location": new.location,
        "tags": new.tags,
        "properties": { "creationData": creation_data },
    });
    if let Some(sku) = &new.sku {
        body["sku"] = json!({ "name": sku });
    }
    body
}

/// Refuses a disk or snapshot whose data only a private endpoint can reach.
pub fn refuse_private(id: &ResourceId, resource: &DiskResource) -> Result<()> {
    let policy = resource
        .properties
        .network_access_policy
        .as_deref()
        .unwrap_or("AllowAll");
    let public = resource
        .properties
        .public_network_access
        .as_deref()
        .unwrap_or("Enabled");
    if policy.eq_ignore_ascii_case("AllowAll") && !public.eq_ignore_ascii_case("Disabled") {
        return Ok(());
    }
    Err(AzureError::Refused {
        resource: id.to_string(),
        reason: format!(
            "its data is private (networkAccessPolicy {policy}, publicNetworkAccess {public}): a SAS URL would only work through the disk access's private endpoint"
        ),
        fix: format!(
            "`az {} update --ids {id} --network-access-policy AllowAll --public-network-access Enabled`, or exclude the volume from the vault tier",
            id.kind.az()
        ),
    })
}

/// Refuses a disk larger than the vault tier's limit.
pub fn refuse_oversized(id: &ResourceId, resource: &DiskResource, limit_bytes: u64) -> Result<()> {
    match resource.size_bytes() {
        Some(size) if size > limit_bytes => Err(AzureError::Refused {
            resource: id.to_string(),
            reason: format!(
                "{} GiB is over the vault tier's limit of {} GiB",
                size >> 30,
                limit_bytes >> 30
            ),
            fix: "keep this volume in the operational tier only (exclude it from the vault-tier rules, or from the instance's scope)".into(),
        }),
        _ => Ok(()),
    }
}

fn json_body(operation: &'static str, resource: &str, response: &RawResponse) -> Result<Value> {
    serde_json::from_slice(response.body()).map_err(|e| AzureError::Protocol {
        operation,
        resource: resource.to_owned(),
        detail: format!("body is not JSON: {e}"),
    })
}

fn parse<T: serde::de::DeserializeOwned>(
    operation: &'static str,
    resource: &str,
    body: Value,
) -> Result<T> {
    serde_json::from_value(body).map_err(|e| AzureError::Protocol {
        operation,
        resource: resource.to_owned(),
        detail: e.to_string(),
    })
}

fn operation_failed(
    operation: &'static str,
    resource: &str,
    state: &str,
    body: &Value,
) -> AzureError {
    let error = body
        .get("error")
        .or_else(|| body.pointer("/properties/error"));
    let field = |k: &str| {
        error
            .and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    AzureError::OperationFailed {
        operation,
        resource: resource.to_owned(),
        status: state.to_owned(),
        code: field("code"),
        message: field("message"),
    }
}

/// Turns an error answer into [`AzureError::Service`], with the fix when the code has one.
fn service_error(operation: &'static str, resource: &str, response: &RawResponse) -> AzureError {
    let status = u16::from(response.status());
    let body: Option<Value> = serde_json::from_slice(response.body()).ok();
    let error = body.as_ref().and_then(|b| b.get("error"));
    let field = |k: &str| {
        error
            .and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let code = field("code").unwrap_or_else(|| response.status().canonical_reason().into_owned());
    let message = field("message").unwrap_or_else(|| {
        let text = String::from_utf8_lossy(response.body());
        text.chars().take(300).collect()
    });
    let correlation_id = response.headers().get_optional_string(&CORRELATION_ID);
    let fix = fix_for(status, &code, &message, resource);
    AzureError::Service(Box::new(ServiceError {
        operation,
        resource: resource.to_owned(),
        status,
        code,
        message,
        fix,
        correlation_id,
    }))
}

/// Between the first `'` after `after` and the next `'`.
fn quoted_after<'a>(message: &'a str, after: &str) -> Option<&'a str> {
    let start = message.find(after)? + after.len();
    let rest = &message[start..];
    let open = rest.find('\'')? + 1;
    let close = rest[open..].find('\'')? + open;
    Some(&rest[open..close])
}

fn fix_for(status: u16, code: &str, message: &str, resource: &str) -> Option<String> {
    match code {
        "AuthorizationFailed" | "LinkedAuthorizationFailed" => {
            let action = quoted_after(message, "perform action").unwrap_or("");
            let assignee = quoted_after(message, "object id")
                .map(|oid| format!("--assignee-object-id {oid} --assignee-principal-type ServicePrincipal"))
                .unwrap_or_else(|| "--assignee <the worker's identity>".into());
            let scope = quoted_after(message, "over scope").unwrap_or(resource);
            let scope = group_of(scope).unwrap_or(scope.to_owned());
            Some(format!(
                "the identity lacks `{action}`: `az role assignment create {assignee} --role \"{}\" --scope {scope}`",
                role_for_action(action)
            ))
        }
        "InvalidAuthenticationToken" | "InvalidAuthenticationTokenTenant" | "AuthenticationFailed"
        | "ExpiredAuthenticationToken" => Some(
            "the token was refused: check the tenant and subscription of the identity (`az account show`), its federation (workload identity) or its secret".into(),
        ),
        "ResourceGroupNotFound" => {
            let group = quoted_after(message, "Resource group").unwrap_or("<group>");
            Some(format!("create it: `az group create --name {group} --location <region>`, or fix the configured resource group"))
        }
        "SubscriptionNotFound" | "InvalidSubscriptionId" => {
            Some("check the configured subscription id (`az account list -o table`)".into())
        }
        _ if status == 429 => Some(
            "ARM is throttling this subscription: lower the workers' concurrency or spread the schedule".into(),
        ),
        _ => None,
    }
}

/// `/subscriptions/<s>/resourceGroups/<g>` of a scope at or below a resource group.
fn group_of(scope: &str) -> Option<String> {
    let parts: Vec<&str> = scope.trim_matches('/').split('/').collect();
    if parts.len() >= 4
        && parts[0].eq_ignore_ascii_case("subscriptions")
        && parts[2].eq_ignore_ascii_case("resourceGroups")
    {
        Some(format!(
            "/subscriptions/{}/resourceGroups/{}",
            parts[1], parts[3]
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_ids_round_trip_and_ignore_case() {
        let id = ResourceId::parse(
            "/subscriptions/s1/resourcegroups/MC_rg/providers/microsoft.compute/Disks/pvc-1",
        )
        .unwrap();
        assert_eq!(id, ResourceId::disk("s1", "MC_rg", "pvc-1"));
        assert_eq!(
            id.to_string(),
            "/subscriptions/s1/resourceGroups/MC_rg/providers/Microsoft.Compute/disks/pvc-1"
        );
        assert_eq!(id.group_scope(), "/subscriptions/s1/resourceGroups/MC_rg");
        for bad in [
            "",
            "/subscriptions/s1/resourceGroups/g/providers/Microsoft.Storage/disks/d",
            "/subscriptions/s1/resourceGroups/g/providers/Microsoft.Compute/images/d",
            "/subscriptions//resourceGroups/g/providers/Microsoft.Compute/disks/d",
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/disks/d/extra",
        ] {
            let err = ResourceId::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("is not a managed disk or snapshot id"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn sas_urls_never_print_their_signature() {
        let sas = SasUrl::new(
            Url::parse("https://md-x.blob.core.windows.net/c/abcd?sv=1&sig=SECRET").unwrap(),
        );
        assert!(!format!("{sas} {sas:?}").contains("SECRET"));
        assert!(sas.expose().as_str().contains("SECRET"));
    }

    #[test]
    fn authorization_failures_name_the_role_and_scope() {
        let message = "The client 'a@b' with object id '0000-1' does not have authorization to perform action 'Microsoft.Compute/snapshots/write' over scope '/subscriptions/s/resourceGroups/snaps/providers/Microsoft.Compute/snapshots/x' or the scope is invalid.";
        let fix = fix_for(403, "AuthorizationFailed", message, "x").unwrap();
        assert_eq!(
            fix,
            "the identity lacks `Microsoft.Compute/snapshots/write`: `az role assignment create --assignee-object-id 0000-1 --assignee-principal-type ServicePrincipal --role \"Disk Snapshot Contributor\" --scope /subscriptions/s/resourceGroups/snaps`"
        );
    }
}
