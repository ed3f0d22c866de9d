//! Text embeddings: in-process all-MiniLM-L6-v2 (the default that needs no extra
//! service), run by rten from an ONNX graph ([`onnx`]) or by candle from the
//! safetensors ([`local`]), or any OpenAI-compatible `/v1/embeddings` endpoint
//! ([`remote`]).

pub mod local;
pub mod onnx;
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
    /// candle, from a directory with config.json, tokenizer.json and model.safetensors
    /// (`EMBED_ENGINE=candle`).
    Local {
        /// The model directory (`EMBED_MODEL_DIR`).
        model_dir: PathBuf,
    },
    /// rten, from a directory with tokenizer.json and model.onnx (the default engine:
    /// the faster one; ci/deps/minilm_to_onnx.py writes the graph).
    Onnx {
        /// The model directory (`EMBED_MODEL_DIR`).
        model_dir: PathBuf,
    },
    /// An OpenAI-compatible endpoint (`EMBEDDINGS_*`).
    Remote(Endpoint),
}

impl EmbedderSettings {
    /// Reads `EMBEDDER` (`local` or `openai`) and what it needs; for `local`,
    /// `EMBED_ENGINE` (`rten` or `candle`: the same vectors, cosine > 0.999, measured
    /// by `ci/bench.sh embeddings`).
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        if env.one_of("EMBEDDER", &["local", "openai"], "local")? == "openai" {
            return Ok(Self::Remote(Endpoint::from_env(env, "EMBEDDINGS")?));
        }
        let model_dir: PathBuf = env
            .required(
                "EMBED_MODEL_DIR",
                "directory with all-MiniLM-L6-v2's tokenizer.json and model.onnx (EMBED_ENGINE=rten) \
                         or config.json and model.safetensors (EMBED_ENGINE=candle), or set EMBEDDER=openai",
            )?
            .into();
        Ok(match env.one_of("EMBED_ENGINE", &["rten", "candle"], "rten")?.as_str() {
            "candle" => Self::Local { model_dir },
            _ => Self::Onnx { model_dir },
        })
    }
}

/// An embedder of either kind; cheap to clone.
#[derive(Clone)]
pub enum Embedder {
    /// In-process, candle.
    Local(Arc<local::LocalEmbedder>),
    /// In-process, rten.
    Onnx(Arc<onnx::OnnxEmbedder>),
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
            EmbedderSettings::Onnx { model_dir } => {
                let model =
                    tokio::task::spawn_blocking(move || onnx::OnnxEmbedder::load(&model_dir)).await??;
                Self::Onnx(Arc::new(model))
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
            Self::Onnx(model) => {
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
