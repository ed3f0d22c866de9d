//! A reply event as the gateway keeps it: typed, shared by every stream of its
//! conversation, and rendered to SSE JSON once, here, for all of them.

use std::{fmt, str::FromStr, sync::OnceLock};

use platform::events::{ModelResponse, ReplyBody};
use serde::{ser::SerializeStruct, Serialize, Serializer};
use uuid::Uuid;

/// Position of an event in `model_responses`: the SSE `id`, the same on every replica
/// because every replica reads the same log. A record's id is `partition-offset`; a
/// notice the hub puts before that record (a `reset`, a `gap`) is `partition-offset-n`
/// and sorts before it, so a client that got the notice but not the record resumes with
/// the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventId {
    /// Kafka partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Which notice before the record at `offset` this is; `None` for the record.
    pub notice: Option<u8>,
}

impl EventId {
    /// The id of the record at `offset` in `partition`.
    pub fn record(partition: i32, offset: i64) -> Self {
        Self { partition, offset, notice: None }
    }

    /// The id of notice `n` before this record.
    pub fn notice(self, n: u8) -> Self {
        Self { notice: Some(n), ..self }
    }

    /// True when this event comes after `last` in its partition's order (another
    /// partition's events are unordered against it, so they count as after).
    pub fn is_after(&self, last: &EventId) -> bool {
        let position = |id: &EventId| (id.offset, id.notice.map_or(u16::MAX, u16::from));
        self.partition != last.partition || position(self) > position(last)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.notice {
            None => write!(f, "{}-{}", self.partition, self.offset),
            Some(n) => write!(f, "{}-{}-{n}", self.partition, self.offset),
        }
    }
}

impl FromStr for EventId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut parts = s.trim().split('-');
        let (Some(p), Some(o)) = (parts.next(), parts.next()) else { return Err(()) };
        let record = Self::record(p.parse().map_err(|_| ())?, o.parse().map_err(|_| ())?);
        match (parts.next(), parts.next()) {
            (None, _) => Ok(record),
            (Some(n), None) => Ok(record.notice(n.parse().map_err(|_| ())?)),
            (Some(_), Some(_)) => Err(()),
        }
    }
}

/// What a reply event says: a relayed reply body, or a notice the hub inserts.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyKind {
    /// A `token`, `done` or `error` from `model_responses`.
    Reply(ReplyBody),
    /// A new attempt replaces the one shown so far: discard its partial text.
    Reset,
    /// Some of the attempt's tokens never arrived: the text shown is incomplete, and
    /// the `done` that follows carries the whole reply.
    Gap,
}

/// One event of a conversation's reply streams.
#[derive(Debug)]
pub struct ReplyEvent {
    /// The SSE `id`.
    pub id: EventId,
    /// The user message the event belongs to.
    pub message_id: Uuid,
    /// That message's conversation.
    pub conversation_id: Uuid,
    /// The processing attempt the event belongs to.
    pub attempt: Uuid,
    /// What it says.
    pub kind: ReplyKind,
    /// The trace of the message, shown in an `error` event so the user can quote it.
    trace_id: Option<u128>,
    /// The SSE `data`, rendered by the first stream that sends the event; thousands of
    /// streams of one conversation then share one string.
    data: OnceLock<String>,
}

/// Why a `reset` is sent, for people reading the stream.
const RESET_REASON: &str = "the reply is being generated again; discard its partial text";
/// Why a `gap` is sent within a reply.
const GAP_REASON: &str = "some of this reply's tokens were lost; the done event has the whole text";

impl ReplyEvent {
    /// The event of a relayed reply record at `id`.
    pub fn from_response(id: EventId, response: ModelResponse) -> Self {
        let kind = ReplyKind::Reply(response.body);
        Self::new(id, response.message_id, response.conversation_id, response.attempt, kind)
    }

    /// The `reset` that announces `next`'s attempt: notice 0 before `next`.
    pub fn reset_before(next: &ReplyEvent) -> Self {
        Self::new(next.id.notice(0), next.message_id, next.conversation_id, next.attempt, ReplyKind::Reset)
    }

    /// The `gap` that warns of tokens lost before `next`: notice 1, after any `reset`.
    pub fn gap_before(next: &ReplyEvent) -> Self {
        Self::new(next.id.notice(1), next.message_id, next.conversation_id, next.attempt, ReplyKind::Gap)
    }

    /// A `gap` for events of `attempt` lost without a record to put it before (the
    /// relay skipped records it could not read).
    pub fn gap(id: EventId, message_id: Uuid, conversation_id: Uuid, attempt: Uuid) -> Self {
        Self::new(id, message_id, conversation_id, attempt, ReplyKind::Gap)
    }

    fn new(id: EventId, message_id: Uuid, conversation_id: Uuid, attempt: Uuid, kind: ReplyKind) -> Self {
        Self { id, message_id, conversation_id, attempt, kind, trace_id: None, data: OnceLock::new() }
    }

    /// The event, naming the message's trace (shown in an `error` event only).
    pub fn with_trace(mut self, trace_id: Option<u128>) -> Self {
        self.trace_id = trace_id;
        self
    }

