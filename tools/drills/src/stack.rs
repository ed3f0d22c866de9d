//! The stack as real processes on free loopback ports: a broker with the topics made,
//! a Qdrant engine server, and as many gateways and handlers as a drill asks for.

use std::{
    collections::HashMap,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use loadtest::Report;
use platform::{
    bootstrap::{self, Plan},
    kafka::KafkaSettings,
    lag::{self, OffsetResetPolicy},
};
use tempfile::TempDir;
use testkit::{free_port, http_status, workspace_binary, Broker, Process, QdrantServer, Signal};
use uuid::Uuid;

/// The gateways' HS256 secret (the load generator mints its users' tokens with it).
pub const JWT_SECRET: &str = "drills-jwt-secret-drills-jwt-secret-0123456789";
/// The key every gateway signs conversation ids with.
pub const CONVERSATION_KEY: &str = "drills-conversation-key-drills-conversation-key";
/// Partitions per topic: room for two handlers of each kind.
pub const PARTITIONS: i32 = 4;

/// One of the stack's own processes (`gateway`, `responder` or `memory`).
pub struct Service {
    /// The running process.
    pub process: Process,
    /// Its HTTP port (the gateway's API, a handler's health).
    pub port: u16,
    /// Its admin port (`/metrics`).
    pub metrics_port: u16,
}

impl Service {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `GET /ready`'s status, `None` when nothing answers.
    pub fn ready(&self) -> Option<u16> {
        http_status(self.port, "/ready")
    }

    /// `POST /chat` of `text` as the holder of `token`, starting a conversation; the
    /// `(conversation_id, message_id)` of the 202.
    pub async fn post_message(&self, token: &str, text: &str) -> anyhow::Result<(Uuid, Uuid)> {
        let response = client()
            .post(format!("{}/chat", self.url()))
            .bearer_auth(token)
            .json(&serde_json::json!({"text": text}))
            .send()
            .await?;
        anyhow::ensure!(response.status() == 202, "POST /chat answered {}", response.status());
        let body: serde_json::Value = response.json().await?;
        let id = |k: &str| body[k].as_str().and_then(|s| s.parse::<Uuid>().ok()).context("an id in the 202");
        Ok((id("conversation_id")?, id("message_id")?))
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        let response = client().get(url).send().await?;
        Ok(response.error_for_status()?.text().await?)
    }

    /// The sum of the samples of metric `name` (all label sets); an error when the
    /// process does not answer, so a dead process never reads as "0 open streams".
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        Ok(testkit::metric_total(&self.metrics().await?, name))
    }

    /// The samples of metric `name` whose labels include `label` (e.g. `part="similar"`).
    pub async fn metric_with(&self, name: &str, label: &str) -> anyhow::Result<f64> {
        Ok(testkit::metric_with(&self.metrics().await?, name, label))
    }
}

/// An HTTP client whose requests give up after 10 s.
fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default()
}

/// A broker with the stack's topics, a Qdrant engine server, and the processes added.
pub struct Stack {
    /// The Kafka-protocol broker (tansu).
    pub broker: Broker,
    /// The Qdrant engine server.
    pub qdrant: QdrantServer,
    /// The LLM's OpenAI-compatible base URL the responders use.
    pub llm_url: String,
    /// Gateways, in the order added.
    pub gateways: Vec<Service>,
    /// Responders, in the order added (killed ones included).
    pub responders: Vec<Service>,
    /// Memory workers, in the order added.
    pub memory: Vec<Service>,
    dir: TempDir,
    started: usize,
}

impl Stack {
    /// Starts the broker (topics made) and Qdrant; responders will ask `llm_url`.
    pub async fn start(llm_url: impl Into<String>) -> anyhow::Result<Self> {
        let broker = Broker::start()?;
        let qdrant = QdrantServer::start()?;
        let kafka = KafkaSettings::plaintext(broker.bootstrap_servers());
        bootstrap::run(&kafka, &Plan::stack(PARTITIONS, 1), Duration::from_secs(30))
            .await
            .context("making the topics")?;
        Ok(Self {
            broker,
            qdrant,
            llm_url: llm_url.into(),
            gateways: Vec::new(),
            responders: Vec::new(),
            memory: Vec::new(),
            dir: tempfile::tempdir()?,
            started: 0,
        })
    }

    /// Kafka settings for the drill's own clients.
    pub fn kafka(&self) -> KafkaSettings {
        KafkaSettings::plaintext(self.broker.bootstrap_servers())
    }

    /// The lag of `group` on `topics` as KEDA computes it (offsetResetPolicy earliest).
    /// Blocks its worker thread (`block_in_place`): call it on a multi-thread runtime.
    pub fn group_lag(&self, group: &str, topics: &[&str]) -> anyhow::Result<i64> {
        let client = self.kafka().base_consumer(group)?;
        let lags = tokio::task::block_in_place(|| {
            lag::group_lag(&client, topics, OffsetResetPolicy::Earliest, Duration::from_secs(5))
        })?;
        Ok(lag::total(&lags))
    }

