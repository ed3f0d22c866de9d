//! The events on the stack's topics: versioned JSON, keyed by conversation.
//!
//! Every event carries `v` (the schema version), the `message_id` of the user message
//! it belongs to, `conversation_id`, `user_id` and a timestamp. Unknown fields are
//! ignored so that a newer producer can add fields without breaking older consumers;
//! a different `v` is rejected by [`decode`], which sends the record to a dead-letter
//! topic instead of guessing at its meaning.

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use uuid::Uuid;

use crate::topics;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Namespace for the deterministic ids of memory points (UUID v5).
const MEMORY_POINT_NAMESPACE: Uuid = Uuid::from_u128(0x6d656d6f_7279_5f70_6f69_6e745f6e7331);

/// An event that lives on one topic and is keyed by its conversation.
pub trait Event: Serialize + DeserializeOwned {
    /// The topic this event is written to.
    const TOPIC: &'static str;

    /// The schema version carried by this event.
    fn version(&self) -> u32;

    /// The Kafka key: the conversation, so that one conversation stays ordered.
    fn key(&self) -> String;
}

/// Who said a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The person chatting.
    User,
    /// The model's reply.
    Assistant,
}

impl Role {
    /// The name used in payloads and prompts.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One accepted chat message, on `user_messages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserMessage {
    /// Schema version.
    pub v: u32,
    /// Id of this message; every reply and memory of it refers to it.
    pub message_id: Uuid,
    /// The conversation the message belongs to.
    pub conversation_id: Uuid,
    /// The authenticated user who sent it.
    pub user_id: String,
    /// When the gateway accepted it.
    pub ts: DateTime<Utc>,
    /// What the user wrote.
    pub text: String,
}

impl UserMessage {
    /// A new message with a fresh id, stamped now.
    pub fn new(conversation_id: Uuid, user_id: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            v: SCHEMA_VERSION,
            message_id: Uuid::new_v4(),
            conversation_id,
            user_id: user_id.into(),
            ts: Utc::now(),
            text: text.into(),
        }
    }
}

impl Event for UserMessage {
    const TOPIC: &'static str = topics::USER_MESSAGES;
    fn version(&self) -> u32 {
        self.v
    }
    fn key(&self) -> String {
        self.conversation_id.to_string()
    }
}

/// Token counts reported by the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Sum of both.
    pub total_tokens: u32,
}

/// What a reply event says: a piece of the stream, its end, or its failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReplyBody {
    /// A delta of the reply text; `seq` counts 0, 1, 2… within one attempt.
    Token {
        /// Position of this delta within the attempt.
        seq: u32,
        /// The text to append.
        delta: String,
    },
    /// The reply is complete; exactly one per successful attempt.
    Done {
        /// The whole reply text.
        text: String,
        /// Token counts, when the model reported them.
        usage: Option<Usage>,
        /// Why generation stopped (`stop`, `length`, …).
        finish_reason: String,
        /// How many `token` events this attempt published before this one, so a
        /// reader can tell whether it saw them all.
        token_events: u32,
    },
    /// The reply failed; the client is told why instead of waiting forever.
    Error {
        /// A stable machine-readable code, e.g. `llm_unavailable`.
        code: String,
        /// A human-readable explanation, safe to show to the user.
        message: String,
    },
}

/// One event of a reply stream, on `model_responses`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelResponse {
    /// Schema version.
    pub v: u32,
    /// The user message this replies to.
    pub message_id: Uuid,
    /// The conversation of that message.
    pub conversation_id: Uuid,
    /// The user who sent that message.
    pub user_id: String,
    /// When this event was produced.
    pub ts: DateTime<Utc>,
    /// When the user message it answers was accepted (its `ts`): a deletion of the
    /// conversation covers the reply by this time, even when the reply finished after
    /// the deletion. Absent from events of older producers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_ts: Option<DateTime<Utc>>,
    /// A fresh id per processing attempt: a redelivered message answered again gets a
    /// new one, so readers never mix two attempts' tokens.
    pub attempt: Uuid,
    /// The token, done or error payload.
    #[serde(flatten)]
    pub body: ReplyBody,
}

impl ModelResponse {
    /// A reply event for `msg` in attempt `attempt`, stamped now.
    pub fn for_message(msg: &UserMessage, attempt: Uuid, body: ReplyBody) -> Self {
        Self {
            v: SCHEMA_VERSION,
            message_id: msg.message_id,
            conversation_id: msg.conversation_id,
            user_id: msg.user_id.clone(),
            ts: Utc::now(),
            message_ts: Some(msg.ts),
            attempt,
            body,
        }
    }

    /// True for the event that ends an attempt (`done` or `error`).
    pub fn is_final(&self) -> bool {
        !matches!(self.body, ReplyBody::Token { .. })
    }
}

impl Event for ModelResponse {
    const TOPIC: &'static str = topics::MODEL_RESPONSES;
    fn version(&self) -> u32 {
        self.v
    }
    fn key(&self) -> String {
        self.conversation_id.to_string()
    }
}

/// One memory stored in Qdrant, on `memory_events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryEvent {
    /// Schema version.
    pub v: u32,
    /// The user message the memory came from (or answers).
    pub message_id: Uuid,
    /// The conversation it belongs to.
    pub conversation_id: Uuid,
    /// The user it belongs to; memories never cross users.
    pub user_id: String,
    /// When it was stored.
    pub ts: DateTime<Utc>,
    /// The Qdrant point id, see [`memory_point_id`].
    pub point_id: Uuid,
    /// The Qdrant collection it was stored in.
    pub collection: String,
    /// Whether the memory is the user's message or the assistant's reply.
    pub role: Role,
}

