//! `GET /`: the chat page, and `GET /openapi.json`: the API's description; both static
//! files compiled into the binary (no build step).

use axum::{
    response::{Html, IntoResponse},
    routing::get,
    Router,
};

use crate::state::AppState;

/// The page's routes (`/`, `/openapi.json`).
pub fn routes() -> Router<AppState> {
    Router::new().route("/", get(index)).route("/openapi.json", get(openapi))
}

/// The page's HTML, JavaScript and CSS.
const INDEX: &str = include_str!("../page/index.html");

/// `GET /`.
pub async fn index() -> Html<&'static str> {
    Html(INDEX)
}

/// The OpenAPI 3.1 document of the gateway's routes (checked against the router by
/// `gateway/tests/api/openapi.rs`).
const OPENAPI: &str = include_str!("../page/openapi.json");

/// `GET /openapi.json`.
pub async fn openapi() -> impl IntoResponse {
    ([("content-type", "application/json")], OPENAPI)
}
