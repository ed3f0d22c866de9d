//! A broker outage: 503 + `Retry-After`, never 202, and recovery once the broker is back.

use std::time::Duration;

use serde_json::json;
use testkit::kafka::Kafka;

use crate::{
    common::{post_chat, token, Gateway},
    helpers::stored_messages,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_outage_gives_503_never_202_and_recovers() {
    let mut kafka = Kafka::start(2).await;
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
