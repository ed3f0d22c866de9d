//! The whole reply path, end to end: `POST /chat?stream=true` on a gateway →
//! `user_messages` → responder → LLM → `model_responses` → the gateway's relay → SSE.
//! Measured per message, one at a time (closed loop), from the request to the first
//! `token` event and to `done`:
//! 1. **pipeline overhead**, with an LLM that answers instantly (a minimal
//!    OpenAI-compatible endpoint in this process, used only for this measurement), so
//!    all that is measured is Kafka hops and our code: with the stack's consumer and
//!    producer settings, with librdkafka's defaults (to show what the tuning buys), and
//!    with full memory recall (in-process embedding + vector search);
//! 2. **time to first token with the real tiny model** (llama-server, SmolLM2-135M),
//!    through the stack and by calling llama-server directly with the same prompt,
//!    alternately, so the difference is what the stack adds.
//!
//! 3. **responder throughput**: a backlog of messages answered by one responder (instant
//!    LLM) at several `HANDLER_CONCURRENCY` values;
//! 4. **one Kafka hop alone**: a record produced (`acks=all`) until a consumer with the
//!    stack's settings receives it, the floor under each of the reply path's two hops;
//! 5. **footprint**: binary sizes and the idle RSS of each binary once ready.
//!
//! Real processes throughout: tansu, the Qdrant engine server, the release `gateway`
//! and `responder` binaries. Run: `ci/bench.sh pipeline` (it builds the gateway next to
//! the responder, and runs the latency part again on tansu's memory engine). Knobs:
//! BENCH_MESSAGES (200), BENCH_LLM_MESSAGES (30), BENCH_BACKLOG (1000), BENCH_ONLY
//! (footprint, latency, throughput or llm: run just that part; tracing: the reply path
//! with trace export off, sampled at 0.1 and at 1.0, BENCH_ROUNDS rounds), TANSU_ENGINE
//! (sqlite or memory, see ci/deps/tansu.sh).

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    collections::HashMap,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{handler_env, llm_env, HandlerProcess};
use futures::StreamExt;
use handlers::responder::prompt::DEFAULT_SYSTEM_PROMPT;
use platform::{events::UserMessage, topics};
use serde_json::json;
use testkit::{
    free_port, http_status, kafka::Kafka, metric_total, rss_mb, LlamaServer, Process, QdrantServer, Signal,
};

const RESPONDER: &str = env!("CARGO_BIN_EXE_responder");
const MEMORY: &str = env!("CARGO_BIN_EXE_memory");

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// p50, p99 and mean of `samples`, in ms.
fn summary(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort();
    let at = |p: f64| ms(samples[((samples.len() as f64 - 1.0) * p).round() as usize]);
    let mean = ms(samples.iter().sum::<Duration>()) / samples.len() as f64;
    (at(0.5), at(0.99), mean)
}

