//! Gateway benchmark against a real broker (tansu, SQLite storage):
//! 1. ingest: `POST /chat` accepted per second and latency percentiles at fixed
//!    concurrency, next to a raw rdkafka producer (same acks, same concurrency);
//! 2. fan-out: the gateway's RSS holding N idle SSE streams, one HTTP/1.1 connection
//!    each and multiplexed over HTTP/2, next to N idle plain keep-alive connections
//!    (the per-connection cost that is not SSE's).
//!
//! Run: `ci/bench.sh` (or, with TANSU_BIN set, `cargo bench -p gateway --bench gateway`).
//! Knobs: BENCH_CONCURRENCY (64), BENCH_SECS (10), BENCH_STREAMS (10000).

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::*;
use platform::{events::UserMessage, kafka::publish, trace_context::TraceParent};
use serde_json::json;
use testkit::rss_mb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs `worker` on `concurrency` tasks for `secs`; returns (successes, failures, latencies).
async fn drive<F, Fut>(concurrency: usize, secs: u64, worker: F) -> (usize, usize, Vec<Duration>)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let worker = Arc::new(worker);
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (worker, stop) = (worker.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed, mut latencies) = (0, 0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    if worker().await {
                        ok += 1;
                        latencies.push(started.elapsed());
                    } else {
                        failed += 1;
                    }
                }
                (ok, failed, latencies)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed, mut latencies) = (0, 0, Vec::new());
    for task in tasks {
        let (o, f, l) = task.await.expect("worker");
        ok += o;
        failed += f;
        latencies.extend(l);
    }
    latencies.sort();
    (ok, failed, latencies)
}

fn report(name: &str, secs: u64, (ok, failed, latencies): &(usize, usize, Vec<Duration>)) -> f64 {
    let rate = *ok as f64 / secs as f64;
    println!(
        "{name:<28} {rate:>9.0}/s  ok {ok:>7}  failed {failed:>5}  p50 {:>7.2} ms  p99 {:>7.2} ms",
        percentile(latencies, 0.50).as_secs_f64() * 1e3,
        percentile(latencies, 0.99).as_secs_f64() * 1e3,
    );
    rate
}

/// Opens `/stream` of `conversation` and returns the (unread) response.
async fn open_stream(
    client: &reqwest::Client,
    gateway: &Gateway,
    token: &str,
    conversation: &str,
) -> reqwest::Response {
    let response = client
        .get(gateway.url(&format!("/stream?conversation_id={conversation}")))
        .bearer_auth(token)
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), 200);
    response
}

