//! Routes relayed reply events to the SSE streams of their conversation.
//!
//! Every gateway replica reads all of `model_responses` and hands each event to the
//! hub, which keeps, per conversation, a bounded replay window (so a stream opened
//! after `POST /chat`, or one reconnecting with `Last-Event-ID`, misses nothing that is
//! still in the window) and one bounded channel per stream open right now. A stream
//! whose channel is full (its client reads too slowly) is cut off; its client resumes
//! from the replay window with `Last-Event-ID`. Channels allocate as events queue, so an
//! idle stream costs little. Which attempt of a message is shown is decided by
//! [`attempts`]; reply timing for this replica's own messages is kept by [`latency`].

mod attempts;
mod latency;
mod subscription;

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use platform::{events::ModelResponse, sync::lock};
use tokio::sync::mpsc;
use uuid::Uuid;

pub use self::subscription::Subscription;
use self::{
    attempts::{Attempts, Dropped, Verdict},
    latency::ReplyLatency,
};
use crate::reply::{EventId, ReplyEvent};

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

struct Conversation {
    user_id: String,
    replay: VecDeque<Arc<ReplyEvent>>,
    /// The newest event that fell out of the replay window.
    evicted: Option<EventId>,
    messages: HashMap<Uuid, Attempts>,
    streams: Vec<mpsc::Sender<Arc<ReplyEvent>>>,
    last_event: Instant,
}

impl Conversation {
    fn new(user_id: &str) -> Self {
        Self {
            user_id: user_id.to_string(),
            replay: VecDeque::new(),
            evicted: None,
            messages: HashMap::new(),
            streams: Vec::new(),
            last_event: Instant::now(),
        }
    }

    /// Keeps `event` for replay (evicting the oldest at `replay_events`) and sends it to
    /// every open stream.
    fn push(&mut self, event: ReplyEvent, replay_events: usize) {
        let event = Arc::new(event);
        if self.replay.len() == replay_events {
            if let Some(old) = self.replay.pop_front() {
                self.evicted = Some(old.id);
                // Keep message states only while their events can still be replayed or
                // are in flight, so the map stays bounded too.
                if self.replay.iter().all(|e| e.message_id != old.message_id)
                    && self.messages.get(&old.message_id).is_some_and(Attempts::is_finished)
                {
                    self.messages.remove(&old.message_id);
                }
            }
        }
        self.replay.push_back(event.clone());
        // A closed stream is gone; a full one belongs to a client too slow to keep up:
        // dropping its sender ends it, and the client resumes from the replay.
        self.streams.retain(|tx| match tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("gateway_slow_streams_cut_total").increment(1);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }
}

/// The hub shared by the relay (writer) and the streams (readers).
pub struct Hub {
    limits: HubLimits,
    conversations: Mutex<HashMap<Uuid, Conversation>>,
    latency: ReplyLatency,
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
        Self { limits, conversations: Mutex::new(HashMap::new()), latency: ReplyLatency::default() }
    }