/// A scripted OpenAI-compatible endpoint that streams a fixed two-token answer at once.
async fn instant_llm() -> String {
    use axum::{http::header, routing::post, Router};
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        json!({"id": "instant", "object": "chat.completion.chunk", "created": 0, "model": "instant",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut usage = chunk(json!({}), Some("stop"));
    usage["usage"] = json!({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3});
    let body: String = [
        chunk(json!({"role": "assistant", "content": "Hello"}), None),
        chunk(json!({"content": " there."}), None),
        usage,
    ]
    .iter()
    .map(|c| format!("data: {c}\n\n"))
    .chain(std::iter::once("data: [DONE]\n\n".to_string()))
    .collect();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "text/event-stream")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

/// A release `gateway serve` (built next to the responder by `ci/bench.sh pipeline`).
struct Gateway {
    process: Process,
    port: u16,
    metrics_port: u16,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn start(kafka: &Kafka, extra: &HashMap<String, String>) -> Self {
        let bin = Path::new(RESPONDER).with_file_name("gateway");
        assert!(bin.exists(), "{} is missing: run ci/bench.sh pipeline", bin.display());
        let (port, metrics_port) = (free_port().expect("port"), free_port().expect("port"));
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .env_clear()
            .env("KAFKA_BOOTSTRAP_SERVERS", kafka.broker.bootstrap_servers())
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("METRICS_LISTEN_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("AUTH", "disabled")
            .env("RATE_LIMIT_PER_MINUTE", "0")
            .env("CONVERSATION_KEY", "pipeline-benchmark-conversation-key-0123456789")
            .envs(extra);
        let mut process = Process::spawn("gateway", command, dir.path().join("gateway.log"), Signal::SIGTERM)
            .expect("spawn");
        process
            .wait_until(Duration::from_secs(30), || http_status(port, "/ready") == Some(200))
            .expect("gateway ready");
        Self { process, port, metrics_port, _dir: dir }
    }
}

/// When one `POST /chat?stream=true` saw its `accepted`, first `token` and `done` events.
struct Timing {
    accepted: Duration,
    first_token: Duration,
    done: Duration,
}

async fn chat(client: &reqwest::Client, port: u16, text: &str) -> Timing {
    let started = Instant::now();
    let response = client
        .post(format!("http://127.0.0.1:{port}/chat?stream=true"))
        .json(&json!({"text": text}))
        .send()
        .await
        .expect("POST /chat");
    assert_eq!(response.status(), 200);
    let (mut accepted, mut first_token) = (None, None);
    let mut seen = String::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), body.next()).await.expect("a reply")
    {
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("body")));
        let now = started.elapsed();
        if accepted.is_none() && seen.contains("event: accepted") {
            accepted = Some(now);
        }
        if first_token.is_none() && seen.contains("event: token") {
            first_token = Some(now);
        }
        if seen.contains("event: done") {
            return Timing {
                accepted: accepted.expect("accepted first"),
                first_token: first_token.expect("tokens before done"),
                done: now,
            };
        }
        assert!(!seen.contains("event: error"), "the reply failed: {seen}");
    }
    panic!("the stream ended without done: {seen}");
}

/// Time to the first content delta of a streamed chat completion sent straight to the LLM.
async fn direct_first_token(
    client: &reqwest::Client,
    base_url: &str,
    text: &str,
    max_tokens: u32,
) -> Duration {
    let started = Instant::now();
    let response = client
        .post(format!("{base_url}/chat/completions"))
        .json(&json!({
            "model": "smollm2", "stream": true, "temperature": 0, "max_completion_tokens": max_tokens,
            "messages": [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": text}],
        }))
        .send()
        .await
        .expect("llama-server");
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    while let Some(chunk) = body.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("body")));
        // Complete `data:` lines only; the first chunk carries the role and no text.
        let has_text = seen.split('\n').filter_map(|line| line.strip_prefix("data: ")).any(|data| {
            serde_json::from_str::<serde_json::Value>(data)
                .is_ok_and(|c| c["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty()))
        });
        if has_text {
            return started.elapsed();
        }
    }
    panic!("no content from llama-server: {seen}");
}

/// Runs `n` messages through a fresh gateway + responder with `env`; prints and returns
/// the first-token samples.
async fn run(
    label: &str,
    kafka: &Kafka,
    qdrant: &QdrantServer,
    llm: &str,
    env: &[(&str, &str)],
    n: usize,
) -> Vec<Duration> {
    let extra: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let gateway = Gateway::start(kafka, &extra);
    let mut responder_env = handler_env(kafka, &qdrant.url());
    responder_env.extend(llm_env(llm, 16));
    responder_env.extend(extra);
    responder_env.insert("RUST_LOG".into(), "warn".into());
    let responder = HandlerProcess::start("responder", RESPONDER, &responder_env);
    let client = reqwest::Client::new();
    for i in 0..10 {
        chat(&client, gateway.port, &format!("warm-up {i}")).await;
    }
    let (mut accepted, mut first, mut done) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let t = chat(&client, gateway.port, &format!("Message number {i}: how are you today?")).await;
        accepted.push(t.accepted);
        first.push(t.first_token);
        done.push(t.done);
    }
    let (a50, a99, _) = summary(&mut accepted);
    let (f50, f99, fmean) = summary(&mut first);
    let (d50, d99, _) = summary(&mut done);
    println!(
        "{label:<44} n {n:>4}  accepted p50 {a50:>6.1} p99 {a99:>6.1}  first token p50 {f50:>6.1} p99 {f99:>6.1} mean {fmean:>6.1}  done p50 {d50:>6.1} p99 {d99:>6.1} ms"
    );
    print_breakdown(responder.metrics_port, gateway.metrics_port).await;
    drop(gateway.process);
    first
}

