//! `--server URL`: the CLI commands that call `stowage serve`'s API instead of reading the
//! vault and publishing to the broker themselves: `backup now`, `jobs list|show|watch|cancel`,
//! `rp list`, `restore create` (with `--dry-run` and `--wait`) and `restore status`. They print
//! what the direct commands print.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use serde::Serialize;
use serde::de::DeserializeOwned;
use stowage_schemas::domain::JobRecord;

use super::api::{JobView, PlanView, RestoreBody, Submitted};
use crate::catalog_cmd::BackupAction;
use crate::cli::{Command, Format, OutputArgs, RpAction};
use crate::jobs_cmd::{self, JobsAction};
use crate::output;
use crate::restore_cmd::{ExistingChoice, FromTier, RestoreAction};

/// Where `stowage serve` is, for the commands that can use it.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Call the API of `stowage serve` at this URL (e.g. http://127.0.0.1:8480) instead of
    /// the vault and the broker: backup now, jobs list|show|watch|cancel, rp list, restore
    /// create|status.
    #[arg(long, global = true, env = "STOWAGE_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// The API token, in a file (its first line): `stowage serve` requires it, clients send
    /// it. STOWAGE_API_TOKEN gives it directly.
    #[arg(
        long,
        global = true,
        env = "STOWAGE_API_TOKEN_FILE",
        value_name = "PATH"
    )]
    pub token_file: Option<PathBuf>,
}

