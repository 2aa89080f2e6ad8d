//! What a worker or `stowage preflight` is told about Azure (flags or environment), checked
//! before anything starts, and turned into an [`ArmClient`], an [`AzureDiskProvider`] and the
//! scopes preflight checks.
//!
//! Every missing setting is named in one error with the flag and the variable that give it;
//! nothing here logs a token or a secret (the credential is built by [`crate::credential`],
//! which logs only which kind it chose).

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_core::http::Url;

use crate::arm::{ArmClient, ArmSettings, PUBLIC_CLOUD_ENDPOINT};
use crate::data::DataSettings;
use crate::error::{AzureError, Result};
use crate::identity::CredentialKind;
use crate::permissions::{SNAPSHOT_GROUP_ACTIONS, SOURCE_DISK_ACTIONS, STAGING_GROUP_ACTIONS};
use crate::provider::{AzureDiskProvider, AzureDiskSettings};

/// The Azure settings of a worker, as the command line and environment give them.
#[derive(Debug, Clone, Default)]
pub struct AzureConfig {
    /// The subscription of the snapshot and staging resource groups.
    pub subscription: Option<String>,
    /// The instance's snapshot resource group.
    pub snapshot_group: Option<String>,
    /// The staging resource group of hydrated disks.
    pub staging_group: Option<String>,
    /// The region of both groups (staging disks are created there).
    pub region: Option<String>,
    /// The resource group of the source disks (an AKS cluster's node resource group,
    /// `MC_<group>_<cluster>_<region>`), for preflight only.
    pub source_group: Option<String>,
    /// Which credential to use.
    pub credential: CredentialKind,
    /// ARM's endpoint: https (a sovereign cloud), or plain http to a loopback test server;
    /// the public cloud when `None`.
    pub arm_endpoint: Option<String>,
    /// SKU of staging disks; ARM's default when `None`.
    pub staging_sku: Option<String>,
}

/// Flag and variable of each setting, for the errors that name them.
const SUBSCRIPTION: (&str, &str) = ("--azure-subscription", "AZURE_SUBSCRIPTION_ID");
const SNAPSHOT_GROUP: (&str, &str) = (
    "--azure-snapshot-resource-group",
    "STOWAGE_AZURE_SNAPSHOT_RESOURCE_GROUP",
);
const STAGING_GROUP: (&str, &str) = (
    "--azure-staging-resource-group",
    "STOWAGE_AZURE_STAGING_RESOURCE_GROUP",
);
const REGION: (&str, &str) = ("--azure-region", "STOWAGE_AZURE_REGION");

/// The scopes preflight checks: what, where, and which actions are needed there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// What the scope holds (`snapshot resource group`, …).
    pub what: &'static str,
    /// The ARM scope (`/subscriptions/<s>/resourceGroups/<g>`).
    pub scope: String,
    /// The actions Stowage needs there.
    pub actions: &'static [&'static str],
}

impl AzureConfig {
    /// Refuses a configuration with a missing setting, naming every one missing with its flag
    /// and variable, or an unusable endpoint.
    pub fn check(&self) -> Result<()> {
        let missing: Vec<String> = [
            (&self.subscription, SUBSCRIPTION),
            (&self.snapshot_group, SNAPSHOT_GROUP),
            (&self.staging_group, STAGING_GROUP),
            (&self.region, REGION),
        ]
        .into_iter()
        .filter(|(value, _)| value.as_deref().is_none_or(|v| v.trim().is_empty()))
        .map(|(_, (flag, var))| format!("{flag} (or {var})"))
        .collect();
        if !missing.is_empty() {
            return Err(AzureError::Config(format!(
                "--disk-provider azure needs {}: the subscription holding the snapshot and \
                 staging resource groups, the groups (create them with `az group create --name \
                 <group> --location <region>`) and their region",
                missing.join(", ")
            )));
        }
        self.endpoint().map(|_| ())
    }

    fn endpoint(&self) -> Result<Url> {
        let text = self
            .arm_endpoint
            .as_deref()
            .filter(|e| !e.is_empty())
            .unwrap_or(PUBLIC_CLOUD_ENDPOINT);
        Url::parse(text).map_err(|e| {
            AzureError::Config(format!(
                "--azure-arm-endpoint {text:?} is not a URL ({e}); fix: give https://<ARM host> \
                 or leave it unset for the public cloud"
            ))
        })
    }

    fn value(field: &Option<String>) -> String {
        field.clone().unwrap_or_default().trim().to_owned()
    }

    /// The ARM client's settings: the public cloud's, or the endpoint given (its token scope is
    /// `<endpoint>/.default` for an https one; a loopback test server keeps the public scope).
    pub fn arm_settings(&self) -> Result<ArmSettings> {
        self.check()?;
        let mut settings = ArmSettings::public_cloud(Self::value(&self.subscription));
        let endpoint = self.endpoint()?;
        if endpoint.scheme() == "https"
            && endpoint.as_str() != Url::parse(PUBLIC_CLOUD_ENDPOINT).expect("valid").as_str()
        {
            settings.scope = format!("{}/.default", endpoint.as_str().trim_end_matches('/'));
        }
        settings.endpoint = endpoint;
        Ok(settings)
    }