/// `BENCH_ONLY=tracing`: the reply path (instant LLM, recent turns) with trace export
/// off, on with sampling 0.1 and on with 1.0 in the gateway and the responder, in turn
/// for `BENCH_ROUNDS` rounds (3); the spans go to an OTLP collector in this process.
/// Prints each run, then each setting's percentiles over all its rounds.
async fn tracing_cost(kafka: &Kafka, qdrant: &QdrantServer, llm: &str, n: usize) {
    let collector = testkit::otlp::Collector::start().expect("collector");
    let endpoint = collector.endpoint();
    let on = |ratio: &'static str| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", ratio),
            ("MEMORY_TOP_K", "0"),
        ]
    };
    let settings = [
        ("tracing off", vec![("MEMORY_TOP_K", "0")]),
        ("tracing on, sampling 0.1", on("0.1")),
        ("tracing on, sampling 1.0", on("1.0")),
    ];
    let mut first: Vec<Vec<Duration>> = vec![Vec::new(); settings.len()];
    for round in 1..=env_or("BENCH_ROUNDS", 3) {
        for (i, (label, env)) in settings.iter().enumerate() {
            let spans_before = collector.spans().len();
            first[i].extend(run(&format!("round {round}, {label}"), kafka, qdrant, llm, env, n).await);
            println!("    spans received by the collector: {}", collector.spans().len() - spans_before);
        }
    }
    println!("tracing cost on the reply path, all rounds:");
    for ((label, _), mut samples) in settings.iter().zip(first) {
        let (p50, p99, mean) = summary(&mut samples);
        println!("  {label:<26} first token p50 {p50:>6.1} p99 {p99:>6.1} mean {mean:>6.1} ms");
    }
}

/// Produce (`acks=all`) → received by a subscribed consumer, `n` times, one at a time,
/// on `memory_events` (which nothing else writes in this benchmark).
async fn kafka_hop(kafka: &Kafka, n: usize) {
    use rdkafka::{consumer::Consumer, producer::FutureRecord};
    let consumer =
        kafka.settings.stream_consumer(&format!("hop-{}", uuid::Uuid::new_v4())).expect("consumer");
    consumer.subscribe(&[topics::MEMORY_EVENTS]).expect("subscribe");
    let producer = kafka.settings.producer().expect("producer");
    let send = |key: String| {
        let producer = producer.clone();
        async move {
            let record = FutureRecord::to(topics::MEMORY_EVENTS).key(&key).payload("hop");
            producer.send(record, Duration::from_secs(5)).await.map_err(|(e, _)| e).expect("acknowledged");
        }
    };
    // Until the group is joined and the first record comes through; then drain.
    loop {
        send("warm-up".into()).await;
        if tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await.is_ok() {
            break;
        }
    }
    while tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await.is_ok() {}
    let (mut acked, mut received) = (Vec::new(), Vec::new());
    for i in 0..n {
        let started = Instant::now();
        send(format!("key-{i}")).await;
        acked.push(started.elapsed());
        tokio::time::timeout(Duration::from_secs(10), consumer.recv())
            .await
            .expect("received")
            .expect("record");
        received.push(started.elapsed());
    }
    let (a50, a99, _) = summary(&mut acked);
    let (r50, r99, _) = summary(&mut received);
    println!(
        "{:<44} n {n:>4}  acknowledged p50 {a50:>6.1} p99 {a99:>6.1}  received p50 {r50:>6.1} p99 {r99:>6.1} ms",
        "one Kafka hop (produce -> consume)"
    );
}

