//! all-MiniLM-L6-v2 in-process with candle: BERT, mean pooling over the attention mask,
//! L2 normalisation (what sentence-transformers does for this model).

use std::path::Path;

use anyhow::Context;
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config, DTYPE};
use tokenizers::{Encoding, Tokenizer};

use super::{
    tokens::{self, Padded},
    EmbedError,
};

/// A loaded sentence-embedding model.
pub struct LocalEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl LocalEmbedder {
    /// Loads config.json, tokenizer.json and model.safetensors from `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let config_path = dir.join("config.json");
        let config: Config = serde_json::from_str(
            &std::fs::read_to_string(&config_path)
                .with_context(|| format!("reading {}", config_path.display()))?,
        )
        .with_context(|| format!("parsing {}", config_path.display()))?;
        let tokenizer = tokens::load_tokenizer(dir)?;
        let device = Device::Cpu;
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            anyhow::bail!("{} not found (EMBED_MODEL_DIR)", weights.display());
        }
        // SAFETY: the weights file is memory-mapped read-only; nothing in this process
        // writes it, and the deployment ships it read-only.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DTYPE, &device) }
            .with_context(|| format!("mapping {}", weights.display()))?;
        let model = BertModel::load(vb, &config).context("building BERT from the weights")?;
        Ok(Self { model, tokenizer, device })
    }

    /// The vectors' dimension.
    pub fn dimension(&self) -> usize {
        384
    }

    /// Word pieces of `text` as the model sees it ([CLS] and [SEP] included, truncated).
    pub fn token_count(&self, text: &str) -> usize {
        self.tokenizer.encode(text, true).map_or(0, |e| e.len())
    }

    /// Embeds a batch of texts (blocking; run it off the async threads), in buckets of
    /// similar length so that short texts are not padded to a long one's length.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let run = || tokens::embed_bucketed(&tokens::encode(&self.tokenizer, texts)?, |b| self.forward(b));
        run().map_err(|e| EmbedError::Failed(format!("{e:#}")))
    }

    /// Embeds a batch padded as one block to its longest text (the embedder before
    /// buckets; kept to measure them against it).
    pub fn embed_padded(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let run = || {
            let encodings = tokens::encode(&self.tokenizer, texts)?;
            self.forward(&encodings.iter().collect::<Vec<_>>())
        };
        run().map_err(|e| EmbedError::Failed(format!("{e:#}")))
    }

    fn forward(&self, encodings: &[&Encoding]) -> anyhow::Result<Vec<Vec<f32>>> {
        let padded = Padded::new(encodings);
        let shape = (padded.batch, padded.longest);
        let ids = Tensor::from_vec(padded.ids, shape, &self.device)?;
        let mask = Tensor::from_vec(padded.mask, shape, &self.device)?;
        let type_ids = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?;
        // Mean over real tokens only: padding must not pull short texts around.
        let weights = mask.to_dtype(DTYPE)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&weights)?.sum(1)?;
        let counts = weights.sum(1)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
        Ok(mean.broadcast_div(&norms)?.to_vec2::<f32>()?)
    }
}
