//! Pre- and post-hooks: a command run in each matching running pod, with a timeout, whose
//! failure fails the backup or only warns (`onError`).

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use stowage_cluster::{ClusterTarget, ExecError, ExecRequest};
use stowage_runtime::StageError;
use stowage_schemas::domain::{Hook, HookErrorMode, HookPhase};

use crate::cluster_context::{kube_error, kube_is_transient};

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
        };
        let at = format!("{label} in pod {}/{pod}", hook.namespace);
        let failure = match tokio::time::timeout(timeout, cluster.exec.exec(&request)).await {
            Ok(Ok(output)) if output.exit_code == 0 => {
                tracing::info!(hook = %hook.name, pod, "hook ran");
                continue;
            }
            Ok(Ok(output)) => format!(
                "{at} exited with code {}{}",
                output.exit_code,
                match output.stderr.trim() {
                    "" => String::new(),
                    stderr => format!(" ({stderr})"),
                }
            ),
            Ok(Err(error)) => {
                let ExecError::Api { source, .. } = &error;
                if hook.on_error == HookErrorMode::Fail && kube_is_transient(source) {
                    return Err(StageError::transient(format!(
                        "{at} could not be run: {error}; the snapshot will be retried"
                    )));
                }
                format!("{at} could not be run: {error}")
            }
            Err(_) => format!(
                "{at} did not finish within its timeout of {}s",
                hook.timeout_seconds
            ),
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
