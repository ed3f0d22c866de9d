//! Text embeddings: in-process all-MiniLM-L6-v2 ([`local`], the default that needs no
//! extra service) or any OpenAI-compatible `/v1/embeddings` endpoint ([`remote`]).

pub mod local;
pub mod remote;
mod tokens;

use std::{path::PathBuf, sync::Arc};

use platform::{
    llm::Endpoint,
    otel,
    settings::{Env, SettingsError},
};
use tracing::Instrument;

/// Why embedding failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The embeddings service did not answer (connection, timeout, 429, 5xx).
    #[error("embeddings service unavailable: {0}")]
    Unavailable(String),
    /// The embedder answered but the result is unusable, or the model failed.
    #[error("embedding failed: {0}")]
    Failed(String),
}

/// Which embedder to build.
#[derive(Debug, Clone)]
pub enum EmbedderSettings {
    /// candle, from a directory with config.json, tokenizer.json and model.safetensors.
    Local {
        /// The model directory (`EMBED_MODEL_DIR`).
        model_dir: PathBuf,
    },
    /// An OpenAI-compatible endpoint (`EMBEDDINGS_*`).
    Remote(Endpoint),
}

impl EmbedderSettings {
    /// Reads `EMBEDDER` (`local` or `openai`) and what it needs.
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        match env.one_of("EMBEDDER", &["local", "openai"], "local")?.as_str() {
            "openai" => Ok(Self::Remote(Endpoint::from_env(env, "EMBEDDINGS")?)),
            _ => Ok(Self::Local {
                model_dir: env
                    .required(
                        "EMBED_MODEL_DIR",
                        "directory with all-MiniLM-L6-v2's config.json, tokenizer.json and model.safetensors \
                         (or set EMBEDDER=openai)",
                    )?
                    .into(),
            }),
        }
    }
}

/// An embedder of either kind; cheap to clone.
#[derive(Clone)]
pub enum Embedder {
    /// In-process.
    Local(Arc<local::LocalEmbedder>),
    /// Remote.
    Remote(Arc<remote::RemoteEmbedder>),
}

impl Embedder {
    /// Loads the model or builds the client.
    pub async fn build(settings: EmbedderSettings) -> anyhow::Result<Self> {
        Ok(match settings {
            EmbedderSettings::Local { model_dir } => {
                let model =
                    tokio::task::spawn_blocking(move || local::LocalEmbedder::load(&model_dir)).await??;
                Self::Local(Arc::new(model))
            }
            EmbedderSettings::Remote(endpoint) => {
                Self::Remote(Arc::new(remote::RemoteEmbedder::new(&endpoint)?))
            }
        })
    }

    /// One unit vector per text, in order.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let expected = texts.len();
        let span = otel::span("embed", otel::Kind::Internal);
        otel::set(&span, "chat.embed.texts", expected as i64);
        let vectors = match self {
            Self::Local(model) => {
                let model = model.clone();
                tokio::task::spawn_blocking(move || model.embed(&texts))
                    .instrument(span.clone())
                    .await
                    .map_err(|e| EmbedError::Failed(format!("embedding task: {e}")))?
            }
            Self::Remote(client) => client.embed(texts).instrument(span.clone()).await,
        };
        let vectors = vectors.inspect_err(|err| otel::fail(&span, err))?;
        if vectors.len() != expected {
            return Err(EmbedError::Failed(format!("asked for {expected} vectors, got {}", vectors.len())));
        }
        Ok(vectors)
    }
}
