//! The README's first command end to end: `ci/stack.sh` from a clean state brings up
//! the broker, Qdrant, llama-server with SmolLM2, the gateway and the autoscaler; a chat
//! message gets a streamed answer from the real model; `loadtest` drives the responders
//! from zero to several replicas and back to zero with every accepted message
//! answered; Prometheus scrapes every part of it, and every series the dashboard and the
//! alert rules of k8s/components/monitoring name exists; the README's walkthrough of a
//! failing message holds step by step; Ctrl-C leaves nothing behind.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use futures::StreamExt;
use testkit::{free_port, port_open, repo_root, Process, Signal};

fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let path = exe.parent().and_then(|deps| deps.parent()).expect("target dir").join(name);
    assert!(path.is_file(), "{} not built (ci/test.sh builds the workspace)", path.display());
    path
}

async fn responder_replicas(client: &reqwest::Client, port: u16) -> Option<u64> {
    let status: serde_json::Value =
        client.get(format!("http://127.0.0.1:{port}/status")).send().await.ok()?.json().await.ok()?;
    status["scaled_objects"].as_array()?.iter().find(|s| s["name"] == "responder")?["replicas"].as_u64()
}

/// The scrape jobs of the local Prometheus: the gateway, each handler (as a cluster's
/// PodMonitors name them) and the autoscaler (standing in for KEDA and kube-state-metrics).
const JOBS: [&str; 4] = ["chat-stack/gateway", "chat-stack/responder", "chat-stack/memory", "keda"];

/// The local stack's Prometheus, through its HTTP API.
struct Prometheus {
    client: reqwest::Client,
    base: String,
}

impl Prometheus {
    /// The result vector of an instant query (empty on any error).
    async fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let response =
            self.client.get(format!("{}/api/v1/query", self.base)).query(&[("query", promql)]).send().await;
        let Ok(response) = response else { return Vec::new() };
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        body["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// How many targets are up when every job has targets and all of them are up.
    async fn every_job_up(&self, jobs: &[&str]) -> Option<usize> {
        let up = self.query("up").await;
        let all = jobs.iter().all(|job| up.iter().any(|s| s["metric"]["job"] == *job));
        let healthy = up.iter().all(|s| s["value"][1] == "1");
        (all && healthy).then_some(up.len())
    }

    /// Each selector of `expressions` whose metric, or one of whose matcher labels, has
    /// had no series in the last 15 minutes (`expression: metric{label}`).
    async fn missing_series(&self, expressions: &[String]) -> Vec<String> {
        let mut missing = Vec::new();
        for expr in expressions {
            for s in testkit::promql::selectors(expr) {
                let mut checks = vec![format!("{{__name__=\"{}\"}}", s.metric)];
                checks.extend(s.labels.iter().map(|l| format!("{}{{{l}!=\"\"}}", s.metric)));
                for check in checks {
                    if self.query(&format!("count(last_over_time({check}[15m]))")).await.is_empty() {
                        missing.push(format!("{expr}: {check}"));
                    }
                }
            }
        }
        missing.sort();
        missing.dedup();
        missing
    }
}

/// Every PromQL expression of the dashboard and of the alert rules.
fn monitoring_expressions() -> Vec<String> {
    let dir = repo_root().join("k8s/components/monitoring");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dashboard.json")).expect("dashboard.json"))
            .expect("dashboard JSON");
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(String::from))
        .collect();
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("rules.yaml")).expect("rules.yaml"))
            .expect("YAML");
    for group in rules["spec"]["groups"].as_sequence().into_iter().flatten() {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            if let Some(expr) = rule["expr"].as_str() {
                exprs.push(expr.to_string());
            }
        }
    }
    assert!(exprs.len() >= 10, "the dashboard and the rules hold expressions: {exprs:?}");
    exprs
}

/// `ci/stack.sh`, given Ctrl-C and time to stop everything even when the test fails
/// (it stops its services one after another, up to 15 s each).
struct Stack(Process);

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.0.stop_with(Signal::SIGINT, Duration::from_secs(90));
    }
}

