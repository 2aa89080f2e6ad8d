//! The HTTP transport and the bearer-token policy shared by every pipeline of this crate.
//!
//! `azure_core`'s own reqwest client would need reqwest's `rustls` feature, which brings
//! aws-lc-rs; the workspace builds reqwest with rustls on ring instead, so this module builds
//! that client once and hands it to each pipeline as its [`Transport`].

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{
    ClientOptions, Context, ExponentialRetryOptions, Request, RetryOptions, Transport,
};

use crate::error::{AzureError, Result};

/// How the pipelines retry: `azure_core`'s exponential policy, which retries 408, 429, 5xx and
/// transport errors and waits at least the server's `Retry-After` (or `x-ms-retry-after-ms`)
/// on 429 and 503.
#[derive(Debug, Clone)]
pub struct RetrySettings {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First back-off delay (doubled each retry, with jitter, up to `max_delay`).
    pub initial_delay: Duration,
    /// Longest single back-off delay.
    pub max_delay: Duration,
    /// Give up retrying after this long.
    pub max_total: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_retries: 8,
            initial_delay: Duration::from_millis(800),
            max_delay: Duration::from_secs(60),
            max_total: Duration::from_secs(300),
        }
    }
}

/// A reqwest client on rustls with ring, without redirects (ARM never redirects; a redirect
/// would carry the bearer token elsewhere).
pub(crate) fn http_client() -> Result<reqwest::Client> {
    // reqwest is built with `rustls-no-provider`: it needs a process-wide provider. Whoever
    // installed one first wins; ring is the workspace's choice.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(20))
        .read_timeout(Duration::from_secs(120))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| AzureError::Config(format!("cannot build the HTTP client: {e}")))
}

/// Client options every pipeline of this crate uses: our transport and retry settings.
pub(crate) fn client_options(client: &reqwest::Client, retry: &RetrySettings) -> ClientOptions {
    let to_core = |d: Duration| {
        azure_core::time::Duration::try_from(d).unwrap_or(azure_core::time::Duration::MAX)
    };
    ClientOptions {
        transport: Some(Transport::new(Arc::new(client.clone()))),
        retry: RetryOptions::exponential(ExponentialRetryOptions {
            initial_delay: to_core(retry.initial_delay),
            max_retries: retry.max_retries,
            max_total_elapsed: to_core(retry.max_total),
            max_delay: to_core(retry.max_delay),
        }),
        ..Default::default()
    }
}

/// Whether `url` may carry a bearer token: https anywhere, plain http only to a loopback
/// address (an in-test server).
pub(crate) fn may_carry_token(url: &azure_core::http::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => {
            let host = url.host_str().unwrap_or("");
            host == "localhost"
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        _ => false,
    }
}

/// Puts `Authorization: Bearer <token>` on each try. `azure_core`'s
/// `BearerTokenAuthorizationPolicy` does the same but refuses plain HTTP even to loopback,
/// which the in-test ARM server needs; the credentials cache their tokens themselves.
#[derive(Debug)]
pub(crate) struct BearerPolicy {
    pub(crate) credential: Arc<dyn TokenCredential>,
    pub(crate) scope: String,
}

#[async_trait::async_trait]
impl Policy for BearerPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        if !may_carry_token(request.url()) {
            return Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Other,
                format!(
                    "refusing to send a bearer token to {}://{}: only https (or http to a loopback test server) may carry it",
                    request.url().scheme(),
                    request.url().host_str().unwrap_or("")
                ),
            ));
        }
        let token = self
            .credential
            .get_token(&[self.scope.as_str()], None)
            .await?;
        request.insert_header("authorization", format!("Bearer {}", token.token.secret()));
        next[0].send(ctx, request, &next[1..]).await
    }
}
