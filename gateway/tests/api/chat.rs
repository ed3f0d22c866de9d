//! `POST /chat`: a message is stored before its 202 and its reply streams token by token;
//! `Idempotency-Key`; 429 + `Retry-After`; `?stream=true` over HTTP/2 (h2c).

use std::{collections::BTreeSet, time::Duration};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::json;
use testkit::kafka::Kafka;
use uuid::Uuid;

use crate::{
    common::{
        accepted_message, next_event, open_stream, post_chat, reply_bodies, token, FakeResponder, Gateway,
    },
    helpers::stored_messages,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_message_is_stored_then_its_reply_streams_token_by_token() {
    let kafka = Kafka::start(2).await;
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

    let metrics = client.get(&gateway.metrics_url).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("gateway_chat_requests_total"), "{metrics}");
    assert!(metrics.contains("gateway_open_streams"), "{metrics}");
    assert!(metrics.contains("gateway_time_to_first_token_seconds_count 1"), "{metrics}");
    assert!(metrics.contains("gateway_reply_seconds_count 1"), "{metrics}");
    assert!(
        metrics.contains(r#"gateway_http_requests_total{route="/chat",method="POST",status="202"} 1"#),
        "each answered request counted by route, method and status: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_request_with_the_same_idempotency_key_publishes_once() {
    let kafka = Kafka::start(2).await;
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
    let kafka = Kafka::start(2).await;
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
async fn post_chat_with_stream_true_answers_with_that_messages_reply_over_http2_too() {
    let kafka = Kafka::start(2).await;
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
