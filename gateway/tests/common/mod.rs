//! Real gateway processes, on a broker from `testkit::kafka`, for the gateway's tests.
//! The responder is played by the test: it writes reply events to `model_responses`
//! itself, through the same `platform` code the real responder uses.
#![allow(dead_code)] // each test file (and the benchmark) uses a different part

use std::{
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use jsonwebtoken::{encode, EncodingKey, Header};
use platform::events::{ModelResponse, ReplyBody, UserMessage};
use serde_json::json;
use testkit::{free_port, http_status, kafka::Kafka, Process, Signal};
use uuid::Uuid;

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";
pub const CONVERSATION_KEY: &str = "conversation-key-conversation-key-0123456789";

/// The responder's side, played by the test on the broker ([`testkit::kafka`]).
pub trait FakeResponder {
    /// The first message in `user_messages`, read in a fresh consumer group (fails
    /// after 20 s).
    async fn first_user_message(&self, group: &str) -> UserMessage;

    /// Writes `bodies` as reply events of `message` to `model_responses`, in order.
    async fn reply(&self, message: &UserMessage, attempt: Uuid, bodies: Vec<ReplyBody>);
}

impl FakeResponder for Kafka {
    async fn first_user_message(&self, group: &str) -> UserMessage {
        self.first(group).await
    }

    async fn reply(&self, message: &UserMessage, attempt: Uuid, bodies: Vec<ReplyBody>) {
        let events: Vec<ModelResponse> =
            bodies.into_iter().map(|body| ModelResponse::for_message(message, attempt, body)).collect();
        self.send_in_order(&events).await;
    }
}

/// The token, done pair of a two-token reply.
pub fn reply_bodies(words: &[&str]) -> Vec<ReplyBody> {
    let mut bodies: Vec<ReplyBody> = words
        .iter()
        .enumerate()
        .map(|(i, w)| ReplyBody::Token { seq: i as u32, delta: w.to_string() })
        .collect();
    bodies.push(ReplyBody::Done {
        text: words.concat(),
        usage: None,
        finish_reason: "stop".into(),
        token_events: words.len() as u32,
    });
    bodies
}

/// A `gateway serve` process on a free port.
pub struct Gateway {
    pub process: Process,
    pub base: String,
    /// `http://127.0.0.1:<admin port>/metrics`.
    pub metrics_url: String,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub fn start(kafka: &Kafka, extra_env: &[(&str, &str)]) -> Self {
        Self::start_binary(env!("CARGO_BIN_EXE_gateway"), kafka, extra_env)
    }

    /// A gateway from `binary` (benchmarks: an older build, to compare with).
    pub fn start_binary(binary: &str, kafka: &Kafka, extra_env: &[(&str, &str)]) -> Self {
        let (port, metrics_port) = (free_port().expect("port"), free_port().expect("port"));
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .env_clear()
            .env("KAFKA_BOOTSTRAP_SERVERS", kafka.broker.bootstrap_servers())
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("METRICS_LISTEN_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("JWT_SECRET", JWT_SECRET)
            .env("CONVERSATION_KEY", CONVERSATION_KEY)
            .env("KAFKA_PRODUCE_TIMEOUT_MS", "2000")
            .env("SSE_HEARTBEAT_SECS", "1")
            .envs(extra_env.iter().copied());
        let mut process = Process::spawn("gateway", command, dir.path().join("gateway.log"), Signal::SIGTERM)
            .expect("spawn");
        process
            .wait_until(Duration::from_secs(30), || http_status(port, "/ready") == Some(200))
            .expect("gateway ready");
        Self {
            process,
            base: format!("http://127.0.0.1:{port}"),
            metrics_url: format!("http://127.0.0.1:{metrics_port}/metrics"),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// A signed HS256 token for `user`, expiring `expires_in` seconds from now (negative: expired).
pub fn token_with(user: &str, expires_in: i64, secret: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() as i64;
    encode(
        &Header::default(),
        &json!({"sub": user, "exp": now + expires_in, "iat": now}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token")
}

pub fn token(user: &str) -> String {
    token_with(user, 3600, JWT_SECRET)
}

/// POSTs a chat message; returns (status, body).
pub async fn post_chat(
    client: &reqwest::Client,
    gateway: &Gateway,
    token: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let response =
        client.post(gateway.url("/chat")).bearer_auth(token).json(&body).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

/// Opens `/stream` and returns its events.
pub async fn open_stream(
    client: &reqwest::Client,
    gateway: &Gateway,
    token: &str,
    conversation_id: &str,
    last_event_id: Option<&str>,
) -> impl Stream<Item = Event> + Unpin {
    let mut request =
        client.get(gateway.url(&format!("/stream?conversation_id={conversation_id}"))).bearer_auth(token);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.expect("stream request");
    assert_eq!(response.status(), 200, "stream refused");
    Box::pin(response.bytes_stream().eventsource().map(|e| e.expect("well-formed SSE")))
}

/// The next event, failing the test after 15 s.
pub async fn next_event(stream: &mut (impl Stream<Item = Event> + Unpin)) -> Event {
    tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .expect("an event within 15 s")
        .expect("the stream stayed open")
}

/// The message a 202 answer describes, rebuilt for the fake responder.
pub fn accepted_message(body: &serde_json::Value, user: &str) -> UserMessage {
    let mut message = UserMessage::new(
        body["conversation_id"].as_str().and_then(|s| s.parse().ok()).expect("conversation_id"),
        user,
        "",
    );
    message.message_id = body["message_id"].as_str().and_then(|s| s.parse().ok()).expect("message_id");
    message
}

/// A `memory` worker (the real binary) on `kafka` and `qdrant_url`, embedding in-process
/// with the model in `model_dir`, logging to `dir`; `extra_env` on top. Ready when it
/// returns.
pub fn memory_worker(
    kafka: &Kafka,
    qdrant_url: &str,
    model_dir: &str,
    dir: &std::path::Path,
    extra_env: &[(&str, &str)],
) -> Process {
    let binary = testkit::workspace_binary("memory").expect("the memory binary");
    let (port, metrics_port) = (free_port().expect("port"), free_port().expect("port"));
    let mut command = Command::new(binary);
    command
        .arg("run")
        .env_clear()
        .env("KAFKA_BOOTSTRAP_SERVERS", kafka.broker.bootstrap_servers())
        .env("QDRANT_URL", qdrant_url)
        .env("EMBED_MODEL_DIR", model_dir)
        .env("HANDLER_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("METRICS_LISTEN_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("LOG_FORMAT", "text")
        .envs(extra_env.iter().copied());
    let mut process =
        Process::spawn("memory", command, dir.join("memory.log"), Signal::SIGTERM).expect("spawn");
    process
        .wait_until(Duration::from_secs(60), || http_status(port, "/ready") == Some(200))
        .expect("memory ready");
    process
}
