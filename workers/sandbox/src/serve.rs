//! The accept loop: TLS (rustls on ring) then HTTP/1.1 (hyper, with upgrades for websockets)
//! per connection, each on its own task, until the stop signal; then in-flight requests finish
//! (at most [`DRAIN_DEADLINE`]).
//!
//! A client that does not trust the sandbox's CA aborts the handshake; that connection ends
//! and the loop goes on.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsAcceptor;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for requests in flight (a long watch would otherwise hold it).
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

pub(crate) async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    app: Router,
    stopped: oneshot::Receiver<()>,
) {
    // Every connection task holds a clone of `alive`; when all are gone, `drained` yields None.
    let (alive, mut drained) = mpsc::channel::<()>(1);
    let (draining, drain_signal) = watch::channel(false);
    tokio::pin!(stopped);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(%error, "sandbox cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let (tls, app, alive, mut drain_signal) = (
            tls.clone(),
            app.clone(),
            alive.clone(),
            drain_signal.clone(),
        );
        tokio::spawn(async move {
            let _alive = alive;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "sandbox TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "sandbox TLS handshake timed out");
                    return;
                }
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                .with_upgrades();
            tokio::pin!(connection);
            let draining = async move {
                // Drop the borrow at once: it must not live across the awaits below.
                let _ = drain_signal.wait_for(|d| *d).await.map(|_| ());
            };
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = draining => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "sandbox connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = draining.send(true);
    drop(alive);
    let _ = tokio::time::timeout(DRAIN_DEADLINE, drained.recv()).await;
}
