//! Serves a sandbox cluster with the sample application until Ctrl-C, for poking at with
//! `kubectl --server <url>` or any other Kubernetes client.
//!
//! `cargo run -p stowage-cluster --example sandbox [-- 127.0.0.1:8001]`

use std::net::SocketAddr;

use stowage_cluster::Sandbox;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned())
        .parse()?;
    let sandbox = Sandbox::new();
    sandbox.load_sample_app()?;
    let handle = sandbox.start(addr).await?;
    println!(
        "sandbox cluster: kubectl --server {} get all -A",
        handle.url()
    );
    tokio::signal::ctrl_c().await?;
    handle.shutdown().await;
    Ok(())
}
