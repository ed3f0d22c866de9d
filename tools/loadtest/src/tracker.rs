//! What happened to every message: its `POST /chat` answer and the reply events that
//! came back for it over SSE, matched by `message_id`.
//!
//! Reply events can arrive before the `202` that names their message is read (the
//! responder may be quicker than this process); such events wait in a buffer and are
//! applied as soon as the message id is known.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::Duration,
};

use serde::Serialize;
use tokio::time::Instant;
use uuid::Uuid;

/// How a `POST /chat` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostOutcome {
    /// Not sent (the run was stopped first).
    NotSent,
    /// Sent, no answer yet.
    Pending,
    /// `202`: the broker has the message.
    Accepted,
    /// Another HTTP status (e.g. 429 or 503), with the error code of the body if any.
    Rejected {
        /// The HTTP status.
        status: u16,
        /// `error.code` of the JSON body, when there was one.
        code: Option<String>,
    },
    /// No HTTP answer: connection refused, reset, timed out.
    Failed(String),
}

/// How a reply ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyEnd {
    /// A `done` event.
    Done,
    /// An `error` event with this code.
    Error(String),
}

/// One planned message and everything observed about it. Times are from the start of the run.
#[derive(Debug, Clone)]
pub struct MessageRecord {
    /// Position in the plan.
    pub index: usize,
    /// The conversation it belongs to (0-based).
    pub conversation: usize,
    /// When the schedule wanted it sent.
    pub due: Duration,
    /// When the `POST /chat` went out.
    pub sent: Option<Duration>,
    /// When its HTTP answer (or transport failure) came.
    pub answered_post: Option<Duration>,
    /// How the POST ended.
    pub post: PostOutcome,
    /// The id the gateway gave the message.
    pub message_id: Option<Uuid>,
    /// The first `token` event of any attempt.
    pub first_token: Option<Duration>,
    /// The `done` or `error` event.
    pub finished: Option<(Duration, ReplyEnd)>,
    /// `token` events of the attempt shown now (restarts at a `reset`).
    pub tokens: u32,
    /// Attempts seen: 1 plus the `reset`s.
    pub attempts: u32,
    /// A `gap` hit its conversation while the reply was in flight: tokens may be missing.
    pub gap: bool,
    /// Tokens were shown since the last `reset` and the `done` text differs from them,
    /// with no `gap` to say so: what the client was shown was not the reply.
    pub text_mismatch: bool,
    /// The longest silence between two events of the reply, from its first event to
    /// its end: what a reconnect (a gateway restarting) cost the reader.
    pub longest_pause: Option<Duration>,
    last_event: Option<Duration>,
    attempt: Option<Uuid>,
    text: String,
}

impl MessageRecord {
    fn new(index: usize, conversation: usize, due: Duration) -> Self {
        Self {
            index,
            conversation,
            due,
            sent: None,
            answered_post: None,
            post: PostOutcome::NotSent,
            message_id: None,
            first_token: None,
            finished: None,
            tokens: 0,
            attempts: 0,
            gap: false,
            text_mismatch: false,
            longest_pause: None,
            last_event: None,
            attempt: None,
            text: String::new(),
        }
    }

    /// Time to first token: POST sent → first `token` event.
    pub fn ttft(&self) -> Option<Duration> {
        Some(self.first_token?.saturating_sub(self.sent?))
    }

    /// Full-reply latency: POST sent → `done` (not `error`).
    pub fn reply_latency(&self) -> Option<Duration> {
        match &self.finished {
            Some((at, ReplyEnd::Done)) => Some(at.saturating_sub(self.sent?)),
            _ => None,
        }
    }

    /// How long the `POST /chat` took to answer.
    pub fn post_latency(&self) -> Option<Duration> {
        Some(self.answered_post?.saturating_sub(self.sent?))
    }

    /// How late the send was against the schedule.
    pub fn send_delay(&self) -> Option<Duration> {
        Some(self.sent?.saturating_sub(self.due))
    }

