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

use crate::reply::ReplyEvent;

/// What a new stream starts with.
pub struct Subscription {
    /// Events to send first (replay), oldest first.
    pub backlog: Vec<Arc<ReplyEvent>>,
    /// True when `Last-Event-ID` was older than the replay window: some events are gone.
    pub gap: bool,
    /// Events from now on.
    pub live: mpsc::Receiver<Arc<ReplyEvent>>,
}

/// The replayed then live events of a subscription.
pub type Events =
    stream::Chain<stream::Iter<std::vec::IntoIter<Arc<ReplyEvent>>>, ReceiverStream<Arc<ReplyEvent>>>;

impl Subscription {
    /// The replayed events, then the live ones. Ends when the hub drops this stream's
    /// sender: its client read too slowly (bounded memory) and resumes from the replay
    /// window with `Last-Event-ID`.
    pub fn events(self) -> Events {
        stream::iter(self.backlog).chain(ReceiverStream::new(self.live))
    }

    /// Only `message_id`'s events, ending right after its `done` or `error` without
    /// waiting for another event (`POST /chat?stream=true`, the OpenAI façade).
    pub fn until_final(self, message_id: Uuid) -> UntilFinal {
        UntilFinal { events: self.events(), message_id, ended: false }
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
}
