//! The HTTP API of `stowage serve` (`schemas/openapi.yaml`): thin handlers over the command
//! code (`jobs_cmd`, `rp_cmd`, `restore_cmd`, the control crate), JSON in and out.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, body::Bytes};
use futures::StreamExt as _;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use stowage_control::scheduler::{Slots, backup_now};
use stowage_runtime::client::list_dead_letters;
use stowage_runtime::{BrokerError, RetryPolicy, Topology};
use stowage_schemas::Stage;
use stowage_schemas::domain::{BackupInstance, JobRecord, JobStatus, Tier};
use stowage_vault::catalog::{drills, settings};

use super::Served;
use crate::restore_cmd::{self, CreateArgs, ExistingChoice, FromTier};
use crate::{jobs_cmd, rp_cmd};

/// What `GET /api/v1/info` says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    /// The stowage version.
    pub version: String,
    /// `in-process`, or the RabbitMQ endpoint.
    pub broker: String,
    /// The vault location.
    pub vault: String,
    /// The secondary location, if any.
    pub secondary: Option<String>,
    /// The stages this process runs.
    pub stages: Vec<Stage>,
    /// The cluster the snapshot and restore stages here serve.
    pub cluster: Option<String>,
    /// Jobs resubmitted at start.
    pub recovered_jobs: Vec<String>,
}

/// A job record with its overall status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    /// The record.
    #[serde(flatten)]
    pub record: JobRecord,
    /// Its overall status ([`JobRecord::status`]).
    pub status: JobStatus,
}

impl From<JobRecord> for JobView {
    fn from(record: JobRecord) -> Self {
        let status = record.status();
        Self { record, status }
    }
}

