//! The responder: answers each user message with the LLM, streaming the reply to
//! `model_responses` as `token` events and one final `done` (or `error`).

pub mod cold_start;
pub mod prompt;
pub mod recall;
pub mod stream;

use std::time::Duration;

use crate::{
    embed::{Embedder, EmbedderSettings},
    runtime::{attempt_id, cli::App, Context, Handler, HandlerError, InputIds},
    store::{MemoryStore, StoreSettings},
};
use async_openai::{config::OpenAIConfig, Client};
use platform::{
    events::{decode, DecodeError, ModelResponse, ReplyBody, UserMessage},
    llm::Endpoint,
    otel,
    settings::{Env, SettingsError},
    topics,
};

use cold_start::ColdStart;
pub use recall::{Recall, Recalled};
use tracing::Instrument;

/// The responder's settings.
#[derive(Debug, Clone)]
pub struct ResponderSettings {
    /// The OpenAI-compatible chat endpoint (`LLM_*`).
    pub llm: Endpoint,
    /// Longest reply, in tokens.
    pub max_tokens: u32,
    /// How long an unreachable LLM counts as starting rather than failing.
    pub cold_start_budget: Duration,
    /// Sampling temperature; the server's default when unset.
    pub temperature: Option<f32>,
    /// The system prompt.
    pub system_prompt: String,
    /// Where memories are read.
    pub store: StoreSettings,
    /// How the message is embedded for the similarity search.
    pub embedder: EmbedderSettings,
    /// Similar memories recalled.
    pub top_k: u64,
    /// Recent turns recalled.
    pub recent_turns: u32,
}

impl ResponderSettings {
    /// Reads the settings.
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(Self {
            llm: Endpoint::from_env(env, "LLM")?,
            max_tokens: env.parse_or("LLM_MAX_TOKENS", 512)?,
            cold_start_budget: Duration::from_secs(env.parse_or("LLM_COLD_START_SECS", 300)?),
            temperature: match env.optional("LLM_TEMPERATURE") {
                None => None,
                Some(_) => Some(env.parse_or("LLM_TEMPERATURE", 0.0)?),
            },
            system_prompt: env
                .optional("SYSTEM_PROMPT")
                .unwrap_or_else(|| prompt::DEFAULT_SYSTEM_PROMPT.into()),
            store: StoreSettings::from_env(env)?,
            embedder: EmbedderSettings::from_env(env)?,
            top_k: env.parse_or("MEMORY_TOP_K", 4)?,
            recent_turns: env.parse_or("RECENT_TURNS", 6)?,
        })
    }
}

/// The responder.
pub struct Responder {
    llm: Client<OpenAIConfig>,
    model: String,
    max_tokens: u32,
    temperature: Option<f32>,
    system_prompt: String,
    recall: Recall,
    cold_start: ColdStart,
}

impl Responder {
    /// A responder asking `llm` for `model`, reading memories through `recall`.
    pub fn new(llm: Client<OpenAIConfig>, settings: &ResponderSettings, recall: Recall) -> Self {
        Self {
            llm,
            model: settings.llm.model.clone(),
            max_tokens: settings.max_tokens,
            temperature: settings.temperature,
            system_prompt: settings.system_prompt.clone(),
            recall,
            cold_start: ColdStart::new(settings.cold_start_budget),
        }
    }

    /// The prompt this responder would send for `message` (recall included).
    pub async fn prompt_for(&self, message: &UserMessage) -> Vec<prompt::PromptMessage> {
        let Recalled { recent, similar } = self.recall.recall(message).await;
        prompt::build(&self.system_prompt, &similar, &recent, message)
    }
}

impl Handler for Responder {
    type Input = UserMessage;
    const NAME: &'static str = "responder";

    fn group(&self) -> &'static str {
        topics::RESPONDER_GROUP
    }

    fn topics(&self) -> &'static [&'static str] {
        topics::RESPONDER_TOPICS
    }

    fn decode(&self, _topic: &str, payload: &[u8]) -> Result<Option<UserMessage>, DecodeError> {
        decode(payload).map(Some)
    }

    fn ids(&self, input: &UserMessage) -> InputIds {
        InputIds { message_id: input.message_id, conversation_id: input.conversation_id }
    }

    async fn handle(&self, message: &UserMessage, ctx: &Context<'_>) -> Result<(), HandlerError> {
        let started = std::time::Instant::now();
        let prompt = self.prompt_for(message).instrument(otel::span("recall", otel::Kind::Internal)).await;
        metrics::histogram!("responder_recall_seconds").record(started.elapsed().as_secs_f64());
        let attempt = attempt_id();
        let request = stream::Request {
            model: &self.model,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            prompt: &prompt,
            cold_start: &self.cold_start,
        };
        stream::reply(&self.llm, request, message, attempt, ctx).await
    }

    async fn give_up(&self, message: &UserMessage, error: &HandlerError, ctx: &Context<'_>) {
        let (code, text) = match error {
            HandlerError::Invalid(_) => ("llm_rejected", "The model could not answer this message."),
            _ => ("llm_unavailable", "The model is not answering right now. Please try again in a moment."),
        };
        let body = ReplyBody::Error { code: code.into(), message: text.into() };
        if let Err(err) = ctx.publish(&ModelResponse::for_message(message, attempt_id(), body)).await {
            tracing::warn!(error = %err, "could not tell the user that the reply failed");
        }
    }
}

impl App for Responder {
    type Settings = ResponderSettings;

    fn settings(env: &Env) -> Result<ResponderSettings, SettingsError> {
        ResponderSettings::from_env(env)
    }

    async fn build(settings: ResponderSettings) -> anyhow::Result<Self> {
        cold_start::register_metrics();
        recall::register_metrics();
        let embedder = Embedder::build(settings.embedder.clone()).await?;
        // Memory is optional for an answer: a slow Qdrant must not hold replies up long.
        let store = MemoryStore::new(&settings.store, Duration::from_secs(3))?;
        let recall = Recall { store, embedder, recent_turns: settings.recent_turns, top_k: settings.top_k };
        Ok(Self::new(settings.llm.client()?, &settings, recall))
    }
}
