//! What a handler is: a plain async function from one input event to output events.
//! Everything else (group membership, decoding, retries, dead letters, commits) is the
//! runtime's.

use std::{future::Future, sync::Mutex, time::Duration};

use platform::{
    events::{encode, DecodeError, Event},
    otel,
    sync::lock,
    trace_context::TraceParent,
};
use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    message::OwnedHeaders,
    producer::{future_producer::OwnedDeliveryResult, FutureProducer, FutureRecord},
};
use serde::Serialize;
use uuid::Uuid;

/// How a handler failed, which decides what the runtime does next.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// May succeed if tried again (an LLM 5xx or timeout): retried with backoff, and
    /// dead-lettered after the configured number of attempts.
    #[error("transient failure: {0:#}")]
    Transient(anyhow::Error),
    /// A dependency the handler cannot work without is down (the memory worker's
    /// Qdrant): retried without limit and never committed, so nothing is lost.
    #[error("dependency unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// Retrying cannot help (the input breaks a rule): dead-lettered at once.
    #[error("invalid input: {0:#}")]
    Invalid(anyhow::Error),
}

impl HandlerError {
    /// The failure itself, without the kind's prefix.
    pub fn cause(&self) -> &anyhow::Error {
        match self {
            Self::Transient(err) | Self::Unavailable(err) | Self::Invalid(err) => err,
        }
    }
}

/// The ids an input is known by in logs and traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputIds {
    /// The user message the input belongs to.
    pub message_id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
}

/// A handler of one kind of input event.
pub trait Handler: Send + Sync + 'static {
    /// The decoded input.
    type Input: Send + Sync + 'static;

    /// The handler's name (metrics, logs, the `dlq.handler` header).
    const NAME: &'static str;

    /// Records in flight when `HANDLER_CONCURRENCY` is not set.
    const DEFAULT_CONCURRENCY: usize = 8;

    /// The consumer group this handler's instances share.
    fn group(&self) -> &'static str;

    /// The topics it consumes.
    fn topics(&self) -> &'static [&'static str];

    /// Decodes one record of `topic`. `Ok(None)` means "not for this handler" (the
    /// record is committed without work); an error sends the record to the DLQ.
    fn decode(&self, topic: &str, payload: &[u8]) -> Result<Option<Self::Input>, DecodeError>;

    /// The ids of an input, for logs.
    fn ids(&self, input: &Self::Input) -> InputIds;

    /// Handles one input, publishing outputs through `ctx`.
    fn handle(
        &self,
        input: &Self::Input,
        ctx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Called once when the runtime gives up on an input (before it is dead-lettered),
    /// e.g. to tell the user. Outputs published here are awaited like any others.
    fn give_up(
        &self,
        _input: &Self::Input,
        _error: &HandlerError,
        _ctx: &Context,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// One output record, as returned by the HTTP invoke entry.
#[derive(Debug, Clone, Serialize)]
pub struct Output {
    /// Topic it belongs on.
    pub topic: &'static str,
    /// Kafka key (the conversation).
    pub key: String,
    /// The event.
    pub value: serde_json::Value,
}

/// Where outputs go.
pub enum Sink {
    /// Produced to Kafka; the record is committed once every delivery is acknowledged.
    Kafka {
        /// The shared producer.
        producer: FutureProducer,
        /// How long a delivery may take.
        timeout: Duration,
    },
    /// Collected and returned to the caller (the HTTP invoke entry).
    Collect,
}

/// A write on its way, with the span that lasts until it is acknowledged.
type Delivery = (rdkafka::producer::DeliveryFuture, tracing::Span);

/// What a handler sees of the runtime while handling one input.
pub struct Context<'a> {
    sink: &'a Sink,
    trace: TraceParent,
    attempt: u32,
    deliveries: Mutex<Vec<Delivery>>,
    collected: Mutex<Vec<Output>>,
}

impl<'a> Context<'a> {
    /// A context for attempt `attempt` (from 1) of one input.
    pub fn new(sink: &'a Sink, trace: TraceParent, attempt: u32) -> Self {
        Self { sink, trace, attempt, deliveries: Mutex::default(), collected: Mutex::default() }
    }

    /// The trace of this input's processing (outputs name their own write's span when
    /// traces are exported).
    pub fn trace(&self) -> &TraceParent {
        &self.trace
    }

    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Publishes an event without waiting for the broker: the delivery is awaited
    /// before the input's offset is committed. Only waits when the producer's queue is
    /// full.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<(), HandlerError> {
        let payload = encode(event);
        let key = event.key();
        match self.sink {
            Sink::Collect => {
                let value = serde_json::from_slice(&payload)
                    .map_err(|e| HandlerError::Invalid(anyhow::anyhow!("event is not JSON: {e}")))?;
                lock(&self.collected).push(Output { topic: E::TOPIC, key, value });
                Ok(())
            }
            Sink::Kafka { producer, timeout } => {
                let deadline = tokio::time::Instant::now() + *timeout;
                // Kept until the delivery is acknowledged, so it spans the whole write.
                let span = otel::producer_span(E::TOPIC);
                let trace = otel::carry(&span, &self.trace);
                loop {
                    let record = FutureRecord::to(E::TOPIC)
                        .key(&key)
                        .payload(&payload)
                        .headers(trace.to_headers(OwnedHeaders::new()));
                    match producer.send_result(record) {
                        Ok(delivery) => {
                            lock(&self.deliveries).push((delivery, span));
                            return Ok(());
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                            if tokio::time::Instant::now() < deadline =>
                        {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((err, _)) => return Err(produce_error(E::TOPIC, &err)),
                    }
                }
            }
        }
    }

    /// Waits until every published event is acknowledged.
    pub async fn flush(&self) -> Result<(), HandlerError> {
        let deliveries = std::mem::take(&mut *lock(&self.deliveries));
        for (delivery, span) in deliveries {
            let result: Result<OwnedDeliveryResult, _> = delivery.await;
            let err = match result {
                Ok(Ok(_)) => continue,
                Ok(Err((err, _))) => anyhow::anyhow!("output not acknowledged: {err}"),
                Err(_) => anyhow::anyhow!("producer dropped a delivery"),
            };
            otel::fail(&span, &err);
            return Err(HandlerError::Transient(err));
        }
        Ok(())
    }

    /// The outputs collected so far (HTTP invoke entry).
    pub fn take_outputs(&self) -> Vec<Output> {
        std::mem::take(&mut *lock(&self.collected))
    }
}

/// A write the broker refused for its content is the input's fault; anything else
/// (timeouts, an unreachable broker) means Kafka is unavailable and the record waits.
fn produce_error(topic: &str, err: &KafkaError) -> HandlerError {
    let rejected = matches!(
        err.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
        )
    );
    let err = anyhow::anyhow!("producing to {topic}: {err}");
    if rejected {
        HandlerError::Invalid(err)
    } else {
        HandlerError::Unavailable(err)
    }
}

/// A fresh id for one processing attempt (reply events carry it).
pub fn attempt_id() -> Uuid {
    Uuid::new_v4()
}
