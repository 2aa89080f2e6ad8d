//! What the tests share: a static-token credential and a client with short waits.

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::http::Url;
use stowage_azure::{ArmClient, ArmSettings, RetrySettings};

use crate::arm_server::{ArmServer, SUBSCRIPTION, TOKEN};

/// Hands out the test server's token, like a credential whose token never expires.
#[derive(Debug)]
pub struct StaticToken;

#[async_trait::async_trait]
impl TokenCredential for StaticToken {
    async fn get_token(
        &self,
        scopes: &[&str],
        _: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        assert_eq!(scopes, ["https://management.azure.com/.default"]);
        Ok(AccessToken::new(
            Secret::new(TOKEN),
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}

/// Settings for `server`: its loopback endpoint, fast retries and polls.
pub fn settings(server: &ArmServer) -> ArmSettings {
    let mut settings = ArmSettings::public_cloud(SUBSCRIPTION);
    settings.endpoint = Url::parse(&server.url).unwrap();
    settings.retry = fast_retries();
    settings.poll_interval = Duration::from_millis(10);
    settings.operation_timeout = Duration::from_secs(30);
    settings
}

/// Three quick retries: a test that hits a retried error fails in seconds, not minutes.
pub fn fast_retries() -> RetrySettings {
    RetrySettings {
        max_retries: 3,
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_total: Duration::from_secs(30),
    }
}

pub fn client(server: &ArmServer) -> ArmClient {
    ArmClient::new(settings(server), Arc::new(StaticToken)).unwrap()
}