/// Processes whose environment carries `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("environ"))
                .unwrap_or_default()
                .split(|b| *b == 0)
                .any(|kv| kv == marker.as_bytes())
        })
        .map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).replace('\0', " ")
        })
        .collect()
}

/// The README's walkthrough "Following one failing message", step by step: a text
/// longer than the model's context (2048 tokens) is refused by the LLM with a 400; the
/// user gets an `error` event naming the trace; the gateway's and the responder's log
/// lines for it carry that trace id; the record is dead-lettered (Prometheus counts
/// it); and Qdrant's REST API shows the user's turn stored all the same.
async fn follow_a_failing_message(
    client: &reqwest::Client,
    base: &str,
    stack_dir: &std::path::Path,
    qdrant_rest: u16,
    prom: &Prometheus,
) {
    let text = "Please summarise this. ".repeat(600);
    let response = client
        .post(format!("{base}/chat"))
        .json(&serde_json::json!({"text": text}))
        .send()
        .await
        .expect("POST /chat");
    assert_eq!(response.status(), 202);
    let header = response.headers().get("x-trace-id").and_then(|v| v.to_str().ok()).map(String::from);
    let accepted: serde_json::Value = response.json().await.expect("JSON");
    let conversation = accepted["conversation_id"].as_str().expect("conversation_id").to_string();
    let stream =
        client.get(format!("{base}/stream?conversation_id={conversation}")).send().await.expect("stream");
    let mut body = stream.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let error = loop {
        if let Some(at) = text.find("event: error\n") {
            if let Some(line) = text[at..].lines().find_map(|l| l.strip_prefix("data: ")) {
                if text[at..].contains("\n\n") {
                    break serde_json::from_str::<serde_json::Value>(line).expect("error data is JSON");
                }
            }
        }
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("no error event ({other:?}); stream so far:\n{text}"),
        }
    };
    drop(body);
    assert_eq!(error["code"], "llm_rejected", "{error}");
    let trace_id = error["trace_id"].as_str().expect("the error event names its trace").to_string();
    assert_eq!(header.as_deref(), Some(trace_id.as_str()), "the 202's x-trace-id is the error's trace");
    println!("walkthrough: the error event: {error}");

    // `grep <trace id> .stack/logs/*.log`: the gateway accepted it, the responder gave up.
    let logs = stack_dir.join("logs");
    let lines_of = |prefix: &str| -> Vec<String> {
        std::fs::read_dir(&logs)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .flat_map(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .lines()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .filter(|l| l.contains(&trace_id))
            .collect()
    };
    // Both logs may lag the events a moment: the gateway buffers its info lines for up
    // to 100 ms, and the error event is written before the dead letter (the user hears
    // first), so the responder's "record dead-lettered" line may come after the event.
    let logged = |lines: &[String], what: &str| lines.iter().any(|l| l.contains(what));
    let (mut gateway_lines, mut responder_lines) = (lines_of("gateway"), lines_of("responder"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(logged(&gateway_lines, "message accepted") && logged(&responder_lines, "record dead-lettered"))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        (gateway_lines, responder_lines) = (lines_of("gateway"), lines_of("responder"));
    }
    assert!(logged(&gateway_lines, "message accepted"), "gateway log: {gateway_lines:#?}");
    assert!(
        logged(&responder_lines, "record dead-lettered"),
        "responder log lines with the trace id: {responder_lines:#?}"
    );
    println!(
        "walkthrough: log lines with the trace id:\n{}\n{}",
        gateway_lines.join("\n"),
        responder_lines.join("\n")
    );

    // The dead letter, as Prometheus (and the dashboard) sees it.
    let query = r#"sum(handler_records_total{handler="responder",outcome="dead_lettered"})"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counted = prom.query(query).await;
        if counted.first().and_then(|s| s["value"][1].as_str()).is_some_and(|v| v != "0") {
            println!("walkthrough: {query} = {}", counted[0]["value"][1]);
            break;
        }
        assert!(Instant::now() < deadline, "{query}: {counted:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // The memory worker stored the user's turn: the README's scroll through Qdrant's REST API.
    let scroll = serde_json::json!({
        "filter": {"must": [
            {"key": "user_id", "match": {"value": "anonymous"}},
            {"key": "conversation_id", "match": {"value": conversation}},
        ]},
        "limit": 20,
        "with_payload": true,
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found: serde_json::Value = client
            .post(format!("http://127.0.0.1:{qdrant_rest}/collections/chat_memory/points/scroll"))
            .json(&scroll)
            .send()
            .await
            .expect("Qdrant REST")
            .json()
            .await
            .unwrap_or_default();
        let points = found["result"]["points"].as_array().cloned().unwrap_or_default();
        if points
            .iter()
            .any(|p| p["payload"]["role"] == "user" && p["payload"]["message_id"] == accepted["message_id"])
        {
            println!("walkthrough: Qdrant's scroll: {found}");
            break;
        }
        assert!(Instant::now() < deadline, "the user's turn is not in Qdrant: {found}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_stack_answers_scales_under_load_and_stops_cleanly() {
    let loadtest = workspace_binary("loadtest");
    let dir = tempfile::tempdir().expect("temp dir");
    let stack_dir = dir.path().join("stack");
    let ports: Vec<u16> = (0..8).map(|_| free_port().expect("port")).collect();
    let (kafka, qdrant, llm, gateway, autoscaler) = (ports[0], ports[1], ports[2], ports[3], ports[4]);
    let (gateway_metrics, prometheus, qdrant_rest) = (ports[5], ports[6], ports[7]);
    let marker = format!("STACK_DIR={}", stack_dir.display());
    let mut command = Command::new("bash");
    command
        .arg(repo_root().join("ci/stack.sh"))
        .current_dir(repo_root())
        .env("STACK_DIR", &stack_dir)
        .env("KAFKA_PORT", kafka.to_string())
        .env("QDRANT_PORT", qdrant.to_string())
        .env("QDRANT_REST_PORT", qdrant_rest.to_string())
        .env("LLM_PORT", llm.to_string())
        .env("GATEWAY_PORT", gateway.to_string())
        .env("AUTOSCALER_PORT", autoscaler.to_string())
        .env("GATEWAY_METRICS_PORT", gateway_metrics.to_string())
        .env("PROMETHEUS_PORT", prometheus.to_string())
        .env("PROMETHEUS_SCRAPE_SECS", "1")
        // Short replies and short timings: the whole cycle in about a minute.
        .env("LLM_MAX_TOKENS", "16")
        // The binaries this test run was built with (ci/test.sh builds the workspace).
        .env("CHATSTACK_PREBUILT", "1")
        .env_remove("RATE_LIMIT_PER_MINUTE")
        .env("AUTOSCALER_FLAGS", "--polling-secs 1 --cooldown-secs 10 --scale-down-window-secs 5");
    for external in ["KAFKA_BOOTSTRAP_SERVERS", "QDRANT_URL", "LLM_BASE_URL", "AUTH"] {
        command.env_remove(external);
    }
    let log = dir.path().join("stack.log");
    let mut stack =
        Stack(Process::spawn("ci/stack.sh", command, log.clone(), Signal::SIGINT).expect("spawn"));
    stack
        .0
        .wait_until(Duration::from_secs(600), || {
            std::fs::read_to_string(&log).unwrap_or_default().contains("The chat stack is up")
        })
        .expect("the stack comes up");
    let banner = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(banner.contains(&format!("http://127.0.0.1:{gateway}/")), "prints the chat page URL:\n{banner}");

    // One message, streamed back token by token by the real model.
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{gateway}");
    let accepted: serde_json::Value = client
        .post(format!("{base}/chat"))
        .json(&serde_json::json!({"text": "What is the capital of France?"}))
        .send()
        .await
        .expect("POST /chat")
        .json()
        .await
        .expect("JSON");
    let conversation = accepted["conversation_id"].as_str().expect("conversation_id");
    let response = client
        .get(format!("{base}/stream?conversation_id={conversation}"))
        .send()
        .await
        .expect("GET /stream");
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !text.contains("event: done") {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            other => {
                panic!(
                    "no done event ({other:?}); stream so far:\n{text}\nstack log:\n{}",
                    stack.0.log_tail()
                )
            }
        }
    }
    assert!(text.contains("event: token"), "streamed as tokens:\n{text}");
    drop(body);
    let prom = Prometheus { client: client.clone(), base: format!("http://127.0.0.1:{prometheus}") };
    follow_a_failing_message(&client, &base, &stack_dir, qdrant_rest, &prom).await;

    // Load: the responders go from zero to several replicas, then back to zero.
    let out = dir.path().join("load");
    let mut load = Command::new(&loadtest);
    // 18 messages: a lag of up to 18 at lagThreshold 8 asks for 3 responders, while one
    // llama-server thread answers them all in well under the drain time.
    load.args([
        "--url",
        &base,
        "--conversations",
        "9",
        "--rate",
        "3",
        "--duration",
        "6",
        "--drain-secs",
        "150",
    ])
    .args(["--kafka", &format!("127.0.0.1:{kafka}")])
    .args(["--autoscaler-url", &format!("http://127.0.0.1:{autoscaler}")])
    .arg("--out")
    .arg(&out);
    let mut peak = 0;
    let mut child =
        Process::spawn("loadtest", load, dir.path().join("loadtest.log"), Signal::SIGINT).expect("loadtest");
    let deadline = Instant::now() + Duration::from_secs(200);
    let mut every_job_up = None;
    let status = loop {
        peak = peak.max(responder_replicas(&client, autoscaler).await.unwrap_or(0));
        if every_job_up.is_none() {
            every_job_up = prom.every_job_up(&JOBS).await;
        }
        if let Ok(status) = child.wait_exit(Duration::from_millis(10)) {
            break status;
        }
        assert!(Instant::now() < deadline, "loadtest still running: {}", child.log_tail());
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(status.success(), "loadtest failed: {}", child.log_tail());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report.json"))
            .expect("JSON");
    let counts = &report["counts"];
    assert!(counts["accepted"].as_u64().unwrap_or(0) >= 15, "{report}");
    assert_eq!(counts["unanswered"], 0, "every accepted message answered: {report}");
    assert_eq!(counts["accepted"], counts["answered"], "answered, not failed: {report}");
    assert!(peak >= 2, "the responders scaled beyond one replica (peak {peak})");
    for plot in ["scaling.svg", "latency.svg"] {
        assert!(std::fs::metadata(out.join(plot)).map(|m| m.len() > 1000).unwrap_or(false), "{plot} written");
    }
    let targets = every_job_up.unwrap_or_else(|| panic!("never saw every job up: {:?}", JOBS));
    assert!(targets >= JOBS.len(), "{targets} targets");
    let missing = prom.missing_series(&monitoring_expressions()).await;
    assert!(
        missing.is_empty(),
        "series the dashboard or the alert rules name, absent from live data:\n{}",
        missing.join("\n")
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while responder_replicas(&client, autoscaler).await != Some(0) {
        assert!(Instant::now() < deadline, "responders not back to zero: {}", stack.0.log_tail());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Ctrl-C: everything the command started stops, nothing keeps listening.
    stack.0.stop_with(Signal::SIGINT, Duration::from_secs(90)).expect("ci/stack.sh stops on Ctrl-C");
    let left = processes_with(&marker);
    assert!(left.is_empty(), "left running: {left:#?}");
    for port in ports {
        assert!(!port_open(port), "port {port} still open");
    }
}
