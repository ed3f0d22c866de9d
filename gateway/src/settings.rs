//! The gateway's settings, from the environment (see the README's configuration table).

use std::{net::SocketAddr, time::Duration};

use memory_store::{embed::EmbedderSettings, store::StoreSettings};
use platform::{
    kafka::KafkaSettings,
    settings::{Env, SettingsError},
};
use secrecy::{ExposeSecret, SecretString};

use crate::hub::HubLimits;

/// Where the history and memory routes read from (`QDRANT_URL` and the embedder's
/// settings, the same the handlers read).
pub enum HistorySettings {
    /// `QDRANT_URL` is not set: the routes answer 503 `history_unavailable`.
    Off,
    /// The memory collection.
    On {
        /// `QDRANT_URL`, `QDRANT_API_KEY[_FILE]`, `MEMORY_COLLECTION`.
        store: StoreSettings,
        /// `EMBEDDER` and what it needs, for `GET /memories?q=`; when a required one is
        /// missing, why (searching then answers 503 `search_unavailable`).
        embedder: Result<EmbedderSettings, String>,
    },
}

impl HistorySettings {
    /// Reads the settings; an invalid value is an error, a missing one turns a part off.
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        if env.optional("QDRANT_URL").is_none() {
            return Ok(Self::Off);
        }
        let embedder = match EmbedderSettings::from_env(env) {
            Ok(embedder) => Ok(embedder),
            Err(missing @ SettingsError::Missing { .. }) => Err(missing.to_string()),
            Err(err) => return Err(err),
        };
        Ok(Self::On { store: StoreSettings::from_env(env)?, embedder })
    }
}

/// Everything `gateway serve` needs besides authentication.
pub struct GatewaySettings {
    /// `LISTEN_ADDR`: where to serve HTTP (default `0.0.0.0:8080`).
    pub listen: SocketAddr,
    /// `METRICS_LISTEN_ADDR`: where `/metrics` is served (default `0.0.0.0:9091`).
    pub metrics_listen: SocketAddr,
    /// `KAFKA_*`.
    pub kafka: KafkaSettings,
    /// `CONVERSATION_KEY[_FILE]`: signs conversation ids; the same on every replica.
    pub conversation_key: SecretString,
    /// `MAX_MESSAGE_BYTES`: longest chat message accepted (default 16 KiB).
    pub max_text_bytes: usize,
    /// `RATE_LIMIT_PER_MINUTE` (default 60; 0 disables) and `RATE_LIMIT_BURST` (default 10).
    pub rate_limit: Option<(u32, u32)>,
    /// `SSE_HEARTBEAT_SECS`: comment line on idle streams (default 15).
    pub heartbeat: Duration,
    /// `REQUEST_TIMEOUT_SECS`: bound on a non-streaming request (default 10).
    pub request_timeout: Duration,
    /// `REPLAY_EVENTS`, `MAX_CONVERSATIONS`, `CONVERSATION_IDLE_SECS`, `STREAM_BUFFER`.
    pub hub: HubLimits,
    /// `RELAY_LOOKBACK_SECS`: how far back in `model_responses` a starting replica reads,
    /// so that clients moving to it (a rollout) can resume replies begun before it
    /// started (default 60; 0 reads from the log end).
    pub relay_lookback: Duration,
    /// `QDRANT_URL` and the embedder: the history and memory routes.
    pub history: HistorySettings,
}

fn at_least<T: PartialOrd + ToString>(name: &str, value: T, min: T) -> Result<T, SettingsError> {
    if value < min {
        return Err(SettingsError::Invalid {
            name: name.into(),
            value: value.to_string(),
            reason: format!("must be at least {}", min.to_string()),
        });
    }
    Ok(value)
}

impl GatewaySettings {
    /// Reads and validates the settings.
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let conversation_key = env.required_secret(
            "CONVERSATION_KEY",
            "a random secret of at least 32 bytes, the same on every gateway replica (e.g. `openssl rand -hex 32`)",
        )?;
        if conversation_key.expose_secret().len() < 32 {
            return Err(SettingsError::Invalid {
                name: "CONVERSATION_KEY".into(),
                value: "(hidden)".into(),
                reason: "must be at least 32 bytes".into(),
            });
        }
        let per_minute: u32 = env.parse_or("RATE_LIMIT_PER_MINUTE", 60)?;
        let burst: u32 = at_least("RATE_LIMIT_BURST", env.parse_or("RATE_LIMIT_BURST", 10)?, 1)?;
        let defaults = HubLimits::default();
        Ok(Self {
            listen: env.parse_or("LISTEN_ADDR", SocketAddr::from(([0, 0, 0, 0], 8080)))?,
            metrics_listen: platform::prometheus::listen_addr(env)?,
            kafka: KafkaSettings::from_env(env, "gateway")?,
            conversation_key,
            max_text_bytes: at_least("MAX_MESSAGE_BYTES", env.parse_or("MAX_MESSAGE_BYTES", 16 * 1024)?, 1)?,
            rate_limit: (per_minute > 0).then_some((per_minute, burst)),
            heartbeat: Duration::from_secs(at_least(
                "SSE_HEARTBEAT_SECS",
                env.parse_or("SSE_HEARTBEAT_SECS", 15)?,
                1,
            )?),
            request_timeout: Duration::from_secs(at_least(
                "REQUEST_TIMEOUT_SECS",
                env.parse_or("REQUEST_TIMEOUT_SECS", 10)?,
                1,
            )?),
            relay_lookback: Duration::from_secs(env.parse_or("RELAY_LOOKBACK_SECS", 60)?),
            history: HistorySettings::from_env(env)?,
            hub: HubLimits {
                replay_events: at_least(
                    "REPLAY_EVENTS",
                    env.parse_or("REPLAY_EVENTS", defaults.replay_events)?,
                    1,
                )?,
                max_conversations: at_least(
                    "MAX_CONVERSATIONS",
                    env.parse_or("MAX_CONVERSATIONS", defaults.max_conversations)?,
                    1,
                )?,
                idle_ttl: Duration::from_secs(
                    env.parse_or("CONVERSATION_IDLE_SECS", defaults.idle_ttl.as_secs())?,
                ),
                stream_buffer: at_least(
                    "STREAM_BUFFER",
                    env.parse_or("STREAM_BUFFER", defaults.stream_buffer)?,
                    1,
                )?,
                ..defaults
            },
        })
    }
}
