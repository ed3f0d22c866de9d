//! The memory worker: embeds every user message and every finished reply, stores them
//! in Qdrant under deterministic point ids, and announces each stored point on
//! `memory_events`.

pub mod batcher;

use std::time::Duration;

use chrono::Utc;
use platform::{
    events::{
        decode, memory_point_id, DecodeError, MemoryEvent, ModelResponse, ReplyBody, Role, UserMessage,
        SCHEMA_VERSION,
    },
    settings::{Env, SettingsError},
    topics,
};
use uuid::Uuid;

use crate::{
    embed::{Embedder, EmbedderSettings},
    runtime::{cli::App, Context, Handler, HandlerError, InputIds},
    store::{Memory, MemoryStore, StoreSettings},
};

pub use batcher::{Batcher, StoreFailure};

/// The memory worker's settings.
#[derive(Debug, Clone)]
pub struct MemorySettings {
    /// The Qdrant collection.
    pub store: StoreSettings,
    /// How texts are embedded.
    pub embedder: EmbedderSettings,
    /// Texts embedded (and points upserted) per batch.
    pub batch_size: usize,
}

impl MemorySettings {
    /// Reads the settings.
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let batch_size: usize = env.parse_or("MEMORY_BATCH_SIZE", 32)?;
        if batch_size == 0 {
            return Err(SettingsError::Invalid {
                name: "MEMORY_BATCH_SIZE".into(),
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(Self {
            store: StoreSettings::from_env(env)?,
            embedder: EmbedderSettings::from_env(env)?,
            batch_size,
        })
    }
}

/// The memory worker.
pub struct MemoryWorker {
    batcher: Batcher,
    collection: String,
}

impl MemoryWorker {
    /// A worker storing through `batcher` into `collection`.
    pub fn new(batcher: Batcher, collection: String) -> Self {
        Self { batcher, collection }
    }
}

impl Handler for MemoryWorker {
    type Input = Memory;
    const NAME: &'static str = "memory";
    // Batches form from records in flight together. While one batch is embedded the
    // next one gathers and the one before still publishes its events, so with only a
    // batch's worth in flight (32) batches averaged 12-15 texts; twice that fills them
    // (27-30) for 1.9x the turns/s (`ci/bench.sh embeddings`).
    const DEFAULT_CONCURRENCY: usize = 64;

    fn group(&self) -> &'static str {
        topics::MEMORY_GROUP
    }

    fn topics(&self) -> &'static [&'static str] {
        topics::MEMORY_TOPICS
    }

    fn decode(&self, topic: &str, payload: &[u8]) -> Result<Option<Memory>, DecodeError> {
        if topic == topics::MODEL_RESPONSES {
            let reply: ModelResponse = decode(payload)?;
            return Ok(match reply.body {
                // Only a finished reply is a memory; tokens and errors are not.
                ReplyBody::Done { text, .. } => Some(Memory {
                    // Deletions compare the question's time: a reply finishing after its
                    // conversation was deleted goes with it.
                    message_ts_ms: reply.message_ts.unwrap_or(reply.ts).timestamp_millis(),
                    ..turn(
                        reply.message_id,
                        reply.conversation_id,
                        reply.user_id,
                        Role::Assistant,
                        text,
                        reply.ts.timestamp_millis(),
                    )
                }),
                _ => None,
            });
        }
        let msg: UserMessage = decode(payload)?;
        Ok(Some(turn(
            msg.message_id,
            msg.conversation_id,
            msg.user_id,
            Role::User,
            msg.text,
            msg.ts.timestamp_millis(),
        )))
    }

    fn ids(&self, input: &Memory) -> InputIds {
        InputIds { message_id: input.message_id, conversation_id: input.conversation_id }
    }

    async fn handle(&self, memory: &Memory, ctx: &Context<'_>) -> Result<(), HandlerError> {
        let stored = self.batcher.store(memory.clone()).await.map_err(|failure| match failure {
            StoreFailure::Unavailable(e) => HandlerError::Unavailable(anyhow::anyhow!(e)),
            StoreFailure::Failed(e) => HandlerError::Transient(anyhow::anyhow!(e)),
            StoreFailure::Rejected(e) => HandlerError::Invalid(anyhow::anyhow!(e)),
        })?;
        if !stored {
            // Its conversation (or its user's memory) was deleted: nothing to announce.
            tracing::info!(point_id = %memory.point_id, "turn of a deleted conversation dropped");
            return Ok(());
        }
        ctx.publish(&MemoryEvent {
            v: SCHEMA_VERSION,
            message_id: memory.message_id,
            conversation_id: memory.conversation_id,
            user_id: memory.user_id.clone(),
            ts: Utc::now(),
            point_id: memory.point_id,
            collection: self.collection.clone(),
            role: memory.role,
        })
        .await
    }
}

impl App for MemoryWorker {
    type Settings = MemorySettings;

    fn settings(env: &Env) -> Result<MemorySettings, SettingsError> {
        MemorySettings::from_env(env)
    }

    async fn build(settings: MemorySettings) -> anyhow::Result<Self> {
        let embedder = Embedder::build(settings.embedder).await?;
        let store = MemoryStore::new(&settings.store, Duration::from_secs(10))?;
        let collection = store.collection().to_string();
        Ok(Self::new(Batcher::spawn(embedder, store, settings.batch_size), collection))
    }
}

/// A turn to remember, with its deterministic point id.
pub fn turn(
    message_id: Uuid,
    conversation_id: Uuid,
    user_id: String,
    role: Role,
    text: String,
    ts_ms: i64,
) -> Memory {
    Memory {
        point_id: memory_point_id(message_id, role),
        conversation_id,
        user_id,
        role,
        text,
        ts_ms,
        message_ts_ms: ts_ms,
        message_id,
    }
}