/// An error as the API returns it: `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// An error of the command code: its first line decides the status (`no …`: 404,
    /// `… already exists`: 409, `cannot …`: 503, otherwise a refused request, 400).
    fn from_command(e: &anyhow::Error) -> Self {
        let text = format!("{e:#}");
        let status = if text.starts_with("no ") || too_long(&text) {
            StatusCode::NOT_FOUND
        } else if text.contains("already exists") {
            StatusCode::CONFLICT
        } else if text.starts_with("cannot ") {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::BAD_REQUEST
        };
        Self::new(status, text)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// An id within the id rule can still make a key longer than a local-folder vault's file
/// system takes (`<253 bytes>.json`): no such object can exist, so it is not found.
fn too_long(text: &str) -> bool {
    text.contains("File name too long") || text.contains("name too long")
}

impl From<settings::SettingsError> for ApiError {
    fn from(e: settings::SettingsError) -> Self {
        if e.is_not_found() || too_long(&e.to_string()) {
            Self::not_found(e.to_string())
        } else {
            Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

impl From<stowage_vault::Error> for ApiError {
    fn from(e: stowage_vault::Error) -> Self {
        if e.is_not_found() || too_long(&e.to_string()) {
            Self::not_found(e.to_string())
        } else {
            Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

fn id(what: &str, value: &str) -> Result<(), ApiError> {
    stowage_schemas::id::validate(value).map_err(|e| ApiError::bad(format!("{what}: {e}")))
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(v)| v).map_err(|e| ApiError::bad(e.body_text()))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad(e.body_text()))
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|e| ApiError::bad(e.body_text()))
}

/// The API's routes (everything under `/api/v1`, and `/livez`, `/readyz`, `/metrics`).
pub fn router(served: Served) -> Router {
    let api = Router::new()
        .route("/info", get(info))
        .route("/fleet", get(fleet))
        .route("/vault", get(vault))
        .route("/policies", get(policies))
        .route("/policies/{name}", get(policy))
        .route("/instances", get(instances))
        .route("/instances/{name}", get(instance))
        .route("/instances/{name}/backups", post(backup))
        .route("/instances/{name}/recovery-points", get(recovery_points))
        .route(
            "/instances/{name}/recovery-points/{rp}",
            get(recovery_point),
        )
        .route("/jobs", get(jobs))
        .route("/jobs/{id}", get(job))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/restores", post(create_restore))
        .route("/restores/plan", post(plan_restore))
        .route("/restores/{id}", get(restore))
        .route("/drills", get(drill_list))
        .route("/drills/{id}", get(drill))
        .route("/dead-letters", get(dead_letters))
        .fallback(|| async { ApiError::not_found("no such API path; see schemas/openapi.yaml") })
        .route_layer(middleware::from_fn_with_state(served.clone(), auth))
        .with_state(served);
    Router::new()
        .nest("/api/v1", api)
        .merge(stowage_runtime::health::router(
            stowage_runtime::Health::default(),
        ))
}

/// `Authorization: Bearer <token>` when the server has a token.
async fn auth(
    State(s): State<Served>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &s.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(given.as_bytes(), token.as_bytes()) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token: send `Authorization: Bearer <token>` (the token \
                 stowage serve was given with --token-file or STOWAGE_API_TOKEN)",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Compares in time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn info(State(s): State<Served>) -> Json<Info> {
    Json(s.info.clone())
}

#[derive(Debug, Serialize)]
struct QueueView {
    queue: String,
    stage: Option<Stage>,
    dead_letter: bool,
    depth: u32,
}

#[derive(Debug, Serialize)]
struct FleetView {
    broker: String,
    queues: Vec<QueueView>,
    geo_replication_lag_seconds: Option<f64>,
}

async fn fleet(State(s): State<Served>) -> ApiResult<FleetView> {
    let topology = Topology::new(s.names.clone(), &RetryPolicy::default());
    let mut names: Vec<(String, Option<Stage>, bool)> = Vec::new();
    for q in &topology.queues {
        let stage = Stage::ALL.iter().copied().find(|&st| {
            q.name == s.names.stage_queue(st) || q.name == s.names.dead_letter_queue(st)
        });
        let dead = Stage::ALL
            .iter()
            .any(|&st| q.name == s.names.dead_letter_queue(st));
        names.push((q.name.clone(), stage, dead));
    }
    let mut clusters: Vec<String> = s.info.cluster.iter().cloned().collect();
    let mut listing = settings::list_instances(&s.store);
    while let Some(i) = listing.next().await {
        if let Ok(i) = i
            && !clusters.contains(&i.cluster)
        {
            clusters.push(i.cluster);
        }
    }
    for cluster in &clusters {
        for stage in [Stage::Snapshot, Stage::Restore] {
            let name = s.names.cluster_queue(stage, cluster);
            if !names.iter().any(|(n, _, _)| *n == name) {
                names.push((name, Some(stage), false));
            }
        }
    }
    let mut queues = Vec::new();
    for (queue, stage, dead_letter) in names {
        match s.broker.queue_depth(&queue).await {
            Ok(depth) => queues.push(QueueView {
                queue,
                stage,
                dead_letter,
                depth,
            }),
            Err(BrokerError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let geo_replication_lag_seconds = match &s.secondary {
        None => None,
        Some(_) => Some(geo_lag(&s).await.map_err(|e| ApiError::from_command(&e))?),
    };
    Ok(Json(FleetView {
        broker: s.info.broker.clone(),
        queues,
        geo_replication_lag_seconds,
    }))
}

/// Age of the oldest recovery point in the vault tier and not in the secondary tier.
async fn geo_lag(s: &Served) -> anyhow::Result<f64> {
    let now = Timestamp::now();
    let mut lag = 0f64;
    let mut listing = settings::list_instances(&s.store);
    while let Some(i) = listing.next().await {
        let i = i?;
        for v in rp_cmd::views(&s.store, s.secondary.as_ref(), &i.name).await? {
            let state = |tier| {
                v.tiers
                    .iter()
                    .find(|t| t.tier == tier)
                    .is_some_and(|t| t.state == "available")
            };
            if state(Tier::Vault) && !state(Tier::Secondary) && v.soft_deleted.is_none() {
                let age = now
                    .duration_since(v.recovery_point.created_at)
                    .as_secs_f64()
                    .max(0.0);
                lag = lag.max(age);
            }
        }
    }
    Ok(lag)
}

async fn vault(State(s): State<Served>) -> ApiResult<stowage_schemas::domain::Vault> {
    Ok(Json(settings::read_vault(&s.store).await?))
}

async fn policies(State(s): State<Served>) -> ApiResult<Vec<stowage_schemas::domain::Policy>> {
    let mut out = Vec::new();
    let mut listing = settings::list_policies(&s.store);
    while let Some(p) = listing.next().await {
        out.push(p?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(out))
}

async fn policy(
    State(s): State<Served>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<stowage_schemas::domain::Policy> {
    let name = path(name)?;
    id("policy name", &name)?;
    Ok(Json(settings::read_policy(&s.store, &name).await?))
}

#[derive(Debug, Serialize)]
struct LastGood {
    recovery_point_id: String,
    created_at: Timestamp,
}

#[derive(Debug, Serialize)]
struct Protection {
    last_good: BTreeMap<&'static str, LastGood>,
    next_slot: Option<Timestamp>,
    rpo_seconds: u64,
    rpo_breached: bool,
    last_job: Option<JobView>,
}

#[derive(Debug, Serialize)]
struct InstanceView {
    instance: BackupInstance,
    protection: Protection,
}

/// The scheduler's window: a slot may start this long after its time.
const WINDOW_SECONDS: u64 = 2 * 3600;

async fn protection(
    s: &Served,
    instance: &BackupInstance,
    last_job: Option<JobRecord>,
) -> Result<Protection, ApiError> {
    let now = Timestamp::now();
    let views = rp_cmd::views(&s.store, s.secondary.as_ref(), &instance.name)
        .await
        .map_err(|e| ApiError::from_command(&e))?;
    let mut last_good = BTreeMap::new();
    let mut newest: Option<Timestamp> = None;
    for v in views.iter().filter(|v| v.soft_deleted.is_none()) {
        for t in v.tiers.iter().filter(|t| t.state == "available") {
            last_good
                .entry(t.tier.as_str())
                .or_insert_with(|| LastGood {
                    recovery_point_id: v.recovery_point.id.clone(),
                    created_at: v.recovery_point.created_at,
                });
            newest = newest.max(Some(v.recovery_point.created_at));
        }
    }
    let (next_slot, rpo_seconds) = match settings::read_policy(&s.store, &instance.policy).await {
        Ok(policy) => (
            Slots::new(&policy.schedule)
                .ok()
                .and_then(|slots| slots.next_after(now)),
            u64::from(policy.schedule.frequency_hours) * 3600,
        ),
        Err(e) if e.is_not_found() => (None, 0),
        Err(e) => return Err(e.into()),
    };
    let rpo_breached = match newest {
        None => true,
        Some(at) => now.duration_since(at).as_secs_f64() > (rpo_seconds + WINDOW_SECONDS) as f64,
    };
    Ok(Protection {
        last_good,
        next_slot,
        rpo_seconds,
        rpo_breached,
        last_job: last_job.map(JobView::from),
    })
}

/// The newest job record of each instance, in one pass over the records.
async fn last_jobs(s: &Served) -> Result<BTreeMap<String, JobRecord>, ApiError> {
    let mut out: BTreeMap<String, JobRecord> = BTreeMap::new();
    let mut listing = stowage_vault::catalog::jobs::list_jobs(&s.store);
    while let Some(job) = listing.next().await {
        let job = match job {
            Ok(job) => job,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        let Some(instance) = job.instance.clone() else {
            continue;
        };
        match out.get(&instance) {
            Some(have) if have.created_at >= job.created_at => {}
            _ => {
                out.insert(instance, job);
            }
        }
    }
    Ok(out)
}

async fn instances(State(s): State<Served>) -> ApiResult<Vec<InstanceView>> {
    let mut all = Vec::new();
    let mut listing = settings::list_instances(&s.store);
    while let Some(i) = listing.next().await {
        all.push(i?);
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let mut last = last_jobs(&s).await?;
    let mut out = Vec::new();
    for instance in all {
        let job = last.remove(&instance.name);
        let protection = protection(&s, &instance, job).await?;
        out.push(InstanceView {
            instance,
            protection,
        });
    }
    Ok(Json(out))
}

async fn instance(
    State(s): State<Served>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<InstanceView> {
    let name = path(name)?;
    id("instance name", &name)?;
    let instance = settings::read_instance(&s.store, &name).await?;
    let job = jobs_cmd::newest(&s.store, 1, |j| j.instance.as_deref() == Some(&name))
        .await
        .map_err(|e| ApiError::from_command(&e))?
        .into_iter()
        .next();
    let protection = protection(&s, &instance, job).await?;
    Ok(Json(InstanceView {
        instance,
        protection,
    }))
}

#[derive(Debug, Default, Deserialize)]
struct BackupRequest {
    #[serde(default)]
    requested_by: Option<String>,
}

/// What a submission returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submitted {
    /// The job to follow.
    pub job_id: String,
    /// The recovery point a backup makes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_point_id: Option<String>,
    /// The restore's id (= its job id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_id: Option<String>,
}

async fn backup(
    State(s): State<Served>,
    name: Result<Path<String>, PathRejection>,
    raw: Bytes,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    let name = path(name)?;
    id("instance name", &name)?;
    let request: BackupRequest = if raw.iter().all(u8::is_ascii_whitespace) {
        BackupRequest::default()
    } else {
        serde_json::from_slice(&raw)
            .map_err(|e| ApiError::bad(format!("the body is not a backup request: {e}")))?
    };
    let who = request.requested_by.unwrap_or_else(|| "api".into());
    let record = backup_now(
        &s.store,
        s.broker.as_ref(),
        &s.names,
        &name,
        Some(format!("api: {who}")),
        Timestamp::now(),
    )
    .await
    .map_err(|e| {
        let text = e.to_string();
        if text.contains("not found") || text.contains("does not exist") || text.starts_with("no ")
        {
            ApiError::not_found(text)
        } else if matches!(
            e,
            stowage_control::scheduler::SchedulerError::Publish { .. }
        ) {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, text)
        } else {
            ApiError::bad(text)
        }
    })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Submitted {
            job_id: record.id,
            recovery_point_id: record.recovery_point_id,
            restore_id: None,
        }),
    ))
}

async fn recovery_points(
    State(s): State<Served>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Vec<rp_cmd::RpView>> {
    let name = path(name)?;
    id("instance name", &name)?;
    settings::read_instance(&s.store, &name).await?;
    let views = rp_cmd::views(&s.store, s.secondary.as_ref(), &name)
        .await
        .map_err(|e| ApiError::from_command(&e))?;
    Ok(Json(views))
}

async fn recovery_point(
    State(s): State<Served>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<rp_cmd::RpView> {
    let (name, rp) = path(p)?;
    id("instance name", &name)?;
    id("recovery point id", &rp)?;
    let manifest = stowage_vault::catalog::read_recovery_point(&s.store, &name, &rp).await?;
    let view = rp_cmd::view(&s.store, s.secondary.as_ref(), manifest, true)
        .await
        .map_err(|e| ApiError::from_command(&e))?;
    Ok(Json(view))
}

#[derive(Debug, Deserialize)]
struct JobsQuery {
    instance: Option<String>,
    status: Option<JobStatus>,
    limit: Option<usize>,
}

async fn jobs(
    State(s): State<Served>,
    q: Result<Query<JobsQuery>, QueryRejection>,
) -> ApiResult<Vec<JobView>> {
    let q = query(q)?;
    if let Some(i) = &q.instance {
        id("instance", i)?;
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad("limit must be between 1 and 1000"));
    }
    let jobs = jobs_cmd::newest(&s.store, limit, |job| {
        q.instance
            .as_deref()
            .is_none_or(|i| job.instance.as_deref() == Some(i))
            && q.status.is_none_or(|st| job.status() == st)
    })
    .await
    .map_err(|e| ApiError::from_command(&e))?;
    Ok(Json(jobs.into_iter().map(JobView::from).collect()))
}

async fn read_job(s: &Served, job_id: &str) -> Result<JobRecord, ApiError> {
    id("job id", job_id)?;
    match stowage_vault::catalog::jobs::read_job(&s.store, job_id).await {
        Ok((job, _)) => Ok(job),
        Err(e) if e.is_not_found() => Err(ApiError::not_found(format!("no job {job_id}"))),
        Err(e) => Err(e.into()),
    }
}

async fn job(
    State(s): State<Served>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<JobView> {
    let job_id = path(p)?;
    Ok(Json(read_job(&s, &job_id).await?.into()))
}

async fn cancel(
    State(s): State<Served>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<JobView> {
    let job_id = path(p)?;
    let before = read_job(&s, &job_id).await?;
    if jobs_cmd::is_finished(&before) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "job {job_id} has already finished ({}); nothing to cancel",
                jobs_cmd::status_name(before.status())
            ),
        ));
    }
    let now = Timestamp::now();
    let job = stowage_vault::catalog::jobs::update_known_job(&s.store, &before, |job| {
        if job.cancel_requested_at.is_none() {
            job.cancel_requested_at = Some(now);
            job.updated_at = now;
        }
    })
    .await?;
    Ok(Json(job.into()))
}

/// A restore request (`RestoreRequest` in the OpenAPI document).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    /// The backup instance.
    pub instance: String,
    /// The recovery point.
    pub recovery_point_id: String,
    /// The tier (default: vault).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Tier>,
    /// The restore id (default: generated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_id: Option<String>,
    /// The target cluster (default: the instance's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cluster: Option<String>,
    /// Namespaces to restore; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Backed-up namespace → target namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_mapping: BTreeMap<String, String>,
    /// `skip` (default) or `patch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing: Option<String>,
    /// Restore volume data (default: true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_volumes: Option<bool>,
}

impl RestoreBody {
    /// The `restore create` arguments this request stands for.
    fn args(&self) -> Result<CreateArgs, ApiError> {
        id("instance", &self.instance)?;
        id("recovery_point_id", &self.recovery_point_id)?;
        if let Some(r) = &self.restore_id {
            id("restore_id", r)?;
        }
        if let Some(c) = &self.target_cluster {
            id("target_cluster", c)?;
        }
        let existing = match self.existing.as_deref() {
            None | Some("skip") => ExistingChoice::Skip,
            Some("patch") => ExistingChoice::Patch,
            Some(other) => {
                return Err(ApiError::bad(format!(
                    "existing: {other:?} is not skip or patch"
                )));
            }
        };
        Ok(CreateArgs {
            instance: self.instance.clone(),
            rp: self.recovery_point_id.clone(),
            from: match self.from.unwrap_or(Tier::Vault) {
                Tier::Operational => FromTier::Operational,
                Tier::Vault => FromTier::Vault,
                Tier::Secondary => FromTier::Secondary,
            },
            namespace_mapping: self
                .namespace_mapping
                .iter()
                .map(|(a, b)| format!("{a}={b}"))
                .collect(),
            namespaces: self.namespaces.clone(),
            existing,
            no_volumes: !self.include_volumes.unwrap_or(true),
            target_cluster: self.target_cluster.clone(),
            restore_id: self.restore_id.clone(),
            dry_run: false,
            kubeconfig: None,
            context: None,
            output: crate::cli::Format::Table,
            wait: false,
            timeout: None,
        })
    }
}

async fn create_restore(
    State(s): State<Served>,
    b: Result<Json<RestoreBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    let request = body(b)?;
    let args = request.args()?;
    let envelope = restore_cmd::plan(&s.store, s.secondary.as_ref(), &args)
        .await
        .map_err(|e| ApiError::from_command(&e))?;
    // Kept so that a restart of this process can resubmit the restore (its queues are lost).
    if s.info.broker == "in-process" {
        stowage_control::recovery::save_request(&s.store, &envelope)
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    }
    restore_cmd::submit_restore(
        &s.store,
        s.broker.as_ref(),
        &s.names,
        &envelope,
        Some("api".into()),
    )
    .await
    .map_err(|e| {
        let text = format!("{e:#}");
        if text.contains("already exists") {
            ApiError::new(StatusCode::CONFLICT, text)
        } else {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, text)
        }
    })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Submitted {
            job_id: envelope.job_id.clone(),
            recovery_point_id: Some(request.recovery_point_id),
            restore_id: Some(envelope.job_id),
        }),
    ))
}

/// One object of a plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanEntryView {
    /// Its wave.
    pub wave: u32,
    /// `create`, `skip`, `patch` or `conflict`.
    pub action: String,
    /// `Kind namespace/name`.
    pub object: String,
    /// The disk a claim's data lands on.
    pub new_disk: Option<String>,
    /// Why, and what it waits for.
    pub reason: String,
}

