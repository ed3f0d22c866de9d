//! Dead letters: the original record, bytes untouched, on `<topic>.dlq`, with why it
//! failed in its headers (or, for a record too large to carry them too, a pointer to it).

use std::time::Duration;

use platform::topics;
use rdkafka::{
    error::KafkaError,
    message::{Header, Headers, OwnedHeaders, OwnedMessage},
    producer::{FutureProducer, FutureRecord},
    types::RDKafkaErrorCode,
    Message,
};

use super::status::metric;

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
    /// Set when the original payload and headers were left out, and why.
    pub const OMITTED: &str = "dlq.omitted";
}

/// Writes `record` to its topic's DLQ and waits for the acknowledgement.
///
/// A record near the size limit can go over it with the `dlq.*` headers added: then the
/// dead letter is written without the original payload and headers, and says so in
/// [`header::OMITTED`] (its [`header::SOURCE`] still points at the original), so that
/// the partition does not stall on a write that can never succeed.
pub async fn send(
    producer: &FutureProducer,
    record: &OwnedMessage,
    handler: &str,
    error: &str,
    attempts: u32,
    timeout: Duration,
) -> anyhow::Result<()> {
    let letter = Letter::new(record, handler, error, attempts);
    match letter.send(producer, record, true, timeout).await {
        Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
            metrics::counter!(metric::DEAD_LETTERS_WITHOUT_PAYLOAD, "handler" => handler.to_string())
                .increment(1);
            tracing::warn!(source = %letter.source, "dead letter too large for the broker; written without its payload");
            letter.send(producer, record, false, timeout).await
        }
        sent => sent,
    }
    .map_err(|err| anyhow::anyhow!("writing to {}: {err}", letter.topic))
}

/// The parts of a dead letter that do not depend on whether the payload fits.
struct Letter {
    topic: String,
    source: String,
    attempts: String,
    handler: String,
    error: String,
}

impl Letter {
    fn new(record: &OwnedMessage, handler: &str, error: &str, attempts: u32) -> Self {
        Self {
            topic: topics::dlq(record.topic()),
            source: format!("{}/{}/{}", record.topic(), record.partition(), record.offset()),
            attempts: attempts.to_string(),
            handler: handler.to_string(),
            // Kafka headers are bytes; keep the message readable and bounded.
            error: error.chars().take(2000).collect(),
        }
    }

    async fn send(
        &self,
        producer: &FutureProducer,
        record: &OwnedMessage,
        whole: bool,
        timeout: Duration,
    ) -> Result<(), KafkaError> {
        let mut headers = OwnedHeaders::new();
        let omitted;
        if whole {
            if let Some(original) = record.headers() {
                for h in original.iter() {
                    headers = headers.insert(Header { key: h.key, value: h.value });
                }
            }
        } else {
            let size = record.payload().map_or(0, <[u8]>::len);
            omitted = format!("payload ({size} bytes) and headers left out: over the broker's size limit");
            headers = headers.insert(Header { key: header::OMITTED, value: Some(omitted.as_str()) });
        }
        headers = headers
            .insert(Header { key: header::ERROR, value: Some(self.error.as_str()) })
            .insert(Header { key: header::HANDLER, value: Some(self.handler.as_str()) })
            .insert(Header { key: header::SOURCE, value: Some(self.source.as_str()) })
            .insert(Header { key: header::ATTEMPTS, value: Some(self.attempts.as_str()) });
        let mut out = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
        if let Some(key) = record.key() {
            out = out.key(key);
        }
        if let (true, Some(payload)) = (whole, record.payload()) {
            out = out.payload(payload);
        }
        producer.send(out, timeout).await.map(|_| ()).map_err(|(err, _)| err)
    }
}