    /// True for the event that ends its message (`done` or `error`).
    pub fn is_final(&self) -> bool {
        matches!(self.kind, ReplyKind::Reply(ReplyBody::Done { .. } | ReplyBody::Error { .. }))
    }

    /// The SSE `event` name.
    pub fn name(&self) -> &'static str {
        match self.kind {
            ReplyKind::Reply(ReplyBody::Token { .. }) => "token",
            ReplyKind::Reply(ReplyBody::Done { .. }) => "done",
            ReplyKind::Reply(ReplyBody::Error { .. }) => "error",
            ReplyKind::Reset => "reset",
            ReplyKind::Gap => "gap",
        }
    }

    /// The SSE `data`: a JSON object with the message, conversation and attempt ids and
    /// the kind's own fields.
    pub fn data(&self) -> &str {
        self.data.get_or_init(|| serde_json::to_string(self).unwrap_or_else(|_| "{}".into()))
    }
}

impl Serialize for ReplyEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("ReplyEvent", 6)?;
        s.serialize_field("message_id", &self.message_id)?;
        s.serialize_field("conversation_id", &self.conversation_id)?;
        s.serialize_field("attempt", &self.attempt)?;
        match &self.kind {
            ReplyKind::Reply(ReplyBody::Token { seq, delta }) => {
                s.serialize_field("seq", seq)?;
                s.serialize_field("delta", delta)?;
            }
            ReplyKind::Reply(ReplyBody::Done { text, usage, finish_reason, .. }) => {
                s.serialize_field("text", text)?;
                s.serialize_field("usage", usage)?;
                s.serialize_field("finish_reason", finish_reason)?;
            }
            ReplyKind::Reply(ReplyBody::Error { code, message }) => {
                s.serialize_field("code", code)?;
                s.serialize_field("message", message)?;
                if let Some(trace_id) = self.trace_id {
                    s.serialize_field("trace_id", &format!("{trace_id:032x}"))?;
                }
            }
            ReplyKind::Reset => s.serialize_field("reason", RESET_REASON)?,
            ReplyKind::Gap => s.serialize_field("reason", GAP_REASON)?,
        }
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use platform::events::{Usage, UserMessage};
    use serde_json::{json, Value};

    fn event(body: ReplyBody) -> ReplyEvent {
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let response = ModelResponse::for_message(&msg, Uuid::new_v4(), body);
        ReplyEvent::from_response(EventId::record(1, 7), response)
    }

    fn data(e: &ReplyEvent) -> Value {
        serde_json::from_str(e.data()).unwrap()
    }

    #[test]
    fn every_kind_renders_its_ids_and_its_own_fields() {
        let token = event(ReplyBody::Token { seq: 3, delta: "hi \"there\"".into() });
        let ids = json!({"message_id": token.message_id, "conversation_id": token.conversation_id,
            "attempt": token.attempt});
        let with = |extra: Value| {
            let mut all = ids.clone();
            all.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            all
        };
        assert_eq!((token.name(), data(&token)), ("token", with(json!({"seq": 3, "delta": "hi \"there\""}))));

        let reset = ReplyEvent::reset_before(&token);
        assert_eq!((reset.name(), reset.id), ("reset", token.id.notice(0)));
        assert_eq!(data(&reset), with(json!({"reason": RESET_REASON})));
        let gap = ReplyEvent::gap_before(&token);
        assert_eq!((gap.name(), gap.id, gap.is_final()), ("gap", token.id.notice(1), false));
        assert_eq!(data(&gap), with(json!({"reason": GAP_REASON})));

        let usage = Usage { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 };
        let mut done = event(ReplyBody::Done {
            text: "all".into(),
            usage: Some(usage),
            finish_reason: "stop".into(),
            token_events: 2,
        });
        (done.message_id, done.conversation_id, done.attempt) =
            (token.message_id, token.conversation_id, token.attempt);
        assert!(done.is_final());
        assert_eq!(
            data(&done),
            with(json!({"text": "all", "finish_reason": "stop",
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}))
        );

        let error = event(ReplyBody::Error { code: "llm_unavailable".into(), message: "down".into() });
        assert_eq!(error.name(), "error");
        assert_eq!(data(&error)["code"], "llm_unavailable");
        assert!(error.is_final() && !token.is_final() && !reset.is_final());
    }

    #[test]
    fn event_ids_round_trip() {
        let record = EventId::record(3, 42);
        assert_eq!("3-42".parse::<EventId>(), Ok(record));
        assert_eq!(record.to_string(), "3-42");
        assert_eq!("3-42-1".parse::<EventId>(), Ok(record.notice(1)));
        assert_eq!(record.notice(1).to_string(), "3-42-1");
        for bad in ["3", "a-1", "3-42-x", "3-42-1-2", "3-42-256"] {
            assert!(bad.parse::<EventId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn notices_come_before_their_record_and_after_the_one_before() {
        let record = EventId::record(3, 42);
        let (reset, gap) = (record.notice(0), record.notice(1));
        assert!(gap.is_after(&reset) && record.is_after(&gap) && record.is_after(&reset));
        assert!(!reset.is_after(&record) && !reset.is_after(&reset));
        assert!(reset.is_after(&EventId::record(3, 41)));
        assert!(EventId::record(0, 1).is_after(&record), "another partition is not ordered against it");
    }
}
