//! `GET /stream`: Server-Sent Events of a conversation's replies.
//!
//! Events: `token`, `done`, `error`, `reset` (a new attempt replaces the partial text)
//! and `gap` (resuming from a `Last-Event-ID` older than the replay window: events were
//! lost; the next `done` still carries the whole reply). Every event has an `id`, so
//! `EventSource` resumes with `Last-Event-ID` on any replica. A slow client whose
//! buffer fills is disconnected and resumes the same way. On shutdown, streams end
//! with a `shutdown` event.

use std::{convert::Infallible, sync::Arc};

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::HeaderMap,
    response::{
        sse::{Event, KeepAlive},
        Sse,
    },
};
use futures::{future::Either, stream, Stream, StreamExt};
use serde::Deserialize;
use tokio_stream::wrappers::WatchStream;
use uuid::Uuid;

use crate::{
    auth::User,
    error::ApiError,
    hub::{EventId, StreamEvent, SubscribeError, Subscription},
    state::AppState,
};

/// The query of `GET /stream`.
#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    /// The conversation to stream.
    pub conversation_id: Uuid,
}

/// Decrements the open-streams gauge when a stream ends, however it ends.
struct OpenStream;

impl OpenStream {
    fn new() -> Self {
        metrics::gauge!("gateway_open_streams").increment(1.0);
        Self
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!("gateway_open_streams").decrement(1.0);
    }
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
    let gap = subscription.gap.then(|| {
        Event::default()
            .event("gap")
            .data(r#"{"reason":"events older than the replay window were lost; the next done event has the whole reply"}"#)
    });
    Ok(sse(&state, gap, subscription, None))
}

/// The SSE response of a subscription: `first` (if any), the replayed then the live
/// events, heartbeats, and a `shutdown` event when the gateway stops. With `only`, just
/// that message's events, ending after its `done` or `error` (`POST /chat?stream=true`).
pub(super) fn sse(
    state: &AppState,
    first: Option<Event>,
    subscription: Subscription,
    only: Option<Uuid>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let replies = subscription.events();
    let replies = match only {
        None => Either::Left(replies),
        // Ends right after the final event, without waiting for another one.
        Some(message_id) => {
            Either::Right(stream::unfold((replies, false), move |(mut replies, ended)| async move {
                if ended {
                    return None;
                }
                loop {
                    let event = replies.next().await?;
                    if event.message_id == message_id {
                        let last = matches!(event.kind, "done" | "error");
                        return Some((event, (replies, last)));
                    }
                }
            }))
        }
    };
    let shutdown = WatchStream::new(state.shutdown.clone()).filter(|down| futures::future::ready(*down));
    let shutting_down = state.shutdown.clone();
    let guard = OpenStream::new();
    let events = stream::iter(first)
        .chain(replies.map(to_sse))
        .take_until(shutdown.into_future())
        .chain(
            stream::once(async move {
                drop(guard);
                let down = *shutting_down.borrow();
                down.then(|| {
                    Event::default()
                        .event("shutdown")
                        .data(r#"{"reason":"the server is restarting; reconnect"}"#)
                })
            })
            .filter_map(futures::future::ready),
        )
        .map(Ok);
    Sse::new(events).keep_alive(KeepAlive::new().interval(state.heartbeat).text("heartbeat"))
}

fn to_sse(event: Arc<StreamEvent>) -> Event {
    Event::default().id(event.id.to_string()).event(event.kind).data(&event.data)
}