    /// Remembers that this replica accepted `message_id` now, for reply latency metrics.
    pub fn note_accepted(&self, message_id: Uuid) {
        self.latency.note_accepted(message_id);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Conversation>> {
        lock(&self.conversations)
    }

    /// Takes one relayed event; returns how many events it produced for clients.
    pub fn publish(&self, id: EventId, response: ModelResponse) -> usize {
        let mut conversations = self.lock();
        if !conversations.contains_key(&response.conversation_id) {
            self.make_room(&mut conversations);
        }
        let conv = conversations
            .entry(response.conversation_id)
            .or_insert_with(|| Conversation::new(&response.user_id));
        if conv.user_id != response.user_id {
            tracing::warn!(conversation_id = %response.conversation_id, "reply event for another user's conversation dropped");
            return 0;
        }
        conv.last_event = Instant::now();
        let event = ReplyEvent::from_response(id, response);
        let verdict = conv.messages.entry(event.message_id).or_default().admit(event.attempt, &event.kind);
        let (reset, gap, first, last) = match verdict {
            Verdict::Show { reset, gap, first, last } => (reset, gap, first, last),
            Verdict::Drop(Dropped::Duplicate) => {
                metrics::counter!("gateway_duplicate_tokens_dropped_total").increment(1);
                return 0;
            }
            Verdict::Drop(Dropped::Finished | Dropped::Superseded) => return 0,
        };
        if first || last {
            self.latency.observe(event.message_id, first, last);
        }
        if reset {
            conv.push(ReplyEvent::reset_before(&event), self.limits.replay_events);
        }
        if gap {
            metrics::counter!("gateway_token_gaps_total").increment(1);
            tracing::warn!(message_id = %event.message_id, attempt = %event.attempt, "reply tokens missing; the client is told with a gap");
            conv.push(ReplyEvent::gap_before(&event), self.limits.replay_events);
        }
        conv.push(event, self.limits.replay_events);
        1 + usize::from(reset) + usize::from(gap)
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
        let conv = conversations.entry(conversation_id).or_insert_with(|| Conversation::new(user_id));
        if conv.user_id != user_id {
            return Err(SubscribeError::NotOwner);
        }
        // Subscribing and copying the replay under one lock: no event can fall between.
        let (tx, live) = mpsc::channel(self.limits.stream_buffer);
        conv.streams.push(tx);
        let (backlog, gap) = match last_event_id {
            None => (conv.replay.iter().cloned().collect(), false),
            Some(last) => {
                let newer: Vec<_> = conv.replay.iter().filter(|e| e.id.is_after(&last)).cloned().collect();
                // Offsets of one conversation are not contiguous (partitions are shared),
                // so a gap is known only from what was evicted.
                let gap = conv.evicted.is_some_and(|e| e.partition == last.partition && e.is_after(&last));
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

#[cfg(test)]
mod tests {
    use super::*;
    use platform::events::{ReplyBody, UserMessage};

    struct Log {
        next: i64,
    }

    impl Log {
        fn id(&mut self) -> EventId {
            self.next += 1;
            EventId::record(3, self.next)
        }
    }

    fn token(msg: &UserMessage, attempt: Uuid, seq: u32) -> ModelResponse {
        ModelResponse::for_message(msg, attempt, ReplyBody::Token { seq, delta: format!("t{seq} ") })
    }

    /// The end of an attempt that published two tokens.
    fn done(msg: &UserMessage, attempt: Uuid) -> ModelResponse {
        done_after(msg, attempt, 2)
    }

    fn done_after(msg: &UserMessage, attempt: Uuid, token_events: u32) -> ModelResponse {
        ModelResponse::for_message(
            msg,
            attempt,
            ReplyBody::Done { text: "full".into(), usage: None, finish_reason: "stop".into(), token_events },
        )
    }

    fn kinds(events: &[Arc<ReplyEvent>]) -> Vec<&'static str> {
        events.iter().map(|e| e.name()).collect()
    }

    #[test]
    fn a_stream_opened_after_the_reply_started_gets_it_from_the_start() {
        let hub = Hub::new(HubLimits::default());
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let a = Uuid::new_v4();
        let mut log = Log { next: 0 };
        hub.publish(log.id(), token(&msg, a, 0));
        let mut sub = hub.subscribe(msg.conversation_id, "alice", None).unwrap();
        hub.publish(log.id(), token(&msg, a, 1));
        hub.publish(log.id(), done(&msg, a));
        assert_eq!(kinds(&sub.backlog), ["token"]);
        assert_eq!(sub.live.try_recv().unwrap().name(), "token");
        assert_eq!(sub.live.try_recv().unwrap().name(), "done");
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
                hub.publish(id, token(&msg, a, seq));
                id
            })
            .collect();
        let sub = hub.subscribe(msg.conversation_id, "alice", Some(ids[2])).unwrap();
        assert_eq!(sub.backlog.iter().map(|e| e.id).collect::<Vec<_>>(), ids[3..].to_vec());
        assert!(!sub.gap);
    }

    #[test]
    fn resuming_from_before_the_window_reports_a_gap() {
        let hub = Hub::new(HubLimits { replay_events: 3, ..HubLimits::default() });
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let a = Uuid::new_v4();
        let mut log = Log { next: 0 };
        let first = log.id();
        hub.publish(first, token(&msg, a, 0));
        for seq in 1..10 {
            hub.publish(log.id(), token(&msg, a, seq));
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
        hub.publish(log.id(), token(&msg, a, 0));
        hub.publish(log.id(), token(&msg, b, 0)); // redelivered: b starts
        hub.publish(log.id(), token(&msg, a, 1)); // zombie a: dropped
        hub.publish(log.id(), token(&msg, b, 1));
        hub.publish(log.id(), done(&msg, b));
        hub.publish(log.id(), done(&msg, a)); // after the end: dropped
        let mut got = Vec::new();
        while let Ok(e) = sub.live.try_recv() {
            got.push(e);
        }
        assert_eq!(kinds(&got), ["token", "reset", "token", "token", "done"]);
        let attempts: Vec<Uuid> = got.iter().map(|e| e.attempt).collect();
        assert!(attempts[1..].iter().all(|x| *x == attempts[1]), "mixed attempts after the reset");
    }

    #[test]
    fn a_superseded_attempt_that_finishes_first_wins_after_a_reset() {
        let hub = Hub::new(HubLimits::default());
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut log = Log { next: 0 };
        hub.publish(log.id(), token(&msg, a, 0));
        hub.publish(log.id(), token(&msg, b, 0));
        let mut sub = hub.subscribe(msg.conversation_id, "alice", None).unwrap();
        assert_eq!(hub.publish(log.id(), done(&msg, a)), 2);
        assert_eq!(hub.publish(log.id(), done(&msg, b)), 0);
        let reset = sub.live.try_recv().unwrap();
        let end = sub.live.try_recv().unwrap();
        assert_eq!((reset.name(), reset.attempt, end.name(), end.attempt), ("reset", a, "done", a));
    }

    #[test]
    fn other_users_cannot_subscribe_and_foreign_events_are_dropped() {
        let hub = Hub::new(HubLimits::default());
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let mut log = Log { next: 0 };
        hub.publish(log.id(), token(&msg, Uuid::new_v4(), 0));
        assert_eq!(hub.subscribe(msg.conversation_id, "mallory", None).err(), Some(SubscribeError::NotOwner));
        let mut forged = token(&msg, Uuid::new_v4(), 0);
        forged.user_id = "mallory".into();
        assert_eq!(hub.publish(log.id(), forged), 0);
    }

    #[test]
    fn a_second_copy_of_a_token_is_not_shown_twice() {
        let hub = Hub::new(HubLimits::default());
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let a = Uuid::new_v4();
        let mut log = Log { next: 0 };
        let mut sub = hub.subscribe(msg.conversation_id, "alice", None).unwrap();
        assert_eq!(hub.publish(log.id(), token(&msg, a, 0)), 1);
        assert_eq!(hub.publish(log.id(), token(&msg, a, 1)), 1);
        assert_eq!(hub.publish(log.id(), token(&msg, a, 1)), 0, "a retried write's copy");
        assert_eq!(hub.publish(log.id(), token(&msg, a, 2)), 1);
        hub.publish(log.id(), done_after(&msg, a, 3));
        let mut deltas = Vec::new();
        while let Ok(event) = sub.live.try_recv() {
            deltas.push(event.name());
        }
        assert_eq!(deltas, ["token", "token", "token", "done"]);
    }

    #[test]
    fn tokens_that_never_arrived_are_announced_by_a_gap() {
        let hub = Hub::new(HubLimits::default());
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let a = Uuid::new_v4();
        let mut log = Log { next: 0 };
        let mut sub = hub.subscribe(msg.conversation_id, "alice", None).unwrap();
        hub.publish(log.id(), token(&msg, a, 0));
        assert_eq!(hub.publish(log.id(), token(&msg, a, 2)), 2, "seq 1 is missing");
        assert_eq!(hub.publish(log.id(), done_after(&msg, a, 4)), 2, "seq 3 is missing");
        let mut got = Vec::new();
        while let Ok(event) = sub.live.try_recv() {
            got.push(event);
        }
        assert_eq!(kinds(&got), ["token", "gap", "token", "gap", "done"]);
        assert!(got.iter().all(|e| e.message_id == msg.message_id && e.attempt == a));
        assert_eq!(got[1].id, got[2].id.notice(1), "a gap's id is a notice before its token's");
    }

    #[test]
    fn a_client_that_got_a_notice_but_not_its_token_resumes_with_the_token() {
        let hub = Hub::new(HubLimits::default());
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut log = Log { next: 0 };
        hub.publish(log.id(), token(&msg, a, 0));
        hub.publish(log.id(), token(&msg, b, 0)); // reset, then b's first token
        let all = hub.subscribe(msg.conversation_id, "alice", None).unwrap().backlog;
        assert_eq!(kinds(&all), ["token", "reset", "token"]);
        let resumed = hub.subscribe(msg.conversation_id, "alice", Some(all[1].id)).unwrap();
        assert_eq!(kinds(&resumed.backlog), ["token"]);
        assert_eq!(resumed.backlog[0].attempt, b);
        let after_token = hub.subscribe(msg.conversation_id, "alice", Some(all[2].id)).unwrap();
        assert!(after_token.backlog.is_empty());
    }

    #[test]
    fn memory_stays_bounded() {
        let hub = Hub::new(HubLimits { replay_events: 4, max_conversations: 10, ..HubLimits::default() });
        let mut log = Log { next: 0 };
        for _ in 0..50 {
            let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
            for seq in 0..20 {
                hub.publish(log.id(), token(&msg, Uuid::nil(), seq));
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
            hub.publish(log.id(), token(&msg, a, seq));
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
        hub.publish(EventId::record(0, 1), token(&msg, Uuid::new_v4(), 0));
        hub.sweep();
        assert_eq!(hub.conversations(), 1);
        assert!(hub.subscribe(watched, "alice", None).is_ok());
    }
}
