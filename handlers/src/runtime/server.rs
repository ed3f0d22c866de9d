//! `/health` and `/ready` on the handler's small port (`/metrics` has an admin port of
//! its own: `platform::prometheus`).

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use axum::{extract::State, http::StatusCode, routing::get, Router};
use tokio::{net::TcpListener, sync::watch};

use super::status::Status;

/// Histogram buckets, in seconds: from a cached embedding to a long LLM reply.
pub const BUCKETS: [f64; 14] =
    [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Binds the health address.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (HANDLER_LISTEN_ADDR)"))?;
    tracing::info!(address = %listen, "health listening");
    Ok(listener)
}

/// Serves `/health` and `/ready` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    status: Arc<Status>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let app =
        Router::new().route("/health", get(|| async { "ok" })).route("/ready", get(ready)).with_state(status);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|down| *down).await;
        })
        .await
        .context("serving health")
}

async fn ready(State(status): State<Arc<Status>>) -> (StatusCode, String) {
    match status.ready() {
        Ok(()) => (StatusCode::OK, "ready".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why.into()),
    }
}
