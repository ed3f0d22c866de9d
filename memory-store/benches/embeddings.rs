//! Embedding engines compared on the memory worker's texts (issue 18, part 4): the
//! in-process candle embedder, the same model as ONNX run in-process by rten, and
//! llama.cpp's llama-server (`/v1/embeddings`, through
//! the `remote` embedder) in several configurations, at the same batch sizes.
//!
//! For each engine and batch size: turns/s, ms per batch, and the lowest cosine between
//! its vectors and the reference (the candle f32 vectors of the same texts, as the
//! memory worker makes them today, in batches of 32).
//!
//! Run: `ci/bench.sh embeddings`. Knobs: BENCH_EMBED_TEXTS (128 texts per set),
//! BENCH_EMBED_BATCHES ("1,8,32"), BENCH_EMBED_ONLY (run only engines whose label
//! contains it), BENCH_EMBED_LABEL (suffix for the candle rows, e.g. the thread count),
//! BENCH_EMBED_DUMP (write the texts, batch sizes and reference vectors there as JSON,
//! for ci/bench_embed_ort.py to run ONNX Runtime on the same).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context;
use memory_store::embed::{local::LocalEmbedder, onnx::OnnxEmbedder, remote::RemoteEmbedder};
use platform::llm::Endpoint;
use testkit::{free_port, http_status, repo_root, Process, Signal};

/// The memory worker benchmark's texts (handlers/benches/handlers.rs): short user turns.
const SENTENCES: [&str; 8] = [
    "I keep bees on the roof of my flat in Lisbon.",
    "Can you remind me what time the dentist appointment is?",
    "My daughter starts school next week and she is nervous.",
    "What is a good recipe for a quick vegetarian dinner?",
    "I have been learning the cello for about three years now.",
    "Our team ships the new release on Thursday afternoon.",
    "The train to Porto was delayed again this morning.",
    "Please explain how photosynthesis works in simple terms.",
];

/// The two text sets: the worker benchmark's short turns (all ~17 word pieces), and a
/// mix of 1 to 8 sentences (~15–110 word pieces, like user turns next to replies),
/// where a batch padded to its longest text wastes most.
fn text_sets(n: usize) -> Vec<(&'static str, Vec<String>)> {
    let turns = (0..n).map(|i| format!("{} (note {i})", SENTENCES[i % SENTENCES.len()])).collect();
    let mixed = (0..n)
        .map(|i| {
            // 1..=8 sentences, in an order that does not repeat with the batch size.
            let count = 1 + (i * 5 + i / 8) % 8;
            let body: Vec<&str> = (0..count).map(|k| SENTENCES[(i + k) % SENTENCES.len()]).collect();
            format!("{} (note {i})", body.join(" "))
        })
        .collect();
    vec![("turns", turns), ("mixed", mixed)]
}

/// One llama-server configuration: the GGUF (env var naming its path), threads,
/// slots (-np) and micro-batch (-ub).
struct LlamaConfig {
    label: &'static str,
    gguf_var: &'static str,
    threads: usize,
    slots: usize,
    ubatch: usize,
}

const LLAMA_CONFIGS: &[LlamaConfig] = &[
    // The stack's `run-embed` as it is (one thread: see ci/deps/llama.sh).
    LlamaConfig {
        label: "llama-server f32 -t 1 -np 4 -ub 512",
        gguf_var: "EMBED_MODEL_GGUF",
        threads: 1,
        slots: 4,
        ubatch: 512,
    },
    LlamaConfig {
        label: "llama-server f32 -t 2 -np 4 -ub 512",
        gguf_var: "EMBED_MODEL_GGUF",
        threads: 2,
        slots: 4,
        ubatch: 512,
    },
    LlamaConfig {
        label: "llama-server f32 -t 2 -np 32 -ub 2048",
        gguf_var: "EMBED_MODEL_GGUF",
        threads: 2,
        slots: 32,
        ubatch: 2048,
    },
    LlamaConfig {
        label: "llama-server f16 -t 2 -np 32 -ub 2048",
        gguf_var: "EMBED_MODEL_GGUF_F16",
        threads: 2,
        slots: 32,
        ubatch: 2048,
    },
    LlamaConfig {
        label: "llama-server q8_0 -t 2 -np 32 -ub 2048",
        gguf_var: "EMBED_MODEL_GGUF_Q8_0",
        threads: 2,
        slots: 32,
        ubatch: 2048,
    },
];

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn batch_sizes() -> Vec<usize> {
    std::env::var("BENCH_EMBED_BATCHES")
        .unwrap_or_else(|_| "1,8,32".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&b| b > 0)
        .collect()
}

