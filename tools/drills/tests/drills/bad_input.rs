//! Drill 5: bad input at every door — poison Kafka records, JWT attacks, and the HTTP
//! API fuzzed from its own OpenAPI document.

use std::{
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use drills::{
    stack::{load, wait_for, JWT_SECRET},
    Figures, Stack,
};
use jsonwebtoken::{Algorithm, EncodingKey};
use platform::{
    events::{encode as encode_event, UserMessage},
    topics,
};
use rdkafka::producer::FutureRecord;
use serde_json::{json, Value};
use testkit::{fake_llm::FakeLlm, which, LlamaServer};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn poison_records_are_dead_lettered_by_every_group_and_processing_continues() {
    let llm = LlamaServer::chat().expect("llama-server");
    let mut stack = Stack::start(llm.base_url()).await.expect("stack");
    let gateway = stack.add_gateway(&[]).expect("gateway").url();
    stack.add_responder(&[]).expect("responder");
    stack.add_memory(&[]).expect("memory");

    let valid = UserMessage::new(Uuid::new_v4(), "mallory", "hello");
    let mut wrong_version: Value = serde_json::from_slice(&encode_event(&valid)).expect("json");
    wrong_version["v"] = json!(99);
    let mut oversized: Value = serde_json::from_slice(&encode_event(&valid)).expect("json");
    oversized["text"] = json!("x".repeat(300 * 1024));
    let poison_messages: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("malformed JSON", Some(b"{\"v\":1, \"text\": ".to_vec())),
        ("wrong version", Some(wrong_version.to_string().into_bytes())),
        ("not UTF-8", Some(vec![0xff, 0xfe, 0x00, 0x80, 0xc3])),
        ("oversized", Some(oversized.to_string().into_bytes())),
        ("no value", None),
    ];
    let poison_replies: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("garbage reply", Some(b"\x00\x01garbage".to_vec())),
        ("wrong version reply", Some(br#"{"v":7,"type":"done"}"#.to_vec())),
    ];
    let producer = stack.kafka().producer().expect("producer");
    for (topic, records) in
        [(topics::USER_MESSAGES, &poison_messages), (topics::MODEL_RESPONSES, &poison_replies)]
    {
        for (_, payload) in records.iter() {
            let key = Uuid::new_v4().to_string();
            let mut record = FutureRecord::<String, Vec<u8>>::to(topic).key(&key);
            if let Some(payload) = payload {
                record = record.payload(payload);
            }
            producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("poison stored");
        }
    }
    // Then real traffic: it must get through behind the poison.
    let report = load(&gateway, 2, 4.0, 1.0, 60.0).await.expect("load test");

    let user_dlq = topics::dlq(topics::USER_MESSAGES);
    let reply_dlq = topics::dlq(topics::MODEL_RESPONSES);
    // Both groups read user_messages; only memory reads model_responses.
    let expected = (2 * poison_messages.len() as i64, poison_replies.len() as i64);
    let lettered = wait_for("dead letters", Duration::from_secs(60), async || {
        (stack.records_in(&user_dlq).unwrap_or(0), stack.records_in(&reply_dlq).unwrap_or(0)) == expected
    })
    .await;
    let drained = wait_for("groups drained", Duration::from_secs(60), async || {
        topics::HANDLER_GROUPS.iter().all(|(g, t)| stack.group_lag(g, t).is_ok_and(|l| l == 0))
    })
    .await;
    let found = (stack.records_in(&user_dlq).unwrap_or(-1), stack.records_in(&reply_dlq).unwrap_or(-1));
    let mut figures = Figures::new("poison-records");
    figures
        .add("poison_user_messages", poison_messages.len())
        .add("poison_replies", poison_replies.len())
        .add("user_messages_dlq", found.0)
        .add("model_responses_dlq", found.1)
        .load("after", &report);
    figures.print();
    lettered.unwrap_or_else(|e| panic!("{e:#}: {}", figures.line()));
    drained.unwrap_or_else(|e| panic!("{e:#}: {}", figures.line()));
    let c = &report.counts;
    assert!(c.accepted >= 2 && c.answered == c.accepted, "processing continues: {}", report.table());
}

/// A JWT with any header and claims, signed with HS256 under `key` whatever the header
/// says (or not signed at all).
fn forge(header: Value, claims: Value, key: Option<&[u8]>) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let signing_input = format!("{}.{}", part(&header), part(&claims));
    let signature = key
        .map(|key| {
            jsonwebtoken::crypto::sign(
                signing_input.as_bytes(),
                &EncodingKey::from_secret(key),
                Algorithm::HS256,
            )
            .expect("sign")
        })
        .unwrap_or_default();
    format!("{signing_input}.{signature}")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_attacks_are_refused_with_a_json_error_at_every_route() {
    let llm = FakeLlm::start().await.expect("fake LLM");
    let mut stack = Stack::start(llm.url()).await.expect("stack");
    let gateway = stack.add_gateway(&[]).expect("gateway").url();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let secret = JWT_SECRET.as_bytes();
    let hs256_header = json!({"alg": "HS256", "typ": "JWT"});
    let claims = |sub: &str, exp: u64| json!({"sub": sub, "iat": now(), "exp": exp});
    let alice = forge(hs256_header.clone(), claims("alice", now() + 600), Some(secret));
    let bob = forge(hs256_header.clone(), claims("bob", now() + 600), Some(secret));

    // Alice's conversation, which the attacks below try to reach.
    let (conversation, _) = stack.gateways[0].post_message(&alice, "my secret").await.expect("202");

    let attacks: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("not a JWT", Some("not-a-jwt".into())),
        ("alg none", Some(forge(json!({"alg": "none", "typ": "JWT"}), claims("alice", now() + 600), None))),
        (
            "alg none, signed anyway",
            Some(forge(json!({"alg": "none"}), claims("alice", now() + 600), Some(secret))),
        ),
        (
            "HS512 switch",
            Some(forge(json!({"alg": "HS512", "typ": "JWT"}), claims("alice", now() + 600), Some(secret))),
        ),
        (
            "wrong key",
            Some(forge(
                hs256_header.clone(),
                claims("alice", now() + 600),
                Some(b"guessed-key-guessed-key-guessed-key!!"),
            )),
        ),
        ("expired", Some(forge(hs256_header.clone(), claims("alice", now() - 3600), Some(secret)))),
        (
            "not valid yet",
            Some(forge(
                hs256_header.clone(),
                json!({"sub": "alice", "iat": now(), "nbf": now() + 3600, "exp": now() + 7200}),
                Some(secret),
            )),
        ),
        ("no subject", Some(forge(hs256_header.clone(), json!({"exp": now() + 600}), Some(secret)))),
        (
            "tampered claims",
            Some({
                let parts: Vec<&str> = bob.split('.').collect();
                let forged = URL_SAFE_NO_PAD.encode(claims("alice", now() + 600).to_string());
                format!("{}.{forged}.{}", parts[0], parts[2])
            }),
        ),
    ];
    let mut refused = 0;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut check = |what: String, status: u16, body: &str, expected: &[u16]| {
        let code = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|b| b["error"]["code"].as_str().map(str::to_string));
        assert!(expected.contains(&status), "{what}: got {status} {body}");
        assert!(code.is_some(), "{what}: the refusal is a JSON error: {body}");
        *statuses.entry(status).or_default() += 1;
        refused += 1;
    };
    let routes = [
        ("POST", "/chat".to_string(), Some(json!({"conversation_id": conversation, "text": "hi"}))),
        ("GET", format!("/stream?conversation_id={conversation}"), None),
        (
            "POST",
            "/v1/chat/completions".to_string(),
            Some(json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]})),
        ),
    ];
    for (name, token) in &attacks {
        for (method, path, body) in &routes {
            let (status, text) = call(&client, &gateway, method, path, body, token.as_deref()).await;
            check(format!("{name} on {method} {path}"), status, &text, &[401]);
        }
    }
    // A valid token of another user reaches nothing of Alice's conversation.
    for (method, path, body) in &routes[..2] {
        let (status, text) = call(&client, &gateway, method, path, body, Some(&bob)).await;
        check(format!("another user's conversation on {method} {path}"), status, &text, &[404]);
    }
    let mut figures = Figures::new("jwt-attacks");
    figures
        .add("attacks", attacks.len() + 1)
        .add("requests_refused", refused)
        .add("statuses", format!("{statuses:?}"));
    figures.print();
}

