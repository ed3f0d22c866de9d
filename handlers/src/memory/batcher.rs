//! Opportunistic batching: concurrent `store` calls that arrive while a batch is being
//! embedded are embedded and upserted together as the next batch. A lone call is
//! handled at once, so batching adds no latency when the worker is quiet.
//!
//! A batch's upsert runs while the next batch is embedded (one upsert at a time, in
//! batch order): embedding takes the CPU, an upsert mostly waits on Qdrant, so running
//! them one after the other left the model idle for every upsert.

use platform::otel;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::{Instrument, Span};

use crate::{
    embed::{EmbedError, Embedder},
    store::{Dropped, Memory, MemoryStore, StoreError},
};

/// Why a memory was not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreFailure {
    /// Qdrant or the embeddings service is unreachable: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The embedder failed on this input.
    #[error("{0}")]
    Failed(String),
    /// Qdrant refused the write; the same write will be refused again.
    #[error("{0}")]
    Rejected(String),
}

/// A memory to store, the span of the record it came from, and where to answer.
type Request = (Memory, Span, oneshot::Sender<Result<bool, StoreFailure>>);

/// Handle to the batching task.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Request>,
}

impl Batcher {
    /// Starts the batching task; `batch_size` 1 turns batching off.
    pub fn spawn(embedder: Embedder, store: MemoryStore, batch_size: usize) -> Self {
        let (tx, rx) = mpsc::channel(batch_size.max(1) * 4);
        tokio::spawn(run(embedder, store, batch_size.max(1), rx));
        Self { tx }
    }

    /// Embeds and stores one memory; resolves once it is in Qdrant (`true`), or once it
    /// was dropped because its conversation was deleted (`false`).
    pub async fn store(&self, memory: Memory) -> Result<bool, StoreFailure> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((memory, Span::current(), reply))
            .await
            .map_err(|_| StoreFailure::Failed("batcher stopped".into()))?;
        answer.await.map_err(|_| StoreFailure::Failed("batcher dropped the request".into()))?
    }
}

async fn run(embedder: Embedder, store: MemoryStore, batch_size: usize, mut rx: mpsc::Receiver<Request>) {
    let mut batch = Vec::with_capacity(batch_size);
    // The previous batch's upsert, still running while this batch is embedded.
    let mut upserting: Option<JoinHandle<()>> = None;
    while rx.recv_many(&mut batch, batch_size).await > 0 {
        metrics::histogram!("memory_batch_size").record(batch.len() as f64);
        let requests = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
        let span = batch_span(&requests);
        let texts = requests.iter().map(|(m, _, _)| m.text.clone()).collect();
        let embedded = embed(&embedder, texts).instrument(span.clone()).await;
        // Upserts stay in batch order, one at a time.
        if let Some(previous) = upserting.take() {
            let _ = previous.await;
        }
        match embedded {
            Ok(vectors) => {
                let store = store.clone();
                upserting = Some(tokio::spawn(upsert_and_reply(store, requests, vectors).instrument(span)));
            }
            // One bad input must not fail the others: after a refusal, each is tried alone.
            Err(StoreFailure::Failed(_)) if requests.len() > 1 => {
                for (memory, record, reply) in requests {
                    let alone = otel::span_under(&record, "store", otel::Kind::Internal);
                    let stored = store_alone(&embedder, &store, &memory).instrument(alone).await;
                    let _ = reply.send(stored);
                }
            }
            Err(failure) => {
                for (_, _, reply) in requests {
                    let _ = reply.send(Err(failure.clone()));
                }
            }
        }
    }
    if let Some(previous) = upserting {
        let _ = previous.await;
    }
}

/// Upserts an embedded batch and answers its callers; a batch Qdrant refuses is
/// upserted point by point, so that one bad point does not fail the others.
async fn upsert_and_reply(store: MemoryStore, requests: Vec<Request>, vectors: Vec<Vec<f32>>) {
    let points: Vec<_> = requests.iter().map(|(m, _, _)| m.clone()).zip(vectors).collect();
    match upsert(&store, &points).await {
        Err(StoreFailure::Rejected(_)) if points.len() > 1 => {
            for ((memory, record, reply), point) in requests.into_iter().zip(points) {
                let alone = otel::span_under(&record, "store", otel::Kind::Internal);
                let stored = upsert(&store, std::slice::from_ref(&point)).instrument(alone).await;
                let _ = reply.send(stored.map(|dropped| !dropped.point_ids.contains(&memory.point_id)));
            }
        }
        result => {
            for (memory, _, reply) in requests {
                let stored = result.as_ref().map(|dropped| !dropped.point_ids.contains(&memory.point_id));
                let _ = reply.send(stored.map_err(Clone::clone));
            }
        }
    }
}

/// Embeds and upserts one memory; `true` once stored, `false` if it was dropped.
async fn store_alone(
    embedder: &Embedder,
    store: &MemoryStore,
    memory: &Memory,
) -> Result<bool, StoreFailure> {
    let vectors = embed(embedder, vec![memory.text.clone()]).await?;
    let points: Vec<_> = std::iter::once(memory.clone()).zip(vectors).collect();
    let dropped = upsert(store, &points).await?;
    Ok(!dropped.point_ids.contains(&memory.point_id))
}

/// When traces are exported, the batch's span: a child of its first record's span (so
/// a lone message's trace shows its embed and upsert) and linked to the others'.
fn batch_span(batch: &[Request]) -> Span {
    let Some((_, first, _)) = batch.first() else { return Span::none() };
    let span = otel::span_under(first, "store batch", otel::Kind::Internal);
    otel::set(&span, "chat.batch.size", batch.len() as i64);
    for (_, record, _) in &batch[1..] {
        otel::link(&span, record);
    }
    span
}

async fn embed(embedder: &Embedder, texts: Vec<String>) -> Result<Vec<Vec<f32>>, StoreFailure> {
    let started = std::time::Instant::now();
    let vectors = embedder.embed(texts).await.map_err(|e| match e {
        EmbedError::Unavailable(msg) => StoreFailure::Unavailable(msg),
        EmbedError::Failed(msg) => StoreFailure::Failed(msg),
    })?;
    metrics::histogram!("memory_embed_seconds").record(started.elapsed().as_secs_f64());
    Ok(vectors)
}

async fn upsert(store: &MemoryStore, points: &[(Memory, Vec<f32>)]) -> Result<Dropped, StoreFailure> {
    let started = std::time::Instant::now();
    let dropped = store.upsert(points).await.map_err(|e| match e {
        StoreError::Unavailable(_) => StoreFailure::Unavailable(e.to_string()),
        StoreError::Rejected(_) => StoreFailure::Rejected(e.to_string()),
    })?;
    metrics::histogram!("memory_upsert_seconds").record(started.elapsed().as_secs_f64());
    Ok(dropped)
}
