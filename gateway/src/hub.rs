//! Routes relayed reply events to the SSE streams of their conversation.
//!
//! Every gateway replica reads all of `model_responses` and hands each event to the
//! hub, which keeps, per conversation, a bounded replay window (so a stream opened
//! after `POST /chat`, or one reconnecting with `Last-Event-ID`, misses nothing that is
//! still in the window) and one bounded channel per stream open right now. A stream
//! whose channel is full (its client reads too slowly) is cut off; its client resumes
//! from the replay window with `Last-Event-ID`. Channels allocate as events queue, so an
//! idle stream costs little.
//!
//! Attempts: a redelivered user message may be answered twice. Per message the hub
//! forwards one attempt at a time; when a new attempt starts (the first one died), it
//! sends a `reset` so the client drops the partial text, then the new attempt's
//! tokens. A superseded attempt's tokens are dropped. The first `done` or `error` of
//! any attempt ends the message; later events for it are dropped. So a client never
//! sees two attempts' tokens mixed.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    str::FromStr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use platform::events::{ModelResponse, ReplyBody};
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Position of an event in `model_responses`: the SSE `id`, the same on every replica
/// because every replica reads the same log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventId {
    /// Kafka partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.partition, self.offset)
    }
}

impl FromStr for EventId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (p, o) = s.trim().split_once('-').ok_or(())?;
        Ok(Self { partition: p.parse().map_err(|_| ())?, offset: o.parse().map_err(|_| ())? })
    }
}

/// One SSE event as sent to clients.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    /// The SSE `id`.
    pub id: EventId,
    /// The SSE `event` name: `token`, `done`, `error` or `reset`.
    pub kind: &'static str,
    /// The SSE `data`: a JSON object.
    pub data: String,
    /// The user message the event belongs to.
    pub message_id: Uuid,
}

/// Limits of the hub's memory.
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    /// Events kept per conversation for replay.
    pub replay_events: usize,
    /// Conversations tracked at once; the longest idle ones without streams go first.
    pub max_conversations: usize,
    /// A conversation without streams is forgotten after this long without events.
    pub idle_ttl: Duration,
    /// Events buffered per stream before a slow client is cut off (it reconnects and
    /// resumes from the replay window).
    pub stream_buffer: usize,
}

impl Default for HubLimits {
    fn default() -> Self {
        Self {
            replay_events: 256,
            max_conversations: 10_000,
            idle_ttl: Duration::from_secs(600),
            stream_buffer: 256,
        }
    }
}

#[derive(Default)]
struct MessageState {
    current: Option<Uuid>,
    superseded: Vec<Uuid>,
    finished: bool,
    /// The `seq` the current attempt's next token should have: a token below it is a
    /// second copy of one already shown (a producer without idempotence retried a
    /// write that had been stored), and showing it would repeat its text.
    next_seq: u32,
}

struct Conversation {
    user_id: String,
    replay: VecDeque<Arc<StreamEvent>>,
    /// The newest event that fell out of the replay window.
    evicted: Option<EventId>,
    messages: HashMap<Uuid, MessageState>,
    streams: Vec<mpsc::Sender<Arc<StreamEvent>>>,
    last_event: Instant,
}

/// The hub shared by the relay (writer) and the streams (readers).
pub struct Hub {
    limits: HubLimits,
    conversations: Mutex<HashMap<Uuid, Conversation>>,
    accepted: Mutex<AcceptedMessages>,
}

/// When this replica accepted messages whose reply has not started yet, for the
/// time-to-first-token and reply-time metrics (bounded; the oldest are dropped first).
#[derive(Default)]
struct AcceptedMessages {
    at: HashMap<Uuid, Instant>,
    order: VecDeque<Uuid>,
}

/// Messages remembered for latency metrics at most.
const MAX_ACCEPTED: usize = 100_000;

/// What a new stream starts with.
pub struct Subscription {
    /// Events to send first (replay), oldest first.
    pub backlog: Vec<Arc<StreamEvent>>,
    /// True when `Last-Event-ID` was older than the replay window: some events are gone.
    pub gap: bool,
    /// Events from now on.
    pub live: mpsc::Receiver<Arc<StreamEvent>>,
}

