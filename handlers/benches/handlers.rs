//! Handler benchmarks against real services (tansu, the Qdrant engine server,
//! llama-server), with the handler binaries built in release mode:
//! 1. memory-worker throughput: turns embedded (in-process all-MiniLM-L6-v2, the default
//!    engine) and stored per second, batched (MEMORY_BATCH_SIZE=32) against unbatched
//!    (1), with the time split between embedding and Qdrant upserts;
//! 2. cold start: process start → model loaded → partitions assigned → first record
//!    received → first record handled, for `memory` and `responder`.
//!
//! Run: `ci/bench.sh` (or, with the ci/deps env exported, `cargo bench -p handlers --bench handlers`).
//! Knobs: BENCH_TURNS (1000), BENCH_COLD_RUNS (3), BENCH_ONLY=memory-batched (only the
//! batched memory worker, by engine and records in flight: `ci/bench.sh embeddings`
//! runs it after comparing the engines alone).

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::{handler_env, llm_env, HandlerProcess};
use platform::{events::UserMessage, topics};
use testkit::{kafka::Kafka, metric_total, LlamaServer, QdrantServer};
use uuid::Uuid;

const MEMORY: &str = env!("CARGO_BIN_EXE_memory");
const RESPONDER: &str = env!("CARGO_BIN_EXE_responder");
const INPUTS: &[&str] = &[topics::USER_MESSAGES, topics::MODEL_RESPONSES];

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const SENTENCES: [&str; 8] = [
    "I keep bees on the roof of my flat in Lisbon.",
    "Can you remind me what time the dentist appointment is?",
    "My daughter starts school next week and she is nervous.",
    "What is a good recipe for a quick vegetarian dinner?",
    "I have been learning the cello for about three years now.",
    "Our team ships the new release on Thursday afternoon.",
    "The train to Porto was delayed again this morning.",
    "Please explain how photosynthesis works in simple terms.",
];

/// Runs one memory worker over `turns` waiting turns; `settings` are extra env vars
/// (the engine, the concurrency), also printed as the row's first column.
async fn memory_throughput(batch: usize, turns: usize, settings: &[(&str, &str)]) -> (f64, String) {
    let (kafka, qdrant) = (Kafka::start(6).await, QdrantServer::start().expect("qdrant"));
    let messages: Vec<UserMessage> = (0..turns)
        .map(|i| {
            let text = format!("{} (note {i})", SENTENCES[i % SENTENCES.len()]);
            UserMessage::new(Uuid::new_v4(), format!("user-{}", i % 50), text)
        })
        .collect();
    kafka.send_all(&messages).await;
    let mut env: HashMap<String, String> = handler_env(&kafka, &qdrant.url());
    env.insert("MEMORY_BATCH_SIZE".into(), batch.to_string());
    env.insert("RUST_LOG".into(), "warn".into());
    for (name, value) in settings {
        env.insert(name.to_string(), value.to_string());
    }
    let label: Vec<String> = settings.iter().map(|(name, value)| format!("{name}={value}")).collect();
    let memory = HandlerProcess::start("memory", MEMORY, &env);
    let started = Instant::now();
    kafka.wait_lag_zero(topics::MEMORY_GROUP, INPUTS, Duration::from_secs(900)).await;
    let elapsed = started.elapsed();
    let metrics = memory.metrics().await;
    let (embed, upsert) = (
        metric_total(&metrics, "memory_embed_seconds_sum"),
        metric_total(&metrics, "memory_upsert_seconds_sum"),
    );
    let batches = metric_total(&metrics, "memory_batch_size_count");
    let rate = turns as f64 / elapsed.as_secs_f64();
    let line = format!(
        "| {} | {batch} | {turns} | {:.1} s | **{rate:.0}/s** | {:.1} | {:.0}% | {:.0}% |",
        if label.is_empty() { "defaults".into() } else { label.join(" ") },
        elapsed.as_secs_f64(),
        turns as f64 / batches.max(1.0),
        100.0 * embed / elapsed.as_secs_f64(),
        100.0 * upsert / elapsed.as_secs_f64(),
    );
    (rate, line)
}

/// Milliseconds since process start that a JSON log line with `message` reports in `field`.
fn logged_ms(log: &str, message: &str, field: &str) -> Option<f64> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == message)
        .and_then(|v| v[field].as_f64())
}