    /// Records in `topic`: the lag of a group that never committed.
    pub fn records_in(&self, topic: &str) -> anyhow::Result<i64> {
        self.group_lag("drills-counter-never-commits", &[topic])
    }

    /// Starts a gateway (with `extra` settings) and waits until it is ready.
    pub fn add_gateway(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<&Service> {
        let env = [
            ("JWT_SECRET", JWT_SECRET),
            ("CONVERSATION_KEY", CONVERSATION_KEY),
            ("KAFKA_PRODUCE_TIMEOUT_MS", "2000"),
            ("SSE_HEARTBEAT_SECS", "1"),
            ("RATE_LIMIT_PER_MINUTE", "0"),
        ];
        let service = self.spawn("gateway", &["serve"], "LISTEN_ADDR", &env, extra)?;
        self.gateways.push(service);
        Ok(self.gateways.last().expect("just pushed"))
    }

    /// Starts a responder (with `extra` settings) and waits until it holds partitions.
    pub fn add_responder(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<&Service> {
        let llm_url = self.llm_url.clone();
        let env = [
            ("LLM_BASE_URL", llm_url.as_str()),
            ("LLM_MODEL", "smollm2"),
            ("LLM_TEMPERATURE", "0"),
            ("LLM_MAX_TOKENS", "24"),
            ("LLM_TIMEOUT_SECS", "10"),
            ("HANDLER_RETRY_BASE_MS", "50"),
            ("HANDLER_RETRY_MAX_MS", "500"),
        ];
        let service = self.spawn("responder", &["run"], "HANDLER_LISTEN_ADDR", &env, extra)?;
        self.responders.push(service);
        Ok(self.responders.last().expect("just pushed"))
    }

    /// Starts a memory worker (with `extra` settings) and waits until it holds partitions.
    pub fn add_memory(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<&Service> {
        let env = [("HANDLER_RETRY_BASE_MS", "50"), ("HANDLER_RETRY_MAX_MS", "1000")];
        let service = self.spawn("memory", &["run"], "HANDLER_LISTEN_ADDR", &env, extra)?;
        self.memory.push(service);
        Ok(self.memory.last().expect("just pushed"))
    }

    fn spawn(
        &mut self,
        binary: &str,
        args: &[&str],
        listen_var: &str,
        env: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Service> {
        self.started += 1;
        let name = format!("{binary}-{}", self.started);
        let (port, metrics_port) = (free_port()?, free_port()?);
        let mut settings: HashMap<String, String> = [
            ("KAFKA_BOOTSTRAP_SERVERS", self.broker.bootstrap_servers()),
            ("KAFKA_CLIENT_ID", name.clone()),
            ("QDRANT_URL", self.qdrant.url()),
            (listen_var, format!("127.0.0.1:{port}")),
            ("METRICS_LISTEN_ADDR", format!("127.0.0.1:{metrics_port}")),
            ("LOG_FORMAT", "text".into()),
            // As in ci/stack.sh: tansu 0.6.0 breaks for good when an idempotent producer
            // outlives a broker outage (docs/DEPENDENCIES.md). Real Kafka keeps the default.
            ("KAFKA_IDEMPOTENCE", "false".into()),
        ]
        .into_iter()
        .chain(env.iter().chain(extra).map(|(k, v)| (*k, v.to_string())))
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Ok(dir) = std::env::var("EMBED_MODEL_DIR") {
            settings.insert("EMBED_MODEL_DIR".into(), dir);
        }
        let mut command = Command::new(workspace_binary(binary)?);
        command.args(args).env_clear().envs(&settings);
        let log = self.dir.path().join(format!("{name}.log"));
        let mut process = Process::spawn(&name, command, log, Signal::SIGTERM)?;
        process.wait_until(Duration::from_secs(60), || http_status(port, "/ready") == Some(200))?;
        Ok(Service { process, port, metrics_port })
    }
}

/// A load-test run against `gateway`: `conversations` users, `rate` messages/s for
/// `secs`, then up to `drain_secs` for the last replies.
pub async fn load(
    gateway: &str,
    conversations: usize,
    rate: f64,
    secs: f64,
    drain_secs: f64,
) -> anyhow::Result<Report> {
    let config = loadtest::cli::config_from_args([
        "--url",
        gateway,
        "--conversations",
        &conversations.to_string(),
        "--rate",
        &rate.to_string(),
        "--duration",
        &secs.to_string(),
        "--drain-secs",
        &drain_secs.to_string(),
        "--jwt-secret",
        JWT_SECRET,
        "--request-timeout",
        "10",
        "--stream-idle-timeout",
        "10",
        "--quiet",
    ])?;
    loadtest::run(config).await
}

/// Waits until `check` holds, polling every 100 ms; how long it took, or an error
/// naming `what` after `timeout`.
pub async fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while !check().await {
        if started.elapsed() > timeout {
            anyhow::bail!("{what}: not within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(started.elapsed())
}
