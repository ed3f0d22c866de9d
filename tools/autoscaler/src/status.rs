//! `GET /status`: what the autoscaler sees and did, for people and for the load test.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Context;
use axum::{extract::State, routing::get, Json, Router};
use platform::sync::lock;
use serde::Serialize;
use tokio::{net::TcpListener, sync::watch};

/// One ScaledObject's latest state.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TargetStatus {
    /// The ScaledObject's name.
    pub name: String,
    /// Processes running.
    pub replicas: u32,
    /// What the HPA wanted on the last poll.
    pub desired: u32,
    /// Total lag of its triggers on the last poll.
    pub lag: i64,
    /// Whether a trigger was active.
    pub active: bool,
}

/// The body of `/status`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Status {
    /// One entry per ScaledObject.
    pub scaled_objects: Vec<TargetStatus>,
}

/// Shared, updated by the scaling loops.
pub type Shared = Arc<Mutex<Status>>;

/// Serves `/status` and `/health` on `listen` until `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    status: Shared,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen} (--listen)"))?;
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/status", get(|State(s): State<Shared>| async move { Json(lock(&s).clone()) }))
        .with_state(status);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|down| *down).await;
        })
        .await
        .context("serving /status")
}