/// A restore plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanView {
    /// The restore id planned (pass it to the real restore).
    pub restore_id: String,
    /// Whether the restore stage planned it (false: only the request was checked).
    pub planned: bool,
    /// Why not planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// One line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Waves.
    #[serde(default)]
    pub waves: u32,
    /// Conflicts.
    #[serde(default)]
    pub conflicts: u64,
    /// The objects in order.
    pub entries: Vec<PlanEntryView>,
}

async fn plan_restore(
    State(s): State<Served>,
    b: Result<Json<RestoreBody>, JsonRejection>,
) -> ApiResult<PlanView> {
    let request = body(b)?;
    let args = request.args()?;
    let envelope = restore_cmd::plan(&s.store, s.secondary.as_ref(), &args)
        .await
        .map_err(|e| ApiError::from_command(&e))?;
    let restore_id = envelope.job_id.clone();
    let target = match &envelope.message {
        stowage_schemas::Message::Restore(j) => j.options.target_cluster.clone(),
        stowage_schemas::Message::RestoreHydration(j) => j.options.target_cluster.clone(),
        _ => None,
    }
    .unwrap_or_default();
    let not_planned = |note: String| PlanView {
        restore_id: restore_id.clone(),
        planned: false,
        note: Some(note),
        summary: None,
        waves: 0,
        conflicts: 0,
        entries: Vec::new(),
    };
    let Some((name, client, described)) = &s.plan_cluster else {
        return Ok(Json(not_planned(
            "the request is valid, but no plan was made: this server has no credentials for \
             the target cluster (start it with --kubeconfig, or --sandbox)"
                .into(),
        )));
    };
    if !name.is_empty() && *name != target {
        return Ok(Json(not_planned(format!(
            "the request is valid, but no plan was made: this server reaches cluster {name}, \
             not the target cluster {target}"
        ))));
    }
    let dry = restore_cmd::dry_run(
        &s.store,
        s.secondary.as_ref(),
        &envelope,
        client.clone(),
        described,
    )
    .await
    .map_err(|e| ApiError::from_command(&e))?;
    use stowage_stages::restore::PlanAction;
    let report = &dry.report;
    let entries = report
        .plan
        .iter()
        .map(|e| {
            let object = match &e.namespace {
                Some(ns) => format!("{} {ns}/{}", e.kind, e.name),
                None => format!("{} {}", e.kind, e.name),
            };
            let mut reason = e.reason();
            if !e.after.is_empty() {
                reason.push_str(&format!("; after {}", e.after.join(", ")));
            }
            PlanEntryView {
                wave: e.wave,
                action: e.action.word().to_owned(),
                object,
                new_disk: e.disk.clone(),
                reason,
            }
        })
        .collect::<Vec<_>>();
    let summary = format!(
        "dry run of restore {restore_id}: recovery point {} of {} ({} tier) into cluster {}: {} \
         objects in {} waves: {} create, {} patch, {} skip, {} conflict; {} volume(s) onto new \
         disks. Nothing was changed, written or submitted.",
        dry.request.recovery_point_id,
        dry.request.instance,
        dry.tier.as_str(),
        dry.target,
        entries.len(),
        report.waves,
        report.count(PlanAction::Create),
        report.count(PlanAction::Patch),
        report.count(PlanAction::Skip),
        report.count(PlanAction::Conflict),
        report.volumes_restored,
    );
    Ok(Json(PlanView {
        restore_id,
        planned: true,
        note: None,
        summary: Some(summary),
        waves: report.waves,
        conflicts: report.count(PlanAction::Conflict),
        entries,
    }))
}