    /// An ARM client with `credential` (from [`crate::credential`] in production).
    pub fn arm_client(&self, credential: Arc<dyn TokenCredential>) -> Result<ArmClient> {
        ArmClient::new(self.arm_settings()?, credential)
    }

    /// The provider's settings, with Stowage's defaults for access and data-path tuning.
    pub fn provider_settings(&self) -> Result<AzureDiskSettings> {
        self.check()?;
        Ok(AzureDiskSettings {
            snapshot_group: Self::value(&self.snapshot_group),
            staging_group: Self::value(&self.staging_group),
            region: Self::value(&self.region),
            staging_sku: self.staging_sku.clone().filter(|s| !s.is_empty()),
            read_access: Duration::from_secs(4 * 3600),
            idle_end: Duration::from_secs(120),
            max_vault_disk_bytes: None,
            data: DataSettings::default(),
        })
    }

    /// The disk provider over `arm`. Must be called inside a Tokio runtime.
    pub fn provider(&self, arm: ArmClient) -> Result<AzureDiskProvider> {
        Ok(AzureDiskProvider::new(arm, self.provider_settings()?))
    }

    /// The scopes preflight checks: the snapshot and staging resource groups, and the source
    /// disks' group when it is given.
    pub fn scopes(&self) -> Result<Vec<Scope>> {
        self.check()?;
        let subscription = Self::value(&self.subscription);
        let group = |g: String| format!("/subscriptions/{subscription}/resourceGroups/{g}");
        let mut scopes = Vec::new();
        if let Some(source) = self.source_group.as_deref().filter(|s| !s.is_empty()) {
            scopes.push(Scope {
                what: "source disks' resource group",
                scope: group(source.to_owned()),
                actions: SOURCE_DISK_ACTIONS,
            });
        }
        scopes.push(Scope {
            what: "snapshot resource group",
            scope: group(Self::value(&self.snapshot_group)),
            actions: SNAPSHOT_GROUP_ACTIONS,
        });
        scopes.push(Scope {
            what: "staging resource group",
            scope: group(Self::value(&self.staging_group)),
            actions: STAGING_GROUP_ACTIONS,
        });
        Ok(scopes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> AzureConfig {
        AzureConfig {
            subscription: Some("sub".into()),
            snapshot_group: Some("snaps".into()),
            staging_group: Some("staging".into()),
            region: Some("westeurope".into()),
            ..AzureConfig::default()
        }
    }

    #[test]
    fn every_missing_setting_is_named_with_its_flag_and_variable() {
        let err = AzureConfig::default().check().unwrap_err().to_string();
        for name in [
            "--azure-subscription (or AZURE_SUBSCRIPTION_ID)",
            "--azure-snapshot-resource-group (or STOWAGE_AZURE_SNAPSHOT_RESOURCE_GROUP)",
            "--azure-staging-resource-group (or STOWAGE_AZURE_STAGING_RESOURCE_GROUP)",
            "--azure-region (or STOWAGE_AZURE_REGION)",
        ] {
            assert!(err.contains(name), "{name} in {err}");
        }
        let mut one = full();
        one.region = Some(" ".into());
        let err = one.check().unwrap_err().to_string();
        assert!(
            err.contains("--azure-region") && !err.contains("--azure-subscription"),
            "{err}"
        );
        full().check().unwrap();
    }

    #[test]
    fn endpoints_and_scopes() {
        let public = full().arm_settings().unwrap();
        assert_eq!(public.endpoint.as_str(), "https://management.azure.com/");
        assert_eq!(public.scope, "https://management.azure.com/.default");
        let mut china = full();
        china.arm_endpoint = Some("https://management.chinacloudapi.cn".into());
        assert_eq!(
            china.arm_settings().unwrap().scope,
            "https://management.chinacloudapi.cn/.default"
        );
        let mut test = full();
        test.arm_endpoint = Some("http://127.0.0.1:1234".into());
        assert_eq!(
            test.arm_settings().unwrap().scope,
            "https://management.azure.com/.default"
        );
        let mut bad = full();
        bad.arm_endpoint = Some("not a url".into());
        assert!(
            bad.check()
                .unwrap_err()
                .to_string()
                .contains("--azure-arm-endpoint")
        );
        let mut with_source = full();
        with_source.source_group = Some("MC_rg_aks_westeurope".into());
        let scopes = with_source.scopes().unwrap();
        assert_eq!(
            scopes.iter().map(|s| s.scope.as_str()).collect::<Vec<_>>(),
            [
                "/subscriptions/sub/resourceGroups/MC_rg_aks_westeurope",
                "/subscriptions/sub/resourceGroups/snaps",
                "/subscriptions/sub/resourceGroups/staging"
            ]
        );
        assert_eq!(full().scopes().unwrap().len(), 2);
    }
}
