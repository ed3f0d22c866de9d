//! Gateway benchmark against a real broker (tansu, SQLite storage unless TANSU_ENGINE says):
//! 1. ingest: `POST /chat` accepted per second and latency percentiles at fixed
//!    concurrency, next to a raw rdkafka producer (same acks, same concurrency) and to
//!    the same requests from `wrk` when it is installed, with the CPU each process used;
//! 2. fan-out: the gateway's RSS holding N idle SSE streams, one HTTP/1.1 connection
//!    each and multiplexed over HTTP/2, next to N idle plain keep-alive connections
//!    (the per-connection cost that is not SSE's);
//! 3. token delivery: 1k and N streams reading as fast as they can, spread over 100
//!    conversations, while token events are published at rising rates: the events
//!    delivered per second, the gateway's CPU and RSS.
//!
//! Run: `ci/bench.sh` (or, with TANSU_BIN set, `cargo bench -p gateway --bench gateway`).
//! Knobs: BENCH_CONCURRENCY (64,256: ingest runs at each), BENCH_SECS (10), BENCH_STREAMS (10000),
//! KAFKA_LINGER_MS (the stack's default) for the gateway and the raw producer alike,
//! BENCH_ONLY=ingest (only section 1), delivery (only section 3), fanout (only section 2) or tracing (ingest with
//! trace export off, sampled at 0.1 and at 1.0; BENCH_ROUNDS rounds, 3; with
//! BENCH_BASELINE_GATEWAY=<path to an older gateway binary> (BENCH_BASELINE_LABEL), that
//! build too, export off) or cost (ingest's CPU per message against its two floors,
//! support/floors.rs; BENCH_ROUNDS rounds, 3; with BENCH_GATEWAYS=label=path [NAME=VALUE…],…
//! those gateway builds or settings too);
//! TANSU_ENGINE=memory (tansu's memory engine instead of SQLite, see ci/deps/tansu.sh).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/floors.rs"]
mod floors;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::*;
use platform::{
    events::{ModelResponse, ReplyBody, UserMessage},
    kafka::{publish, KafkaSettings},
    trace_context::TraceParent,
};
use serde_json::json;
use testkit::{cpu_secs, kafka::Kafka, metric_total, rss_mb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// Settings of the gateways here that serve streams: no rate limit; heartbeats rare enough not to
/// count in the streams' figures.
const STREAMING_GATEWAY: &[(&str, &str)] = &[("RATE_LIMIT_PER_MINUTE", "0"), ("SSE_HEARTBEAT_SECS", "15")];

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The middle value (the upper one of an even count; NaN for none).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
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

/// CPU seconds used so far by the gateway, the broker and this process (the load
/// generator, or the raw producer): on two shared cores, who used them explains a rate.
struct CpuUse {
    gateway: f64,
    broker: f64,
    bench: f64,
}

impl CpuUse {
    fn read(gateway: u32, broker: u32) -> Self {
        Self { gateway: cpu_secs(gateway), broker: cpu_secs(broker), bench: cpu_secs(std::process::id()) }
    }

    /// Prints each process's share of one core since `before`, and CPU per record.
    fn print_since(&self, before: &Self, secs: u64, records: usize) {
        let share = |now: f64, then: f64| 100.0 * (now - then) / secs as f64;
        let per_record = |now: f64, then: f64| 1e6 * (now - then) / records.max(1) as f64;
        println!(
            "{:<28} CPU (% of a core): gateway {:>5.1}  broker {:>5.1}  load generator {:>5.1}; \
             per record: gateway {:>5.1} µs, broker {:>5.1} µs",
            "",
            share(self.gateway, before.gateway),
            share(self.broker, before.broker),
            share(self.bench, before.bench),
            per_record(self.gateway, before.gateway),
            per_record(self.broker, before.broker),
        );
    }
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
    if floors::serve_http_floor_if_asked().await {
        return;
    }
    let concurrencies: Vec<usize> = std::env::var("BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "64,256".into())
        .split(',')
        .map(|c| c.trim().parse().expect("BENCH_CONCURRENCY: numbers separated by commas"))
        .collect();
    let secs = env_or("BENCH_SECS", 10) as u64;
    let streams = env_or("BENCH_STREAMS", 10_000);
    let mut kafka = Kafka::start(2).await;
    // The producers' batching delay, the same for the gateway and the raw producer.
    let linger = std::env::var("KAFKA_LINGER_MS").unwrap_or_else(|_| kafka.settings.linger_ms.to_string());
    kafka.settings.linger_ms = linger.parse().expect("KAFKA_LINGER_MS: a number of milliseconds");
    let gateway =
        Gateway::start(&kafka, &[STREAMING_GATEWAY, &[("KAFKA_LINGER_MS", linger.as_str())]].concat());
    let pid = gateway.process.pid();
    println!(
        "gateway benchmark: tansu {} engine, concurrency {concurrencies:?}, linger {linger} ms, {secs} s per run, {streams} streams",
        testkit::Broker::engine()
    );
    println!("gateway idle RSS: {:.1} MB", rss_mb(pid));
    let most = concurrencies.iter().copied().max().unwrap_or(1);
    let client = reqwest::Client::builder().pool_max_idle_per_host(most).build().expect("client");
    let token = token("bench");
    let only = std::env::var("BENCH_ONLY").ok().filter(|o| !o.is_empty());
    assert!(
        matches!(only.as_deref(), None | Some("ingest" | "delivery" | "fanout" | "tracing" | "cost")),
        "BENCH_ONLY for the gateway benchmark is ingest, delivery, fanout, tracing or cost, not {only:?}"
    );
    if only.as_deref() == Some("fanout") {
        fan_out(&kafka, &gateway, &client, &token, streams).await;
        return;
    }
    if only.as_deref() == Some("cost") {
        drop(gateway);
        for &concurrency in &concurrencies {
            cost(&kafka, &token, concurrency, secs).await;
        }
        return;
    }
    if only.as_deref() == Some("tracing") {
        drop(gateway);
        for &concurrency in &concurrencies {
            tracing_cost(&kafka, &token, concurrency, secs).await;
        }
        return;
    }
    if only.as_deref() != Some("delivery") {
        for &concurrency in &concurrencies {
            ingest(&kafka, &gateway, &client, &token, concurrency, secs).await;
        }
    }
    if only.is_none() {
        fan_out(&kafka, &gateway, &client, &token, streams).await;
    }
    if only.as_deref() == Some("ingest") {
        return;
    }

    // 5. Token delivery, on a fresh broker and fresh gateways: 100 conversations (each a
    //    real accepted message), 1k and then `streams` readers spread over them. The
    //    ingest runs leave ~300 000 records in tansu's SQLite file, which slows its writes
    //    enough to time them out and break it (docs/DEPENDENCIES.md).
    let (kafka, gateway) = if only.is_none() {
        drop(gateway);
        drop(kafka);
        let kafka = Kafka::start(2).await;
        let gateway = Gateway::start(&kafka, STREAMING_GATEWAY);
        (kafka, gateway)
    } else {
        (kafka, gateway)
    };
    let mut messages = Vec::with_capacity(DELIVERY_CONVERSATIONS);
    for i in 0..DELIVERY_CONVERSATIONS {
        let (_, body) = post_chat(&client, &gateway, &token, json!({"text": format!("deliver {i}")})).await;
        messages.push(accepted_message(&body, "bench"));
    }
    for n in [1_000, streams] {
        delivery(&kafka, &token, &messages, n, secs).await;
    }
}

/// Conversations the delivery streams are spread over.
const DELIVERY_CONVERSATIONS: usize = 100;
/// Token events published per second (over all conversations), one step each. tansu
/// takes ~1 000 single-event writes/s here next to everything else; at 3 000/s its
/// writes time out and the idempotent producer's epoch bump breaks it (see
/// docs/DEPENDENCIES.md), so the fan-out per event is what scales the delivery rate.
const DELIVERY_RATES: [usize; 3] = [100, 300, 1_000];

/// Sections 1-2: ingest through the gateway, then the same events through a raw producer.
async fn ingest(
    kafka: &Kafka,
    gateway: &Gateway,
    client: &reqwest::Client,
    token: &str,
    concurrency: usize,
    secs: u64,
) {
    let (pid, broker) = (gateway.process.pid(), kafka.broker.pid());

    // 1. Ingest through the gateway.
    let url = gateway.url("/chat");
    let conversation = {
        let (_, body) = post_chat(client, gateway, token, json!({"text": "warm-up"})).await;
        body["conversation_id"].as_str().expect("conversation").to_string()
    };
    let before = CpuUse::read(pid, broker);
    let gateway_run = {
        let (client, url, token, conversation) =
            (client.clone(), url.clone(), token.to_string(), conversation.clone());
        drive(concurrency, secs, move || {
            let request = client
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({"conversation_id": conversation, "text": "How fast can you take this?"}));
            async move { request.send().await.is_ok_and(|r| r.status() == 202) }
        })
        .await
    };
    let gateway_rate = report(&format!("POST /chat, {concurrency} clients"), secs, &gateway_run);
    CpuUse::read(pid, broker).print_since(&before, secs, gateway_run.0);

    // 2. The broker alone: the same events through a raw producer, same concurrency.
    let producer = kafka.settings.producer().expect("producer");
    let before = CpuUse::read(pid, broker);
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
    let raw_rate = report(&format!("raw producer, {concurrency} in flight"), secs, &raw_run);
    CpuUse::read(pid, broker).print_since(&before, secs, raw_run.0);
    println!("gateway / raw producer at {concurrency}: {:.2}", gateway_rate / raw_rate.max(1.0));
    ingest_with_wrk(&url, pid, broker, token, &conversation, concurrency, secs);
    println!("gateway RSS after ingest: {:.1} MB", rss_mb(pid));
}

/// One run of `wrk` against `POST /chat`.
#[derive(Clone, Copy)]
struct WrkRun {
    /// 202s per second.
    accepted: f64,
    /// Latency percentiles, ms.
    p50_ms: f64,
    p99_ms: f64,
    /// The server's CPU per accepted message, µs.
    cpu_us: f64,
}

/// Section 1 again, driven by `wrk` when it is installed (`ci/bench.sh` installs it): a load
/// generator written in C that leaves more of the two shared cores to the server than
/// this process's HTTP client does, so the server's own ceiling shows. `url` is served by
/// process `pid` (a gateway, or the HTTP floor).
fn ingest_with_wrk(
    url: &str,
    pid: u32,
    broker: u32,
    token: &str,
    conversation: &str,
    concurrency: usize,
    secs: u64,
) -> Option<WrkRun> {
    let Some(wrk) = testkit::which("wrk") else {
        println!("(wrk is not installed: no run driven by it)");
        return None;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("post.lua");
    let body = json!({"conversation_id": conversation, "text": "How fast can you take this?"}).to_string();
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = {body:?}\n\
             wrk.headers[\"Content-Type\"] = \"application/json\"\n\
             wrk.headers[\"Authorization\"] = \"Bearer {token}\"\n"
        ),
    )
    .expect("wrk script");
    let before = CpuUse::read(pid, broker);
    let wrk_before = testkit::children_cpu_secs();
    let output = std::process::Command::new(wrk)
        .args(["-t1", &format!("-c{concurrency}"), &format!("-d{secs}s"), "--latency", "-s"])
        .arg(&script)
        .arg(url)
        .output()
        .expect("wrk runs");
    let wrk_cpu = testkit::children_cpu_secs() - wrk_before;
    // The load generator's column holds wrk's CPU (this process is idle meanwhile).
    let after = CpuUse { bench: before.bench + wrk_cpu, ..CpuUse::read(pid, broker) };
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    // wrk prints "Requests/sec: N", the latency distribution ("50% 1.23ms") and, only
    // when there were any, "Non-2xx or 3xx responses: N".
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    // "Requests/sec" counts every answer; only the 202s were accepted.
    let requests: f64 = field("Requests/sec:").parse().unwrap_or(0.0);
    let refused: f64 = field("Non-2xx or 3xx responses:").parse().unwrap_or(0.0);
    let accepted = requests - refused / secs as f64;
    println!(
        "{:<28} {accepted:>9.0}/s  refused {refused:>5}  p50 {:>9}  p99 {:>9}  {}",
        format!("wrk, {concurrency} connections"),
        field("50%"),
        field("99%"),
        text.lines().find(|l| l.contains("Socket errors")).map_or("no socket errors", str::trim),
    );
    let records = (accepted * secs as f64) as usize;
    after.print_since(&before, secs, records);
    Some(WrkRun {
        accepted,
        p50_ms: wrk_ms(&field("50%")),
        p99_ms: wrk_ms(&field("99%")),
        cpu_us: 1e6 * (after.gateway - before.gateway) / records.max(1) as f64,
    })
}

/// A duration as `wrk` prints it ("812.00us", "1.23ms", "1.01s"), in ms (NaN if unknown).
fn wrk_ms(text: &str) -> f64 {
    let number = |suffix: &str| text.strip_suffix(suffix).and_then(|v| v.parse::<f64>().ok());
    number("us")
        .map(|v| v / 1e3)
        .or_else(|| number("ms"))
        .or_else(|| number("s").map(|v| v * 1e3))
        .unwrap_or(f64::NAN)
}

/// Section 6 (`BENCH_ONLY=tracing`): what exporting traces costs ingest. Fresh gateways
/// with trace export off, on with sampling 0.1 and on with 1.0, in turn for
/// `BENCH_ROUNDS` rounds (3) so that drift hits all three alike, each driven by `wrk`;
/// the spans go to an OTLP collector in this process (testkit's), as they would to a
/// collector elsewhere. Prints each run, then the median of each setting.
async fn tracing_cost(kafka: &Kafka, token: &str, concurrency: usize, secs: u64) {
    let collector = testkit::otlp::Collector::start().expect("collector");
    let endpoint = collector.endpoint();
    let on = |ratio: &'static str| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".to_string()),
            ("OTEL_TRACES_SAMPLER_ARG", ratio.to_string()),
        ]
    };
    let this = env!("CARGO_BIN_EXE_gateway").to_string();
    let mut settings = vec![
        ("tracing off".to_string(), this.clone(), Vec::new()),
        ("tracing on, sampling 0.1".to_string(), this.clone(), on("0.1")),
        ("tracing on, sampling 1.0".to_string(), this.clone(), on("1.0")),
    ];
    // "Off must not move": the same load on a build from before trace export existed.
    if let Ok(baseline) = std::env::var("BENCH_BASELINE_GATEWAY") {
        let label = std::env::var("BENCH_BASELINE_LABEL").unwrap_or_else(|_| "baseline".into());
        settings.insert(0, (format!("{label} (no tracing code)"), baseline, Vec::new()));
    }
    let rounds = env_or("BENCH_ROUNDS", 3);
    let mut figures: Vec<Vec<(f64, f64)>> = vec![Vec::new(); settings.len()];
    let client = reqwest::Client::new();
    for round in 1..=rounds {
        for (i, (label, binary, otel)) in settings.iter().enumerate() {
            let otel: Vec<(&str, &str)> = otel.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let gateway = Gateway::start_binary(binary, kafka, &[STREAMING_GATEWAY, &otel].concat());
            let (_, body) = post_chat(&client, &gateway, token, json!({"text": "warm-up"})).await;
            let conversation = body["conversation_id"].as_str().expect("conversation").to_string();
            let spans_before = collector.spans().len();
            println!("round {round}, {label}:");
            let run = ingest_with_wrk(
                &gateway.url("/chat"),
                gateway.process.pid(),
                kafka.broker.pid(),
                token,
                &conversation,
                concurrency,
                secs,
            )
            .map(|run| (run.accepted, run.cpu_us));
            drop(gateway);
            // The gateway flushes its queue at exit: what arrived is what was exported.
            println!(
                "{:<28} spans received by the collector: {}",
                "",
                collector.spans().len() - spans_before
            );
            figures[i].extend(run);
        }
    }
    println!("tracing cost at {concurrency} connections, median of {rounds} rounds:");
    for ((label, _, _), runs) in settings.iter().zip(figures) {
        let accepted = median(runs.iter().map(|r| r.0).collect());
        let cpu = median(runs.iter().map(|r| r.1).collect());
        println!("  {label:<36} {accepted:>9.0}/s accepted  gateway CPU {cpu:>6.1} µs per message");
    }
}

