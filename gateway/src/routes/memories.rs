//! `GET /memories?q=…`: what the bot would recall for the caller (the responder's
//! per-user similarity search, with scores; without `q`, the latest turns), and
//! `DELETE /memories` ("forget me"): everything stored for the caller, for good.

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use memory_store::store::Memory;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    auth::User,
    error::ApiError,
    history::{limit, rfc3339},
    state::AppState,
};

/// Longest search text accepted, in characters: the embedder reads its first 256
/// tokens anyway, and a longer one would not fit a URL (hyper answers 414).
const MAX_QUERY_CHARS: usize = 2048;

/// The query of `GET /memories`.
#[derive(Debug, Deserialize)]
pub struct MemoriesQuery {
    /// Search by meaning for this text; without it, the latest turns.
    pub q: Option<String>,
    /// How many (1..=50, default 10).
    pub limit: Option<u32>,
}

/// `GET /memories?q=…&limit=N`.
pub async fn get(
    State(state): State<AppState>,
    user: User,
    query: Result<Query<MemoriesQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query?;
    let limit = limit(query.limit, 10, 50)?;
    let q = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    if q.is_some_and(|q| q.chars().count() > MAX_QUERY_CHARS) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("q is longer than {MAX_QUERY_CHARS} characters"),
        ));
    }
    let history = state.history()?;
    let memories: Vec<Value> = match q {
        Some(q) => history
            .search(&user.id, q, limit as u64)
            .await?
            .iter()
            .map(|(m, score)| view(m, Some(*score)))
            .collect(),
        None => history.latest(&user.id, limit as u32).await?.iter().map(|m| view(m, None)).collect(),
    };
    Ok(Json(json!({ "memories": memories })))
}

/// `DELETE /memories`: 202 once the deletion is recorded and the stored turns are gone.
pub async fn delete(State(state): State<AppState>, user: User) -> Result<Response, ApiError> {
    let deletion = state.history()?.forget(&user.id, None).await?;
    tracing::info!(deletion_id = %deletion.deletion_id, "every memory of the user deleted");
    Ok((StatusCode::ACCEPTED, Json(json!({ "deletion_id": deletion.deletion_id }))).into_response())
}

fn view(m: &Memory, score: Option<f32>) -> Value {
    json!({
        "text": m.text,
        "role": m.role.as_str(),
        "conversation_id": m.conversation_id,
        "message_id": m.message_id,
        "ts": rfc3339(m.ts_ms),
        "score": score,
    })
}
