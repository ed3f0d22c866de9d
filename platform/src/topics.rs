//! Topic and consumer-group names: the contract between the gateway and the handlers.

/// One event per accepted chat message.
pub const USER_MESSAGES: &str = "user_messages";
/// Replies as a stream: `token` events, then one `done` or `error`.
pub const MODEL_RESPONSES: &str = "model_responses";
/// One event per memory stored in Qdrant.
pub const MEMORY_EVENTS: &str = "memory_events";

/// The topics the stack reads and writes, without their dead-letter topics.
pub const ALL: [&str; 3] = [USER_MESSAGES, MODEL_RESPONSES, MEMORY_EVENTS];

/// Consumer group of the responder handler.
pub const RESPONDER_GROUP: &str = "responder";
/// Consumer group of the memory handler.
pub const MEMORY_GROUP: &str = "memory";

/// The topics the responder's group reads.
pub const RESPONDER_TOPICS: &[&str] = &[USER_MESSAGES];
/// The topics the memory worker's group reads.
pub const MEMORY_TOPICS: &[&str] = &[USER_MESSAGES, MODEL_RESPONSES];

/// The handlers' consumer groups and the topics each one reads; KEDA scales on these.
pub const HANDLER_GROUPS: [(&str, &[&str]); 2] =
    [(RESPONDER_GROUP, RESPONDER_TOPICS), (MEMORY_GROUP, MEMORY_TOPICS)];

/// Default partition count: several, so that KEDA can scale consumers out.
pub const DEFAULT_PARTITIONS: i32 = 6;

/// The dead-letter topic of `topic`: records that could not be decoded or kept failing.
pub fn dlq(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// Every topic the stack needs, dead-letter topics included.
pub fn all_with_dlq() -> Vec<String> {
    ALL.iter().flat_map(|t| [t.to_string(), dlq(t)]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_has_a_dead_letter_topic() {
        let all = all_with_dlq();
        assert_eq!(all.len(), 6);
        for t in ALL {
            assert!(all.contains(&format!("{t}.dlq")), "{t} has no DLQ");
        }
    }

    #[test]
    fn handler_groups_read_only_known_topics() {
        for (_, topics) in HANDLER_GROUPS {
            for t in topics {
                assert!(ALL.contains(t), "{t} is not a stack topic");
            }
        }
    }
}