#[tokio::main]
async fn main() {
    let concurrency = env_or("BENCH_CONCURRENCY", 64);
    let secs = env_or("BENCH_SECS", 10) as u64;
    let streams = env_or("BENCH_STREAMS", 10_000);
    let kafka = Kafka::start().await;
    let gateway = Gateway::start(&kafka, &[("RATE_LIMIT_PER_MINUTE", "0"), ("SSE_HEARTBEAT_SECS", "15")]);
    let pid = gateway.process.pid();
    println!("gateway benchmark: concurrency {concurrency}, {secs} s per run, {streams} streams");
    println!("gateway idle RSS: {:.1} MB", rss_mb(pid));

    // 1. Ingest through the gateway.
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().expect("client");
    let token = token("bench");
    let url = gateway.url("/chat");
    let conversation = {
        let (_, body) = post_chat(&client, &gateway, &token, json!({"text": "warm-up"})).await;
        body["conversation_id"].as_str().expect("conversation").to_string()
    };
    let gateway_run = {
        let (client, url, token, conversation) =
            (client.clone(), url.clone(), token.clone(), conversation.clone());
        drive(concurrency, secs, move || {
            let request = client
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({"conversation_id": conversation, "text": "How fast can you take this?"}));
            async move { request.send().await.is_ok_and(|r| r.status() == 202) }
        })
        .await
    };
    let gateway_rate = report("POST /chat (gateway)", secs, &gateway_run);

    // 2. The broker alone: the same events through a raw producer, same concurrency.
    let producer = kafka.settings.producer().expect("producer");
    let raw_run = {
        let conversation: Uuid = conversation.parse().expect("uuid");
        drive(concurrency, secs, move || {
            let producer = producer.clone();
            async move {
                let msg = UserMessage::new(conversation, "bench", "How fast can you take this?");
                publish(&producer, &msg, &TraceParent::new_root(), Duration::from_secs(5)).await.is_ok()
            }
        })
        .await
    };
    let raw_rate = report("raw producer (acks=all)", secs, &raw_run);
    println!("gateway / raw producer: {:.2}", gateway_rate / raw_rate.max(1.0));
    println!("gateway RSS after ingest: {:.1} MB", rss_mb(pid));

    // 3. Fan-out: idle SSE streams, each on a conversation of its own, on a fresh
    //    gateway (the conversations are started on the first one: their ids are valid
    //    on every replica), one HTTP/1.1 connection per stream, as browsers and
    //    HTTP/1.1 proxies open them.
    let mut conversations = Vec::with_capacity(streams);
    for i in 0..streams {
        let (_, body) = post_chat(&client, &gateway, &token, json!({"text": format!("stream {i}")})).await;
        conversations.push(body["conversation_id"].as_str().expect("conversation").to_string());
    }
    let fan_out = Gateway::start(&kafka, &[("RATE_LIMIT_PER_MINUTE", "0"), ("SSE_HEARTBEAT_SECS", "15")]);
    let started = Instant::now();
    let mut open = Vec::with_capacity(streams);
    let stream_client = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    for conversation in &conversations {
        open.push(open_stream(&stream_client, &fan_out, &token, conversation).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "{streams} idle SSE streams (HTTP/1.1, a connection each) open in {:.1} s; gateway RSS {:.1} MB (fresh process)",
        started.elapsed().as_secs_f64(),
        rss_mb(fan_out.process.pid())
    );
    drop(open);
    drop(fan_out);

    // 3b. The same streams multiplexed over HTTP/2 (h2c), as an HTTP/2-speaking proxy
    //     (Envoy, a service mesh) sends them, on a fresh gateway: hyper serves at most
    //     200 concurrent streams per connection, so 100 streams per client connection.
    let multiplexed = Gateway::start(&kafka, &[("RATE_LIMIT_PER_MINUTE", "0"), ("SSE_HEARTBEAT_SECS", "15")]);
    let started = Instant::now();
    let mut open = Vec::with_capacity(streams);
    let mut h2_client = None;
    for (i, conversation) in conversations.iter().enumerate() {
        if i % 100 == 0 {
            h2_client = Some(reqwest::Client::builder().http2_prior_knowledge().build().expect("client"));
        }
        let h2 = h2_client.as_ref().expect("client");
        let response = open_stream(h2, &multiplexed, &token, conversation).await;
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        open.push(response);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "{streams} idle SSE streams (HTTP/2, 100 per connection) open in {:.1} s; gateway RSS {:.1} MB (fresh process)",
        started.elapsed().as_secs_f64(),
        rss_mb(multiplexed.process.pid())
    );
    drop(open);
    drop(h2_client);

    // 4. For comparison: the same number of idle HTTP/1.1 keep-alive connections (one
    //    `GET /health` each, then silence) on a fresh gateway: the per-connection cost
    //    that is not SSE's.
    let plain = Gateway::start(&kafka, &[("RATE_LIMIT_PER_MINUTE", "0")]);
    let address = plain.base.trim_start_matches("http://").to_string();
    let mut sockets = Vec::with_capacity(streams);
    for _ in 0..streams {
        let mut socket = tokio::net::TcpStream::connect(&address).await.expect("connect");
        socket.write_all(b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n").await.expect("request");
        let mut buf = [0u8; 512];
        let n = socket.read(&mut buf).await.expect("response");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        sockets.push(socket);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "{streams} idle keep-alive connections (no SSE): gateway RSS {:.1} MB (fresh process)",
        rss_mb(plain.process.pid())
    );
}
