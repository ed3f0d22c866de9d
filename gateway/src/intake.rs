//! Accepting a chat message: the checks (text, conversation ownership, rate limit) and
//! the write to `user_messages`, shared by `POST /chat` and the OpenAI-compatible façade.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::http::StatusCode;
use governor::{
    clock::{Clock, DefaultClock},
    DefaultKeyedRateLimiter, Quota,
};
use platform::{
    events::UserMessage,
    kafka::{publish, KafkaSettings},
    trace_context::TraceParent,
};
use rdkafka::producer::FutureProducer;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    auth::User, conversation_id::ConversationIds, error::ApiError, hub::Hub, settings::GatewaySettings,
};

/// What a route answers for an accepted message: its ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The stored message.
    pub message_id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
}

impl Accepted {
    /// The ids of `message`.
    pub fn of(message: &UserMessage) -> Self {
        Self { message_id: message.message_id, conversation_id: message.conversation_id }
    }

    /// The JSON body of the 202 (and of the `accepted` SSE event).
    pub fn to_json(self) -> Value {
        json!({
            "message_id": self.message_id,
            "conversation_id": self.conversation_id,
            "stream_url": format!("/stream?conversation_id={}", self.conversation_id),
        })
    }
}

/// Checks chat messages and writes them to `user_messages`.
pub struct Intake {
    /// Writes `user_messages`.
    pub producer: FutureProducer,
    /// Broker settings (the produce timeout).
    pub kafka: KafkaSettings,
    /// Issues and checks conversation ids.
    pub ids: ConversationIds,
    /// Per-user message rate limit, if enabled.
    pub rate_limiter: Option<DefaultKeyedRateLimiter<String>>,
    /// Longest chat message accepted, in bytes.
    pub max_text_bytes: usize,
    /// Told of each accepted message, for reply latency metrics.
    hub: Arc<Hub>,
}

impl Intake {
    /// An intake writing with `producer` under `settings`' limits.
    pub fn new(settings: &GatewaySettings, producer: FutureProducer, hub: Arc<Hub>) -> Self {
        let rate_limiter = settings.rate_limit.and_then(|(per_minute, burst)| {
            let quota = Quota::per_minute(std::num::NonZeroU32::new(per_minute)?)
                .allow_burst(std::num::NonZeroU32::new(burst)?);
            Some(DefaultKeyedRateLimiter::keyed(quota))
        });
        Self {
            producer,
            kafka: settings.kafka.clone(),
            ids: ConversationIds::new(settings.conversation_key.clone()),
            rate_limiter,
            max_text_bytes: settings.max_text_bytes,
            hub,
        }
    }

    /// Checks a chat message (text, conversation ownership, rate limit) and publishes
    /// it to `user_messages`; `Ok` only once the broker acknowledged it, 503 when it
    /// did not. `message_id` replaces the fresh id (an `Idempotency-Key`'s); the record
    /// carries `trace`, the request's, on to the handlers.
    pub async fn accept(
        &self,
        user: &User,
        conversation_id: Option<Uuid>,
        text: String,
        message_id: Option<Uuid>,
        trace: TraceParent,
    ) -> Result<UserMessage, ApiError> {
        validate_text(&text, self.max_text_bytes)?;
        let conversation_id = match conversation_id {
            Some(id) if self.ids.is_owned_by(&id, &user.id) => id,
            Some(_) => return Err(ApiError::unknown_conversation()),
            None => self.ids.issue(&user.id),
        };
        self.rate_limit(user)?;

        let mut message = UserMessage::new(conversation_id, user.id.clone(), text);
        if let Some(id) = message_id {
            message.message_id = id;
        }
        let produce_started = Instant::now();
        let produced = publish(&self.producer, &message, &trace, self.kafka.produce_timeout).await;
        metrics::histogram!("gateway_produce_seconds").record(produce_started.elapsed().as_secs_f64());
        // The ids are fields of the two lines, not of a span around the write: a span
        // costs a formatting of its fields on every message, logged or not, and the JSON
        // log re-parses every span's fields for every line. The request's span already
        // carries trace_id.
        let (message_id, conversation_id) = (&message.message_id, &message.conversation_id);
        if let Err(err) = produced {
            metrics::counter!("gateway_chat_unavailable_total").increment(1);
            tracing::warn!(
                %message_id, %conversation_id, error = %err,
                "broker did not acknowledge the message; answering 503"
            );
            return Err(ApiError::unavailable("the message could not be stored; retry shortly"));
        }
        tracing::info!(%message_id, %conversation_id, "message accepted");
        self.hub.note_accepted(message.message_id);
        Ok(message)
    }

    /// Applies the per-user rate limit (429 with Retry-After when exceeded).
    fn rate_limit(&self, user: &User) -> Result<(), ApiError> {
        let Some(limiter) = &self.rate_limiter else { return Ok(()) };
        limiter.check_key(&user.id).map_err(|not_until| {
            metrics::counter!("gateway_rate_limited_total").increment(1);
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many messages; slow down")
                .retry_after(wait.max(Duration::from_secs(1)))
        })
    }
}

fn validate_text(text: &str, max_bytes: usize) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "empty_text", "text must not be empty"));
    }
    if text.len() > max_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "text_too_long",
            format!("text is {} bytes; the limit is {max_bytes}", text.len()),
        ));
    }
    Ok(())
}
