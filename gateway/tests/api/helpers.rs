//! What several route files need: the messages the gateway stored.

use std::time::Duration;

use platform::{events::decode, events::UserMessage, topics};
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    Message,
};
use testkit::kafka::Kafka;
use uuid::Uuid;

/// Reads every user message currently in `user_messages` (new group, from the start).
pub async fn stored_messages(kafka: &Kafka, expect: usize) -> Vec<UserMessage> {
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
