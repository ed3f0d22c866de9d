//! Dead letters: the original record, bytes untouched, on `<topic>.dlq`, with why it
//! failed in its headers.

use std::time::Duration;

use platform::topics;
use rdkafka::{
    message::{Header, Headers, OwnedHeaders, OwnedMessage},
    producer::{FutureProducer, FutureRecord},
    Message,
};

/// Headers added to a dead letter (any of the original headers are kept too).
pub mod header {
    /// Why the record failed.
    pub const ERROR: &str = "dlq.error";
    /// The handler that gave up.
    pub const HANDLER: &str = "dlq.handler";
    /// Where the record came from: `topic/partition/offset`.
    pub const SOURCE: &str = "dlq.source";
    /// How many attempts were made.
    pub const ATTEMPTS: &str = "dlq.attempts";
}

/// Writes `record` to its topic's DLQ and waits for the acknowledgement.
pub async fn send(
    producer: &FutureProducer,
    record: &OwnedMessage,
    handler: &str,
    error: &str,
    attempts: u32,
    timeout: Duration,
) -> anyhow::Result<()> {
    let topic = topics::dlq(record.topic());
    let mut headers = OwnedHeaders::new();
    if let Some(original) = record.headers() {
        for h in original.iter() {
            headers = headers.insert(Header { key: h.key, value: h.value });
        }
    }
    let source = format!("{}/{}/{}", record.topic(), record.partition(), record.offset());
    let attempts = attempts.to_string();
    // Kafka headers are bytes; keep the message readable and bounded.
    let error: String = error.chars().take(2000).collect();
    headers = headers
        .insert(Header { key: header::ERROR, value: Some(error.as_str()) })
        .insert(Header { key: header::HANDLER, value: Some(handler) })
        .insert(Header { key: header::SOURCE, value: Some(source.as_str()) })
        .insert(Header { key: header::ATTEMPTS, value: Some(attempts.as_str()) });
    let mut out = FutureRecord::<[u8], [u8]>::to(&topic).headers(headers);
    if let Some(key) = record.key() {
        out = out.key(key);
    }
    if let Some(payload) = record.payload() {
        out = out.payload(payload);
    }
    producer.send(out, timeout).await.map_err(|(err, _)| anyhow::anyhow!("writing to {topic}: {err}"))?;
    Ok(())
}
