//! Which Kubernetes cluster a command talks to, and as whom: kube's standard config inference,
//! as kubectl does it.
//!
//! In order:
//! 1. `--kubeconfig PATH` (its current context, or `--context NAME`);
//! 2. the `KUBECONFIG` environment variable (a list of files, merged as kubectl merges them);
//! 3. `~/.kube/config`, when it exists or `--context` is given;
//! 4. inside a pod (`KUBERNETES_SERVICE_HOST` set): the pod's service-account token and CA.
//!
//! Whatever the source, tokens, client certificates and exec credential plugins (such as
//! kubelogin) work as kubectl runs them, and the API server's certificate is verified: a
//! kubeconfig with `insecure-skip-tls-verify` is refused.
//!
//! An explicit source (1 to 3) that cannot be used is an error naming it. Finding none at all
//! is not: commands for which the cluster is optional (`preflight`, the checks of
//! `instance create`, workers of the vault stages) go on without one and say so, and the
//! snapshot and restore stages refuse to start, naming the flags. A pod whose service account
//! token is not mounted (the vault stages' pods) has no cluster either.

use anyhow::{Context as _, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::cli::ClusterArgs;

/// A client for the cluster the flags and environment name, and where it came from.
pub struct ClusterClient {
    /// The client, authenticated as the credentials say.
    pub client: kube::Client,
    /// The API server's URL.
    pub url: String,
    /// `kubeconfig /path (context x)`, `KUBECONFIG (context x)`, `in-cluster service account`.
    pub source: String,
}

/// The cluster `args` name, if any (see the module docs for the order).
pub async fn cluster_client(args: &ClusterArgs) -> anyhow::Result<Option<ClusterClient>> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let context = || {
        args.context
            .as_deref()
            .map(|c| format!(" (context {c})"))
            .unwrap_or_default()
    };
    let (config, source) = if let Some(path) = &args.kubeconfig {
        let kubeconfig = Kubeconfig::read_from(path).with_context(|| {
            format!(
                "cannot read the kubeconfig {} (--kubeconfig); check the path",
                path.display()
            )
        })?;
        let source = format!("kubeconfig {}{}", path.display(), context());
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .with_context(|| format!("cannot use {source}"))?;
        (config, source)
    } else if std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty()) {
        let source = format!("KUBECONFIG{}", context());
        let config = kube::Config::from_kubeconfig(&options)
            .await
            .with_context(|| format!("cannot use the kubeconfig {source} names"))?;
        (config, source)
    } else if args.context.is_some() || default_kubeconfig_exists() {
        let source = format!("~/.kube/config{}", context());
        let config = kube::Config::from_kubeconfig(&options)
            .await
            .with_context(|| format!("cannot use {source}"))?;
        (config, source)
    } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        match kube::Config::incluster() {
            Ok(config) => (config, "in-cluster service account".to_owned()),
            Err(error) => {
                tracing::info!(%error, "in a pod without a usable service-account token: no cluster");
                return Ok(None);
            }
        }
    } else {
        return Ok(None);
    };
    if config.accept_invalid_certs {
        bail!(
            "{source} turns off TLS verification (insecure-skip-tls-verify) for {}; Stowage \
             verifies the API server's certificate: give the cluster's CA instead \
             (certificate-authority-data or certificate-authority)",
            config.cluster_url
        );
    }
    let url = config.cluster_url.to_string();
    let client = kube::Client::try_from(config)
        .with_context(|| format!("cannot build a Kubernetes client from {source}"))?;
    Ok(Some(ClusterClient {
        client,
        url: url.trim_end_matches('/').to_owned(),
        source,
    }))
}

fn default_kubeconfig_exists() -> bool {
    std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .is_some_and(|home| home.join(".kube").join("config").is_file())
}
