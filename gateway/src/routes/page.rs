//! `GET /`: the chat page (`/app.js`, `/markdown.js`, `/style.css`, `/favicon.svg`), and
//! `GET /openapi.json`: the API's description; all static files compiled into the
//! binary (no build step).

use axum::{
    http::{header, HeaderName, HeaderValue},
    response::IntoResponse,
    routing::get,
    Router,
};

use crate::state::AppState;

/// The page's routes (`/`, its script and style, `/openapi.json`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/markdown.js", get(markdown_js))
        .route("/style.css", get(style_css))
        .route("/favicon.svg", get(favicon))
        .route("/openapi.json", get(openapi))
}

/// What the page may load and run: only its own script, style and API, nothing
/// inline and nothing remote. Replies are Markdown from a model and may carry hostile
/// text; the page renders it as text, and this is the second line: even markup that
/// slipped through could not run a script, load an image or a frame, or send a form.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Headers of every page file: always revalidated (the files change with the binary,
/// and a stale script against a newer API breaks quietly), never sniffed as another type.
const COMMON: [(HeaderName, &str); 2] =
    [(header::CACHE_CONTROL, "no-cache"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")];

fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (name, value) in COMMON {
        headers.insert(name, HeaderValue::from_static(value));
    }
    (headers, body)
}

/// The page's HTML.
const INDEX: &str = include_str!("../page/index.html");
/// The page's logic (an ES module).
const APP_JS: &str = include_str!("../page/app.js");
/// The Markdown renderer the page imports.
const MARKDOWN_JS: &str = include_str!("../page/markdown.js");
/// The page's style.
const STYLE_CSS: &str = include_str!("../page/style.css");

/// `GET /`.
pub async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            // The URL carries the conversation id; no other site needs to learn it.
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        file("text/html; charset=utf-8", INDEX),
    )
}

/// The page's icon (without one, every page load logs a 404 for `/favicon.ico`).
const FAVICON: &str = include_str!("../page/favicon.svg");

/// `GET /app.js`.
pub async fn app_js() -> impl IntoResponse {
    file("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /markdown.js`.
pub async fn markdown_js() -> impl IntoResponse {
    file("text/javascript; charset=utf-8", MARKDOWN_JS)
}

/// `GET /style.css`.
pub async fn style_css() -> impl IntoResponse {
    file("text/css; charset=utf-8", STYLE_CSS)
}

/// `GET /favicon.svg`.
pub async fn favicon() -> impl IntoResponse {
    file("image/svg+xml", FAVICON)
}

/// The OpenAPI 3.1 document of the gateway's routes (checked against the router by
/// `gateway/tests/api/openapi.rs`).
const OPENAPI: &str = include_str!("../page/openapi.json");

/// `GET /openapi.json`.
pub async fn openapi() -> impl IntoResponse {
    ([("content-type", "application/json")], OPENAPI)
}
