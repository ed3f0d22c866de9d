//! The handlers' side of their integration tests: the `responder` / `memory` binaries as
//! real processes with their environment, and what a test reads out of the records it
//! watched. The broker and its reading and writing are `testkit::kafka`'s.
#![allow(dead_code)] // each test file uses a different part

use std::{collections::HashMap, process::Command, time::Duration};

use platform::events::{decode, MemoryEvent, ModelResponse, ReplyBody};
use rdkafka::{message::OwnedMessage, Message};
use testkit::{free_port, http_status, kafka::Kafka, Process, Signal};
use uuid::Uuid;

/// Reply events of `message_id`, in order.
pub fn replies_of(seen: &[OwnedMessage], message_id: Uuid) -> Vec<ModelResponse> {
    seen.iter()
        .filter_map(|m| decode::<ModelResponse>(m.payload()?).ok())
        .filter(|r| r.message_id == message_id)
        .collect()
}

/// Whether a final (`done` or `error`) reply to `message_id` was seen.
pub fn has_final(seen: &[OwnedMessage], message_id: Uuid) -> bool {
    replies_of(seen, message_id).iter().any(ModelResponse::is_final)
}

/// The `done` text of `message_id`, if any.
pub fn done_text(seen: &[OwnedMessage], message_id: Uuid) -> Option<String> {
    replies_of(seen, message_id).into_iter().find_map(|r| match r.body {
        ReplyBody::Done { text, .. } => Some(text),
        _ => None,
    })
}

/// Memory events of `message_id`.
pub fn memories_of(seen: &[OwnedMessage], message_id: Uuid) -> Vec<MemoryEvent> {
    seen.iter()
        .filter_map(|m| decode::<MemoryEvent>(m.payload()?).ok())
        .filter(|e| e.message_id == message_id)
        .collect()
}

/// A handler binary (`responder` or `memory`) running `run`.
pub struct HandlerProcess {
    pub process: Process,
    pub port: u16,
    /// The admin port (`/metrics`).
    pub metrics_port: u16,
    _dir: tempfile::TempDir,
}

/// The environment every handler test process gets.
pub fn handler_env(kafka: &Kafka, qdrant_url: &str) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("KAFKA_BOOTSTRAP_SERVERS", kafka.broker.bootstrap_servers()),
        ("QDRANT_URL", qdrant_url.to_string()),
        ("HANDLER_RETRY_BASE_MS", "50".into()),
        ("HANDLER_RETRY_MAX_MS", "500".into()),
        ("HANDLER_SHUTDOWN_GRACE_SECS", "30".into()),
        ("LOG_FORMAT", "json".into()),
        ("RUST_LOG", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for passthrough in ["EMBED_MODEL_DIR"] {
        if let Ok(v) = std::env::var(passthrough) {
            env.insert(passthrough.into(), v);
        }
    }
    env
}

/// The LLM settings for SmolLM2 behind `base_url`, deterministic.
pub fn llm_env(base_url: &str, max_tokens: u32) -> HashMap<String, String> {
    [
        ("LLM_BASE_URL", base_url.to_string()),
        ("LLM_MODEL", "smollm2".into()),
        ("LLM_TEMPERATURE", "0".into()),
        ("LLM_MAX_TOKENS", max_tokens.to_string()),
        ("LLM_TIMEOUT_SECS", "10".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

impl HandlerProcess {
    /// Starts `bin run` and waits until it holds partitions (`/ready`).
    pub fn start(name: &str, bin: &str, env: &HashMap<String, String>) -> Self {
        Self::start_with(name, bin, &["run"], env, true)
    }

    /// Starts `bin args…`; waits for `/ready` when `wait_ready`.
    pub fn start_with(
        name: &str,
        bin: &str,
        args: &[&str],
        env: &HashMap<String, String>,
        wait_ready: bool,
    ) -> Self {
        testkit::require_env(&["EMBED_MODEL_DIR"]).expect("EMBED_MODEL_DIR");
        let (port, metrics_port) = (free_port().expect("port"), free_port().expect("port"));
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new(bin);
        command
            .args(args)
            .env_clear()
            .envs(env)
            .env("HANDLER_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("METRICS_LISTEN_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("KAFKA_CLIENT_ID", name);
        let mut process =
            Process::spawn(name, command, dir.path().join(format!("{name}.log")), Signal::SIGTERM)
                .expect("spawn");
        if wait_ready {
            process
                .wait_until(Duration::from_secs(60), || http_status(port, "/ready") == Some(200))
                .unwrap_or_else(|e| panic!("{name} not ready: {e:#}"));
        }
        Self { process, port, metrics_port, _dir: dir }
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .await
            .expect("metrics reachable")
            .text()
            .await
            .expect("metrics body")
    }

    /// The sum of `handler_records_total` samples with `outcome`.
    pub async fn records(&self, outcome: &str) -> f64 {
        testkit::metric_with(
            &self.metrics().await,
            "handler_records_total",
            &format!("outcome=\"{outcome}\""),
        )
    }
}