impl Event for MemoryEvent {
    const TOPIC: &'static str = topics::MEMORY_EVENTS;
    fn version(&self) -> u32 {
        self.v
    }
    fn key(&self) -> String {
        self.conversation_id.to_string()
    }
}

/// The deterministic Qdrant point id of a turn: UUID v5 of message id and role, so
/// that reprocessing a message overwrites its memory instead of duplicating it.
pub fn memory_point_id(message_id: Uuid, role: Role) -> Uuid {
    let name = format!("{message_id}/{}", role.as_str());
    Uuid::new_v5(&MEMORY_POINT_NAMESPACE, name.as_bytes())
}

/// Why a record could not be read as an event; it goes to the dead-letter topic.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or JSON without the fields the event needs.
    #[error("not a valid {event} event: {source}")]
    Malformed {
        /// The event type that was expected.
        event: &'static str,
        /// What serde found wrong.
        #[source]
        source: serde_json::Error,
    },
    /// A schema version this build does not understand.
    #[error("unsupported schema version {found} for {event} (this build reads v{SCHEMA_VERSION})")]
    UnsupportedVersion {
        /// The event type that was expected.
        event: &'static str,
        /// The version the record carried.
        found: u32,
    },
}

/// Serialises an event to its JSON bytes.
pub fn encode<E: Event>(event: &E) -> Vec<u8> {
    // Serialising these plain structs cannot fail: no maps with non-string keys,
    // no custom Serialize impls that error.
    serde_json::to_vec(event).expect("events always serialise")
}

/// Reads an event from JSON bytes, rejecting unknown schema versions.
pub fn decode<E: Event>(bytes: &[u8]) -> Result<E, DecodeError> {
    let event = std::any::type_name::<E>().rsplit("::").next().unwrap_or("event");
    let parsed: E =
        serde_json::from_slice(bytes).map_err(|source| DecodeError::Malformed { event, source })?;
    match parsed.version() {
        SCHEMA_VERSION => Ok(parsed),
        found => Err(DecodeError::UnsupportedVersion { event, found }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message() -> UserMessage {
        UserMessage::new(Uuid::new_v4(), "alice", "What is the capital of France?")
    }

    #[test]
    fn user_message_round_trips() {
        let m = message();
        assert_eq!(decode::<UserMessage>(&encode(&m)).unwrap(), m);
    }

    #[test]
    fn every_reply_kind_round_trips_with_a_type_tag() {
        let m = message();
        let attempt = Uuid::new_v4();
        let bodies = [
            ReplyBody::Token { seq: 0, delta: "Par".into() },
            ReplyBody::Done {
                text: "Paris.".into(),
                usage: Some(Usage { prompt_tokens: 9, completion_tokens: 3, total_tokens: 12 }),
                finish_reason: "stop".into(),
                token_events: 2,
            },
            ReplyBody::Error { code: "llm_unavailable".into(), message: "try again".into() },
        ];
        for (body, tag) in bodies.into_iter().zip(["token", "done", "error"]) {
            let r = ModelResponse::for_message(&m, attempt, body);
            let bytes = encode(&r);
            let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(value["type"], tag);
            assert_eq!(value["v"], 1);
            assert_eq!(decode::<ModelResponse>(&bytes).unwrap(), r);
            assert_eq!(r.is_final(), tag != "token");
        }
    }

    #[test]
    fn memory_event_round_trips() {
        let m = message();
        let e = MemoryEvent {
            v: SCHEMA_VERSION,
            message_id: m.message_id,
            conversation_id: m.conversation_id,
            user_id: m.user_id.clone(),
            ts: Utc::now(),
            point_id: memory_point_id(m.message_id, Role::User),
            collection: "memories".into(),
            role: Role::User,
        };
        assert_eq!(decode::<MemoryEvent>(&encode(&e)).unwrap(), e);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let m = message();
        let mut value = serde_json::to_value(&m).unwrap();
        value["added_in_a_later_minor"] = json!({"x": 1});
        let bytes = serde_json::to_vec(&value).unwrap();
        assert_eq!(decode::<UserMessage>(&bytes).unwrap(), m);
    }

    #[test]
    fn other_schema_versions_are_rejected() {
        let mut value = serde_json::to_value(message()).unwrap();
        value["v"] = json!(2);
        let err = decode::<UserMessage>(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(matches!(err, DecodeError::UnsupportedVersion { found: 2, .. }), "{err}");
        assert!(err.to_string().contains("UserMessage"), "{err}");
    }

    #[test]
    fn malformed_records_say_what_is_wrong() {
        for bad in [&b"not json"[..], b"{}", b"{\"v\":1}", &[0xff, 0xfe]] {
            let err = decode::<UserMessage>(bad).unwrap_err();
            assert!(matches!(err, DecodeError::Malformed { .. }), "{err}");
        }
        let err = decode::<UserMessage>(b"{\"v\":1}").unwrap_err();
        assert!(err.to_string().contains("missing field"), "{err}");
    }

    #[test]
    fn memory_point_ids_are_deterministic_per_message_and_role() {
        let id = Uuid::new_v4();
        assert_eq!(memory_point_id(id, Role::User), memory_point_id(id, Role::User));
        assert_ne!(memory_point_id(id, Role::User), memory_point_id(id, Role::Assistant));
        assert_ne!(memory_point_id(id, Role::User), memory_point_id(Uuid::new_v4(), Role::User));
        assert_eq!(memory_point_id(id, Role::User).get_version_num(), 5);
    }

    #[test]
    fn events_are_keyed_by_conversation() {
        let m = message();
        assert_eq!(m.key(), m.conversation_id.to_string());
        let r =
            ModelResponse::for_message(&m, Uuid::new_v4(), ReplyBody::Token { seq: 0, delta: "x".into() });
        assert_eq!(r.key(), m.key());
    }
}
