//! Opportunistic batching: concurrent `store` calls that arrive while a batch is being
//! embedded are embedded and upserted together as the next batch. A lone call is
//! handled at once, so batching adds no latency when the worker is quiet.

use platform::otel;
use tokio::sync::{mpsc, oneshot};
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
    while rx.recv_many(&mut batch, batch_size).await > 0 {
        metrics::histogram!("memory_batch_size").record(batch.len() as f64);
        let memories: Vec<Memory> = batch.iter().map(|(m, _, _)| m.clone()).collect();
        let span = batch_span(&batch);
        match store_batch(&embedder, &store, &memories).instrument(span).await {
            // One bad input must not fail the others: after a refusal, each is tried alone.
            Err(StoreFailure::Failed(_) | StoreFailure::Rejected(_)) if batch.len() > 1 => {
                for (memory, record, reply) in batch.drain(..) {
                    let alone = otel::span_under(&record, "store", otel::Kind::Internal);
                    let stored =
                        store_batch(&embedder, &store, std::slice::from_ref(&memory)).instrument(alone).await;
                    let _ = reply.send(stored.map(|dropped| !dropped.point_ids.contains(&memory.point_id)));
                }
            }
            result => {
                for (memory, _, reply) in batch.drain(..) {
                    let stored = result.as_ref().map(|dropped| !dropped.point_ids.contains(&memory.point_id));
                    let _ = reply.send(stored.map_err(Clone::clone));
                }
            }
        }
    }
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

async fn store_batch(
    embedder: &Embedder,
    store: &MemoryStore,
    batch: &[Memory],
) -> Result<Dropped, StoreFailure> {
    let texts = batch.iter().map(|m| m.text.clone()).collect();
    let started = std::time::Instant::now();
    let vectors = embedder.embed(texts).await.map_err(|e| match e {
        EmbedError::Unavailable(msg) => StoreFailure::Unavailable(msg),
        EmbedError::Failed(msg) => StoreFailure::Failed(msg),
    })?;
    metrics::histogram!("memory_embed_seconds").record(started.elapsed().as_secs_f64());
    let points: Vec<_> = batch.iter().cloned().zip(vectors).collect();
    let started = std::time::Instant::now();
    let dropped = store.upsert(&points).await.map_err(|e| match e {
        StoreError::Unavailable(_) => StoreFailure::Unavailable(e.to_string()),
        StoreError::Rejected(_) => StoreFailure::Rejected(e.to_string()),
    })?;
    metrics::histogram!("memory_upsert_seconds").record(started.elapsed().as_secs_f64());
    Ok(dropped)
}
