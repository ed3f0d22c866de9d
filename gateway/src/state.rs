//! What every request handler shares.

use std::sync::{atomic::AtomicBool, Arc};

use axum::extract::FromRef;
use governor::{DefaultKeyedRateLimiter, Quota};
use metrics_exporter_prometheus::PrometheusHandle;
use platform::kafka::KafkaSettings;
use rdkafka::producer::FutureProducer;
use tokio::sync::watch;

use crate::{
    auth::Authenticator, conversation_id::ConversationIds, hub::Hub, idempotency::IdempotencyCache,
    settings::GatewaySettings,
};

/// Shared state, cheap to clone (everything is behind `Arc`s).
#[derive(Clone)]
pub struct AppState {
    /// Checks bearer tokens.
    pub auth: Arc<Authenticator>,
    /// Issues and checks conversation ids.
    pub ids: ConversationIds,
    /// Writes `user_messages`.
    pub producer: FutureProducer,
    /// Broker settings (produce timeout, health checks).
    pub kafka: KafkaSettings,
    /// Routes relayed replies to streams.
    pub hub: Arc<Hub>,
    /// True once the relay is assigned to every partition of `model_responses`.
    pub relay_ready: Arc<AtomicBool>,
    /// Per-user request rate limit, if enabled.
    pub rate_limiter: Option<Arc<DefaultKeyedRateLimiter<String>>>,
    /// Answers of recent requests by `Idempotency-Key`.
    pub idempotency: Arc<IdempotencyCache>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Longest chat message accepted, in bytes.
    pub max_text_bytes: usize,
    /// Flips to true when the gateway shuts down; open streams end with a final event.
    pub shutdown: watch::Receiver<bool>,
    /// Heartbeat interval of SSE streams.
    pub heartbeat: std::time::Duration,
}

impl AppState {
    /// Builds the state from settings and the already-created clients.
    pub fn new(
        settings: &GatewaySettings,
        auth: Authenticator,
        producer: FutureProducer,
        metrics: PrometheusHandle,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let rate_limiter = settings.rate_limit.and_then(|(per_minute, burst)| {
            let quota = Quota::per_minute(std::num::NonZeroU32::new(per_minute)?)
                .allow_burst(std::num::NonZeroU32::new(burst)?);
            Some(Arc::new(DefaultKeyedRateLimiter::keyed(quota)))
        });
        Self {
            auth: Arc::new(auth),
            ids: ConversationIds::new(settings.conversation_key.clone()),
            producer,
            kafka: settings.kafka.clone(),
            hub: Arc::new(Hub::new(settings.hub)),
            relay_ready: Arc::new(AtomicBool::new(false)),
            rate_limiter,
            idempotency: Arc::new(IdempotencyCache::new(10_000, std::time::Duration::from_secs(600))),
            metrics,
            max_text_bytes: settings.max_text_bytes,
            shutdown,
            heartbeat: settings.heartbeat,
        }
    }
}

/// Lets the `User` extractor find the authenticator without knowing this state.
impl FromRef<AppState> for Arc<Authenticator> {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}
