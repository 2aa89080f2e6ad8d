//! Pre- and post-hooks: a command run in each matching running pod through the cluster's
//! `pods/exec` websocket ([`stowage_cluster::PodExec`]), with a timeout that closes the
//! session. A failure (non-zero exit, timeout, refused exec) fails the backup or only warns
//! (`onError`); a lost connection under `onError: fail` is transient, so the snapshot is retried.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use stowage_cluster::{ClusterTarget, ExecRequest};
use stowage_runtime::StageError;
use stowage_schemas::domain::{Hook, HookErrorMode, HookPhase};

use crate::cluster_context::kube_error;

/// Runs the hooks of `phase`, in order (see the module doc).
pub(super) async fn run_hooks(
    cluster: &ClusterTarget,
    hooks: &[Hook],
    phase: HookPhase,
    warnings: &mut Vec<String>,
) -> Result<(), StageError> {
    for hook in hooks.iter().filter(|h| h.phase == phase) {
        run_hook(cluster, hook, warnings).await?;
    }
    Ok(())
}

fn phase_name(phase: HookPhase) -> &'static str {
    match phase {
        HookPhase::Pre => "pre",
        HookPhase::Post => "post",
    }
}

async fn run_hook(
    cluster: &ClusterTarget,
    hook: &Hook,
    warnings: &mut Vec<String>,
) -> Result<(), StageError> {
    let label = format!("{}-hook {:?}", phase_name(hook.phase), hook.name);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &hook.namespace);
    let mut params = ListParams::default();
    if let Some(selector) = &hook.label_selector {
        params = params.labels(selector);
    }
    let listed = pods.list(&params).await.map_err(|e| {
        kube_error(
            format!(
                "{label}: listing pods in namespace {} (selector {:?}) failed; check the hook's \
                 namespace and label selector",
                hook.namespace,
                hook.label_selector.as_deref().unwrap_or("")
            ),
            e,
        )
    })?;
    let mut names: Vec<String> = listed
        .items
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_none_or(|phase| phase == "Running")
        })
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    names.sort();
    if names.is_empty() {
        warnings.push(format!(
            "{label} matched no running pod in namespace {} (selector {:?}): it ran nowhere",
            hook.namespace,
            hook.label_selector.as_deref().unwrap_or("")
        ));
        return Ok(());
    }
    let timeout = std::time::Duration::from_secs(u64::from(hook.timeout_seconds));
    for pod in names {
        let request = ExecRequest {
            namespace: hook.namespace.clone(),
            pod: pod.clone(),
            container: hook.container.clone(),
            command: hook.command.clone(),
            timeout,
        };
        // The exec names the command, the pod and the container; a timeout closes the session.
        let failure = match cluster.exec.exec(&request).await {
            Ok(output) if output.exit_code == 0 => {
                tracing::info!(
                    hook = %hook.name,
                    pod,
                    container = output.container,
                    stdout_bytes = output.stdout.len(),
                    stdout_truncated = output.stdout_truncated,
                    "hook ran"
                );
                continue;
            }
            Ok(output) => format!(
                "{label}: command `{}` in pod {}/{pod} (container {}) exited with code {}{}",
                hook.command.join(" "),
                hook.namespace,
                output.container,
                output.exit_code,
                stderr_excerpt(&output.stderr, output.stderr_truncated)
            ),
            Err(error) => {
                if hook.on_error == HookErrorMode::Fail && error.is_transient() {
                    return Err(StageError::transient(format!(
                        "{label}: {error}; the snapshot will be retried"
                    )));
                }
                format!("{label}: {error}")
            }
        };
        match hook.on_error {
            HookErrorMode::Continue => {
                tracing::warn!("{failure}; continuing (the hook's onError is continue)");
                warnings.push(format!(
                    "{failure}; the backup continued (onError: continue)"
                ));
            }
            HookErrorMode::Fail => {
                return Err(StageError::permanent(format!(
                    "{failure}; the backup failed (onError: fail). Fix the command or the pod, \
                     raise timeout_seconds, or set on_error to continue, then submit the \
                     snapshot again"
                )));
            }
        }
    }
    Ok(())
}

/// Bytes of a failed hook's standard error quoted in its failure.
const STDERR_EXCERPT_BYTES: usize = 1024;

/// ` (what the command printed on stderr)`, cut to [`STDERR_EXCERPT_BYTES`], or nothing.
fn stderr_excerpt(stderr: &str, truncated: bool) -> String {
    let stderr = stderr.trim();
    if stderr.is_empty() {
        return String::new();
    }
    let mut end = stderr.len().min(STDERR_EXCERPT_BYTES);
    while !stderr.is_char_boundary(end) {
        end -= 1;
    }
    let cut = if truncated || end < stderr.len() {
        " …(cut)"
    } else {
        ""
    };
    format!(" ({}{cut})", &stderr[..end])
}
