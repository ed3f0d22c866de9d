//! `GET /`: the chat page, a static file compiled into the binary (no build step).

use axum::response::Html;

/// The page's HTML, JavaScript and CSS.
const INDEX: &str = include_str!("../page/index.html");

/// `GET /`.
pub async fn index() -> Html<&'static str> {
    Html(INDEX)
}
