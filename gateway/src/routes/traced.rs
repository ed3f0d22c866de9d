//! Every request belongs to a trace, and its caller learns which: the caller's
//! `traceparent` is continued (or a new trace starts), every log line written while
//! the request is handled carries `trace_id`, the answer names the trace in an
//! `x-trace-id` header, and a JSON error body carries it as `error.trace_id`, so a
//! user's bug report leads straight to the logs (and traces) of that request. A chat
//! message's records carry the same trace on to the handlers. When traces are
//! exported, the request is the HTTP server span of its trace.

use axum::{
    body::Body,
    extract::{MatchedPath, Request},
    http::{header, HeaderName, HeaderValue},
    middleware::Next,
    response::Response,
};
use platform::{
    otel,
    trace_context::{TraceParent, HEADER},
};
use tracing::Instrument;

/// The response header naming the request's trace.
pub const TRACE_ID_HEADER: HeaderName = HeaderName::from_static("x-trace-id");

/// Error bodies are small; anything larger is passed on untouched.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Runs the request inside its trace and names the trace in the answer.
pub async fn trace(mut request: Request, next: Next) -> Response {
    let caller = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<TraceParent>().ok());
    // Sampled or not is decided here, once: an unsampled request builds nothing more.
    let mut server = otel::Direct::continuing(caller.as_ref(), "request", otel::Kind::Server);
    if server.recording() {
        describe(&mut server, &request);
    }
    let trace = server.trace();
    let trace_id = trace.trace_id_hex();
    let span = tracing::info_span!("request", trace_id = trace_id.as_str());
    request.extensions_mut().insert(trace);
    let mut response = next.run(request).instrument(span).await;
    if server.recording() {
        server.set("http.response.status_code", i64::from(response.status().as_u16()));
        if response.status().is_server_error() {
            server.fail(response.status());
        }
    }
    if let Ok(value) = HeaderValue::from_str(&trace_id) {
        response.headers_mut().insert(TRACE_ID_HEADER, value);
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (response.status().is_client_error() || response.status().is_server_error()) && is_json {
        response = with_trace_id(response, &trace_id).await;
    }
    response
}

/// Names the server span by the matched route and gives it OpenTelemetry's HTTP
/// attributes.
fn describe(server: &mut otel::Direct, request: &Request) {
    let method = request.method().as_str();
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    server.rename(format!("{method} {}", route.as_deref().unwrap_or("unmatched")));
    server.set("http.request.method", method.to_owned());
    if let Some(route) = route {
        server.set("http.route", route);
    }
    server.set("url.path", request.uri().path().to_owned());
}

/// The error body `{"error": {…}}` with `trace_id` added to the error object.
async fn with_trace_id(response: Response, trace_id: &str) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, ERROR_BODY_LIMIT).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let mut value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(_) => return Response::from_parts(parts, Body::from(bytes)),
    };
    match value.get_mut("error").and_then(|e| e.as_object_mut()) {
        Some(error) => {
            error.insert("trace_id".into(), trace_id.into());
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(value.to_string()))
        }
        None => Response::from_parts(parts, Body::from(bytes)),
    }
}
