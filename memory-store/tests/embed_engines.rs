//! The in-process engines against each other and against published reference values:
//! rten running the ONNX graph that ci/deps/minilm_to_onnx.py writes must give candle's
//! vectors (the reference the stored collections were made with), and bucketing a batch
//! by length must not change any vector.

use std::path::PathBuf;

use memory_store::embed::{local::LocalEmbedder, onnx::OnnxEmbedder};

fn model_dir() -> PathBuf {
    testkit::require_env(&["EMBED_MODEL_DIR"]).expect("EMBED_MODEL_DIR");
    std::env::var("EMBED_MODEL_DIR").expect("EMBED_MODEL_DIR").into()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (a.iter().map(|x| x * x).sum::<f32>().sqrt() * b.iter().map(|x| x * x).sum::<f32>().sqrt())
}

/// Short and long texts mixed, so that a batch is cut into several length buckets.
fn texts() -> Vec<String> {
    let long = "Our team ships the new release on Thursday afternoon, after the last review. \
                The train to Porto was delayed again this morning, so the meeting moved. "
        .repeat(4);
    vec![
        "This is an example sentence".into(),
        long.clone(),
        "Hi".into(),
        "Can you remind me what time the dentist appointment is?".into(),
        format!("{long} And one more thing."),
        "Each sentence is converted".into(),
    ]
}

#[test]
fn rten_matches_the_reference_model_and_candle() {
    let dir = model_dir();
    let (rten, candle) = (
        OnnxEmbedder::load(&dir).expect("load model.onnx"),
        LocalEmbedder::load(&dir).expect("load safetensors"),
    );
    let texts = texts();
    let ours = rten.embed(&texts).expect("rten embeds");
    let reference = candle.embed_padded(&texts).expect("candle embeds");
    // sentence-transformers' all-MiniLM-L6-v2 on this sentence starts 0.0677, 0.0635, 0.0487.
    for (got, want) in ours[0].iter().zip([0.06767, 0.06351, 0.04871]) {
        assert!((got - want).abs() < 5e-4, "{:?}", &ours[0][..3]);
    }
    for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
        assert_eq!(a.len(), 384);
        assert!((a.iter().map(|x| x * x).sum::<f32>().sqrt() - 1.0).abs() < 1e-4, "text {i} not unit length");
        let cos = cosine(a, b);
        assert!(cos > 0.999, "text {i}: cosine {cos} against candle");
    }
}

#[test]
fn buckets_do_not_change_the_vectors() {
    let candle = LocalEmbedder::load(&model_dir()).expect("load safetensors");
    let texts = texts();
    let bucketed = candle.embed(&texts).expect("bucketed");
    let padded = candle.embed_padded(&texts).expect("padded");
    for (i, text) in texts.iter().enumerate() {
        let alone = candle.embed(std::slice::from_ref(text)).expect("alone");
        assert!(cosine(&bucketed[i], &padded[i]) > 0.99999, "text {i}: bucketed against padded");
        assert!(cosine(&bucketed[i], &alone[0]) > 0.99999, "text {i}: bucketed against alone");
    }
}
