//! Liveness and readiness, and the small HTTP server that reports them (and serves the
//! Prometheus metrics at `GET /metrics`, see [`crate::metrics`]).
//!
//! `GET /livez` answers 200 while the process's async runtime is serving requests at all.
//! `GET /readyz` answers 200 only when every stage of the worker is consuming its queue, and
//! 503 otherwise (broker down, reconnecting, shutting down), with the per-stage state as JSON.
//! Kubernetes restarts a pod on failed liveness and stops routing to it on failed readiness.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use stowage_schemas::Stage;
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// Shared health state of one worker process.
#[derive(Debug, Clone, Default)]
pub struct Health {
    stages: Arc<Mutex<BTreeMap<Stage, bool>>>,
}

impl Health {
    pub(crate) fn register(&self, stage: Stage) {
        self.lock().entry(stage).or_insert(false);
    }

    pub(crate) fn set_consuming(&self, stage: Stage, consuming: bool) {
        self.lock().insert(stage, consuming);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Stage, bool>> {
        self.stages.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Each stage and whether it is consuming.
    pub fn stages(&self) -> BTreeMap<Stage, bool> {
        self.lock().clone()
    }

    /// Ready: at least one stage, and every stage consuming.
    pub fn is_ready(&self) -> bool {
        let stages = self.lock();
        !stages.is_empty() && stages.values().all(|c| *c)
    }
}

/// The health routes.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus))
        .with_state(health)
}

async fn prometheus() -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        crate::metrics::metrics().render(),
    )
}

async fn readyz(State(health): State<Health>) -> (StatusCode, axum::Json<serde_json::Value>) {
    let stages: BTreeMap<String, &str> = health
        .stages()
        .into_iter()
        .map(|(s, c)| (s.to_string(), if c { "consuming" } else { "not consuming" }))
        .collect();
    let ready = health.is_ready();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(serde_json::json!({ "ready": ready, "stages": stages })),
    )
}

/// Serve the health routes on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    axum::serve(listener, router(health))
        .with_graceful_shutdown(async move { shutdown.triggered().await })
        .await
}

/// Bind the health server's address, naming it in the error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen for health checks on {addr}: {e}; choose another address with --health-addr"),
        )
    })
}
