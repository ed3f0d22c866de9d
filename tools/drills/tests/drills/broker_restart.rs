//! Drill 2: the broker stopped for a while under load, then started again.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use drills::{
    stack::{load, JWT_SECRET},
    Figures, Stack,
};
use serde_json::json;
use testkit::LlamaServer;
use tokio::sync::watch;

/// How long the broker stays down: `DRILL_OUTAGE_SECS`, 6 s by default (longer than
/// the gateway's produce timeout here, 2 s, and than the responder's, 5 s).
fn outage() -> Duration {
    let secs = std::env::var("DRILL_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    Duration::from_secs(secs)
}

/// What one probe saw, answered at `at` (from the start): `POST /chat`'s status and
/// whether a 503 said when to retry, or `/ready`'s status (0: no answer). A POST sent
/// just before the restart may wait in the producer and get its 202 once the broker
/// stored it: what counts is when the answer came.
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// When it was sent (from the start).
    sent: Duration,
    at: Duration,
    chat: Option<u16>,
    retry_after: bool,
    ready: Option<u16>,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_outage_gets_503s_never_a_lost_202_and_everything_recovers() {
    let llm = LlamaServer::chat().expect("llama-server");
    let mut stack = Stack::start(llm.base_url()).await.expect("stack");
    let gateway = stack.add_gateway(&[]).expect("gateway").url();
    stack.add_responder(&[]).expect("responder");

    let started = Instant::now();
    let run = tokio::spawn({
        let gateway = gateway.clone();
        async move { load(&gateway, 4, 2.0, 20.0, 90.0).await }
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (stop_probing, probing) = watch::channel(false);
    let probes = Arc::new(Mutex::new(Vec::new()));
    let prober = tokio::spawn(probe(gateway.clone(), started, probes.clone(), probing));
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| stack.broker.stop()).expect("broker stops");
    let down_at = started.elapsed();
    tokio::time::sleep(outage()).await;
    let restart_at = started.elapsed();
    tokio::task::block_in_place(|| stack.broker.start_again()).expect("broker starts again");
    let up_at = started.elapsed();

    // Probe until both recovered (each probe's message is one more for the LLM).
    let recovered = |probes: &[Probe]| {
        probes.iter().any(|p| p.sent >= up_at && p.chat == Some(202))
            && probes.iter().any(|p| p.sent >= up_at && p.ready == Some(200))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !recovered(&probes.lock().expect("probes")) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_probing.send(true).expect("prober listening");
    prober.await.expect("prober");
    let mut probes = probes.lock().expect("probes").clone();
    probes.sort_by_key(|p| p.at);
    let report = run.await.expect("load task").expect("load test");

    let during: Vec<&Probe> =
        probes.iter().filter(|p| p.at > down_at && p.at < restart_at && p.chat.is_some()).collect();
    let refused = during.iter().filter(|p| p.chat == Some(503)).count();
    let accepted_while_down = during.iter().filter(|p| p.chat == Some(202)).count();
    let without_retry_after = during.iter().filter(|p| p.chat == Some(503) && !p.retry_after).count();
    // /ready notices within a few seconds (the client's metadata refresh).
    let ready_window = down_at + Duration::from_secs(3)..restart_at;
    let readies: Vec<&Probe> =
        probes.iter().filter(|p| ready_window.contains(&p.at) && p.ready.is_some()).collect();
    let unready = readies.iter().filter(|p| p.ready != Some(200)).count();
    // Recovery: from the broker being back to the answer of the first probe sent after.
    let first_after = |ok: &dyn Fn(&Probe) -> bool| {
        probes
            .iter()
            .filter(|p| p.sent >= up_at && ok(p))
            .map(|p| (p.at - up_at).as_secs_f64())
            .reduce(f64::min)
    };
    let chat_recovery = first_after(&|p| p.chat == Some(202));
    let ready_recovery = first_after(&|p| p.ready == Some(200));

    let copies_dropped =
        stack.gateways[0].metric("gateway_duplicate_tokens_dropped_total").await.expect("gateway metrics");
    let token_gaps = stack.gateways[0].metric("gateway_token_gaps_total").await.expect("gateway metrics");
    let c = &report.counts;
    let mut figures = Figures::new("broker-restart");
    figures
        .secs("outage", outage().as_secs_f64())
        .load("", &report)
        .add("probes_down", during.len())
        .add("probe_503", refused)
        .add("probe_202_down", accepted_while_down)
        .add("ready_probes_down", readies.len())
        .add("ready_probes_503", unready)
        .secs("chat_recovery", chat_recovery.unwrap_or(f64::NAN))
        .secs("ready_recovery", ready_recovery.unwrap_or(f64::NAN))
        .add("token_copies_dropped", copies_dropped)
        .add("token_gaps", token_gaps);
    figures.print();
    assert!(during.len() >= 5, "probed while the broker was down: {}", figures.line());
    assert!(readies.len() >= 5, "/ready probed while the broker was down: {}", figures.line());
    let no_answer = probes.iter().filter(|p| p.chat == Some(0)).count();
    assert_eq!(no_answer, 0, "every POST got an HTTP answer, none hung or was reset");
    assert_eq!(accepted_while_down, 0, "no 202 without a broker: {}", figures.line());
    assert_eq!(refused, during.len(), "every POST while down got 503: {}", figures.line());
    assert_eq!(without_retry_after, 0, "every 503 says when to retry");
    assert!(
        chat_recovery.is_some() && ready_recovery.is_some(),
        "recovered by itself: {}\ngateway: {}\nbroker: {}",
        figures.line(),
        stack.gateways[0].process.log_tail(),
        stack.broker.first_problems(20)
    );
    assert_eq!(unready, readies.len(), "/ready reported the outage: {}", figures.line());
    assert!(c.rejected >= 1, "the load saw the outage too: {}", report.table());
    assert_eq!(c.unanswered, 0, "every accepted message is answered: {}", report.table());
    assert_eq!(c.answered, c.accepted, "answered, not errored: {}", report.table());
    assert_eq!(report.streams.duplicate_ends, 0, "each message ends once for its client");
    assert_eq!(
        c.text_mismatches,
        0,
        "no reply mixes two attempts: {}\ngateway warnings:\n{}\nresponder warnings:\n{}",
        figures.line(),
        testkit::problem_lines(&stack.gateways[0].process.log(), 40),
        testkit::problem_lines(&stack.responders.iter().map(|r| r.process.log()).collect::<String>(), 40),
    );
}

/// Every 200 ms until told to stop, and without waiting for earlier answers: POSTs a
/// message, and reads `/ready`.
async fn probe(
    gateway: String,
    started: Instant,
    probes: Arc<Mutex<Vec<Probe>>>,
    mut stop: watch::Receiver<bool>,
) {
    let token = loadtest::auth::mint(JWT_SECRET, "prober", Duration::from_secs(3600)).expect("token");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut tasks = tokio::task::JoinSet::new();
    while !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let (c, token, url, seen) = (client.clone(), token.clone(), gateway.clone(), probes.clone());
        tasks.spawn(async move {
            let sent = started.elapsed();
            let chat = c
                .post(format!("{url}/chat"))
                .bearer_auth(&token)
                .json(&json!({"text": "Are you there?"}))
                .send()
                .await
                .ok();
            let probe = Probe {
                sent,
                at: started.elapsed(),
                // 0: no HTTP answer at all (refused, reset, timed out).
                chat: Some(chat.as_ref().map_or(0, |r| r.status().as_u16())),
                retry_after: chat.as_ref().is_some_and(|r| r.headers().contains_key("retry-after")),
                ready: None,
            };
            seen.lock().expect("probes").push(probe);
        });
        let (c, url, seen) = (client.clone(), gateway.clone(), probes.clone());
        tasks.spawn(async move {
            let sent = started.elapsed();
            let ready = c.get(format!("{url}/ready")).send().await.ok().map(|r| r.status().as_u16());
            let probe = Probe {
                sent,
                at: started.elapsed(),
                chat: None,
                retry_after: false,
                ready: Some(ready.unwrap_or(0)),
            };
            seen.lock().expect("probes").push(probe);
        });
    }
    while tasks.join_next().await.is_some() {}
}
