//! Which Azure identity the workers use, chosen the standard way or named in configuration.
//!
//! `azure_identity` 1.0 has no `DefaultAzureCredential`; [`CredentialKind::Auto`] follows the
//! same order from the environment: workload identity (what AKS injects into a pod whose
//! service account is federated), a client secret, managed identity inside a cluster or VM,
//! and the Azure CLI's login on a developer's machine.

use std::sync::Arc;

use azure_core::credentials::{Secret, TokenCredential};
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};

use crate::error::{AzureError, Result};
use crate::transport::{RetrySettings, client_options, http_client};

/// Which credential to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialKind {
    /// Pick from the environment (see [`CredentialKind::resolve`]).
    #[default]
    Auto,
    /// Workload identity federation: `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`,
    /// `AZURE_TENANT_ID`.
    WorkloadIdentity,
    /// The pod's or VM's managed identity (IMDS); `AZURE_CLIENT_ID` picks a user-assigned one.
    ManagedIdentity,
    /// A service principal: `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`.
    ClientSecret,
    /// The Azure CLI's login (`az login`), for a developer.
    AzureCli,
}

impl CredentialKind {
    /// The kind [`Auto`](Self::Auto) stands for, given an environment lookup (`std::env::var`
    /// in production; a map in tests). Other kinds are returned as they are.
    pub fn resolve(self, env: impl Fn(&str) -> Option<String>) -> CredentialKind {
        if self != CredentialKind::Auto {
            return self;
        }
        let set = |k: &str| env(k).is_some_and(|v| !v.is_empty());
        if set("AZURE_FEDERATED_TOKEN_FILE") && set("AZURE_CLIENT_ID") && set("AZURE_TENANT_ID") {
            CredentialKind::WorkloadIdentity
        } else if set("AZURE_CLIENT_SECRET") && set("AZURE_CLIENT_ID") && set("AZURE_TENANT_ID") {
            CredentialKind::ClientSecret
        } else if set("KUBERNETES_SERVICE_HOST") || set("IDENTITY_ENDPOINT") || set("MSI_ENDPOINT")
        {
            CredentialKind::ManagedIdentity
        } else {
            CredentialKind::AzureCli
        }
    }
}

/// Builds the credential `kind` names (after [`CredentialKind::resolve`] against the process
/// environment), its token requests going through the crate's transport. The credentials
/// cache tokens until shortly before they expire; no token is ever logged.
pub fn credential(kind: CredentialKind) -> Result<Arc<dyn TokenCredential>> {
    let env = |k: &str| std::env::var(k).ok();
    let resolved = kind.resolve(env);
    let client = http_client()?;
    let options = client_options(&client, &RetrySettings::default());
    let fail = |what: &str, e: azure_core::Error| {
        AzureError::Config(format!(
            "cannot set up the {what} credential: {e}; fix: {}",
            match resolved {
                CredentialKind::WorkloadIdentity =>
                    "label the pod `azure.workload.identity/use: \"true\"` and annotate its service account with `azure.workload.identity/client-id`",
                CredentialKind::ClientSecret =>
                    "set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET",
                CredentialKind::ManagedIdentity =>
                    "assign a managed identity to the node pool or VM (`az aks update --enable-managed-identity`)",
                CredentialKind::AzureCli | CredentialKind::Auto => "run `az login`",
            }
        ))
    };
    let credential: Arc<dyn TokenCredential> = match resolved {
        CredentialKind::WorkloadIdentity => {
            WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions {
                    client_options: options,
                },
                ..Default::default()
            }))
            .map_err(|e| fail("workload identity", e))?
        }
        CredentialKind::ClientSecret => {
            let var = |k: &str| {
                env(k).ok_or_else(|| {
                    AzureError::Config(format!("client-secret credential: {k} is not set"))
                })
            };
            ClientSecretCredential::new(
                &var("AZURE_TENANT_ID")?,
                var("AZURE_CLIENT_ID")?,
                Secret::new(var("AZURE_CLIENT_SECRET")?),
                Some(ClientSecretCredentialOptions {
                    client_options: options,
                }),
            )
            .map_err(|e| fail("client secret", e))?
        }
        CredentialKind::ManagedIdentity => {
            ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id: env("AZURE_CLIENT_ID")
                    .filter(|v| !v.is_empty())
                    .map(UserAssignedId::ClientId),
                client_options: options,
            }))
            .map_err(|e| fail("managed identity", e))?
        }
        CredentialKind::AzureCli | CredentialKind::Auto => {
            AzureCliCredential::new(Some(AzureCliCredentialOptions {
                tenant_id: env("AZURE_TENANT_ID").filter(|v| !v.is_empty()),
                ..Default::default()
            }))
            .map_err(|e| fail("Azure CLI", e))?
        }
    };
    tracing::info!(credential = ?resolved, "Azure credential chosen");
    Ok(credential)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn auto_follows_the_standard_order() {
        let wi = [
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/azure-identity-token",
            ),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_SECRET", "s"),
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
        ];
        assert_eq!(
            CredentialKind::Auto.resolve(env(&wi)),
            CredentialKind::WorkloadIdentity
        );
        assert_eq!(
            CredentialKind::Auto.resolve(env(&wi[1..])),
            CredentialKind::ClientSecret
        );
        assert_eq!(
            CredentialKind::Auto.resolve(env(&wi[4..])),
            CredentialKind::ManagedIdentity
        );
        assert_eq!(
            CredentialKind::Auto.resolve(env(&[])),
            CredentialKind::AzureCli
        );
        // An empty variable is not set; a named kind is kept whatever the environment says.
        assert_eq!(
            CredentialKind::Auto.resolve(env(&[
                ("AZURE_CLIENT_SECRET", ""),
                ("AZURE_CLIENT_ID", "c"),
                ("AZURE_TENANT_ID", "t")
            ])),
            CredentialKind::AzureCli
        );
        assert_eq!(
            CredentialKind::ClientSecret.resolve(env(&[])),
            CredentialKind::ClientSecret
        );
    }
}
