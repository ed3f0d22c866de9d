//! Embeddings from an OpenAI-compatible `/v1/embeddings` endpoint (vLLM, Ollama, TEI,
//! OpenAI, llama.cpp's server).

use async_openai::{
    config::OpenAIConfig, error::OpenAIError, types::embeddings::CreateEmbeddingRequestArgs, Client,
};
use platform::llm::{is_retryable, Endpoint};

use super::EmbedError;

/// A client of one embeddings endpoint.
#[derive(Clone)]
pub struct RemoteEmbedder {
    client: Client<OpenAIConfig>,
    model: String,
}

impl RemoteEmbedder {
    /// A client for `endpoint`.
    pub fn new(endpoint: &Endpoint) -> anyhow::Result<Self> {
        Ok(Self { client: endpoint.client()?, model: endpoint.model.clone() })
    }

    /// One vector per text, in input order.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let request = CreateEmbeddingRequestArgs::default()
            .model(&self.model)
            .input(texts)
            .build()
            .map_err(|e| EmbedError::Failed(e.to_string()))?;
        let response = self.client.embeddings().create(request).await.map_err(|e| match e {
            OpenAIError::Reqwest(_) | OpenAIError::StreamError(_) => EmbedError::Unavailable(e.to_string()),
            OpenAIError::ApiError(ref api) if is_retryable(api.status_code) => {
                EmbedError::Unavailable(e.to_string())
            }
            other => EmbedError::Failed(other.to_string()),
        })?;
        let mut data = response.data;
        data.sort_by_key(|d| d.index);
        Ok(data.into_iter().map(|d| d.embedding).collect())
    }
}
