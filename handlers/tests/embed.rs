//! The in-process embedder (candle) against published reference values and against
//! an independent implementation: llama-server serving the same model as GGUF.

use handlers::embed::{Embedder, EmbedderSettings};
use platform::{llm::Endpoint, settings::Env};
use testkit::LlamaServer;

async fn local() -> Embedder {
    testkit::require_env(&["EMBED_MODEL_DIR"]).expect("EMBED_MODEL_DIR");
    let dir = std::env::var("EMBED_MODEL_DIR").expect("EMBED_MODEL_DIR").into();
    Embedder::build(EmbedderSettings::Local { model_dir: dir }).await.expect("load all-MiniLM-L6-v2")
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn local_embeddings_match_the_reference_model() {
    let embedder = local().await;
    let texts = vec!["This is an example sentence".to_string(), "Each sentence is converted".to_string()];
    let vectors = embedder.embed(texts.clone()).await.expect("embed");
    assert_eq!(vectors.len(), 2);
    assert_eq!(vectors[0].len(), 384);
    let norm: f32 = vectors[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "unit length: {norm}");
    // sentence-transformers' all-MiniLM-L6-v2 on this sentence starts 0.0677, 0.0635, 0.0487.
    let expected = [0.06767, 0.06351, 0.04871];
    for (got, want) in vectors[0].iter().zip(expected) {
        assert!((got - want).abs() < 5e-4, "{:?} vs {expected:?}", &vectors[0][..3]);
    }
    // Padding in a batch must not change a text's vector.
    let alone = embedder.embed(vec![texts[1].clone()]).await.expect("embed");
    assert!(cosine(&alone[0], &vectors[1]) > 0.99999);
}

#[tokio::test(flavor = "multi_thread")]
async fn local_and_llama_server_embeddings_agree() {
    let embedder = local().await;
    let server = LlamaServer::embeddings().expect("llama-server --embeddings");
    let env = Env::from_pairs([
        ("EMBEDDINGS_BASE_URL", server.base_url()),
        ("EMBEDDINGS_MODEL", "all-minilm-l6-v2".into()),
    ]);
    let remote =
        Embedder::build(EmbedderSettings::Remote(Endpoint::from_env(&env, "EMBEDDINGS").expect("endpoint")))
            .await
            .expect("client");
    let texts: Vec<String> = ["My cat is called Tom.", "Quarterly revenue grew by four percent.", "ok"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let a = embedder.embed(texts.clone()).await.expect("local");
    let b = remote.embed(texts).await.expect("remote");
    for (x, y) in a.iter().zip(&b) {
        assert!(cosine(x, y) > 0.999, "cosine {}", cosine(x, y));
    }
}
