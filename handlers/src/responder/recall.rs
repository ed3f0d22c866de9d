//! What the responder remembers for a message: the conversation's recent turns and the
//! user's most similar memories. A memory outage degrades to answering without memory.

use crate::{
    embed::Embedder,
    store::{Memory, MemoryStore},
};
use platform::events::UserMessage;

/// Recalled memories.
#[derive(Debug, Default)]
pub struct Recalled {
    /// The conversation's latest turns, oldest first.
    pub recent: Vec<Memory>,
    /// The user's memories most similar to the message, best first.
    pub similar: Vec<Memory>,
}

/// Reads memories for the responder.
#[derive(Clone)]
pub struct Recall {
    /// The memory store.
    pub store: MemoryStore,
    /// Embeds the message to search by meaning.
    pub embedder: Embedder,
    /// Recent turns to fetch.
    pub recent_turns: u32,
    /// Similar memories to fetch.
    pub top_k: u64,
}

impl Recall {
    /// Recalls for `message`; failures are logged and yield fewer memories, never an error.
    pub async fn recall(&self, message: &UserMessage) -> Recalled {
        let recent = async {
            match self
                .store
                .recent_turns(&message.user_id, message.conversation_id, self.recent_turns + 1)
                .await
            {
                Ok(turns) => turns,
                Err(err) => {
                    tracing::warn!(error = %err, "memory unavailable: answering without recent turns");
                    degraded("recent_turns");
                    Vec::new()
                }
            }
        };
        let similar = async {
            if self.top_k == 0 {
                return Vec::new();
            }
            let vector = match self.embedder.embed(vec![message.text.clone()]).await {
                Ok(mut v) if !v.is_empty() => v.swap_remove(0),
                Ok(_) => return Vec::new(),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot embed the message: answering without similar memories");
                    degraded("embedding");
                    return Vec::new();
                }
            };
            match self.store.similar(&message.user_id, vector, self.top_k + 1).await {
                Ok(found) => found.into_iter().map(|(m, _)| m).collect(),
                Err(err) => {
                    tracing::warn!(error = %err, "memory unavailable: answering without similar memories");
                    degraded("similar");
                    Vec::new()
                }
            }
        };
        let (recent, similar) = tokio::join!(recent, similar);
        // One extra of each was fetched in case the message itself is already stored.
        let mut recent: Vec<Memory> =
            recent.into_iter().filter(|m| m.message_id != message.message_id).collect();
        if recent.len() > self.recent_turns as usize {
            recent.drain(..recent.len() - self.recent_turns as usize);
        }
        let similar = similar
            .into_iter()
            .filter(|m| m.message_id != message.message_id)
            .take(self.top_k as usize)
            .collect();
        Recalled { recent, similar }
    }
}

/// Metric: recalls that failed, by `part` (`recent_turns`, `similar`).
const RECALL_FAILURES: &str = "responder_recall_failures_total";

/// Creates the recall-failure counters at 0 (a series before the first failure).
pub fn register_metrics() {
    for part in ["recent_turns", "similar"] {
        metrics::counter!(RECALL_FAILURES, "part" => part).absolute(0);
    }
}

/// Counts a recall that failed, so a dashboard shows answers given without memory.
fn degraded(part: &'static str) {
    metrics::counter!(RECALL_FAILURES, "part" => part).increment(1);
}
