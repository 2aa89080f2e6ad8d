//! Azurite as the managed-disk data plane: page blobs stand in for disks, blob snapshots for
//! disk snapshots, and an account SAS (signed here with Azurite's well-known key) for the SAS
//! URLs `beginGetAccess` hands out.

use std::net::TcpStream;

use azure_core::http::Url;
use azure_storage_blob::models::BlobClientCreateSnapshotResultHeaders;
use azure_storage_blob::{
    BlobClient, BlobClientOptions, BlobContainerClient, BlobContainerClientOptions, PageBlobClient,
    PageBlobClientOptions,
};
use base64::Engine;
use stowage_azure::RetrySettings;
use stowage_azure::SasUrl;
use stowage_azure::data::blob_client_options;

const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

/// Fails, saying how to start it, when Azurite is not listening.
pub fn require_azurite() {
    if TcpStream::connect("127.0.0.1:10000").is_err() {
        panic!(
            "Azurite is not listening on 127.0.0.1:10000: start it with infra/scripts/start-azurite.sh"
        );
    }
}

/// An account SAS query (version 2019-12-12: blob service, all resource types, read, add,
/// create, write, delete, list), signed with HMAC-SHA256 over the account's string-to-sign.
fn account_sas() -> String {
    let (permissions, expiry, version) = ("racwdl", "2035-01-01T00:00:00Z", "2019-12-12");
    let to_sign = format!("{ACCOUNT}\n{permissions}\nb\nsco\n\n{expiry}\n\n\n{version}\n");
    let key = base64::engine::general_purpose::STANDARD
        .decode(KEY)
        .unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let sig = base64::engine::general_purpose::STANDARD
        .encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
    let mut url = Url::parse("http://x/").unwrap();
    url.query_pairs_mut()
        .append_pair("sv", version)
        .append_pair("ss", "b")
        .append_pair("srt", "sco")
        .append_pair("sp", permissions)
        .append_pair("se", expiry)
        .append_pair("sig", &sig);
    url.query().unwrap().to_owned()
}

/// `…/container/blob?<sas>` (and `&snapshot=<ts>` for a snapshot) at Azurite.
pub fn blob_url(container: &str, blob: &str, snapshot: Option<&str>) -> SasUrl {
    blob_url_at(ENDPOINT, container, blob, snapshot)
}

/// The same through another endpoint (the diff proxy); the SAS does not sign the host.
pub fn blob_url_at(endpoint: &str, container: &str, blob: &str, snapshot: Option<&str>) -> SasUrl {
    let mut url = Url::parse(&format!("{endpoint}/{container}/{blob}?{}", account_sas())).unwrap();
    if let Some(s) = snapshot {
        url.query_pairs_mut().append_pair("snapshot", s);
    }
    SasUrl::new(url)
}

fn options() -> azure_core::http::ClientOptions {
    blob_client_options(&RetrySettings::default()).unwrap()
}

/// A new container with a unique name.
pub async fn container() -> String {
    require_azurite();
    let name = format!("disks-{}", rand::random::<u64>());
    container_client(&name).create(None).await.unwrap();
    name
}

/// Deletes container `name` and what it holds (Azurite keeps everything in memory).
pub async fn delete_container(name: &str) {
    container_client(name).delete(None).await.unwrap();
}

/// A client of container `name`, with the account SAS.
fn container_client(name: &str) -> BlobContainerClient {
    let url = Url::parse(&format!("{ENDPOINT}/{name}?{}", account_sas())).unwrap();
    BlobContainerClient::new(
        url,
        None,
        Some(BlobContainerClientOptions {
            client_options: options(),
            ..Default::default()
        }),
    )
    .unwrap()
}

/// A page blob ("a disk") of `size` bytes.
pub fn page_blob(container: &str, blob: &str) -> PageBlobClient {
    PageBlobClient::new(
        blob_url(container, blob, None).expose().clone(),
        None,
        Some(PageBlobClientOptions {
            client_options: options(),
            ..Default::default()
        }),
    )
    .unwrap()
}

/// Takes a blob snapshot ("a disk snapshot") and returns its timestamp.
pub async fn snapshot(container: &str, blob: &str) -> String {
    let client = BlobClient::new(
        blob_url(container, blob, None).expose().clone(),
        None,
        Some(BlobClientOptions {
            client_options: options(),
            ..Default::default()
        }),
    )
    .unwrap();
    let response = client.create_snapshot(None).await.unwrap();
    response.snapshot().unwrap().expect("x-ms-snapshot")
}