async fn restore(
    State(s): State<Served>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<JobView> {
    let restore_id = path(p)?;
    Ok(Json(read_job(&s, &restore_id).await?.into()))
}

#[derive(Debug, Deserialize)]
struct DrillQuery {
    instance: Option<String>,
}

async fn drill_list(
    State(s): State<Served>,
    q: Result<Query<DrillQuery>, QueryRejection>,
) -> ApiResult<Vec<drills::DrillRecord>> {
    let q = query(q)?;
    if let Some(i) = &q.instance {
        id("instance", i)?;
    }
    let mut out = Vec::new();
    let mut listing = drills::list_drills(&s.store);
    while let Some(d) = listing.next().await {
        let d = match d {
            Ok(d) => d,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        if q.instance.as_deref().is_none_or(|i| d.instance == i) {
            out.push(d);
        }
    }
    out.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(a.id.cmp(&b.id)));
    Ok(Json(out))
}

async fn drill(
    State(s): State<Served>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<drills::DrillRecord> {
    let drill_id = path(p)?;
    id("drill id", &drill_id)?;
    Ok(Json(drills::read_drill(&s.store, &drill_id).await?))
}

#[derive(Debug, Deserialize)]
struct DeadLetterQuery {
    stage: Option<Stage>,
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
struct DeadLetterView {
    stage: Stage,
    #[serde(flatten)]
    letter: stowage_runtime::client::DeadLetter,
}

async fn dead_letters(
    State(s): State<Served>,
    q: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> ApiResult<Vec<DeadLetterView>> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad("limit must be between 1 and 1000"));
    }
    let stages: Vec<Stage> = match q.stage {
        Some(stage) => vec![stage],
        None => Stage::ALL.to_vec(),
    };
    let mut out = Vec::new();
    for stage in stages {
        match list_dead_letters(s.broker.as_ref(), &s.names, stage, limit).await {
            Ok(letters) => out.extend(
                letters
                    .into_iter()
                    .map(|letter| DeadLetterView { stage, letter }),
            ),
            Err(BrokerError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    out.truncate(limit);
    Ok(Json(out))
}
