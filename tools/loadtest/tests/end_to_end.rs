//! The load test against a real broker (tansu) and a real `gateway serve` process.
//! The test plays the responder (it consumes `user_messages` in the `responder` group,
//! writes token/done replies — some in two attempts, some as errors — and commits), and
//! a stand-in of the local autoscaler's `GET /status`.

use std::{
    path::PathBuf,
    process::Command,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{routing::get, Json, Router};
use platform::{
    bootstrap::{self, Plan},
    events::{decode, ModelResponse, ReplyBody, UserMessage},
    kafka::{publish, KafkaSettings},
    topics,
    trace_context::TraceParent,
};
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    producer::FutureProducer,
    Message,
};
use serde_json::{json, Value};
use testkit::{free_port, http_status, Broker, Process, Signal};
use tokio::sync::watch;
use uuid::Uuid;

const JWT_SECRET: &str = "loadtest-secret-loadtest-secret-0123456789";
const CONVERSATION_KEY: &str = "conversation-key-conversation-key-0123456789";

struct Gateway {
    _process: Process,
    base: String,
    _dir: tempfile::TempDir,
}

fn start_gateway(broker: &Broker) -> Gateway {
    let (port, metrics_port) = (free_port().expect("port"), free_port().expect("port"));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(testkit::workspace_binary("gateway").expect("gateway binary"));
    command
        .arg("serve")
        .env_clear()
        .env("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers())
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("METRICS_LISTEN_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("JWT_SECRET", JWT_SECRET)
        .env("CONVERSATION_KEY", CONVERSATION_KEY)
        .env("KAFKA_PRODUCE_TIMEOUT_MS", "5000")
        .env("SSE_HEARTBEAT_SECS", "1");
    let mut process = Process::spawn("gateway", command, dir.path().join("gateway.log"), Signal::SIGTERM)
        .expect("spawn gateway");
    process
        .wait_until(Duration::from_secs(30), || http_status(port, "/ready") == Some(200))
        .expect("gateway ready");
    Gateway { _process: process, base: format!("http://127.0.0.1:{port}"), _dir: dir }
}

/// What the fake responder did.
#[derive(Default)]
struct Played {
    messages: AtomicU64,
    retried: AtomicU64,
    errors: AtomicU64,
}

async fn send(producer: &FutureProducer, message: &UserMessage, attempt: Uuid, body: ReplyBody) {
    let event = ModelResponse::for_message(message, attempt, body);
    publish(producer, &event, &TraceParent::new_root(), Duration::from_secs(10))
        .await
        .expect("reply acknowledged");
}

fn token(seq: u32, delta: &str) -> ReplyBody {
    ReplyBody::Token { seq, delta: delta.into() }
}

fn done(text: &str, token_events: u32) -> ReplyBody {
    ReplyBody::Done { text: text.into(), usage: None, finish_reason: "stop".into(), token_events }
}

/// Plays the responder: message 2, 6, 10… is answered in two attempts (the gateway
/// sends `reset` between them), message 4, 11, 18… gets an `error`, the others three
/// tokens and `done`. Commits each message once its reply is acknowledged.
async fn play_responder(settings: KafkaSettings, played: Arc<Played>, mut stop: watch::Receiver<bool>) {
    let consumer: StreamConsumer = settings.stream_consumer(topics::RESPONDER_GROUP).expect("consumer");
    consumer.subscribe(&[topics::USER_MESSAGES]).expect("subscribe");
    let producer = settings.producer().expect("producer");
    loop {
        let record = tokio::select! {
            r = consumer.recv() => r.expect("a record"),
            _ = stop.wait_for(|s| *s) => return,
        };
        let message: UserMessage = decode(record.payload().expect("payload")).expect("a user message");
        let n = played.messages.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(40)).await; // "thinking"
        let attempt = Uuid::new_v4();
        if n % 7 == 3 {
            send(
                &producer,
                &message,
                attempt,
                ReplyBody::Error { code: "llm_unavailable".into(), message: "down".into() },
            )
            .await;
            played.errors.fetch_add(1, Ordering::SeqCst);
        } else {
            let attempt = if n % 4 == 1 {
                // A first attempt that dies after one token; the redelivery answers again.
                send(&producer, &message, attempt, token(0, "abandoned ")).await;
                played.retried.fetch_add(1, Ordering::SeqCst);
                Uuid::new_v4()
            } else {
                attempt
            };
            for (seq, word) in ["Hello", " from", " the fake"].iter().enumerate() {
                send(&producer, &message, attempt, token(seq as u32, word)).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            send(&producer, &message, attempt, done("Hello from the fake", 3)).await;
        }
        consumer.commit_message(&record, CommitMode::Async).expect("commit");
    }
}

/// A stand-in of the local autoscaler's `GET /status`: the responder goes 0 → 1 → 2 → 1
/// → 0 replicas over its first 8 s, memory stays at 1 until then.
async fn fake_autoscaler() -> String {
    let started = Instant::now();
    let app = Router::new().route(
        "/status",
        get(move || async move {
            let s = started.elapsed().as_secs();
            let responder = match s {
                0..2 => 0,
                2..4 => 1,
                4..6 => 2,
                6..8 => 1,
                _ => 0,
            };
            let memory = u32::from(s < 8);
            Json(json!({"scaled_objects": [
                {"name": "responder", "replicas": responder, "desired": responder, "lag": 0, "active": responder > 0},
                {"name": "memory", "replicas": memory, "desired": memory, "lag": 0, "active": memory > 0},
            ]}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_message_is_answered_and_reported() {
    let broker = Broker::start().expect("start tansu (TANSU_BIN: eval \"$(ci/deps/tansu.sh ensure)\")");
    let settings = KafkaSettings::plaintext(broker.bootstrap_servers());
    bootstrap::run(&settings, &Plan::stack(2, 1), Duration::from_secs(30)).await.expect("bootstrap");
    let gateway = start_gateway(&broker);
    let played = Arc::new(Played::default());
    let (stop_tx, stop) = watch::channel(false);
    let responder = tokio::spawn(play_responder(settings.clone(), played.clone(), stop));
    let autoscaler = fake_autoscaler().await;
    let out = tempfile::tempdir().expect("output dir");

    let config = config([
        "--url",
        &gateway.base,
        "--conversations",
        "4",
        "--rate",
        "4",
        "--duration",
        "5",
        "--jwt-secret",
        JWT_SECRET,
        "--kafka",
        &broker.bootstrap_servers(),
        "--autoscaler-url",
        &autoscaler,
        "--drain-secs",
        "30",
        "--tail-secs",
        "20",
        "--out",
        out.path().to_str().expect("utf-8 path"),
    ]);
    let started = Instant::now();
    let report = loadtest::run(config).await.expect("the load test runs");
    let took = started.elapsed();
    println!("{}", report.table());
    stop_tx.send(true).ok();
    responder.await.expect("fake responder");

    let c = &report.counts;
    assert_eq!((c.planned, c.sent, c.accepted), (20, 20, 20), "{c:?}");
    assert_eq!((c.rejected, c.failed, c.not_sent), (0, 0, 0), "{c:?}");
    assert_eq!(c.unanswered, 0, "every accepted message was answered: {:?}", report.unanswered);
    assert!(report.drained);
    assert_eq!(c.errored, played.errors.load(Ordering::SeqCst), "error events counted");
    assert!(c.errored > 0);
    assert_eq!(c.answered + c.errored, c.accepted);
    assert_eq!(c.retried, played.retried.load(Ordering::SeqCst), "reset seen once per retried reply");
    assert!(c.retried > 0);
    assert_eq!((c.text_mismatches, c.unmatched_events), (0, 0), "no mixed attempts, nothing unmatched");

    let l = &report.latency;
    assert_eq!(l.ttft.count, c.answered, "a first token for every answered message");
    assert_eq!(l.reply.count, c.answered);
    let (p50, p99) = (l.ttft.p50_ms.expect("ttft p50"), l.ttft.p99_ms.expect("ttft p99"));
    assert!(p50 > 0.0 && p99 >= p50 && l.ttft.max_ms.expect("max") >= p99, "{:?}", l.ttft);
    assert!(l.reply.p50_ms.expect("reply p50") >= p50);
    let rate = report.achieved_rate.expect("a send rate");
    assert!((rate - 4.0).abs() < 1.0, "open-loop schedule kept: {rate}");

    // Sampled: KEDA's lag (memory has no consumer here, so its lag holds every event)
    // and the autoscaler's replicas, including the way back to 0 that ended the tail.
    assert!(report.peak_lag.get("memory").copied().unwrap_or(0) >= 20, "{:?}", report.peak_lag);
    assert!(report.peak_lag.contains_key("responder"));
    assert_eq!(report.peak_replicas.get("responder"), Some(&2), "{:?}", report.peak_replicas);
    assert_eq!(report.final_replicas.get("responder"), Some(&0));
    assert!(took < Duration::from_secs(5 + 30 + 20), "the tail ended once every handler was at 0: {took:?}");
    assert!(report.timeline.len() >= 6, "a row per second");
    assert!(report.sampling_errors.is_empty(), "{:?}", report.sampling_errors);

    for name in ["report.json", "timeline.csv", "scaling.svg", "latency.svg"] {
        let len = std::fs::metadata(out.path().join(name)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 100, "{name} written ({len} bytes)");
        // LOADTEST_TEST_OUT=dir keeps the files of this run for a look.
        if let Some(keep) = std::env::var_os("LOADTEST_TEST_OUT") {
            std::fs::create_dir_all(&keep).expect("LOADTEST_TEST_OUT directory");
            std::fs::copy(out.path().join(name), PathBuf::from(&keep).join(name)).expect("copy");
        }
    }
    let json: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("report.json")).expect("read report.json"))
            .expect("json");
    assert_eq!(json["counts"]["accepted"], 20);
    let csv = std::fs::read_to_string(out.path().join("timeline.csv")).expect("read timeline.csv");
    assert!(
        csv.starts_with("t_secs,") && csv.contains("lag_responder") && csv.contains("replicas_responder")
    );
    let scaling = std::fs::read_to_string(out.path().join("scaling.svg")).expect("read scaling.svg");
    assert!(
        scaling.contains("<svg") && scaling.contains("lag memory") && scaling.contains("responder replicas")
    );
}

#[tokio::test]
async fn an_unreachable_gateway_is_named() {
    let port = free_port().expect("port");
    let config = config(["--url", &format!("http://127.0.0.1:{port}"), "--duration", "1"]);
    let err = loadtest::run(config).await.expect_err("no gateway");
    assert!(format!("{err:#}").contains("not reachable"), "{err:#}");
}

fn config<const N: usize>(args: [&str; N]) -> loadtest::Config {
    loadtest::cli::config_from_args(args).expect("arguments")
}
