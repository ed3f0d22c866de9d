//! The README's first command end to end: `ci/stack.sh` from a clean state brings up
//! the broker, Qdrant, llama-server with SmolLM2, the gateway and the autoscaler; a chat
//! message gets a streamed answer from the real model; `loadtest` drives the responders
//! from zero to several replicas and back to zero with every accepted message
//! answered; Ctrl-C leaves nothing behind.

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

#[tokio::test(flavor = "multi_thread")]
async fn the_local_stack_answers_scales_under_load_and_stops_cleanly() {
    let loadtest = workspace_binary("loadtest");
    let dir = tempfile::tempdir().expect("temp dir");
    let stack_dir = dir.path().join("stack");
    let ports: Vec<u16> = (0..5).map(|_| free_port().expect("port")).collect();
    let (kafka, qdrant, llm, gateway, autoscaler) = (ports[0], ports[1], ports[2], ports[3], ports[4]);
    let marker = format!("STACK_DIR={}", stack_dir.display());
    let mut command = Command::new("bash");
    command
        .arg(repo_root().join("ci/stack.sh"))
        .current_dir(repo_root())
        .env("STACK_DIR", &stack_dir)
        .env("KAFKA_PORT", kafka.to_string())
        .env("QDRANT_PORT", qdrant.to_string())
        .env("LLM_PORT", llm.to_string())
        .env("GATEWAY_PORT", gateway.to_string())
        .env("AUTOSCALER_PORT", autoscaler.to_string())
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
    let status = loop {
        peak = peak.max(responder_replicas(&client, autoscaler).await.unwrap_or(0));
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
