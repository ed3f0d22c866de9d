//! Server-Sent Events as the gateway sends them: reply events with their ids, the
//! events only a stream knows (`accepted`, `gap`, `shutdown`), heartbeats, and the end
//! of every stream when the gateway stops.

use std::{convert::Infallible, future::Future, sync::Arc};

use axum::response::{
    sse::{Event, KeepAlive},
    Sse,
};
use futures::{stream, Stream, StreamExt};

use crate::{intake::Accepted, reply::ReplyEvent, state::AppState};

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

/// The SSE response of `replies`: `first` (if any), the replies, heartbeats, and a
/// `shutdown` event when the gateway stops.
pub fn response(
    state: &AppState,
    first: Option<Event>,
    replies: impl Stream<Item = Arc<ReplyEvent>> + Send + 'static,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let shutting_down = state.shutdown.clone();
    let guard = OpenStream::new();
    let events = stream::iter(first)
        .chain(replies.map(|reply| reply_event(&reply)))
        .take_until(stopping(state))
        .chain(
            stream::once(async move {
                drop(guard);
                let down = *shutting_down.borrow();
                down.then(shutdown_event)
            })
            .filter_map(futures::future::ready),
        )
        .map(Ok);
    Sse::new(events).keep_alive(KeepAlive::new().interval(state.heartbeat).text("heartbeat"))
}

/// Completes when the gateway starts shutting down: streams end then, so that
/// graceful shutdown does not wait for replies that may take minutes.
pub fn stopping(state: &AppState) -> impl Future<Output = ()> + Send + 'static {
    let mut shutdown = state.shutdown.clone();
    async move {
        // A dropped sender means the gateway is gone: stop too.
        let _ = shutdown.wait_for(|down| *down).await;
    }
}

/// A reply event with its id, name and (shared) data.
fn reply_event(reply: &ReplyEvent) -> Event {
    Event::default().id(reply.id.to_string()).event(reply.name()).data(reply.data())
}

/// The first event of `POST /chat?stream=true`: the 202's body.
pub fn accepted_event(accepted: Accepted) -> Event {
    Event::default().event("accepted").data(accepted.to_json().to_string())
}

/// Sent first when `Last-Event-ID` is older than the replay window.
pub fn gap_event() -> Event {
    Event::default()
        .event("gap")
        .data(r#"{"reason":"events older than the replay window were lost; the next done event has the whole reply"}"#)
}

fn shutdown_event() -> Event {
    Event::default().event("shutdown").data(r#"{"reason":"the server is restarting; reconnect"}"#)
}
