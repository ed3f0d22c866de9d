//! `GET /stream`: Server-Sent Events of a conversation's replies.
//!
//! Events: `token`, `done`, `error`, `reset` (a new attempt replaces the partial text)
//! and `gap` (resuming from a `Last-Event-ID` older than the replay window: events were
//! lost; the next `done` still carries the whole reply). Every event has an `id`, so
//! `EventSource` resumes with `Last-Event-ID` on any replica. A slow client whose
//! buffer fills is disconnected and resumes the same way. On shutdown, streams end
//! with a `shutdown` event.

use std::convert::Infallible;

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::HeaderMap,
    response::{sse::Event, Sse},
};
use futures::Stream;
use serde::Deserialize;
use uuid::Uuid;

use crate::{auth::User, error::ApiError, hub::SubscribeError, reply::EventId, sse, state::AppState};

/// The query of `GET /stream`.
#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    /// The conversation to stream.
    pub conversation_id: Uuid,
}

/// `GET /stream?conversation_id=…`.
pub async fn get_stream(
    State(state): State<AppState>,
    user: User,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(query) = query?;
    if !state.intake.ids.is_owned_by(&query.conversation_id, &user.id) {
        return Err(ApiError::unknown_conversation());
    }
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(|s| s.parse::<EventId>().ok()).ok_or_else(|| {
            ApiError::bad_request("invalid_last_event_id", "Last-Event-ID must be an id this stream sent")
        })?),
    };
    let subscription = state
        .hub
        .subscribe(query.conversation_id, &user.id, last_event_id)
        .map_err(|SubscribeError::NotOwner| ApiError::unknown_conversation())?;
    let gap = subscription.gap.then(sse::gap_event);
    Ok(sse::response(&state, gap, subscription.events()))
}
