//! `POST /v1/chat/completions`: an OpenAI-compatible façade over the same pipeline, so
//! existing OpenAI clients and chat UIs work against the stack unchanged.
//!
//! The last `user` message of the request becomes a chat message (the conversation's
//! context comes from the stack's memory, not from the request's history). A new
//! conversation is started per request unless `X-Conversation-Id` names one of the
//! caller's. With `stream: true` the reply streams as `chat.completion.chunk` events and
//! ends with `data: [DONE]`; otherwise one `chat.completion` is returned.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{rejection::JsonRejection, State},
    http::{HeaderMap, StatusCode},
    response::{
        sse::{Event, KeepAlive},
        IntoResponse, Response, Sse,
    },
    Extension, Json,
};
use futures::{stream, StreamExt};
use platform::{
    events::{ReplyBody, Usage},
    trace_context::TraceParent,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    auth::User,
    error::ApiError,
    reply::{ReplyEvent, ReplyKind},
    sse,
    state::AppState,
};

/// Longest wait for a complete reply before the façade gives up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// The part of OpenAI's chat completion request the façade uses; other fields are
/// accepted and ignored.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// Echoed back in the answer.
    #[serde(default)]
    pub model: String,
    /// The conversation so far; the last one must be the user's.
    pub messages: Vec<RequestMessage>,
    /// Stream the answer as chunks.
    #[serde(default)]
    pub stream: bool,
}

/// One message of the request.
#[derive(Debug, Deserialize)]
pub struct RequestMessage {
    /// `system`, `user`, `assistant`, …
    pub role: String,
    /// A string, or an array of content parts of which the `text` ones are used.
    #[serde(default)]
    pub content: Value,
}

fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let text: Vec<&str> =
                parts.iter().filter(|p| p["type"] == "text").filter_map(|p| p["text"].as_str()).collect();
            (!text.is_empty()).then(|| text.join("\n"))
        }
        _ => None,
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceParent>,
    user: User,
    headers: HeaderMap,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let last = request.messages.last().filter(|m| m.role == "user").ok_or_else(|| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", "the last message must be the user's")
    })?;
    let text = text_of(&last.content).filter(|t| !t.trim().is_empty()).ok_or_else(|| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "empty_text", "the last message has no text")
    })?;
    let conversation_id = match headers.get("x-conversation-id") {
        None => None,
        Some(v) => {
            Some(v.to_str().ok().and_then(|s| s.parse().ok()).ok_or_else(ApiError::unknown_conversation)?)
        }
    };
    let message = state.intake.accept(&user, conversation_id, text, None, trace).await?;
    metrics::counter!("gateway_openai_requests_total").increment(1);
    // Events that arrived before this subscription are in the hub's replay window.
    let subscription = state
        .hub
        .subscribe(message.conversation_id, &user.id, None)
        .map_err(|_| ApiError::unknown_conversation())?;

    let message_id = message.message_id;
    let id = format!("chatcmpl-{message_id}");
    let created = message.ts.timestamp();
    let model = if request.model.is_empty() { "chat-stack".to_string() } else { request.model };
    let mut replies = subscription.until_final(message_id);

    if !request.stream {
        let stopping = sse::stopping(&state);
        let reply = tokio::time::timeout(REPLY_TIMEOUT, async {
            while let Some(reply) = replies.next().await {
                match Step::of(&reply) {
                    // The whole text comes with `done`.
                    Step::Delta(_) | Step::Gap => {}
                    Step::Done { text, finish_reason, usage } => {
                        return Ok(json!({
                            "id": id, "object": "chat.completion", "created": created, "model": model,
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
                            "usage": usage,
                        }))
                    }
                    Step::Failed(reason) => {
                        return Err(ApiError::new(StatusCode::BAD_GATEWAY, "reply_failed", reason))
                    }
                }
            }
            Err(ApiError::new(StatusCode::BAD_GATEWAY, "reply_failed", "the reply stream ended early"))
        });
        let outcome = tokio::select! {
            outcome = reply => outcome,
            () = stopping => return Err(ApiError::unavailable("the server is restarting; retry")),
        };
        return match outcome {
            Ok(completion) => completion.map(|body| Json(body).into_response()),
            Err(_) => {
                Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, "reply_timeout", "no complete reply in time"))
            }
        };
    }

    let chunk = Arc::new(move |delta: Value, finish: Option<&str>, usage: Option<Usage>| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        if let Some(u) = usage {
            c["usage"] = json!(u);
        }
        Event::default().data(c.to_string())
    });
    let first = chunk(json!({"role": "assistant", "content": ""}), None, None);
    let failed = |reason: &str| {
        let error = json!({"error": {"message": reason, "type": "server_error", "code": "reply_failed"}});
        Event::default().data(error.to_string())
    };
    // Ends right after the final step, without waiting for another reply event. What
    // was streamed is kept: a client gets exactly the `done` text, or an error; a
    // stream cut short (timeout, shutdown, a client too slow) ends with an error too,
    // never with a bare `[DONE]` that would pass for a whole reply.
    let replies =
        Box::pin(replies.take_until(tokio::time::sleep(REPLY_TIMEOUT)).take_until(sse::stopping(&state)));
    let body = stream::unfold((replies, String::new(), false), move |(mut replies, mut sent, ended)| {
        let chunk = chunk.clone();
        async move {
            if ended {
                return None;
            }
            let Some(reply) = replies.next().await else {
                metrics::counter!("gateway_openai_unfinished_streams_total").increment(1);
                let cut =
                    failed("the reply did not finish (the server is restarting or it timed out); retry");
                return Some((cut, (replies, sent, true)));
            };
            let (event, end) = match Step::of(&reply) {
                Step::Delta(delta) => {
                    sent.push_str(delta);
                    (chunk(json!({"content": delta}), None, None), false)
                }
                Step::Done { text, .. } if text != sent => {
                    metrics::counter!("gateway_openai_mismatched_streams_total").increment(1);
                    (failed("the streamed text does not match the reply; retry"), true)
                }
                Step::Done { finish_reason, usage, .. } => {
                    (chunk(json!({}), Some(finish_reason), Some(usage)), true)
                }
                Step::Gap => (failed("some of the reply's tokens were lost in transit; retry"), true),
                Step::Failed(reason) => (failed(reason), true),
            };
            Some((event, (replies, sent, end)))
        }
    });
    let events = stream::once(futures::future::ready(first))
        .chain(body)
        .chain(stream::once(futures::future::ready(Event::default().data("[DONE]"))))
        .map(Ok::<_, Infallible>);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(state.heartbeat)).into_response())
}

/// What a reply event means for an OpenAI client.
enum Step<'a> {
    Delta(&'a str),
    Done {
        text: &'a str,
        finish_reason: &'a str,
        usage: Usage,
    },
    /// Tokens were lost: the deltas do not add up to the reply.
    Gap,
    Failed(&'a str),
}

impl<'a> Step<'a> {
    fn of(reply: &'a ReplyEvent) -> Self {
        match &reply.kind {
            ReplyKind::Reply(ReplyBody::Token { delta, .. }) => Self::Delta(delta),
            // A reply without counts reports zeros, as OpenAI clients expect a usage object.
            ReplyKind::Reply(ReplyBody::Done { text, finish_reason, usage, .. }) => {
                Self::Done { text, finish_reason, usage: usage.unwrap_or_default() }
            }
            ReplyKind::Reply(ReplyBody::Error { message, .. }) => Self::Failed(message),
            // Tokens already sent cannot be taken back from an OpenAI client.
            ReplyKind::Reset => Self::Failed("the reply was interrupted and is being regenerated; retry"),
            ReplyKind::Gap => Self::Gap,
        }
    }
}