    /// Accepted by the gateway and neither `done` nor `error` seen.
    pub fn unanswered(&self) -> bool {
        self.post == PostOutcome::Accepted && self.finished.is_none()
    }

    fn apply(&mut self, event: &ReplyEvent, at: Duration) -> Applied {
        if self.finished.is_some() {
            return Applied::Late;
        }
        if let Some(previous) = self.last_event.replace(at) {
            let pause = at.saturating_sub(previous);
            self.longest_pause = Some(self.longest_pause.map_or(pause, |p| p.max(pause)));
        }
        if event.kind == EventKind::Reset {
            // A new attempt replaces the partial text: count its tokens from zero; the
            // time to first token stays that of the first attempt's first token.
            self.attempts = self.attempts.max(1) + 1;
            self.attempt = event.attempt;
            self.tokens = 0;
            self.text.clear();
            return Applied::Ok;
        }
        // A superseded attempt may still finish first (the gateway shows its `done`,
        // after a `reset`); only tokens and resets switch the attempt shown.
        if let (Some(attempt), EventKind::Token { .. }) = (event.attempt, &event.kind) {
            match self.attempt {
                None => {
                    self.attempt = Some(attempt);
                    self.attempts = self.attempts.max(1);
                }
                // A new attempt without its `reset` (the gateway always sends one; a
                // resumed stream might skip it): treat it like one.
                Some(current) if current != attempt => {
                    self.attempts += 1;
                    self.attempt = Some(attempt);
                    self.tokens = 0;
                    self.text.clear();
                }
                _ => {}
            }
        }
        match &event.kind {
            EventKind::Token { delta } => {
                self.first_token.get_or_insert(at);
                self.tokens += 1;
                self.text.push_str(delta);
            }
            EventKind::Reset => {}
            EventKind::Done { text } => {
                self.attempts = self.attempts.max(1);
                self.finished = Some((at, ReplyEnd::Done));
                // Whichever attempt the `done` is of: its text replaces what is shown,
                // so shown tokens that differ must have been announced.
                self.text_mismatch = !self.gap && !self.text.is_empty() && self.text != *text;
                self.text = String::new();
            }
            EventKind::Error { code } => {
                self.attempts = self.attempts.max(1);
                self.finished = Some((at, ReplyEnd::Error(code.clone())));
                self.text = String::new();
            }
        }
        Applied::Ok
    }
}

/// The part of an SSE reply event the tracker needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyEvent {
    /// The user message it belongs to.
    pub message_id: Uuid,
    /// The processing attempt.
    pub attempt: Option<Uuid>,
    /// What kind of event.
    pub kind: EventKind,
}

/// The SSE events that belong to one message.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// A piece of the reply.
    Token {
        /// The text to append.
        delta: String,
    },
    /// The reply is complete.
    Done {
        /// The whole reply text.
        text: String,
    },
    /// The reply failed.
    Error {
        /// The error code.
        code: String,
    },
    /// A new attempt replaces the partial text.
    Reset,
}

enum Applied {
    Ok,
    Late,
}

/// Counters for the per-second progress line and the timeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// POSTs sent.
    pub sent: u64,
    /// POSTs without an answer yet.
    pub posting: u64,
    /// 202s.
    pub accepted: u64,
    /// Other statuses.
    pub rejected: u64,
    /// Transport failures.
    pub failed: u64,
    /// `done` events.
    pub answered: u64,
    /// `error` events.
    pub errored: u64,
}

impl Snapshot {
    /// Accepted messages whose reply has not ended yet.
    pub fn in_flight(&self) -> u64 {
        self.accepted.saturating_sub(self.answered + self.errored)
    }
}

/// Stream-level happenings that belong to no single message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StreamStats {
    /// `gap` events (a resumed stream lost events older than the replay window).
    pub gaps: u64,
    /// Streams reopened (ended, broke, went silent or `shutdown`).
    pub reconnects: u64,
    /// `shutdown` events (a gateway replica stopping).
    pub shutdowns: u64,
    /// `GET /stream` answers other than 200, by status.
    pub refused: BTreeMap<u16, u64>,
    /// Events whose data could not be read.
    pub malformed: u64,
    /// Events for a message after its `done`/`error`.
    pub after_end: u64,
    /// Of those, a second `done`/`error`: the client saw the message end twice.
    pub duplicate_ends: u64,
}

