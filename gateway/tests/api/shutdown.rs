//! SIGTERM: open streams end with a final event and the gateway exits cleanly.

use std::time::Duration;

use serde_json::json;
use testkit::{kafka::Kafka, Signal};

use crate::common::{next_event, open_stream, post_chat, token, Gateway};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_open_streams_with_a_final_event_and_exits_cleanly() {
    let kafka = Kafka::start(2).await;
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
