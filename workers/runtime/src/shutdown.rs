//! Shutdown signalling: one trigger, many listeners, and the process signals that pull it.

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// A cloneable view of "has shutdown been asked for?".
#[derive(Debug, Clone)]
pub struct Shutdown {
    token: CancellationToken,
}

/// The side that asks for shutdown. Dropping it asks too, so a listener never waits on a
/// trigger nobody can pull any more.
#[derive(Debug)]
pub struct ShutdownTrigger {
    token: CancellationToken,
}

impl ShutdownTrigger {
    /// Ask every listener to stop.
    pub fn trigger(&self) {
        self.token.cancel();
    }
}

impl Drop for ShutdownTrigger {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

impl Shutdown {
    /// A new trigger and its listener.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let token = CancellationToken::new();
        (
            ShutdownTrigger {
                token: token.clone(),
            },
            Shutdown { token },
        )
    }

    /// A listener that never fires.
    pub fn never() -> Self {
        Shutdown {
            token: CancellationToken::new(),
        }
    }

    /// A listener that fires when `signal` completes.
    pub fn from_future(signal: impl Future<Output = ()> + Send + 'static) -> Self {
        let (trigger, shutdown) = Shutdown::new();
        tokio::spawn(async move {
            signal.await;
            trigger.trigger();
        });
        shutdown
    }

    /// True once shutdown was asked for.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when shutdown is asked for (or its trigger is dropped).
    pub async fn triggered(&self) {
        self.token.cancelled().await;
    }
}

/// Completes on SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}
