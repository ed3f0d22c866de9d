//! Liveness and readiness (metrics are on the admin port: `platform::prometheus`).

use std::{sync::atomic::Ordering, time::Duration};

use axum::{extract::State, http::StatusCode, response::IntoResponse, Json};
use rdkafka::producer::Producer;
use serde_json::json;

use crate::state::AppState;

/// `GET /health`: the process is alive (no dependency checked).
pub async fn health() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// `GET /ready`: the broker answers and the reply relay is assigned.
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let relay = state.relay_ready.load(Ordering::SeqCst);
    let producer = state.intake.producer.clone();
    let broker = tokio::task::spawn_blocking(move || {
        producer.client().fetch_metadata(None, Duration::from_secs(2)).is_ok()
    })
    .await
    .unwrap_or(false);
    let status = if relay && broker { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "ready": relay && broker, "broker": broker, "relay_assigned": relay })))
}