/// `backlog` messages (50 users, a conversation each) wait on `user_messages`; one
/// responder starts; the clock runs from its `/ready` until the group's lag is 0.
async fn responder_throughput(
    kafka: &Kafka,
    qdrant: &QdrantServer,
    llm: &str,
    concurrency: usize,
    backlog: usize,
) {
    let messages: Vec<UserMessage> = (0..backlog)
        .map(|i| {
            UserMessage::new(uuid::Uuid::new_v4(), format!("user-{}", i % 50), format!("Backlog message {i}"))
        })
        .collect();
    kafka.send_all(&messages).await;
    let mut env = handler_env(kafka, &qdrant.url());
    env.extend(llm_env(llm, 16));
    env.insert("HANDLER_CONCURRENCY".into(), concurrency.to_string());
    env.insert("RUST_LOG".into(), "warn".into());
    let responder = HandlerProcess::start("responder", RESPONDER, &env);
    let started = Instant::now();
    kafka.wait_lag_zero(topics::RESPONDER_GROUP, &[topics::USER_MESSAGES], Duration::from_secs(600)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let metrics = client_text(&format!("http://127.0.0.1:{}/metrics", responder.metrics_port)).await;
    println!(
        "{:<44} n {backlog:>4}  {:>6.1} s  {:>6.0} messages/s  (per message: recall {:.1}, fetched to handled {:.1} ms)",
        format!("responder throughput, concurrency {concurrency}"),
        elapsed,
        backlog as f64 / elapsed,
        mean_ms(&metrics, "responder_recall_seconds"),
        mean_ms(&metrics, "handler_latency_seconds"),
    );
}

/// Binary sizes, and each binary's RSS 2 s after it is ready with nothing to do.
async fn footprint(kafka: &Kafka, qdrant: &QdrantServer, llm: &str) {
    let gateway_bin = Path::new(RESPONDER).with_file_name("gateway");
    for bin in [gateway_bin.as_path(), Path::new(RESPONDER), Path::new(MEMORY)] {
        let size = std::fs::metadata(bin).expect("binary").len() as f64 / 1e6;
        println!("binary {:<10} {size:>6.1} MB", bin.file_name().and_then(|n| n.to_str()).unwrap_or("?"));
    }
    let gateway = Gateway::start(kafka, &HashMap::new());
    let mut env = handler_env(kafka, &qdrant.url());
    env.extend(llm_env(llm, 16));
    let responder = HandlerProcess::start("responder", RESPONDER, &env);
    let memory = HandlerProcess::start("memory", MEMORY, &env);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, pid) in [
        ("gateway", gateway.process.pid()),
        ("responder", responder.process.pid()),
        ("memory", memory.process.pid()),
    ] {
        println!("idle RSS {name:<10} {:>6.1} MB", rss_mb(pid));
    }
}

async fn client_text(url: &str) -> String {
    reqwest::get(url).await.expect("metrics").text().await.expect("metrics body")
}

/// Where the time went, from the processes' own histograms (means over the run, warm-up
/// included): the rest of "first token" is Kafka hops and HTTP.
async fn print_breakdown(responder_port: u16, gateway_port: u16) {
    let metrics = |port: u16| async move {
        let url = format!("http://127.0.0.1:{port}/metrics");
        client_text(&url).await
    };
    let (r, g) = (metrics(responder_port).await, metrics(gateway_port).await);
    println!(
        "{:<44} responder: recall {:.1}, LLM to first token {:.1}, whole record {:.1}; gateway: produce {:.1}, accepted to first token relayed {:.1} ms",
        "",
        mean_ms(&r, "responder_recall_seconds"),
        mean_ms(&r, "responder_llm_first_token_seconds"),
        mean_ms(&r, "handler_latency_seconds"),
        mean_ms(&g, "gateway_produce_seconds"),
        mean_ms(&g, "gateway_time_to_first_token_seconds"),
    );
}

/// Mean of a Prometheus histogram (`_sum` / `_count` over all its series), in ms.
fn mean_ms(metrics: &str, name: &str) -> f64 {
    1e3 * metric_total(metrics, &format!("{name}_sum"))
        / metric_total(metrics, &format!("{name}_count")).max(1.0)
}