impl Subscription {
    /// The replayed events, then the live ones. Ends when the hub drops this stream's
    /// sender: its client read too slowly (bounded memory) and resumes from the replay
    /// window with `Last-Event-ID`.
    pub fn events(self) -> impl futures::Stream<Item = Arc<StreamEvent>> + Unpin {
        use futures::StreamExt;
        futures::stream::iter(self.backlog).chain(tokio_stream::wrappers::ReceiverStream::new(self.live))
    }
}

/// Why a stream was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SubscribeError {
    /// The conversation's events belong to another user.
    NotOwner,
}

impl Hub {
    /// An empty hub.
    pub fn new(limits: HubLimits) -> Self {
        Self { limits, conversations: Mutex::new(HashMap::new()), accepted: Mutex::default() }
    }

    /// Remembers that this replica accepted `message_id` now.
    pub fn note_accepted(&self, message_id: Uuid) {
        let mut accepted = self.accepted.lock().unwrap_or_else(PoisonError::into_inner);
        if accepted.at.insert(message_id, Instant::now()).is_none() {
            accepted.order.push_back(message_id);
        }
        while accepted.order.len() > MAX_ACCEPTED {
            if let Some(old) = accepted.order.pop_front() {
                accepted.at.remove(&old);
            }
        }
    }