/// Section 7 (`BENCH_ONLY=cost`): the gateway's CPU per accepted message against its two
/// floors (support/floors.rs), all driven like the gateway (`wrk`, `concurrency`
/// connections or writes in flight), in turn for `BENCH_ROUNDS` rounds (3), each server
/// fresh. With `BENCH_GATEWAYS=label=path [NAME=VALUE…],…`, those gateway builds (with
/// those settings) run in every round too: a lever is measured on its own as the build
/// (or setting) with it against the one without.
/// Prints each run, then the medians and each gateway's overhead over the floors.
async fn cost(kafka: &Kafka, token: &str, concurrency: usize, secs: u64) {
    let gateways = gateways_to_compare();
    let broker = kafka.broker.pid();
    let rounds = env_or("BENCH_ROUNDS", 3);
    let client = reqwest::Client::new();
    let (mut http, mut bare) = (Vec::new(), Vec::new());
    let mut runs: Vec<Vec<WrkRun>> = vec![Vec::new(); gateways.len()];
    for round in 1..=rounds {
        println!("round {round}, HTTP floor:");
        let floor = floors::HttpFloor::start();
        let any_id = Uuid::new_v4().to_string();
        http.extend(ingest_with_wrk(
            &floor.url,
            floor.process.pid(),
            broker,
            token,
            &any_id,
            concurrency,
            secs,
        ));
        drop(floor);
        let run = floors::kafka_floor(kafka, concurrency, secs).await;
        println!(
            "round {round}, Kafka floor:\n{:<28} {:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  CPU per record: producer {:>5.1} µs, broker {:>5.1} µs",
            format!("bare producer, {concurrency} in flight"),
            run.rate,
            run.p50_ms,
            run.p99_ms,
            run.cpu_us,
            run.broker_us,
        );
        bare.push(run);
        for (i, (label, binary, env)) in gateways.iter().enumerate() {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let gateway = Gateway::start_binary(binary, kafka, &[STREAMING_GATEWAY, &env].concat());
            let (_, body) = post_chat(&client, &gateway, token, json!({"text": "warm-up"})).await;
            let conversation = body["conversation_id"].as_str().expect("conversation").to_string();
            println!("round {round}, gateway ({label}):");
            let url = gateway.url("/chat");
            runs[i].extend(ingest_with_wrk(
                &url,
                gateway.process.pid(),
                broker,
                token,
                &conversation,
                concurrency,
                secs,
            ));
        }
    }
    let of = |runs: &[WrkRun], f: fn(&WrkRun) -> f64| median(runs.iter().map(f).collect());
    let (http_us, kafka_us) = (of(&http, |r| r.cpu_us), median(bare.iter().map(|r| r.cpu_us).collect()));
    println!("cost per accepted message at {concurrency} connections, median of {rounds} rounds:");
    let line = |label: &str, rate: f64, p50: f64, p99: f64, cpu: f64| {
        println!("  {label:<44} {rate:>9.0}/s  p50 {p50:>6.2} ms  p99 {p99:>6.2} ms  CPU {cpu:>6.1} µs per message")
    };
    line(
        "HTTP floor (202 from a trivial route)",
        of(&http, |r| r.accepted),
        of(&http, |r| r.p50_ms),
        of(&http, |r| r.p99_ms),
        http_us,
    );
    line(
        "Kafka floor (bare producer)",
        median(bare.iter().map(|r| r.rate).collect()),
        median(bare.iter().map(|r| r.p50_ms).collect()),
        median(bare.iter().map(|r| r.p99_ms).collect()),
        kafka_us,
    );
    println!("  {:<44} {:>6.1} µs per message", "the two floors together", http_us + kafka_us);
    for ((label, _, _), runs) in gateways.iter().zip(&runs) {
        let cpu = of(runs, |r| r.cpu_us);
        line(
            &format!("gateway ({label})"),
            of(runs, |r| r.accepted),
            of(runs, |r| r.p50_ms),
            of(runs, |r| r.p99_ms),
            cpu,
        );
        println!(
            "  {:<44} {:>6.1} µs per message",
            format!("gateway ({label}) over the floors"),
            cpu - http_us - kafka_us
        );
    }
}