async fn cold_start(name: &str, bin: &str, env: &HashMap<String, String>, kafka: &Kafka) -> String {
    // One record waits before the process starts, as when KEDA scales from zero.
    let msg = UserMessage::new(Uuid::new_v4(), "alice", "Say hello.");
    kafka.send(&msg).await;
    let group = if name == "memory" { topics::MEMORY_GROUP } else { topics::RESPONDER_GROUP };
    let inputs: &'static [&'static str] = if name == "memory" { INPUTS } else { &[topics::USER_MESSAGES] };
    let spawned = Instant::now();
    let mut handler = HandlerProcess::start_with(name, bin, &["run"], env, false);
    kafka.wait_lag_zero(group, inputs, Duration::from_secs(120)).await;
    let total = spawned.elapsed().as_secs_f64() * 1000.0;
    let log = handler.process.log_tail();
    handler.process.stop_with(testkit::Signal::SIGTERM, Duration::from_secs(30)).expect("stops");
    let built = logged_ms(&log, "handler built (models loaded)", "elapsed_ms").unwrap_or(f64::NAN);
    let assigned = logged_ms(&log, "partitions assigned", "elapsed_ms").unwrap_or(f64::NAN);
    let received = logged_ms(&log, "first record received", "cold_start_ms").unwrap_or(f64::NAN);
    let handled = logged_ms(&log, "handled", "latency_ms").unwrap_or(f64::NAN);
    format!(
        "| {name} | {built:.0} | {:.0} | {:.0} | {handled:.0} | {:.0} | {total:.0} |",
        assigned - built,
        received - assigned,
        total - received - handled,
    )
}

#[tokio::main]
async fn main() {
    testkit::require_env(&[
        "TANSU_BIN",
        "QDRANT_DEV_SERVER_BIN",
        "LLAMA_SERVER_BIN",
        "CHAT_MODEL_GGUF",
        "EMBED_MODEL_DIR",
    ])
    .expect("run through ci/bench.sh");
    let turns = env_or("BENCH_TURNS", 1000);
    println!("## memory worker: {turns} user messages waiting, in-process embeddings, 6 partitions\n");
    println!(
        "| settings | batch size | turns | time to lag 0 | turns/s | mean batch | embedding | upserts |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "memory-batched") {
        // The engines and the records in flight (which bound the batches) one at a
        // time, on the same broker build and machine; then the defaults.
        let rows: [(usize, &[(&str, &str)]); 5] = [
            (32, &[("EMBED_ENGINE", "candle"), ("HANDLER_CONCURRENCY", "32")]),
            (32, &[("EMBED_ENGINE", "candle"), ("HANDLER_CONCURRENCY", "64")]),
            (32, &[("EMBED_ENGINE", "rten"), ("HANDLER_CONCURRENCY", "32")]),
            (32, &[("EMBED_ENGINE", "rten"), ("HANDLER_CONCURRENCY", "64")]),
            (64, &[("EMBED_ENGINE", "rten"), ("HANDLER_CONCURRENCY", "128")]),
        ];
        for (batch, settings) in rows {
            println!("{}", memory_throughput(batch, turns, settings).await.1);
        }
        println!("{}", memory_throughput(32, turns, &[]).await.1);
        return;
    }
    let (batched, line) = memory_throughput(32, turns, &[]).await;
    println!("{line}");
    let (unbatched, line) = memory_throughput(1, turns, &[]).await;
    println!("{line}");
    println!("\nbatched / unbatched: {:.2}x\n", batched / unbatched);

    let runs = env_or("BENCH_COLD_RUNS", 3);
    println!("## cold start ({runs} runs each; ms since process start)\n");
    println!("| handler | start + load models | join group | first fetch | handle first record | commit, observed | total to lag 0 |");
    println!("|---|---|---|---|---|---|---|");
    // One broker per handler: each group then has exactly its own waiting record.
    let (memory_kafka, responder_kafka) = (Kafka::start(6).await, Kafka::start(6).await);
    let (qdrant, llm) = (QdrantServer::start().expect("qdrant"), LlamaServer::chat().expect("llm"));
    let memory_env = handler_env(&memory_kafka, &qdrant.url());
    let mut responder_env = handler_env(&responder_kafka, &qdrant.url());
    responder_env.extend(llm_env(&llm.base_url(), 16));
    for _ in 0..runs {
        println!("{}", cold_start("memory", MEMORY, &memory_env, &memory_kafka).await);
    }
    for _ in 0..runs {
        println!("{}", cold_start("responder", RESPONDER, &responder_env, &responder_kafka).await);
    }
}