#[tokio::main]
async fn main() {
    let n = env_or("BENCH_MESSAGES", 200);
    // BENCH_ONLY=throughput (or latency, llm) runs one part.
    let only = std::env::var("BENCH_ONLY").ok();
    let wants = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let llm_n = env_or("BENCH_LLM_MESSAGES", 30);
    let kafka = Kafka::start(6).await;
    let qdrant = QdrantServer::start().expect("qdrant");
    println!(
        "pipeline benchmark: tansu {} engine, {n} messages per instant-LLM run, {llm_n} with llama-server; one at a time",
        testkit::Broker::engine()
    );

    let instant = instant_llm().await;
    if wants("footprint") {
        // First, on a quiet machine.
        footprint(&kafka, &qdrant, &instant).await;
    }
    if wants("latency") {
        kafka_hop(&kafka, n).await;
        let recent_only = [("MEMORY_TOP_K", "0")];
        run("instant LLM, stack settings (recent turns)", &kafka, &qdrant, &instant, &recent_only, n).await;
        run(
            "instant LLM, librdkafka defaults (fetch 500, linger 5)",
            &kafka,
            &qdrant,
            &instant,
            &[("MEMORY_TOP_K", "0"), ("KAFKA_FETCH_WAIT_MAX_MS", "500"), ("KAFKA_LINGER_MS", "5")],
            n,
        )
        .await;
        run(
            "instant LLM, fetch 1 ms, linger 2 ms",
            &kafka,
            &qdrant,
            &instant,
            &[("MEMORY_TOP_K", "0"), ("KAFKA_FETCH_WAIT_MAX_MS", "1")],
            n,
        )
        .await;
        run(
            "instant LLM, fetch 1 ms, linger 0",
            &kafka,
            &qdrant,
            &instant,
            &[("MEMORY_TOP_K", "0"), ("KAFKA_FETCH_WAIT_MAX_MS", "1"), ("KAFKA_LINGER_MS", "0")],
            n,
        )
        .await;
        run("instant LLM, full recall (embed + search)", &kafka, &qdrant, &instant, &[], n).await;
    }
    if only.as_deref() == Some("tracing") {
        tracing_cost(&kafka, &qdrant, &instant, n).await;
        return;
    }
    if wants("throughput") {
        for concurrency in [1, 8, 32] {
            responder_throughput(&kafka, &qdrant, &instant, concurrency, env_or("BENCH_BACKLOG", 1000)).await;
        }
    }
    if !wants("llm") {
        return;
    }
    // 2. The real tiny model, through the stack and directly, alternately.
    let llama = LlamaServer::chat().expect("llama-server");
    let through_stack = {
        let extra: HashMap<String, String> = HashMap::new();
        let gateway = Gateway::start(&kafka, &extra);
        let mut responder_env = handler_env(&kafka, &qdrant.url());
        responder_env.extend(llm_env(&llama.base_url(), 16));
        responder_env.insert("RUST_LOG".into(), "warn".into());
        let responder = HandlerProcess::start("responder", RESPONDER, &responder_env);
        let client = reqwest::Client::new();
        for i in 0..3 {
            chat(&client, gateway.port, &format!("warm-up {i}")).await;
            direct_first_token(&client, &llama.base_url(), &format!("warm-up {i}"), 16).await;
        }
        let (mut stack, mut direct) = (Vec::new(), Vec::new());
        // Different questions of the same length, and alternating order, so neither path
        // finds the other's whole prompt in llama-server's prompt cache (the system
        // prompt is cached for both).
        for i in 0..llm_n {
            let (a, b) = (
                format!("Question {i}: a good name for a cat?"),
                format!("Question {i}: a good name for a dog?"),
            );
            if i % 2 == 0 {
                stack.push(chat(&client, gateway.port, &a).await.first_token);
                direct.push(direct_first_token(&client, &llama.base_url(), &b, 16).await);
            } else {
                direct.push(direct_first_token(&client, &llama.base_url(), &a, 16).await);
                stack.push(chat(&client, gateway.port, &b).await.first_token);
            }
        }
        let (s50, s99, smean) = summary(&mut stack);
        let (d50, d99, dmean) = summary(&mut direct);
        println!(
            "{:<44} n {llm_n:>4}  first token p50 {s50:>6.1} p99 {s99:>6.1} mean {smean:>6.1} ms",
            "SmolLM2 through the stack (full recall)"
        );
        print_breakdown(responder.metrics_port, gateway.metrics_port).await;
        println!(
            "{:<44} n {llm_n:>4}  first token p50 {d50:>6.1} p99 {d99:>6.1} mean {dmean:>6.1} ms",
            "SmolLM2 called directly, same prompt"
        );
        println!(
            "stack overhead on time to first token: p50 {:+.1} ms, mean {:+.1} ms",
            s50 - d50,
            smean - dmean
        );
        stack
    };
    assert_eq!(through_stack.len(), llm_n);
}
