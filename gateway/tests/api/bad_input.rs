//! Bad input: every class gets its 4xx JSON error, and a body that never arrives a 408.

use std::time::Duration;

use serde_json::json;
use testkit::kafka::Kafka;

use crate::{
    common::{token, token_with, Gateway, JWT_SECRET},
    helpers::stored_messages,
};

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_4xx_that_says_what_is_wrong() {
    let kafka = Kafka::start(2).await;
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
async fn a_request_whose_body_never_arrives_times_out_with_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let kafka = Kafka::start(2).await;
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
