//! Streaming one reply: LLM deltas become `token` events (the first at once, later ones
//! coalesced for a few milliseconds), then one `done`.

use std::time::Duration;

use async_openai::{
    config::OpenAIConfig,
    error::OpenAIError,
    types::chat::{
        ChatCompletionRequestAssistantMessageArgs, ChatCompletionRequestMessage,
        ChatCompletionRequestSystemMessageArgs, ChatCompletionRequestUserMessageArgs,
        ChatCompletionStreamOptions, CreateChatCompletionRequestArgs,
    },
    Client,
};
use futures::StreamExt;
use platform::{
    events::{ModelResponse, ReplyBody, Usage, UserMessage},
    llm::{is_retryable, status_in_error_body},
    otel,
};
use tracing::Instrument;
use uuid::Uuid;

use super::{
    cold_start::ColdStart,
    prompt::{PromptMessage, PromptRole},
};
use crate::runtime::{Context, HandlerError};

/// How long later deltas may wait to be published together.
const COALESCE: Duration = Duration::from_millis(20);

/// What to ask the model.
pub struct Request<'a> {
    /// Model name.
    pub model: &'a str,
    /// Longest reply, in tokens.
    pub max_tokens: u32,
    /// Sampling temperature, if set.
    pub temperature: Option<f32>,
    /// The prompt.
    pub prompt: &'a [PromptMessage],
    /// Whether an unreachable LLM is still starting.
    pub cold_start: &'a ColdStart,
}

/// Asks the model and publishes the reply to `message` as attempt `attempt`; the
/// publishes are children of the LLM call's span when traces are exported.
pub async fn reply(
    llm: &Client<OpenAIConfig>,
    request: Request<'_>,
    message: &UserMessage,
    attempt: Uuid,
    ctx: &Context<'_>,
) -> Result<(), HandlerError> {
    let span = llm_span(&request);
    let result = stream_reply(llm, request, message, attempt, ctx, &span).instrument(span.clone()).await;
    if let Err(err) = &result {
        otel::fail(&span, err);
    }
    result
}

/// The LLM call's client span (OpenTelemetry's GenAI conventions), when exporting.
fn llm_span(request: &Request<'_>) -> tracing::Span {
    if !otel::exporting() {
        return tracing::Span::none();
    }
    let span = otel::span(&format!("chat {}", request.model), otel::Kind::Client);
    otel::set(&span, "gen_ai.operation.name", "chat");
    otel::set(&span, "gen_ai.provider.name", "openai");
    otel::set(&span, "gen_ai.request.model", request.model.to_string());
    otel::set(&span, "gen_ai.request.max_tokens", i64::from(request.max_tokens));
    if let Some(t) = request.temperature {
        otel::set(&span, "gen_ai.request.temperature", f64::from(t));
    }
    span
}

async fn stream_reply(
    llm: &Client<OpenAIConfig>,
    request: Request<'_>,
    message: &UserMessage,
    attempt: Uuid,
    ctx: &Context<'_>,
    span: &tracing::Span,
) -> Result<(), HandlerError> {
    let cold_start = request.cold_start;
    let request = chat_request(&request)?;
    let started = std::time::Instant::now();
    let mut stream = match llm.chat().create_stream(request).await {
        Ok(stream) => stream,
        Err(err) if is_unreachable(&err) => return Err(cold_start.unreachable(anyhow::anyhow!("LLM: {err}"))),
        Err(err) => return Err(classify(err)),
    };
    cold_start.answered();
    let event = |body| ModelResponse::for_message(message, attempt, body);

    let (mut text, mut pending) = (String::new(), String::new());
    let (mut seq, mut usage, mut finish_reason) = (0u32, None, None);
    let mut flush_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            chunk = stream.next() => {
                let Some(chunk) = chunk else { break };
                let chunk = chunk.map_err(classify)?;
                if let Some(u) = chunk.usage {
                    usage = Some(Usage {
                        prompt_tokens: u.prompt_tokens,
                        completion_tokens: u.completion_tokens,
                        total_tokens: u.total_tokens,
                    });
                }
                for choice in chunk.choices {
                    if let Some(delta) = choice.delta.content.filter(|d| !d.is_empty()) {
                        text.push_str(&delta);
                        pending.push_str(&delta);
                    }
                    if let Some(reason) = choice.finish_reason {
                        finish_reason = serde_json::to_value(reason).ok().and_then(|v| v.as_str().map(String::from));
                    }
                }
                if pending.is_empty() {
                    continue;
                }
                if seq == 0 {
                    // The first token goes out the moment it exists: it is what the
                    // user waits for.
                    let first_token = started.elapsed().as_secs_f64();
                    metrics::histogram!("responder_llm_first_token_seconds").record(first_token);
                    otel::set(span, "gen_ai.server.time_to_first_token", first_token);
                    ctx.publish(&event(ReplyBody::Token { seq, delta: std::mem::take(&mut pending) })).await?;
                    seq += 1;
                } else if flush_at.is_none() {
                    flush_at = Some(tokio::time::Instant::now() + COALESCE);
                }
            }
            _ = async { tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)).await }, if flush_at.is_some() => {
                flush_at = None;
                ctx.publish(&event(ReplyBody::Token { seq, delta: std::mem::take(&mut pending) })).await?;
                seq += 1;
            }
        }
    }
    if !pending.is_empty() {
        ctx.publish(&event(ReplyBody::Token { seq, delta: std::mem::take(&mut pending) })).await?;
        seq += 1;
    }
    let Some(finish_reason) = finish_reason else {
        // A stream cut short without a finish reason is not a whole answer.
        return Err(HandlerError::Transient(anyhow::anyhow!("the LLM stream ended without a finish reason")));
    };
    metrics::histogram!("responder_llm_reply_seconds").record(started.elapsed().as_secs_f64());
    otel::set(span, "gen_ai.response.finish_reasons", finish_reason.clone());
    if let Some(usage) = &usage {
        otel::set(span, "gen_ai.usage.input_tokens", i64::from(usage.prompt_tokens));
        otel::set(span, "gen_ai.usage.output_tokens", i64::from(usage.completion_tokens));
    }
    // `done` only once every token is stored: in a broker outage longer than the produce
    // timeout, librdkafka expires the tokens queued first and writes later ones after it
    // (1,2,3,4,5 can be stored as 1,4,5). A `done` after such a gap would end the
    // message with text the client was never shown; failing here retries the attempt.
    ctx.flush().await?;
    ctx.publish(&event(ReplyBody::Done { text, usage, finish_reason, token_events: seq })).await
}