#[derive(Default)]
struct Inner {
    records: Vec<MessageRecord>,
    by_id: HashMap<Uuid, usize>,
    /// Events for message ids no 202 has named yet.
    early: HashMap<Uuid, Vec<(Duration, ReplyEvent)>>,
    counts: Snapshot,
    streams: StreamStats,
}

/// The shared record of a run.
pub struct Tracker {
    start: Instant,
    inner: Mutex<Inner>,
}

impl Tracker {
    /// A tracker for `plan`'s messages, timing from `start`.
    pub fn new(start: Instant, plan: &[crate::schedule::Planned]) -> Self {
        let records = plan.iter().map(|p| MessageRecord::new(p.index, p.conversation, p.at)).collect();
        Self { start, inner: Mutex::new(Inner { records, ..Inner::default() }) }
    }

    /// The start of the run.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Time since the start of the run.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        platform::sync::lock(&self.inner)
    }

    /// The POST of message `index` goes out now.
    pub fn sent(&self, index: usize) {
        let at = self.elapsed();
        let mut inner = self.lock();
        let Some(record) = inner.records.get_mut(index) else { return };
        record.sent = Some(at);
        record.post = PostOutcome::Pending;
        inner.counts.sent += 1;
        inner.counts.posting += 1;
    }

    /// Message `index` got its 202 with `message_id`.
    pub fn accepted(&self, index: usize, message_id: Uuid) {
        let at = self.elapsed();
        let mut inner = self.lock();
        let Some(record) = inner.records.get_mut(index) else { return };
        record.answered_post = Some(at);
        record.post = PostOutcome::Accepted;
        record.message_id = Some(message_id);
        inner.by_id.insert(message_id, index);
        inner.counts.posting -= 1;
        inner.counts.accepted += 1;
        if let Some(early) = inner.early.remove(&message_id) {
            for (at, event) in early {
                Self::apply(&mut inner, index, &event, at);
            }
        }
    }

    /// Message `index` was answered with another status.
    pub fn rejected(&self, index: usize, status: u16, code: Option<String>) {
        self.post_ended(index, PostOutcome::Rejected { status, code }, |c| c.rejected += 1);
    }

    /// Message `index` got no HTTP answer.
    pub fn failed(&self, index: usize, error: String) {
        self.post_ended(index, PostOutcome::Failed(error), |c| c.failed += 1);
    }

    fn post_ended(&self, index: usize, outcome: PostOutcome, count: impl FnOnce(&mut Snapshot)) {
        let at = self.elapsed();
        let mut inner = self.lock();
        let Some(record) = inner.records.get_mut(index) else { return };
        record.answered_post = Some(at);
        record.post = outcome;
        inner.counts.posting -= 1;
        count(&mut inner.counts);
    }

    /// A reply event arrived on a stream.
    pub fn event(&self, event: ReplyEvent) {
        let at = self.elapsed();
        let mut inner = self.lock();
        match inner.by_id.get(&event.message_id).copied() {
            Some(index) => Self::apply(&mut inner, index, &event, at),
            None => inner.early.entry(event.message_id).or_default().push((at, event)),
        }
    }

    fn apply(inner: &mut Inner, index: usize, event: &ReplyEvent, at: Duration) {
        let record = &mut inner.records[index];
        match record.apply(event, at) {
            Applied::Late => {
                inner.streams.after_end += 1;
                if matches!(event.kind, EventKind::Done { .. } | EventKind::Error { .. }) {
                    inner.streams.duplicate_ends += 1;
                }
            }
            Applied::Ok => match event.kind {
                EventKind::Done { .. } => inner.counts.answered += 1,
                EventKind::Error { .. } => inner.counts.errored += 1,
                _ => {}
            },
        }
    }

    /// A `gap` arrived on conversation `conversation`'s stream: the replies in flight
    /// there may miss tokens (their `done` still carries the whole text).
    pub fn gap(&self, conversation: usize) {
        let mut inner = self.lock();
        inner.streams.gaps += 1;
        for record in inner.records.iter_mut().filter(|r| r.conversation == conversation) {
            if record.finished.is_none() && record.sent.is_some() {
                record.gap = true;
            }
        }
    }

    /// A stream was reopened.
    pub fn reconnected(&self) {
        self.lock().streams.reconnects += 1;
    }

    /// A `shutdown` event arrived.
    pub fn shutdown_event(&self) {
        self.lock().streams.shutdowns += 1;
    }

    /// `GET /stream` answered `status` instead of 200.
    pub fn stream_refused(&self, status: u16) {
        *self.lock().streams.refused.entry(status).or_default() += 1;
    }

    /// An event whose data could not be read.
    pub fn malformed(&self) {
        self.lock().streams.malformed += 1;
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        self.lock().counts
    }

    /// Every record, the stream statistics, and how many events never matched a
    /// message this run accepted (e.g. a POST that timed out after the broker took it).
    pub fn finish(&self) -> (Vec<MessageRecord>, StreamStats, u64) {
        let inner = self.lock();
        let unmatched = inner.early.values().map(|v| v.len() as u64).sum();
        (inner.records.clone(), inner.streams.clone(), unmatched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::plan;

    fn token(id: Uuid, attempt: Uuid, delta: &str) -> ReplyEvent {
        ReplyEvent { message_id: id, attempt: Some(attempt), kind: EventKind::Token { delta: delta.into() } }
    }

    fn done(id: Uuid, attempt: Uuid, text: &str) -> ReplyEvent {
        ReplyEvent { message_id: id, attempt: Some(attempt), kind: EventKind::Done { text: text.into() } }
    }

    fn reset(id: Uuid, attempt: Uuid) -> ReplyEvent {
        ReplyEvent { message_id: id, attempt: Some(attempt), kind: EventKind::Reset }
    }

    fn tracker(n: usize) -> Tracker {
        Tracker::new(Instant::now(), &plan(1.0, Duration::from_secs(n as u64), 2))
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_is_timed_from_the_post() {
        let t = tracker(1);
        let (id, a) = (Uuid::new_v4(), Uuid::new_v4());
        tokio::time::advance(Duration::from_millis(10)).await;
        t.sent(0);
        tokio::time::advance(Duration::from_millis(5)).await;
        t.accepted(0, id);
        tokio::time::advance(Duration::from_millis(100)).await;
        t.event(token(id, a, "Hel"));
        tokio::time::advance(Duration::from_millis(50)).await;
        t.event(token(id, a, "lo"));
        t.event(done(id, a, "Hello"));
        let (records, _, unmatched) = t.finish();
        let r = &records[0];
        assert_eq!(r.send_delay(), Some(Duration::from_millis(10)));
        assert_eq!(r.post_latency(), Some(Duration::from_millis(5)));
        assert_eq!(r.ttft(), Some(Duration::from_millis(105)));
        assert_eq!(r.reply_latency(), Some(Duration::from_millis(155)));
        assert_eq!((r.tokens, r.attempts, r.text_mismatch), (2, 1, false));
        assert_eq!(unmatched, 0);
        let s = t.snapshot();
        assert_eq!((s.sent, s.accepted, s.answered, s.in_flight(), s.posting), (1, 1, 1, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn events_before_the_202_are_applied_when_it_arrives() {
        let t = tracker(1);
        let (id, a) = (Uuid::new_v4(), Uuid::new_v4());
        t.sent(0);
        tokio::time::advance(Duration::from_millis(20)).await;
        t.event(token(id, a, "x"));
        tokio::time::advance(Duration::from_millis(20)).await;
        t.accepted(0, id);
        t.event(done(id, a, "x"));
        let (records, _, unmatched) = t.finish();
        assert_eq!(records[0].ttft(), Some(Duration::from_millis(20)));
        assert!(records[0].reply_latency().is_some());
        assert_eq!(unmatched, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn reset_restarts_the_token_count_and_keeps_the_first_token_time() {
        let t = tracker(1);
        let (id, a, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        t.sent(0);
        t.accepted(0, id);
        tokio::time::advance(Duration::from_millis(30)).await;
        t.event(token(id, a, "par"));
        t.event(token(id, a, "tial"));
        tokio::time::advance(Duration::from_millis(30)).await;
        t.event(reset(id, b));
        t.event(token(id, b, "whole"));
        t.event(done(id, b, "whole"));
        // The superseded attempt's late events are ignored, and a second end counted.
        t.event(token(id, a, "late"));
        t.event(done(id, a, "partial"));
        let (records, streams, _) = t.finish();
        let r = &records[0];
        assert_eq!(r.ttft(), Some(Duration::from_millis(30)));
        assert_eq!((r.tokens, r.attempts), (1, 2));
        assert!(!r.text_mismatch, "the shown attempt's tokens make the done text");
        assert_eq!((streams.after_end, streams.duplicate_ends), (2, 1));
    }

    #[test]
    fn a_superseded_attempt_may_finish_first_after_a_reset_but_not_without_one() {
        // The gateway shows the first done of any attempt, even a superseded one, after a
        // reset that clears the newer attempt's tokens.
        let t = tracker(2);
        let (m0, m1, a, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        for (i, id) in [m0, m1].into_iter().enumerate() {
            t.sent(i);
            t.accepted(i, id);
        }
        for (id, announced) in [(m0, true), (m1, false)] {
            t.event(token(id, a, "first "));
            t.event(reset(id, b));
            t.event(token(id, b, "sec"));
            if announced {
                t.event(reset(id, a));
            }
            t.event(done(id, a, "first attempt, whole"));
        }
        let (records, _, _) = t.finish();
        assert_eq!(records[0].finished.as_ref().map(|f| f.1.clone()), Some(ReplyEnd::Done));
        assert_eq!(records[0].attempts, 3);
        assert!(!records[0].text_mismatch);
        assert!(records[1].text_mismatch, "another attempt's done over the tokens shown, unannounced");
    }

    #[test]
    fn mixed_attempts_or_missing_tokens_are_a_mismatch_unless_a_gap_explains_them() {
        let t = tracker(2);
        let (m0, m1, a) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        for (i, id) in [m0, m1].into_iter().enumerate() {
            t.sent(i);
            t.accepted(i, id);
        }
        t.event(token(m0, a, "Hel"));
        t.event(done(m0, a, "Hello"));
        t.gap(1); // conversation 1 holds message 1
        t.event(token(m1, a, "lo"));
        t.event(done(m1, a, "Hello"));
        let (records, streams, _) = t.finish();
        assert!(records[0].text_mismatch);
        assert!(records[1].gap && !records[1].text_mismatch);
        assert_eq!(streams.gaps, 1);
    }

    #[test]
    fn outcomes_are_counted() {
        let t = tracker(4);
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        for i in 0..4 {
            t.sent(i);
        }
        t.accepted(0, ids[0]);
        t.accepted(1, ids[1]);
        t.rejected(2, 429, Some("rate_limited".into()));
        t.failed(3, "connection refused".into());
        t.event(ReplyEvent {
            message_id: ids[1],
            attempt: None,
            kind: EventKind::Error { code: "llm".into() },
        });
        t.event(token(Uuid::new_v4(), Uuid::new_v4(), "stray"));
        let s = t.snapshot();
        assert_eq!((s.sent, s.accepted, s.rejected, s.failed, s.errored, s.answered), (4, 2, 1, 1, 1, 0));
        assert_eq!(s.in_flight(), 1);
        let (records, _, unmatched) = t.finish();
        assert!(records[0].unanswered() && !records[1].unanswered() && !records[2].unanswered());
        assert_eq!(records[1].finished.as_ref().map(|f| f.1.clone()), Some(ReplyEnd::Error("llm".into())));
        assert_eq!(unmatched, 1);
    }
}
