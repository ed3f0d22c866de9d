//! The OpenAI-compatible façade with a real OpenAI client library (`async-openai`),
//! stream and non-stream, against a real broker. The test plays the responder.

mod common;

use std::time::Duration;

use async_openai::{
    config::OpenAIConfig,
    types::chat::{
        ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
    },
    Client,
};
use common::*;
use futures::StreamExt;
use platform::events::{ReplyBody, UserMessage};
use testkit::kafka::Kafka;
use uuid::Uuid;

fn client(gateway: &Gateway, user: &str) -> Client<OpenAIConfig> {
    Client::with_config(OpenAIConfig::new().with_api_base(gateway.url("/v1")).with_api_key(token(user)))
}

fn request(stream: bool) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model("chat-stack")
        .stream(stream)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("What is the capital of France?")
            .build()
            .expect("message")
            .into()])
        .build()
        .expect("request")
}

/// Waits for the next user message in Kafka and answers it with `words`.
async fn respond(kafka: &Kafka, group: &str, words: &[&str]) -> UserMessage {
    let message = kafka.first_user_message(group).await;
    kafka.reply(&message, Uuid::new_v4(), reply_bodies(words)).await;
    message
}

#[tokio::test(flavor = "multi_thread")]
async fn an_openai_client_gets_a_complete_answer() {
    let kafka = Kafka::start(2).await;
    let gateway = Gateway::start(&kafka, &[]);
    let openai = client(&gateway, "alice");
    let pending = tokio::spawn(async move { openai.chat().create(request(false)).await });
    let message = respond(&kafka, "responder-a", &["Paris", "."]).await;
    assert_eq!(message.text, "What is the capital of France?");
    assert_eq!(message.user_id, "alice");
    let answer = pending.await.expect("task").expect("a chat completion");
    assert_eq!(answer.id, format!("chatcmpl-{}", message.message_id));
    assert_eq!(answer.choices.len(), 1);
    assert_eq!(answer.choices[0].message.content.as_deref(), Some("Paris."));
    assert!(answer.choices[0].finish_reason.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_openai_client_streams_the_answer() {
    let kafka = Kafka::start(2).await;
    let gateway = Gateway::start(&kafka, &[]);
    let openai = client(&gateway, "alice");
    let mut stream = openai.chat().create_stream(request(true)).await.expect("stream opens");
    let responder = async { respond(&kafka, "responder-b", &["The capital", " is", " Paris."]).await };
    let reader = async {
        let (mut text, mut finish, mut chunks) = (String::new(), None, 0);
        while let Some(chunk) =
            tokio::time::timeout(Duration::from_secs(20), stream.next()).await.expect("a chunk")
        {
            let chunk = chunk.expect("a well-formed chunk");
            chunks += 1;
            for choice in chunk.choices {
                text.push_str(choice.delta.content.as_deref().unwrap_or_default());
                finish = finish.or(choice.finish_reason);
            }
        }
        (text, finish, chunks)
    };
    let (_, (text, finish, chunks)) = tokio::join!(responder, reader);
    assert_eq!(text, "The capital is Paris.");
    assert!(finish.is_some(), "no finish reason");
    assert!(chunks >= 4, "expected one chunk per token plus the role and the end, got {chunks}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_facade_refuses_requests_it_cannot_answer() {
    let kafka = Kafka::start(2).await;
    let gateway = Gateway::start(&kafka, &[]);
    let http = reqwest::Client::new();
    let post = |body: serde_json::Value, token: Option<String>| {
        let mut r = http.post(gateway.url("/v1/chat/completions")).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let no_user_last =
        serde_json::json!({"model": "m", "messages": [{"role": "assistant", "content": "hi"}]});
    assert_eq!(post(no_user_last, Some(token("alice"))).await.unwrap().status(), 422);
    let empty = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "  "}]});
    assert_eq!(post(empty, Some(token("alice"))).await.unwrap().status(), 422);
    let ok_body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(post(ok_body, None).await.unwrap().status(), 401);
}

/// A reply whose token `seq` 1 never arrived: "a", "c", then `done` with "abc".
fn reply_with_a_lost_token() -> Vec<ReplyBody> {
    vec![
        ReplyBody::Token { seq: 0, delta: "a".into() },
        ReplyBody::Token { seq: 2, delta: "c".into() },
        ReplyBody::Done { text: "abc".into(), usage: None, finish_reason: "stop".into(), token_events: 3 },
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_tokens_end_a_stream_with_an_error_and_never_with_stop() {
    let kafka = Kafka::start(2).await;
    let gateway = Gateway::start(&kafka, &[]);
    let body =
        serde_json::json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let response = reqwest::Client::new()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(token("alice"))
        .json(&body)
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(response.status(), 200);
    let message = kafka.first_user_message("responder-gap").await;
    kafka.reply(&message, Uuid::new_v4(), reply_with_a_lost_token()).await;
    let text = tokio::time::timeout(Duration::from_secs(20), response.text())
        .await
        .expect("the stream ends")
        .expect("a body");
    let chunks: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("JSON chunk"))
        .collect();
    let last = chunks.last().expect("chunks");
    assert_eq!(last["error"]["code"], "reply_failed", "the stream's end: {last}");
    assert!(
        chunks.iter().all(|c| c["choices"][0]["finish_reason"].is_null()),
        "a finish_reason for text the client did not get whole: {text}"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_streaming_lost_tokens_do_not_matter_the_done_text_is_the_answer() {
    let kafka = Kafka::start(2).await;
    let gateway = Gateway::start(&kafka, &[]);
    let openai = client(&gateway, "alice");
    let pending = tokio::spawn(async move { openai.chat().create(request(false)).await });
    let message = kafka.first_user_message("responder-gap").await;
    kafka.reply(&message, Uuid::new_v4(), reply_with_a_lost_token()).await;
    let answer = pending.await.expect("task").expect("a chat completion");
    assert_eq!(answer.choices[0].message.content.as_deref(), Some("abc"));
}
