//! `GET /stream`: `Last-Event-ID` resume without gaps or repeats, a stream on a replica that
//! did not take the message, and a redelivered message that never mixes two attempts.

use serde_json::json;
use testkit::kafka::Kafka;
use uuid::Uuid;

use crate::common::{
    accepted_message, next_event, open_stream, post_chat, reply_bodies, token, FakeResponder, Gateway,
};

#[tokio::test(flavor = "multi_thread")]
async fn last_event_id_resumes_without_gaps_or_repeats() {
    let kafka = Kafka::start(2).await;
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
    let kafka = Kafka::start(2).await;
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
    let kafka = Kafka::start(2).await;
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
