//! The HTTP routes.

mod chat;
mod health;
mod openai;
mod page;
mod stream;

use axum::{
    extract::DefaultBodyLimit,
    http::StatusCode,
    routing::{get, post},
    Router,
};
use tower_http::timeout::TimeoutLayer;

use crate::state::AppState;

/// All routes with their limits.
pub fn router(state: AppState, request_timeout: std::time::Duration) -> Router {
    // Room for the JSON around the longest accepted text (escapes can double it).
    let body_limit = state.max_text_bytes * 2 + 1024;
    let bounded = Router::new()
        .route("/chat", post(chat::post_chat))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, request_timeout));
    Router::new()
        .merge(bounded)
        .route("/", get(page::index))
        .route("/openapi.json", get(page::openapi))
        .route("/stream", get(stream::get_stream))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}