fn selected(label: &str) -> bool {
    std::env::var("BENCH_EMBED_ONLY").map_or(true, |only| label.contains(&only))
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Times `embed` over all texts in batches of `batch` (after one warm-up batch) and
/// prints a table row.
async fn measure<F, Fut>(
    label: &str,
    set: &str,
    texts: &[String],
    reference: &[Vec<f32>],
    batch: usize,
    embed: F,
) where
    F: Fn(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Vec<Vec<f32>>>,
{
    embed(texts[..batch.min(texts.len())].to_vec()).await;
    let started = Instant::now();
    let mut vectors = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(batch) {
        vectors.extend(embed(chunk.to_vec()).await);
    }
    let secs = started.elapsed().as_secs_f64();
    let batches = texts.len().div_ceil(batch);
    let min_cos = vectors.iter().zip(reference).map(|(v, r)| cosine(v, r)).fold(f64::INFINITY, f64::min);
    println!(
        "| {label} | {set} | {batch} | **{:.0}** | {:.1} | {min_cos:.6} |",
        texts.len() as f64 / secs,
        1000.0 * secs / batches as f64,
    );
}

/// llama-server started through `ci/deps/llama.sh run-embed` with one configuration.
fn start_llama(config: &LlamaConfig, log_dir: &Path) -> anyhow::Result<(Process, u16)> {
    let gguf = std::env::var(config.gguf_var).map_err(|_| anyhow::anyhow!("{} not set", config.gguf_var))?;
    let port = free_port()?;
    let mut command = Command::new("bash");
    command
        .arg(repo_root().join("ci/deps/llama.sh"))
        .args(["run-embed", &port.to_string()])
        .env("EMBED_MODEL_GGUF_OVERRIDE", gguf)
        .env("LLAMA_THREADS", config.threads.to_string())
        .env("LLAMA_EMBED_SLOTS", config.slots.to_string())
        .env("LLAMA_EMBED_UBATCH", config.ubatch.to_string());
    let mut process =
        Process::spawn("llama-server", command, log_dir.join(format!("llama-{port}.log")), Signal::SIGTERM)?;
    process.wait_until(Duration::from_secs(60), || http_status(port, "/health") == Some(200))?;
    Ok((process, port))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    testkit::require_env(&["EMBED_MODEL_DIR", "EMBED_MODEL_GGUF", "LLAMA_SERVER_BIN"])?;
    let model_dir = PathBuf::from(std::env::var("EMBED_MODEL_DIR")?);
    let n = env_or("BENCH_EMBED_TEXTS", 128);
    let batches = batch_sizes();
    let suffix = std::env::var("BENCH_EMBED_LABEL").unwrap_or_default();
    let sets = text_sets(n);

    let candle = std::sync::Arc::new(LocalEmbedder::load(&model_dir)?);
    let mut references: HashMap<&str, Vec<Vec<f32>>> = HashMap::new();
    for (set, texts) in &sets {
        let mut vectors = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(32) {
            vectors.extend(candle.embed(chunk).map_err(|e| anyhow::anyhow!("{e}"))?);
        }
        let tokens: usize = texts.iter().map(|t| candle.token_count(t)).sum();
        println!(
            "set `{set}`: {} texts, {:.1} word pieces per text on average",
            texts.len(),
            tokens as f64 / texts.len() as f64
        );
        references.insert(set, vectors);
    }
    if let Ok(path) = std::env::var("BENCH_EMBED_DUMP") {
        let sets: serde_json::Map<String, serde_json::Value> = sets
            .iter()
            .map(|(set, texts)| {
                (set.to_string(), serde_json::json!({"texts": texts, "reference": references[set]}))
            })
            .collect();
        let dump = serde_json::json!({"batches": batches, "sets": sets});
        std::fs::write(&path, dump.to_string()).with_context(|| format!("writing {path}"))?;
    }
    println!();
    println!("| engine | texts | batch | turns/s | ms/batch | min cosine |");
    println!("|---|---|---|---|---|---|");

    for (label, bucketed) in [("candle f32", false), ("candle f32, sorted + bucketed", true)] {
        let label = format!("{label}{suffix}");
        if !selected(&label) {
            continue;
        }
        for (set, texts) in &sets {
            for &batch in &batches {
                let model = candle.clone();
                measure(&label, set, texts, &references[set], batch, |chunk| {
                    let model = model.clone();
                    async move {
                        let run = if bucketed { model.embed(&chunk) } else { model.embed_padded(&chunk) };
                        run.expect("candle embeds")
                    }
                })
                .await;
            }
        }
    }

    let label = format!("rten (ONNX) f32{suffix}");
    if selected(&label) {
        let rten = std::sync::Arc::new(OnnxEmbedder::load(&model_dir)?);
        for (set, texts) in &sets {
            for &batch in &batches {
                let model = rten.clone();
                measure(&label, set, texts, &references[set], batch, |chunk| {
                    let model = model.clone();
                    async move { model.embed(&chunk).expect("rten embeds") }
                })
                .await;
            }
        }
    }

    let log_dir = tempfile::tempdir()?;
    for config in LLAMA_CONFIGS {
        if !selected(config.label) {
            continue;
        }
        let (mut server, port) = match start_llama(config, log_dir.path()) {
            Ok(started) => started,
            Err(e) => {
                println!("| {} | — | — | not run: {e:#} | | |", config.label);
                continue;
            }
        };
        let endpoint = Endpoint {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            model: "all-minilm-l6-v2".into(),
            api_key: None,
            timeout: Duration::from_secs(120),
        };
        let remote = RemoteEmbedder::new(&endpoint)?;
        for (set, texts) in &sets {
            for &batch in &batches {
                measure(config.label, set, texts, &references[set], batch, |chunk| {
                    let remote = remote.clone();
                    async move { remote.embed(chunk).await.expect("llama-server embeds") }
                })
                .await;
            }
        }
        server.stop_with(Signal::SIGTERM, Duration::from_secs(10))?;
    }
    Ok(())
}
