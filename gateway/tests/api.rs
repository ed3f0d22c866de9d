//! The gateway's HTTP API against a real broker: accepted messages, streams, resume,
//! ownership, bad input, rate limits, broker outages and shutdown.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::*;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use platform::{events::decode, events::UserMessage, topics};
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    Message,
};
use serde_json::json;
use testkit::Signal;
use uuid::Uuid;

/// Reads every user message currently in `user_messages` (new group, from the start).
async fn stored_messages(kafka: &Kafka, expect: usize) -> Vec<UserMessage> {
    let consumer: StreamConsumer =
        kafka.settings.stream_consumer(&format!("inspect-{}", Uuid::new_v4())).expect("consumer");
    consumer.subscribe(&[topics::USER_MESSAGES]).expect("subscribe");
    let mut out = Vec::new();
    // Expecting nothing, a few seconds of silence (the group join takes ~20 ms here)
    // is the answer; otherwise wait for the first record, then for stragglers.
    let mut wait = Duration::from_secs(if expect == 0 { 3 } else { 20 });
    while let Ok(Ok(record)) = tokio::time::timeout(wait, consumer.recv()).await {
        out.push(decode::<UserMessage>(record.payload().expect("payload")).expect("a user message"));
        if out.len() >= expect {
            wait = Duration::from_secs(2);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_is_stored_then_its_reply_streams_token_by_token() {
    let kafka = Kafka::start().await;
    let gateway = Gateway::start(&kafka, &[]);
    let client = reqwest::Client::new();
    let alice = token("alice");

    let (status, body) =
        post_chat(&client, &gateway, &alice, json!({"text": "What is the capital of France?"})).await;
    assert_eq!(status, 202, "{body}");
    let conversation_id = body["conversation_id"].as_str().expect("conversation_id").to_string();
    assert_eq!(body["stream_url"], format!("/stream?conversation_id={conversation_id}"));

    let stored = stored_messages(&kafka, 1).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].text, "What is the capital of France?");
    assert_eq!(stored[0].user_id, "alice");
    assert_eq!(stored[0].message_id.to_string(), body["message_id"].as_str().unwrap());

    // The stream opens after the reply started: the replay window covers it.
    let message = accepted_message(&body, "alice");
    let attempt = Uuid::new_v4();
    kafka.reply(&message, attempt, reply_bodies(&["Par"])[..1].to_vec()).await;
    let mut stream = open_stream(&client, &gateway, &alice, &conversation_id, None).await;
    kafka.reply(&message, attempt, reply_bodies(&["Par", "is."])[1..].to_vec()).await;

    let mut text = String::new();
    let mut ids = BTreeSet::new();
    loop {
        let event = next_event(&mut stream).await;
        assert!(ids.insert(event.id.clone()), "repeated id {}", event.id);
        let data: serde_json::Value = serde_json::from_str(&event.data).expect("JSON data");
        assert_eq!(data["message_id"], body["message_id"]);
        match event.event.as_str() {
            "token" => text.push_str(data["delta"].as_str().unwrap()),
            "done" => {
                assert_eq!(data["text"], "Paris.");
                break;
            }
            other => panic!("unexpected event {other}"),
        }
    }
    assert_eq!(text, "Paris.");

    let metrics = client.get(gateway.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("gateway_chat_requests_total"), "{metrics}");
    assert!(metrics.contains("gateway_open_streams"), "{metrics}");
    assert!(metrics.contains("gateway_time_to_first_token_seconds_count 1"), "{metrics}");
    assert!(metrics.contains("gateway_reply_seconds_count 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn last_event_id_resumes_without_gaps_or_repeats() {
    let kafka = Kafka::start().await;
    let gateway = Gateway::start(&kafka, &[]);
    let client = reqwest::Client::new();
    let alice = token("alice");
    let (_, body) = post_chat(&client, &gateway, &alice, json!({"text": "count"})).await;
    let conversation_id = body["conversation_id"].as_str().unwrap().to_string();
    let message = accepted_message(&body, "alice");
    let words = ["one ", "two ", "three ", "four"];
    kafka.reply(&message, Uuid::new_v4(), reply_bodies(&words)).await;

    let mut first = open_stream(&client, &gateway, &alice, &conversation_id, None).await;
    let a = next_event(&mut first).await;
    let b = next_event(&mut first).await;
    drop(first);
    let mut resumed = open_stream(&client, &gateway, &alice, &conversation_id, Some(&b.id)).await;
    let mut kinds = vec![a.event.clone(), b.event.clone()];
    let mut deltas = vec![a.data.clone(), b.data.clone()];
    loop {
        let e = next_event(&mut resumed).await;
        kinds.push(e.event.clone());
        deltas.push(e.data.clone());
        if e.event == "done" {
            break;
        }
    }
    assert_eq!(kinds, ["token", "token", "token", "token", "done"]);
    let text: String = deltas[..4]
        .iter()
        .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap()["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, "one two three four");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_works_on_a_replica_that_did_not_take_the_message() {
    let kafka = Kafka::start().await;
    let a = Gateway::start(&kafka, &[]);
    let b = Gateway::start(&kafka, &[]);
    let client = reqwest::Client::new();
    let alice = token("alice");
    let (status, body) = post_chat(&client, &a, &alice, json!({"text": "hello"})).await;
    assert_eq!(status, 202);
    let conversation_id = body["conversation_id"].as_str().unwrap().to_string();
    let mut on_b = open_stream(&client, &b, &alice, &conversation_id, None).await;
    let mut on_a = open_stream(&client, &a, &alice, &conversation_id, None).await;
    kafka.reply(&accepted_message(&body, "alice"), Uuid::new_v4(), reply_bodies(&["hi ", "there"])).await;
    for stream in [&mut on_a, &mut on_b] {
        let kinds = [next_event(stream).await, next_event(stream).await, next_event(stream).await];
        assert_eq!(kinds.map(|e| e.event), ["token", "token", "done"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_message_never_mixes_two_attempts() {
    let kafka = Kafka::start().await;
    let gateway = Gateway::start(&kafka, &[]);
    let client = reqwest::Client::new();
    let alice = token("alice");
    let (_, body) = post_chat(&client, &gateway, &alice, json!({"text": "hello"})).await;
    let conversation_id = body["conversation_id"].as_str().unwrap().to_string();
    let message = accepted_message(&body, "alice");
    let mut stream = open_stream(&client, &gateway, &alice, &conversation_id, None).await;
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    // The first attempt dies after one token; the redelivery answers in full.
    kafka.reply(&message, first, reply_bodies(&["Lo"])[..1].to_vec()).await;
    kafka.reply(&message, second, reply_bodies(&["Hel", "lo"])).await;
    kafka.reply(&message, first, reply_bodies(&["Lo", "ndon"])[1..].to_vec()).await;

    let mut shown = String::new();
    loop {
        let e = next_event(&mut stream).await;
        let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        match e.event.as_str() {
            "token" => shown.push_str(data["delta"].as_str().unwrap()),
            "reset" => shown.clear(),
            "done" => {
                assert_eq!(data["attempt"], second.to_string());
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(shown, "Hello");
}

#[tokio::test(flavor = "multi_thread")]
async fn other_users_get_404_and_see_nothing() {
    let kafka = Kafka::start().await;
    let gateway = Gateway::start(&kafka, &[]);
    let client = reqwest::Client::new();
    let (_, body) = post_chat(&client, &gateway, &token("alice"), json!({"text": "secret plans"})).await;
    let conversation_id = body["conversation_id"].as_str().unwrap();
    let mallory = token("mallory");

    let response = client
        .get(gateway.url(&format!("/stream?conversation_id={conversation_id}")))
        .bearer_auth(&mallory)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let (status, error) =
        post_chat(&client, &gateway, &mallory, json!({"conversation_id": conversation_id, "text": "me too"}))
            .await;
    assert_eq!(status, 404);
    assert_eq!(error["error"]["code"], "unknown_conversation");
    // A made-up conversation id is just as unknown.
    let (status, _) =
        post_chat(&client, &gateway, &mallory, json!({"conversation_id": Uuid::new_v4(), "text": "x"})).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_4xx_that_says_what_is_wrong() {
    let kafka = Kafka::start().await;
    let gateway = Gateway::start(&kafka, &[("MAX_MESSAGE_BYTES", "100")]);
    let client = reqwest::Client::new();
    let alice = token("alice");
    let post_raw = |body: &'static str, token: Option<String>| {
        let mut request =
            client.post(gateway.url("/chat")).header("content-type", "application/json").body(body);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        request.send()
    };
    let cases: Vec<(&str, reqwest::Response, u16, &str)> = vec![
        ("malformed JSON", post_raw("{\"text\":", Some(alice.clone())).await.unwrap(), 400, "malformed_json"),
        ("wrong type", post_raw("{\"text\": 42}", Some(alice.clone())).await.unwrap(), 422, "invalid_body"),
        ("missing text", post_raw("{}", Some(alice.clone())).await.unwrap(), 422, "invalid_body"),
        (
            "empty text",
            post_raw("{\"text\": \"   \"}", Some(alice.clone())).await.unwrap(),
            422,
            "empty_text",
        ),
        (
            "oversized text",
            client
                .post(gateway.url("/chat"))
                .bearer_auth(&alice)
                .json(&json!({"text": "x".repeat(101)}))
                .send()
                .await
                .unwrap(),
            413,
            "text_too_long",
        ),
        (
            // Over the body limit (2 × MAX_MESSAGE_BYTES + 1 KiB) but small enough to be
            // sent whole before the server answers 413 and closes.
            "oversized body",
            client
                .post(gateway.url("/chat"))
                .bearer_auth(&alice)
                .json(&json!({"text": "x".repeat(1500)}))
                .send()
                .await
                .unwrap(),
            413,
            "body_too_large",
        ),
        ("no token", post_raw("{\"text\": \"hi\"}", None).await.unwrap(), 401, "unauthorized"),
        (
            "expired token",
            post_raw("{\"text\": \"hi\"}", Some(token_with("alice", -600, JWT_SECRET))).await.unwrap(),
            401,
            "unauthorized",
        ),
        (
            "forged token",
            post_raw(
                "{\"text\": \"hi\"}",
                Some(token_with("alice", 600, "another-secret-another-secret-0123456")),
            )
            .await
            .unwrap(),
            401,
            "unauthorized",
        ),
        (
            // {"alg":"none"} with no signature.
            "alg none",
            post_raw(
                "{\"text\": \"hi\"}",
                Some(
                    "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.".into(),
                ),
            )
            .await
            .unwrap(),
            401,
            "unauthorized",
        ),
    ];
    for (name, response, status, code) in cases {
        assert_eq!(response.status().as_u16(), status, "{name}");
        let body: serde_json::Value =
            response.json().await.unwrap_or_else(|e| panic!("{name}: no JSON body: {e}"));
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}: {body}");
    }
    let stream = client
        .get(gateway.url("/stream?conversation_id=not-a-uuid"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 400);
    assert!(stored_messages(&kafka, 0).await.is_empty(), "a rejected request was published");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_request_with_the_same_idempotency_key_publishes_once() {
    let kafka = Kafka::start().await;
    let gateway = Gateway::start(&kafka, &[]);
    let client = reqwest::Client::new();
    let alice = token("alice");
    let send = |text: &'static str| {
        client
            .post(gateway.url("/chat"))
            .bearer_auth(&alice)
            .header("idempotency-key", "retry-me-1")
            .json(&json!({"text": text}))
            .send()
    };
    let first: serde_json::Value = send("hello").await.unwrap().json().await.unwrap();
    let again = send("hello").await.unwrap();
    assert_eq!(again.status(), 202);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(first, again);
    assert_eq!(send("something else").await.unwrap().status(), 422);
    assert_eq!(stored_messages(&kafka, 1).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_messages_get_429_with_retry_after() {
    let kafka = Kafka::start().await;
    let gateway = Gateway::start(&kafka, &[("RATE_LIMIT_PER_MINUTE", "6"), ("RATE_LIMIT_BURST", "3")]);
    let client = reqwest::Client::new();
    let alice = token("alice");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = client
            .post(gateway.url("/chat"))
            .bearer_auth(&alice)
            .json(&json!({"text": "hi"}))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            let retry: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=20).contains(&retry), "Retry-After {retry}");
        }
    }
    assert_eq!(statuses, [202, 202, 202, 429]);
    // Another user has a budget of their own.
    let (status, _) = post_chat(&client, &gateway, &token("bob"), json!({"text": "hi"})).await;
    assert_eq!(status, 202);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_outage_gives_503_never_202_and_recovers() {
    let mut kafka = Kafka::start().await;
    // Retries below would exhaust the default per-user budget.
    let gateway = Gateway::start(&kafka, &[("RATE_LIMIT_PER_MINUTE", "0"), ("KAFKA_IDEMPOTENCE", "false")]);
    let client = reqwest::Client::new();
    let alice = token("alice");
    kafka.broker.stop().expect("stop broker");

    let response = client
        .post(gateway.url("/chat"))
        .bearer_auth(&alice)
        .json(&json!({"text": "anyone?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let ready = client.get(gateway.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(client.get(gateway.url("/health")).send().await.unwrap().status(), 200);

    kafka.broker.start_again().expect("restart broker");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = post_chat(&client, &gateway, &alice, json!({"text": "back?"})).await;
        if status == 202 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway did not recover within 30 s; its log:\n{}\nthe broker's log:\n{}",
            gateway.process.log_tail(),
            kafka.broker.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let texts: Vec<String> = stored_messages(&kafka, 1).await.into_iter().map(|m| m.text).collect();
    assert!(texts.iter().all(|t| t == "back?"), "a message answered 503 was stored: {texts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_open_streams_with_a_final_event_and_exits_cleanly() {
    let kafka = Kafka::start().await;
    let mut gateway = Gateway::start(&kafka, &[]);
    let client = reqwest::Client::new();
    let alice = token("alice");
    let (_, body) = post_chat(&client, &gateway, &alice, json!({"text": "hi"})).await;
    let mut stream =
        open_stream(&client, &gateway, &alice, body["conversation_id"].as_str().unwrap(), None).await;
    gateway.process.signal(Signal::SIGTERM);
    assert_eq!(next_event(&mut stream).await.event, "shutdown");
    let status = gateway.process.wait_exit(Duration::from_secs(15)).expect("exits");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_matches_the_routes_served() {
    let kafka = Kafka::start().await;
    let gateway = Gateway::start(&kafka, &[]);
    let client = reqwest::Client::new();
    let response = client.get(gateway.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let doc: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    let served = [
        ("/chat", "post"),
        ("/stream", "get"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/", "get"),
        ("/v1/chat/completions", "post"),
    ];
    assert_eq!(paths.len(), served.len(), "documented paths: {:?}", paths.keys().collect::<Vec<_>>());
    for (path, method) in served {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} is not documented");
        // And the router serves it (unauthenticated calls get 401, not 404/405).
        let status = client
            .request(method.to_uppercase().parse().unwrap(), gateway.url(path))
            .send()
            .await
            .unwrap()
            .status();
        assert!(status != 404 && status != 405, "{method} {path} answered {status}");
    }
    let codes: Vec<&str> = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
        ["enum"]
        .as_array()
        .expect("error codes")
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    for code in [
        "malformed_json",
        "invalid_body",
        "empty_text",
        "text_too_long",
        "body_too_large",
        "unauthorized",
        "unknown_conversation",
        "rate_limited",
        "unavailable",
    ] {
        assert!(codes.contains(&code), "error code {code} is not documented");
    }
}

/// Runs openssl (the test's key factory); panics when it fails.
fn openssl(args: &[&str]) -> String {
    let output = std::process::Command::new("openssl").args(args).output().expect("openssl");
    assert!(output.status.success(), "openssl {args:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A new RSA key pair in `dir`: (private PEM path, public PEM path).
fn rsa_key_pair(dir: &std::path::Path, name: &str) -> (String, String) {
    let private = dir.join(format!("{name}.pem")).to_str().expect("path").to_string();
    let public = dir.join(format!("{name}.pub.pem")).to_str().expect("path").to_string();
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", &private]);
    openssl(&["pkey", "-in", &private, "-pubout", "-out", &public]);
    (private, public)
}

/// An RS256 token for `user` signed with the private key at `private`, with `kid`.
fn rs256_token(private: &str, kid: Option<&str>, user: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(
        &header,
        &json!({"sub": user, "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(private).unwrap()).expect("private key"),
    )
    .expect("token")
}

#[tokio::test(flavor = "multi_thread")]
async fn rs256_tokens_are_checked_against_the_public_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (private, public) = rsa_key_pair(dir.path(), "key");
    let kafka = Kafka::start().await;
    let gateway = Gateway::start(&kafka, &[("JWT_ALGORITHM", "rs256"), ("JWT_PUBLIC_KEY_FILE", &public)]);
    let signed = rs256_token(&private, None, "carol");
    let client = reqwest::Client::new();
    let (status, body) = post_chat(&client, &gateway, &signed, json!({"text": "hi"})).await;
    assert_eq!(status, 202, "{body}");
    // An HS256 token (here signed with the old shared secret) is refused.
    let (status, _) = post_chat(&client, &gateway, &token("carol"), json!({"text": "hi"})).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_whose_body_never_arrives_times_out_with_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let kafka = Kafka::start().await;
    let gateway = Gateway::start(&kafka, &[("REQUEST_TIMEOUT_SECS", "1")]);
    let address = gateway.base.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&address).await.expect("connect");
    let head = format!(
        "POST /chat HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"text\":",
        token("alice")
    );
    socket.write_all(head.as_bytes()).await.expect("send the head");
    let started = std::time::Instant::now();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut answer))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn post_chat_with_stream_true_answers_with_that_messages_reply_over_http2_too() {
    let kafka = Kafka::start().await;
    let gateway = Gateway::start(&kafka, &[]);
    let alice = token("alice");
    // Cleartext HTTP/2 (prior knowledge), as a proxy that multiplexes streams sends it;
    // HTTP/1.1 is what every other test here uses.
    let client = reqwest::Client::builder().http2_prior_knowledge().build().expect("client");
    let (status, first) = post_chat(&client, &gateway, &alice, json!({"text": "first"})).await;
    assert_eq!(status, 202, "{first}");
    let conversation_id = first["conversation_id"].as_str().expect("conversation_id").to_string();

    let response = client
        .post(gateway.url("/chat?stream=true"))
        .bearer_auth(&alice)
        .json(&json!({"conversation_id": conversation_id, "text": "second"}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = Box::pin(response.bytes_stream().eventsource().map(|e| e.expect("well-formed SSE")));
    let accepted = next_event(&mut events).await;
    assert_eq!(accepted.event, "accepted");
    let body: serde_json::Value = serde_json::from_str(&accepted.data).expect("JSON");
    assert_eq!(body["conversation_id"], conversation_id.as_str());
    assert_eq!(body["stream_url"], format!("/stream?conversation_id={conversation_id}"));
    assert_ne!(body["message_id"], first["message_id"]);
    assert_eq!(stored_messages(&kafka, 2).await.len(), 2);

    // The other message of the same conversation is answered in between: not ours.
    kafka.reply(&accepted_message(&first, "alice"), Uuid::new_v4(), reply_bodies(&["Not ", "this."])).await;
    kafka.reply(&accepted_message(&body, "alice"), Uuid::new_v4(), reply_bodies(&["Th", "is."])).await;
    let mut kinds = Vec::new();
    let mut text = String::new();
    while let Some(event) =
        tokio::time::timeout(Duration::from_secs(15), events.next()).await.expect("events")
    {
        let data: serde_json::Value = serde_json::from_str(&event.data).expect("JSON data");
        assert_eq!(data["message_id"], body["message_id"], "another message's event: {data}");
        assert!(!event.id.is_empty(), "reply events carry ids for Last-Event-ID");
        if event.event == "token" {
            text.push_str(data["delta"].as_str().expect("delta"));
        }
        kinds.push(event.event);
    }
    // It ended by itself right after `done`.
    assert_eq!(kinds, ["token", "token", "done"]);
    assert_eq!(text, "This.");

    // A query that is not a boolean is a 400 that says so, and publishes nothing.
    let response = client
        .post(gateway.url("/chat?stream=maybe"))
        .bearer_auth(&alice)
        .json(&json!({"text": "third"}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 400);
    let error: serde_json::Value = response.json().await.expect("JSON error");
    assert_eq!(error["error"]["code"], "invalid_query", "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rs256_tokens_are_checked_against_the_jwks_key_their_kid_names() {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    let dir = tempfile::tempdir().expect("temp dir");
    let (old_key, _) = rsa_key_pair(dir.path(), "old");
    let (new_key, _) = rsa_key_pair(dir.path(), "new");
    // The JWKS an identity provider publishes: each key's modulus and exponent.
    let jwk = |private: &str, kid: &str| {
        let modulus = openssl(&["rsa", "-in", private, "-noout", "-modulus"]);
        let hex = modulus.trim().trim_start_matches("Modulus=");
        let n: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": URL_SAFE_NO_PAD.encode(n), "e": "AQAB"})
    };
    let jwks = dir.path().join("jwks.json");
    let ec = json!({"kty": "EC", "crv": "P-256", "kid": "ec", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
    std::fs::write(&jwks, json!({"keys": [jwk(&old_key, "2025"), ec, jwk(&new_key, "2026")]}).to_string())
        .expect("jwks");

    let kafka = Kafka::start().await;
    let gateway =
        Gateway::start(&kafka, &[("JWT_ALGORITHM", "rs256"), ("JWT_JWKS_FILE", jwks.to_str().unwrap())]);
    let client = reqwest::Client::new();
    for (token, expected, why) in [
        (rs256_token(&new_key, Some("2026"), "dave"), 202, "the current key"),
        (rs256_token(&old_key, Some("2025"), "dave"), 202, "the previous key, still published"),
        (rs256_token(&old_key, Some("2026"), "dave"), 401, "signed by another key than its kid names"),
        (rs256_token(&new_key, Some("2027"), "dave"), 401, "an unknown kid"),
        (rs256_token(&new_key, None, "dave"), 401, "no kid"),
        (token("dave"), 401, "HS256"),
    ] {
        let (status, body) = post_chat(&client, &gateway, &token, json!({"text": "hi"})).await;
        assert_eq!(status, expected, "{why}: {body}");
        if expected == 401 {
            assert!(
                body["error"]["message"].as_str().is_some_and(|m| m.starts_with("invalid token")),
                "{body}"
            );
        }
    }
}
