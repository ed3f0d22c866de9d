//! What the in-process engines share around the network itself: the tokenizer, the
//! length buckets a batch is cut into, padding, and mean pooling with L2 normalisation
//! (what sentence-transformers does for all-MiniLM-L6-v2).

use std::path::Path;

use tokenizers::{Encoding, Tokenizer, TruncationParams};

/// The model was trained on sequences of at most 256 word pieces.
const MAX_TOKENS: usize = 256;

/// At most this share of a bucket's tokens may be padding before a longer text starts
/// a new bucket (in quarters: 1 = 25 %). Fewer, larger buckets keep the matrix
/// products wide; more buckets waste fewer tokens.
const MAX_PADDING_QUARTERS: usize = 1;

/// Loads `dir`/tokenizer.json, truncating at the model's training length and padding
/// nothing (batches are padded per bucket, by [`Padded`]).
pub(crate) fn load_tokenizer(dir: &Path) -> anyhow::Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    let mut tokenizer =
        Tokenizer::from_file(&path).map_err(|e| anyhow::anyhow!("loading {}: {e}", path.display()))?;
    // The file pins padding and truncation to 128.
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams { max_length: MAX_TOKENS, ..Default::default() }))
        .map_err(|e| anyhow::anyhow!("tokenizer truncation: {e}"))?;
    Ok(tokenizer)
}

/// Tokenizes a batch ([CLS] … [SEP], truncated, unpadded).
pub(crate) fn encode(tokenizer: &Tokenizer, texts: &[String]) -> anyhow::Result<Vec<Encoding>> {
    tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| anyhow::anyhow!("tokenizing: {e}"))
}

/// Embeds `encodings` bucket by bucket with `forward` (one vector per encoding, in the
/// bucket's order) and returns the vectors in input order.
///
/// Texts are sorted by length and cut into buckets that each pad to their own longest
/// text: a batch of short turns with one long reply would otherwise run every short turn
/// at the long one's length (the work grows with padded tokens).
pub(crate) fn embed_bucketed(
    encodings: &[Encoding],
    mut forward: impl FnMut(&[&Encoding]) -> anyhow::Result<Vec<Vec<f32>>>,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut order: Vec<usize> = (0..encodings.len()).collect();
    order.sort_by_key(|&i| encodings[i].len());
    let mut vectors = vec![Vec::new(); encodings.len()];
    for bucket in buckets(&order, |i| encodings[i].len()) {
        let batch: Vec<&Encoding> = bucket.iter().map(|&i| &encodings[i]).collect();
        let out = forward(&batch)?;
        anyhow::ensure!(out.len() == batch.len(), "{} vectors for {} texts", out.len(), batch.len());
        for (&i, vector) in bucket.iter().zip(out) {
            vectors[i] = vector;
        }
    }
    Ok(vectors)
}

/// Cuts `order` (indices sorted by ascending length) into runs whose padding to their
/// longest member stays within [`MAX_PADDING_QUARTERS`].
fn buckets(order: &[usize], len: impl Fn(usize) -> usize) -> Vec<&[usize]> {
    let mut out = Vec::new();
    let (mut start, mut real) = (0, 0);
    for (j, &i) in order.iter().enumerate() {
        let (count, longest) = (j - start + 1, len(i));
        if j > start && 4 * count * longest > (4 + MAX_PADDING_QUARTERS) * (real + longest) {
            out.push(&order[start..j]);
            (start, real) = (j, 0);
        }
        real += longest;
    }
    if start < order.len() {
        out.push(&order[start..]);
    }
    out
}

/// A batch padded to its longest text, row-major `batch × longest`.
pub(crate) struct Padded {
    /// Token ids (0 where padded: the mask hides them from attention and pooling).
    pub ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub mask: Vec<u32>,
    /// Texts.
    pub batch: usize,
    /// Tokens per text after padding.
    pub longest: usize,
}

impl Padded {
    /// Pads `encodings` to the longest of them.
    pub fn new(encodings: &[&Encoding]) -> Self {
        let longest = encodings.iter().map(|e| e.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(encodings.len() * longest);
        let mut mask = Vec::with_capacity(encodings.len() * longest);
        for e in encodings {
            ids.extend_from_slice(e.get_ids());
            ids.resize(ids.len() + longest - e.len(), 0);
            mask.extend_from_slice(e.get_attention_mask());
            mask.resize(mask.len() + longest - e.len(), 0);
        }
        Self { ids, mask, batch: encodings.len(), longest }
    }

    /// Mean of `hidden` (`batch × longest × dim`, row-major) over each text's real
    /// tokens, scaled to unit length.
    pub fn mean_pool(&self, hidden: &[f32], dim: usize) -> anyhow::Result<Vec<Vec<f32>>> {
        anyhow::ensure!(
            hidden.len() == self.batch * self.longest * dim,
            "hidden states of an unexpected size"
        );
        let mut out = Vec::with_capacity(self.batch);
        for b in 0..self.batch {
            let mut sum = vec![0f32; dim];
            let mut count = 0f32;
            for t in 0..self.longest {
                if self.mask[b * self.longest + t] == 0 {
                    continue;
                }
                count += 1.0;
                let row = &hidden[(b * self.longest + t) * dim..][..dim];
                sum.iter_mut().zip(row).for_each(|(s, h)| *s += h);
            }
            let norm = sum.iter().map(|x| (x / count).powi(2)).sum::<f32>().sqrt();
            out.push(sum.iter().map(|x| x / count / norm).collect());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::buckets;

    #[test]
    fn equal_lengths_make_one_bucket() {
        let lens = [17, 17, 18, 17];
        let mut order: Vec<usize> = (0..4).collect();
        order.sort_by_key(|&i| lens[i]);
        assert_eq!(buckets(&order, |i| lens[i]).len(), 1);
    }

    #[test]
    fn a_long_text_gets_a_bucket_of_its_own() {
        let lens = [12, 110, 14, 13];
        let mut order: Vec<usize> = (0..4).collect();
        order.sort_by_key(|&i| lens[i]);
        let cut = buckets(&order, |i| lens[i]);
        assert_eq!(cut, vec![&[0, 3, 2][..], &[1][..]]);
    }

    #[test]
    fn every_index_is_in_exactly_one_bucket() {
        let lens: Vec<usize> = (0..50).map(|i| 5 + (i * 37) % 100).collect();
        let mut order: Vec<usize> = (0..lens.len()).collect();
        order.sort_by_key(|&i| lens[i]);
        let mut seen: Vec<usize> = buckets(&order, |i| lens[i]).concat();
        seen.sort_unstable();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
    }
}
