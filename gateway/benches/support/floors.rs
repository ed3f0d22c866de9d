//! The two floors under the gateway's cost per accepted message (issue 18): what the
//! same machine spends on (a) one HTTP request answered 202 by a trivial axum route in
//! the gateway's own serve loop, and (b) one record written by a bare rdkafka producer
//! with the gateway's settings (`acks=all`, idempotent, the same linger) at the same
//! number of writes in flight. The gateway's cost minus both is what it adds: the JWT,
//! the JSON, the conversation id's HMAC, the event, logs, metrics and its middleware.

use std::{net::SocketAddr, process::Command, sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    http::{header::CONTENT_TYPE, StatusCode},
    routing::{get, post},
    Router,
};
use platform::{
    events::{encode, UserMessage},
    topics,
    trace_context::TraceParent,
};
use rdkafka::{
    message::OwnedHeaders,
    producer::{FutureProducer, FutureRecord},
};
use testkit::{cpu_secs, free_port, http_status, kafka::Kafka, Process, Signal};
use uuid::Uuid;

#[path = "../../src/serve.rs"]
#[allow(dead_code)]
mod serve;

/// Set in the re-executed benchmark process that serves the HTTP floor: where to listen.
const HTTP_FLOOR_ENV: &str = "BENCH_HTTP_FLOOR_LISTEN";

/// A 202 body the size of the gateway's (ids and the stream URL).
const ACCEPTED_BODY: &str = r#"{"conversation_id":"00000000-0000-0000-0000-000000000000","message_id":"00000000-0000-0000-0000-000000000000","stream_url":"/stream?conversation_id=00000000-0000-0000-0000-000000000000"}"#;

/// When this process was started as the HTTP floor: serves it until killed and returns
/// true. The floor runs in a process of its own, like the gateway, so that its CPU is
/// read the same way, and on the same runtime (`#[tokio::main]`, a worker per core).
pub async fn serve_http_floor_if_asked() -> bool {
    let Ok(listen) = std::env::var(HTTP_FLOOR_ENV) else { return false };
    let listen: SocketAddr = listen.parse().expect("BENCH_HTTP_FLOOR_LISTEN: an address");
    let listener = tokio::net::TcpListener::bind(listen).await.expect("HTTP floor: bind");
    // The request body is read, as every real handler reads it.
    let app = Router::new()
        .route(
            "/chat",
            post(|_body: Bytes| async {
                (StatusCode::ACCEPTED, [(CONTENT_TYPE, "application/json")], ACCEPTED_BODY)
            }),
        )
        .route("/ready", get(|| async { "ok" }));
    serve::serve(listener, app, std::future::pending()).await;
    true
}

/// The HTTP floor's process: this benchmark binary again, serving only `POST /chat`.
pub struct HttpFloor {
    /// The running floor (killed on drop).
    pub process: Process,
    /// Its `POST /chat` URL.
    pub url: String,
}

impl HttpFloor {
    /// Starts the floor and waits until it answers.
    pub fn start() -> Self {
        let port = free_port().expect("port");
        let dir = std::env::temp_dir().join(format!("http-floor-{port}.log"));
        let mut command = Command::new(std::env::current_exe().expect("this benchmark's path"));
        command.env(HTTP_FLOOR_ENV, format!("127.0.0.1:{port}"));
        let mut process =
            Process::spawn("http-floor", command, dir, Signal::SIGKILL).expect("spawn the HTTP floor");
        process
            .wait_until(Duration::from_secs(10), || http_status(port, "/ready") == Some(200))
            .expect("HTTP floor ready");
        Self { process, url: format!("http://127.0.0.1:{port}/chat") }
    }
}

/// One run of the Kafka floor.
pub struct KafkaFloor {
    /// Records acknowledged per second.
    pub rate: f64,
    /// Acknowledgement latency, p50 and p99, in ms.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// This process's CPU per acknowledged record, µs (it does nothing else meanwhile).
    pub cpu_us: f64,
    /// The broker's CPU per record, µs.
    pub broker_us: f64,
}

/// `concurrency` writes in flight for `secs` through a bare producer: the same settings
/// as the gateway's, the same topic, key, payload and headers as one of its records,
/// encoded once up front, so what is measured is the producer alone.
pub async fn kafka_floor(kafka: &Kafka, concurrency: usize, secs: u64) -> KafkaFloor {
    let producer: FutureProducer = kafka.settings.producer().expect("producer");
    let message = UserMessage::new(Uuid::new_v4(), "bench", "How fast can you take this?");
    let payload: Arc<[u8]> = encode(&message).into();
    let key: Arc<str> = message.conversation_id.to_string().into();
    let headers = TraceParent::new_root().to_headers(OwnedHeaders::new());
    let (broker, this) = (kafka.broker.pid(), std::process::id());
    let (cpu, broker_cpu) = (cpu_secs(this), cpu_secs(broker));
    let (ok, failed, latencies) = crate::drive(concurrency, secs, move || {
        let (producer, payload, key, headers) =
            (producer.clone(), payload.clone(), key.clone(), headers.clone());
        async move {
            let record =
                FutureRecord::to(topics::USER_MESSAGES).key(&*key).payload(&*payload).headers(headers);
            producer.send(record, Duration::from_secs(5)).await.is_ok()
        }
    })
    .await;
    assert_eq!(failed, 0, "the Kafka floor's writes failed");
    let per_record = |now: f64, then: f64| 1e6 * (now - then) / ok.max(1) as f64;
    KafkaFloor {
        rate: ok as f64 / secs as f64,
        p50_ms: crate::percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        p99_ms: crate::percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        cpu_us: per_record(cpu_secs(this), cpu),
        broker_us: per_record(cpu_secs(broker), broker_cpu),
    }
}