#[tokio::test(flavor = "multi_thread")]
async fn fuzzing_the_http_api_from_its_openapi_document_finds_no_5xx_and_no_undocumented_answer() {
    let schemathesis = which("schemathesis").expect(
        "schemathesis is not on PATH: ci/test.sh installs it (eval \"$(ci/deps/validators.sh ensure)\")",
    );
    // An LLM that answers at once (the subject is the HTTP API; /v1 waits for replies).
    let llm = FakeLlm::start().await.expect("fake LLM");
    let mut stack = Stack::start(llm.url()).await.expect("stack");
    let gateway = stack.add_gateway(&[]).expect("gateway").url();
    // Every 202 is a message to answer; /v1 waits for its reply behind them.
    stack.add_responder(&[("HANDLER_CONCURRENCY", "32")]).expect("responder");
    let token = loadtest::auth::mint(JWT_SECRET, "fuzzer", Duration::from_secs(3600)).expect("token");
    let (conversation, _) =
        stack.gateways[0].post_message(&token, "a conversation for the fuzzer").await.expect("202");

    let reports = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let output = tokio::task::block_in_place(|| {
        Command::new(schemathesis)
            // It keeps a cache in its working directory: not in the checkout.
            .current_dir(reports.path())
            .env("FUZZ_CONVERSATION_ID", conversation.to_string())
            .arg("--config-file")
            .arg(testkit::repo_root().join("ci/schemathesis.toml"))
            .args(["run", &format!("{gateway}/openapi.json")])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args(["--checks", "all", "--mode", "all", "--workers", "1", "--seed", "1"])
            // A conversation id stays the caller's after DELETE /conversations/{id}:
            // reading it again is an empty history (200; new messages may follow) and
            // deleting again is 202. It is not a resource that is gone (the only DELETEs).
            .args(["--exclude-checks", "use_after_free"])
            .args(["--max-examples", "50", "--max-time", "60", "--max-response-time", "5"])
            .args(["--continue-on-failure", "--report", "har", "--report-dir"])
            .arg(reports.path())
            .output()
    })
    .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The HAR report (a .json file) holds every request the fuzzer sent; the last line of its output
    // sums up failures, warnings and time.
    let requests = std::fs::read_dir(reports.path())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| serde_json::from_slice::<Value>(&std::fs::read(e.path()).ok()?).ok())
        .map(|har| har["log"]["entries"].as_array().map_or(0, Vec::len))
        .sum::<usize>();
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("?");
    let last = last.trim().trim_matches('=').trim().to_string();
    let mut figures = Figures::new("http-fuzzing");
    figures
        .add("exit", output.status.code().unwrap_or(-1))
        .add("requests", requests)
        .add("summary", last)
        .secs("elapsed", started.elapsed().as_secs_f64())
        .add("gateway_errors_logged", stack.gateways[0].process.log().matches(" ERROR ").count());
    figures.print();
    assert!(requests >= 100, "the fuzzer got going: {}", figures.line());
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stack.gateways[0].process.log().matches("panicked").count() == 0, "the gateway never panicked");
}

/// One request to the gateway; its status and body.
async fn call(
    client: &reqwest::Client,
    gateway: &str,
    method: &str,
    path: &str,
    body: &Option<Value>,
    token: Option<&str>,
) -> (u16, String) {
    let url = format!("{gateway}{path}");
    let mut request = if method == "GET" { client.get(url) } else { client.post(url) };
    if let Some(body) = body {
        request = request.json(body);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("an answer");
    (response.status().as_u16(), response.text().await.unwrap_or_default())
}
