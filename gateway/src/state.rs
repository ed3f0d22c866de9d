//! What every request handler shares.

use std::{
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

use axum::extract::FromRef;
use rdkafka::producer::FutureProducer;
use tokio::sync::watch;

use crate::{
    auth::Authenticator,
    error::ApiError,
    history::{not_configured, History},
    hub::Hub,
    idempotency::IdempotencyCache,
    intake::Intake,
    settings::GatewaySettings,
};

/// Shared state, cheap to clone (axum clones it per request: every field is an `Arc`
/// or as cheap).
#[derive(Clone)]
pub struct AppState {
    /// Checks bearer tokens.
    pub auth: Arc<Authenticator>,
    /// Checks chat messages and writes them to `user_messages`.
    pub intake: Arc<Intake>,
    /// Routes relayed replies to streams.
    pub hub: Arc<Hub>,
    /// True once the relay is assigned to every partition of `model_responses`.
    pub relay_ready: Arc<AtomicBool>,
    /// Answers of recent requests by `Idempotency-Key`.
    pub idempotency: Arc<IdempotencyCache>,
    /// Flips to true when the gateway shuts down; open streams end with a final event.
    pub shutdown: watch::Receiver<bool>,
    /// Heartbeat interval of SSE streams.
    pub heartbeat: Duration,
    /// The stored turns behind the history and memory routes; `None` when `QDRANT_URL`
    /// is not set (they answer 503).
    pub history: Option<Arc<History>>,
}

impl AppState {
    /// Builds the state from settings and the already-created clients.
    pub fn new(
        settings: &GatewaySettings,
        auth: Authenticator,
        producer: FutureProducer,
        history: Option<History>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let hub = Arc::new(Hub::new(settings.hub));
        Self {
            auth: Arc::new(auth),
            intake: Arc::new(Intake::new(settings, producer, hub.clone())),
            hub,
            relay_ready: Arc::new(AtomicBool::new(false)),
            idempotency: Arc::new(IdempotencyCache::new(10_000, Duration::from_secs(600))),
            shutdown,
            heartbeat: settings.heartbeat,
            history: history.map(Arc::new),
        }
    }
}

impl AppState {
    /// The history store, or the 503 the history and memory routes answer without one.
    pub fn history(&self) -> Result<&History, ApiError> {
        self.history.as_deref().ok_or_else(not_configured)
    }
}

/// Lets the `User` extractor find the authenticator without knowing this state.
impl FromRef<AppState> for Arc<Authenticator> {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}
