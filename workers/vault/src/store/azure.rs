//! Azure Blob storage (and the Azurite emulator), and opening a vault from its location text.

use std::fmt;
use std::sync::Arc;

use secrecy::{ExposeSecret as _, SecretString};

use super::{BlobStore, LocalDurability};
use crate::error::{Error, ErrorKind};

/// How to reach an Azure Blob container.
#[derive(Clone)]
pub enum AzureConfig {
    /// The Azurite emulator with its well-known development account. The endpoint is
    /// `http://127.0.0.1:10000` unless the `AZURITE_BLOB_STORAGE_URL` environment variable says
    /// otherwise (that is how object_store finds the emulator).
    Emulator {
        /// Container that holds the vault; it must already exist.
        container: String,
    },
    /// A storage account with a shared key.
    Account {
        /// Storage account name.
        account: String,
        /// Shared access key: a secret, which neither `Debug` nor `Display` can print.
        access_key: SecretString,
        /// Container that holds the vault; it must already exist.
        container: String,
        /// Endpoint override (for sovereign clouds or a proxy); `http://` endpoints are allowed.
        endpoint: Option<String>,
    },
}

impl fmt::Debug for AzureConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Emulator { container } => f
                .debug_struct("Emulator")
                .field("container", container)
                .finish(),
            Self::Account {
                account,
                container,
                endpoint,
                ..
            } => f
                .debug_struct("Account")
                .field("account", account)
                .field("access_key", &"<redacted>")
                .field("container", container)
                .field("endpoint", endpoint)
                .finish(),
        }
    }
}

impl BlobStore {
    /// A vault in an Azure Blob container (or Azurite). The container must exist.
    pub fn azure(config: &AzureConfig) -> Result<Self, Error> {
        // object_store is built without aws-lc-rs; TLS goes through rustls with ring, which must
        // be the process default. An error only means a provider is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = object_store::azure::MicrosoftAzureBuilder::new();
        let container = match config {
            AzureConfig::Emulator { container } => {
                builder = builder
                    .with_use_emulator(true)
                    .with_container_name(container);
                container
            }
            AzureConfig::Account {
                account,
                access_key,
                container,
                endpoint,
            } => {
                builder = builder
                    .with_account(account)
                    .with_access_key(access_key.expose_secret())
                    .with_container_name(container);
                if let Some(endpoint) = endpoint {
                    builder = builder
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_endpoint(endpoint.clone());
                }
                container
            }
        };
        let azure = builder.build().map_err(|source| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "cannot open Azure container {container}: {source}; check the account, key \
                     and container name"
                ),
            )
            .with_source(source)
        })?;
        Ok(Self::from_object_store(Arc::new(azure)))
    }

    /// Open a vault location given as text:
    ///
    /// | form | backend |
    /// |---|---|
    /// | `/path`, `./path`, `file:///path` | a local folder (fsync'd writes), created if missing |
    /// | `azurite://<container>` | the Azurite emulator (`AZURITE_BLOB_STORAGE_URL`, default `http://127.0.0.1:10000`) |
    /// | `azure://<account>/<container>` | Azure Blob; `access_key` is the account's shared key |
    pub fn open(location: &str, access_key: Option<&str>) -> Result<Self, Error> {
        let bad = |reason: &str| {
            Error::new(
                ErrorKind::Config,
                format!("cannot use vault location {location:?}: {reason}"),
            )
        };
        if let Some(container) = location.strip_prefix("azurite://") {
            if container.is_empty() || container.contains('/') {
                return Err(bad(
                    "azurite:// takes a container name, e.g. azurite://vault",
                ));
            }
            return Self::azure(&AzureConfig::Emulator {
                container: container.to_owned(),
            });
        }
        if let Some(rest) = location.strip_prefix("azure://") {
            let Some((account, container)) = rest
                .split_once('/')
                .filter(|(a, c)| !a.is_empty() && !c.is_empty() && !c.contains('/'))
            else {
                return Err(bad(
                    "azure:// takes an account and a container, e.g. azure://mystorage/vault",
                ));
            };
            let Some(key) = access_key else {
                return Err(bad(
                    "an azure:// vault needs the account's access key (STOWAGE_AZURE_ACCESS_KEY)",
                ));
            };
            return Self::azure(&AzureConfig::Account {
                account: account.to_owned(),
                access_key: SecretString::from(key),
                container: container.to_owned(),
                endpoint: None,
            });
        }
        let path = location.strip_prefix("file://").unwrap_or(location);
        if path.is_empty() || path.contains("://") {
            return Err(bad(
                "use a folder path, file:///path, azurite://<container> or azure://<account>/<container>",
            ));
        }
        Self::local_folder(path, LocalDurability::Fsync)
    }
}

/// The well-known development account of the Azure Storage emulator (public, documented).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Create a container in Azurite if it does not exist (object_store has no container API).
/// The endpoint is `AZURITE_BLOB_STORAGE_URL`, as for [`AzureConfig::Emulator`].
pub async fn create_azurite_container(container: &str) -> Result<(), Error> {
    use base64::Engine as _;
    // As in `BlobStore::azure`: TLS goes through rustls with ring, installed as the default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let endpoint = std::env::var("AZURITE_BLOB_STORAGE_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:10000".to_owned());
    let fail = |reason: String| {
        Error::new(
            ErrorKind::Unavailable,
            format!("cannot create Azure container {container}: {reason}"),
        )
    };
    let date = jiff::Timestamp::now()
        .strftime("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let version = "2021-08-06";
    // Shared Key signature: verb, eleven empty standard headers, canonical x-ms headers, and
    // the canonical resource (path-style emulator URLs repeat the account name).
    let to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
    );
    let key_bytes = base64::engine::general_purpose::STANDARD
        .decode(AZURITE_KEY)
        .map_err(|e| fail(e.to_string()))?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key_bytes);
    let signature = base64::engine::general_purpose::STANDARD
        .encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
    let url = format!("{endpoint}/{AZURITE_ACCOUNT}/{container}?restype=container");
    let response = reqwest::Client::new()
        .put(&url)
        .header("x-ms-date", &date)
        .header("x-ms-version", version)
        .header(
            "Authorization",
            format!("SharedKey {AZURITE_ACCOUNT}:{signature}"),
        )
        .header("Content-Length", "0")
        .send()
        .await
        .map_err(|e| fail(format!("Azurite at {endpoint} is unreachable: {e}")))?;
    match response.status().as_u16() {
        201 | 409 => Ok(()),
        code => Err(fail(format!(
            "Azurite answered {code}: {}",
            response.text().await.unwrap_or_default()
        ))),
    }
}