/// Settings a gateway runs with, as `NAME=VALUE` pairs.
type Settings = Vec<(String, String)>;

/// The gateways `cost` measures: this build, then each of `BENCH_GATEWAYS`
/// (`label=path [NAME=VALUE…],…`): a label, a binary and the settings it runs with.
fn gateways_to_compare() -> Vec<(String, String, Settings)> {
    let mut gateways =
        vec![("this build".to_string(), env!("CARGO_BIN_EXE_gateway").to_string(), Vec::new())];
    let list = std::env::var("BENCH_GATEWAYS").unwrap_or_default();
    for item in list.split(',').filter(|i| !i.trim().is_empty()) {
        let (label, run) = item.split_once('=').expect("BENCH_GATEWAYS: label=path [NAME=VALUE…],…");
        let mut words = run.split_whitespace();
        let path = words.next().expect("BENCH_GATEWAYS: a path after each label=");
        let env = words
            .map(|w| w.split_once('=').expect("BENCH_GATEWAYS: settings as NAME=VALUE"))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        gateways.push((label.trim().to_string(), path.to_string(), env));
    }
    gateways
}

/// Sections 3-4: idle fan-out and idle keep-alive connections, each on a fresh gateway.
async fn fan_out(kafka: &Kafka, gateway: &Gateway, client: &reqwest::Client, token: &str, streams: usize) {
    // 3. Fan-out: idle SSE streams, each on a conversation of its own, on a fresh
    //    gateway (the conversations are started on the first one: their ids are valid
    //    on every replica), one HTTP/1.1 connection per stream, as browsers and
    //    HTTP/1.1 proxies open them.
    let mut conversations = Vec::with_capacity(streams);
    for i in 0..streams {
        let (_, body) = post_chat(client, gateway, token, json!({"text": format!("stream {i}")})).await;
        conversations.push(body["conversation_id"].as_str().expect("conversation").to_string());
    }
    let fan_out = Gateway::start(kafka, STREAMING_GATEWAY);
    let started = Instant::now();
    let mut open = Vec::with_capacity(streams);
    let stream_client = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    for conversation in &conversations {
        open.push(open_stream(&stream_client, &fan_out, token, conversation).await);
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
    let multiplexed = Gateway::start(kafka, STREAMING_GATEWAY);
    let started = Instant::now();
    let mut open = Vec::with_capacity(streams);
    let mut h2_client = None;
    for (i, conversation) in conversations.iter().enumerate() {
        if i % 100 == 0 {
            h2_client = Some(reqwest::Client::builder().http2_prior_knowledge().build().expect("client"));
        }
        let h2 = h2_client.as_ref().expect("client");
        let response = open_stream(h2, &multiplexed, token, conversation).await;
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
    let plain = Gateway::start(kafka, &[("RATE_LIMIT_PER_MINUTE", "0")]);
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

/// One gateway with `streams` readers over `messages`' conversations, fed token events
/// at each of DELIVERY_RATES for `secs`: prints delivered events per second, the
/// gateway's CPU and RSS, and the streams it cut as too slow.
async fn delivery(kafka: &Kafka, token: &str, messages: &[UserMessage], streams: usize, secs: u64) {
    let gateway = Gateway::start(kafka, STREAMING_GATEWAY);
    let pid = gateway.process.pid();
    let address = gateway.base.trim_start_matches("http://").to_string();
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(streams);
    for i in 0..streams {
        let conversation = messages[i % messages.len()].conversation_id;
        let request = format!(
            "GET /stream?conversation_id={conversation} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        let mut socket = tokio::net::TcpStream::connect(&address).await.expect("connect");
        socket.write_all(request.as_bytes()).await.expect("request");
        readers.push(tokio::spawn(count_tokens(socket, received.clone())));
    }
    let metrics = |name: &'static str| {
        let url = gateway.metrics_url.clone();
        async move {
            let text = reqwest::get(url).await.expect("metrics").text().await.expect("metrics body");
            metric_total(&text, name)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics("gateway_open_streams").await < streams as f64 {
        assert!(Instant::now() < deadline, "{streams} streams not open after 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("token delivery, {streams} streams over {} conversations (HTTP/1.1):", messages.len());
    // Not idempotent, as against tansu everywhere in the stack: a write that times out
    // would otherwise leave the broker broken for the rest of the run.
    let producer =
        KafkaSettings { idempotence: false, ..kafka.settings.clone() }.producer().expect("producer");
    let per_stream_fan_out = streams as f64 / messages.len() as f64;
    let mut seq = 0u32;
    for rate in DELIVERY_RATES {
        let (cut, cpu, got) = (
            metrics("gateway_slow_streams_cut_total").await,
            cpu_secs(pid),
            received.load(Ordering::Relaxed),
        );
        let started = Instant::now();
        let mut sends = tokio::task::JoinSet::new();
        // Every 10 ms, a hundredth of a second's events, round the conversations.
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let per_tick = (rate / 100).max(1);
        let mut published = 0usize;
        while started.elapsed() < Duration::from_secs(secs) {
            tick.tick().await;
            for _ in 0..per_tick {
                let message = &messages[published % messages.len()];
                let body = ReplyBody::Token { seq, delta: "token ".into() };
                let event = ModelResponse::for_message(message, message.message_id, body);
                let producer = producer.clone();
                sends.spawn(async move {
                    publish(&producer, &event, &TraceParent::new_root(), Duration::from_secs(30))
                        .await
                        .is_ok()
                });
                published += 1;
                seq += 1;
            }
        }
        // Rates and CPU over the publishing window only; what arrives after it counts
        // towards completeness, not towards the rate.
        let window = started.elapsed().as_secs_f64();
        let (delivered_in_window, cpu_in_window) =
            (received.load(Ordering::Relaxed) - got, cpu_secs(pid) - cpu);
        let stored = sends.join_all().await.into_iter().filter(|ok| *ok).count();
        // Let the last events reach the clients.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let delivered = received.load(Ordering::Relaxed) - got;
        let expected = stored as f64 * per_stream_fan_out;
        println!(
            "  {:>5.0} events/s published, {stored} acknowledged ({} not): {:>9.0} delivered/s while publishing, \
             {:>5.1}% of the acknowledged events' {expected:.0} deliveries in the end, gateway CPU {:>5.1}%, RSS {:>6.1} MB, {} streams cut",
            published as f64 / window,
            published - stored,
            delivered_in_window as f64 / window,
            100.0 * delivered as f64 / expected.max(1.0),
            100.0 * cpu_in_window / window,
            rss_mb(pid),
            metrics("gateway_slow_streams_cut_total").await - cut,
        );
    }
    for reader in readers {
        reader.abort();
    }
}

/// Reads an SSE response as fast as it comes, counting `token` events.
async fn count_tokens(mut socket: tokio::net::TcpStream, received: Arc<AtomicU64>) {
    const NEEDLE: &[u8] = b"event: token";
    let mut buf = vec![0u8; 64 * 1024];
    // The tail of the last read, so a needle split across two reads is still counted.
    let mut carry = 0usize;
    loop {
        let n = match socket.read(&mut buf[carry..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let filled = carry + n;
        let found = buf[..filled].windows(NEEDLE.len()).filter(|w| *w == NEEDLE).count();
        received.fetch_add(found as u64, Ordering::Relaxed);
        carry = (NEEDLE.len() - 1).min(filled);
        buf.copy_within(filled - carry..filled, 0);
    }
}
