//! The autoscaler against a real broker, scaling real `memory` processes from the
//! ScaledObject format of keda/ (with short timings): from zero to several replicas on
//! a backlog, every record handled, back to zero after the cooldown, and nothing left
//! running after SIGTERM.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use platform::{
    bootstrap::{self, Plan},
    events::UserMessage,
    kafka::{publish, KafkaSettings},
    lag::{self, OffsetResetPolicy},
    topics,
    trace_context::TraceParent,
};
use testkit::{free_port, Broker, Process, QdrantServer, Signal};
use uuid::Uuid;

const BACKLOG: usize = 30;

const SCALED_OBJECT: &str = r#"
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: memory
spec:
  scaleTargetRef:
    name: memory
  pollingInterval: 1
  cooldownPeriod: 4
  minReplicaCount: 0
  maxReplicaCount: 3
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleDown:
          stabilizationWindowSeconds: 2
  triggers:
    - type: kafka
      metadata:
        bootstrapServers: unused-here
        consumerGroup: memory
        topic: user_messages
        lagThreshold: "5"
        activationLagThreshold: "0"
        offsetResetPolicy: earliest
"#;

fn status(port: u16) -> Option<serde_json::Value> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    use std::io::{Read, Write};
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.split("\r\n\r\n").nth(1)?).ok()
}

fn replicas(port: u16) -> Option<u64> {
    status(port)?["scaled_objects"][0]["replicas"].as_u64()
}

/// Every replica's log (replicas are numbered from 1) without the per-record lines, so
/// rebalances, retries and warnings are what a failure shows.
fn replica_logs(dir: &std::path::Path) -> String {
    (1..)
        .map(|n| dir.join(format!("memory-{n}.log")))
        .take_while(|path| path.is_file())
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let handled = text.lines().filter(|l| l.contains(" handled ")).count();
            let lines: Vec<&str> = text.lines().filter(|l| !l.contains(" handled ")).collect();
            let shown = lines[lines.len().saturating_sub(40)..].join("\n");
            format!("{} ({handled} records handled):\n{shown}", path.display())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Processes of `binary` whose environment names this test's broker.
fn leftover(binary: &PathBuf, bootstrap: &str) -> usize {
    let needle = format!("KAFKA_BOOTSTRAP_SERVERS={bootstrap}");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let dir = e.path();
            let exe = std::fs::read_link(dir.join("exe")).ok();
            let environ = std::fs::read(dir.join("environ")).unwrap_or_default();
            exe.as_ref() == Some(binary) && environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn scales_memory_workers_from_zero_on_a_backlog_and_back_to_zero() {
    testkit::require_env(&["EMBED_MODEL_DIR"]).expect("EMBED_MODEL_DIR");
    let memory = testkit::workspace_binary("memory").expect("memory binary");
    let broker = Broker::start().expect("tansu");
    let qdrant = QdrantServer::start().expect("qdrant");
    let kafka = KafkaSettings::plaintext(broker.bootstrap_servers());
    bootstrap::run(&kafka, &Plan::stack(4, 1), Duration::from_secs(30)).await.expect("bootstrap");
    let producer = kafka.producer().expect("producer");
    // 30 records at lagThreshold 5 want all 3 replicas; more only slows a loaded CI.
    for i in 0..BACKLOG {
        let msg = UserMessage::new(Uuid::new_v4(), "alice", format!("Backlog item {i}."));
        publish(&producer, &msg, &TraceParent::new_root(), Duration::from_secs(10)).await.expect("ack");
    }

    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("keda")).expect("keda dir");
    std::fs::write(dir.path().join("keda/memory.yaml"), SCALED_OBJECT).expect("write");
    let port = free_port().expect("port");
    let mut command = Command::new(env!("CARGO_BIN_EXE_autoscaler"));
    command
        .arg("--keda-dir")
        .arg(dir.path().join("keda"))
        .arg("--handler")
        .arg(format!("memory={}", memory.display()))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--log-dir")
        .arg(dir.path())
        .env_clear()
        .env("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers())
        .env("QDRANT_URL", qdrant.url())
        .env("EMBED_MODEL_DIR", std::env::var("EMBED_MODEL_DIR").expect("EMBED_MODEL_DIR"))
        .env("HANDLER_CONCURRENCY", "1")
        .env("LOG_FORMAT", "text");
    let mut autoscaler =
        Process::spawn("autoscaler", command, dir.path().join("autoscaler.log"), Signal::SIGTERM)
            .expect("spawn");

    // Up from zero on the backlog, to more than one replica.
    let (mut peak, deadline) = (0, Instant::now() + Duration::from_secs(90));
    let client = kafka.base_consumer("memory").expect("client");
    loop {
        peak = peak.max(replicas(port).unwrap_or(0));
        let lags = lag::group_lag(
            &client,
            &[topics::USER_MESSAGES],
            OffsetResetPolicy::Earliest,
            Duration::from_secs(5),
        )
        .expect("lag");
        if lag::total(&lags) == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "backlog not handled; lag per partition {lags:?}\nautoscaler: {}\n{}",
            autoscaler.log_tail(),
            replica_logs(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(peak >= 2, "a backlog of {BACKLOG} at lagThreshold 5 wants more than one replica; saw {peak}");

    // Back to zero once the cooldown has passed without lag.
    let deadline = Instant::now() + Duration::from_secs(30);
    while replicas(port) != Some(0) {
        assert!(Instant::now() < deadline, "not back to zero: {}", autoscaler.log_tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while leftover(&memory, &broker.bootstrap_servers()) > 0 {
        assert!(Instant::now() < deadline, "replicas scaled away must exit: {}", autoscaler.log_tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A new message wakes it again; SIGTERM then stops the replica too.
    let msg = UserMessage::new(Uuid::new_v4(), "alice", "One more.");
    publish(&producer, &msg, &TraceParent::new_root(), Duration::from_secs(10)).await.expect("ack");
    let deadline = Instant::now() + Duration::from_secs(20);
    while replicas(port).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "not woken: {}", autoscaler.log_tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    autoscaler.stop_with(Signal::SIGTERM, Duration::from_secs(40)).expect("autoscaler stops on SIGTERM");
    assert_eq!(leftover(&memory, &broker.bootstrap_servers()), 0, "nothing left running after SIGTERM");
}
