//! Real processes for the handlers' integration tests: a tansu broker with the stack's
//! topics, the Qdrant engine server, llama-server with SmolLM2, and the `responder` /
//! `memory` binaries themselves.
#![allow(dead_code)] // each test file uses a different part

use std::{
    collections::HashMap,
    process::Command,
    time::{Duration, Instant},
};

use platform::{
    bootstrap::{self, Plan},
    events::{decode, encode, Event, MemoryEvent, ModelResponse, ReplyBody},
    kafka::{publish, KafkaSettings},
    lag::{self, OffsetResetPolicy},
    trace_context::TraceParent,
};
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    message::{Headers, OwnedMessage},
    producer::FutureRecord,
    Message,
};
use testkit::{free_port, http_status, Broker, Process, Signal};
use uuid::Uuid;

/// A broker with the stack's topics and initialised handler groups.
pub struct Kafka {
    pub broker: Broker,
    pub settings: KafkaSettings,
}

impl Kafka {
    /// `partitions` per topic.
    pub async fn start(partitions: i32) -> Self {
        let broker = Broker::start().expect("start tansu");
        let settings = KafkaSettings::plaintext(broker.bootstrap_servers());
        bootstrap::run(&settings, &Plan::stack(partitions, 1), Duration::from_secs(30))
            .await
            .expect("bootstrap");
        Self { broker, settings }
    }

    /// Publishes an event (acknowledged) with a fresh trace; returns the trace.
    pub async fn send<E: Event>(&self, event: &E) -> TraceParent {
        let trace = TraceParent::new_root();
        let producer = self.settings.producer().expect("producer");
        publish(&producer, event, &trace, Duration::from_secs(10)).await.expect("acknowledged");
        trace
    }

    /// Publishes many events through one producer, all in flight at once.
    pub async fn send_all<E: Event>(&self, events: &[E]) {
        let producer = self.settings.producer().expect("producer");
        let trace = TraceParent::new_root();
        let sends = events.iter().map(|e| publish(&producer, e, &trace, Duration::from_secs(30)));
        for result in futures::future::join_all(sends).await {
            result.expect("acknowledged");
        }
    }

    /// Publishes an event to an explicit partition.
    pub async fn send_to<E: Event>(&self, event: &E, partition: i32) {
        let producer = self.settings.producer().expect("producer");
        let (key, payload) = (event.key(), encode(event));
        let record = FutureRecord::to(E::TOPIC).key(&key).payload(&payload).partition(partition);
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("acknowledged");
    }

    /// Publishes raw bytes to `topic`.
    pub async fn send_raw(&self, topic: &str, key: &str, payload: &[u8]) {
        let producer = self.settings.producer().expect("producer");
        let record = FutureRecord::to(topic).key(key).payload(payload);
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("acknowledged");
    }

    /// Reads `topic` from the beginning (a fresh group per watcher).
    pub fn watch(&self, topic: &str) -> Watcher {
        let consumer: StreamConsumer =
            self.settings.stream_consumer(&format!("test-watch-{}", Uuid::new_v4())).expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        Watcher { consumer, seen: Vec::new() }
    }

    /// The group's total lag as KEDA computes it.
    pub async fn lag(&self, group: &'static str, topics: &'static [&'static str]) -> i64 {
        let client = self.settings.base_consumer(group).expect("client");
        tokio::task::spawn_blocking(move || {
            lag::group_lag(&client, topics, OffsetResetPolicy::Earliest, Duration::from_secs(5))
                .map(|l| lag::total(&l))
        })
        .await
        .expect("lag task")
        .expect("lag")
    }

    /// Waits until the group's lag is 0 (fails after `timeout`).
    pub async fn wait_lag_zero(
        &self,
        group: &'static str,
        topics: &'static [&'static str],
        timeout: Duration,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let lag = self.lag(group, topics).await;
            if lag == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "group {group} still has lag {lag} after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Everything read from one topic so far.
pub struct Watcher {
    consumer: StreamConsumer,
    pub seen: Vec<OwnedMessage>,
}

impl Watcher {
    /// Reads until `done(seen)` holds; fails after `timeout` with what was seen.
    pub async fn until(
        &mut self,
        timeout: Duration,
        done: impl Fn(&[OwnedMessage]) -> bool,
    ) -> &[OwnedMessage] {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(&self.seen) {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => self.seen.push(m.detach()),
                Ok(Err(e)) => panic!("consumer error: {e}"),
                Err(_) => panic!(
                    "condition not met within {timeout:?}; saw {} records: {:#?}",
                    self.seen.len(),
                    self.seen.iter().map(payload_text).collect::<Vec<_>>()
                ),
            }
        }
        &self.seen
    }

    /// Reads whatever arrives within `window`.
    pub async fn drain(&mut self, window: Duration) -> &[OwnedMessage] {
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Ok(m)) = tokio::time::timeout_at(deadline, self.consumer.recv()).await {
            self.seen.push(m.detach());
        }
        &self.seen
    }
}

pub fn payload_text(m: &OwnedMessage) -> String {
    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()
}

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

/// A header's value as text.
pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A handler binary (`responder` or `memory`) running `run`.
pub struct HandlerProcess {
    pub process: Process,
    pub port: u16,
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
        let port = free_port().expect("port");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new(bin);
        command
            .args(args)
            .env_clear()
            .envs(env)
            .env("HANDLER_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("KAFKA_CLIENT_ID", name);
        let mut process =
            Process::spawn(name, command, dir.path().join(format!("{name}.log")), Signal::SIGTERM)
                .expect("spawn");
        if wait_ready {
            process
                .wait_until(Duration::from_secs(60), || http_status(port, "/ready") == Some(200))
                .unwrap_or_else(|e| panic!("{name} not ready: {e:#}"));
        }
        Self { process, port, _dir: dir }
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await
            .expect("metrics reachable")
            .text()
            .await
            .expect("metrics body")
    }

    /// The sum of `handler_records_total` samples with `outcome`.
    pub async fn records(&self, outcome: &str) -> f64 {
        let needle = format!("outcome=\"{outcome}\"");
        self.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with("handler_records_total") && l.contains(&needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}
