//! Every answered request, counted by route, method and status
//! (`gateway_http_requests_total`): the request, 4xx and 5xx rates of the dashboard and
//! the alerts. The route is the matched pattern (`/chat`), never the raw path, so the
//! series stay few; requests that match no route count as `unmatched`.

use axum::{
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
};

/// The counter's name.
pub const HTTP_REQUESTS: &str = "gateway_http_requests_total";

/// Counts the request once its response exists (a stream counts when it starts).
pub async fn count(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let method = request.method().clone();
    let response = next.run(request).await;
    metrics::counter!(
        HTTP_REQUESTS,
        "route" => route.unwrap_or_else(|| "unmatched".to_owned()),
        "method" => method.as_str().to_owned(),
        "status" => response.status().as_str().to_owned(),
    )
    .increment(1);
    response
}
