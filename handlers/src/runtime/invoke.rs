//! The HTTP invoke entry: a batch of records in, their outputs out, served through
//! `lambda_http` so the same handler runs as an AWS Lambda function (behind API
//! Gateway, an ALB or a function URL) or behind any HTTP push source.
//!
//! Request body: `{"records": [{"topic": "user_messages", "key": "...", "value": {..event..},
//! "headers": {"traceparent": "00-..."}}]}`. Response: one result per record, in order:
//! `{"status": "ok" | "dead_letter" | "retry", "error"?: "...", "outputs": [{"topic", "key", "value"}]}`.
//! Outputs are returned, not produced: the caller owns delivery. `retry` means a
//! dependency was down and the record should be sent again later.

use std::{collections::HashMap, sync::Arc};

use lambda_http::{http::StatusCode, Body, Request, Response};
use platform::trace_context::TraceParent;
use serde::{Deserialize, Serialize};

use super::{
    handler::{Context, Handler, Output, Sink},
    retry::{after_failure, AfterFailure},
    settings::{RecordLimit, Retrying},
};

/// One record of an invoke batch.
#[derive(Debug, Deserialize, Serialize)]
pub struct InvokeRecord {
    /// The topic the record was read from.
    pub topic: String,
    /// Its key (the conversation), if any.
    #[serde(default)]
    pub key: Option<String>,
    /// The event itself.
    pub value: serde_json::Value,
    /// Kafka-style headers, e.g. `traceparent`.
    #[serde(default)]
    pub headers: HashMap<String, String>,
}

/// A batch of records.
#[derive(Debug, Deserialize, Serialize)]
pub struct InvokeRequest {
    /// The records, handled in order.
    pub records: Vec<InvokeRecord>,
}

/// What happened to one record.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// Handled; `outputs` are its results.
    Ok,
    /// Could not be decoded or kept failing: store it in a dead-letter queue.
    DeadLetter,
    /// A dependency was unavailable: send it again later.
    Retry,
}

/// The result for one record.
#[derive(Debug, Serialize)]
pub struct RecordResult {
    /// Outcome.
    pub status: RecordStatus,
    /// Why, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Events the handler produced.
    pub outputs: Vec<Output>,
}

/// The response body.
#[derive(Debug, Serialize)]
pub struct InvokeResponse {
    /// One result per record, in order.
    pub results: Vec<RecordResult>,
}

/// Handles one invoke request; records over `limit` are answered `dead_letter`, as the
/// Kafka loop dead-letters them.
pub async fn invoke<H: Handler>(
    handler: &H,
    retrying: Retrying,
    limit: RecordLimit,
    request: Request,
) -> Response<Body> {
    let batch: InvokeRequest = match serde_json::from_slice(request.body().as_ref()) {
        Ok(batch) => batch,
        Err(err) => {
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": {"code": "invalid_batch", "message": format!(
                    "expected {{\"records\": [{{\"topic\", \"key\", \"value\", \"headers\"}}]}}: {err}")}}),
            )
        }
    };
    let mut results = Vec::with_capacity(batch.records.len());
    for record in &batch.records {
        results.push(one(handler, retrying, limit, record).await);
    }
    json(StatusCode::OK, &InvokeResponse { results })
}

async fn one<H: Handler>(
    handler: &H,
    retrying: Retrying,
    limit: RecordLimit,
    record: &InvokeRecord,
) -> RecordResult {
    let failed = |status, error: String| RecordResult { status, error: Some(error), outputs: Vec::new() };
    let payload = match serde_json::to_vec(&record.value) {
        Ok(p) => p,
        Err(err) => return failed(RecordStatus::DeadLetter, err.to_string()),
    };
    if let Some(reason) = limit.refusal(payload.len()) {
        return failed(RecordStatus::DeadLetter, reason);
    }
    let input = match handler.decode(&record.topic, &payload) {
        Ok(Some(input)) => input,
        Ok(None) => return RecordResult { status: RecordStatus::Ok, error: None, outputs: Vec::new() },
        Err(err) => return failed(RecordStatus::DeadLetter, format!("cannot decode: {err}")),
    };
    let trace = record
        .headers
        .get(platform::trace_context::HEADER)
        .and_then(|v| v.parse::<TraceParent>().ok())
        .map(|t| t.child())
        .unwrap_or_else(TraceParent::new_root);
    let sink = Arc::new(Sink::Collect);
    let mut delays = retrying.policy.delays();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let ctx = Context::new(&sink, trace, attempt);
        let err = match handler.handle(&input, &ctx).await {
            Ok(()) => {
                return RecordResult { status: RecordStatus::Ok, error: None, outputs: ctx.take_outputs() }
            }
            Err(err) => err,
        };
        match after_failure(&err, attempt, retrying.max_attempts) {
            // The caller owns redelivery: waiting here would hold its whole batch.
            AfterFailure::WaitForDependency => {
                return failed(RecordStatus::Retry, format!("{:#}", err.cause()))
            }
            AfterFailure::Retry => {
                tokio::time::sleep(delays.next().unwrap_or(retrying.policy.max)).await;
            }
            AfterFailure::GiveUp => {
                let ctx = Context::new(&sink, trace, attempt);
                handler.give_up(&input, &err, &ctx).await;
                return RecordResult {
                    status: RecordStatus::DeadLetter,
                    error: Some(err.to_string()),
                    outputs: ctx.take_outputs(),
                };
            }
        }
    }
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    // Text, not binary: API Gateway and function URLs would base64-encode binary bodies.
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".into());
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::Text(text))
        .unwrap_or_else(|_| Response::new(Body::Empty))
}