    /// Records time to first token (first event of a reply) and reply time (its end)
    /// for messages this replica accepted.
    fn observe_latency(&self, response: &ModelResponse, first_event: bool) {
        let mut accepted = self.accepted.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(at) = accepted.at.get(&response.message_id).copied() else { return };
        if first_event {
            metrics::histogram!("gateway_time_to_first_token_seconds").record(at.elapsed().as_secs_f64());
        }
        if response.is_final() {
            metrics::histogram!("gateway_reply_seconds").record(at.elapsed().as_secs_f64());
            // The order queue keeps the id until it is evicted; a stale id there is harmless.
            accepted.at.remove(&response.message_id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Conversation>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.conversations.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn new_conversation(&self, user_id: &str) -> Conversation {
        Conversation {
            user_id: user_id.to_string(),
            replay: VecDeque::new(),
            evicted: None,
            messages: HashMap::new(),
            streams: Vec::new(),
            last_event: Instant::now(),
        }
    }

    /// Takes one relayed event; returns how many events it produced for clients.
    pub fn publish(&self, id: EventId, response: &ModelResponse) -> usize {
        let mut conversations = self.lock();
        if !conversations.contains_key(&response.conversation_id) {
            self.make_room(&mut conversations);
        }
        let conv = conversations
            .entry(response.conversation_id)
            .or_insert_with(|| self.new_conversation(&response.user_id));
        if conv.user_id != response.user_id {
            tracing::warn!(conversation_id = %response.conversation_id, "reply event for another user's conversation dropped");
            return 0;
        }
        conv.last_event = Instant::now();
        let state = conv.messages.entry(response.message_id).or_default();
        let mut out = Vec::with_capacity(2);
        if state.finished {
            return 0;
        }
        let first_event = state.current.is_none();
        match state.current {
            Some(current) if current == response.attempt => {}
            // A superseded attempt may still finish first; its final text wins then.
            _ if state.superseded.contains(&response.attempt) => {
                if !response.is_final() {
                    return 0;
                }
            }
            Some(current) => {
                state.superseded.push(current);
                state.current = Some(response.attempt);
                state.next_seq = 0;
                out.push(reset_event(id, response));
            }
            None => state.current = Some(response.attempt),
        }
        if let ReplyBody::Token { seq, .. } = &response.body {
            if state.current == Some(response.attempt) {
                if *seq < state.next_seq {
                    metrics::counter!("gateway_duplicate_tokens_dropped_total").increment(1);
                    return 0;
                }
                state.next_seq = seq.saturating_add(1);
            }
        }
        if response.is_final() {
            state.finished = true;
        }
        if first_event || response.is_final() {
            self.observe_latency(response, first_event);
        }
        out.push(stream_event(id, response));
        let produced = out.len();
        for event in out {
            let event = Arc::new(event);
            if conv.replay.len() == self.limits.replay_events {
                if let Some(old) = conv.replay.pop_front() {
                    conv.evicted = Some(old.id);
                    // Keep message states only while their events can still be replayed
                    // or are in flight, so the map stays bounded too.
                    if conv.replay.iter().all(|e| e.message_id != old.message_id)
                        && conv.messages.get(&old.message_id).is_some_and(|m| m.finished)
                    {
                        conv.messages.remove(&old.message_id);
                    }
                }
            }
            conv.replay.push_back(event.clone());
            // A closed stream is gone; a full one belongs to a client too slow to keep
            // up: dropping its sender ends it, and the client resumes from the replay.
            conv.streams.retain(|tx| match tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics::counter!("gateway_slow_streams_cut_total").increment(1);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        }
        produced
    }

    /// Opens a stream of `conversation_id` for `user_id`, resuming after `last_event_id`.
    pub fn subscribe(
        &self,
        conversation_id: Uuid,
        user_id: &str,
        last_event_id: Option<EventId>,
    ) -> Result<Subscription, SubscribeError> {
        let mut conversations = self.lock();
        if !conversations.contains_key(&conversation_id) {
            self.make_room(&mut conversations);
        }
        let conv = conversations.entry(conversation_id).or_insert_with(|| self.new_conversation(user_id));
        if conv.user_id != user_id {
            return Err(SubscribeError::NotOwner);
        }
        // Subscribing and copying the replay under one lock: no event can fall between.
        let (tx, live) = mpsc::channel(self.limits.stream_buffer);
        conv.streams.push(tx);
        let (backlog, gap) = match last_event_id {
            None => (conv.replay.iter().cloned().collect(), false),
            Some(last) => {
                let newer: Vec<_> = conv
                    .replay
                    .iter()
                    .filter(|e| e.id.partition != last.partition || e.id.offset > last.offset)
                    .cloned()
                    .collect();
                // Offsets of one conversation are not contiguous (partitions are shared),
                // so a gap is known only from what was evicted.
                let gap =
                    conv.evicted.is_some_and(|e| e.partition == last.partition && e.offset > last.offset);
                (newer, gap)
            }
        };
        Ok(Subscription { backlog, gap, live })
    }

    /// Number of conversations tracked.
    pub fn conversations(&self) -> usize {
        self.lock().len()
    }

    /// Forgets idle conversations nobody streams; called periodically.
    pub fn sweep(&self) {
        let ttl = self.limits.idle_ttl;
        self.lock().retain(|_, c| {
            c.streams.retain(|tx| !tx.is_closed());
            !c.streams.is_empty() || c.last_event.elapsed() < ttl
        });
    }

    /// Evicts the longest-idle unwatched conversation when the hub is full.
    fn make_room(&self, conversations: &mut HashMap<Uuid, Conversation>) {
        if conversations.len() < self.limits.max_conversations {
            return;
        }
        let victim = conversations
            .iter()
            .filter(|(_, c)| c.streams.iter().all(|tx| tx.is_closed()))
            .min_by_key(|(_, c)| c.last_event)
            .map(|(id, _)| *id);
        if let Some(id) = victim {
            conversations.remove(&id);
        }
    }
}

fn stream_event(id: EventId, r: &ModelResponse) -> StreamEvent {
    let (kind, data) = match &r.body {
        ReplyBody::Token { seq, delta } => (
            "token",
            json!({"message_id": r.message_id, "conversation_id": r.conversation_id, "attempt": r.attempt, "seq": seq, "delta": delta}),
        ),
        ReplyBody::Done { text, usage, finish_reason, .. } => (
            "done",
            json!({"message_id": r.message_id, "conversation_id": r.conversation_id, "attempt": r.attempt, "text": text, "usage": usage, "finish_reason": finish_reason}),
        ),
        ReplyBody::Error { code, message } => (
            "error",
            json!({"message_id": r.message_id, "conversation_id": r.conversation_id, "attempt": r.attempt, "code": code, "message": message}),
        ),
    };
    StreamEvent { id, kind, data: data.to_string(), message_id: r.message_id }
}

fn reset_event(id: EventId, r: &ModelResponse) -> StreamEvent {
    let data = json!({"message_id": r.message_id, "conversation_id": r.conversation_id, "attempt": r.attempt,
        "reason": "the reply is being generated again; discard its partial text"});
    StreamEvent { id, kind: "reset", data: data.to_string(), message_id: r.message_id }
}

#[cfg(test)]
mod tests {
    use super::*;
    use platform::events::UserMessage;

    struct Log {
        next: i64,
    }

    impl Log {
        fn id(&mut self) -> EventId {
            self.next += 1;
            EventId { partition: 3, offset: self.next }
        }
    }

    fn token(msg: &UserMessage, attempt: Uuid, seq: u32) -> ModelResponse {
        ModelResponse::for_message(msg, attempt, ReplyBody::Token { seq, delta: format!("t{seq} ") })
    }

    fn done(msg: &UserMessage, attempt: Uuid) -> ModelResponse {
        ModelResponse::for_message(
            msg,
            attempt,
            ReplyBody::Done {
                text: "full".into(),
                usage: None,
                finish_reason: "stop".into(),
                token_events: 2,
            },
        )
    }

    fn kinds(events: &[Arc<StreamEvent>]) -> Vec<&'static str> {
        events.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn a_stream_opened_after_the_reply_started_gets_it_from_the_start() {
        let hub = Hub::new(HubLimits::default());
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let a = Uuid::new_v4();
        let mut log = Log { next: 0 };
        hub.publish(log.id(), &token(&msg, a, 0));
        let mut sub = hub.subscribe(msg.conversation_id, "alice", None).unwrap();
        hub.publish(log.id(), &token(&msg, a, 1));
        hub.publish(log.id(), &done(&msg, a));
        assert_eq!(kinds(&sub.backlog), ["token"]);
        assert_eq!(sub.live.try_recv().unwrap().kind, "token");
        assert_eq!(sub.live.try_recv().unwrap().kind, "done");
    }

    #[test]
    fn last_event_id_resumes_without_gaps_or_repeats() {
        let hub = Hub::new(HubLimits::default());
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let a = Uuid::new_v4();
        let mut log = Log { next: 0 };
        let ids: Vec<EventId> = (0..5)
            .map(|seq| {
                let id = log.id();
                hub.publish(id, &token(&msg, a, seq));
                id
            })
            .collect();
        let sub = hub.subscribe(msg.conversation_id, "alice", Some(ids[2])).unwrap();
        assert_eq!(sub.backlog.iter().map(|e| e.id).collect::<Vec<_>>(), ids[3..].to_vec());
        assert!(!sub.gap);
        assert_eq!("3-42".parse::<EventId>(), Ok(EventId { partition: 3, offset: 42 }));
    }

    #[test]
    fn resuming_from_before_the_window_reports_a_gap() {
        let hub = Hub::new(HubLimits { replay_events: 3, ..HubLimits::default() });
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let a = Uuid::new_v4();
        let mut log = Log { next: 0 };
        let first = log.id();
        hub.publish(first, &token(&msg, a, 0));
        for seq in 1..10 {
            hub.publish(log.id(), &token(&msg, a, seq));
        }
        let sub = hub.subscribe(msg.conversation_id, "alice", Some(first)).unwrap();
        assert!(sub.gap);
        assert_eq!(sub.backlog.len(), 3);
    }

    #[test]
    fn a_new_attempt_resets_and_the_old_ones_tokens_never_mix_in() {
        let hub = Hub::new(HubLimits::default());
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut log = Log { next: 0 };
        let mut sub = hub.subscribe(msg.conversation_id, "alice", None).unwrap();
        hub.publish(log.id(), &token(&msg, a, 0));
        hub.publish(log.id(), &token(&msg, b, 0)); // redelivered: b starts
        hub.publish(log.id(), &token(&msg, a, 1)); // zombie a: dropped
        hub.publish(log.id(), &token(&msg, b, 1));
        hub.publish(log.id(), &done(&msg, b));
        hub.publish(log.id(), &done(&msg, a)); // after the end: dropped
        let mut got = Vec::new();
        while let Ok(e) = sub.live.try_recv() {
            got.push(e);
        }
        assert_eq!(kinds(&got), ["token", "reset", "token", "token", "done"]);
        let attempts: Vec<String> = got
            .iter()
            .map(|e| serde_json::from_str::<serde_json::Value>(&e.data).unwrap()["attempt"].to_string())
            .collect();
        assert!(attempts[1..].iter().all(|x| *x == attempts[1]), "mixed attempts after the reset");
    }

    #[test]
    fn a_superseded_attempt_that_finishes_first_wins() {
        let hub = Hub::new(HubLimits::default());
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut log = Log { next: 0 };
        hub.publish(log.id(), &token(&msg, a, 0));
        hub.publish(log.id(), &token(&msg, b, 0));
        assert_eq!(hub.publish(log.id(), &done(&msg, a)), 1);
        assert_eq!(hub.publish(log.id(), &done(&msg, b)), 0);
    }

    #[test]
    fn other_users_cannot_subscribe_and_foreign_events_are_dropped() {
        let hub = Hub::new(HubLimits::default());
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let mut log = Log { next: 0 };
        hub.publish(log.id(), &token(&msg, Uuid::new_v4(), 0));
        assert_eq!(hub.subscribe(msg.conversation_id, "mallory", None).err(), Some(SubscribeError::NotOwner));
        let mut forged = token(&msg, Uuid::new_v4(), 0);
        forged.user_id = "mallory".into();
        assert_eq!(hub.publish(log.id(), &forged), 0);
    }

    #[test]
    fn a_second_copy_of_a_token_is_not_shown_twice() {
        let hub = Hub::new(HubLimits::default());
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let a = Uuid::new_v4();
        let mut log = Log { next: 0 };
        let mut sub = hub.subscribe(msg.conversation_id, "alice", None).unwrap();
        assert_eq!(hub.publish(log.id(), &token(&msg, a, 0)), 1);
        assert_eq!(hub.publish(log.id(), &token(&msg, a, 1)), 1);
        assert_eq!(hub.publish(log.id(), &token(&msg, a, 1)), 0, "a retried write's copy");
        assert_eq!(hub.publish(log.id(), &token(&msg, a, 2)), 1);
        hub.publish(log.id(), &done(&msg, a));
        let mut deltas = Vec::new();
        while let Ok(event) = sub.live.try_recv() {
            deltas.push(event.kind);
        }
        assert_eq!(deltas, ["token", "token", "token", "done"]);
    }

    #[test]
    fn memory_stays_bounded() {
        let hub = Hub::new(HubLimits { replay_events: 4, max_conversations: 10, ..HubLimits::default() });
        let mut log = Log { next: 0 };
        for _ in 0..50 {
            let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
            for seq in 0..20 {
                hub.publish(log.id(), &token(&msg, Uuid::nil(), seq));
            }
        }
        assert_eq!(hub.conversations(), 10);
        let conversations = hub.lock();
        assert!(conversations.values().all(|c| c.replay.len() <= 4));
    }

    #[test]
    fn a_stream_that_falls_behind_is_cut_off_and_can_resume() {
        let hub = Hub::new(HubLimits { stream_buffer: 2, ..HubLimits::default() });
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let a = Uuid::new_v4();
        let mut log = Log { next: 0 };
        let mut slow = hub.subscribe(msg.conversation_id, "alice", None).unwrap();
        for seq in 0..5 {
            hub.publish(log.id(), &token(&msg, a, seq));
        }
        let first = slow.live.try_recv().unwrap();
        assert!(slow.live.try_recv().is_ok());
        assert!(matches!(slow.live.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)));
        let resumed = hub.subscribe(msg.conversation_id, "alice", Some(first.id)).unwrap();
        assert_eq!(resumed.backlog.len(), 4, "everything after the last event it saw");
    }

    #[test]
    fn idle_conversations_are_swept_but_watched_ones_stay() {
        let hub = Hub::new(HubLimits { idle_ttl: Duration::ZERO, ..HubLimits::default() });
        let watched = Uuid::new_v4();
        let _sub = hub.subscribe(watched, "alice", None).unwrap();
        let msg = UserMessage::new(Uuid::new_v4(), "bob", "hi");
        hub.publish(EventId { partition: 0, offset: 1 }, &token(&msg, Uuid::new_v4(), 0));
        hub.sweep();
        assert_eq!(hub.conversations(), 1);
        assert!(hub.subscribe(watched, "alice", None).is_ok());
    }
}
