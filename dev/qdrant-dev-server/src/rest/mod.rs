//! Qdrant's REST API, the subset users, scripts and `curl` call, on its own listener
//! (Qdrant's port 6333). A thin layer: each route parses Qdrant's JSON into the same
//! store and point-operation calls the gRPC services make, so both APIs serve the same
//! data, and answers in Qdrant's JSON shapes (`{"result": …, "status": "ok", "time": …}`,
//! errors as `{"status": {"error": …}, "time": …}`).

mod collections;
mod json;
mod points;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Code, Status};

use crate::health::{title, QDRANT_API_VERSION};
use crate::point_ops::PointOps;
use crate::store::Store;

/// Largest request body accepted: Qdrant's default `max_request_size_mb` (batch
/// upserts of large vectors exceed axum's 2 MB default).
const MAX_BODY_SIZE: usize = 32 * 1024 * 1024;

/// What every route works on: the same store and operations the gRPC services use.
#[derive(Clone)]
pub struct RestState {
    store: Arc<Store>,
    ops: Arc<PointOps>,
}

/// The REST API's routes over `store` and `ops`.
pub fn router(store: Arc<Store>, ops: Arc<PointOps>) -> Router {
    use collections as c;
    use points as p;
    Router::new()
        .route("/", get(root))
        .route("/healthz", get(|| async { "healthz check passed" }))
        .route("/livez", get(|| async { "healthz check passed" }))
        // Collections load before the listener opens, so once it answers it is ready.
        .route("/readyz", get(|| async { "all shards are ready" }))
        .route("/collections", get(c::list))
        .route("/collections/{name}", get(c::info).put(c::create).delete(c::remove))
        .route("/collections/{name}/exists", get(c::exists))
        .route("/collections/{name}/index", put(p::create_index))
        .route("/collections/{name}/index/{field}", delete(p::delete_index))
        .route("/collections/{name}/points", put(p::upsert).post(p::get_many))
        .route("/collections/{name}/points/{id}", get(p::get_one))
        .route("/collections/{name}/points/delete", post(p::delete))
        .route("/collections/{name}/points/scroll", post(p::scroll))
        .route("/collections/{name}/points/count", post(p::count))
        .route("/collections/{name}/points/search", post(p::search))
        .route("/collections/{name}/points/query", post(p::query))
        .fallback(not_served)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_SIZE))
        .with_state(RestState { store, ops })
}

/// `GET /`: what clients read the server version from (bare, not in a `result`).
async fn root() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "title": title(), "version": QDRANT_API_VERSION }))
}

async fn not_served(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "qdrant-dev-server does not serve {} {} (see dev/qdrant-dev-server/README.md for the \
             REST routes it serves)",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not a method of {}", request.method(), request.uri().path()),
    )
}

/// Qdrant's success envelope.
#[derive(Serialize)]
struct Envelope<T> {
    result: T,
    status: &'static str,
    time: f64,
}

/// A successful answer carrying `result`, timed from `started`.
pub fn answer<T: Serialize>(result: T, started: Instant) -> Response {
    Json(Envelope { result, status: "ok", time: started.elapsed().as_secs_f64() }).into_response()
}

/// An error as Qdrant's REST API answers it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with this HTTP status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    /// A request Qdrant would refuse as malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

/// The gRPC status of the shared code, as the HTTP status Qdrant uses for it.
impl From<Status> for ApiError {
    fn from(status: Status) -> Self {
        let code = match status.code() {
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::DeadlineExceeded => StatusCode::REQUEST_TIMEOUT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(code, status.message())
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    status: ErrorStatus<'a>,
    time: f64,
}

#[derive(Serialize)]
struct ErrorStatus<'a> {
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, error = %self.message, "REST request failed");
        }
        // Errors are answered at once; their time is not worth measuring.
        let body = ErrorBody { status: ErrorStatus { error: &self.message }, time: 0.0 };
        (self.status, Json(body)).into_response()
    }
}

/// A JSON request body. Unlike axum's `Json` it does not insist on a content type
/// (`curl -d` without `-H` still works), treats an empty body as `{}` (every field of
/// scroll and count is optional) and words its errors as Qdrant does.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|err| ApiError::new(err.status(), format!("cannot read the request body: {err}")))?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
        serde_json::from_slice(text)
            .map(Body)
            .map_err(|err| ApiError::bad_request(format!("Json deserialize error: {err}")))
    }
}