fn chat_request(
    request: &Request<'_>,
) -> Result<async_openai::types::chat::CreateChatCompletionRequest, HandlerError> {
    let invalid = |e: OpenAIError| HandlerError::Invalid(anyhow::anyhow!("building the LLM request: {e}"));
    let messages = request
        .prompt
        .iter()
        .map(|m| -> Result<ChatCompletionRequestMessage, OpenAIError> {
            Ok(match m.role {
                PromptRole::System => ChatCompletionRequestSystemMessageArgs::default()
                    .content(m.content.as_str())
                    .build()?
                    .into(),
                PromptRole::Assistant => ChatCompletionRequestAssistantMessageArgs::default()
                    .content(m.content.as_str())
                    .build()?
                    .into(),
                PromptRole::User => ChatCompletionRequestUserMessageArgs::default()
                    .content(m.content.as_str())
                    .build()?
                    .into(),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let mut args = CreateChatCompletionRequestArgs::default();
    if let Some(t) = request.temperature {
        args.temperature(t);
    }
    args.model(request.model)
        .max_completion_tokens(request.max_tokens)
        .stream(true)
        .stream_options(ChatCompletionStreamOptions { include_usage: Some(true), ..Default::default() })
        .messages(messages)
        .build()
        .map_err(invalid)
}

/// No server took the request: nothing listens (a vLLM scaled to zero, a Service
/// without ready endpoints), or the server says it cannot serve yet (503, e.g.
/// llama-server while it loads the model).
fn is_unreachable(err: &OpenAIError) -> bool {
    match err {
        OpenAIError::Reqwest(e) => e.is_connect(),
        OpenAIError::ApiError(api) => api.status_code == reqwest::StatusCode::SERVICE_UNAVAILABLE,
        _ => false,
    }
}

/// Rate limits, server errors, timeouts and broken connections are worth retrying;
/// a request the server rejects (4xx) is not.
fn classify(err: OpenAIError) -> HandlerError {
    match &err {
        OpenAIError::ApiError(api) if !is_retryable(api.status_code) => {
            HandlerError::Invalid(anyhow::anyhow!("the LLM rejected the request: {err}"))
        }
        OpenAIError::JSONDeserialize(_, body) => match status_in_error_body(body) {
            Some(status) if !is_retryable(status) => {
                HandlerError::Invalid(anyhow::anyhow!("the LLM rejected the request ({status}): {body}"))
            }
            _ => HandlerError::Transient(anyhow::anyhow!("LLM: {err}")),
        },
        OpenAIError::InvalidArgument(_) => HandlerError::Invalid(anyhow::anyhow!("{err}")),
        _ => HandlerError::Transient(anyhow::anyhow!("LLM: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreadable(body: &str) -> OpenAIError {
        let err = serde_json::from_str::<u32>("not a number").expect_err("not JSON");
        OpenAIError::JSONDeserialize(err, body.to_string())
    }

    #[test]
    fn a_4xx_whose_error_body_async_openai_cannot_read_is_not_retried() {
        // llama-server's answer to a prompt longer than its context.
        let too_long = r#"{"error":{"code":400,"message":"request (3010 tokens) exceeds the available context size (2048 tokens), try increasing it","type":"exceed_context_size_error"}}"#;
        assert!(matches!(classify(unreadable(too_long)), HandlerError::Invalid(_)));
        let busy = r#"{"error":{"code":429,"message":"busy"}}"#;
        assert!(matches!(classify(unreadable(busy)), HandlerError::Transient(_)));
        assert!(matches!(classify(unreadable("<html>bad gateway</html>")), HandlerError::Transient(_)));
    }
}
