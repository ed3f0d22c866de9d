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

/// The handlers' consumer groups and the topics each one reads; KEDA scales on these.
pub const HANDLER_GROUPS: [(&str, &[&str]); 2] =
    [(RESPONDER_GROUP, &[USER_MESSAGES]), (MEMORY_GROUP, &[USER_MESSAGES, MODEL_RESPONSES])];

/// The topics `group` reads, from [`HANDLER_GROUPS`]. Evaluated in a `const`, a group
/// missing from the table fails the build instead of a running consumer.
pub const fn read_by(group: &str) -> &'static [&'static str] {
    let mut i = 0;
    while i < HANDLER_GROUPS.len() {
        if same(HANDLER_GROUPS[i].0, group) {
            return HANDLER_GROUPS[i].1;
        }
        i += 1;
    }
    panic!("not a handler group of topics::HANDLER_GROUPS");
}

// `str == str` is not usable in a const fn yet.
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

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
    fn each_group_reads_its_row_of_the_table() {
        const RESPONDER: &[&str] = read_by(RESPONDER_GROUP);
        assert_eq!(RESPONDER, [USER_MESSAGES]);
        assert_eq!(read_by(MEMORY_GROUP), [USER_MESSAGES, MODEL_RESPONSES]);
        assert!(std::panic::catch_unwind(|| read_by("nobody")).is_err());
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
