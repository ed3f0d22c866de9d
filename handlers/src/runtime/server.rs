//! `/health`, `/ready` and `/metrics` on the handler's small port.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use axum::{extract::State, http::StatusCode, routing::get, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::{net::TcpListener, sync::watch};

use super::status::Status;

/// Installs the Prometheus recorder (once per process).
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
        .context("metrics buckets")?
        .install_recorder()
        .context("installing the metrics recorder")
}

#[derive(Clone)]
struct AppState {
    status: Arc<Status>,
    metrics: PrometheusHandle,
}

/// Binds the health and metrics address.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (HANDLER_LISTEN_ADDR)"))?;
    tracing::info!(address = %listen, "health and metrics listening");
    Ok(listener)
}

/// Serves `/health`, `/ready` and `/metrics` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    status: Arc<Status>,
    metrics: PrometheusHandle,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(|State(s): State<AppState>| async move { s.metrics.render() }))
        .with_state(AppState { status, metrics });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|down| *down).await;
        })
        .await
        .context("serving health and metrics")
}

async fn ready(State(s): State<AppState>) -> (StatusCode, String) {
    match s.status.ready() {
        Ok(()) => (StatusCode::OK, "ready".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why.into()),
    }
}