/// A client of the API.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the server at `base`.
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .context("cannot make an HTTP client")?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<T> {
        let request = match &self.token {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach stowage serve at {} ({what})", self.base))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("cannot read the answer of {what}"))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            bail!("{message} (HTTP {} from {what})", status.as_u16());
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("the answer of {what} is not what this stowage expects"))
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.get(&url), &format!("GET {path}")).await
    }

    /// `POST path` with a JSON body.
    pub async fn post<T: DeserializeOwned, B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let body = serde_json::to_vec(body)?;
        self.send(
            self.http
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
            &format!("POST {path}"),
        )
        .await
    }

    /// A job's record; `None` when the server has none (yet).
    pub async fn job(&self, id: &str) -> anyhow::Result<Option<JobRecord>> {
        match self.get::<JobView>(&format!("/api/v1/jobs/{id}")).await {
            Ok(view) => Ok(Some(view.record)),
            Err(e) if format!("{e}").contains("(HTTP 404 ") => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Runs `command` through the API of `stowage serve` at `--server`.
pub async fn run(args: &ServerArgs, command: Command) -> anyhow::Result<()> {
    let base = args.server.as_deref().unwrap_or_default();
    let client = Client::new(base, super::token(args.token_file.as_deref())?)?;
    match command {
        Command::Backup(b) => {
            let BackupAction::Now { instance } = b.action;
            let who = std::env::var("USER").unwrap_or_else(|_| "cli".into());
            let s: Submitted = client
                .post(
                    &format!("/api/v1/instances/{instance}/backups"),
                    &serde_json::json!({ "requested_by": format!("cli: {who}") }),
                )
                .await?;
            println!("{}", s.job_id);
            eprintln!(
                "backup of {instance} submitted as job {} (recovery point {}); follow it with \
                 `stowage jobs watch {} --server {base}`",
                s.job_id,
                s.recovery_point_id.as_deref().unwrap_or("-"),
                s.job_id
            );
            Ok(())
        }
        Command::Jobs(j) => match j.action {
            JobsAction::List {
                instance,
                status,
                limit,
                output: OutputArgs { output },
            } => {
                let mut query = vec![format!("limit={}", limit.clamp(1, 1000))];
                if let Some(i) = instance {
                    query.push(format!("instance={i}"));
                }
                if let Some(s) = status {
                    query.push(format!("status={}", jobs_cmd::status_name(s.status())));
                }
                let jobs: Vec<JobView> = client
                    .get(&format!("/api/v1/jobs?{}", query.join("&")))
                    .await?;
                let jobs: Vec<JobRecord> = jobs.into_iter().map(|v| v.record).collect();
                jobs_cmd::print_list(&jobs, output)
            }
            JobsAction::Show {
                id,
                output: OutputArgs { output },
            } => {
                let job: JobView = client.get(&format!("/api/v1/jobs/{id}")).await?;
                jobs_cmd::show(&job.record, output)
            }
            JobsAction::Watch {
                id,
                interval,
                timeout,
            } => watch(&client, &id, interval, timeout).await,
            JobsAction::Cancel { id } => {
                let job: JobView = client
                    .post(&format!("/api/v1/jobs/{id}/cancel"), &serde_json::json!({}))
                    .await?;
                println!(
                    "cancellation of job {id} requested at {}",
                    job.record
                        .cancel_requested_at
                        .map(|t| t.to_string())
                        .unwrap_or_default()
                );
                Ok(())
            }
        },
        Command::Rp(r) => match r.action {
            RpAction::List {
                instance,
                output: OutputArgs { output },
            } => {
                let views: Vec<crate::rp_cmd::RpView> = client
                    .get(&format!("/api/v1/instances/{instance}/recovery-points"))
                    .await?;
                crate::rp_cmd::print_list(&instance, &views, output)
            }
            _ => bail!(unsupported("rp (other than list)")),
        },
        Command::Restore(r) => match r.action {
            RestoreAction::Create(create) => {
                let body = RestoreBody {
                    instance: create.instance.clone(),
                    recovery_point_id: create.rp.clone(),
                    from: Some(match create.from {
                        FromTier::Operational => stowage_schemas::domain::Tier::Operational,
                        FromTier::Vault => stowage_schemas::domain::Tier::Vault,
                        FromTier::Secondary => stowage_schemas::domain::Tier::Secondary,
                    }),
                    restore_id: create.restore_id.clone(),
                    target_cluster: create.target_cluster.clone(),
                    namespaces: create.namespaces.clone(),
                    namespace_mapping: crate::restore_cmd::parse_mapping(
                        &create.namespace_mapping,
                    )?,
                    existing: Some(
                        match create.existing {
                            ExistingChoice::Skip => "skip",
                            ExistingChoice::Patch => "patch",
                        }
                        .into(),
                    ),
                    include_volumes: Some(!create.no_volumes),
                };
                if create.dry_run {
                    let plan: PlanView = client.post("/api/v1/restores/plan", &body).await?;
                    return print_plan(&plan, create.output);
                }
                let s: Submitted = client.post("/api/v1/restores", &body).await?;
                let id = s.job_id;
                eprintln!(
                    "restore {id} submitted through {base}; follow it with `stowage jobs watch \
                     {id} --server {base}`"
                );
                println!("{id}");
                if create.wait {
                    watch(&client, &id, 1.0, create.timeout).await?;
                }
                Ok(())
            }
            RestoreAction::Status {
                restore_id,
                output: OutputArgs { output },
            } => {
                let job: JobView = client
                    .get(&format!("/api/v1/restores/{restore_id}"))
                    .await?;
                jobs_cmd::show(&job.record, output)
            }
            RestoreAction::Cleanup { .. } => bail!(unsupported("restore cleanup")),
        },
        Command::Serve(_) => unreachable!("serve never runs as a client"),
        other => bail!(unsupported(command_name(&other))),
    }
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Worker(_) => "worker",
        Command::Submit(_) => "submit",
        Command::Dlq(_) => "dlq",
        Command::Topology(_) => "topology",
        Command::Demo(_) => "demo",
        Command::Sandbox(_) => "sandbox",
        Command::Preflight(_) => "preflight",
        Command::Vault(_) => "vault",
        Command::Policy(_) => "policy",
        Command::Instance(_) => "instance",
        Command::Drill(_) => "drill",
        Command::Scheduler(_) => "scheduler",
        _ => "this command",
    }
}

fn unsupported(what: &str) -> String {
    format!(
        "`stowage {what}` does not go through --server (only backup now, jobs, rp list and \
         restore create|status do); drop --server (unset STOWAGE_SERVER) and give --vault"
    )
}

async fn watch(
    client: &Client,
    id: &str,
    interval: f64,
    timeout: Option<f64>,
) -> anyhow::Result<()> {
    jobs_cmd::watch_with(
        id,
        Duration::from_secs_f64(interval.max(0.05)),
        timeout.map(|t| Duration::from_secs_f64(t.max(0.0))),
        || client.job(id),
    )
    .await
}

fn print_plan(plan: &PlanView, format: Format) -> anyhow::Result<()> {
    if !plan.planned {
        eprintln!(
            "dry run: {}",
            plan.note.as_deref().unwrap_or("no plan was made")
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = plan
        .entries
        .iter()
        .map(|e| {
            vec![
                e.wave.to_string(),
                e.action.clone(),
                e.object.clone(),
                e.new_disk.clone().unwrap_or_else(|| "-".into()),
                e.reason.clone(),
            ]
        })
        .collect();
    output::print(
        format,
        &["WAVE", "ACTION", "OBJECT", "NEW DISK", "REASON"],
        &rows,
        plan,
    )?;
    if let Some(summary) = &plan.summary {
        eprintln!("{summary}");
    }
    if plan.conflicts > 0 {
        return Err(output::Exit {
            code: crate::restore_cmd::EXIT_CONFLICTS,
            message: format!(
                "the plan has {} conflict(s) (action `conflict` above, each with its reason)",
                plan.conflicts
            ),
        }
        .into());
    }
    Ok(())
}
