//! all-MiniLM-L6-v2 in-process as an ONNX graph run by rten (pure Rust; its matrix
//! kernels pick AVX-512/AVX2 at run time). The graph (`model.onnx` beside the
//! safetensors) is written by ci/deps/minilm_to_onnx.py from the same weights.

use std::path::Path;

use anyhow::Context;
use rten::{Model, NodeId};
use rten_tensor::{prelude::*, NdTensor};
use tokenizers::{Encoding, Tokenizer};

use super::{
    tokens::{self, Padded},
    EmbedError,
};

/// The hidden size of all-MiniLM-L6-v2.
const DIM: usize = 384;

/// A loaded ONNX sentence-embedding model.
pub struct OnnxEmbedder {
    model: Model,
    tokenizer: Tokenizer,
    input_ids: NodeId,
    attention_mask: NodeId,
    hidden: NodeId,
}

impl OnnxEmbedder {
    /// Loads tokenizer.json and model.onnx from `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("model.onnx");
        let model = Model::load_file(&path)
            .with_context(|| format!("loading {} (EMBED_MODEL_DIR)", path.display()))?;
        let node =
            |name: &str| model.node_id(name).with_context(|| format!("{}: no node {name}", path.display()));
        let (input_ids, attention_mask, hidden) =
            (node("input_ids")?, node("attention_mask")?, node("last_hidden_state")?);
        Ok(Self { tokenizer: tokens::load_tokenizer(dir)?, model, input_ids, attention_mask, hidden })
    }

    /// Embeds a batch of texts (blocking; run it off the async threads), in buckets of
    /// similar length so that short texts are not padded to a long one's length.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let run = || tokens::embed_bucketed(&tokens::encode(&self.tokenizer, texts)?, |b| self.forward(b));
        run().map_err(|e| EmbedError::Failed(format!("{e:#}")))
    }

    fn forward(&self, encodings: &[&Encoding]) -> anyhow::Result<Vec<Vec<f32>>> {
        let padded = Padded::new(encodings);
        let shape = [padded.batch, padded.longest];
        // rten keeps ONNX int64 tensors as i32; ids < 30 522 and a 0/1 mask fit.
        let as_i32 = |v: &[u32]| v.iter().map(|&x| x as i32).collect::<Vec<_>>();
        let ids = NdTensor::from_data(shape, as_i32(&padded.ids));
        let mask = NdTensor::from_data(shape, as_i32(&padded.mask));
        let [hidden] = self
            .model
            .run_n(
                vec![(self.input_ids, ids.into()), (self.attention_mask, mask.into())],
                [self.hidden],
                None,
            )
            .context("running the ONNX graph")?;
        let hidden: NdTensor<f32, 3> =
            hidden.try_into().context("hidden states are not f32 [batch, tokens, dim]")?;
        padded.mean_pool(&hidden.to_vec(), DIM)
    }
}
