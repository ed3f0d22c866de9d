//! What a stream reads from the hub: the replayed events, then the live ones; or just
//! one message's events until its end.

use std::{
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use futures::{stream, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use crate::reply::{EventId, ReplyEvent};

/// What a new stream starts with.
pub struct Subscription {
    /// Events to send first (replay), oldest first.
    pub backlog: Vec<Arc<ReplyEvent>>,
    /// True when `Last-Event-ID` was older than the replay window: some events are gone.
    pub gap: bool,
    /// Events from now on.
    pub live: mpsc::Receiver<Arc<ReplyEvent>>,
    /// The last event the client had (`Last-Event-ID`).
    pub after: Option<EventId>,
}

/// The replayed then live events of a subscription.
pub type Events = stream::Chain<stream::Iter<std::vec::IntoIter<Arc<ReplyEvent>>>, Live>;

impl Subscription {
    /// The replayed events, then the live ones. Ends when the hub drops this stream's
    /// sender: its client read too slowly (bounded memory) and resumes from the replay
    /// window with `Last-Event-ID`.
    pub fn events(self) -> Events {
        stream::iter(self.backlog).chain(Live { events: ReceiverStream::new(self.live), after: self.after })
    }

    /// Only `message_id`'s events, ending right after its `done` or `error` without
    /// waiting for another event (`POST /chat?stream=true`, the OpenAI façade).
    pub fn until_final(self, message_id: Uuid) -> UntilFinal {
        UntilFinal { events: self.events(), message_id, ended: false }
    }
}

/// The live events of a subscription, without those the client already had: a client
/// resuming on a replica whose relay is behind the one it came from would otherwise
/// get the events in between twice.
pub struct Live {
    events: ReceiverStream<Arc<ReplyEvent>>,
    /// Skip events up to this one; `None` once past it (events come in log order).
    after: Option<EventId>,
}

impl Stream for Live {
    type Item = Arc<ReplyEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let Some(event) = ready!(self.events.poll_next_unpin(cx)) else { return Poll::Ready(None) };
            match self.after {
                Some(after) if !event.id.is_after(&after) => continue,
                _ => {
                    self.after = None;
                    return Poll::Ready(Some(event));
                }
            }
        }
    }
}

/// One message's events until its final one.
pub struct UntilFinal {
    events: Events,
    message_id: Uuid,
    ended: bool,
}

impl Stream for UntilFinal {
    type Item = Arc<ReplyEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        loop {
            let Some(event) = ready!(self.events.poll_next_unpin(cx)) else { return Poll::Ready(None) };
            if event.message_id == self.message_id {
                self.ended = event.is_final();
                return Poll::Ready(Some(event));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        hub::{Hub, HubLimits},
        reply::EventId,
    };
    use futures::FutureExt;
    use platform::events::{ModelResponse, ReplyBody, UserMessage};

    fn response(msg: &UserMessage, body: ReplyBody) -> ModelResponse {
        ModelResponse::for_message(msg, Uuid::nil(), body)
    }

    #[tokio::test]
    async fn until_final_yields_one_message_and_ends_at_its_done() {
        let hub = Hub::new(HubLimits::default());
        let conversation = Uuid::new_v4();
        let (mine, other) =
            (UserMessage::new(conversation, "alice", "hi"), UserMessage::new(conversation, "alice", "yo"));
        let token = |seq| ReplyBody::Token { seq, delta: "x".into() };
        let done =
            ReplyBody::Done { text: "x".into(), usage: None, finish_reason: "stop".into(), token_events: 1 };
        hub.publish(EventId::record(0, 1), response(&mine, token(0)));
        let events = hub.subscribe(conversation, "alice", None).unwrap().until_final(mine.message_id);
        hub.publish(EventId::record(0, 2), response(&other, token(0)));
        hub.publish(EventId::record(0, 3), response(&mine, done));
        let got: Vec<_> = events.map(|e| (e.message_id, e.name())).collect().await;
        assert_eq!(got, [(mine.message_id, "token"), (mine.message_id, "done")]);

        // A stream whose message has not ended waits for more.
        let mut open = hub.subscribe(conversation, "alice", None).unwrap().until_final(other.message_id);
        assert_eq!(open.next().await.map(|e| e.name()), Some("token"));
        assert!(open.next().now_or_never().is_none(), "ended before the message's end");
    }

    #[tokio::test]
    async fn a_client_ahead_of_this_replicas_relay_gets_no_event_twice() {
        let hub = Hub::new(HubLimits::default());
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let token = |seq| ReplyBody::Token { seq, delta: "x".into() };
        hub.publish(EventId::record(0, 1), response(&msg, token(0)));
        // The client saw up to offset 3 on another replica; this one has read offset 1.
        let sub = hub.subscribe(msg.conversation_id, "alice", Some(EventId::record(0, 3))).unwrap();
        for (offset, seq) in [(2, 1), (3, 2), (4, 3)] {
            hub.publish(EventId::record(0, offset), response(&msg, token(seq)));
        }
        let mut events = sub.events();
        assert_eq!(events.next().await.map(|e| e.id), Some(EventId::record(0, 4)), "2 and 3 it had");
    }
}
