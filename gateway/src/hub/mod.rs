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
mod forgotten;
mod latency;
mod subscription;

use std::{
    collections::{hash_map::Entry, HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use platform::{events::ModelResponse, sync::lock};
use tokio::sync::mpsc;
use uuid::Uuid;

pub use self::subscription::Subscription;
use self::{
    attempts::{Attempts, Dropped, Verdict},
    forgotten::{newest, Forgotten},
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
    /// Finished messages remembered after their events left the replay window, so that
    /// a late retry of one is dropped rather than shown as a new reply (16 bytes each).
    pub finished_messages: usize,
}

impl Default for HubLimits {
    fn default() -> Self {
        Self {
            replay_events: 256,
            max_conversations: 10_000,
            idle_ttl: Duration::from_secs(600),
            stream_buffer: 256,
            finished_messages: 65_536,
        }
    }
}

struct Conversation {
    user_id: String,
    /// The partition its events come from (it is the Kafka key), once known.
    partition: Option<i32>,
    replay: VecDeque<Arc<ReplyEvent>>,
    /// The newest event of it that the hub cannot replay: one that fell out of the
    /// replay window, or a bound on those the hub never read or forgot.
    evicted: Option<EventId>,
    messages: HashMap<Uuid, Attempts>,
    /// When each message of `messages` got its first reply event (ms since the epoch,
    /// the event's own time), for the history's "still streaming" entries.
    started_ms: HashMap<Uuid, i64>,
    streams: Vec<mpsc::Sender<Arc<ReplyEvent>>>,
    last_event: Instant,
}

impl Conversation {
    fn new(user_id: &str) -> Self {
        Self {
            user_id: user_id.to_string(),
            partition: None,
            replay: VecDeque::new(),
            evicted: None,
            messages: HashMap::new(),
            started_ms: HashMap::new(),
            streams: Vec::new(),
            last_event: Instant::now(),
        }
    }

    /// Learns the conversation's partition from its first event id seen (a record's or
    /// a resuming client's): what the hub may miss of that partition from before then
    /// is what it may miss of this conversation.
    fn place(&mut self, partition: i32, forgotten: &Forgotten) {
        if self.partition.is_none() {
            self.partition = Some(partition);
            self.evicted = newest(self.evicted, forgotten.horizon(partition));
        }
    }

    /// Keeps `event` for replay (evicting the oldest at `replay_events`) and sends it to
    /// every open stream.
    fn push(&mut self, event: ReplyEvent, replay_events: usize, forgotten: &mut Forgotten) {
        let event = Arc::new(event);
        if self.replay.len() == replay_events {
            if let Some(old) = self.replay.pop_front() {
                self.evicted = Some(old.id);
                // Keep message states only while their events can still be replayed or
                // are in flight, so the map stays bounded too; an ended one is still
                // known as ended.
                if self.replay.iter().all(|e| e.message_id != old.message_id)
                    && self.messages.get(&old.message_id).is_some_and(Attempts::is_finished)
                {
                    self.messages.remove(&old.message_id);
                    self.started_ms.remove(&old.message_id);
                    forgotten.finish(old.message_id);
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

/// What the hub's lock guards.
struct State {
    conversations: HashMap<Uuid, Conversation>,
    forgotten: Forgotten,
}

impl State {
    /// Drops a conversation, remembering what a stream or a late retry needs to know.
    fn forget(&mut self, conversation_id: &Uuid) {
        let Some(conv) = self.conversations.remove(conversation_id) else { return };
        if let (Some(partition), Some(newest)) = (conv.partition, conv.replay.back()) {
            self.forgotten.raise(partition, newest.id.offset);
        }
        for (message_id, attempts) in &conv.messages {
            if attempts.is_finished() {
                self.forgotten.finish(*message_id);
            }
        }
    }
}

/// The hub shared by the relay (writer) and the streams (readers).
pub struct Hub {
    limits: HubLimits,
    state: Mutex<State>,
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
        let state =
            State { conversations: HashMap::new(), forgotten: Forgotten::new(limits.finished_messages) };
        Self { limits, state: Mutex::new(state), latency: ReplyLatency::default() }
    }

    /// Remembers that this replica accepted `message_id` now, for reply latency metrics.
    pub fn note_accepted(&self, message_id: Uuid) {
        self.latency.note_accepted(message_id);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The relay reads `partition` from `offset` on: the hub knows nothing from before.
    pub fn relay_from(&self, partition: i32, offset: i64) {
        self.lock().forgotten.raise(partition, offset - 1);
    }

    /// The relay could not read `partition` on from `from` (its records were deleted,
    /// or the log was cut back) and goes on from `to`. Every message of the partition
    /// being shown gets a `gap` (its `done` still carries the whole text); returns how
    /// many did.
    pub fn relay_skipped(&self, partition: i32, from: i64, to: i64) -> usize {
        let mut state = self.lock();
        let State { conversations, forgotten } = &mut *state;
        forgotten.raise(partition, to - 1);
        // After the last record read and before the next: ordered for resuming clients.
        let id = EventId::record(partition, from).notice(1);
        let mut told = 0;
        for (conversation_id, conv) in
            conversations.iter_mut().filter(|(_, c)| c.partition == Some(partition))
        {
            conv.evicted = newest(conv.evicted, forgotten.horizon(partition));
            let lost: Vec<(Uuid, Uuid)> = conv
                .messages
                .iter_mut()
                .filter_map(|(message_id, attempts)| Some((*message_id, attempts.lose_events()?)))
                .collect();
            for (message_id, attempt) in lost {
                conv.push(
                    ReplyEvent::gap(id, message_id, *conversation_id, attempt),
                    self.limits.replay_events,
                    forgotten,
                );
                told += 1;
            }
        }
        metrics::counter!("gateway_token_gaps_total").increment(told as u64);
        told
    }

    /// Takes one relayed event; returns how many events it produced for clients.
    pub fn publish(&self, id: EventId, response: ModelResponse) -> usize {
        self.publish_traced(id, response, None)
    }

    /// [`Hub::publish`] of a record whose `traceparent` named `trace_id` (an `error`
    /// event shows it to the user).
    pub fn publish_traced(&self, id: EventId, response: ModelResponse, trace_id: Option<u128>) -> usize {
        let mut state = self.lock();
        if !state.conversations.contains_key(&response.conversation_id) {
            self.make_room(&mut state);
        }
        let State { conversations, forgotten } = &mut *state;
        let conv = conversations
            .entry(response.conversation_id)
            .or_insert_with(|| Conversation::new(&response.user_id));
        if conv.user_id != response.user_id {
            tracing::warn!(conversation_id = %response.conversation_id, "reply event for another user's conversation dropped");
            return 0;
        }
        conv.last_event = Instant::now();
        conv.place(id.partition, forgotten);
        let started_ms = response.ts.timestamp_millis();
        let event = ReplyEvent::from_response(id, response).with_trace(trace_id);
        let attempts = match conv.messages.entry(event.message_id) {
            Entry::Occupied(entry) => entry.into_mut(),
            // A late retry of a message that ended long ago: not a new reply.
            Entry::Vacant(_) if forgotten.is_finished(&event.message_id) => {
                metrics::counter!("gateway_finished_events_dropped_total").increment(1);
                return 0;
            }
            Entry::Vacant(entry) => {
                conv.started_ms.insert(event.message_id, started_ms);
                entry.insert(Attempts::default())
            }
        };
        let verdict = attempts.admit(event.attempt, &event.kind);
        let (reset, gap, first, last) = match verdict {
            Verdict::Show { reset, gap, first, last } => (reset, gap, first, last),
            Verdict::Drop(Dropped::Duplicate) => {
                metrics::counter!("gateway_duplicate_tokens_dropped_total").increment(1);
                return 0;
            }
            Verdict::Drop(Dropped::Finished) => {
                metrics::counter!("gateway_finished_events_dropped_total").increment(1);
                return 0;
            }
            Verdict::Drop(Dropped::Superseded) => return 0,
        };
        if first || last {
            self.latency.observe(event.message_id, first, last);
        }
        let replay_events = self.limits.replay_events;
        if reset {
            metrics::counter!("gateway_attempt_resets_total").increment(1);
            conv.push(ReplyEvent::reset_before(&event), replay_events, forgotten);
        }
        if gap {
            metrics::counter!("gateway_token_gaps_total").increment(1);
            tracing::warn!(message_id = %event.message_id, attempt = %event.attempt, "reply tokens missing; the client is told with a gap");
            conv.push(ReplyEvent::gap_before(&event), replay_events, forgotten);
        }
        conv.push(event, replay_events, forgotten);
        1 + usize::from(reset) + usize::from(gap)
    }

    /// Opens a stream of `conversation_id` for `user_id`, resuming after `last_event_id`.
    pub fn subscribe(
        &self,
        conversation_id: Uuid,
        user_id: &str,
        last_event_id: Option<EventId>,
    ) -> Result<Subscription, SubscribeError> {
        let mut state = self.lock();
        if !state.conversations.contains_key(&conversation_id) {
            self.make_room(&mut state);
        }
        let State { conversations, forgotten } = &mut *state;
        let conv = conversations.entry(conversation_id).or_insert_with(|| Conversation::new(user_id));
        if conv.user_id != user_id {
            return Err(SubscribeError::NotOwner);
        }
        if let Some(last) = last_event_id {
            conv.place(last.partition, forgotten);
        }
        // Subscribing and copying the replay under one lock: no event can fall between.
        let (tx, live) = mpsc::channel(self.limits.stream_buffer);
        conv.streams.push(tx);
        let (backlog, gap) = match last_event_id {
            None => (conv.replay.iter().cloned().collect(), false),
            Some(last) => {
                let newer: Vec<_> = conv.replay.iter().filter(|e| e.id.is_after(&last)).cloned().collect();
                // Offsets of one conversation are not contiguous (partitions are shared),
                // so a gap is known only from what was evicted, never read or forgotten.
                let gap = conv.evicted.is_some_and(|e| e.partition == last.partition && e.is_after(&last));
                (newer, gap)
            }
        };
        Ok(Subscription { backlog, gap, live, after: last_event_id })
    }

    /// The messages of `user_id`'s conversation whose reply has started and not ended,
    /// each with the time (ms) of its first reply event; empty for another user's.
    pub fn replies_in_progress(&self, conversation_id: Uuid, user_id: &str) -> Vec<(Uuid, i64)> {
        let state = self.lock();
        let Some(conv) = state.conversations.get(&conversation_id).filter(|c| c.user_id == user_id) else {
            return Vec::new();
        };
        let mut started: Vec<(Uuid, i64)> = conv
            .messages
            .iter()
            .filter(|(_, attempts)| !attempts.is_finished())
            .map(|(id, _)| (*id, conv.started_ms.get(id).copied().unwrap_or_default()))
            .collect();
        started.sort_by_key(|(_, ts)| *ts);
        started
    }

    /// Drops a deleted conversation's replay window on this replica (its open streams
    /// end), so `/stream` does not replay deleted text from here.
    pub fn drop_conversation(&self, conversation_id: Uuid, user_id: &str) {
        let mut state = self.lock();
        if state.conversations.get(&conversation_id).is_some_and(|c| c.user_id == user_id) {
            state.forget(&conversation_id);
        }
    }

    /// Number of conversations tracked.
    pub fn conversations(&self) -> usize {
        self.lock().conversations.len()
    }

    /// Forgets idle conversations nobody streams; called periodically.
    pub fn sweep(&self) {
        let ttl = self.limits.idle_ttl;
        let mut state = self.lock();
        let idle: Vec<Uuid> = state
            .conversations
            .iter_mut()
            .filter_map(|(id, c)| {
                c.streams.retain(|tx| !tx.is_closed());
                (c.streams.is_empty() && c.last_event.elapsed() >= ttl).then_some(*id)
            })
            .collect();
        for id in &idle {
            state.forget(id);
        }
    }

    /// Evicts the longest-idle unwatched conversation when the hub is full.
    fn make_room(&self, state: &mut State) {
        if state.conversations.len() < self.limits.max_conversations {
            return;
        }
        let victim = state
            .conversations
            .iter()
            .filter(|(_, c)| c.streams.iter().all(|tx| tx.is_closed()))
            .min_by_key(|(_, c)| c.last_event)
            .map(|(id, _)| *id);
        if let Some(id) = victim {
            state.forget(&id);
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
    fn replies_in_progress_are_the_started_unfinished_ones_of_the_owner() {
        let hub = Hub::new(HubLimits::default());
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let a = Uuid::new_v4();
        let mut log = Log { next: 0 };
        assert!(hub.replies_in_progress(msg.conversation_id, "alice").is_empty());
        hub.publish(log.id(), token(&msg, a, 0));
        let started = hub.replies_in_progress(msg.conversation_id, "alice");
        assert_eq!(started.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [msg.message_id]);
        assert!(hub.replies_in_progress(msg.conversation_id, "bob").is_empty());
        hub.publish(log.id(), done(&msg, a));
        assert!(hub.replies_in_progress(msg.conversation_id, "alice").is_empty());
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
        let state = hub.lock();
        assert!(state.conversations.values().all(|c| c.replay.len() <= 4));
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

    fn drain(sub: &mut Subscription) -> Vec<Arc<ReplyEvent>> {
        let mut got = Vec::new();
        while let Ok(event) = sub.live.try_recv() {
            got.push(event);
        }
        got
    }

    #[test]
    fn a_late_retry_of_a_message_that_left_the_window_is_not_shown_again() {
        let hub = Hub::new(HubLimits { replay_events: 3, ..HubLimits::default() });
        let old = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let next = UserMessage::new(old.conversation_id, "alice", "and then?");
        let mut log = Log { next: 0 };
        let a = Uuid::new_v4();
        hub.publish(log.id(), token(&old, a, 0));
        hub.publish(log.id(), done_after(&old, a, 1));
        for seq in 0..5 {
            hub.publish(log.id(), token(&next, Uuid::new_v4(), seq));
        }
        let retry = Uuid::new_v4();
        assert_eq!(hub.publish(log.id(), token(&old, retry, 0)), 0, "revived");
        assert_eq!(hub.publish(log.id(), done(&old, retry)), 0, "revived");
    }

    #[test]
    fn a_late_retry_of_a_message_of_a_swept_conversation_is_not_shown_again() {
        let hub = Hub::new(HubLimits { idle_ttl: Duration::ZERO, ..HubLimits::default() });
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let mut log = Log { next: 0 };
        let a = Uuid::new_v4();
        hub.publish(log.id(), token(&msg, a, 0));
        hub.publish(log.id(), done_after(&msg, a, 1));
        hub.sweep();
        assert_eq!(hub.conversations(), 0);
        assert_eq!(hub.publish(log.id(), token(&msg, Uuid::new_v4(), 0)), 0);
    }

    #[test]
    fn resuming_a_swept_conversation_from_before_its_events_reports_a_gap() {
        let hub = Hub::new(HubLimits { idle_ttl: Duration::ZERO, ..HubLimits::default() });
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let mut log = Log { next: 0 };
        let a = Uuid::new_v4();
        let seen = log.id();
        hub.publish(seen, token(&msg, a, 0));
        let last = log.id();
        hub.publish(last, done_after(&msg, a, 1));
        hub.sweep();
        assert!(hub.subscribe(msg.conversation_id, "alice", Some(seen)).unwrap().gap, "done was forgotten");
        assert!(!hub.subscribe(msg.conversation_id, "alice", Some(last)).unwrap().gap, "saw everything");
    }

    #[test]
    fn resuming_from_before_the_relay_started_reports_a_gap() {
        let hub = Hub::new(HubLimits::default());
        hub.relay_from(3, 100);
        let conversation = Uuid::new_v4();
        let before = hub.subscribe(conversation, "alice", Some(EventId::record(3, 97))).unwrap();
        assert!(before.gap, "offsets 98 and 99 were never read");
        let at = hub.subscribe(conversation, "alice", Some(EventId::record(3, 99))).unwrap();
        assert!(!at.gap, "it saw the last record before the relay's start");

        // A conversation first seen through a record learns the same.
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        hub.publish(EventId::record(3, 120), token(&msg, Uuid::new_v4(), 0));
        assert!(hub.subscribe(msg.conversation_id, "alice", Some(EventId::record(3, 50))).unwrap().gap);
        assert!(!hub.subscribe(msg.conversation_id, "alice", Some(EventId::record(3, 110))).unwrap().gap);
    }

    #[test]
    fn records_the_relay_skipped_are_announced_to_the_messages_being_shown() {
        let hub = Hub::new(HubLimits::default());
        let (shown, ended) =
            (UserMessage::new(Uuid::new_v4(), "alice", "hi"), UserMessage::new(Uuid::new_v4(), "bob", "hi"));
        let elsewhere = UserMessage::new(Uuid::new_v4(), "carol", "hi");
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        hub.publish(EventId::record(3, 10), token(&shown, a, 0));
        hub.publish(EventId::record(3, 11), token(&ended, b, 0));
        hub.publish(EventId::record(3, 12), done_after(&ended, b, 1));
        hub.publish(EventId::record(4, 12), token(&elsewhere, Uuid::new_v4(), 0));
        let mut sub = hub.subscribe(shown.conversation_id, "alice", None).unwrap();
        assert_eq!(hub.relay_skipped(3, 13, 40), 1, "only the unfinished message of partition 3");
        hub.publish(EventId::record(3, 41), token(&shown, a, 7));
        hub.publish(EventId::record(3, 42), done_after(&shown, a, 8));
        let got = drain(&mut sub);
        assert_eq!(kinds(&got), ["gap", "token", "done"], "one gap, not a second for seq 7");
        assert_eq!(got[0].id, EventId::record(3, 13).notice(1));
        let resumed = hub.subscribe(shown.conversation_id, "alice", Some(EventId::record(3, 10))).unwrap();
        assert!(resumed.gap, "records 13..40 are gone");
        assert_eq!(kinds(&resumed.backlog), ["gap", "token", "done"]);
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
