//! The HTTP routes.

mod chat;
mod counted;
mod health;
mod history;
mod memories;
mod openai;
mod page;
mod stream;
mod traced;

use std::time::Duration;

use axum::{
    extract::{DefaultBodyLimit, Request},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
    Router,
};

use crate::{error::ApiError, state::AppState};

/// All routes with their limits.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    // Room for the JSON around the longest accepted text (escapes can double it).
    let body_limit = state.intake.max_text_bytes * 2 + 1024;
    let bounded = Router::new()
        .route("/chat", post(chat::post_chat))
        .route("/conversations", get(history::list))
        .route("/conversations/{id}", delete(history::delete))
        .route("/conversations/{id}/messages", get(history::messages))
        .route("/memories", get(memories::get).delete(memories::delete))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            time_limit(request_timeout, request, next)
        }));
    Router::new()
        .merge(bounded)
        .merge(page::routes())
        .route("/stream", get(stream::get_stream))
        // Not time-limited like /chat: a non-streaming answer waits for the whole reply
        // (bounded by the façade's own reply timeout).
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(counted::count))
        .layer(middleware::from_fn(traced::trace))
        .with_state(state)
}

/// Bounds a request (slow bodies included) with a JSON 408, like every other error.
async fn time_limit(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request took longer than {} s", limit.as_secs()),
        )
        .into_response(),
    }
}
