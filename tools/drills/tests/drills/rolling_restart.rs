//! Drill: a rollout of the gateways under streaming load. Two gateways behind one
//! address (a TCP round-robin, as a Service spreads connections over ready pods); each
//! in turn leaves the endpoints, gets SIGTERM and is replaced by a new replica, while
//! users keep chatting and streaming (reconnecting with `Last-Event-ID`, as
//! `EventSource` does) and OpenAI clients keep streaming completions.

use std::time::{Duration, Instant};

use drills::{
    proxy::RoundRobin,
    stack::{load, JWT_SECRET},
    Figures, Stack,
};
use serde_json::{json, Value};
use testkit::{LlamaServer, Signal};
use tokio::sync::watch;

/// How an OpenAI streaming completion ended, as its client sees it.
#[derive(Debug, Default, Clone, Copy)]
struct OpenAiOutcomes {
    /// A final chunk with `finish_reason`, then `[DONE]`.
    completed: u32,
    /// Ended with an error chunk (the gateway stopping, a reset): the client knows.
    cut_with_error: u32,
    /// Refused before streaming (e.g. 503 while stopping).
    refused: u32,
    /// The connection broke mid-stream: the client sees a transport error.
    broken: u32,
    /// Ended without a finish reason or an error: a truncated reply passing for whole.
    truncated: u32,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_of_the_gateways_loses_nothing_and_cuts_openai_streams_cleanly() {
    let llm = LlamaServer::chat().expect("llama-server");
    let mut stack = Stack::start(llm.base_url()).await.expect("stack");
    let first = stack.add_gateway(&[]).expect("gateway 1").port;
    let second = stack.add_gateway(&[]).expect("gateway 2").port;
    stack.add_responder(&[]).expect("responder");
    let proxy = RoundRobin::start(&[first, second]).await.expect("proxy");

    let url = proxy.url();
    let run = tokio::spawn({
        let url = url.clone();
        async move { load(&url, 6, 1.5, 30.0, 90.0).await }
    });
    let (stop_openai, openai_stop) = watch::channel(false);
    let openai = tokio::spawn(openai_streams(url.clone(), openai_stop));

    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut stops = Vec::new();
    for i in 0..2 {
        let old = stack.gateways[i].port;
        // As a preStop sleep does: out of the endpoints first, then SIGTERM.
        proxy.remove(old);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stopping = Instant::now();
        tokio::task::block_in_place(|| {
            stack.gateways[i].process.stop_with(Signal::SIGTERM, Duration::from_secs(30))
        })
        .expect("the gateway drains and exits");
        stops.push(stopping.elapsed().as_secs_f64());
        let new =
            tokio::task::block_in_place(|| stack.add_gateway(&[]).map(|g| g.port)).expect("a new gateway");
        proxy.add(new);
        tokio::time::sleep(Duration::from_secs(6)).await;
    }

    let report = run.await.expect("load task").expect("load test");
    stop_openai.send(true).expect("openai task listening");
    let outcomes = openai.await.expect("openai task");
    let c = &report.counts;
    let mut figures = Figures::new("rolling-restart");
    figures
        .load("", &report)
        .add("reconnects", report.streams.reconnects)
        .add("shutdown_events", report.streams.shutdowns)
        .add("longest_pause", format!("{:.0}ms", report.latency.pause.max_ms.unwrap_or(0.0)))
        .secs("slowest_stop", stops.iter().copied().fold(0.0, f64::max))
        .add("openai_completed", outcomes.completed)
        .add("openai_cut_with_error", outcomes.cut_with_error)
        .add("openai_refused", outcomes.refused)
        .add("openai_broken", outcomes.broken)
        .add("openai_truncated", outcomes.truncated);
    figures.print();
    assert!(c.accepted >= 30, "the load went on through the rollout: {}", report.table());
    assert!(report.streams.shutdowns >= 1, "streams were on the stopped replicas: {}", figures.line());
    assert_eq!(c.unanswered, 0, "every accepted message is answered: {}", report.table());
    assert_eq!(c.answered, c.accepted, "answered, not errored: {}", report.table());
    assert_eq!(report.streams.duplicate_ends, 0, "each message ends once for its client");
    assert_eq!(c.text_mismatches, 0, "no reply shown wrong: {}", figures.line());
    assert!(outcomes.completed >= 3, "OpenAI streams completed around the rollout: {}", figures.line());
    assert_eq!(outcomes.truncated, 0, "no OpenAI stream passed a cut reply off as whole: {}", figures.line());
}

/// One streaming completion after another through `url` until told to stop.
async fn openai_streams(url: String, mut stop: watch::Receiver<bool>) -> OpenAiOutcomes {
    let token = loadtest::auth::mint(JWT_SECRET, "openai-client", Duration::from_secs(3600)).expect("token");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
    let mut outcomes = OpenAiOutcomes::default();
    while !*stop.borrow() {
        let request = client
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&json!({"model": "chat-stack", "stream": true, "messages": [{"role": "user", "content": "Say hello."}]}))
            .send();
        let response = tokio::select! {
            r = request => r,
            _ = stop.changed() => break,
        };
        let body = match response {
            Ok(r) if r.status() == 200 => match r.text().await {
                Ok(body) => body,
                Err(_) => {
                    outcomes.broken += 1;
                    continue;
                }
            },
            _ => {
                outcomes.refused += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let chunks: Vec<Value> = body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect();
        if chunks.iter().any(|c| c.get("error").is_some()) {
            outcomes.cut_with_error += 1;
        } else if chunks.iter().any(|c| c["choices"][0]["finish_reason"].is_string()) {
            outcomes.completed += 1;
        } else {
            outcomes.truncated += 1;
        }
    }
    outcomes
}
