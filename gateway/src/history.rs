//! The history and memory behind `/conversations` and `/memories`: the Qdrant
//! collection of turns the memory worker writes, read and deleted through
//! `memory-store` (the same code the handlers use, so a read here filters deletions as
//! the responder's recall does).

use std::time::Duration;

use axum::http::StatusCode;
use memory_store::{
    deletions::Deletion,
    embed::{EmbedError, Embedder, EmbedderSettings},
    store::{Memory, MemoryStore, StoreError, StoreSettings},
};
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::error::ApiError;

/// How long one Qdrant call may take before the route answers 503: short, so a client
/// hears about an outage quickly (well inside `REQUEST_TIMEOUT_SECS`).
const QDRANT_TIMEOUT: Duration = Duration::from_secs(3);

/// Seconds a client is told to wait (`Retry-After`) when memory is unavailable.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Reads and deletes a user's stored turns.
pub struct History {
    store: MemoryStore,
    embedder_settings: Result<EmbedderSettings, String>,
    /// Built on the first search: a gateway that is never asked to search never loads
    /// the model.
    embedder: OnceCell<Embedder>,
}

impl History {
    /// A client of the collection (connects lazily: an unreachable Qdrant is an error
    /// of the first call, never of the start).
    pub fn new(store: &StoreSettings, embedder: Result<EmbedderSettings, String>) -> anyhow::Result<Self> {
        Ok(Self {
            store: MemoryStore::new(store, QDRANT_TIMEOUT)?,
            embedder_settings: embedder,
            embedder: OnceCell::new(),
        })
    }

    /// Every turn of the user's conversation, in order.
    pub async fn conversation(&self, user_id: &str, conversation_id: Uuid) -> Result<Vec<Memory>, ApiError> {
        self.store.conversation(user_id, conversation_id).await.map_err(store_error)
    }

    /// Every turn of the user, without text.
    pub async fn user_turns(&self, user_id: &str) -> Result<Vec<Memory>, ApiError> {
        self.store.user_turns(user_id).await.map_err(store_error)
    }

    /// Some of the user's turns, with text.
    pub async fn turns_by_id(&self, user_id: &str, ids: &[Uuid]) -> Result<Vec<Memory>, ApiError> {
        self.store.turns_by_id(user_id, ids).await.map_err(store_error)
    }

    /// The user's latest turns, newest first.
    pub async fn latest(&self, user_id: &str, limit: u32) -> Result<Vec<Memory>, ApiError> {
        self.store.latest(user_id, limit).await.map_err(store_error)
    }

    /// The user's turns most similar to `query`, as the responder recalls them.
    pub async fn search(
        &self,
        user_id: &str,
        query: &str,
        limit: u64,
    ) -> Result<Vec<(Memory, f32)>, ApiError> {
        let embedder = self.embedder().await?;
        let vector = match embedder.embed(vec![query.to_string()]).await {
            Ok(mut vectors) if !vectors.is_empty() => vectors.swap_remove(0),
            Ok(_) => return Ok(Vec::new()),
            Err(EmbedError::Unavailable(e)) => {
                return Err(search_unavailable(format!("the embeddings service is unavailable: {e}")))
            }
            Err(EmbedError::Failed(e)) => return Err(search_unavailable(format!("embedding failed: {e}"))),
        };
        self.store.similar(user_id, vector, limit).await.map_err(store_error)
    }

    /// Deletes the user's conversation (`Some`) or everything of the user, for good.
    pub async fn forget(&self, user_id: &str, conversation_id: Option<Uuid>) -> Result<Deletion, ApiError> {
        self.store.forget(user_id, conversation_id).await.map_err(store_error)
    }

    async fn embedder(&self) -> Result<&Embedder, ApiError> {
        let settings = self.embedder_settings.as_ref().map_err(|why| {
            search_unavailable(format!("searching memories needs the embedder's settings: {why}"))
        })?;
        self.embedder
            .get_or_try_init(|| async {
                Embedder::build(settings.clone()).await.map_err(|e| {
                    tracing::error!(error = %format!("{e:#}"), "cannot load the embedder for memory search");
                    search_unavailable(format!("the embedder could not be loaded: {e:#}"))
                })
            })
            .await
    }
}

/// `limit`, or `default`, checked to be within 1..=`max`.
pub fn limit(limit: Option<u32>, default: u32, max: u32) -> Result<usize, ApiError> {
    match limit.unwrap_or(default) {
        n if (1..=max).contains(&n) => Ok(n as usize),
        n => {
            Err(ApiError::bad_request("invalid_query", format!("limit must be between 1 and {max}, not {n}")))
        }
    }
}

/// A time in milliseconds as RFC 3339 UTC (what every route shows).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// 503 for every history route when `QDRANT_URL` is not set.
pub fn not_configured() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "history_unavailable",
        "history and memory are not configured on this gateway (QDRANT_URL is not set)",
    )
    .retry_after(RETRY_AFTER)
}

fn search_unavailable(message: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "search_unavailable", message).retry_after(RETRY_AFTER)
}

fn store_error(err: StoreError) -> ApiError {
    match err {
        StoreError::Unavailable(_) => {
            tracing::warn!(error = %err, "memory store unavailable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "history_unavailable",
                "the memory store (Qdrant) is unavailable; try again later",
            )
            .retry_after(RETRY_AFTER)
        }
        StoreError::Rejected(_) => {
            tracing::error!(error = %err, "memory store refused a request");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "history_failed",
                "the memory store refused the request",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_outside_the_range_are_refused() {
        assert_eq!(limit(None, 20, 100).ok(), Some(20));
        assert!(limit(Some(0), 20, 100).is_err());
        assert!(limit(Some(101), 20, 100).is_err());
        assert_eq!(limit(Some(100), 20, 100).ok(), Some(100));
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
