//! The LLM endpoints through `async-openai`, against llama.cpp's llama-server running
//! real tiny models: SmolLM2-135M-Instruct (chat) and all-MiniLM-L6-v2 (embeddings).

use async_openai::types::{
    chat::{
        ChatCompletionRequestSystemMessageArgs, ChatCompletionRequestUserMessageArgs,
        ChatCompletionStreamOptions, CreateChatCompletionRequestArgs,
    },
    embeddings::CreateEmbeddingRequestArgs,
};
use futures::StreamExt;
use platform::{llm::Endpoint, settings::Env};
use testkit::LlamaServer;

fn endpoint(server: &LlamaServer, model: &str) -> Endpoint {
    let env = Env::from_pairs([
        ("OPENAI_BASE_URL", server.base_url()),
        ("OPENAI_MODEL", model.to_string()),
        ("OPENAI_API_KEY", "unused-by-llama-server".to_string()),
    ]);
    Endpoint::from_env(&env, "OPENAI").expect("endpoint settings")
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_streams_deltas_then_a_finish_reason() {
    let server = LlamaServer::chat().expect("start llama-server with SmolLM2");
    let endpoint = endpoint(&server, "smollm2");
    let client = endpoint.client().expect("client");
    let request = CreateChatCompletionRequestArgs::default()
        .model(&endpoint.model)
        .temperature(0.0)
        .max_completion_tokens(48u32)
        .stream(true)
        .stream_options(ChatCompletionStreamOptions { include_usage: Some(true), ..Default::default() })
        .messages([
            ChatCompletionRequestSystemMessageArgs::default()
                .content("You are a helpful assistant. Answer in one sentence.")
                .build()
                .expect("system message")
                .into(),
            ChatCompletionRequestUserMessageArgs::default()
                .content("What is the capital of France?")
                .build()
                .expect("user message")
                .into(),
        ])
        .build()
        .expect("request");

    let mut stream = client.chat().create_stream(request).await.expect("stream opens");
    let (mut deltas, mut text, mut finish, mut usage) = (0, String::new(), None, None);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("a well-formed chunk");
        if chunk.usage.is_some() {
            usage = chunk.usage;
        }
        for choice in chunk.choices {
            if let Some(content) = choice.delta.content.filter(|c| !c.is_empty()) {
                deltas += 1;
                text.push_str(&content);
            }
            if choice.finish_reason.is_some() {
                finish = choice.finish_reason;
            }
        }
    }
    assert!(deltas > 1, "expected a streamed reply, got {deltas} deltas: {text:?}");
    assert!(finish.is_some(), "the stream ended without a finish reason");
    assert!(text.contains("Paris"), "SmolLM2 at temperature 0 should name Paris: {text:?}");
    let usage = usage.expect("usage in the final chunk");
    assert!(usage.completion_tokens > 0 && usage.prompt_tokens > 0, "{usage:?}");
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>()
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_are_384_dim_unit_vectors_that_rank_meaning() {
    let server = LlamaServer::embeddings().expect("start llama-server with all-MiniLM-L6-v2");
    let endpoint = endpoint(&server, "all-minilm-l6-v2");
    let client = endpoint.client().expect("client");
    let texts = [
        "My dog loves to play fetch in the park.",
        "The puppy enjoys chasing a ball on the grass.",
        "Quarterly tax filings are due at the end of the month.",
    ];
    let request = CreateEmbeddingRequestArgs::default()
        .model(&endpoint.model)
        .input(texts.map(String::from).to_vec())
        .build()
        .expect("request");
    let response = client.embeddings().create(request).await.expect("embeddings");
    assert_eq!(response.data.len(), 3);
    let vectors: Vec<Vec<f32>> = response.data.into_iter().map(|e| e.embedding).collect();
    for v in &vectors {
        assert_eq!(v.len(), 384);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "not normalised: {norm}");
    }
    let similar = cosine(&vectors[0], &vectors[1]);
    let unrelated = cosine(&vectors[0], &vectors[2]);
    assert!(similar > unrelated + 0.2, "similar {similar} vs unrelated {unrelated}");
}
